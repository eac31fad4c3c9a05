"""The market data store on IB (issue 14), against the fake IB Gateway with IB's pacing enforced.

The pipeline's data stage (`lib.pipeline._data_stage`) runs here on a stub run (no notebooks): one
connection, one `HistoryPacer` for every request, and the gateway's own log of requests as the
witness. Small-bar pacing runs on a virtual clock shared by the pacer and the gateway, so ten
minutes of IB's window pass in no time.
"""
from __future__ import annotations

import concurrent.futures
import datetime as dt
import io
import math
import threading
import time
import types

import pandas as pd
import pytest

from lib import pacing
from lib.broker import Contract
from lib.broker.ib import IBBroker
from lib.data import open_store
from lib.errors import PacingViolationError, PipelineError
from lib.pacing import HistoryPacer, Pacer
from lib.progress import Progress
from tests.fake_gateway import FakeGateway, pacing_problems
from tests.ib_harness import session_bars, watch_ib_decoding

END = dt.date(2026, 11, 20)  # a Friday session
NOW = dt.datetime(2026, 11, 20, 22, 0, tzinfo=dt.timezone.utc)  # after that day's close
SYMBOLS = ["GLD", "QQQ", "SPY", "TLT", "VIXY"]


class VirtualClock:
    """Time that moves only when someone sleeps: shared by a pacer and the gateway."""

    def __init__(self):
        self.now, self._lock = 1000.0, threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


@pytest.fixture
def gateway():
    with watch_ib_decoding() as watch:
        gw = FakeGateway(today=END).start()
        for symbol in SYMBOLS:
            gw.set_bars(symbol, session_bars(symbol, END, 3000))
        try:
            yield gw
        finally:
            gw.stop()
    assert not watch.failures and not gw.protocol_errors


def connect(gw: FakeGateway, client_id: int = 1, **options) -> IBBroker:
    return IBBroker("127.0.0.1", gw.port, client_id, "paper", timeout=5, **options)


def twenty_strategies() -> dict[str, dict]:
    """Twenty strategies over the same five symbols (each its own lookback)."""
    return {f"s{i:02d}": {"enabled": True, "universe": SYMBOLS, "lookback": 60 + 10 * i} for i in range(20)}


def data_stage(tmp_path, gw: FakeGateway, strategies: dict[str, dict], now: dt.datetime = NOW):
    """The pipeline's data stage on a stub run; returns (strategy_task, the progress text)."""
    from lib.pipeline import _data_stage
    out = io.StringIO()
    run = types.SimpleNamespace(
        strategies=strategies, chosen=sorted(strategies), progress=Progress(stream=out), now=now,
        settings=types.SimpleNamespace(data=str(tmp_path / "data"), mode="paper",
                                       broker=f"ib://127.0.0.1:{gw.port}?client_id=1&timeout=5"),
        common={"as_of": None}, strategy_task=lambda sid: types.SimpleNamespace(key=sid, parameters={}))
    return _data_stage(run), out.getvalue()


# ---- the data stage on IB ----------------------------------------------------------------------
def test_twenty_strategies_cost_one_request_per_symbol_and_a_second_run_only_the_last_session(tmp_path, gateway):
    task, log = data_stage(tmp_path, gateway, twenty_strategies())
    first = gateway.history_requests()
    trades = [r for r in first if r.what == "TRADES"]
    # Five history requests, not 100 (20 strategies × 5 symbols, each fetching its own), plus one
    # ADJUSTED_LAST request per series for its adjusted closes.
    assert sorted(r.symbol for r in trades) == SYMBOLS
    assert all(r.duration == "11 Y" and r.end == "20261120 23:59:59 US/Eastern" for r in trades)
    assert sorted(r.symbol for r in first if r.what == "ADJUSTED_LAST") == SYMBOLS and len(first) == 10
    assert all(r.answer == "bars" for r in first) and pacing_problems(first) == []
    assert "5/5 series up to 2026-11-20, 10 request(s)" in log, log
    store = open_store(str(tmp_path / "data"))
    spy = store.read("SPY")
    assert (spy.source, spy.last_session, len(spy.bars)) == ("ib", END, 2520)
    assert spy.bars["adj_close"].notna().all() and spy.bars["close"].iloc[-1] == 500.0
    assert all(task(sid).parameters["data_url"] == str(tmp_path / "data") for sid in twenty_strategies())

    # The same day again: one request per symbol, for the last stored session only ("1 D" up to it),
    # and no adjusted request (the raw bars did not change).
    data_stage(tmp_path, gateway, twenty_strategies())
    second = gateway.history_requests()[len(first):]
    assert sorted(r.symbol for r in second) == SYMBOLS
    assert {(r.what, r.duration, r.end, r.bars) for r in second} == {("TRADES", "1 D", "20261120 23:59:59 US/Eastern", 1)}
    assert len(store.read("SPY").bars) == 2520


