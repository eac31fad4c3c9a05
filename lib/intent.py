"""Building and publishing a strategy's intent (`strategies/{id}/intent/latest`).

A strategy calls `publish_weights` (or `publish_quantities`) on success and `publish_error` when it
fails, so the Commander can tell an error from a missing intent.
"""
from __future__ import annotations

import datetime as dt
from typing import Any, Mapping

from lib import documents as docs
from lib.bus import Bus

UTC = dt.timezone.utc


def _row(symbol: str, price: float | None, **amount) -> dict[str, Any]:
    row = {"symbol": symbol, "secType": "STK", "exchange": "SMART", "currency": "USD", **amount}
    if price is not None:
        row["price"] = float(price)
    return row


def build(targets: list[dict], metadata: Mapping[str, Any] | None = None, now: dt.datetime | None = None) -> dict:
    """A validated intent document (raises DocumentError naming the field on a bad row)."""
    doc = {"updated_at": now or dt.datetime.now(UTC), "status": "success", "error_message": None,
           "metadata": dict(metadata or {}), "target_positions": targets}
    docs.load(docs.Intent, "intent", doc)
    return doc


def publish_weights(bus: Bus, strategy_id: str, weights: Mapping[str, float], prices: Mapping[str, float],
                    metadata: Mapping[str, Any] | None = None, now: dt.datetime | None = None) -> dict:
    """Publish signed weights (fraction of the strategy's capital) with reference prices; returns the document.

    Zero weights are published too: they tell the Commander to flatten that instrument.
    """
    targets = [_row(s, prices.get(s), weight=float(w)) for s, w in sorted(weights.items())]
    doc = build(targets, metadata, now)
    bus.set(docs.intent_path(strategy_id), doc)
    return doc


def publish_quantities(bus: Bus, strategy_id: str, quantities: Mapping[str, int], prices: Mapping[str, float],
                       metadata: Mapping[str, Any] | None = None, now: dt.datetime | None = None) -> dict:
    """Publish signed share quantities with reference prices; returns the document."""
    targets = [_row(s, prices.get(s), quantity=int(q)) for s, q in sorted(quantities.items())]
    doc = build(targets, metadata, now)
    bus.set(docs.intent_path(strategy_id), doc)
    return doc


def publish_error(bus: Bus, strategy_id: str, error: BaseException | str, now: dt.datetime | None = None) -> dict:
    """Record that the strategy failed (status 'error'), keeping no targets."""
    message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    doc = {"updated_at": now or dt.datetime.now(UTC), "status": "error", "error_message": message[:2000],
           "metadata": {}, "target_positions": []}
    bus.set(docs.intent_path(strategy_id), doc)
    return doc
