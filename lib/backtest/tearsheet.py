"""The backtest's tear sheet: metrics, tables and charts, for notebooks/backtest.ipynb.

Metrics come from empyrical-reloaded (the maintained fork of Quantopian's empyrical), not
hand-written formulas. Every chart of synthetic prices says so in its title.
"""
from __future__ import annotations

import empyrical as ep
import numpy as np
import pandas as pd

from lib.backtest.engine import BacktestResult

TRADING_DAYS = 252


def returns(equity: pd.Series) -> pd.Series:
    r = equity.astype(float).pct_change().fillna(0.0)
    r.index = pd.to_datetime(r.index)
    return r


def metrics(equity: pd.Series, turnover: pd.Series | None = None) -> dict[str, float]:
    """CAGR, volatility, Sharpe, Sortino, Calmar, max drawdown (and annual turnover / mean equity)."""
    r = returns(equity)
    out = {"CAGR": ep.cagr(r), "volatility": ep.annual_volatility(r), "Sharpe": ep.sharpe_ratio(r),
           "Sortino": ep.sortino_ratio(r), "Calmar": ep.calmar_ratio(r), "max drawdown": ep.max_drawdown(r)}
    if turnover is not None and len(equity):
        years = max(len(equity) / TRADING_DAYS, 1e-9)
        out["turnover (× equity / year)"] = float(turnover.sum() / equity.mean() / years)
    return {k: float(v) if v is not None and np.isfinite(v) else float("nan") for k, v in out.items()}


def metrics_table(result: BacktestResult, benchmark: pd.Series | None = None) -> pd.DataFrame:
    """One column per series: the account, each strategy's attributed equity, the benchmark."""
    cols = {"account": metrics(result.sessions["equity"], result.sessions["turnover"])}
    for sid in result.strategy_equity.columns:
        eq = result.strategy_equity[sid].dropna()
        if len(eq) > 2:
            cols[sid] = metrics(eq)
    if benchmark is not None:
        cols["buy and hold"] = metrics(benchmark)
    return pd.DataFrame(cols)


def monthly_returns(equity: pd.Series) -> pd.DataFrame:
    """Year × month table of returns, with the year's total."""
    monthly = ep.aggregate_returns(returns(equity), "monthly")
    table = monthly.unstack()
    table.columns = [pd.Timestamp(2000, m, 1).strftime("%b") for m in table.columns]
    table["year"] = ep.aggregate_returns(returns(equity), "yearly")
    return table


def rolling_sharpe(equity: pd.Series, window: int = 63) -> pd.Series:
    return ep.roll_sharpe_ratio(returns(equity), window=window)


def drawdown(equity: pd.Series) -> pd.Series:
    eq = equity.astype(float)
    return eq / eq.cummax() - 1.0


def buy_and_hold(closes: pd.Series, start_equity: float) -> pd.Series:
    """The benchmark: all of the starting equity in one instrument, held (same sessions)."""
    c = closes.astype(float).dropna()
    return c / c.iloc[0] * start_equity


def costs(result: BacktestResult) -> pd.DataFrame:
    s = result.sessions
    return pd.DataFrame({"commission": [float(s["commission"].sum())], "turnover": [float(s["turnover"].sum())],
                         "fills": [int(s["fills"].sum())], "orders": [int(s["orders"].sum())],
                         "commission / turnover (bps)": [float(s["commission"].sum() / max(s["turnover"].sum(), 1e-9)
                                                               * 1e4)]}, index=["account"])


def title(text: str, result: BacktestResult) -> str:
    return f"{text} — SYNTHETIC prices" if result.synthetic else text


def shortfall(result: BacktestResult, bus_url: str | None, mode: str = "paper", limit: int = 500) -> list[dict]:
    """Per execution the paper pipeline recorded in the backtest's period: its final target against the
    backtest's position that session, largest gaps first (the idea of Moonchart's shortfall tear sheet)."""
    if not bus_url:
        return []
    from lib.bus import open_bus
    sessions = result.sessions.index
    first, last = pd.Timestamp(sessions[0]), pd.Timestamp(sessions[-1])
    rows = []
    with open_bus(bus_url) as bus:
        page = bus.page("executions", order_by="executed_at", limit=limit)
    for eid, rec in page:
        if rec.get("mode") != mode or rec.get("status") not in ("completed", "partial_success", "interrupted"):
            continue
        at = pd.Timestamp(rec["executed_at"]).tz_convert("America/New_York").normalize().tz_localize(None)
        if not first <= at <= last or at not in result.positions.index:
            continue
        held = result.positions.loc[at]
        for r in (rec.get("decision") or {}).get("final_target") or []:
            symbol = r["instrument"].split(":")[1]
            backtest = float(held.get(symbol, 0.0))
            rows.append({"session": at.date(), "execution": eid, "symbol": symbol,
                         "recorded_target": r["quantity"], "backtest_position": backtest,
                         "gap": backtest - r["quantity"]})
    return sorted(rows, key=lambda r: -abs(r["gap"]))
