"""The exchange calendar (exchange_calendars' XNYS by default): trading days and the freshness window.

The freshness window starts at the most recent close of the exchange at or before `now` (early
13:00 closes included; weekends, holidays and EST/EDT changes come from the calendar): an intent or a
snapshot is fresh when it was written after that close. `freshMinutes` or an explicit start override it.
"""
from __future__ import annotations

import datetime as dt
import functools

import pandas as pd

UTC = dt.timezone.utc
DEFAULT_CALENDAR = "XNYS"


@functools.lru_cache(maxsize=4)
def calendar(name: str = DEFAULT_CALENDAR):
    import exchange_calendars as xc
    return xc.get_calendar(name)


def _ts(value: dt.datetime) -> pd.Timestamp:
    if value.tzinfo is None:
        raise ValueError(f"{value.isoformat()} has no time zone")
    return pd.Timestamp(value).tz_convert("UTC")


def is_session(day: dt.date, name: str = DEFAULT_CALENDAR) -> bool:
    """True when the exchange trades on `day`."""
    return bool(calendar(name).is_session(pd.Timestamp(day)))


def current_session(now: dt.datetime, name: str = DEFAULT_CALENDAR) -> dt.date:
    """The latest session that has opened at `now` (today's once the bell rang, else the previous one)."""
    cal = calendar(name)
    day = cal.date_to_session(pd.Timestamp(_ts(now).date()), direction="previous")
    if cal.session_open(day) > _ts(now):
        day = cal.previous_session(day)
    return day.date()


def session_close(day: dt.date, name: str = DEFAULT_CALENDAR) -> dt.datetime:
    return calendar(name).session_close(pd.Timestamp(day)).to_pydatetime().astimezone(UTC)


def session_closes(days: list[dt.date], name: str = DEFAULT_CALENDAR) -> list[dt.datetime]:
    """The closes of many sessions at once (UTC), from the calendar's schedule."""
    closes = calendar(name).schedule["close"].reindex(pd.DatetimeIndex(days))
    if closes.isna().any():
        missing = [d for d, c in zip(days, closes) if pd.isna(c)]
        raise ValueError(f"not sessions of {name}: {missing[:5]}")
    return [ts.to_pydatetime().astimezone(UTC) for ts in closes]


def previous_session(day: dt.date, name: str = DEFAULT_CALENDAR) -> dt.date:
    return calendar(name).previous_session(pd.Timestamp(day)).date()


def last_session_on_or_before(day: dt.date, name: str = DEFAULT_CALENDAR) -> dt.date:
    return calendar(name).date_to_session(pd.Timestamp(day), direction="previous").date()


def last_close(now: dt.datetime, name: str = DEFAULT_CALENDAR) -> dt.datetime:
    """The most recent close of the exchange at or before `now` (UTC): today's once the closing bell
    rang (13:00 New York on a half day), else the last session's before it."""
    cal = calendar(name)
    ts = _ts(now)
    # A session's close falls on its own date in UTC for XNYS; start a day later to be safe for any calendar.
    day = cal.date_to_session(pd.Timestamp(ts.date()) + pd.Timedelta(days=1), direction="previous")
    close = cal.session_close(day)
    while close > ts:
        day = cal.previous_session(day)
        close = cal.session_close(day)
    return close.to_pydatetime().astimezone(UTC)


def window_start(now: dt.datetime, fresh_minutes: float | None = None, override: dt.datetime | None = None,
                 name: str = DEFAULT_CALENDAR) -> dt.datetime:
    """Where the freshness window starts: `override`, else `now − fresh_minutes`, else the most recent
    exchange close at or before `now` (`last_close`)."""
    if override is not None:
        return _ts(override).to_pydatetime()
    if fresh_minutes is not None:
        return _ts(now).to_pydatetime() - dt.timedelta(minutes=fresh_minutes)
    return last_close(now, name)
