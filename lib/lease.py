"""The lease `locks/commander-{mode}`: at most one run places orders for a mode at a time.

A lease is short (`DEFAULT_TTL`, 90 s) and renewed by a heartbeat thread while its run is alive, so
a run that dies — SIGKILL, a lost machine — leaves a lease that expires by itself within two
minutes. On the same host a holder whose process is gone is recognised at once and its lease taken
over. Each acquisition increments `generation`, the fencing token: the Commander's write-ahead and
final writes check it in the same transaction (`Lease.fence`), so a run that lost its lease can
never place orders or move the state.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import os
import socket
import threading

from lib import documents as docs
from lib.bus import DELETE, Bus
from lib.canonical import iso
from lib.errors import BusError, PipelineError

UTC = dt.timezone.utc
DEFAULT_TTL = dt.timedelta(seconds=90)


class LeaseHeldError(PipelineError):
    """Another run holds the lease."""


class LeaseLostError(PipelineError):
    """This run's lease was taken over or could not be renewed; it must not place or write state."""


def _host() -> str:
    """This machine's name in a lease; `$COMMANDER_HOST_ID` overrides it where hostnames collide."""
    return os.environ.get("COMMANDER_HOST_ID") or socket.gethostname()


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    # A zombie (killed, not yet reaped by its parent) is gone too.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def holder_gone(doc: dict) -> bool:
    """Whether a lease's holder is a process on this host that no longer runs."""
    pid = doc.get("pid")
    return doc.get("host") == _host() and isinstance(pid, int) and pid != os.getpid() and _process_gone(pid)


@dataclasses.dataclass
class Lease:
    """A held lease: its path, owner and fencing generation; `start_heartbeat` keeps it alive."""

    bus: Bus
    mode: str
    owner: str
    generation: int
    ttl: dt.timedelta
    _stop: threading.Event = dataclasses.field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = dataclasses.field(default=None, repr=False)
    lost: str | None = None

    def fence(self):
        """A `Bus.commit` precondition: the lease still belongs to this owner and generation."""
        owner, generation = self.owner, self.generation

        def check(doc):
            if doc and doc.get("owner") == owner and doc.get("generation") == generation:
                return None
            who = f"{doc.get('owner')!r} (generation {doc.get('generation')})" if doc else "nobody"
            return f"this run ({owner}, generation {generation}) lost the lease; it is held by {who}"
        return {self.path: check}

    def renew(self, now: dt.datetime | None = None) -> None:
        """Push the expiry to now + ttl; LeaseLostError if another run took the lease."""
        now = now or dt.datetime.now(UTC)
        problem = []

        def extend(current):
            problem.clear()
            reason = self.fence()[self.path](current)
            if reason:
                problem.append(reason)
                return None
            return {**current, "expires_at": now + self.ttl, "renewed_at": now}

        self.bus.transact(self.path, extend)
        if problem:
            self.lost = problem[0]
            raise LeaseLostError(problem[0])

    def start_heartbeat(self) -> "Lease":
        """Renew every third of the ttl on a daemon thread until `release` (or the process dies)."""
        def beat():
            while not self._stop.wait(self.ttl.total_seconds() / 3):
                try:
                    self.renew()
                except LeaseLostError:
                    return
                except BusError:
                    continue  # the next beat tries again; the fence protects every write meanwhile

        self._thread = threading.Thread(target=beat, name=f"lease-{self.path}", daemon=True)
        self._thread.start()
        return self

    def release(self) -> bool:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        return release(self.bus, self.mode, self.owner)

    @property
    def path(self) -> str:
        return docs.lock_path(self.mode)

    def to_params(self) -> dict:
        """What a notebook needs to fence its writes with this lease (no secret in it)."""
        return {"lease_owner": self.owner, "lease_generation": self.generation}


def acquire(bus: Bus, mode: str, owner: str, ttl: dt.timedelta = DEFAULT_TTL,
            now: dt.datetime | None = None) -> Lease:
    """Take the lease for `owner` until now + ttl; LeaseHeldError if another live holder has it.

    Taken over when it is free, expired, already ours, or held by a process of this host that is gone.
    """
    now = now or dt.datetime.now(UTC)
    path = docs.lock_path(mode)
    held: dict = {}

    def take(current):
        held.clear()
        if current and current.get("owner") != owner and current["expires_at"] > now and not holder_gone(current):
            held.update(current)
            return None
        generation = int((current or {}).get("generation") or 0)
        if not current or current.get("owner") != owner:
            generation += 1
        return {"owner": owner, "generation": generation, "acquired_at": now, "expires_at": now + ttl,
                "host": _host(), "pid": os.getpid(),
                "took_over": (current or {}).get("owner") if current and current.get("owner") != owner else None}

    doc = bus.transact(path, take)
    if held:
        raise LeaseHeldError(f"another run ({held['owner']} on {held.get('host', '?')}) holds {path} until "
                             f"{iso(held['expires_at'])}; nothing was placed. The lease expires by itself if "
                             f"that run died.")
    return Lease(bus, mode, owner, doc["generation"], ttl)


def attach(bus: Bus, mode: str, owner: str, generation: int, ttl: dt.timedelta = DEFAULT_TTL) -> Lease:
    """The lease another process of this run holds (the pipeline, for its commander notebook):
    used only to fence writes; the holder keeps renewing it."""
    return Lease(bus, mode, owner, int(generation), ttl)


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
