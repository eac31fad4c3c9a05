"""End to end on the embedded defaults: SQLite bus, simulated broker, runs/ folder."""
from __future__ import annotations

import json

import nbformat
import pytest

from lib import documents as docs
from lib.broker.sim import SimBroker
from tests.pipeline_env import ROOT, PipelineEnv


def positions(env) -> dict[str, float]:
    with SimBroker(env.settings.broker[len("sim:///"):]) as sim:
        return {h.contract.symbol: h.quantity for h in sim.snapshot().holdings}


def placed(result) -> list[tuple[str, int, str]]:
    return [(o["action"], o["totalQuantity"], o["symbol"]) for o in result.record["orders_placed"]]


def test_embedded_run_trades_records_and_is_idempotent(tmp_path):
    env = PipelineEnv.embedded(tmp_path)
    first = env.run()
    assert first.exit_code == 0, first.message
    assert first.status == "completed"
    orders = placed(first)
    assert orders and all(a == "BUY" for a, _, _ in orders)
    assert {s for _, _, s in orders} >= {"SPY", "GLD", "TLT"}
    assert all(o["status"] == "Filled" for o in first.record["orders_placed"])

    # The bus holds the three intents, the snapshot and the execution.
    bus = env.bus()
    for sid in ("spy_macd_vixy", "test_signal_generator", "dummy"):
        intent = docs.load(docs.Intent, docs.intent_path(sid), bus.get(docs.intent_path(sid)))
        assert intent.status == "success" and intent.target_positions
    snap = docs.load(docs.PortfolioSnapshot, "positions/paper/portfolio/latest", bus.get("positions/paper/portfolio/latest"))
    assert snap.account.startswith("DU")
    record = bus.get(f"executions/{first.execution_id}")
    assert record["status"] == "completed" and record["summary"].startswith("Placed")
    assert record["context"]["portfolio_fingerprint"].startswith("sha256:")

    # runs/ holds all five executed notebooks, with outputs, linked from the record.
    files = sorted((tmp_path / "runs").rglob("*.ipynb"))
    assert [f.name[3:] for f in files] == ["dummy.ipynb", "spy_macd_vixy.ipynb", "test_signal_generator.ipynb",
                                           "reconcile.ipynb", "commander.ipynb"]
    assert [str(f) for f in files] == record["notebooks"]
    commander = nbformat.read(files[-1], as_version=4)
    assert any(c.get("outputs") for c in commander.cells if c.cell_type == "code")

    # Positions equal the final target.
    final = {r["instrument"].split(":")[1]: r["quantity"] for r in record["decision"]["final_target"]}
    held = positions(env)
    assert {s: q for s, q in held.items() if q} == {s: q for s, q in final.items() if q}

    # A second run right after places nothing new.
    second = env.run()
    assert second.exit_code == 0 and second.status == "completed", second.message
    assert second.record["orders_placed"] == [] and positions(env) == held

    # Manual trading between runs: an unmanaged trade is left alone, a managed one is absorbed, a manual
    # resting order counts as pending instead of being doubled.
    assert env.sim("trade", "QQQ", "BUY", "7").returncode == 0
    assert env.sim("trade", "SPY", "SELL", "100").returncode == 0
    assert env.sim("order", "GLD", "BUY", "30", "--limit", "1.00").returncode == 0
    third = env.run()
    assert third.exit_code == 0, third.message
    assert sorted(placed(third)) == [("BUY", 100, "SPY"), ("SELL", 30, "GLD")]
    after = positions(env)
    assert after["QQQ"] == 7 and after["SPY"] == held["SPY"] and after["GLD"] == held["GLD"] - 30
    diff = {r["instrument"]: r for r in third.record["decision"]["diff"]}
    assert diff["STK:GLD:USD"]["pending_manual"] == 30


