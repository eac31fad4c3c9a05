"""The Commander's write-ahead, lease fencing, state rules and record size, on the real SQLite bus and
the simulator (the fault matrix in test_crash_safety.py kills whole processes; these pin each rule)."""
from __future__ import annotations

import datetime as dt
import json

import pytest

from lib import blobs, execution, lease
from lib import documents as docs
from lib.audit import open_audit
from lib.broker import open_broker
from lib.broker.sim import MANUAL_CLIENT_ID, SimBroker
from lib.bus import open_bus
from lib.commander import decide, replay
from lib.errors import PreconditionFailedError
from lib.reconcile import snapshot_to_bus
from tests.commander_inputs import config, inputs, intent, portfolio, strategy, target

UTC = dt.timezone.utc
AS_OF = "2026-11-20"


class Env:
    def __init__(self, tmp):
        self.bus = open_bus(f"sqlite:///{tmp / 'bus.sqlite'}")
        self.audit = open_audit(str(tmp / "runs"))
        self.url = f"sim:///{tmp / 'sim.sqlite'}?as_of={AS_OF}"
        self.op = SimBroker(tmp / "sim.sqlite", client_id=MANUAL_CLIENT_ID, as_of=AS_OF)

    def seed(self, targets: dict, cfg_overrides: dict | None = None, start: dict | None = None):
        cfg = config(**(cfg_overrides or {}))
        cfg["risk"]["allow_short"] = False
        self.bus.set(docs.common_config_path(), cfg)
        self.bus.set(docs.strategy_path("s"), strategy(1.0))
        for sym, qty in (start or {}).items():
            from lib.broker import Contract, OrderRequest
            self.op.place_order(OrderRequest(Contract(sym), "BUY", qty, order_ref="manual"))
        self.publish(targets)
        with open_broker(self.url, "paper") as b:
            snapshot_to_bus(b, self.bus, "paper")

    def publish(self, targets: dict):
        rows = [target(s, q, price=self.op.price(s)) for s, q in targets.items()]
        self.bus.set(docs.intent_path("s"), {**intent(*rows), "updated_at": dt.datetime.now(UTC)})

    def run(self, dry_run=False, held=None, eid="e1"):
        now = dt.datetime.now(UTC)
        return execution.run_commander(self.bus, lambda: open_broker(self.url, "paper"), mode="paper",
                                       execution_id=eid, now=now, window_start=now - dt.timedelta(hours=1),
                                       dry_run=dry_run, trigger="manual", run_id=eid, notebooks=[],
                                       audit=self.audit, lease=held)

    def held(self):
        return {h.contract.symbol: h.quantity for h in self.op.snapshot().holdings}

    def refs(self):
        return sorted(o.order_ref for o in self.op.orders().values() if o.order_ref.startswith("cmdr-"))


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    yield e
    e.op.close()
    e.bus.close()


def test_write_ahead_record_holds_every_order_ref_before_anything_is_sent(env, monkeypatch):
    env.seed({"GLD": 3, "SPY": 2})
    seen = {}
    real = execution.place

    def spy(broker, decision, **kw):
        seen["record"] = env.bus.get(docs.execution_path("e1"))
        seen["state"] = env.bus.get(execution.state_path("paper"))
        seen["broker_orders"] = env.refs()
        return real(broker, decision, **kw)

    monkeypatch.setattr(execution, "place", spy)
    record = env.run()
    assert seen["record"]["status"] == "placing" and seen["broker_orders"] == []
    assert [o["orderRef"] for o in seen["record"]["decision"]["orders"]] == ["cmdr-e1-1", "cmdr-e1-2"]
    assert seen["state"]["placing_execution_id"] == "e1"
    assert record["status"] == "completed" and env.refs() == ["cmdr-e1-1", "cmdr-e1-2"]
    state = env.bus.get(execution.state_path("paper"))
    assert state["placing_execution_id"] is None and state["last_execution_id"] == "e1"


