"""The strategy stage on a real Dask LocalCluster (worker processes, one thread each): the same
results as the local executor, end to end on the embedded defaults; a worker on another code
revision refuses its task."""
from __future__ import annotations

import dataclasses
import json

import nbformat
import pytest
from distributed import LocalCluster

from lib import scraps
from lib.executors import Batch, NotebookTask, code_revision, open_executor
from lib.seed import seed
from tests.pipeline_env import PipelineEnv

STRATEGIES = ("dummy", "flaky", "spy_macd_vixy", "test_signal_generator")


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client

    from lib.executors.dask import warm
    with LocalCluster(processes=True, n_workers=2, threads_per_worker=1, dashboard_address=None) as c:
        code_revision()  # this process and the workers take their revision now, together (the checkout
        with Client(c) as client:  # is shared: a commit landing during the test must not split them)
            client.run(warm)
        yield c


def prepared(tmp, executor: str = "local") -> PipelineEnv:
    """The embedded defaults plus a strategy whose notebook raises (it must fail alone)."""
    env = PipelineEnv.embedded(tmp)
    env = PipelineEnv(tmp, dataclasses.replace(env.settings, executor=executor))
    bus = env.bus()
    seed(bus)
    bus.set("strategies/flaky", {"name": "flaky", "enabled": True, "capital_allocation": 0.1,
                                 "notebook": "tests/notebooks/raising_strategy.ipynb"})
    bus.close()
    return env


def observed(env: PipelineEnv, result) -> dict:
    """What a run produced, without times and ids: intents, strategy scraps, stage outcomes, orders."""
    bus = env.bus()
    intents = {}
    for sid in STRATEGIES:
        doc = bus.get(f"strategies/{sid}/intent/latest")
        intents[sid] = {"status": doc["status"], "targets": doc["target_positions"],
                        "error": (doc.get("error_message") or "").split(":")[-1].strip()}
    runs = env.tmp / "runs"
    notebooks = {p.name[3:-6]: p for p in runs.rglob("*.ipynb")}
    return {
        "intents": intents,
        "scraps": {sid: scraps.read(notebooks[sid]) for sid in STRATEGIES},
        "stages": {s.name: s.ok for s in result.stages},
        "errors": {s.name: s.error.split(":")[0] for s in result.stages if not s.ok},
        "notebooks": sorted(notebooks),
        "orders": sorted((o["action"], o["totalQuantity"], o["symbol"]) for o in result.record["orders_placed"]),
        "status": result.status,
    }


def test_strategy_stage_on_a_dask_cluster_matches_local(tmp_path, cluster):
    local_env = prepared(tmp_path / "local")
    dask_env = prepared(tmp_path / "dask", "dask://" + cluster.scheduler_address.removeprefix("tcp://"))
    local = local_env.run()
    on_dask = dask_env.run()

    expected, got = observed(local_env, local), observed(dask_env, on_dask)
    assert got == expected
    # The run as a whole: three strategies published, the raising one failed alone, orders placed.
    assert got["stages"] == {"strategy dummy": True, "strategy flaky": False, "strategy spy_macd_vixy": True,
                             "strategy test_signal_generator": True, "reconcile": True, "commander": True}, \
        [(s.name, s.error) for s in on_dask.stages]
    assert got["intents"]["flaky"]["status"] == "error" and "market data vendor is down" in json.dumps(
        dask_env.bus().get("strategies/flaky/intent/latest"), default=str)
    assert got["scraps"]["dummy"]["intent"]["status"] == "success" and got["orders"]
    assert got["status"] == "completed" and on_dask.exit_code == 1  # a failed strategy fails the run, as locally

    # Each strategy notebook was executed on a worker, stored once, and linked from the record.
    record = on_dask.record
    for sid in ("dummy", "spy_macd_vixy"):
        link = next(n for n in record["notebooks"] if n.endswith(f"_{sid}.ipynb"))
        nb = nbformat.read(link, as_version=4)
        assert nb.metadata.papermill.parameters["strategy_id"] == sid
        assert not nb.metadata.papermill.exception
    by_name = {s.name: s for s in on_dask.stages}
    assert "market data vendor is down" in by_name["strategy flaky"].error


def test_a_worker_on_another_revision_refuses(tmp_path):
    with LocalCluster(processes=True, n_workers=1, threads_per_worker=1, dashboard_address=None,
                      env={"COMMANDER_REVISION": "0ther00"}) as other:
        batch = Batch("R1", "2026-11-20/R1", str(tmp_path / "runs"), code_revision(), [
            NotebookTask("dummy", "notebooks/strategies/dummy.ipynb", "2026-11-20/R1/01_dummy.ipynb",
                         {"strategy_id": "dummy"}, 60.0, str(tmp_path / "runs/2026-11-20/R1/01_dummy.ipynb"))])
        with open_executor("dask://" + other.scheduler_address.removeprefix("tcp://")) as executor:
            [outcome] = executor.run(batch)
    assert not outcome.ok and not outcome.stored
    assert outcome.error.startswith("RevisionMismatch: dask worker tcp://127.0.0.1:")
    assert f"runs code revision 0ther00, the pipeline {code_revision()}: task refused" in outcome.error
    assert not (tmp_path / "runs").exists()  # refused before anything ran or was stored


def test_an_unreachable_scheduler_fails_each_task_with_why(tmp_path):
    from tests.emulators import free_port
    batch = Batch("R1", "2026-11-20/R1", str(tmp_path / "runs"), code_revision(), [
        NotebookTask(k, "notebooks/strategies/dummy.ipynb", f"2026-11-20/R1/0{i}_{k}.ipynb", {}, 60.0)
        for i, k in enumerate(("a", "b"), start=1)])
    from lib.executors.dask import DaskExecutor
    with DaskExecutor(f"dask://127.0.0.1:{free_port()}", connect_timeout=2) as executor:
        outcomes = executor.run(batch)
    assert [o.ok for o in outcomes] == [False, False]
    assert all(o.error.startswith("the dask executor failed: ") for o in outcomes)
