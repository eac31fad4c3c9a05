"""A NaN written straight into Firestore (which stores it) blocks only what depends on that document,
and the record names the document and the field."""
from __future__ import annotations

import datetime as dt

from lib import documents as docs
from lib import execution
from lib.bus import open_bus
from lib.commander import decide
from tests.commander_inputs import config, strategy

UTC = dt.timezone.utc


def test_nan_in_one_intent_skips_that_strategy_only(firestore_url):
    now = dt.datetime.now(UTC)
    with open_bus(firestore_url) as bus:
        bus.set(docs.common_config_path(), config())
        for sid in ("good", "bad"):
            bus.set(docs.strategy_path(sid), strategy(0.4))
        bus.set(docs.portfolio_path("paper"), {"updated_at": now, "account": "DU1", "net_liquidation": 100_000.0,
                                               "available_funds": 100_000.0, "holdings": [], "open_orders": []})
        row = {"symbol": "SPY", "secType": "STK", "currency": "USD", "quantity": 3, "price": 100.0}
        bus.set(docs.intent_path("good"), {"updated_at": now, "status": "success", "target_positions": [row]})
        # Bypass our own write checks, as another writer (the console, a script) could.
        bus._client.document(docs.intent_path("bad")).set(
            {"updated_at": now, "status": "success", "target_positions": [{**row, "symbol": "TLT", "price": float("nan")}]})
        gathered = execution.gather_inputs(bus, "paper", "e1", now + dt.timedelta(minutes=1), now - dt.timedelta(hours=1))
    d = decide(gathered["inputs"])
    assert d["status"] == "ok" and [o["contract"]["symbol"] for o in d["orders"]] == ["SPY"]
    skip = next(s for s in d["skipped"] if s["strategy"] == "bad")
    assert "strategies/bad/intent/latest" in skip["detail"] and "target_positions[0].price" in skip["detail"]