def test_a_run_that_lost_its_lease_places_nothing(env):
    env.seed({"GLD": 3})
    mine = lease.acquire(env.bus, "paper", "run-a", dt.timedelta(seconds=1), dt.datetime.now(UTC) - dt.timedelta(seconds=5))
    taker = lease.acquire(env.bus, "paper", "run-b")  # run-a's lease had expired: run-b takes it
    assert taker.generation == mine.generation + 1
    with pytest.raises(PreconditionFailedError, match="lost the lease"):
        env.run(held=mine)
    assert env.refs() == [] and env.bus.get(docs.execution_path("e1")) is None  # nothing sent, nothing written
    with pytest.raises(lease.LeaseLostError):
        mine.renew()


def test_a_hand_run_takes_the_lease_and_a_dry_run_moves_nothing(env):
    env.seed({"GLD": 3})
    other = lease.acquire(env.bus, "paper", "pipeline-run")
    with pytest.raises(lease.LeaseHeldError, match="pipeline-run"):
        env.run()  # dry_run=False by hand: needs the lease, which another run holds
    record = env.run(dry_run=True, eid="dry")
    assert record["status"] == "dry_run" and env.refs() == []
    assert env.bus.get(execution.state_path("paper")) is None  # no state, no ledger
    assert env.bus.get(docs.ledger_path("s")) is None
    other.release()
    assert env.run(eid="real")["status"] == "completed"
    assert env.bus.get(docs.lock_path("paper")) is None  # released after the hand run


def test_state_follows_only_what_the_broker_acknowledged(env):
    env.seed({"GLD": 3, "SPY": 2}, start={})
    assert env.run(eid="e1")["status"] == "completed"
    env.publish({"GLD": 5, "SPY": 4})
    with open_broker(env.url, "paper") as b:
        snapshot_to_bus(b, env.bus, "paper")
    ledger_before = env.bus.get(docs.ledger_path("s"))
    env.op.reject_next_order("no")  # GLD's buy is rejected; SPY's goes through
    record = env.run(eid="e2")
    assert record["status"] == "partial_success"
    assert record["accepted"]["held_back"] == ["STK:GLD:USD"]
    # The next run holds GLD's previous accepted target (3), not the untraded 5.
    prev = execution.previous_view(env.bus.get(docs.execution_path("e2")))
    held = {r["instrument"]: r["quantity"] for r in prev["per_strategy"]["s"]["targets"]}
    assert held == {"STK:GLD:USD": 3, "STK:SPY:USD": 4}
    assert ledger_before and env.bus.get(docs.ledger_path("s")) == ledger_before  # no P&L on untraded targets


def test_failed_placement_keeps_the_state_on_the_previous_execution(env):
    env.seed({"GLD": 3})
    assert env.run(eid="e1")["status"] == "completed"
    ledger_before = env.bus.get(docs.ledger_path("s"))
    env.publish({"GLD": 6})
    with open_broker(env.url, "paper") as b:
        snapshot_to_bus(b, env.bus, "paper")
    env.op.reject_next_order("no")
    record = env.run(eid="e2")
    assert record["status"] == "failed" and record["orders_placed"][0]["status"] == "Inactive"
    state = env.bus.get(execution.state_path("paper"))
    assert state["last_execution_id"] == "e1" and state["placing_execution_id"] is None
    assert env.bus.get(docs.ledger_path("s")) == ledger_before


