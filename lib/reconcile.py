"""Reconcile: the broker's real state into `positions/{mode}/portfolio/latest`."""
from __future__ import annotations

import datetime as dt

from lib import documents as docs
from lib.broker.base import AccountSnapshot, Broker, check_account
from lib.bus import Bus
from lib.canonical import to_jsonable
from lib.commander.instrument import Catalog
from lib.errors import BrokerError

UTC = dt.timezone.utc
#: Reads of the account before giving up on a state that keeps moving.
MAX_READS = 5


def consistent_snapshot(broker: Broker, max_reads: int = MAX_READS) -> tuple[AccountSnapshot, int]:
    """A snapshot no fill slipped through: read twice (positions, then open orders, each time) and
    accept only when both reads agree, reading again while they do not. A fill that lands between
    reading the positions and the orders would otherwise be missed by both. Returns (snapshot, reads).
    """
    at = dt.datetime.now(UTC)
    previous = broker.snapshot()
    for reads in range(2, max_reads + 1):
        current = broker.snapshot()
        moved = contradiction(to_jsonable(current.to_document(at)), to_jsonable(previous.to_document(at)))
        if moved is None:
            return current, reads
        previous = current
    raise BrokerError(f"the account kept changing while it was read ({max_reads} reads; last: {moved}); "
                      "nothing was written, reconcile again")


def snapshot_to_bus(broker: Broker, bus: Bus, mode: str, expected_account: str | None = None,
                    now: dt.datetime | None = None) -> dict:
    """Take the broker snapshot, validate it as a PortfolioSnapshot, write it; returns the document.

    The account must match the mode (paper accounts start with 'DU') before anything is written, so
    a snapshot of the wrong account can never become the Commander's source of truth. Reading a live
    account whose `config/live.account` is not set yet is allowed (placing is not).

    Every open order keeps its `orderType`, `auxPrice`, `parentId` and `ocaGroup`, so the Commander
    can tell a stop or a bracket child (contingent: not a sale in flight) from a working order.
    The account is read until two reads agree (`consistent_snapshot`).
    """
    snap, _ = consistent_snapshot(broker)
    check_account(snap.account, mode, expected_account, placing=False)
    doc = snap.to_document(now or dt.datetime.now(UTC))
    path = docs.portfolio_path(mode)
    docs.load(docs.PortfolioSnapshot, path, doc)
    bus.set(path, doc)
    return doc


def is_manual(order: dict, prefix: str) -> bool:
    """An order the Commander did not place (another client, TWS, a person)."""
    return not str(order.get("orderRef") or "").startswith(prefix)


# ---- comparing what the broker says now with a snapshot ------------------------------------------
def order_identity(o: dict) -> tuple:
    """How an open order is recognised across reads: its permId, else (clientId, orderId)."""
    return ("perm", o["permId"]) if o.get("permId") else ("id", o.get("clientId", 0), o.get("orderId"))


def contradiction(broker_snapshot: dict, decided_from: dict) -> str | None:
    """How the broker's positions and open orders now differ from the snapshot the decision used,
    or None when they agree (prices and cash may move; positions and orders may not)."""
    catalog = Catalog()

    def held(doc):
        out: dict[str, float] = {}
        for h in doc.get("holdings") or []:
            key = catalog.key(h)
            out[key] = out.get(key, 0.0) + float(h.get("quantity") or 0)
        return {k: v for k, v in out.items() if v}

    def working(doc):
        return {order_identity(o): (o.get("orderRef"), float(o.get("remaining") or 0))
                for o in doc.get("open_orders") or [] if float(o.get("remaining") or 0) > 0}

    now_held, then_held = held(broker_snapshot), held(decided_from)
    moved = sorted(k for k in set(now_held) | set(then_held) if now_held.get(k, 0) != then_held.get(k, 0))
    if moved:
        return "positions changed since the snapshot: " + ", ".join(
            f"{k} {then_held.get(k, 0):+g} → {now_held.get(k, 0):+g}" for k in moved[:10])
    now_orders, then_orders = working(broker_snapshot), working(decided_from)
    if now_orders != then_orders:
        new = [v[0] or str(k) for k, v in now_orders.items() if then_orders.get(k) != v]
        gone = [v[0] or str(k) for k, v in then_orders.items() if k not in now_orders]
        return (f"open orders changed since the snapshot (new or changed: {new[:10]}, gone: {gone[:10]})")
    return None
