"""Contingent orders are not pending (issue 12): stops, conditional orders, bracket children and OCA
members are listed in the diff as `contingent` and never count toward the pending quantity.

Pure tests on the decision, then one end to end on the simulator (`run_pipeline.py commander`).
"""
from __future__ import annotations

import datetime as dt

import pytest

from lib import documents as docs
from lib.broker.base import Contract, OrderState
from lib.commander import decide
from tests.commander_inputs import holding, inputs, intent, order, portfolio, strategy, target

SPY = "STK:SPY:USD"


def contingent(symbol, action, qty, order_id, order_type="LMT", aux=None, parent=0, oca="", lmt=None, **extra):
    o = order(symbol, action, qty, order_id=order_id, lmt=lmt)
    o.update(orderType=order_type, auxPrice=aux, parentId=parent, ocaGroup=oca, **extra)
    return o


def hold_spy(*open_orders, held=100, want=100):
    """A strategy wanting `want` SPY while the account holds `held` and has these open orders."""
    return decide(inputs({"a": strategy(1.0)}, {"a": intent(target("SPY", want))},
                         portfolio([holding("SPY", held)], list(open_orders))))


def row(d, key=SPY):
    return next(r for r in d["diff"] if r["instrument"] == key)


def test_a_protective_stop_on_a_holding_does_not_make_the_commander_buy_more():
    d = hold_spy(contingent("SPY", "SELL", 100, 7, "STP", aux=90.0))
    assert d["orders"] == [] and d["cancels"] == []
    r = row(d)
    assert (r["pending_manual"], r["pending_contingent"], r["action"]) == (0.0, -100.0, "none")
    [c] = r["contingent"]
    assert (c["orderId"], c["orderType"], c["auxPrice"], c["remaining"]) == (7, "STP", 90.0, 100)
    assert "STP order" in c["reason"] and "trigger" in c["reason"]


def test_bracket_children_are_not_two_sales():
    tp = contingent("SPY", "SELL", 100, 11, "LMT", lmt=120.0, parent=10, oca="b10")
    sl = contingent("SPY", "SELL", 100, 12, "STP", aux=90.0, parent=10, oca="b10")
    d = hold_spy(tp, sl)
    assert d["orders"] == []
    r = row(d)
    assert r["pending_manual"] == 0.0 and r["pending_contingent"] == -200.0
    assert [(c["orderId"], c["parentId"]) for c in r["contingent"]] == [(11, 10), (12, 10)]
    assert all(c["ocaGroup"] == "b10" for c in r["contingent"])


@pytest.mark.parametrize("order_type", ["STP", "STP LMT", "TRAIL", "TRAIL LIMIT", "stp  lmt", "MIT", "LIT"])
def test_triggered_order_types_are_contingent(order_type):
    d = hold_spy(contingent("SPY", "SELL", 40, 3, order_type, aux=95.0))
    assert d["orders"] == [] and row(d)["pending_contingent"] == -40.0


def test_conditional_orders_are_contingent():
    d = hold_spy(contingent("SPY", "SELL", 40, 3, "MKT", conditions=[{"type": "price", "price": 90}]))
    assert d["orders"] == [] and "conditional" in row(d)["contingent"][0]["reason"]


def test_an_oca_group_counts_only_when_shared_with_another_working_order():
    # Two manual sells in one OCA group: at most one of them will fill, so neither is a sale in flight.
    pair = [contingent("SPY", "SELL", 30, 1, "LMT", lmt=120.0, oca="exit"),
            contingent("SPY", "SELL", 30, 2, "LMT", lmt=125.0, oca="exit")]
    d = hold_spy(*pair)
    assert d["orders"] == [] and row(d)["pending_contingent"] == -60.0
    assert "OCA group 'exit'" in row(d)["contingent"][0]["reason"]
    # Alone in its group (its sibling filled or was cancelled), an order can fill by itself: it is pending.
    pair[1]["status"] = "Cancelled"
    d = hold_spy(*pair)
    assert row(d)["pending_manual"] == -30.0 and "contingent" not in row(d)
    assert [(o["action"], o["quantity"]) for o in d["orders"]] == [("BUY", 30)]


def test_plain_manual_orders_still_count_and_rows_keep_their_shape():
    d = hold_spy(order("SPY", "SELL", 30, order_id=1, lmt=120.0), held=100, want=100)
    r = row(d)
    assert r["pending_manual"] == -30.0
    assert set(r) == {"instrument", "target", "held", "pending_manual", "pending_own", "delta", "action"}
    assert [(o["action"], o["quantity"]) for o in d["orders"]] == [("BUY", 30)]


def test_a_stop_does_not_hide_a_real_trade_and_does_not_count_toward_the_long():
    # Target 0: the Commander sells the 100 held even though a stop would sell them too.
    d = hold_spy(contingent("SPY", "SELL", 100, 7, "STP", aux=90.0), want=0)
    assert [(o["action"], o["quantity"]) for o in d["orders"]] == [("SELL", 100)]


def test_finished_contingent_orders_are_ignored():
    d = hold_spy(contingent("SPY", "SELL", 100, 7, "STP", aux=90.0, status="Cancelled"))
    assert "contingent" not in row(d) and d["orders"] == []


