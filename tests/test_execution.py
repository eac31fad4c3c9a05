"""Carrying out a decision on a real (simulated) broker: the safety gates of `lib.execution`."""
from __future__ import annotations

import datetime as dt
import json

import pytest

from lib import blobs, execution
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


def test_replacement_is_sized_from_what_the_cancelled_order_filled(sim):
    filled = sim.place_order(OrderRequest(contract=Contract("SPY"), action="BUY", quantity=4, order_ref="cmdr-exec-1"))
    assert filled.status == "Filled"  # the snapshot below still thinks it is working, nothing filled
    stale = portfolio([], [order("SPY", "BUY", 4, order_id=filled.order_id, ref="cmdr-exec-1")], account=ACCOUNT)
    d = plan(target("SPY", 10), port=stale)
    assert [c["orderId"] for c in d["cancels"]] == [filled.order_id] and d["orders"][0]["quantity"] == 10
    result = place(sim, d, snapshot=stale)
    assert result.cancels[0]["confirmed"] is True and result.cancels[0]["status"] == "Filled"
    assert result.orders_placed[0]["totalQuantity"] == 6 and result.orders_placed[0]["resized_from"] == 10
    assert {h.contract.symbol: h.quantity for h in sim.snapshot().holdings} == {"SPY": 10}  # not 14


def test_unconfirmed_cancel_blocks_the_replacement_order(sim, tmp_path):
    resting = sim.place_order(OrderRequest(contract=Contract("SPY"), action="BUY", quantity=4, order_type="LMT",
                                           limit_price=1.0, order_ref="cmdr-exec-1"))
    snap = portfolio([], [order("SPY", "BUY", 4, order_id=resting.order_id, ref="cmdr-exec-1")], account=ACCOUNT)
    d = plan(target("SPY", 10), port=snap)
    sim.cancel_order = lambda order_id: None  # the cancel request is lost on its way: the order keeps working
    result = place(sim, d, snapshot=snap, ack_timeout=0.2)
    assert result.cancels[0]["confirmed"] is False and result.cancels[0]["status"] == "Submitted"
    assert result.orders_placed[0]["orderId"] is None and "not confirmed" in result.orders_placed[0]["error"]
    assert [o.order_id for o in sim.snapshot().open_orders] == [resting.order_id]  # no second order


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
    assert result.status == "uncertain" and "connection lost" in result.reason
    assert [r["status"] for r in result.orders_placed] == ["Filled", "uncertain", "NotPlaced"]
    assert "not placed: connection lost" in result.orders_placed[2]["error"]


def test_large_parts_spill_to_the_audit_store_content_addressed(tmp_path):
    d = plan(target("SPY", 1))
    gathered = {"inputs": inputs({"a": strategy(1.0)}, {"a": intent(target("SPY", 1))}), "context": {}}
    store = open_audit(str(tmp_path / "runs"))
    whole = execution.build_record(execution_id="exec-2", now=dt.datetime.now(dt.timezone.utc), mode="paper",
        trigger="manual", run_id="r", gathered=gathered,
        decision=d, result=execution.PlacementResult("dry_run", "", [], []), notebooks=[], audit=store)
    assert "parts_ref" not in whole  # small records stay whole
    record = blobs.fit(whole, store, limit=blobs.size(whole) - 1)
    ref = record["parts_ref"]["inputs"]
    assert "inputs" not in record and ref["ref"].endswith(f"blobs/{ref['sha256']}.json")
    assert json.loads(open(ref["ref"]).read())["execution_id"] == "exec-2"
    assert blobs.load(record)["inputs"] == json.loads(json.dumps(whole["inputs"]))
    assert blobs.fit(whole, store, limit=blobs.size(whole) - 1) == record  # same content, same blob: harmless
    open(ref["ref"], "w").write("{}")  # a damaged part is refused, never used
    with pytest.raises(blobs.BlobError, match="sha256"):
        blobs.load(record)
