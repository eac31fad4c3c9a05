"""`cloudrun://PROJECT/REGION/JOB`: the notebooks run as the tasks of one Cloud Run job execution.

The contract between the pipeline and the job's tasks:

1. The pipeline writes a manifest (run id, code revision, audit store, and per notebook its source,
   audit name, parameters and timeout) to `gs://…/DATE/RUN_ID/manifest.json` in the audit store.
2. It starts one execution of JOB with N tasks (`run_v2.JobsClient.run_job`, overrides
   `task_count` and the container's args `task --manifest gs://…`).
3. Each task runs `python run_pipeline.py task --manifest gs://…` and takes the notebooks
   `tasks[CLOUD_RUN_TASK_INDEX::CLOUD_RUN_TASK_COUNT]` (one each when N equals the notebook count).
   It executes each and writes it once, create-only (`if_generation_match=0`), with its status in
   the object's metadata; a retried task finds a finished notebook stored and leaves it as it is.
4. The pipeline waits for the execution (at most the stage timeout; then it cancels it) and reads
   every notebook back from the audit store. A notebook not stored fails only its strategy.

The Cloud Run API call is the thin `RunV2Starter`; anything with `start(job, args, task_count,
task_timeout)` returning an object with `name`, `wait(timeout)` and `cancel()` can replace it
(tests start real `run_pipeline.py task` processes instead).
"""
from __future__ import annotations

import json
import math
import os
import sys
import urllib.parse
from pathlib import Path

from lib.audit import AuditError, open_audit, read_link
from lib.executors.base import (Batch, Executor, ExecutorError, Finished, NotebookTask, Outcome, RevisionMismatch,
                                Started, outcome_of_stored, run_and_store, stub_notebook)

MAX_TASKS = 10_000  # Cloud Run's limit of tasks per execution
MANIFEST = "manifest.json"
#: Seconds a task may spend beyond its notebooks' own timeouts (image start, imports, uploads).
TASK_MARGIN = 300


def parse(url: str) -> tuple[str, str, str]:
    """(project, region, job) of `cloudrun://PROJECT/REGION/JOB`."""
    parts = urllib.parse.urlsplit(url)
    path = [p for p in parts.path.split("/") if p]
    if parts.scheme != "cloudrun" or not parts.netloc or len(path) != 2:
        raise ExecutorError(f"executor {url!r}: expected cloudrun://PROJECT/REGION/JOB")
    return parts.netloc, path[0], path[1]


def job_name(url: str) -> str:
    project, region, job = parse(url)
    return f"projects/{project}/locations/{region}/jobs/{job}"


# ---- the Cloud Run API (not reachable from the tests: see tests/test_executors_cloudrun.py) -------
class RunV2Starter:
    """Starts job executions through google-cloud-run (Application Default Credentials)."""

    def __init__(self, client=None):
        self._client = client

    @staticmethod
    def request(job: str, args: list[str], task_count: int, task_timeout: float):
        from google.cloud import run_v2
        from google.protobuf import duration_pb2
        overrides = run_v2.RunJobRequest.Overrides(
            container_overrides=[run_v2.RunJobRequest.Overrides.ContainerOverride(args=args)],
            task_count=task_count, timeout=duration_pb2.Duration(seconds=int(math.ceil(task_timeout))))
        return run_v2.RunJobRequest(name=job, overrides=overrides)

    def start(self, job: str, args: list[str], task_count: int, task_timeout: float) -> "RunV2Execution":
        if self._client is None:
            from google.cloud import run_v2
            self._client = run_v2.JobsClient()
        return RunV2Execution(self._client.run_job(request=self.request(job, args, task_count, task_timeout)))


class RunV2Execution:
    """One started execution: its long-running operation completes when the execution does."""

    def __init__(self, operation):
        self.operation = operation

    @property
    def name(self) -> str:
        return getattr(self.operation.metadata, "name", "") or "(execution)"

    def wait(self, timeout: float | None) -> str:
        import concurrent.futures
        from google.api_core import exceptions as gexc
        try:
            execution = self.operation.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"execution {self.name} still running after {timeout:.0f} s") from None
        except gexc.GoogleAPICallError as exc:
            return f"failed: {exc}"
        return (f"{execution.succeeded_count} tasks succeeded, {execution.failed_count} failed, "
                f"{execution.cancelled_count} cancelled")

    def cancel(self) -> None:
        from google.cloud import run_v2
        run_v2.ExecutionsClient().cancel_execution(name=self.name)


def default_starter():
    return RunV2Starter()