def test_snapshots_written_before_the_fields_still_load_and_bad_values_name_the_field():
    old = order("SPY", "SELL", 5)
    for k in ("auxPrice", "parentId", "ocaGroup"):
        old.pop(k, None)
    loaded = docs.load(docs.OpenOrder, "positions/paper/portfolio/latest", old)
    assert (loaded.auxPrice, loaded.parentId, loaded.ocaGroup, loaded.conditions) == (None, 0, "", [])
    nulls = docs.load(docs.OpenOrder, "p", {**old, "parentId": None, "ocaGroup": None})
    assert (nulls.parentId, nulls.ocaGroup) == (0, "")
    d = hold_spy(contingent("SPY", "SELL", 5, 1, parent="ten"))
    assert d["status"] == "blocked"
    assert "positions/paper/portfolio/latest: field 'open_orders[0].parentId'" in d["blocked_reasons"][0]["detail"]


def test_reconcile_keeps_order_type_aux_price_parent_and_oca_group():
    state = OrderState(order_id=5, perm_id=6, client_id=0, contract=Contract("SPY"), action="SELL", quantity=10,
                       order_type="STP", limit_price=None, tif="GTC", order_ref="", status="Submitted",
                       remaining=10, aux_price=90.0, parent_id=4, oca_group="b4")
    d = state.to_dict()
    assert (d["orderType"], d["auxPrice"], d["parentId"], d["ocaGroup"]) == ("STP", 90.0, 4, "b4")
    assert docs.load(docs.OpenOrder, "p", d).parentId == 4


# ---- end to end on the simulator --------------------------------------------------------------------
def test_a_manual_stop_and_an_oca_exit_pair_are_not_sales_in_flight(tmp_path):
    from lib import pipeline
    from lib.broker.sim import SimBroker
    from lib.progress import Progress
    from lib.seed import seed
    from lib.settings import Settings
    from tests.pipeline_env import PipelineEnv

    SimBroker(tmp_path / "sim.sqlite", as_of="2026-11-20").close()  # GLD 378.52, SPY 642.57
    env = PipelineEnv(tmp_path, Settings(mode="paper", bus=f"sqlite:///{tmp_path / 'bus.sqlite'}",
                                         broker=f"sim:///{tmp_path / 'sim.sqlite'}", audit=str(tmp_path / "runs")))
    bus = env.bus()
    seed(bus)
    for sid in bus.list("strategies"):
        bus.update(docs.strategy_path(sid), {"enabled": False})
    bus.set(docs.strategy_path("holder"), docs.dump(docs.StrategyConfig(name="holder", enabled=True,
                                                                          capital_allocation=0.5)))
    bus.set(docs.intent_path("holder"), {"updated_at": dt.datetime.now(dt.timezone.utc), "status": "success",
                                         "target_positions": [{"symbol": "GLD", "quantity": 100, "price": 378.52},
                                                              {"symbol": "SPY", "quantity": 10, "price": 642.57}]})
    log = open(tmp_path / "commander.log", "a")

    def commander():
        return pipeline.commander(env.settings, reconcile=True, progress=Progress(stream=log))

    first = commander()
    assert first.status == "completed", first.message
    assert sorted((o["symbol"], o["action"], o["totalQuantity"]) for o in first.record["orders_placed"]) == [
        ("GLD", "BUY", 100), ("SPY", "BUY", 10)]

    # A person protects GLD with a stop below the market and puts an OCA exit pair under SPY.
    assert env.sim("stop", "GLD", "SELL", "100", "--stop", "300").returncode == 0
    assert env.sim("stop", "SPY", "SELL", "10", "--stop", "500", "--oca", "exit").returncode == 0
    assert env.sim("order", "SPY", "SELL", "10", "--limit", "800", "--oca", "exit").returncode == 0

    second = commander()
    assert second.status == "completed", second.message
    assert second.record["orders_placed"] == []  # neither bought more nor counted as sales in flight
    snap = bus.get(docs.portfolio_path("paper"))
    assert sorted((o["symbol"], o["orderType"], o["auxPrice"], o["parentId"], o["ocaGroup"])
                  for o in snap["open_orders"]) == [("GLD", "STP", 300.0, 0, ""), ("SPY", "LMT", None, 0, "exit"),
                                                     ("SPY", "STP", 500.0, 0, "exit")]
    diff = {r["instrument"]: r for r in second.record["decision"]["diff"]}
    assert (diff["STK:GLD:USD"]["pending_manual"], diff["STK:GLD:USD"]["pending_contingent"]) == (0.0, -100.0)
    assert (diff["STK:SPY:USD"]["pending_manual"], diff["STK:SPY:USD"]["pending_contingent"]) == (0.0, -20.0)

    # The stop is real: when GLD falls through it, it sells, and the Commander buys the target back.
    assert "Filled" in env.sim("price", "GLD", "299").stdout
    third = commander()
    assert third.status == "completed", third.message
    assert [(o["action"], o["totalQuantity"], o["symbol"]) for o in third.record["orders_placed"]] == [
        ("BUY", 100, "GLD")]
