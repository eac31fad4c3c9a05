"""Rate limits as sliding windows: at most N events in any `period` seconds.

IB disconnects clients that send more than 50 messages per second and refuses historical-data
requests that break its pacing rules (for bars of 30 s or less: more than 60 in 10 minutes, ...);
`Pacer` makes a caller wait instead. `HistoryPacer` applies all of IB's historical-data rules (by
bar size, per contract, open requests) to one stage's requests, and `with_backoff` retries a request
the broker refused for pacing.
"""
from __future__ import annotations

import collections
import contextlib
import threading
import time
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")


class Pacer:
    """Blocks `acquire()` until one more event fits into the window."""

    def __init__(self, limit: int, period: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        if limit < 1 or period <= 0:
            raise ValueError(f"a pacer needs limit >= 1 and period > 0, got {limit}, {period}")
        self.limit, self.period = limit, period
        self._clock, self._sleep = clock, sleep
        self._events: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Record one event, first waiting as long as needed; returns the seconds waited."""
        waited = 0.0
        with self._lock:
            while True:
                now = self._clock()
                while self._events and now - self._events[0] >= self.period:
                    self._events.popleft()
                if len(self._events) < self.limit:
                    self._events.append(now)
                    return waited
                delay = self.period - (now - self._events[0])
                self._sleep(delay)
                waited += delay


# ---- historical-data requests ------------------------------------------------------------------
#: IB's hard limits for historical bars of 30 seconds or less (its "pacing violations", error 162
#: "Historical Market Data Service error message:Historical data request pacing violation";
#: https://interactivebrokers.github.io/tws-api/historical_limitations.html): no more than 60
#: requests in any 10 minutes, no identical request within 15 seconds, and not "six or more"
#: requests for one contract, exchange and tick type within 2 seconds, so at most 5.
SMALL_BAR_SECONDS = 30
SMALL_LIMIT, SMALL_PERIOD = 60, 600.0
IDENTICAL_GAP = 15.0
PER_CONTRACT_LIMIT, PER_CONTRACT_PERIOD = 5, 2.0
#: IB allows at most 50 historical requests to be open (sent, not yet answered) at once.
MAX_OPEN = 50
#: Larger bars are throttled softly by IB; this project's default: 60 requests a minute.
LARGE_LIMIT, LARGE_PERIOD = 60, 60.0

_UNIT_SECONDS = {"sec": 1, "secs": 1, "min": 60, "mins": 60, "hour": 3600, "hours": 3600,
                 "day": 86400, "days": 86400, "week": 604800, "weeks": 604800, "month": 2_592_000, "months": 2_592_000}


def bar_seconds(bar_size: str) -> int:
    """The length of one bar named the IB way ('1 secs', '30 mins', '1 day', '1 month')."""
    try:
        count, unit = bar_size.split()
        return int(count) * _UNIT_SECONDS[unit]
    except (ValueError, KeyError):
        raise ValueError(f"unknown bar size {bar_size!r}; expected e.g. '30 secs', '30 mins', '1 day'") from None


def parse_rate(text: str) -> tuple[int, float]:
    """'60/60' (requests/seconds) → (60, 60.0); ValueError otherwise."""
    try:
        limit, period = text.split("/")
        out = int(limit), float(period)
    except ValueError:
        raise ValueError(f"rate {text!r}: expected REQUESTS/SECONDS, e.g. 60/60") from None
    if out[0] < 1 or out[1] <= 0:
        raise ValueError(f"rate {text!r}: expected at least 1 request over more than 0 seconds")
    return out


class HistoryPacer:
    """One pacer for every historical-data request of a stage, whichever broker serves them.

    `with pacer.request(contract_key, bar_size, identity):` waits until the request may go out and
    holds one of the `max_open` slots while it runs. Bars of 30 s or less follow IB's hard rules
    (60 per 10 min, no identical request within 15 s, at most 5 per contract, exchange and tick type
    within 2 s); larger bars a configurable sliding window (`large_limit` per `large_period` seconds).
    `margin` seconds are added to every window of the hard rules, for the time between letting a
    request go and IB receiving it. Thread-safe; waiting threads sleep without holding the lock.
    `clock` and `sleep` are injectable for tests.

    An IB connection given this pacer (`IBBroker(hist_pacer=...)`) paces its own requests with it,
    each with IB's own key and identity (`paces(broker)` tells); callers then must not wrap the
    broker's calls in `request()` again.
    """

    def __init__(self, large_limit: int = LARGE_LIMIT, large_period: float = LARGE_PERIOD, max_open: int = MAX_OPEN,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 margin: float = 0.0):
        if large_limit < 1 or large_period <= 0 or max_open < 1 or margin < 0:
            raise ValueError("a history pacer needs large_limit >= 1, large_period > 0, max_open >= 1 and margin >= 0")
        self.large_limit, self.large_period, self.max_open = large_limit, large_period, max_open
        self.margin = margin
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_open)
        self._small: collections.deque[float] = collections.deque()
        self._large: collections.deque[float] = collections.deque()
        self._per_contract: dict[str, collections.deque[float]] = {}
        self._identical: dict[tuple, float] = {}
        self.requests = 0
        self.waited = 0.0
        self.open = 0
        self.max_seen_open = 0
        #: (time, contract_key, bar_size, identity) of every request let through, for tests and figures.
        self.sent: list[tuple[float, str, str, tuple]] = []

    @staticmethod
    def _trim(events: collections.deque[float], now: float, period: float) -> None:
        while events and now - events[0] >= period:
            events.popleft()

    def _delay(self, now: float, contract_key: str, small: bool, identity: tuple) -> float:
        """Seconds until this request fits every rule (0: now). Called with the lock held."""
        if not small:
            self._trim(self._large, now, self.large_period)
            if len(self._large) >= self.large_limit:
                return self.large_period - (now - self._large[0])
            return 0.0
        delay, margin = 0.0, self.margin
        self._trim(self._small, now, SMALL_PERIOD + margin)
        if len(self._small) >= SMALL_LIMIT:
            delay = max(delay, SMALL_PERIOD + margin - (now - self._small[-SMALL_LIMIT]))
        mine = self._per_contract.setdefault(contract_key, collections.deque())
        self._trim(mine, now, PER_CONTRACT_PERIOD + margin)
        if len(mine) >= PER_CONTRACT_LIMIT:
            delay = max(delay, PER_CONTRACT_PERIOD + margin - (now - mine[-PER_CONTRACT_LIMIT]))
        last = self._identical.get(identity)
        if last is not None and now - last < IDENTICAL_GAP + margin:
            delay = max(delay, IDENTICAL_GAP + margin - (now - last))
        if len(self._identical) > 4096:  # forget identities whose 15 s have passed
            self._identical = {k: t for k, t in self._identical.items() if now - t < IDENTICAL_GAP + margin}
        return delay

    def acquire(self, contract_key: str, bar_size: str, identity: tuple = ()) -> float:
        """Wait until one request fits, record it, take an open slot; returns the seconds waited.
        Every `acquire` needs one `release` (use `request()`)."""
        small = bar_seconds(bar_size) <= SMALL_BAR_SECONDS
        identity = identity or (contract_key, bar_size)
        waited = 0.0
        t0 = self._clock()
        self._slots.acquire()
        waited += self._clock() - t0
        while True:
            with self._lock:
                now = self._clock()
                delay = self._delay(now, contract_key, small, identity)
                if delay <= 0:
                    if small:
                        self._small.append(now)
                        self._per_contract[contract_key].append(now)
                        self._identical[identity] = now
                    else:
                        self._large.append(now)
                    self.requests += 1
                    self.waited += waited
                    self.open += 1
                    self.max_seen_open = max(self.max_seen_open, self.open)
                    self.sent.append((now, contract_key, bar_size, identity))
                    return waited
            self._sleep(delay)
            waited += delay

    def release(self) -> None:
        with self._lock:
            self.open -= 1
        self._slots.release()

    @contextlib.contextmanager
    def request(self, contract_key: str, bar_size: str, identity: tuple = ()) -> Iterator[float]:
        """`with pacer.request("SPY", "1 day", identity):` around one historical request."""
        waited = self.acquire(contract_key, bar_size, identity)
        try:
            yield waited
        finally:
            self.release()

    def eta(self, count: int, bar_size: str = "1 day") -> float:
        """The least time, in seconds from now, before `count` more requests of this size may all be
        sent under the sliding window (the part of the time left the pacer alone explains)."""
        if count <= 0:
            return 0.0
        small = bar_seconds(bar_size) <= SMALL_BAR_SECONDS
        limit, period = (SMALL_LIMIT, SMALL_PERIOD) if small else (self.large_limit, self.large_period)
        with self._lock:
            now = self._clock()
            events = [t for t in (self._small if small else self._large) if now - t < period]
        times, at = list(events), now
        for _ in range(count):  # each next request goes when the limit-th latest one leaves the window
            at = max(now, times[-limit] + period) if len(times) >= limit else now
            times.append(at)
        return at - now


# ---- retrying a refused request ----------------------------------------------------------------
#: Back-off before each retry of a request the broker refused for pacing (IB: error 162 "pacing
#: violation"; IB asks for a pause, and a tight retry loop only extends the penalty).
BACKOFF = (15.0, 60.0, 300.0)


def is_pacing_violation(exc: BaseException) -> bool:
    """Whether a broker refused a request for pacing: a `PacingViolationError`, or any error whose
    text says so (broker-agnostic), as IB's error 162 "Historical Market Data Service error
    message:Historical data request pacing violation" does."""
    from lib.errors import PacingViolationError
    return isinstance(exc, PacingViolationError) or "pacing violation" in str(exc).lower()


def paces(pacer: "HistoryPacer", broker) -> bool:
    """Whether `broker` paces its own historical requests with `pacer` (an IBBroker given it)."""
    return getattr(broker, "history_pacer", None) is pacer


def with_backoff(call: Callable[[], "T"], retryable: Callable[[BaseException], bool] = is_pacing_violation,
                 delays: tuple[float, ...] | None = None, sleep: Callable[[float], None] = time.sleep,
                 on_retry: Callable[[BaseException, float], None] | None = None) -> "T":
    """`call()`, retried after each delay in `delays` (default: `BACKOFF`, read at each call) while
    it raises an error `retryable` accepts; the last error is raised when the delays are used up (or
    at once for any other error)."""
    for delay in (*(BACKOFF if delays is None else delays), None):
        try:
            return call()
        except Exception as exc:
            if delay is None or not retryable(exc):
                raise
            if on_retry is not None:
                on_retry(exc, delay)
            sleep(delay)
    raise AssertionError("unreachable")
