"""Bad flags and URLs stop a run before any stage (exit 2); a simulator clock ahead of today is followed."""
from __future__ import annotations

import subprocess
import sys

import pytest

from lib.broker.sim import SimBroker
from tests.crash_harness import ROOT
from tests.pipeline_env import PipelineEnv


@pytest.mark.parametrize("args, needle", [
    (["--as-of", "tomorrow"], "is not a date"),
    (["--as-of", "2099-01-02"], "is in the future"),
    (["--as-of", "2019-01-02"], "outside the simulator's bars"),
    (["--window-start", "yesterday"], "not an ISO-8601 time"),
    (["--window-start", "2026-12-02T21:00:00"], "has no time zone"),
    (["--broker", "ftp://x"], "broker 'ftp://x' (flag): expected sim"),
    (["--bus", "redis://x"], "bus 'redis://x' (flag): expected sqlite"),
    (["--audit", "s3://b/p"], "audit 's3://b/p' (flag): expected a local folder"),
])
def test_bad_flags_exit_2_before_any_stage(tmp_path, args, needle):
    base = ["--bus", f"sqlite:///{tmp_path / 'bus.sqlite'}", "--broker", f"sim:///{tmp_path / 'sim.sqlite'}",
            "--audit", str(tmp_path / "runs")]
    done = subprocess.run([sys.executable, "run_pipeline.py", *base, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and needle in done.stderr, done.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "bus.sqlite").exists()  # nothing ran


def test_a_simulator_clock_ahead_of_today_is_followed_and_said(tmp_path):
    env = PipelineEnv.embedded(tmp_path)
    ahead = "2027-11-19"  # the last bundled session: after any day this suite runs on
    with SimBroker(tmp_path / "sim.sqlite", as_of=ahead):
        pass
    result = env.run(as_of=None, strategies=[])
    assert result.exit_code == 0, result.message
    log = (tmp_path / "pipeline.log").read_text()
    assert f"the simulator's clock is at {ahead}" in log and "running at the simulator's clock" in log


def test_a_missing_config_on_a_bus_in_use_is_never_reseeded(tmp_path):
    from lib import documents as docs
    env = PipelineEnv.embedded(tmp_path)
    with env.bus() as bus:
        bus.set("strategies/mine", {"name": "mine", "enabled": True, "capital_allocation": 0.5})
    result = env.run(strategies=[])
    assert result.exit_code == 1 and "config/common is missing" in result.message and "--restore-config" in result.message
    with env.bus() as bus:
        assert bus.get(docs.common_config_path()) is None  # not silently recreated with trading enabled
    restored = subprocess.run([sys.executable, "-m", "lib.seed", "--bus", env.settings.bus, "--restore-config"],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert restored.returncode == 0, restored.stderr
    with env.bus() as bus:
        assert bus.get(docs.common_config_path())["tradingEnabled"] is False  # the operator resumes deliberately


def test_exposure_above_one_is_refused_naming_the_field():
    from lib.commander import decide
    from tests.commander_inputs import config, inputs, intent, strategy, target
    d = decide(inputs({"a": strategy(0.5)}, {"a": intent(target("SPY", 1))}, cfg=config(exposure__overall=5.0)))
    assert d["status"] == "blocked" and not d["orders"]
    assert "config/common: field 'exposure.overall'" in d["blocked_reasons"][0]["detail"]


def test_a_snapshot_dated_in_the_future_is_refused():
    from lib.commander import decide
    from tests.commander_inputs import inputs, intent, portfolio, strategy, target
    d = decide(inputs({"a": strategy(0.5)}, {"a": intent(target("SPY", 1))},
                      portfolio(updated_at="2030-01-02T00:00:00Z")))
    assert d["status"] == "blocked" and "is in the future" in d["blocked_reasons"][0]["detail"]
    assert "positions/paper/portfolio/latest: field 'updated_at'" in d["blocked_reasons"][0]["detail"]


def test_help_lists_every_command_and_the_exit_codes():
    done = subprocess.run([sys.executable, "run_pipeline.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    for needle in ("approve EXECUTION_ID", "commander", "backtest", "python -m lib.ops", "exit codes", "3 another run"):
        assert needle in done.stdout, needle


def test_summaries_are_singular_for_one_order_and_skip_reasons_are_never_cut():
    from lib import execution
    from lib.pipeline import RunResult, report
    decision = {"orders": [{"action": "BUY", "quantity": 3, "contract": {"symbol": "SPY"}}]}
    placed = [{"action": "BUY", "totalQuantity": 3, "symbol": "SPY", "orderId": 7, "status": "Filled",
               "instrument": "STK:SPY:USD"}]
    text = execution.summarize(decision, execution.PlacementResult("completed", "", placed, []))
    assert text == "Placed 1 order: BUY 3 SPY."
    long = "x" * 300
    rec = {"decision": {"skipped": [{"strategy": "s", "reason": "invalid", "detail": long}]}}
    assert long in report(RunResult(0, "completed", "ok", record=rec))
