"""Pipeline benchmark: 4 trivial strategies + reconcile + commander, run by run_pipeline.py, against
the naive baseline of the same 6 notebooks run one after another with the `papermill` command.

Both run on the embedded defaults (fresh SQLite bus and simulator per run, in a temp folder),
interleaved, several times; prints both medians and their ratio (goal: at most 0.35).

    python benchmarks/pipeline_bench.py [--runs 3]
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib.bus import open_bus  # noqa: E402
from lib.seed import seed  # noqa: E402

STRATEGIES = [f"trivial_{i}" for i in range(1, 5)]
AS_OF = "2026-11-20"


def prepare(tmp: Path) -> dict:
    """A bus with exactly the 4 trivial strategies (copies of the dummy template), 0.2 each."""
    bus_url, broker = f"sqlite:///{tmp / 'bus.sqlite'}", f"sim:///{tmp / 'sim.sqlite'}"
    bus = open_bus(bus_url)
    seed(bus)
    for sid in ("spy_macd_vixy", "test_signal_generator", "dummy"):
        bus.update(f"strategies/{sid}", {"enabled": False})
    for sid in STRATEGIES:
        bus.set(f"strategies/{sid}", {"name": sid, "enabled": True, "capital_allocation": 0.2,
                                      "notebook": "notebooks/strategies/dummy.ipynb"})
    bus.close()
    return {"mode": "paper", "bus_url": bus_url, "broker_url": broker, "as_of": AS_OF}


def pipeline_once() -> float:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        p = prepare(tmp)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "run_pipeline.py", "--bus", p["bus_url"], "--broker", p["broker_url"],
                        "--audit", str(tmp / "runs"), "--as-of", AS_OF], cwd=ROOT, check=True,
                       capture_output=True)
        return time.perf_counter() - t0


def baseline_once() -> float:
    papermill = shutil.which("papermill", path=str(Path(sys.executable).parent))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        p = prepare(tmp)
        jobs = [("notebooks/strategies/dummy.ipynb", {**p, "strategy_id": sid}) for sid in STRATEGIES]
        jobs += [("notebooks/reconcile.ipynb", p),
                 ("notebooks/commander.ipynb", {**p, "execution_id": "bench", "dry_run": False,
                                                "audit_url": str(tmp / "runs")})]
        t0 = time.perf_counter()
        for i, (nb, params) in enumerate(jobs):
            args = [papermill, nb, str(tmp / f"{i:02d}.ipynb"), "--cwd", str(ROOT)]
            for k, v in params.items():
                args += ["-y", f"{k}: {json.dumps(v)}"]
            subprocess.run(args, cwd=ROOT, check=True, capture_output=True)
        return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    pipe, base = [], []
    for i in range(args.runs):
        base.append(baseline_once())
        pipe.append(pipeline_once())
        print(f"run {i + 1}: papermill one by one {base[-1]:.1f} s, run_pipeline.py {pipe[-1]:.1f} s", flush=True)
    mb, mp = statistics.median(base), statistics.median(pipe)
    print(f"median papermill one by one (6 notebooks): {mb:.1f} s")
    print(f"median run_pipeline.py (4 strategies + reconcile + commander): {mp:.1f} s")
    print(f"ratio pipeline / baseline = {mp / mb:.2f} (goal ≤ 0.35)")


if __name__ == "__main__":
    main()