# ---- the pipeline's side ------------------------------------------------------------------------
class CloudRunExecutor(Executor):
    name = "cloudrun"

    def __init__(self, url: str, starter=None):
        self.url = url
        self.job = job_name(url)
        self.starter = starter

    def _run(self, batch: Batch, started: Started, finish: Finished) -> None:
        audit = open_audit(batch.audit)
        if not audit.url.startswith("gs://"):
            raise ExecutorError(f"{self.url} needs a gs:// audit store (its tasks write there), not {audit.url}")
        manifest = {"version": 1, "run_id": batch.run_id, "folder": batch.folder, "revision": batch.revision,
                    "audit": batch.audit, "metadata": batch.metadata,
                    "tasks": [{k: v for k, v in t.__dict__.items() if k != "local"} for t in batch.tasks]}
        link = audit.put_bytes(f"{batch.folder}/{MANIFEST}", json.dumps(manifest, default=str, indent=1).encode(),
                               {"run_id": batch.run_id})
        count = min(len(batch.tasks), MAX_TASKS)
        per_task = math.ceil(len(batch.tasks) / count)
        task_timeout = per_task * max(t.timeout for t in batch.tasks) + TASK_MARGIN
        execution = (self.starter or default_starter()).start(self.job, ["task", "--manifest", link], count,
                                                              task_timeout)
        for task in batch.tasks:
            started(task.key)
        try:
            status, late = f"execution {execution.name}: {execution.wait(batch.deadline)}", ""
        except TimeoutError:
            status = f"execution {execution.name} did not finish within the stage timeout ({batch.deadline:.0f} s)"
            try:
                execution.cancel()
                late = "; cancelled"
            except Exception as exc:
                late = f"; cancelling it failed: {exc}"
        for task in batch.tasks:
            try:
                found = audit.read(task.name)
            except AuditError as exc:
                finish(Outcome(task.key, False, str(exc)))
                continue
            if found is None:
                finish(Outcome(task.key, False, f"no notebook stored by the Cloud Run task ({status}{late})"))
                continue
            if task.local:
                Path(task.local).parent.mkdir(parents=True, exist_ok=True)
                Path(task.local).write_bytes(found[0])
            finish(outcome_of_stored(task.key, *found))


# ---- the task's side: `python run_pipeline.py task --manifest gs://…` ---------------------------
def read_manifest(link: str) -> Batch:
    data = json.loads(read_link(link))
    if data.get("version") != 1:
        raise ExecutorError(f"{link}: manifest version {data.get('version')!r} is not 1")
    return Batch(run_id=data["run_id"], folder=data["folder"], audit=data["audit"], revision=data["revision"],
                 metadata=data.get("metadata") or {}, tasks=[NotebookTask(**t) for t in data["tasks"]])


def task_main(manifest: str, environ=None, out=None) -> int:
    """Run this task's share of the manifest; 0 when each of its notebooks is stored (whether the
    notebook succeeded or failed: that is recorded with it), 1 otherwise (Cloud Run retries it)."""
    environ = os.environ if environ is None else environ
    out = out or sys.stdout
    index = int(environ.get("CLOUD_RUN_TASK_INDEX", "0"))
    count = int(environ.get("CLOUD_RUN_TASK_COUNT", "1"))
    where = (f"Cloud Run task {index}/{count} (attempt {environ.get('CLOUD_RUN_TASK_ATTEMPT', '0')}"
             f" of {environ.get('CLOUD_RUN_EXECUTION', 'a local execution')})")
    try:
        batch = read_manifest(manifest)
    except (AuditError, ExecutorError, ValueError, KeyError, TypeError) as exc:
        print(f"{where}: cannot read the manifest {manifest}: {exc}", file=out, flush=True)
        return 1
    if not 0 <= index < count:
        print(f"{where}: CLOUD_RUN_TASK_INDEX must be in [0, {count})", file=out, flush=True)
        return 1
    code = 0
    for task in batch.tasks[index::count]:
        try:
            outcome = run_and_store(task, batch, where)
        except RevisionMismatch as exc:
            print(f"{task.key}: {exc}", file=out, flush=True)
            _store_refusal(batch, task, str(exc), where)
            code = 1
            continue
        except AuditError as exc:
            print(f"{task.key}: could not store {task.name}: {exc}", file=out, flush=True)
            code = 1
            continue
        state = "ok" if outcome.ok else f"failed: {outcome.error}"
        print(f"{task.key}: {state} ({'already stored by an earlier attempt: left as it is' if outcome.earlier else 'stored'})",
              file=out, flush=True)
    return code


def _store_refusal(batch: Batch, task: NotebookTask, error: str, where: str) -> None:
    """A refused task still leaves its notebook's place filled with why (create-only)."""
    import tempfile
    audit = open_audit(batch.audit)
    with tempfile.TemporaryDirectory() as tmp:
        stub = Path(tmp) / "refused.ipynb"
        stub_notebook(stub, task.key, error)
        try:
            audit.put_file(stub, task.name, {**batch.metadata, "stage": task.key, "status": "failed",
                                             "error": error[:1000], "worker": where})
        except AuditError:
            pass  # already there (an earlier attempt): it stays
