"""Buying power (issue 12): only sells that reduce an existing long add their proceeds; opening or
increasing a short uses buying power like a buy of the same notional. When short of budget the
short-opening sells are cut first, then the buys, in whole shares toward zero, each cut recorded.

Pure tests on the decision (every price 100, net liquidation 100,000), a property over generated
inputs, and one end to end on the simulator.
"""
from __future__ import annotations

import datetime as dt

from hypothesis import given

from lib.commander import decide
from tests.commander_inputs import config, holding, inputs, intent, order, portfolio, strategy, target
from tests.test_commander_properties import SETTINGS, post_fill, scenarios


def plan(targets, holdings=(), funds=10_000.0, open_orders=(), **cfg):
    d = decide(inputs({"a": strategy(1.0)}, {"a": intent(*[target(s, q) for s, q in targets.items()])},
                      portfolio([holding(s, q) for s, q in dict(holdings).items()], list(open_orders), funds=funds),
                      cfg=config(**cfg)))
    assert d["status"] == "ok", d["blocked_reasons"]
    return d


def orders_of(d):
    return [(o["action"], o["quantity"], o["contract"]["symbol"]) for o in d["orders"]]


def cuts(d):
    return [(a["instrument"].split(":")[1], a["from"], a["to"]) for a in d["adjustments"] if a["rule"] == "buying_power"]


def test_short_sale_proceeds_do_not_fund_buys():
    # Before issue 12: 10,000 funds + 10,000 short proceeds bought 100 SPY. The short uses the funds.
    d = plan({"GLD": -100, "SPY": 100}, funds=10_000.0)
    assert orders_of(d) == [("SELL", 100, "GLD")]
    assert cuts(d) == [("SPY", 100, 0)]
    row = next(r for r in d["diff"] if r["instrument"] == "STK:SPY:USD")
    assert (row["action"], row["delta"], row["limited"]) == ("limited", 0, 100)


def test_sells_reducing_a_long_fund_buys():
    d = plan({"TLT": 0, "SPY": 300}, holdings={"TLT": 50}, funds=10_000.0)
    assert orders_of(d) == [("SELL", 50, "TLT"), ("BUY", 150, "SPY")]
    assert "sells reducing longs 5000.00" in d["adjustments"][0]["detail"]


def test_a_sell_crossing_from_long_to_short_adds_proceeds_down_to_zero_and_uses_them_below():
    # GLD 50 → −30: 50 sold from the long add 5,000; the 30 short use 3,000; 10,000 − 3,000 left for SPY.
    d = plan({"GLD": -30, "SPY": 100}, holdings={"GLD": 50}, funds=5_000.0)
    assert orders_of(d) == [("SELL", 80, "GLD"), ("BUY", 70, "SPY")]
    assert cuts(d) == [("SPY", 100, 70)]
    assert "short sales use 3000.00" in d["adjustments"][0]["detail"]


def test_short_opening_sells_are_cut_first_and_never_below_the_part_that_closes_the_long():
    # No funds: GLD 50 → −80 may only use the 5,000 its own long sale brings: 50 + 50 = 100 sold.
    d = plan({"GLD": -80, "SPY": 10}, holdings={"GLD": 50}, funds=0.0)
    assert orders_of(d) == [("SELL", 100, "GLD")]
    assert cuts(d) == [("GLD", -130, -100), ("SPY", 10, 0)]


def test_increasing_a_short_uses_buying_power():
    d = plan({"GLD": -50}, holdings={"GLD": -20}, funds=1_000.0)
    assert orders_of(d) == [("SELL", 10, "GLD")]
    assert cuts(d) == [("GLD", -30, -10)]


def test_short_sales_are_scaled_together_in_whole_shares_toward_zero():
    d = plan({"GLD": -7, "TLT": -7}, funds=1_000.0)
    assert orders_of(d) == [("SELL", 5, "GLD"), ("SELL", 5, "TLT")]
    assert cuts(d) == [("GLD", -7, -5), ("TLT", -7, -5)]


def test_a_long_sale_dropped_by_a_later_limit_no_longer_funds_a_short_sale():
    # max_orders_per_run keeps the first order (GLD, a short) and drops the TLT sale that funded it.
    d = plan({"GLD": -50, "TLT": 0}, holdings={"TLT": 50}, funds=0.0, risk__max_orders_per_run=1)
    assert orders_of(d) == []
    assert [a["rule"] for a in d["adjustments"]] == ["max_orders_per_run", "buying_power"]


