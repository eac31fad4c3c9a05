"""The bus's bounded, ordered page query, on SQLite and the Firestore emulator (one contract)."""
from __future__ import annotations

import datetime as dt

import pytest

from lib.errors import InvalidPathError, InvalidValueError

T0 = dt.datetime(2026, 11, 20, 21, 0, tzinfo=dt.timezone.utc)


def _fill(bus):
    # Ids deliberately not in time order: the page follows the field, not the id.
    times = [T0 + dt.timedelta(minutes=m, microseconds=0 if m % 2 else 250) for m in range(7)]
    for n, t in enumerate(times):
        bus.set(f"executions/e{(7 - n) * 37 % 11:02d}", {"executed_at": t, "n": n})
    bus.set("executions/no_time", {"n": -1})  # left out, as Firestore leaves it out
    bus.set("other/x", {"executed_at": T0, "n": 99})
    return times


def test_page_is_ordered_bounded_and_pages_on(bus):
    times = _fill(bus)
    first = bus.page("executions", order_by="executed_at", limit=3)
    assert [d["n"] for _, d in first] == [6, 5, 4]
    assert first[0][1]["executed_at"] == times[6]
    second = bus.page("executions", order_by="executed_at", limit=3, before=first[-1][1]["executed_at"])
    assert [d["n"] for _, d in second] == [3, 2, 1]
    last = bus.page("executions", order_by="executed_at", limit=3, before=second[-1][1]["executed_at"])
    assert [d["n"] for _, d in last] == [0]


def test_page_range_and_ascending(bus):
    times = _fill(bus)
    rows = bus.page("executions", order_by="executed_at", limit=10, descending=False, after=times[1], before=times[5])
    assert [d["n"] for _, d in rows] == [2, 3, 4]
    assert bus.page("executions", order_by="executed_at", limit=10, after=T0 + dt.timedelta(days=1)) == []
    assert bus.page("nothing_here", order_by="executed_at", limit=5) == []


def test_page_refuses_bad_input(bus):
    with pytest.raises(InvalidValueError):
        bus.page("executions", order_by="executed_at", limit=0)
    with pytest.raises(InvalidValueError):
        bus.page("executions", order_by="a.b", limit=1)
    with pytest.raises(InvalidPathError):
        bus.page("executions/x", order_by="executed_at", limit=1)
