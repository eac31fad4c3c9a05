"""Properties of the decision over generated inputs (hypothesis)."""
from __future__ import annotations

import copy

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lib.canonical import dumps
from lib.commander import decide
from tests.commander_inputs import config, holding, inputs, intent, order, portfolio, record_of, strategy, target

SYMBOLS = ["SPY", "TLT", "GLD", "VIXY"]


@st.composite
def scenarios(draw):
    prices = {s: draw(st.sampled_from([12.5, 31.0, 99.99, 250.0, 413.37])) for s in SYMBOLS}
    n = draw(st.integers(1, 3))
    allocs = draw(st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.33]), min_size=n, max_size=n))
    strategies, intents = {}, {}
    for i, alloc in enumerate(allocs):
        sid = f"s{i}"
        strategies[sid] = strategy(alloc, enabled=draw(st.booleans()) or i == 0,
                                   max_single=draw(st.sampled_from([0.3, 0.6, 1.0])))
        syms = draw(st.lists(st.sampled_from(SYMBOLS), unique=True, min_size=1, max_size=3))
        rows = []
        for s in syms:
            if draw(st.booleans()):
                rows.append(target(s, quantity=draw(st.integers(-400, 400)), price=prices[s]))
            else:
                rows.append(target(s, weight=draw(st.sampled_from([-0.8, -0.3, 0.0, 0.2, 0.5, 1.2])), price=prices[s]))
        intents[sid] = intent(*rows)
    holdings = [holding(s, draw(st.integers(-100, 300)), prices[s]) for s in SYMBOLS if draw(st.booleans())]
    orders = []
    for k in range(draw(st.integers(0, 3))):
        s = draw(st.sampled_from(SYMBOLS))
        ref = draw(st.sampled_from(["", "manual", "cmdr-exec-1"]))
        orders.append(order(s, draw(st.sampled_from(["BUY", "SELL"])), draw(st.integers(1, 50)), order_id=k + 1, ref=ref))
    cfg = config(risk__allow_short=draw(st.booleans()),
                 risk__max_instrument_exposure=draw(st.sampled_from([0.05, 0.1, 0.2, 1.0])),
                 risk__max_gross_exposure=draw(st.sampled_from([0.15, 0.5, 1.0, 1.5])),
                 risk__min_order_quantity=draw(st.sampled_from([1, 1, 5])),
                 risk__min_order_notional=draw(st.sampled_from([0.0, 0.0, 300.0])),
                 risk__rebalance_threshold=draw(st.sampled_from([0.0, 0.0, 0.1])),
                 risk__max_order_notional=draw(st.sampled_from([None, None, 3_000.0])),
                 risk__max_orders_per_run=draw(st.sampled_from([None, None, 2])),
                 risk__margin_multiplier=draw(st.sampled_from([1.0, 0.5, 2.0])),
                 tradingState=draw(st.sampled_from(["active", "active", "reduce_only"])))
    nav = draw(st.sampled_from([50_000.0, 100_000.0, 1_000_000.0]))
    funds = nav * draw(st.sampled_from([1.0, 0.2, 0.0]))
    return inputs(strategies, intents, portfolio(holdings, orders, nav=nav, funds=funds), cfg=cfg), prices


def post_fill(i, d):
    """Positions after every pending order and every new order fills (cancelled ones do not)."""
    cancelled = {c["orderId"] for c in d["cancels"]}
    pos: dict[str, float] = {}
    for h in i["portfolio"]["holdings"]:
        pos[f"STK:{h['symbol']}:USD"] = pos.get(f"STK:{h['symbol']}:USD", 0) + h["quantity"]
    for o in i["portfolio"]["open_orders"]:
        if o["orderId"] not in cancelled:
            key = f"STK:{o['symbol']}:USD"
            pos[key] = pos.get(key, 0) + (o["remaining"] if o["action"] == "BUY" else -o["remaining"])
    before = dict(pos)
    for o in d["orders"]:
        pos[o["instrument"]] = pos.get(o["instrument"], 0) + (o["quantity"] if o["action"] == "BUY" else -o["quantity"])
    return before, pos


SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(scenarios())
def test_after_fills_managed_instruments_equal_final_target(case):
    """Equal to the target, except where the band suppressed a trade or a limit (buying power,
    per-order or per-run caps, reduce-only) shrank it: then between where it was and the target."""
    i, _ = case
    d = decide(i)
    assert d["status"] == "ok"
    before, after = post_fill(i, d)
    for r in d["diff"]:
        got = after.get(r["instrument"], 0)
        if r["action"] == "limited":
            was = before.get(r["instrument"], 0)
            assert min(was, r["target"]) <= got <= max(was, r["target"]), r
        else:
            assert got == r["target"] - r.get("suppressed", 0), r


@SETTINGS
@given(scenarios())
def test_limits_hold_for_every_plan(case):
    i, prices = case
    d = decide(i)
    cfg, port = i["config"], i["portfolio"]
    before, after = post_fill(i, d)
    sells = sum(o["notional"] for o in d["orders"] if o["action"] == "SELL")
    buys = sum(o["notional"] for o in d["orders"] if o["action"] == "BUY")
    assert buys <= (port["available_funds"] + sells) * cfg["risk"]["margin_multiplier"] + 0.01
    if cfg["risk"]["max_order_notional"]:
        assert all(o["notional"] <= cfg["risk"]["max_order_notional"] + 0.01 for o in d["orders"])
    if cfg["risk"]["max_orders_per_run"] is not None:
        assert len(d["orders"]) <= cfg["risk"]["max_orders_per_run"]
    if cfg["tradingState"] == "reduce_only":
        for o in d["orders"]:
            b, a = before.get(o["instrument"], 0), after[o["instrument"]]
            assert abs(a) < abs(b) and (a == 0 or (a > 0) == (b > 0))


@SETTINGS
@given(scenarios())
def test_no_order_makes_a_cap_worse(case):
    i, prices = case
    d = decide(i)
    risk, nav = i["config"]["risk"], i["portfolio"]["net_liquidation"]
    before, after = post_fill(i, d)
    for o in d["orders"]:
        k = o["instrument"]
        p = prices[o["contract"]["symbol"]]
        b, a = before.get(k, 0), after[k]
        assert abs(a) * p <= max(risk["max_instrument_exposure"] * nav, abs(b) * p) + 1e-6
        if not risk["allow_short"]:
            assert a >= min(b, 0)
    managed = [r["instrument"] for r in d["diff"]]
    gross = lambda pos: sum(abs(pos.get(k, 0)) * prices[k.split(":")[1]] for k in managed)
    assert gross(after) <= max(risk["max_gross_exposure"] * nav, gross(before)) + 1e-6


@SETTINGS
@given(scenarios())
def test_same_inputs_byte_identical_regardless_of_key_order(case):
    i, _ = case
    shuffled = copy.deepcopy(i)
    shuffled["strategies"] = dict(reversed(list(shuffled["strategies"].items())))
    shuffled["intents"] = dict(reversed(list(shuffled["intents"].items())))
    assert dumps(decide(i)) == dumps(decide(shuffled)) == dumps(decide(copy.deepcopy(i)))


@SETTINGS
@given(scenarios())
def test_second_run_on_post_fill_state_places_nothing(case):
    i, prices = case
    d = decide(i)
    _, after = post_fill(i, d)
    nxt = copy.deepcopy(i)
    nxt["execution_id"] = "exec-3"
    nxt["previous_execution"] = record_of(d, executed_at="2025-10-29T20:40:00Z")
    nxt["portfolio"] = portfolio([holding(k.split(":")[1], q, prices[k.split(":")[1]]) for k, q in after.items() if q],
                                 [], nav=i["portfolio"]["net_liquidation"], updated_at="2025-10-29T20:50:00Z")
    again = decide(nxt)
    assert again["status"] == "ok"
    assert again["cancels"] == []
    if not any(r["action"] == "limited" for r in d["diff"]):
        assert again["orders"] == []  # a limited plan legitimately continues next run
