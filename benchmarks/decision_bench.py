"""Decision benchmark: 200 strategies × 2,000 instruments (400,000 target rows), 2,000 holdings,
500 open orders; and the same with 20 strategies (40,000 rows), side by side in one run.

Prints wall time (median of runs) and peak memory (tracemalloc) for each size, and the ratio of the
400,000-row time to the 40,000-row time (linear scaling gives about 10).

    python benchmarks/decision_bench.py [--runs 3]
"""
from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.commander import decide  # noqa: E402

N_INSTRUMENTS, N_HOLDINGS, N_ORDERS = 2_000, 2_000, 500


def make_inputs(n_strategies: int, seed: int = 7) -> dict:
    rng = random.Random(seed)
    symbols = [f"S{i:04d}" for i in range(N_INSTRUMENTS)]
    prices = {s: round(rng.uniform(5, 500), 2) for s in symbols}
    alloc = 1.0 / n_strategies
    strategies, intents = {}, {}
    for k in range(n_strategies):
        sid = f"strat{k:03d}"
        strategies[sid] = {"name": sid, "enabled": True, "capital_allocation": alloc,
                           "risk_parameters": {"max_single_position_exposure": 0.05}}
        rows = []
        for s in symbols:
            row = {"symbol": s, "secType": "STK", "exchange": "SMART", "currency": "USD", "price": prices[s]}
            if rng.random() < 0.5:
                row["weight"] = rng.uniform(-0.001, 0.001)
            else:
                row["quantity"] = rng.randint(-50, 50)
            rows.append(row)
        intents[sid] = {"updated_at": "2025-10-29T20:30:00Z", "status": "success", "metadata": {},
                        "target_positions": rows}
    holdings = [{"symbol": s, "secType": "STK", "currency": "USD", "quantity": rng.randint(-100, 100),
                 "market_price": prices[s], "market_value": 0.0} for s in symbols[:N_HOLDINGS]]
    orders = [{"orderId": i, "permId": 10_000 + i, "clientId": i % 3, "symbol": symbols[rng.randrange(N_INSTRUMENTS)],
               "secType": "STK", "currency": "USD", "action": rng.choice(["BUY", "SELL"]),
               "totalQuantity": 10, "remaining": 10, "orderType": "LMT", "lmtPrice": 10.0,
               "orderRef": "cmdr-exec-1" if i % 2 else "", "status": "Submitted"} for i in range(N_ORDERS)]
    return {"now": "2025-10-29T21:00:00Z", "window_start": "2025-10-29T20:00:00Z", "mode": "paper",
            "execution_id": "bench", "config": {"tradingEnabled": True, "risk": {"allow_short": True}},
            "strategies": strategies, "intents": intents,
            "portfolio": {"updated_at": "2025-10-29T20:45:00Z", "account": "DU1", "net_liquidation": 1e9,
                          "available_funds": 5e8, "holdings": holdings, "open_orders": orders},
            "previous_execution": None}


def measure(inputs: dict, runs: int) -> tuple[float, float, int]:
    times = []
    for _ in range(runs):
        gc.collect()
        t0 = time.perf_counter()
        d = decide(inputs)
        times.append(time.perf_counter() - t0)
    gc.collect()
    tracemalloc.start()
    decide(inputs)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return statistics.median(times), peak / 2**20, len(d["orders"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    results = {}
    for n in (20, 200):
        inputs = make_inputs(n)
        rows = n * N_INSTRUMENTS
        t, mem, orders = measure(inputs, args.runs)
        results[rows] = t
        print(f"{n:4d} strategies × {N_INSTRUMENTS} instruments = {rows:7,d} rows: "
              f"median {t:.3f} s, peak {mem:.0f} MiB, {orders} orders")
    print(f"ratio time(400,000) / time(40,000) = {results[400_000] / results[40_000]:.2f} (linear ≈ 10)")


if __name__ == "__main__":
    main()
