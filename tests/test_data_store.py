"""The market data store (lib/data): one contract on a local folder and on fake-gcs-server, then
incremental updates on the simulator, pacing, concurrency and damage."""
from __future__ import annotations

import datetime as dt
import multiprocessing
import threading

import pandas as pd
import pytest

from lib.broker import Contract
from lib.data import ConflictError, DamagedSeriesError, DataError, Series, Updater, open_store
from lib.data.update import FIRST_SESSIONS, plan, sessions_between, today_session
from lib.pacing import HistoryPacer, with_backoff
from lib.settings import Settings, resolve
from tests.data_harness import AS_OF, CountingBroker, update_in_process


def bars(*rows) -> pd.DataFrame:
    """(date, close) rows → a store frame with OHLC = close."""
    index = pd.DatetimeIndex([pd.Timestamp(d) for d, _ in rows])
    closes = [c for _, c in rows]
    return pd.DataFrame({"open": closes, "high": closes, "low": closes, "close": closes,
                         "volume": [100.0] * len(rows)}, index=index)


# ---- the contract, on both backends ------------------------------------------------------------
@pytest.fixture(params=["local", "gcs"])
def store(request, tmp_path):
    if request.param == "local":
        return open_store(str(tmp_path / "data"))
    bucket = request.getfixturevalue("gcs_bucket")
    return open_store(f"gs://{bucket}/prod/data/")


def test_a_series_round_trips_with_its_source_and_sessions(store):
    assert store.read("SPY") is None and store.symbols() == []
    frame = bars(("2026-11-18", 10.0), ("2026-11-19", 11.0), ("2026-11-20", 12.5))
    frame["adj_close"] = [9.5, 10.5, 12.0]
    change = store.modify("SPY", lambda current, damaged: Series("SPY", frame, "ib"))
    assert change.written and not change.damaged
    got = store.read("SPY")
    assert (got.source, got.bar_size, got.first_session, got.last_session) == ("ib", "1 day", dt.date(2026, 11, 18),
                                                                               AS_OF)
    assert got.bars["close"].tolist() == [10.0, 11.0, 12.5] and got.bars["adj_close"].tolist() == [9.5, 10.5, 12.0]
    assert got.updated_at and store.symbols() == ["SPY"]
    assert store.link("SPY").endswith("daily/SPY.parquet")
    closes = store.closes(["SPY"], 2, end=dt.date(2026, 11, 19))
    assert closes["SPY"].tolist() == [10.0, 11.0]  # nothing after `end`
    assert store.closes(["SPY"], 5, adjusted=True)["SPY"].tolist() == [9.5, 10.5, 12.0]


def test_the_simulators_bars_say_synthetic(store):
    store.modify("GLD", lambda c, d: Series("GLD", bars(("2026-11-20", 1.0)), "sim"))
    series = store.read("GLD")
    assert series.synthetic and "SYNTHETIC" in series.label()
    assert "SYNTHETIC" in store.closes(["GLD"], 1).attrs["sources"]["GLD"]


def test_a_write_over_a_version_it_did_not_read_is_refused(store):
    name = store.name("SPY")
    first = store.files.write(name, b"one", None)
    with pytest.raises(ConflictError):
        store.files.write(name, b"two", None)  # create-only: it exists
    store.files.write(name, b"three", first)
    with pytest.raises(ConflictError):
        store.files.write(name, b"four", first)  # stale version
    assert store.files.read(name)[0] == b"three"


def test_a_concurrent_writer_is_never_lost(store):
    """A change whose read was overtaken is applied again to the newer version."""
    store.modify("SPY", lambda c, d: Series("SPY", bars(("2026-11-18", 1.0)), "ib"))
    calls = []

    def change(current, damaged):
        calls.append(current.last_session)
        if len(calls) == 1:  # another process writes between our read and our write
            other = Series("SPY", pd.concat([current.bars, bars(("2026-11-19", 2.0))]), "ib")
            from lib.data.store import encode
            store.files.write(store.name("SPY"), encode(other), store.files.read(store.name("SPY"))[1])
        return Series("SPY", pd.concat([current.bars, bars(("2026-11-20", 3.0))]), "ib")

    store.modify("SPY", change)
    assert calls == [dt.date(2026, 11, 18), dt.date(2026, 11, 19)]
    assert store.read("SPY").bars["close"].tolist() == [1.0, 2.0, 3.0]


