"""The Commander's own book: per instrument, the position its own orders built.

Kept at `books/commander-{mode}` and brought up to date every placing run from what the broker
reports about the orders that carry our `orderRef` (open, completed, executions: matched by
`orderRef`, each counted once however often the broker reports it). The broker's holding minus
this book is the *manual part* — what a person bought or sold by hand — which the `respect`
manual-trade policy leaves alone.

Gaps: an order the book was still following that the broker no longer reports at all (IB forgets
completed orders and executions after a while) leaves its fills unknown: that instrument's book is
marked uncertain until an operator settles it (`python -m lib.ops manual release|settle`).
"""
from __future__ import annotations

import datetime as dt
from typing import Iterable

from lib.broker.base import OrderState
from lib.canonical import iso
from lib.commander.instrument import Catalog

UTC = dt.timezone.utc
#: Finished orders are remembered this long, then folded into `cutoff` (already booked, ignored after).
KEEP = dt.timedelta(days=7)


def book_path(mode: str) -> str:
    return f"books/commander-{mode}"


def ref_time(ref: str, prefix: str) -> dt.datetime | None:
    """When the execution that placed an order ran, from its orderRef (`<prefix><YYYYmmddTHHMMSSZ>-...`)."""
    if not ref.startswith(prefix):
        return None
    try:
        return dt.datetime.strptime(ref[len(prefix):len(prefix) + 16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def _ts(value) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def update(previous: dict | None, found: Iterable[OrderState], prefix: str, now: dt.datetime) -> dict:
    """The book after taking in what the broker reports now about our orders (pure)."""
    prev = previous or {}
    positions = {k: float(v) for k, v in (prev.get("positions") or {}).items()}
    orders = {ref: dict(o) for ref, o in (prev.get("orders") or {}).items()}
    uncertain = dict(prev.get("uncertain") or {})
    cutoff = _ts(prev.get("cutoff"))
    catalog = Catalog()
    seen = set()
    for st in found:
        at = ref_time(st.order_ref, prefix) or now
        if cutoff is not None and at < cutoff:
            continue  # finished long ago and already booked
        seen.add(st.order_ref)
        key = catalog.key(st.to_dict())
        signed = st.filled if st.action == "BUY" else -st.filled
        before = float((orders.get(st.order_ref) or {}).get("signed_filled") or 0.0)
        if signed != before:
            positions[key] = positions.get(key, 0.0) + (signed - before)
            if abs(positions[key]) < 1e-9:
                positions.pop(key)
        orders[st.order_ref] = {"instrument": key, "signed_filled": signed, "terminal": st.is_terminal,
                                "at": iso(at)}
    for ref, o in orders.items():
        if ref not in seen and not o.get("terminal") and o["instrument"] not in uncertain:
            uncertain[o["instrument"]] = (f"order {ref} was working at the last update ({prev.get('updated_at')}) "
                                          "and the broker no longer reports it: its fills are unknown")
    # Fold finished orders older than KEEP into the cutoff, never past an order still working.
    working = [_ts(o["at"]) for o in orders.values() if not o.get("terminal")]
    new_cutoff = min([now - KEEP, *working])
    if cutoff is None or new_cutoff > cutoff:
        cutoff = new_cutoff
    orders = {ref: o for ref, o in orders.items() if _ts(o["at"]) >= cutoff}
    return {"updated_at": now, "positions": dict(sorted(positions.items())), "orders": orders,
            "cutoff": cutoff, "uncertain": uncertain}


def manual_parts(book: dict | None, holdings: dict[str, float]) -> dict[str, float]:
    """Per instrument, the broker's holding minus the book (what was traded by hand)."""
    own = (book or {}).get("positions") or {}
    keys = set(holdings) | set(own)
    return {k: holdings.get(k, 0.0) - own.get(k, 0.0) for k in sorted(keys)
            if abs(holdings.get(k, 0.0) - own.get(k, 0.0)) > 1e-9}


def assign(book: dict | None, key: str, quantity: float, now: dt.datetime) -> dict:
    """An operator states the Commander's own position in `key`, clearing any uncertainty. Releasing a
    manual part hands it to the Commander: the book becomes the whole holding (`quantity` = held)."""
    out = dict(book or {"positions": {}, "orders": {}, "uncertain": {}, "cutoff": None})
    out["positions"] = {k: v for k, v in (out.get("positions") or {}).items() if k != key}
    if quantity:
        out["positions"][key] = float(quantity)
    out["positions"] = dict(sorted(out["positions"].items()))
    out["uncertain"] = {k: v for k, v in (out.get("uncertain") or {}).items() if k != key}
    out["updated_at"] = now
    return out
