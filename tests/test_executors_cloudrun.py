"""The Cloud Run executor. The Cloud Run API cannot be reached from here, so:

- the task contract runs for real: the pipeline writes its manifest to fake-gcs-server and real
  `run_pipeline.py task` processes, one per CLOUD_RUN_TASK_INDEX, execute and store the notebooks;
  a retried task leaves a finished notebook exactly as it was;
- the API call itself (`RunV2Starter`) is checked by the request it builds and sends.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys

import pytest

from lib.executors import Batch, NotebookTask, code_revision, open_executor
from lib.executors.cloudrun import RunV2Execution, RunV2Starter, job_name
from lib.seed import seed
from tests.pipeline_env import AS_OF, ROOT, PipelineEnv

JOB = "cloudrun://my-project/europe-west1/commander-notebooks"


class LocalTasks:
    """Stands in for Cloud Run Jobs: one `run_pipeline.py task` process per task index."""

    def __init__(self, env: dict | None = None):
        self.env, self.started = env or {}, []

    def start(self, job: str, args: list[str], task_count: int, task_timeout: float) -> "LocalExecution":
        self.started.append({"job": job, "args": args, "task_count": task_count, "task_timeout": task_timeout})
        return LocalExecution([task_process(args, i, task_count, extra=self.env) for i in range(task_count)])


class LocalExecution:
    name = "projects/my-project/locations/europe-west1/jobs/commander-notebooks/executions/local-1"

    def __init__(self, procs):
        self.procs, self.cancelled = procs, False

    def wait(self, timeout):
        for p in self.procs:
            p.wait(timeout)
        ok = sum(p.returncode == 0 for p in self.procs)
        return f"{ok} tasks succeeded, {len(self.procs) - ok} failed, 0 cancelled"

    def cancel(self):
        self.cancelled = True
        for p in self.procs:
            p.kill()


def task_process(args: list[str], index: int, count: int, attempt: int = 0, extra: dict | None = None):
    env = {**os.environ, "CLOUD_RUN_TASK_INDEX": str(index), "CLOUD_RUN_TASK_COUNT": str(count),
           "CLOUD_RUN_TASK_ATTEMPT": str(attempt), "CLOUD_RUN_EXECUTION": "local-1", **(extra or {})}
    return subprocess.Popen([sys.executable, "run_pipeline.py", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def blob(bucket: str, name: str):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage
    return storage.Client(credentials=AnonymousCredentials(), project="local").bucket(bucket).get_blob(name)


def test_pipeline_on_cloud_run_tasks_and_a_harmless_retry(tmp_path, gcs_bucket, monkeypatch):
    from lib.executors import cloudrun
    starter = LocalTasks()
    monkeypatch.setattr(cloudrun, "default_starter", lambda: starter)
    env = PipelineEnv.embedded(tmp_path)
    env = PipelineEnv(tmp_path, dataclasses.replace(env.settings, audit=f"gs://{gcs_bucket}/audit", executor=JOB))
    bus = env.bus()
    seed(bus)
    bus.set("strategies/flaky", {"name": "flaky", "enabled": True, "capital_allocation": 0.1,
                                 "notebook": "tests/notebooks/raising_strategy.ipynb"})

    result = env.run()
    ok = {s.name: (s.ok, s.error) for s in result.stages}
    assert ok["strategy dummy"] == (True, "") and ok["strategy spy_macd_vixy"] == (True, "")
    assert ok["strategy test_signal_generator"] == (True, "") and ok["commander"][0], ok
    assert ok["strategy flaky"] == (False, "RuntimeError: market data vendor is down")
    assert bus.get("strategies/flaky/intent/latest")["status"] == "error"
    assert result.status == "completed" and result.record["orders_placed"]

    # One execution of the job, one task per notebook, each told where the manifest is.
    [start] = starter.started
    folder = result.stages[0].notebook.split("/audit/")[1].rsplit("/", 1)[0]  # DATE/RUN_ID
    assert folder.endswith(f"/{result.run_id}")
    manifest_link = f"gs://{gcs_bucket}/audit/{folder}/manifest.json"
    assert start["job"] == "projects/my-project/locations/europe-west1/jobs/commander-notebooks"
    assert start["args"] == ["task", "--manifest", manifest_link] and start["task_count"] == 4
    manifest = json.loads(blob(gcs_bucket, f"audit/{folder}/manifest.json").download_as_bytes())
    assert [t["key"] for t in manifest["tasks"]] == ["dummy", "flaky", "spy_macd_vixy", "test_signal_generator"]
    assert manifest["revision"] == code_revision() and manifest["run_id"] == result.run_id

    # Each notebook stored once, by its task, with its outcome; the record links them.
    stored = {}
    for i, sid in enumerate(manifest["tasks"], start=1):
        b = blob(gcs_bucket, f"audit/{folder}/{i:02d}_{sid['key']}.ipynb")
        assert b.metadata["worker"].startswith(f"Cloud Run task {i - 1}/4 (attempt 0 of local-1)")
        assert b.metadata["status"] == ("failed" if sid["key"] == "flaky" else "ok")
        stored[i - 1] = (b.generation, b.download_as_bytes())
    assert f"gs://{gcs_bucket}/audit/{folder}/01_dummy.ipynb" in result.record["notebooks"]
    intent = bus.get("strategies/dummy/intent/latest")

    # Cloud Run retries task 0 (and a task of another execution size runs its whole share): the
    # finished notebooks are not executed again nor overwritten.
    retry = task_process(start["args"], 0, 4, attempt=1)
    out, _ = retry.communicate(timeout=120)
    assert retry.returncode == 0, out
    assert "dummy: ok (already stored by an earlier attempt: left as it is)" in out
    b = blob(gcs_bucket, f"audit/{folder}/01_dummy.ipynb")
    assert (b.generation, b.download_as_bytes()) == stored[0]
    assert bus.get("strategies/dummy/intent/latest") == intent  # the strategy did not run again
    share = task_process(start["args"], 1, 2, attempt=2)  # tasks 1 and 3 of 4
    out, _ = share.communicate(timeout=120)
    assert share.returncode == 0 and "flaky: failed: RuntimeError" in out and "test_signal_generator: ok" in out
    assert blob(gcs_bucket, f"audit/{folder}/02_flaky.ipynb").generation == stored[1][0]


def test_a_write_racing_another_attempt_keeps_the_first(tmp_path, gcs_bucket, monkeypatch):
    """Two attempts of one task both execute: the second's create-only write fails, the first stays."""
    from lib.executors import base
    audit_url = f"gs://{gcs_bucket}/race"
    name = "2026-11-20/R1/01_dummy.ipynb"
    first = tmp_path / "first.ipynb"
    base.stub_notebook(first, "dummy", "the first attempt's notebook")
    real_open = base.open_audit

    class Racing:
        def __init__(self, store):
            self.store, self.reads = store, 0

        def read(self, n):
            self.reads += 1
            if self.reads == 1:  # the other attempt stores its notebook just after this check
                self.store.put_file(first, n, {"status": "ok", "error": "", "worker": "attempt 0"})
                return None
            return self.store.read(n)

        def __getattr__(self, attr):
            return getattr(self.store, attr)

    monkeypatch.setattr(base, "open_audit", lambda url: Racing(real_open(url)))
    batch = Batch("R1", "2026-11-20/R1", audit_url, code_revision(), [])
    task = NotebookTask("dummy", "notebooks/strategies/dummy.ipynb", name,
                        {"strategy_id": "dummy", "bus_url": f"sqlite:///{tmp_path / 'bus.sqlite'}",
                         "broker_url": f"sim:///{tmp_path / 'sim.sqlite'}", "as_of": AS_OF, "run_id": "R1",
                         "mode": "paper"}, 120.0)
    outcome = base.run_and_store(task, batch, "attempt 1")
    assert outcome.ok and outcome.earlier and outcome.worker == "attempt 0"
    b = blob(gcs_bucket, f"race/{name}")
    assert b.download_as_bytes() == first.read_bytes() and b.metadata["worker"] == "attempt 0"


