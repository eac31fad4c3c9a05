"""The operator's command line (`python -m lib.ops`): validated, atomic writes with a trail."""
from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import pytest

from lib import documents as docs
from lib import lease, ops
from lib.bus import open_bus
from lib.seed import seed
from tests.crash_harness import ROOT

UTC = dt.timezone.utc


@pytest.fixture
def bus_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'bus.sqlite'}"
    with open_bus(url) as bus:
        seed(bus)
    return url


def cli(bus_url, *args):
    return subprocess.run([sys.executable, "-m", "lib.ops", "--bus", bus_url, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def trail(bus_url):
    with open_bus(bus_url) as bus:
        return [d["what"] for _, d in bus.page("operations", order_by="at", limit=50, descending=False)]


def test_strategy_commands_validate_and_leave_a_trail(bus_url):
    assert cli(bus_url, "strategies", "disable", "dummy").returncode == 0
    done = cli(bus_url, "strategies", "set-allocation", "spy_macd_vixy", "0.95")
    assert done.returncode == 1 and "sum to 1.05" in done.stderr  # 0.95 + 0.1 enabled elsewhere: refused whole
    assert cli(bus_url, "strategies", "set-allocation", "spy_macd_vixy", "0.8").returncode == 0
    bad = cli(bus_url, "strategies", "set-allocation", "spy_macd_vixy", "-1")
    assert bad.returncode == 1 and "strategies/spy_macd_vixy: field 'capital_allocation'" in bad.stderr
    added = cli(bus_url, "strategies", "add", "notebooks/strategies/dummy.ipynb", "--id", "dummy2",
                "--allocation", "0.05", "--enable")
    assert added.returncode == 0, added.stderr
    listed = cli(bus_url, "strategies", "list").stdout
    assert "dummy2" in listed and "notebooks/strategies/dummy.ipynb" in listed
    with open_bus(bus_url) as bus:
        assert bus.get("strategies/dummy")["enabled"] is False
        assert bus.get("strategies/spy_macd_vixy")["capital_allocation"] == 0.8
        entries = [d for _, d in bus.page("operations", order_by="at", limit=50)]
    assert trail(bus_url) == ["strategies disable dummy", "strategies set-allocation spy_macd_vixy 0.8",
                              "strategies add dummy2"]
    assert all(e["user"] and e["host"] for e in entries)
    change = next(e for e in entries if e["what"] == "strategies set-allocation spy_macd_vixy 0.8")
    assert change["before"]["strategies/spy_macd_vixy"]["capital_allocation"] == 0.6


def test_config_set_halt_resume_and_trading_state(bus_url):
    bad = cli(bus_url, "config", "set", "orders.type", '"XYZ"')
    assert bad.returncode == 1 and "config/common: field 'orders.type'" in bad.stderr
    assert cli(bus_url, "config", "set", "risk.allow_short", "true").returncode == 0
    assert cli(bus_url, "halt").returncode == 0
    assert cli(bus_url, "trading-state", "reduce_only").returncode == 0
    with open_bus(bus_url) as bus:
        cfg = bus.get("config/common")
    assert cfg["risk"]["allow_short"] is True and cfg["tradingEnabled"] is False and cfg["tradingState"] == "reduce_only"
    assert cli(bus_url, "resume").returncode == 0
    assert trail(bus_url) == ['config set risk.allow_short true', "halt", "trading-state reduce_only", "resume"]


def test_a_missing_config_is_never_recreated_by_a_setting(bus_url):
    with open_bus(bus_url) as bus:
        bus.delete("config/common")
    done = cli(bus_url, "resume")
    assert done.returncode == 1 and "config/common is missing" in done.stderr
    with open_bus(bus_url) as bus:
        assert bus.get("config/common") is None and bus.list("operations") == {}


def test_lock_clear_only_for_a_gone_or_expired_holder(bus_url):
    with open_bus(bus_url) as bus:
        held = lease.acquire(bus, "paper", "live-run")  # this test process: alive
        with pytest.raises(ops.OpsError, match="looks alive"):
            ops.clear_lock(bus, "paper")
        assert bus.get(docs.lock_path("paper"))["owner"] == "live-run"
        ops.clear_lock(bus, "paper", now=dt.datetime.now(UTC) + dt.timedelta(minutes=5))  # expired by then
        assert bus.get(docs.lock_path("paper")) is None
        held.release()


def test_executions_list_export_replays_and_approvals_list(bus_url, tmp_path):
    run = subprocess.run([sys.executable, "run_pipeline.py", "commander", "--reconcile", "--dry-run", "--bus", bus_url,
                          "--broker", f"sim:///{tmp_path / 'sim.sqlite'}?as_of=2026-11-20",
                          "--audit", str(tmp_path / "runs")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    listed = cli(bus_url, "executions", "list").stdout.splitlines()
    assert len(listed) == 2 and "dry_run" in listed[1]
    eid = listed[1].split()[0]
    out = tmp_path / "record.json"
    assert cli(bus_url, "executions", "export", eid, "--out", str(out)).returncode == 0
    assert json.loads(out.read_text())["execution_id"] == eid
    replayed = subprocess.run([sys.executable, "-m", "lib.commander", "replay", str(out)], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
    assert replayed.returncode == 0 and "match" in replayed.stderr
    assert "No execution awaits approval." in cli(bus_url, "approvals", "list").stdout
