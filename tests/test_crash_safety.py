"""The crash-safety matrix: SIGKILL at every fault point, on the simulator and on the fake IB Gateway,
rerun three ways, and count the truth at the broker by orderRef (tests/crash_harness.py)."""
from __future__ import annotations

import pytest

from tests.crash_harness import (CONNECTION_FAULTS, FAULT_POINTS, RERUN_MODES, IBWorld, SimWorld, passed,
                                 run_connection_fault, run_scenario)

WORLDS = {"sim": SimWorld, "ib": IBWorld}


def _explain(v: dict) -> str:
    shown = {k: v[k] for k in ("duplicates", "orphans", "record_problems", "positions", "target", "killed",
                               "rerun_exit", "last_exit", "last_summary")}
    return f"{shown}\n" + "\n".join(v["log"])


@pytest.mark.parametrize("mode", RERUN_MODES)
@pytest.mark.parametrize("point", FAULT_POINTS)
@pytest.mark.parametrize("broker", sorted(WORLDS))
def test_sigkill_at_every_fault_point_never_doubles_or_loses_an_order(tmp_path, broker, point, mode):
    world = WORLDS[broker](tmp_path)
    try:
        v = run_scenario(world, tmp_path, point, mode)
    finally:
        world.close()
    assert v["killed"], f"the fault point {point} was never reached\n" + _explain(v)
    assert passed(v), _explain(v)


@pytest.mark.parametrize("mode", RERUN_MODES)
@pytest.mark.parametrize("fault", CONNECTION_FAULTS)
def test_connection_faults_at_the_gateway_never_double_or_lose_an_order(tmp_path, fault, mode):
    """Drops before and after an acknowledgement, a gateway restart that rolls order ids back, fills
    that happen while nobody is connected: counted at the fake gateway by every orderRef it received."""
    world = IBWorld(tmp_path)
    try:
        v = run_connection_fault(world, tmp_path, fault, mode)
    finally:
        world.close()
    assert passed(v), _explain(v)


def test_the_whole_pipeline_killed_mid_placement_recovers_without_a_person(tmp_path):
    """SIGKILL of the pipeline and its commander kernel after the first order; an immediate
    `--no-reconcile` rerun on the same host takes over the dead run's lease, resolves the
    interrupted execution with the broker and finishes the plan, each order sent once."""
    import collections
    import os
    import subprocess
    import sys

    from lib import documents as docs
    from lib.broker.sim import MANUAL_CLIENT_ID, SimBroker
    from lib.bus import open_bus
    from lib.execution import state_path
    from tests.crash_harness import ROOT

    bus_url, sim_path = f"sqlite:///{tmp_path / 'bus.sqlite'}", tmp_path / "sim.sqlite"
    cmd = [sys.executable, str(ROOT / "run_pipeline.py"), "--bus", bus_url, "--broker", f"sim:///{sim_path}",
           "--audit", str(tmp_path / "runs"), "--as-of", "2026-11-20", "--strategies", "dummy,spy_macd_vixy"]
    env = {**os.environ, "COMMANDER_FAULT": "after_order:1", "COMMANDER_FAULT_TREE": "1"}
    killed = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stdout + killed.stderr
    with open_bus(bus_url) as bus:
        state = bus.get(state_path("paper"))
        assert state["placing_execution_id"] and bus.get(docs.lock_path("paper"))  # left behind by the dead run
        interrupted = state["placing_execution_id"]
    env.pop("COMMANDER_FAULT")
    rerun = subprocess.run([*cmd, "--no-reconcile"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    with SimBroker(sim_path, client_id=MANUAL_CLIENT_ID) as op, open_bus(bus_url) as bus:
        refs = collections.Counter(o.order_ref for o in op.orders().values() if o.order_ref.startswith("cmdr-"))
        assert refs and max(refs.values()) == 1, refs  # no order sent twice
        assert not [o for o in op.snapshot().open_orders if o.order_ref.startswith("cmdr-")]
        record = bus.get(docs.execution_path(interrupted))
        assert record["status"] == "interrupted" and len(record["orders_placed"]) >= 2
        assert record["orders_placed"][0]["outcome"] == "filled"
        assert [r["outcome"] for r in record["orders_placed"][1:]] == ["not_sent"] * (len(record["orders_placed"]) - 1)
        last = bus.get(docs.execution_path(bus.get(state_path("paper"))["last_execution_id"]))
        want = {r["instrument"].split(":")[1]: r["quantity"] for r in last["decision"]["final_target"] if r["quantity"]}
        assert {h.contract.symbol: h.quantity for h in op.snapshot().holdings} == want


def test_a_reviewer_sees_an_interrupted_execution_resolved(tmp_path, monkeypatch):
    """The execution page of an interrupted run says what each planned order became at the broker."""
    from fastapi.testclient import TestClient

    from tests.crash_harness import Scenario, seed_bus
    world = SimWorld(tmp_path)
    sc = Scenario(world, tmp_path)
    world.start_holdings()
    seed_bus(sc.bus_url, world)
    assert sc.commander("--reconcile", fault="after_order:1").returncode == -9
    assert sc.commander().returncode == 0
    interrupted = next(i for i, r in sc.records().items() if r["status"] == "interrupted")
    monkeypatch.setenv("COMMANDER_BUS", sc.bus_url)
    monkeypatch.setenv("COMMANDER_AUDIT", sc.audit)
    import main
    page = TestClient(main.app, base_url="http://127.0.0.1").get(f"/executions/{interrupted}")
    assert page.status_code == 200
    assert "Interrupted, then resolved with the broker" in page.text and "1 filled, 3 not sent" in page.text
    assert "Nothing was resent" in page.text
