"""The crash-safety matrix: SIGKILL at every fault point, on the simulator and on the fake IB Gateway,
rerun three ways, and count the truth at the broker by orderRef (tests/crash_harness.py)."""
from __future__ import annotations

import pytest

from tests.crash_harness import FAULT_POINTS, RERUN_MODES, IBWorld, SimWorld, passed, run_scenario

WORLDS = {"sim": SimWorld, "ib": IBWorld}


def _explain(v: dict) -> str:
    shown = {k: v[k] for k in ("duplicates", "orphans", "record_problems", "positions", "target", "killed",
                               "rerun_exit", "last_exit", "last_summary")}
    return f"{shown}\n" + "\n".join(v["log"])


@pytest.mark.parametrize("mode", RERUN_MODES)
@pytest.mark.parametrize("point", FAULT_POINTS)
@pytest.mark.parametrize("broker", sorted(WORLDS))
def test_sigkill_at_every_fault_point_never_doubles_or_loses_an_order(tmp_path, broker, point, mode):
    world = WORLDS[broker](tmp_path)
    try:
        v = run_scenario(world, tmp_path, point, mode)
    finally:
        world.close()
    assert v["killed"], f"the fault point {point} was never reached\n" + _explain(v)
    assert passed(v), _explain(v)
