"""Incremental updates of the bar store from a broker, on the exchange calendar (XNYS).

For each series: the first time, its whole history (`first_sessions`, 10 years by default, or the
lookback if longer) in one request; after that only the sessions after the last one stored, plus
that last session again (it may have been a partial bar). A series shorter than a lookback that its
source could still extend is fetched back far enough once. Requests go through one `HistoryPacer`
shared by every series of the update (on IB the connection itself paces with it, so every request
of the stage, TRADES and ADJUSTED_LAST alike, is counted by that one pacer), and a request the
broker refused for pacing is retried after a back-off (`lib.pacing.with_backoff`). Every fetch goes
through `Broker.history(contract, days, bar_size, end)`, so any broker serves it.

Adjusted closes (IB only: `IBBroker.adjusted_history`, ADJUSTED_LAST; the simulator has none): one
more request over the same sessions, made only when the raw bars brought something new or changed
(a second run on the same day asks for the last session's TRADES bar only) or the latest session
lacks one. A split or dividend rescales every earlier adjusted close: the older stored ones are
rescaled by how the adjustment factor (adjusted / raw close) of the oldest refetched session moved.

A series whose source is another than the broker's: the simulator's synthetic bars never replace or
extend real ones (ib, imports) and are replaced by a real broker's; an import is never extended by
a broker (re-import it). Both refusals say so.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import threading
import time
from typing import Callable
from zoneinfo import ZoneInfo

import pandas as pd

from lib import sessions
from lib.broker import Contract
from lib.data.files import DataError
from lib.data.store import DAILY, BarStore, Series, bars_frame, check_symbol, describe_source, merge
from lib.pacing import HistoryPacer, paces, with_backoff

UTC = dt.timezone.utc
NEW_YORK = ZoneInfo("America/New_York")
FIRST_SESSIONS = 2520  # ten years of sessions: one request on IB ("10 Y")
DEFAULT_LOOKBACK = 200


def source_of(broker_url: str) -> str:
    """The `source` a broker's bars are stored under: 'sim' or 'ib'."""
    if broker_url == "sim" or broker_url.startswith(("sim:", "sim?")):
        return "sim"
    if broker_url.startswith("ib://"):
        return "ib"
    raise ValueError(f"unknown broker URL {broker_url!r}")


def today_session(now: dt.datetime | None = None) -> dt.date:
    """The broker's today: the last XNYS session on or before today's date in New York. Before the
    open a real broker has no bar for it yet; fetching up to it still brings everything there is."""
    day = (now or dt.datetime.now(UTC)).astimezone(NEW_YORK).date()
    return sessions.last_session_on_or_before(day)


def broker_end(broker, now: dt.datetime | None = None) -> dt.date:
    """The last session to fetch up to: the simulator's clock, else `today_session(now)`."""
    clock = getattr(broker, "as_of", None)
    if callable(clock):
        return clock()
    return today_session(now)


def sessions_between(first: dt.date, last: dt.date) -> int:
    """XNYS sessions from `first` to `last`, both included (a non-session `first` counts as one:
    the broker gave a bar for it)."""
    if last < first:
        return 0
    cal = sessions.calendar()
    n = len(cal.sessions_in_range(pd.Timestamp(first), pd.Timestamp(last)))
    return n + (0 if cal.is_session(pd.Timestamp(first)) else 1)


def plan(series: Series | None, end: dt.date, lookback: int, first_sessions: int = FIRST_SESSIONS) -> int | None:
    """How many sessions ending at `end` to ask for (None: nothing to fetch)."""
    if series is None or series.last_session is None:
        return max(lookback, first_sessions)
    last = series.last_session
    if last > end:
        return None  # the store is ahead of this broker's clock (a simulator set back): it already has `end`
    stored = int((series.bars.index <= pd.Timestamp(end)).sum())
    new = sessions_between(last, end)  # the last stored session again, and every one after it
    if stored - 1 + new < lookback and not series.history_complete:
        return max(lookback, new)  # too short for this lookback and the source may have more: reach back once
    return max(1, new)