def test_margin_multiplier_scales_the_whole_budget():
    d = plan({"GLD": -60, "SPY": 60}, funds=5_000.0, risk__margin_multiplier=2.0)
    assert orders_of(d) == [("SELL", 60, "GLD"), ("BUY", 40, "SPY")]


def test_a_pending_sale_already_closes_the_long_but_a_protective_stop_does_not():
    # A plain manual sell of the 100 held leaves nothing long: selling 50 more opens a short.
    plain = plan({"SPY": -50}, holdings={"SPY": 100}, funds=0.0,
                 open_orders=[order("SPY", "SELL", 100, order_id=1, lmt=99.0)])
    assert orders_of(plain) == [] and cuts(plain) == [("SPY", -50, 0)]
    # A stop is not a sale in flight: the Commander sells 150; the 100 long fund the 50 short.
    stp = order("SPY", "SELL", 100, order_id=1)
    stp.update(orderType="STP", auxPrice=90.0)
    protected = plan({"SPY": -50}, holdings={"SPY": 100}, funds=0.0, open_orders=[stp])
    assert orders_of(protected) == [("SELL", 150, "SPY")] and cuts(protected) == []


@SETTINGS
@given(scenarios())
def test_buys_and_short_sales_stay_within_funds_plus_long_sales(case):
    i, _ = case
    d = decide(i)
    before, _ = post_fill(i, d)
    uses = proceeds = 0.0
    for o in d["orders"]:
        q, price = o["quantity"], o["reference_price"]
        if o["action"] == "BUY":
            uses += q * price
        else:
            reducing = min(q, max(0, before.get(o["instrument"], 0)))
            proceeds += reducing * price
            uses += (q - reducing) * price
    budget = (i["portfolio"]["available_funds"] + proceeds) * i["config"]["risk"]["margin_multiplier"]
    assert uses <= budget + 0.01


# ---- end to end on the simulator (`run_pipeline.py commander`) -------------------------------------
def test_on_the_simulator_a_short_sale_does_not_fund_the_buys(tmp_path):
    import math

    from lib import documents as docs
    from lib import pipeline
    from lib.broker.sim import SimBroker
    from lib.bus import open_bus
    from lib.progress import Progress
    from lib.seed import seed
    from lib.settings import Settings

    SimBroker(tmp_path / "sim.sqlite", as_of="2026-11-20").close()  # GLD 378.52, SPY 642.57; cash 1,000,000
    settings = Settings(mode="paper", bus=f"sqlite:///{tmp_path / 'bus.sqlite'}",
                        broker=f"sim:///{tmp_path / 'sim.sqlite'}", audit=str(tmp_path / "runs"))
    bus = open_bus(settings.bus)
    seed(bus)
    for sid in bus.list("strategies"):
        bus.update(docs.strategy_path(sid), {"enabled": False})
    common = bus.get("config/common")
    common["risk"].update(allow_short=True, max_gross_exposure=2.0, margin_multiplier=0.8)
    bus.set("config/common", common)
    bus.set(docs.strategy_path("pair"), docs.dump(docs.StrategyConfig(name="pair", enabled=True, capital_allocation=1.0)))
    bus.set(docs.intent_path("pair"), {"updated_at": dt.datetime.now(dt.timezone.utc), "status": "success",
                                       "target_positions": [{"symbol": "GLD", "quantity": -800, "price": 378.52},
                                                            {"symbol": "SPY", "quantity": 1000, "price": 642.57}]})
    result = pipeline.commander(settings, reconcile=True, progress=Progress(stream=open(tmp_path / "log", "a")))
    assert result.status == "completed", result.message
    funds = bus.get(docs.portfolio_path("paper"))["available_funds"]
    # Budget 0.8 × funds; the short uses 800 × 378.52 of it; SPY gets the rest (the old rule added the
    # short's proceeds and bought all 1,000).
    spy = math.trunc(1000 * (0.8 * funds - 800 * 378.52) / (1000 * 642.57))
    assert 0 < spy < 1000
    placed = [(o["action"], o["totalQuantity"], o["symbol"], o["status"]) for o in result.record["orders_placed"]]
    assert placed == [("SELL", 800, "GLD", "Filled"), ("BUY", spy, "SPY", "Filled")]
    [cut] = [a for a in result.record["decision"]["adjustments"] if a["rule"] == "buying_power"]
    assert (cut["instrument"], cut["from"], cut["to"]) == ("STK:SPY:USD", 1000, spy)
