"""The freshness window (issue 12): it starts at the most recent XNYS close at or before now.

Each case is a date and a time in New York, the window start expected in New York, and why.
"""
from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from lib import sessions

NY = ZoneInfo("America/New_York")
UTC = dt.timezone.utc


def ny(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=NY)


CASES = [
    # after the close: today's close, not yesterday's
    ("2026-11-24 16:30", "2026-11-24 16:00", "Tuesday after the close"),
    ("2026-11-24 16:00", "2026-11-24 16:00", "exactly at the closing bell"),
    ("2026-11-24 23:59", "2026-11-24 16:00", "late evening (already the next day in UTC)"),
    # before the open: the previous session's close, one session back, not two
    ("2026-11-24 08:00", "2026-11-23 16:00", "Tuesday before the open"),
    ("2026-11-23 08:00", "2026-11-20 16:00", "Monday before the open: Friday's close"),
    # during the session: the previous session's close
    ("2026-11-24 11:00", "2026-11-23 16:00", "Tuesday during the session"),
    ("2026-11-24 15:59", "2026-11-23 16:00", "a minute before the close"),
    # closed days: the last session's close
    ("2026-11-28 12:00", "2026-11-27 13:00", "Saturday after a half day"),
    ("2026-11-26 12:00", "2026-11-25 16:00", "Thanksgiving (closed)"),
    ("2026-12-25 10:00", "2026-12-24 13:00", "Christmas, after the Christmas Eve half day"),
    ("2026-01-19 17:00", "2026-01-16 16:00", "Martin Luther King Day (closed) over a weekend"),
    # half days: the 13:00 close counts
    ("2026-11-27 13:30", "2026-11-27 13:00", "day after Thanksgiving, after its early close"),
    ("2026-11-27 12:59", "2026-11-25 16:00", "day after Thanksgiving, before its early close"),
    ("2026-11-30 09:00", "2026-11-27 13:00", "Monday before the open, after a Friday half day"),
    # EST/EDT changes (2026: EDT from Sunday 8 March, EST from Sunday 1 November)
    ("2026-03-09 08:00", "2026-03-06 16:00", "first EDT Monday before the open: Friday's EST close"),
    ("2026-03-09 16:05", "2026-03-09 16:00", "first EDT Monday after the close"),
    ("2026-11-02 08:00", "2026-10-30 16:00", "first EST Monday before the open: Friday's EDT close"),
]


@pytest.mark.parametrize("now, start, why", CASES, ids=[c[2] for c in CASES])
def test_window_starts_at_the_most_recent_close(now, start, why):
    got = sessions.window_start(ny(now))
    assert got == ny(start).astimezone(UTC), why
    assert got.tzinfo == UTC


def test_closes_in_utc_follow_daylight_saving():
    assert sessions.window_start(ny("2026-03-06 17:00")) == dt.datetime(2026, 3, 6, 21, 0, tzinfo=UTC)  # EST
    assert sessions.window_start(ny("2026-03-09 17:00")) == dt.datetime(2026, 3, 9, 20, 0, tzinfo=UTC)  # EDT
    assert sessions.window_start(ny("2026-11-27 14:00")) == dt.datetime(2026, 11, 27, 18, 0, tzinfo=UTC)  # half day


def test_fresh_minutes_and_an_explicit_start_still_win():
    now = ny("2026-11-24 16:30")
    assert sessions.window_start(now, fresh_minutes=45) == ny("2026-11-24 15:45").astimezone(UTC)
    override = dt.datetime(2026, 11, 1, tzinfo=UTC)
    assert sessions.window_start(now, fresh_minutes=45, override=override) == override
    assert sessions.window_start(now, override=ny("2026-11-20 09:00")) == ny("2026-11-20 09:00").astimezone(UTC)


def test_a_time_without_a_zone_is_refused():
    with pytest.raises(ValueError, match="no time zone"):
        sessions.window_start(dt.datetime(2026, 11, 24, 16, 30))


# ---- end to end on the simulator (`run_pipeline.py commander`, at the real clock) --------------------
def test_an_intent_or_snapshot_from_before_the_latest_close_is_stale(tmp_path):
    from lib import documents as docs
    from lib import pipeline
    from lib.broker.sim import SimBroker
    from lib.bus import open_bus
    from lib.canonical import iso
    from lib.progress import Progress
    from lib.seed import seed
    from lib.settings import Settings

    SimBroker(tmp_path / "sim.sqlite", as_of="2026-11-20").close()
    settings = Settings(mode="paper", bus=f"sqlite:///{tmp_path / 'bus.sqlite'}",
                        broker=f"sim:///{tmp_path / 'sim.sqlite'}", audit=str(tmp_path / "runs"))
    bus = open_bus(settings.bus)
    seed(bus)
    for sid in bus.list("strategies"):
        bus.update(docs.strategy_path(sid), {"enabled": False})
    bus.set(docs.strategy_path("holder"), docs.dump(docs.StrategyConfig(name="holder", enabled=True,
                                                                          capital_allocation=0.1)))
    close = sessions.window_start(dt.datetime.now(UTC))
    # Written a minute before the latest close: fresh under the old rule (which reached back to the
    # close before it), stale now.
    bus.set(docs.intent_path("holder"), {"updated_at": close - dt.timedelta(minutes=1), "status": "success",
                                         "target_positions": [{"symbol": "SPY", "quantity": 5, "price": 642.57}]})
    log = open(tmp_path / "commander.log", "a")

    stale = pipeline.commander(settings, reconcile=True, progress=Progress(stream=log))
    decision = stale.record["decision"]
    assert decision["window_start"] == iso(sessions.window_start(stale.record["executed_at"]))
    assert [(s["strategy"], s["reason"]) for s in decision["skipped"] if s["strategy"] == "holder"] == [
        ("holder", "stale")]
    assert decision["orders"] == []

    # --no-reconcile with a snapshot taken before the close: blocked, nothing placed.
    snap = bus.get(docs.portfolio_path("paper"))
    bus.set(docs.portfolio_path("paper"), {**snap, "updated_at": close - dt.timedelta(minutes=1)})
    blocked = pipeline.commander(settings, progress=Progress(stream=log))
    assert blocked.status == "failed" and "stale snapshot" in blocked.message

    # freshMinutes still overrides the rule: a week-long window takes both in.
    bus.update("config/common", {"freshMinutes": 7 * 24 * 60})
    fresh = pipeline.commander(settings, progress=Progress(stream=log))
    assert fresh.status == "completed", fresh.message
    assert [(o["action"], o["totalQuantity"], o["symbol"]) for o in fresh.record["orders_placed"]] == [
        ("BUY", 5, "SPY")]