@dataclasses.dataclass
class Outcome:
    """What one series' update did."""

    symbol: str
    ok: bool
    requests: int = 0  # history requests sent (retries and adjusted ones included)
    adjusted_requests: int = 0  # of which ADJUSTED_LAST (IB)
    bars: int = 0  # bars received
    asked: int = 0  # sessions asked for
    last_session: dt.date | None = None
    rows: int = 0
    source: str = ""
    error: str = ""
    notes: list[str] = dataclasses.field(default_factory=list)

    def line(self) -> str:
        state = "ok" if self.ok else "FAILED"
        adjusted = f" (+{self.adjusted_requests} adjusted)" if self.adjusted_requests else ""
        what = (f"{self.rows} sessions to {self.last_session}, {self.requests - self.adjusted_requests} request(s)"
                f"{adjusted} for {self.asked} session(s)" if self.ok else self.error)
        extra = f" [{'; '.join(self.notes)}]" if self.notes else ""
        return f"{self.symbol:<8} {state:<6} {what}{extra}"


class Updater:
    """Brings series up to date from one broker connection, paced by one shared pacer."""

    def __init__(self, store: BarStore, broker, source: str, pacer: HistoryPacer | None = None,
                 first_sessions: int = FIRST_SESSIONS, backoff: tuple[float, ...] | None = None,
                 sleep: Callable[[float], None] = time.sleep, log: Callable[[str], None] | None = None,
                 adjusted: bool = True):
        self.store, self.broker, self.source = store, broker, source
        own = getattr(broker, "history_pacer", None)  # an IB connection's own: then one pacer, not two
        self.pacer = pacer or (own if isinstance(own, HistoryPacer) else HistoryPacer())
        self.first_sessions = first_sessions
        self.backoff, self.sleep, self.log = backoff, sleep, log or (lambda message: None)
        # Adjusted closes where the broker gives them (IB's ADJUSTED_LAST), one extra request.
        self.adjusted = adjusted and callable(getattr(broker, "adjusted_history", None))

    def _fetch(self, symbol: str, days: int, end: dt.date, outcome: Outcome, adjusted: bool = False):
        what = "ADJUSTED_LAST" if adjusted else "TRADES"

        def call():
            outcome.requests += 1
            outcome.adjusted_requests += adjusted
            if adjusted:
                return self.broker.adjusted_history(Contract(symbol=symbol), days, end=end)
            return self.broker.history(Contract(symbol=symbol), days, bar_size=DAILY, end=end)

        def once():
            if paces(self.pacer, self.broker):  # an IB connection given this pacer paces its own requests
                return call()
            with self.pacer.request(f"{symbol}:{what}", DAILY, (symbol, DAILY, days, end.isoformat(), what)):
                return call()

        kwargs = {} if self.backoff is None else {"delays": self.backoff}
        return with_backoff(once, sleep=self.sleep, on_retry=lambda exc, delay: self.log(
            f"{symbol}: the broker refused for pacing ({exc}); retrying in {delay:.0f} s"), **kwargs)

    def _merge(self, symbol: str, current: Series | None, fresh: pd.DataFrame, days: int, end: dt.date,
               outcome: Outcome) -> pd.DataFrame:
        """The stored bars with `fresh` (raw) ones merged in, adjusted closes kept, fetched and rescaled."""
        old = None if current is None else current.bars
        merged = merge(old, fresh)
        raw = ["open", "high", "low", "close", "volume"]
        same = pd.Series(False, index=fresh.index)
        if old is not None:  # refetched bars that did not change keep their stored adjusted close
            before = old.reindex(fresh.index)
            same = (before[raw].eq(fresh[raw]) | (before[raw].isna() & fresh[raw].isna())).all(axis=1)
            kept = same[same].index
            merged.loc[kept, "adj_close"] = old.loc[kept, "adj_close"]
        if not self.adjusted or (bool(same.all()) and pd.notna(merged["adj_close"].iloc[-1])):
            return merged  # nothing new, and the latest session has its adjusted close
        try:
            adjusted = self._fetch(symbol, days, end, outcome, adjusted=True)
        except Exception as exc:  # the raw bars still count; the next update asks again
            outcome.notes.append(f"no adjusted closes this time ({type(exc).__name__}: {exc})")
            return merged
        adj = pd.Series({pd.Timestamp(b.date): float(b.close) for b in adjusted}, dtype="float64")
        adj = adj[adj.index.isin(merged.index)]
        if adj.empty:
            outcome.notes.append("the broker gave no adjusted closes")
            return merged
        older = merged.index < adj.index[0]
        if old is not None and merged.loc[older, "adj_close"].notna().any():
            # A split or dividend since the last update moves the factor of every earlier session alike.
            overlap = [d for d in adj.index if d in old.index and pd.notna(old.at[d, "adj_close"])
                       and old.at[d, "close"] and merged.at[d, "close"]]
            if overlap:
                d = overlap[0]
                ratio = (adj[d] / merged.at[d, "close"]) / (old.at[d, "adj_close"] / old.at[d, "close"])
                if abs(ratio - 1) > 1e-9:
                    merged.loc[older, "adj_close"] *= ratio
                    outcome.notes.append(f"adjusted closes before {d.date()} rescaled by {ratio:.6f} "
                                         "(a split or dividend)")
            else:  # no session to compare: the older adjusted closes cannot be trusted
                merged.loc[older, "adj_close"] = float("nan")
                outcome.notes.append(f"adjusted closes before {adj.index[0].date()} dropped (nothing to rescale by)")
        merged.loc[adj.index, "adj_close"] = adj.to_numpy()
        return merged

    def update(self, symbol: str, lookback: int, end: dt.date, refresh: bool = True) -> Outcome:
        """Bring `symbol` up to `end` with at least `lookback` sessions. With `refresh=False` a series
        that already reaches `end` with enough history is left alone (no request at all)."""
        check_symbol(symbol)
        outcome = Outcome(symbol, ok=False)

        def change(current: Series | None, damaged: str) -> Series | None:
            outcome.notes.clear()  # called again when a concurrent writer won (GCS): the newer version counts
            if damaged:
                outcome.notes.append(f"{self.store.link(symbol)} was damaged ({damaged}): fetched again")
            if current is not None and current.source != self.source:
                if current.synthetic:  # real bars replace the simulator's synthetic ones, never the reverse
                    outcome.notes.append(f"replaced {describe_source(current.source)} by {self.source}")
                    current = None
                elif self.source == "sim":
                    raise DataError(f"{self.store.link(symbol)} holds {current.source} bars; the simulator's "
                                    "synthetic bars never replace or extend real ones (use another data store "
                                    "for the simulator: --data / COMMANDER_DATA)")
                else:
                    raise DataError(f"{self.store.link(symbol)} holds {current.source} bars; a broker never "
                                    f"extends an import (import a newer file, or delete it to fetch from {self.source})")
            days = plan(current, end, lookback, self.first_sessions)
            if days is None or (not refresh and current is not None and days == 1
                                and current.last_session == end):
                return current
            outcome.asked = days
            bars = self._fetch(symbol, days, end, outcome)
            outcome.bars = len(bars)
            if not bars:
                if current is None:
                    raise DataError(f"the broker returned no daily bars of {symbol} up to {end}")
                return current
            fresh = bars_frame(bars)
            reached_back = current is None or days > sessions_between(current.last_session, end)
            return Series(symbol, self._merge(symbol, current, fresh, days, end, outcome), self.source,
                          history_complete=(current is not None and current.history_complete)
                          or (reached_back and len(bars) < days))

        try:
            result = self.store.modify(symbol, change)
        except Exception as exc:  # one series' failure never stops the others: it is reported with its reason
            outcome.error = f"{type(exc).__name__}: {exc}"
            return outcome
        series = result.series
        outcome.ok = True
        outcome.source = series.source if series else ""
        outcome.last_session = series.last_session if series else None
        outcome.rows = len(series.bars) if series else 0
        if series is not None and series.last_session is not None and series.last_session < end:
            outcome.notes.append(f"the broker's last bar is {series.last_session}, not {end}")
        return outcome

    def update_many(self, wanted: dict[str, int], end: dt.date, refresh: bool = True, workers: int = 4,
                    on_progress: Callable[[int, int, float | None, Outcome], None] | None = None) -> dict[str, Outcome]:
        """Update every symbol of `wanted` (symbol → lookback) once; `on_progress(done, total,
        seconds_left, outcome)` after each. Returns symbol → Outcome (failures included)."""
        symbols = sorted(wanted)
        total, done, t0 = len(symbols), 0, time.monotonic()
        lock = threading.Lock()
        out: dict[str, Outcome] = {}

        def one(symbol: str) -> Outcome:
            nonlocal done
            result = self.update(symbol, wanted[symbol], end, refresh)
            with lock:
                done += 1
                out[symbol] = result
                left = total - done
                per = (time.monotonic() - t0) / done
                eta = max(per * left / max(1, min(workers, left or 1)), self.pacer.eta(left, DAILY))
                if on_progress:
                    on_progress(done, total, eta if left else 0.0, result)
            return result

        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(workers, total or 1))) as pool:
            list(pool.map(one, symbols))
        return {s: out[s] for s in symbols}


