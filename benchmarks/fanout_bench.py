"""Fan-out benchmark: the strategy stage's batch of N trivial strategies (copies of the dummy
template) on the `local` executor and on Dask `LocalCluster(2)` (dask://local, two worker
processes of one thread), in one run, interleaved, each batch on fresh embedded defaults (bus,
simulator, audit folder) in a temporary folder.

Prints each executor's wall time for the batch, the cluster's start-up apart, their ratio (goal:
at most 1.2, i.e. the engine adds little on one machine) and the fitted model
wall ≈ start-up + ceil(N / W) × t_notebook.

    python benchmarks/fanout_bench.py [--strategies 40] [--workers 2] [--repeat 2]
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib.executors import Batch, NotebookTask, code_revision  # noqa: E402
from lib.executors.dask import DaskExecutor  # noqa: E402
from lib.executors.local import LocalExecutor  # noqa: E402

AS_OF = "2026-11-20"


def batch(tmp: Path, label: str, n: int) -> Batch:
    folder = f"{AS_OF}/{label}"
    common = {"mode": "paper", "bus_url": f"sqlite:///{tmp / 'bus.sqlite'}", "broker_url": f"sim:///{tmp / 'sim.sqlite'}",
              "as_of": AS_OF, "run_id": label}
    tasks = [NotebookTask(f"trivial_{i}", "notebooks/strategies/dummy.ipynb", f"{folder}/{i:02d}_trivial_{i}.ipynb",
                          {**common, "strategy_id": f"trivial_{i}"}, 120.0,
                          str(tmp / "runs" / folder / f"{i:02d}_trivial_{i}.ipynb"))
             for i in range(1, n + 1)]
    return Batch(label, folder, str(tmp / "runs"), code_revision(), tasks, {"run_id": label}, deadline=3600)


def timed(executor, b: Batch) -> float:
    t0 = time.perf_counter()
    outcomes = executor.run(b)
    wall = time.perf_counter() - t0
    failed = [o for o in outcomes if not o.ok]
    if failed:
        raise SystemExit(f"{len(failed)} notebooks failed, e.g. {failed[0].key}: {failed[0].error}")
    return wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--strategies", type=int, default=40)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=2, help="batches per executor, interleaved local/dask, dask/local, …")
    args = p.parse_args()
    n, w = args.strategies, args.workers
    walls: dict[str, list[float]] = {"local": [], "dask": []}
    with DaskExecutor("dask://local", workers=w) as dask:
        t0 = time.perf_counter()
        dask.client().wait_for_workers(w)
        startup = time.perf_counter() - t0
        executors = {"local": LocalExecutor(workers=w), "dask": dask}
        for r in range(args.repeat):
            for name in (("local", "dask") if r % 2 == 0 else ("dask", "local")):
                with tempfile.TemporaryDirectory() as d:  # a fresh bus, simulator and audit folder per batch
                    walls[name].append(timed(executors[name], batch(Path(d), f"{name}{r}", n)))
    local, on_dask = statistics.median(walls["local"]), statistics.median(walls["dask"])
    rounds = math.ceil(n / w)
    print(f"{n} trivial strategies, {w} workers ({rounds} rounds), {args.repeat} batches each, medians:")
    print(f"local                      {local:7.1f} s   ({local / rounds:.2f} s per round)   "
          f"{', '.join(f'{x:.1f}' for x in walls['local'])}")
    print(f"dask LocalCluster({w})       {on_dask:7.1f} s   ({on_dask / rounds:.2f} s per round)   "
          f"{', '.join(f'{x:.1f}' for x in walls['dask'])}; cluster start-up {startup:.1f} s")
    print(f"ratio dask/local           {on_dask / local:7.2f}   (with start-up {(on_dask + startup) / local:.2f}; goal <= 1.2)")
    print(f"model: wall ≈ start-up + ceil(N/W) × t_round, t_round ≈ {local / rounds:.2f} s local, "
          f"{on_dask / rounds:.2f} s on dask")


if __name__ == "__main__":
    main()