def test_tasks_on_another_revision_refuse_and_the_stage_says_why(tmp_path, gcs_bucket):
    tasks = [NotebookTask(k, "notebooks/strategies/dummy.ipynb", f"2026-11-20/R2/0{i}_{k}.ipynb", {}, 60.0,
                          str(tmp_path / f"0{i}_{k}.ipynb")) for i, k in enumerate(("a", "b"), start=1)]
    batch = Batch("R2", "2026-11-20/R2", f"gs://{gcs_bucket}/audit", code_revision(), tasks, deadline=120)
    starter = LocalTasks(env={"COMMANDER_REVISION": "0ther00"})
    with open_executor(JOB, starter=starter) as executor:
        outcomes = executor.run(batch)
    for o in outcomes:
        assert not o.ok and o.stored
        assert f"runs code revision 0ther00, the pipeline {code_revision()}: task refused" in o.error
    assert (tmp_path / "01_a.ipynb").exists()  # the refusal, readable where the pipeline reads notebooks


def test_an_execution_past_the_stage_timeout_is_cancelled_and_fails_its_strategies(tmp_path, gcs_bucket):
    class Stuck:
        name, cancelled = "executions/stuck", False

        def wait(self, timeout):
            raise TimeoutError

        def cancel(self):
            self.cancelled = True

    stuck = Stuck()
    starter = type("S", (), {"start": lambda self, *a: stuck})()
    tasks = [NotebookTask("a", "notebooks/strategies/dummy.ipynb", "2026-11-20/R3/01_a.ipynb", {}, 60.0)]
    batch = Batch("R3", "2026-11-20/R3", f"gs://{gcs_bucket}/audit", code_revision(), tasks, deadline=5)
    [outcome] = open_executor(JOB, starter=starter).run(batch)
    assert stuck.cancelled and not outcome.ok
    assert outcome.error == ("no notebook stored by the Cloud Run task (execution executions/stuck did not finish "
                             "within the stage timeout (5 s); cancelled)")