# ---- what the pipeline and the notebooks call -----------------------------------------------------
def declared(strategies: dict[str, dict]) -> dict[str, int]:
    """The union of the strategies' `universe`s: symbol → the longest `lookback` asking for it."""
    wanted: dict[str, int] = {}
    for doc in strategies.values():
        lookback = int(doc.get("lookback") or DEFAULT_LOOKBACK)
        for symbol in doc.get("universe") or []:
            wanted[symbol] = max(wanted.get(symbol, 0), lookback)
    return wanted


def blocked(strategies: dict[str, dict], failed: dict[str, str]) -> dict[str, str]:
    """strategy id → why it cannot run: the series of its universe that could not be brought up to date."""
    out = {}
    for sid, doc in strategies.items():
        reasons = [f"{s}: {failed[s]}" for s in doc.get("universe") or [] if s in failed]
        if reasons:
            out[sid] = "market data could not be brought up to date: " + "; ".join(reasons)
    return out


@dataclasses.dataclass
class UpdateReport:
    outcomes: dict[str, Outcome]
    end: dt.date
    requests: int
    seconds: float
    waited: float

    @property
    def failed(self) -> dict[str, str]:
        return {s: o.error for s, o in self.outcomes.items() if not o.ok}

    def summary(self) -> str:
        ok = sum(o.ok for o in self.outcomes.values())
        return (f"{ok}/{len(self.outcomes)} series up to {self.end}, {self.requests} request(s), "
                f"{self.seconds:.1f} s (paced {self.waited:.1f} s)")


