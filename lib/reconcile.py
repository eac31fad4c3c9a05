"""Reconcile: the broker's real state into `positions/{mode}/portfolio/latest`."""
from __future__ import annotations

import datetime as dt

from lib import documents as docs
from lib.broker.base import Broker, check_account
from lib.bus import Bus

UTC = dt.timezone.utc


def snapshot_to_bus(broker: Broker, bus: Bus, mode: str, expected_account: str | None = None,
                    now: dt.datetime | None = None) -> dict:
    """Take the broker snapshot, validate it as a PortfolioSnapshot, write it; returns the document.

    The account must match the mode (paper accounts start with 'DU') before anything is written, so
    a snapshot of the wrong account can never become the Commander's source of truth. Reading a live
    account whose `config/live.account` is not set yet is allowed (placing is not).

    Every open order keeps its `orderType`, `auxPrice`, `parentId` and `ocaGroup`, so the Commander
    can tell a stop or a bracket child (contingent: not a sale in flight) from a working order.
    """
    snap = broker.snapshot()
    check_account(snap.account, mode, expected_account, placing=False)
    doc = snap.to_document(now or dt.datetime.now(UTC))
    path = docs.portfolio_path(mode)
    docs.load(docs.PortfolioSnapshot, path, doc)
    bus.set(path, doc)
    return doc


def is_manual(order: dict, prefix: str) -> bool:
    """An order the Commander did not place (another client, TWS, a person)."""
    return not str(order.get("orderRef") or "").startswith(prefix)