def test_a_pacing_refusal_is_retried_after_a_back_off_and_fails_no_strategy(tmp_path, gateway, monkeypatch):
    monkeypatch.setattr(pacing, "BACKOFF", (0.01, 0.01, 0.01))  # IB asks for 15 s, 60 s, 300 s
    gateway.refuse_history(2)  # as when another application on the login used up IB's window
    task, log = data_stage(tmp_path, gateway, twenty_strategies())
    refused = [r for r in gateway.history_requests() if r.answer == "pacing violation"]
    assert len(refused) == 2
    assert log.count("the broker refused for pacing") == 2 and "retrying in 0 s" in log
    assert "Historical data request pacing violation" in log
    assert "5/5 series up to 2026-11-20, 12 request(s)" in log, log
    for sid in twenty_strategies():  # nobody is blocked: every strategy runs, reading the store
        assert task(sid).parameters["data_url"]


def test_a_series_still_refused_after_every_back_off_fails_only_the_strategies_that_need_it(tmp_path, gateway,
                                                                                              monkeypatch):
    monkeypatch.setattr(pacing, "BACKOFF", (0.01,))
    strategies = {"needs_spy": {"enabled": True, "universe": ["SPY"], "lookback": 50},
                  "needs_tlt": {"enabled": True, "universe": ["TLT"], "lookback": 50}}
    gateway.refuse_history(2, "SPY")  # refused, and refused again after the one back-off
    task, log = data_stage(tmp_path, gateway, strategies)
    with pytest.raises(PipelineError, match="SPY: PacingViolationError: .*pacing violation"):
        task("needs_spy")
    assert task("needs_tlt").parameters["data_url"]


def test_adjusted_closes_follow_a_dividend_that_goes_ex_after_they_were_stored(tmp_path, gateway):
    data_stage(tmp_path, gateway, {"s": {"enabled": True, "universe": ["SPY"], "lookback": 60}})
    store = open_store(str(tmp_path / "data"))
    before = store.read("SPY").bars
    # The next session: SPY goes ex a $5 dividend; IB rescales every earlier adjusted bar.
    nxt = dt.date(2026, 11, 23)
    gateway.set_bars("SPY", session_bars("SPY", END, 3000) + [(nxt, 497.0, 499.0, 494.0, 496.0, 1_000_000)])
    gateway._call(setattr, gateway, "today", nxt)
    gateway.set_dividend("SPY", nxt, 5.0)
    data_stage(tmp_path, gateway, {"s": {"enabled": True, "universe": ["SPY"], "lookback": 60}},
               now=dt.datetime(2026, 11, 23, 22, 0, tzinfo=dt.timezone.utc))
    after = store.read("SPY").bars
    factor = 1 - 5.0 / 500.0
    assert after.index[-1] == pd.Timestamp(nxt) and after.at[pd.Timestamp(nxt), "adj_close"] == 496.0
    assert after["close"].iloc[:-1].tolist() == before["close"].tolist()  # raw bars stay as traded
    assert after["adj_close"].iloc[:-1].to_numpy() == pytest.approx(before["adj_close"].to_numpy() * factor, rel=1e-6)
    # … and equal IB's own adjusted series, for the sessions fetched long ago as well.
    broker = connect(gateway, client_id=7)
    try:
        ib = broker.adjusted_history(Contract("SPY"), 2521, end=nxt)
    finally:
        broker.close()
    assert after["adj_close"].to_numpy() == pytest.approx([b.close for b in ib], rel=1e-4)


# ---- the adapter: durations and ADJUSTED_LAST ---------------------------------------------------
def test_n_days_up_to_an_end_date_are_the_last_n_sessions(gateway):
    """IB counts "N D" in sessions (checked on a paper gateway by rust-ibapi, PR #837: "D is
    session-aligned"), and the fake does as IB does: the last N XNYS sessions up to the end date,
    across a holiday and a half day; beyond 365 days whole calendar years, trimmed."""
    from lib import sessions
    broker = connect(gateway)
    try:
        end = dt.date(2026, 11, 30)  # the Monday after Thanksgiving (26th) and its half day (27th)
        gateway.set_bars("SPY", session_bars("SPY", end, 600))
        bars = broker.history(Contract("SPY"), 5, end=end)
        expected = [d.date() for d in sessions.calendar().sessions_window(pd.Timestamp(end), -5)]
        assert [b.date for b in bars] == expected == [dt.date(2026, 11, d) for d in (23, 24, 25, 27, 30)]
        long = broker.history(Contract("SPY"), 400, end=end)
        assert len(long) == 400 and long[-1].date == end
        assert [r.duration for r in gateway.history_requests()] == ["5 D", "2 Y"]
        # ADJUSTED_LAST only up to now (IB refuses an end date): the adapter asks from now and trims.
        gateway._call(setattr, gateway, "today", end)
        adjusted = broker.adjusted_history(Contract("SPY"), 5, end=dt.date(2026, 11, 25))
        assert [b.date for b in adjusted] == [dt.date(2026, 11, d) for d in (19, 20, 23, 24, 25)]
        assert gateway.history_requests()[-1].end == ""
    finally:
        broker.close()


