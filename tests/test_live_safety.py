"""Live safety (issue 12): a live bus is seeded with trading disabled and no enabled strategy;
placing in live needs config/live.account set and equal to the broker's account, else nothing is
placed and the record says why; a live run says in its first line which account it trades."""
from __future__ import annotations

import datetime as dt
import subprocess
import sys

import pytest

from lib import documents as docs
from lib.broker.base import check_account
from lib.bus import open_bus
from lib.errors import AccountMismatchError
from lib.seed import DEFAULT_STRATEGIES, default_documents, seed
from tests.pipeline_env import ROOT

LIVE = "U1234567"


# ---- pure -----------------------------------------------------------------------------------------
def test_live_seed_disables_trading_and_every_strategy(tmp_path):
    bus = open_bus(f"sqlite:///{tmp_path / 'bus.sqlite'}")
    result = seed(bus, "live")
    assert set(result.values()) == {"created"}
    assert set(result) == {"config/common", "config/live", *(docs.strategy_path(s) for s in DEFAULT_STRATEGIES)}
    common = docs.load(docs.CommonConfig, "config/common", bus.get("config/common"))
    assert common.tradingEnabled is False
    assert bus.get("config/live") == {"account": None}
    assert not any(bus.get(docs.strategy_path(s))["enabled"] for s in DEFAULT_STRATEGIES)
    # Paper keeps its defaults: trading on the simulator, the examples enabled.
    paper = default_documents("paper")
    assert paper["config/common"]["tradingEnabled"] is True and "config/paper" in paper
    assert all(paper[docs.strategy_path(s)]["enabled"] for s in DEFAULT_STRATEGIES)
    with pytest.raises(ValueError, match="unknown trading mode 'real'"):
        default_documents("real")


def test_seed_command_for_live(tmp_path):
    url = f"sqlite:///{tmp_path / 'bus.sqlite'}"
    out = subprocess.run([sys.executable, "-m", "lib.seed", "--bus", url, "--mode", "live"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert "created  config/live" in out and "config/live.account" in out
    bus = open_bus(url)
    assert bus.get("config/common")["tradingEnabled"] is False and bus.get("config/paper") is None
    bad = subprocess.run([sys.executable, "-m", "lib.seed", "--bus", url, "--mode", "real"], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--mode" in bad.stderr


def test_placing_in_live_needs_the_configured_account():
    with pytest.raises(AccountMismatchError, match="config/live: field 'account' is not set"):
        check_account(LIVE, "live", None)
    with pytest.raises(AccountMismatchError, match="does not match config/live.account"):
        check_account(LIVE, "live", "U7654321")
    check_account(LIVE, "live", LIVE)
    check_account(LIVE, "live", None, placing=False)  # reconcile only reads
    check_account("DU1", "paper", None)  # paper needs no configured account


def test_the_simulator_refuses_a_live_order_without_the_configured_account(tmp_path):
    from lib.broker import Contract, OrderRequest
    from lib.broker.sim import SimBroker
    with SimBroker(tmp_path / "sim.sqlite", mode="live", account=LIVE, as_of="2026-11-20") as sim:
        with pytest.raises(AccountMismatchError, match="config/live"):
            sim.place_order(OrderRequest(Contract("SPY"), "BUY", 1))
        assert sim.orders() == {}


# ---- end to end on the simulator -------------------------------------------------------------------
def test_a_live_bus_seeds_safe_announces_and_places_only_on_the_configured_account(tmp_path):
    from lib import pipeline
    from lib.broker.sim import SimBroker
    from lib.progress import Progress
    from lib.settings import Settings

    SimBroker(tmp_path / "sim.sqlite", account=LIVE, as_of="2026-11-20").close()
    settings = Settings(mode="live", bus=f"sqlite:///{tmp_path / 'bus.sqlite'}",
                        broker=f"sim:///{tmp_path / 'sim.sqlite'}", audit=str(tmp_path / "runs"))
    log_path = tmp_path / "pipeline.log"

    def log():
        return Progress(stream=open(log_path, "a"))

    # The first run on an empty bus: seeded safe, says it has no account to trade, places nothing.
    first = pipeline.run(settings, pipeline.Options(as_of="2026-11-20", strategy_timeout=120.0), log())
    assert first.exit_code == 0 and first.status == "disabled", first.message
    lines = log_path.read_text().splitlines()
    assert lines[0].startswith(f"run {first.run_id}: mode=live")
    assert "LIVE: config/live.account is not set" in lines[0]
    assert "live: tradingEnabled false" in lines[1]
    bus = open_bus(settings.bus)
    assert bus.get("config/common")["tradingEnabled"] is False and bus.get("config/live") == {"account": None}
    assert first.stages == [s for s in first.stages if s.name in ("reconcile", "commander")]  # no strategy ran

    # An operator turns trading on and enables a strategy, but has not named the account yet.
    bus.update("config/common", {"tradingEnabled": True})
    bus.set(docs.strategy_path("holder"), docs.dump(docs.StrategyConfig(name="holder", enabled=True,
                                                                          capital_allocation=0.1)))
    bus.set(docs.intent_path("holder"), {"updated_at": dt.datetime.now(dt.timezone.utc), "status": "success",
                                         "target_positions": [{"symbol": "SPY", "quantity": 5, "price": 642.57}]})
    unnamed = pipeline.commander(settings, reconcile=True, progress=log())
    assert unnamed.status == "failed" and unnamed.record["placed_orders"] is False
    assert "config/live: field 'account' is not set" in unnamed.message
    assert [o["action"] for o in unnamed.record["decision"]["orders"]] == ["BUY"]  # decided, not placed

    bus.set("config/live", {"account": "U7654321"})
    wrong = pipeline.commander(settings, progress=log())
    assert wrong.status == "failed" and "does not match config/live.account = 'U7654321'" in wrong.message

    bus.set("config/live", {"account": LIVE})
    named = pipeline.commander(settings, progress=log())
    assert named.status == "completed", named.message
    assert [(o["action"], o["totalQuantity"], o["symbol"]) for o in named.record["orders_placed"]] == [
        ("BUY", 5, "SPY")]
    assert f"LIVE: trades account {LIVE} (config/live.account)" in log_path.read_text().splitlines()[-1]
    with SimBroker(tmp_path / "sim.sqlite") as sim:
        assert [(o.action, o.quantity) for o in sim.orders().values()] == [("BUY", 5.0)]  # exactly one order ever