def test_failing_strategy_records_error_and_holds_previous_targets(tmp_path):
    env = PipelineEnv.embedded(tmp_path)
    bus = env.bus()
    from lib.seed import seed
    seed(bus)
    bus.update("strategies/dummy", {"enabled": False})
    bus.update("strategies/test_signal_generator", {"enabled": False})
    bus.set("strategies/flaky", {"name": "flaky", "enabled": True, "capital_allocation": 0.2,
                                 "notebook": "notebooks/strategies/dummy.ipynb"})
    first = env.run()
    assert first.exit_code == 0, first.message
    held = positions(env)
    assert held.get("GLD") and held.get("TLT")

    bus.update("strategies/flaky", {"notebook": "tests/notebooks/raising_strategy.ipynb"})
    second = env.run()
    flaky = bus.get("strategies/flaky/intent/latest")
    assert flaky["status"] == "error" and "market data vendor is down" in flaky["error_message"]
    skipped = {s["strategy"]: s for s in second.record["decision"]["skipped"]}
    assert skipped["flaky"]["reason"] == "error" and skipped["flaky"]["action"] == "hold_previous"
    assert second.record["decision"]["per_strategy"]["flaky"]["source"] == "previous"
    assert positions(env) == held  # its GLD and TLT are held, not sold
    assert second.exit_code == 1  # a failed stage makes the run fail, after the Commander did its job
    failed = [s for s in second.stages if not s.ok]
    assert [s.name for s in failed] == ["strategy flaky"]
    banner = nbformat.read(tmp_path / "runs" / failed[0].notebook.split("runs/")[-1], as_version=4)
    assert "market data vendor is down" in json.dumps(banner)


def test_hanging_strategy_is_killed_and_others_go_on(tmp_path):
    env = PipelineEnv.embedded(tmp_path)
    bus = env.bus()
    from lib.seed import seed
    seed(bus)
    bus.set("strategies/hangs", {"name": "hangs", "enabled": True, "capital_allocation": 0.1,
                                 "notebook": "tests/notebooks/hanging_strategy.ipynb"})
    result = env.run(strategies=["hangs", "dummy"], strategy_timeout=8.0)
    by_name = {s.name: s for s in result.stages}
    assert not by_name["strategy hangs"].ok and "timed out" in by_name["strategy hangs"].error
    assert by_name["strategy dummy"].ok and by_name["commander"].ok
    assert bus.get("strategies/hangs/intent/latest")["status"] == "error"
    assert result.record["status"] == "completed"


def test_dry_run_plans_and_places_nothing(tmp_path):
    env = PipelineEnv.embedded(tmp_path)
    result = env.run(dry_run=True, strategies=["dummy"])
    assert result.exit_code == 0 and result.status == "dry_run"
    assert result.record["orders_placed"] == [] and result.record["decision"]["orders"]
    assert positions(env) == {}
    assert result.record["summary"].startswith("Dry run: would place")


def test_kill_switch_records_the_decision_and_places_nothing(tmp_path):
    env = PipelineEnv.embedded(tmp_path)
    bus = env.bus()
    from lib.seed import seed
    seed(bus)
    bus.update("config/common", {"tradingEnabled": False})
    result = env.run(strategies=["dummy"])
    assert result.status == "disabled" and result.exit_code == 0
    assert result.record["decision"]["orders"] and positions(env) == {}


def test_lease_held_by_another_run_fails_fast(tmp_path):
    import datetime as dt
    from lib import lease
    env = PipelineEnv.embedded(tmp_path)
    bus = env.bus()
    lease.acquire(bus, "paper", "someone-else", dt.timedelta(minutes=30))
    result = env.run()
    assert result.exit_code == 3 and result.status == "locked"
    assert "someone-else" in result.message
    assert positions(env) == {} and bus.list("executions") == {}


def test_closed_exchange_day_does_nothing_unless_forced(tmp_path):
    env = PipelineEnv.embedded(tmp_path)
    result = env.run(as_of="2026-11-26")  # Thanksgiving
    assert result.exit_code == 0 and result.status == "closed" and "not a trading session" in result.message
    assert env.bus().list("executions") == {}


def test_cli_exit_codes_and_report(tmp_path):
    import subprocess
    import sys
    env = PipelineEnv.embedded(tmp_path)
    args = [sys.executable, "run_pipeline.py", "--bus", env.settings.bus, "--broker", env.settings.broker,
            "--audit", env.settings.audit, "--as-of", "2026-11-20", "--strategies", "nope"]
    res = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "unknown strategies: nope" in res.stdout
    res = subprocess.run(args[:-2] + ["--strategies", "dummy", "--dry-run", "--log-format", "json"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(l) for l in res.stdout.splitlines() if l.strip()]
    assert all("severity" in l for l in lines)
    assert lines[-1]["result"]["status"] == "dry_run"