def test_buys_are_rescaled_when_the_sell_that_funded_them_fails(env):
    # margin_multiplier below 1 leaves room for slippage and commission, as an operator would.
    env.seed({"GLD": 0, "SPY": 0}, {"risk__margin_multiplier": 0.99}, start={"GLD": 100})
    cash = env.op.snapshot().available_funds
    spy = env.op.price("SPY")
    # Buy SPY for nearly all cash plus GLD's proceeds: only the sale makes it affordable.
    want = int((cash + 100 * env.op.price("GLD") * 0.9) / spy)
    env.publish({"GLD": 0, "SPY": want})
    with open_broker(env.url, "paper") as b:
        snapshot_to_bus(b, env.bus, "paper")
    env.op.reject_next_order("sell refused")
    record = env.run(eid="e1")
    spy_row = next(r for r in record["orders_placed"] if r["symbol"] == "SPY")
    assert spy_row["totalQuantity"] < want and spy_row["status"] == "Filled"
    assert spy_row["totalQuantity"] * spy <= cash
    assert any("buying_power_after_failed_sells" in w for w in record["warnings"])


def test_a_3000_instrument_plan_keeps_the_record_under_1_mib_and_replays(tmp_path):
    bus = open_bus(f"sqlite:///{tmp_path / 'bus.sqlite'}")  # enforces Firestore's 1 MiB
    audit = open_audit(str(tmp_path / "runs"))
    rows = [target(f"S{i:04d}", 1 + i % 7, price=10.0 + i % 13) for i in range(3000)]
    i = inputs({"s": strategy(1.0)}, {"s": intent(*rows)}, portfolio(nav=10_000_000.0, account="DU1"),
               cfg=config(risk__max_instrument_exposure=1.0), execution_id="big")
    decision = decide(i)
    assert len(decision["orders"]) == 3000
    gathered = {"inputs": i, "context": {}, "state": {}}
    placing = execution.PlacementResult("placing", "", [], [])
    record = execution.build_record(execution_id="big", now=dt.datetime.now(UTC), mode="paper", trigger="manual",
                                    run_id="big", gathered=gathered, decision=decision, result=placing,
                                    notebooks=[], audit=audit)
    assert blobs.size(record) <= blobs.RECORD_LIMIT and record["parts_ref"]
    execution.write_ahead(bus, record, order_ids=None, account="DU1", client_id=1, fence=None)
    stored = bus.get(docs.execution_path("big"))
    assert stored["status"] == "placing" and stored["orders_planned"] == 3000
    result = replay(json.loads(json.dumps(stored, default=str)))
    assert result["orders_match"] and result["decision_match"]


def test_after_a_failed_reconcile_the_summary_names_the_earlier_snapshot(env):
    env.seed({"GLD": 0})
    taken = env.bus.get(docs.portfolio_path("paper"))["updated_at"]
    now = dt.datetime.now(UTC)
    record = execution.run_commander(env.bus, lambda: open_broker(env.url, "paper"), mode="paper", execution_id="e9",
                                     now=now, window_start=now - dt.timedelta(hours=1), dry_run=True,
                                     trigger="manual", run_id="e9", notebooks=[], reconcile_failed=True)
    assert record["summary"].startswith("Dry run") and "Reconcile failed in this run" in record["summary"]
    assert taken.isoformat().replace("+00:00", "Z")[:19] in record["summary"]
    assert env.bus.get(docs.execution_path("e9"))["summary"] == record["summary"]


def test_an_instrument_the_broker_does_not_know_never_sells_a_good_position(env):
    env.seed({"GLD": 5})
    assert env.run(eid="e1")["status"] == "completed" and env.held() == {"GLD": 5}
    # A typo'd row next to GLD: the simulator does not know it, so the whole intent is invalid.
    env.bus.set(docs.intent_path("s"), {**intent(target("GLD", 5, price=env.op.price("GLD")),
                                                 target("GLDD", 3, price=10.0)), "updated_at": dt.datetime.now(UTC)})
    with open_broker(env.url, "paper") as b:
        snapshot_to_bus(b, env.bus, "paper")
    record = env.run(eid="e2")
    skip = record["decision"]["skipped"][0]
    assert skip["reason"] == "invalid" and "GLDD" in skip["detail"] and skip["action"] == "hold_previous"
    assert not record["decision"]["orders"] and env.held() == {"GLD": 5}
