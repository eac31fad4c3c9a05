#!/usr/bin/env python3
"""Backtest speed: the Commander loop over 10 strategies × 50 instruments × 2,500 sessions.

    python benchmarks/backtest_bench.py [--sessions 2500]

Prints Commander sessions per second and the wall time of the whole backtest (no kernel starts:
the target series are computed here), then how time grows with strategies and with instruments,
side by side in one run. Prices are a seeded random walk (SYNTHETIC). Target: ≥ 500 sessions/s at
the full size.
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.backtest import PriceBook, run  # noqa: E402
from lib.sessions import calendar  # noqa: E402


def world(n_strategies: int, n_instruments: int, n_sessions: int, seed: int = 7):
    days = [d.date() for d in calendar().sessions_in_range("2010-01-04", "2026-11-30")[:n_sessions]]
    rng = np.random.default_rng(seed)
    symbols = [f"S{i:03d}" for i in range(n_instruments)]
    closes = pd.DataFrame(100 * np.exp(np.cumsum(rng.normal(0.0002, 0.01, (len(days), n_instruments)), axis=0)),
                          index=pd.to_datetime(days), columns=symbols)
    targets, strategies = {}, {}
    for s in range(n_strategies):
        # Each strategy holds 10 instruments, re-drawn every 20 sessions: a monthly rotation.
        w = np.zeros((len(days), n_instruments))
        for start in range(0, len(days), 20):
            pick = rng.choice(n_instruments, size=min(10, n_instruments), replace=False)
            w[start:start + 20, pick] = 1.0 / len(pick)
        targets[f"s{s}"] = pd.DataFrame(w, index=days, columns=symbols)
        strategies[f"s{s}"] = {"name": f"s{s}", "enabled": True, "capital_allocation": 1.0 / n_strategies,
                               "risk_parameters": {"max_single_position_exposure": 1.0}}
    config = {"tradingEnabled": True, "tradingState": "active", "exposure": {"overall": 1.0},
              "risk": {"allow_short": False, "min_order_notional": 100.0, "rebalance_threshold": 0.01}}
    return targets, PriceBook.from_closes(closes, label="random walk", synthetic=True), config, strategies, days


def timed(n_strategies: int, n_instruments: int, n_sessions: int) -> tuple[float, int]:
    targets, book, config, strategies, days = world(n_strategies, n_instruments, n_sessions)
    t0 = time.perf_counter()
    result = run(targets, book, config=config, strategies=strategies, cash=10_000_000, start=days[0], end=days[-1])
    return time.perf_counter() - t0, len(result.sessions)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=2500)
    args = p.parse_args()
    seconds, n = timed(10, 50, args.sessions)
    print(f"10 strategies × 50 instruments × {n} sessions: {seconds:.2f} s, {n / seconds:,.0f} sessions/s "
          f"(target ≥ 500/s)")
    short = max(250, args.sessions // 5)
    print(f"\ngrowth over {short} sessions (seconds, and sessions/s):")
    base, _ = timed(10, 50, short)
    for s, i in ((5, 50), (10, 50), (20, 50), (10, 25), (10, 100)):
        t, m = (base, short) if (s, i) == (10, 50) else timed(s, i, short)
        print(f"  {s:>3} strategies × {i:>3} instruments: {t:6.2f} s  {m / t:8,.0f}/s  ×{t / base:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
