"""Document models, settings and seeding."""
from __future__ import annotations

import datetime as dt
import subprocess
import sys

import pytest

from lib import documents as docs
from lib.bus import open_bus
from lib.errors import DocumentError
from lib.seed import DEFAULT_STRATEGIES, seed
from lib.settings import resolve

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_intent_error_names_path_and_field():
    with pytest.raises(DocumentError) as err:
        docs.load(docs.Intent, "strategies/a/intent/latest", {
            "updated_at": "2025-10-29T16:10:00Z", "status": "success",
            "target_positions": [{"symbol": "SPY", "quantity": 1}, {"symbol": "VIXY", "weight": "lots"}]})
    assert err.value.path == "strategies/a/intent/latest"
    assert err.value.field == "target_positions[1].weight"


@pytest.mark.parametrize("target, field", [
    ({"symbol": "SPY"}, "target_positions[0]"),
    ({"symbol": "SPY", "quantity": 1, "weight": 0.1}, "target_positions[0]"),
    ({"symbol": "SPY", "quantity": 1.5}, "target_positions[0].quantity"),
    ({"symbol": "SPY", "weight": float("nan")}, "target_positions[0].weight"),
    ({"symbol": "SPY", "quantity": 1, "price": -3}, "target_positions[0].price"),
    ({"symbol": "", "quantity": 1}, "target_positions[0].symbol"),
    ({"symbol": "SPY", "qty": 1}, "target_positions[0].qty"),
])
def test_bad_targets_refused(target, field):
    with pytest.raises(DocumentError) as err:
        docs.load(docs.Intent, "strategies/s/intent/latest",
                  {"updated_at": "2025-10-29T16:10:00Z", "status": "success", "target_positions": [target]})
    assert err.value.field == field


def test_timestamps_are_aware_utc():
    intent = docs.load(docs.Intent, "p/q", {"updated_at": "2025-10-29T18:10:00+02:00", "status": "success"})
    assert intent.updated_at == dt.datetime(2025, 10, 29, 16, 10, tzinfo=dt.timezone.utc)
    with pytest.raises(DocumentError, match="updated_at"):
        docs.load(docs.Intent, "p/q", {"updated_at": "2025-10-29T18:10:00", "status": "success"})


def test_config_typo_is_refused():
    with pytest.raises(DocumentError) as err:
        docs.load(docs.CommonConfig, "config/common", {"tradingEnable": True})
    assert err.value.field == "tradingEnable"


def test_snapshot_zero_net_liquidation_refused():
    with pytest.raises(DocumentError) as err:
        docs.load(docs.PortfolioSnapshot, "positions/paper/portfolio/latest",
                  {"updated_at": "2025-10-29T16:15:00Z", "account": "DU1", "net_liquidation": 0,
                   "available_funds": 0})
    assert err.value.field == "net_liquidation"


def test_settings_precedence():
    env = {"COMMANDER_BUS": "sqlite:///env.sqlite", "COMMANDER_MODE": "paper"}
    s = resolve({"bus": None, "broker": "ib://127.0.0.1:4002?client_id=7"}, env)
    assert (s.mode, s.bus, s.broker, s.audit) == ("paper", "sqlite:///env.sqlite",
                                                  "ib://127.0.0.1:4002?client_id=7", "runs/")
    assert {k: s.sources[k] for k in ("mode", "bus", "broker", "audit", "data")} == {
        "mode": "$COMMANDER_MODE", "bus": "$COMMANDER_BUS", "broker": "flag", "audit": "default", "data": "default"}
    assert resolve({"bus": "sqlite:///flag.sqlite"}, env).bus == "sqlite:///flag.sqlite"


def test_live_is_never_a_default():
    assert resolve({}, {}).mode == "paper"
    assert resolve({"mode": "live"}, {}).mode == "live"
    with pytest.raises(ValueError, match="mode"):
        resolve({"mode": "real"}, {})


def test_seed_creates_and_never_overwrites(bus):
    first = seed(bus)
    assert set(first.values()) == {"created"}
    assert sum(c.capital_allocation for c in DEFAULT_STRATEGIES.values()) <= 1.0
    assert set(bus.list("strategies")) == set(DEFAULT_STRATEGIES)
    bus.update("config/common", {"tradingEnabled": False})
    second = seed(bus)
    assert set(second.values()) == {"kept"}
    assert bus.get("config/common")["tradingEnabled"] is False
    for sid in DEFAULT_STRATEGIES:
        docs.load(docs.StrategyConfig, f"strategies/{sid}", bus.get(f"strategies/{sid}"))
    docs.load(docs.CommonConfig, "config/common", bus.get("config/common"))


def test_seed_command(tmp_path):
    url = f"sqlite:///{tmp_path / 'bus.sqlite'}"
    out = subprocess.run([sys.executable, "-m", "lib.seed", "--bus", url], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert "created  config/common" in out
    again = subprocess.run([sys.executable, "-m", "lib.seed", "--bus", url], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout
    assert "kept     config/common" in again and "created" not in again