# ---- small-bar pacing ---------------------------------------------------------------------------
def small_bar_burst(broker: IBBroker) -> list:
    """70 requests for 30-second bars: bursts on one contract, repeats of one request, 5 symbols."""
    out = []
    for i in range(70):
        symbol = SYMBOLS[(i // 7) % 5]
        end = None if i % 3 == 0 else END - dt.timedelta(days=i % 3)  # the None ones repeat each other
        out.append(broker.history(Contract(symbol), 1, bar_size="30 secs", end=end))
    return out


def test_small_bars_through_one_pacer_never_break_ibs_rules(gateway):
    clock = VirtualClock()
    gateway._call(setattr, gateway, "clock", clock)
    pacer = HistoryPacer(clock=clock, sleep=clock.sleep)
    broker = connect(gateway, hist_pacer=pacer)
    try:
        assert all(len(bars) == 780 for bars in small_bar_burst(broker))
    finally:
        broker.close()
    log = gateway.history_requests()
    assert len(log) == 70 and all(r.answer == "bars" for r in log)
    assert pacing_problems(log) == []  # the gateway's own log: no rule broken
    assert clock.now - 1000.0 >= 600.0 and pacer.requests == 70  # the 61st waited for IB's 10-minute window


def test_the_fake_refuses_what_breaks_the_rules_and_the_adapter_says_pacing_violation(gateway):
    clock = VirtualClock()
    gateway._call(setattr, gateway, "clock", clock)
    broker = connect(gateway, hist_pacer=Pacer(1000, 1.0))  # paces nothing that matters here
    try:
        for k in range(5):  # five for one contract within 2 s pass …
            broker.history(Contract("SPY"), 1, bar_size="30 secs", end=END - dt.timedelta(days=k))
            clock.sleep(0.01)
        broker.history(Contract("QQQ"), 1, bar_size="5 secs")  # (another contract: fine)
        with pytest.raises(PacingViolationError, match="error 162: Historical Market Data Service error "
                                                       "message:Historical data request pacing violation"):
            broker.history(Contract("SPY"), 1, bar_size="30 secs")  # … the sixth for SPY is not
        clock.sleep(3)
        with pytest.raises(PacingViolationError):  # identical to one 3 s ago
            broker.history(Contract("QQQ"), 1, bar_size="5 secs")
        clock.sleep(15)
        broker.history(Contract("QQQ"), 1, bar_size="5 secs")
        for i in range(52):  # 60 small-bar requests in 10 minutes, refused ones included; then no more
            clock.sleep(2.1)
            try:
                broker.history(Contract(SYMBOLS[i % 5]), 1, bar_size="30 secs", end=END - dt.timedelta(days=i))
            except PacingViolationError as exc:
                assert i == 51 and pacing.is_pacing_violation(exc)
                break
        else:
            raise AssertionError("the 61st small-bar request within 10 minutes was served")
        assert len(broker.history(Contract("SPY"), 30, bar_size="1 day")) == 30  # daily bars: never hard-limited
    finally:
        broker.close()
    assert [r.answer for r in gateway.history_requests()].count("pacing violation") == 3


def test_at_most_50_requests_are_open_at_once(gateway):
    fast = Pacer(1000, 1.0)  # the message pacer lets 60 requests out at once

    def burst(pacer: HistoryPacer, client_id: int, release_after: int = 0) -> list:
        broker = connect(gateway, client_id=client_id, msg_pacer=fast, hist_pacer=pacer)
        try:
            with concurrent.futures.ThreadPoolExecutor(60) as pool:
                futures = [pool.submit(broker.history, Contract(SYMBOLS[i % 5]), 5 + i) for i in range(60)]
                if release_after:  # every answer held until all requests have arrived
                    deadline = time.monotonic() + 20
                    while len(gateway.history_requests()) < release_after and time.monotonic() < deadline:
                        time.sleep(0.02)
                    gateway.release_history()
                return [f.exception() for f in futures]
        finally:
            broker.close()

    gateway.set_history_delay(0.3)  # answers come late: requests stay open meanwhile
    paced = HistoryPacer(large_limit=1000)
    assert burst(paced, 11) == [None] * 60 and paced.max_seen_open == 50
    log = gateway.history_requests()
    assert len(log) == 60 and max(r.open_before for r in log) <= 49 and pacing_problems(log) == []

    gateway.set_history_delay(math.inf)  # without the limit: the 51st to 60th open request are refused
    errors = [e for e in burst(HistoryPacer(large_limit=1000, max_open=60), 12, release_after=120) if e is not None]
    assert len(errors) == 10
    assert all(isinstance(e, PacingViolationError) and "Only 50 simultaneous" in str(e) for e in errors)
