#!/usr/bin/env python3
"""Print the crash-safety matrix: fault point × broker × rerun mode, with the truth at the broker.

    python scripts/fault_matrix.py [--brokers sim,ib] [--points P1,P2] [--modes M1,M2]

Each cell kills `run_pipeline.py commander` by SIGKILL at the fault point, reruns it, runs it once
more, then counts at the broker by orderRef (tests/crash_harness.py). The same scenarios run in
`make test` (tests/test_crash_safety.py).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.crash_harness import (CONNECTION_FAULTS, FAULT_POINTS, RERUN_MODES, IBWorld, SimWorld,  # noqa: E402
                                 passed, run_connection_fault, run_scenario)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--brokers", default="sim,ib")
    p.add_argument("--points", default=",".join(FAULT_POINTS))
    p.add_argument("--modes", default=",".join(RERUN_MODES))
    p.add_argument("--connection-faults", default=",".join(CONNECTION_FAULTS),
                   help="IB only: drops, a restart with rolled-back ids, fills while disconnected ('' for none)")
    args = p.parse_args()
    cells = [(b, f, m) for b in args.brokers.split(",") for f in args.points.split(",") for m in args.modes.split(",")]
    if "ib" in args.brokers.split(",") and args.connection_faults:
        cells += [("ib", f, m) for f in args.connection_faults.split(",") for m in args.modes.split(",")]
    print(f"{'broker':<5} {'fault point':<28} {'rerun':<13} {'killed':<6} {'dup':>3} {'orphan':>6} "
          f"{'lost/bad rec':>12} {'converged':<9} verdict")
    totals = {"scenarios": 0, "duplicates": 0, "orphans": 0, "record_problems": 0, "failed": 0}
    started = time.monotonic()
    for i, (broker, point, mode) in enumerate(cells, start=1):
        with tempfile.TemporaryDirectory(prefix="fault-") as tmp:
            world = (SimWorld if broker == "sim" else IBWorld)(Path(tmp))
            try:
                v = (run_connection_fault(world, Path(tmp), point, mode) if point in CONNECTION_FAULTS
                     else run_scenario(world, Path(tmp), point, mode))
            finally:
                world.close()
        ok = passed(v)
        totals["scenarios"] += 1
        totals["duplicates"] += len(v["duplicates"])
        totals["orphans"] += len(v["orphans"])
        totals["record_problems"] += len(v["record_problems"])
        totals["failed"] += 0 if ok else 1
        left = (time.monotonic() - started) / i * (len(cells) - i)
        print(f"{broker:<5} {point:<28} {mode:<13} {str(v['killed']):<6} {len(v['duplicates']):>3} "
              f"{len(v['orphans']):>6} {len(v['record_problems']):>12} {str(v['converged']):<9} "
              f"{'ok' if ok else 'FAIL'}   ({i}/{len(cells)}, ~{left:.0f} s left)", flush=True)
        if not ok:
            print("\n".join(v["log"]), file=sys.stderr)
            print(v["record_problems"], file=sys.stderr)
    print(f"\nscenarios {totals['scenarios']}, duplicates {totals['duplicates']}, orphans {totals['orphans']}, "
          f"lost or mismatched records {totals['record_problems']}, failed {totals['failed']}")
    return 0 if totals["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
