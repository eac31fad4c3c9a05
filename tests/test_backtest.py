"""The portfolio backtest through the real Commander: netting, halts, costs."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from lib.backtest import BacktestError, PriceBook, run
from lib.backtest.engine import load, save
from lib.broker import sim
from lib.sessions import calendar
from tests.commander_inputs import config

DAYS = [d.date() for d in calendar().sessions_in_range("2025-01-02", "2025-06-30")]


def book(**series) -> PriceBook:
    return PriceBook.from_closes(pd.DataFrame(series, index=pd.to_datetime(DAYS)), label="test prices")


def cfg(**risk):
    c = config()
    c["risk"].update({"allow_short": True, "min_order_notional": 0.0, "rebalance_threshold": 0.0, **risk})
    return c


def strategy(alloc, max_drawdown=None):
    return {"name": "s", "enabled": True, "capital_allocation": alloc,
            "risk_parameters": {"max_drawdown": max_drawdown, "max_single_position_exposure": 1.0}}


def weights(**cols) -> pd.DataFrame:
    return pd.DataFrame(cols, index=DAYS)


def test_netting_across_strategies_trades_only_the_net(tmp_path):
    flip = np.where(np.arange(len(DAYS)) % 2 == 0, 1.0, 0.0)
    # A goes 0.6 → 0.2 → 0.6 …, B goes −0.4 → 0.0 → −0.4 …: their sum barely moves.
    a = weights(SPY=0.2 + 0.4 * flip)
    b = weights(SPY=-0.4 * flip)
    prices = book(SPY=np.full(len(DAYS), 100.0))
    result = run({"a": a, "b": b}, prices, config=cfg(), strategies={"a": strategy(0.5), "b": strategy(0.5)},
                 cash=100_000, start=DAYS[0], end=DAYS[-1], standalone=True)
    netting = result.netting
    assert netting["commission_saved"] > 0 and netting["turnover_saved"] > 0
    assert netting["turnover_netted"] < 0.2 * netting["turnover_alone"]
    # Every session's orders are one net order per instrument, never one per strategy.
    assert result.orders.groupby("session")["symbol"].apply(lambda s: s.is_unique).all()
    save(result, tmp_path / "bt")
    back, meta = load(tmp_path / "bt")
    assert meta["netting"]["commission_saved"] == pytest.approx(netting["commission_saved"])
    assert len(back.sessions) == len(DAYS)


def test_a_drawdown_halt_takes_effect_mid_backtest():
    falling = 100.0 * np.cumprod(np.r_[1.0, np.full(len(DAYS) - 1, 0.99)])
    result = run({"loser": weights(XYZ=1.0), "steady": weights(TLT=0.5)},
                 book(XYZ=falling, TLT=np.full(len(DAYS), 50.0)), config=cfg(),
                 strategies={"loser": strategy(0.5, max_drawdown=0.1), "steady": strategy(0.4)},
                 cash=100_000, start=DAYS[0], end=DAYS[-1])
    halts = [e for e in result.events if e["event"] == "halt"]
    assert len(halts) == 1 and halts[0]["detail"].startswith("loser")
    halted_on = halts[0]["session"]
    assert DAYS[5] < halted_on < DAYS[-5]  # mid-backtest, not at either end
    after = result.positions.loc[result.positions.index > halted_on, "XYZ"]
    assert after.iloc[0] == 0 and (after == 0).all()  # wound down the next session and stays flat
    assert (result.positions["TLT"].iloc[-1]) > 0  # the other strategy trades on


def test_costs_follow_the_simulators_commission_schedule():
    prices = book(SPY=np.linspace(100, 120, len(DAYS)), TLT=np.linspace(50, 45, len(DAYS)))
    w = weights(SPY=np.where(np.arange(len(DAYS)) % 3 == 0, 0.6, 0.3), TLT=0.3)
    result = run({"s": w}, prices, config=cfg(), strategies={"s": strategy(0.9)}, cash=250_000,
                 start=DAYS[0], end=DAYS[-1], slippage_bps=5.0)
    fills = result.fills
    assert len(fills) > 20
    for f in fills.itertuples():
        assert f.commission == pytest.approx(sim.ib_fixed_commission(f.quantity, f.quantity * f.price))
        close = prices.bar(f.symbol, f.session).close
        assert f.price == pytest.approx(close * (1.0005 if f.action == "BUY" else 0.9995))  # MKT: close ± 5 bps
    signed = np.where(fills["action"] == "BUY", 1, -1) * fills["quantity"] * fills["price"]
    assert result.sessions["cash"].iloc[-1] == pytest.approx(250_000 - signed.sum() - fills["commission"].sum())


def test_no_prices_in_the_period_is_a_clear_error():
    with pytest.raises(BacktestError, match="no session with prices between"):
        run({"s": weights(SPY=0.5)}, book(SPY=np.full(len(DAYS), 100.0)), config=cfg(),
            strategies={"s": strategy(0.5)}, cash=1e5, start=dt.date(2030, 1, 2), end=dt.date(2030, 2, 1))
