"""Carrying out a decision on a real (simulated) broker: the safety gates of `lib.execution`."""
from __future__ import annotations

import datetime as dt
import json

import pytest

from lib import execution
from lib.audit import open_audit
from lib.broker.base import Contract, OrderRequest
from lib.broker.sim import SimBroker
from lib.commander import decide
from lib.errors import BrokerConnectionError
from tests.commander_inputs import holding, inputs, intent, order, portfolio, strategy, target

ACCOUNT = "DU0000001"


@pytest.fixture
def sim(tmp_path):
    with SimBroker(tmp_path / "sim.sqlite", as_of="2026-11-20") as broker:
        yield broker


def plan(*targets, port=None):
    return decide(inputs({"a": strategy(1.0)}, {"a": intent(*targets)}, port or portfolio(account=ACCOUNT)))


def place(sim, d, **kw):
    args = dict(mode="paper", expected_account=None, snapshot_account=ACCOUNT, rate_per_second=50, ack_timeout=5)
    args.update(kw)
    return execution.place(sim, d, **args)


def test_places_the_plan_and_reports_fills(sim):
    result = place(sim, plan(target("SPY", 3), target("TLT", 2)))
    assert result.status == "completed" and [r["status"] for r in result.orders_placed] == ["Filled", "Filled"]
    assert {h.contract.symbol: h.quantity for h in sim.snapshot().holdings} == {"SPY": 3, "TLT": 2}


@pytest.mark.parametrize("kw, needle", [
    ({"mode": "live"}, "paper account"),
    ({"expected_account": "DU9999999"}, "does not match config/paper.account"),
    ({"snapshot_account": "DU0000002"}, "not the snapshot's account"),
])
def test_account_guards_place_nothing(sim, kw, needle):
    result = place(sim, plan(target("SPY", 3)), **kw)
    assert result.status == "failed" and needle in result.reason and result.orders_placed == []
    assert sim.snapshot().holdings == [] and sim.snapshot().open_orders == []


def test_unconfirmed_cancel_blocks_the_replacement_order(sim):
    filled = sim.place_order(OrderRequest(contract=Contract("SPY"), action="BUY", quantity=4, order_ref="cmdr-exec-1"))
    assert filled.status == "Filled"  # the snapshot below still thinks it is working
    stale = portfolio([], [order("SPY", "BUY", 4, order_id=filled.order_id, ref="cmdr-exec-1")], account=ACCOUNT)
    d = plan(target("SPY", 10), port=stale)
    assert [c["orderId"] for c in d["cancels"]] == [filled.order_id]
    result = place(sim, d)
    assert result.cancels[0]["confirmed"] is False
    assert result.orders_placed[0]["orderId"] is None and "not confirmed" in result.orders_placed[0]["error"]
    assert {h.contract.symbol: h.quantity for h in sim.snapshot().holdings} == {"SPY": 4}  # not 14


def test_dropped_connection_stops_placement_and_keeps_what_was_sent(sim, monkeypatch):
    d = plan(target("GLD", 1), target("SPY", 1), target("TLT", 1))
    real = sim.place_order
    sent = []

    def flaky(request):
        if sent:
            raise BrokerConnectionError("connection to the broker dropped")
        sent.append(request)
        return real(request)

    monkeypatch.setattr(sim, "place_order", flaky)
    result = place(sim, d)
    assert result.status == "partial_success" and "connection lost" in result.reason
    assert [r["orderId"] is not None for r in result.orders_placed] == [True, False, False]
    assert "not placed: connection lost" in result.orders_placed[2]["error"]


def test_large_inputs_spill_to_the_audit_store(tmp_path, monkeypatch):
    monkeypatch.setattr(execution, "MAX_INLINE_BYTES", 100)
    d = plan(target("SPY", 1))
    gathered = {"inputs": inputs({"a": strategy(1.0)}, {"a": intent(target("SPY", 1))}), "context": {}}
    store = open_audit(str(tmp_path / "runs"))
    record = execution.build_record(execution_id="exec-2", now=dt.datetime.now(dt.timezone.utc), mode="paper",
        trigger="manual", run_id="r", gathered=gathered,
        decision=d, result=execution.PlacementResult("dry_run", "", [], []), notebooks=[],
        spill=lambda name, data: store.put_bytes(name, data))
    assert "inputs" not in record and record["inputs_ref"].endswith("inputs/exec-2.json")
    assert json.loads(open(record["inputs_ref"]).read())["execution_id"] == "exec-2"