def update_from_broker(data_url: str, broker_url: str, mode: str, wanted: dict[str, int], *,
                       as_of: str | None = None, now: dt.datetime | None = None, refresh: bool = True,
                       pacer: HistoryPacer | None = None, workers: int = 4, adjusted: bool = True,
                       backoff: tuple[float, ...] | None = None,
                       on_progress: Callable[[int, int, float | None, Outcome], None] | None = None,
                       log: Callable[[str], None] | None = None) -> UpdateReport:
    """Open the store and one broker connection and update `wanted` (symbol → lookback) once.

    Every request goes through `pacer` (one for the whole update; an IB connection is opened with it
    as its `hist_pacer`). `adjusted`: also ask for adjusted closes where the broker gives them (IB).
    `as_of` is the simulator's clock (ignored by other brokers); raises for a store or broker that
    cannot be opened (every series fails then), otherwise reports each series' outcome."""
    from lib.broker import open_broker
    from lib.data.store import open_store
    store = open_store(data_url)
    source = source_of(broker_url)
    options = {"as_of": as_of} if as_of and source == "sim" else {}
    t0 = time.monotonic()
    pacer = pacer or HistoryPacer()
    if source == "ib":
        options["hist_pacer"] = pacer  # the connection paces every request of the update with it
    with open_broker(broker_url, mode, None, **options) as broker:
        end = broker_end(broker, now)
        updater = Updater(store, broker, source, pacer, backoff=backoff, log=log, adjusted=adjusted)
        outcomes = updater.update_many(wanted, end, refresh=refresh, workers=workers, on_progress=on_progress)
    return UpdateReport(outcomes, end, pacer.requests, time.monotonic() - t0, pacer.waited)
