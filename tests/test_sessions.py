"""The exchange calendar and the freshness window."""
from __future__ import annotations

import datetime as dt

from lib import sessions

UTC = dt.timezone.utc


def test_sessions_follow_the_exchange_calendar():
    assert sessions.is_session(dt.date(2026, 11, 25))
    assert not sessions.is_session(dt.date(2026, 11, 26))  # Thanksgiving
    assert not sessions.is_session(dt.date(2026, 11, 28))  # Saturday
    assert sessions.last_session_on_or_before(dt.date(2026, 11, 29)) == dt.date(2026, 11, 27)


def test_window_starts_at_the_most_recent_close():
    # Issue 12: the window used to start at the close of the session *before* the current one, so
    # after Monday's close it reached back to Friday's. It starts at the latest close at or before now.
    after_close_monday = dt.datetime(2026, 11, 23, 21, 30, tzinfo=UTC)
    assert sessions.window_start(after_close_monday) == dt.datetime(2026, 11, 23, 21, 0, tzinfo=UTC)
    before_open_monday = dt.datetime(2026, 11, 23, 13, 0, tzinfo=UTC)
    assert sessions.window_start(before_open_monday) == dt.datetime(2026, 11, 20, 21, 0, tzinfo=UTC)
    # The day after Thanksgiving closes early (13:00 New York = 18:00 UTC).
    monday_after = dt.datetime(2026, 11, 30, 13, 0, tzinfo=UTC)
    assert sessions.window_start(monday_after) == dt.datetime(2026, 11, 27, 18, 0, tzinfo=UTC)


def test_fresh_minutes_and_override_win():
    now = dt.datetime(2026, 11, 23, 21, 30, tzinfo=UTC)
    assert sessions.window_start(now, fresh_minutes=90) == dt.datetime(2026, 11, 23, 20, 0, tzinfo=UTC)
    override = dt.datetime(2026, 11, 1, tzinfo=UTC)
    assert sessions.window_start(now, fresh_minutes=90, override=override) == override
