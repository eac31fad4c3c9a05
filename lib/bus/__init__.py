"""The intent bus: `open_bus(url)` returns a `Bus` for `sqlite:///PATH` or `firestore://PROJECT[/DATABASE]`."""
from __future__ import annotations

from lib.bus.base import DELETE, Bus, Write

__all__ = ["Bus", "DELETE", "Write", "open_bus"]


def open_bus(url: str) -> Bus:
    """Open the bus a URL names. Raises ValueError for an unknown scheme."""
    if url.startswith("sqlite:///"):
        from lib.bus.sqlite import SqliteBus
        return SqliteBus(url[len("sqlite:///"):])
    if url.startswith("firestore://"):
        from lib.bus.firestore import FirestoreBus
        rest = url[len("firestore://"):].strip("/")
        if not rest:
            raise ValueError(f"bus URL {url!r} names no project; expected firestore://PROJECT[/DATABASE]")
        project, _, database = rest.partition("/")
        return FirestoreBus(project, database or None)
    raise ValueError(f"unknown bus URL {url!r}; expected sqlite:///PATH or firestore://PROJECT[/DATABASE]")