def test_a_damaged_file_is_named_and_replaced_by_the_next_change(store):
    store.files.write(store.name("TLT"), b"PAR1 not really parquet", None)
    with pytest.raises(DamagedSeriesError) as err:
        store.read("TLT")
    assert store.link("TLT") in str(err.value) and "damaged" in str(err.value)
    change = store.modify("TLT", lambda current, damaged: Series("TLT", bars(("2026-11-20", 5.0)), "sim"))
    assert change.written and "Parquet" in change.damaged
    assert store.read("TLT").bars["close"].tolist() == [5.0]


def test_unknown_symbols_and_urls_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown data URL"):
        open_store("s3://bucket/data")
    with pytest.raises(ValueError, match="symbol"):
        open_store(str(tmp_path)).read("../etc")
    with pytest.raises(DataError, match="no SPY bars"):
        open_store(str(tmp_path)).closes(["SPY"], 10)


def test_the_data_setting_flag_env_default_and_scheme():
    assert resolve({}, {}).data == "runs/data/"
    assert resolve({}, {"COMMANDER_DATA": "gs://b/p/data/"}).data == "gs://b/p/data/"
    assert resolve({"data": "/tmp/d"}, {"COMMANDER_DATA": "gs://b/p/data/"}).data == "/tmp/d"
    with pytest.raises(ValueError, match="data 's3://x'"):
        resolve({"data": "s3://x"}, {})
    assert Settings(mode="paper", bus="sqlite:///b", broker="sim", audit="/tmp/x/runs").data == "/tmp/x/runs/data/"


# ---- incremental updates on the simulator --------------------------------------------------------
@pytest.fixture
def sim(tmp_path):
    with CountingBroker(tmp_path / "sim.sqlite") as broker:
        yield broker


def test_first_update_fetches_the_whole_history_then_only_the_last_session(tmp_path, sim):
    store = open_store(str(tmp_path / "data"))
    updater = Updater(store, sim, "sim")
    first = updater.update("SPY", 200, AS_OF)
    assert first.ok and sim.calls == [("SPY", FIRST_SESSIONS, "1 day", AS_OF)]
    series = store.read("SPY")
    assert series.last_session == AS_OF and series.history_complete  # the simulator has no older bars
    assert len(series.bars) == len(sim.inner.history(Contract("SPY"), 5000))

    sim.calls.clear()
    second = updater.update("SPY", 200, AS_OF)  # the same day again: only the last stored session
    assert second.ok and sim.calls == [("SPY", 1, "1 day", AS_OF)]
    assert store.read("SPY").bars.equals(series.bars)

    sim.calls.clear()
    sim.advance_to(dt.date(2026, 11, 25))  # three sessions later (Mon 23, Tue 24, Wed 25)
    third = updater.update("SPY", 200, dt.date(2026, 11, 25))
    assert sim.calls == [("SPY", 4, "1 day", dt.date(2026, 11, 25))]  # the 20th again, and the three after it
    assert third.last_session == dt.date(2026, 11, 25) and third.rows == len(series.bars) + 3


def test_a_partial_last_bar_is_replaced_and_a_short_series_reaches_back_once(tmp_path, sim):
    store = open_store(str(tmp_path / "data"))
    partial = bars(("2026-11-19", 600.0), ("2026-11-20", 1.0))  # the 20th fetched mid-session
    store.modify("SPY", lambda c, d: Series("SPY", partial, "sim"))
    Updater(store, sim, "sim").update("SPY", 2, AS_OF)
    stored = store.read("SPY")
    assert sim.calls == [("SPY", 1, "1 day", AS_OF)]
    assert stored.bars.loc["2026-11-20", "close"] == sim.inner.history(Contract("SPY"), 1)[-1].close
    sim.calls.clear()
    Updater(store, sim, "sim").update("SPY", 60, AS_OF)  # a strategy needs 60 sessions: two are stored
    assert sim.calls == [("SPY", 60, "1 day", AS_OF)] and len(store.read("SPY").bars) == 60


