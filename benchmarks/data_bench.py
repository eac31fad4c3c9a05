#!/usr/bin/env python3
"""Market data on IB: 20 strategies over 5 shared symbols, with the store and without it.

    python benchmarks/data_bench.py [--repeat 3] [--parallel 2] [--latency 0.2]

Against the fake IB Gateway (tests/fake_gateway.py, IB's pacing enforced), side by side in one
run, interleaved, the median of `--repeat` rounds:

* today's way, without the store: every strategy opens its own connection (its own client id) and
  fetches 200 daily bars of each of its 5 symbols (`--parallel` strategies at a time, as the local
  executor runs them on this machine);
* with the store: the pipeline's data stage (`update_from_broker`: one connection, one pacer, the
  union of the universes once, TRADES plus ADJUSTED_LAST for the adjusted closes), then every
  strategy reads its closes from the store. Three runs: the first (whole histories, 10 years),
  the same day again, and the next session.

Prints the requests the gateway received (TRADES + ADJUSTED_LAST), the bars it sent and the wall
time of each, twice: with the fake answering at once, and with every answer `--latency` seconds late
(IB's historical data farm takes a while to answer; 0.2 s is an assumption, not a measurement). The
gateway's bars are deterministic SYNTHETIC sessions on the XNYS calendar.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.broker import Contract  # noqa: E402
from lib.broker.ib import IBBroker  # noqa: E402
from lib.data import declared, open_store, update_from_broker  # noqa: E402
from lib.pacing import HistoryPacer, Pacer  # noqa: E402
from tests.fake_gateway import FakeGateway, pacing_problems  # noqa: E402
from tests.ib_harness import session_bars  # noqa: E402

END, NEXT = dt.date(2026, 11, 20), dt.date(2026, 11, 23)  # a Friday session and the Monday after
SYMBOLS = ["GLD", "QQQ", "SPY", "TLT", "VIXY"]
STRATEGIES, LOOKBACK = 20, 200
PHASES = ("today's way (no store)", "store: first run", "store: same day again", "store: next session")


def after_close(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(22, 0), dt.timezone.utc)


def gateway_for(day: dt.date, latency: float) -> FakeGateway:
    gw = FakeGateway(today=day).start()
    if latency:
        gw.set_history_delay(latency)
    for symbol in SYMBOLS:
        gw.set_bars(symbol, session_bars(symbol, NEXT, 3001) if day == NEXT else session_bars(symbol, END, 3000))
    return gw


def without_store(gw: FakeGateway, parallel: int) -> None:
    """Each strategy fetches its own history through its own connection, as before the store."""
    def strategy(i: int) -> None:
        # The adapter's pacer before the store: 60 requests per 10 minutes for every bar size.
        broker = IBBroker("127.0.0.1", gw.port, 10 + i, "paper", timeout=10, hist_pacer=Pacer(60, 600.0))
        try:
            for symbol in SYMBOLS:
                assert len(broker.history(Contract(symbol), LOOKBACK, end=END)) == LOOKBACK
        finally:
            broker.close()

    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        list(pool.map(strategy, range(STRATEGIES)))


def with_store(gw: FakeGateway, data: str, day: dt.date) -> None:
    """The data stage once, then every strategy reads its closes from the store."""
    wanted = declared({f"s{i}": {"universe": SYMBOLS, "lookback": LOOKBACK} for i in range(STRATEGIES)})
    report = update_from_broker(data, f"ib://127.0.0.1:{gw.port}?client_id=2&timeout=10", "paper", wanted,
                                now=after_close(day), pacer=HistoryPacer())
    assert not report.failed, report.failed
    store = open_store(data)
    for _ in range(STRATEGIES):
        assert len(store.closes(SYMBOLS, LOOKBACK, day)) == LOOKBACK


def measure(gw: FakeGateway, work) -> tuple[float, int, int, int]:
    """(seconds, TRADES requests, ADJUSTED_LAST requests, bars sent) of `work()` on `gw`."""
    before = len(gw.history_requests())
    t0 = time.perf_counter()
    work()
    seconds = time.perf_counter() - t0
    log = gw.history_requests()
    assert pacing_problems(log) == [] and all(r.answer == "bars" for r in log), "a request broke IB's rules"
    new = log[before:]
    return (seconds, sum(r.what == "TRADES" for r in new), sum(r.what == "ADJUSTED_LAST" for r in new),
            sum(r.bars for r in new))


def one_round(parallel: int, latency: float) -> dict[str, tuple]:
    out = {}
    gw = gateway_for(END, latency)
    try:
        out[PHASES[0]] = measure(gw, lambda: without_store(gw, parallel))
        with tempfile.TemporaryDirectory() as tmp:
            data = str(Path(tmp) / "data")
            out[PHASES[1]] = measure(gw, lambda: with_store(gw, data, END))
            out[PHASES[2]] = measure(gw, lambda: with_store(gw, data, END))
            gw.stop()
            gw = gateway_for(NEXT, latency)  # the next session: one more bar per symbol
            out[PHASES[3]] = measure(gw, lambda: with_store(gw, data, NEXT))
    finally:
        gw.stop()
    return out


def old_pacer_seconds(requests: int) -> float:
    """How long the adapter's old pacer (60 per 10 minutes, every bar size) would hold `requests`
    made through one connection: on a virtual clock."""
    now = [0.0]
    pacer = Pacer(60, 600.0, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    for _ in range(requests):
        pacer.acquire()
    return now[0]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--parallel", type=int, default=2, help="strategies at a time without the store (2)")
    p.add_argument("--latency", type=float, default=0.2, help="seconds before each answer in the second table (0.2)")
    args = p.parse_args()
    print(f"{STRATEGIES} strategies × {len(SYMBOLS)} shared symbols, {LOOKBACK} sessions each, against the fake "
          f"IB Gateway (median wall time of {args.repeat}, interleaved):")
    tables = {latency: [] for latency in (0.0, args.latency)}
    for _ in range(args.repeat):
        for latency, rounds in tables.items():
            rounds.append(one_round(args.parallel, latency))
    for latency, rounds in tables.items():
        print(f"\nanswers {'at once' if not latency else f'{latency:g} s late'}:")
        print(f"{'':<26} {'requests':>8} {'TRADES':>7} {'ADJ.':>5} {'bars sent':>10} {'wall time':>10}")
        for phase in PHASES:
            seconds = statistics.median(r[phase][0] for r in rounds)
            _, trades, adjusted, bars = rounds[-1][phase]
            print(f"{phase:<26} {trades + adjusted:>8} {trades:>7} {adjusted:>5} {bars:>10,} {seconds:>9.2f}s")
    print(f"\nNo request broke IB's pacing rules (the gateway's own log). Without the store, the 100 requests "
          f"through one connection under the adapter's old pacer (60 per 10 minutes for every bar size) would "
          f"have waited {old_pacer_seconds(STRATEGIES * len(SYMBOLS)):.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