def test_a_local_audit_store_is_refused(tmp_path):
    tasks = [NotebookTask("a", "notebooks/strategies/dummy.ipynb", "d/R/01_a.ipynb", {}, 60.0)]
    [outcome] = open_executor(JOB, starter=LocalTasks()).run(Batch("R", "d/R", str(tmp_path), "x", tasks))
    assert not outcome.ok and "needs a gs:// audit store" in outcome.error


# ---- the thin adapter over google-cloud-run --------------------------------------------------------
def test_the_run_job_request():
    from google.cloud import run_v2
    sent = []

    class Operation:
        metadata = run_v2.Execution(name="projects/p/locations/r/jobs/j/executions/j-abc")

        def result(self, timeout=None):
            return run_v2.Execution(succeeded_count=3, failed_count=1)

    class Client:
        def run_job(self, request):
            sent.append(request)
            return Operation()

    execution = RunV2Starter(client=Client()).start(job_name(JOB), ["task", "--manifest", "gs://b/m.json"], 4, 900.5)
    [request] = sent
    assert isinstance(request, run_v2.RunJobRequest)
    assert request.name == "projects/my-project/locations/europe-west1/jobs/commander-notebooks"
    assert request.overrides.task_count == 4
    assert request.overrides.timeout == dt.timedelta(seconds=901)
    [container] = request.overrides.container_overrides
    assert list(container.args) == ["task", "--manifest", "gs://b/m.json"] and not container.env
    assert execution.name == "projects/p/locations/r/jobs/j/executions/j-abc"
    assert execution.wait(60) == "3 tasks succeeded, 1 failed, 0 cancelled"


def test_the_execution_wait_timeout_and_failure():
    import concurrent.futures
    from google.api_core import exceptions as gexc

    class Late:
        metadata = None

        def result(self, timeout=None):
            raise concurrent.futures.TimeoutError

    class Failed(Late):
        def result(self, timeout=None):
            raise gexc.FailedPrecondition("Task commander-notebooks-abc-task0 failed")

    with pytest.raises(TimeoutError):
        RunV2Execution(Late()).wait(5)
    assert RunV2Execution(Failed()).wait(5).startswith("failed: 400 Task commander-notebooks-abc-task0 failed")


@pytest.mark.parametrize("url", ["cloudrun://p/r", "cloudrun:///r/j", "cloudrun://p/r/j/x"])
def test_bad_cloudrun_urls(url):
    from lib.settings import resolve
    with pytest.raises(ValueError, match="expected cloudrun://PROJECT/REGION/JOB"):
        resolve({"executor": url, "audit": "gs://b", "bus": "firestore://p"}, {})


def test_the_executor_setting():
    from lib.settings import resolve
    assert resolve({}, {}).executor == "local"
    assert resolve({}, {"COMMANDER_EXECUTOR": "dask://local"}).executor == "dask://local"
    flagged = resolve({"executor": "dask://10.0.0.5:8786"}, {"COMMANDER_EXECUTOR": "dask://local"})
    assert flagged.executor == "dask://10.0.0.5:8786" and flagged.sources["executor"] == "flag"
    with pytest.raises(ValueError, match=r"needs a gs:// audit store, a firestore:// bus and a gs:// data store"):
        resolve({"executor": JOB}, {})  # the embedded defaults are local files a Cloud Run task cannot see
    ok = resolve({"executor": JOB, "audit": "gs://b/audit", "bus": "firestore://p", "data": "gs://b/data/"}, {})
    assert ok.executor == JOB
    with pytest.raises(ValueError, match=r"executor 'k8s://x': expected local, dask://HOST:PORT"):
        resolve({}, {"COMMANDER_EXECUTOR": "k8s://x"})