def test_plan_counts_sessions_on_the_exchange_calendar():
    assert sessions_between(dt.date(2026, 11, 25), dt.date(2026, 11, 28)) == 2  # Thanksgiving (26th) is closed
    series = Series("SPY", bars(*[(d, 1.0) for d in pd.bdate_range("2026-01-01", "2026-11-25")]), "ib")
    assert plan(None, AS_OF, 200) == FIRST_SESSIONS
    assert plan(series, dt.date(2026, 11, 27), 100) == 2  # the 25th again and the 27th
    assert plan(series, dt.date(2026, 11, 20), 100) is None  # the store is ahead of this clock
    # A real broker's today: New York's date, or the last session before it on a closed day.
    assert today_session(dt.datetime(2026, 11, 29, 3, 0, tzinfo=dt.timezone.utc)) == dt.date(2026, 11, 27)
    assert today_session(dt.datetime(2026, 12, 1, 3, 0, tzinfo=dt.timezone.utc)) == dt.date(2026, 11, 30)


def test_sources_never_mix_the_wrong_way(tmp_path, sim):
    store = open_store(str(tmp_path / "data"))
    store.modify("SPY", lambda c, d: Series("SPY", bars(("2026-11-19", 1.0)), "ib"))
    refused = Updater(store, sim, "sim").update("SPY", 10, AS_OF)
    assert not refused.ok and "synthetic bars never replace or extend real ones" in refused.error
    assert store.read("SPY").source == "ib" and sim.calls == []
    store.modify("VIXY", lambda c, d: Series("VIXY", bars(("2026-11-19", 1.0)), "import:vendor.csv"))
    assert "never extends an import" in Updater(store, sim, "ib").update("VIXY", 10, AS_OF).error


def test_a_pacing_refusal_is_retried_after_a_back_off(tmp_path, sim):
    store = open_store(str(tmp_path / "data"))
    slept, logged = [], []
    sim.refuse = 1
    updater = Updater(store, sim, "sim", backoff=(15.0, 60.0), sleep=slept.append, log=logged.append)
    outcome = updater.update("SPY", 100, AS_OF)
    assert outcome.ok and outcome.requests == 2 and slept == [15.0]
    assert "pacing violation" in logged[0] and "retrying in 15 s" in logged[0]
    sim.refuse = 3  # more refusals than back-offs: the series fails with the broker's reason, others go on
    failed = updater.update("VIXY", 100, AS_OF)
    assert not failed.ok and "pacing violation" in failed.error and slept == [15.0, 15.0, 60.0]


def test_other_errors_are_not_retried():
    calls = []

    def boom():
        calls.append(1)
        raise ValueError("no such symbol")

    with pytest.raises(ValueError):
        with_backoff(boom, sleep=lambda s: pytest.fail("slept"))
    assert calls == [1]


def test_an_unknown_symbol_fails_alone(tmp_path, sim):
    store = open_store(str(tmp_path / "data"))
    outcomes = Updater(store, sim, "sim").update_many({"SPY": 50, "NOSUCH": 50, "GLD": 50}, AS_OF)
    assert {s: o.ok for s, o in outcomes.items()} == {"GLD": True, "NOSUCH": False, "SPY": True}
    assert "NOSUCH" in outcomes["NOSUCH"].error and store.symbols() == ["GLD", "SPY"]


