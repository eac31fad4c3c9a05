"""A lease in the bus (`locks/commander-{mode}`) so two pipelines never run the Commander at once."""
from __future__ import annotations

import datetime as dt

from lib import documents as docs
from lib.bus import DELETE, Bus
from lib.canonical import iso
from lib.errors import PipelineError

UTC = dt.timezone.utc


class LeaseHeldError(PipelineError):
    """Another run holds the lease."""


def acquire(bus: Bus, mode: str, owner: str, ttl: dt.timedelta, now: dt.datetime | None = None) -> dict:
    """Take the lease for `owner` until now + ttl; raise LeaseHeldError if another owner holds an unexpired one."""
    now = now or dt.datetime.now(UTC)
    path = docs.lock_path(mode)
    held: dict = {}

    def take(current):
        held.clear()
        if current and current.get("owner") != owner and current["expires_at"] > now:
            held.update(current)
            return None
        return {"owner": owner, "acquired_at": now, "expires_at": now + ttl}

    doc = bus.transact(path, take)
    if held:
        raise LeaseHeldError(f"another pipeline run ({held['owner']}) holds {path} until {iso(held['expires_at'])}; "
                             f"nothing was placed. If that run died, wait for the lease to expire or delete {path}.")
    return doc


def release(bus: Bus, mode: str, owner: str) -> bool:
    """Give the lease back if `owner` still holds it; returns whether it did."""
    released = []

    def drop(current):
        if current and current.get("owner") == owner:
            released.append(True)
            return DELETE
        return None

    bus.transact(docs.lock_path(mode), drop)
    return bool(released)
