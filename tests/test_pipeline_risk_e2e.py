"""One end-to-end run per risk and operations rule, on the simulator (embedded defaults)."""
from __future__ import annotations

import subprocess
import sys

from lib.broker.sim import SimBroker
from lib.seed import seed
from tests.pipeline_env import ROOT, PipelineEnv


def setup(tmp_path, **dummy):
    env = PipelineEnv.embedded(tmp_path)
    bus = env.bus()
    seed(bus)
    for other in ("spy_macd_vixy", "test_signal_generator"):
        bus.update(f"strategies/{other}", {"enabled": False})  # one strategy keeps each rule's effect plain
    if dummy:
        bus.update("strategies/dummy", dummy)
    return env, bus


def reasons(result) -> list[str]:
    return [s["reason"] for s in result.record["decision"]["skipped"] if s["reason"] != "disabled"]


def positions(env) -> dict[str, float]:
    with SimBroker(env.settings.broker[len("sim:///"):]) as sim:
        return {h.contract.symbol: h.quantity for h in sim.snapshot().holdings}


def test_max_drawdown_halts_a_strategy_until_cleared(tmp_path):
    env, bus = setup(tmp_path, parameters={"target_weights": {"VIXY": 1.0}},
                     risk_parameters={"max_drawdown": 0.1, "max_single_position_exposure": 1.0})
    first = env.run(strategies=["dummy"], as_of="2026-06-01")
    assert first.status == "completed" and positions(env)["VIXY"] > 0
    ledger = bus.get("strategies/dummy/ledger/latest")
    assert ledger["equity"] == ledger["capital"] == 100_000.0 and not ledger["halted"]

    second = env.run(strategies=["dummy"], as_of="2026-06-30")  # VIXY −16%: drawdown above 10%
    ledger = bus.get("strategies/dummy/ledger/latest")
    assert ledger["halted"] and ledger["drawdown"] >= 0.1 and len(ledger["history"]) == 2
    assert reasons(second) == ["drawdown"]
    assert [o["action"] for o in second.record["orders_placed"]] == ["SELL"]
    assert positions(env).get("VIXY", 0) == 0

    third = env.run(strategies=["dummy"], as_of="2026-07-01")
    assert reasons(third) == ["halted"]
    assert third.record["orders_placed"] == []

    res = subprocess.run([sys.executable, "-m", "lib.commander", "clear-halt", "dummy", "--bus", env.settings.bus],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "cleared" in res.stdout
    fourth = env.run(strategies=["dummy"], as_of="2026-07-02")
    assert reasons(fourth) == [] and positions(env)["VIXY"] > 0


def test_buying_power_order_cap_and_orders_per_run(tmp_path):
    env, bus = setup(tmp_path)
    common = bus.get("config/common")
    common["risk"].update(margin_multiplier=0.05, max_order_notional=20_000.0)
    bus.set("config/common", common)
    result = env.run(strategies=["dummy"])
    rules = {a["rule"] for a in result.record["decision"]["adjustments"]}
    assert {"max_order_notional"} <= rules
    bought = sum(o["totalQuantity"] * o["avgFillPrice"] for o in result.record["orders_placed"])
    assert 0 < bought <= 50_000 * 1.001  # 1,000,000 available × 0.05 (plus slippage)
    assert all(o["totalQuantity"] * o["avgFillPrice"] <= 20_000 * 1.001 for o in result.record["orders_placed"])

    common["risk"].update(margin_multiplier=1.0, max_order_notional=None, max_orders_per_run=1)
    bus.set("config/common", common)
    capped = env.run(strategies=["dummy"])
    assert len(capped.record["orders_placed"]) == 1
    assert "max_orders_per_run" in {a["rule"] for a in capped.record["decision"]["adjustments"]}


def test_reduce_only_state(tmp_path):
    env, bus = setup(tmp_path)
    assert env.run(strategies=["dummy"]).status == "completed"
    held = positions(env)
    bus.update("strategies/dummy", {"parameters": {"target_weights": {"GLD": 1.0, "TLT": 0.0}}})
    bus.update("config/common", {"tradingState": "reduce_only"})
    result = env.run(strategies=["dummy"])
    assert [(o["action"], o["symbol"]) for o in result.record["orders_placed"]] == [("SELL", "TLT")]
    after = positions(env)
    assert after.get("TLT", 0) == 0 and after["GLD"] == held["GLD"]
    assert "reduce_only" in {a["rule"] for a in result.record["decision"]["adjustments"]}


def test_halted_state_records_the_plan_and_places_nothing(tmp_path):
    env, bus = setup(tmp_path)
    bus.update("config/common", {"tradingState": "halted"})
    result = env.run(strategies=["dummy"])
    assert result.status == "disabled" and result.record["decision"]["orders"] and positions(env) == {}


def approve(env, execution_id):
    return subprocess.run([sys.executable, "run_pipeline.py", "approve", execution_id, "--bus", env.settings.bus,
                           "--broker", env.settings.broker], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_approval_gate_places_exactly_the_approved_plan_once(tmp_path):
    env, bus = setup(tmp_path)
    bus.update("config/common", {"approval": {"notional": 1_000.0, "fraction_of_nav": None}})
    waiting = env.run(strategies=["dummy"])
    assert waiting.exit_code == 0 and waiting.status == "awaiting_approval"
    assert positions(env) == {} and waiting.record["summary"].startswith("Awaiting approval")
    plan = [(o["action"], o["quantity"], o["contract"]["symbol"]) for o in waiting.record["decision"]["orders"]]

    res = approve(env, waiting.execution_id)
    assert res.returncode == 0, res.stdout + res.stderr
    record = bus.get(f"executions/{waiting.execution_id}")
    assert record["status"] == "completed" and record["summary"].startswith("Approved. Placed")
    assert [(o["action"], o["totalQuantity"], o["symbol"]) for o in record["orders_placed"]] == plan
    assert positions(env) == {s: q for _, q, s in plan}

    again = approve(env, waiting.execution_id)
    assert again.returncode == 1 and "not 'awaiting_approval'" in again.stdout


def test_approval_refused_when_the_snapshot_changed(tmp_path):
    env, bus = setup(tmp_path)
    bus.update("config/common", {"approval": {"notional": 1_000.0, "fraction_of_nav": None}})
    waiting = env.run(strategies=["dummy"])
    assert env.sim("trade", "QQQ", "BUY", "3").returncode == 0
    env.run(strategies=["dummy"], dry_run=True)  # reconcile writes a new snapshot
    res = approve(env, waiting.execution_id)
    assert res.returncode == 1 and "changed since the plan was made" in res.stdout
    assert positions(env) == {"QQQ": 3}
    assert bus.get(f"executions/{waiting.execution_id}")["status"] == "awaiting_approval"


def test_orders_are_paced(tmp_path):
    env, bus = setup(tmp_path)
    bus.update("config/common", {"order_rate_per_second": 0.25})  # one order every 4 s
    result = env.run()
    placed = result.record["orders_placed"]
    assert len(placed) >= 2
    assert placed[0]["paced_wait"] == 0.0 and all(o["paced_wait"] > 1.0 for o in placed[1:])