def test_a_truncated_parquet_file_is_named_then_fetched_again(tmp_path, sim):
    store = open_store(str(tmp_path / "data"))
    Updater(store, sim, "sim").update("SPY", 200, AS_OF)
    path = tmp_path / "data" / "daily" / "SPY.parquet"
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DamagedSeriesError, match=str(path)):
        store.read("SPY")
    sim.calls.clear()
    outcome = Updater(store, sim, "sim").update("SPY", 200, AS_OF)
    assert outcome.ok and any(str(path) in note and "fetched again" in note for note in outcome.notes)
    assert sim.calls == [("SPY", FIRST_SESSIONS, "1 day", AS_OF)]  # the whole history again
    assert store.read("SPY").bars["close"].tolist() == [b.close for b in sim.inner.history(Contract("SPY"), 5000)]


def test_two_processes_updating_one_series_at_once_leave_a_correct_file(tmp_path):
    data, db = str(tmp_path / "data"), str(tmp_path / "sim.sqlite")
    CountingBroker(tmp_path / "sim.sqlite").close()  # create the simulator's file once
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=update_in_process, args=(data, db, "SPY", 4, start, results)) for _ in range(2)]
    for p in procs:
        p.start()
    start.set()
    got = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert all(all(oks) for oks, _, _ in got), [errors for _, errors, _ in got]
    calls = sorted(days for _, _, log in got for _, days, _, _ in log)
    assert calls == [1] * 7 + [FIRST_SESSIONS]  # one whole history between them; every other update one session
    series = open_store(data).read("SPY")
    with CountingBroker(tmp_path / "sim.sqlite") as sim:
        expected = sim.inner.history(Contract("SPY"), 5000)
    assert [b.close for b in expected] == series.bars["close"].tolist()
    assert not [p.name for p in (tmp_path / "data" / "daily").iterdir() if p.name.endswith(".tmp")]


# ---- the pacer ----------------------------------------------------------------------------------
class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_small_bars_follow_ibs_hard_rules():
    clock = FakeClock()
    pacer = HistoryPacer(clock=clock, sleep=clock.sleep)
    for i in range(5):  # five requests for one contract at once are allowed (IB: "six or more" within 2 s is not) …
        assert pacer.acquire("SPY", "30 secs", ("SPY", i)) == 0.0
        pacer.release()
    assert pacer.acquire("SPY", "30 secs", ("SPY", 5)) == pytest.approx(2.0)  # … the sixth waits 2 s
    pacer.release()
    assert pacer.acquire("SPY", "30 secs", ("SPY", 5)) == pytest.approx(15.0)  # identical: 15 s after the last
    pacer.release()
    for i in range(53):  # 60 in any 10 minutes
        pacer.acquire(f"S{i}", "5 secs")
        pacer.release()
    t = clock.now
    waited = pacer.acquire("LAST", "1 secs")
    assert waited == pytest.approx(600.0 - t) and clock.now == pytest.approx(600.0)
    pacer.release()
    times = [at for at, *_ in pacer.sent]
    assert all(sum(1 for u in times if s <= u < s + 600) <= 60 for s in times)


def test_larger_bars_follow_the_configured_limit_and_eta():
    clock = FakeClock()
    pacer = HistoryPacer(large_limit=3, large_period=10.0, clock=clock, sleep=clock.sleep)
    assert pacer.eta(7, "1 day") == pytest.approx(20.0)  # 3 now, 3 at 10 s, 1 at 20 s
    for i in range(3):
        assert pacer.acquire("SPY", "1 day", (i,)) == 0.0
        pacer.release()
    assert pacer.acquire("SPY", "1 day", (3,)) == pytest.approx(10.0)
    pacer.release()
    assert pacer.acquire("SPY", "1 day", (3,)) == 0.0  # no 15 s rule for daily bars


def test_at_most_max_open_requests_at_once():
    pacer = HistoryPacer(max_open=2)
    release = threading.Event()

    def work():
        with pacer.request("SPY", "1 day"):
            if pacer.open == 2:
                release.set()
            release.wait(5)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert pacer.max_seen_open == 2 and pacer.requests == 4 and pacer.open == 0
