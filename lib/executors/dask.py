"""`dask://HOST:PORT`: the notebooks run on a Dask distributed cluster; `dask://local` starts a
LocalCluster of worker processes on this machine for the run.

Each task executes one notebook with papermill in a worker process (one notebook at a time per
process, whatever the worker's thread count: papermill's working-directory handling is
process-wide) and stores it once in the audit store; the pipeline then reads it back. A worker on
another code revision than the pipeline refuses the task. Workers need the project installed
(same revision), and for a cluster on other machines, backends they can all reach: a
`firestore://` bus and a `gs://` audit store.
"""
from __future__ import annotations

import dataclasses
import os
import time
import urllib.parse
from pathlib import Path

from lib.audit import open_audit
from lib.executors.base import (Batch, Executor, ExecutorError, Finished, NotebookTask, Outcome, Started,
                                absolute_audit_url, code_revision, fetch, run_and_store)

LOCAL = "dask://local"


def parse(url: str) -> str | None:
    """The scheduler address of `dask://HOST:PORT` ('tcp://HOST:PORT'), None for dask://local."""
    if url == LOCAL:
        return None
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "dask" or not parts.hostname or not parts.port or parts.path.strip("/"):
        raise ExecutorError(f"executor {url!r}: expected dask://HOST:PORT or dask://local")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"tcp://{host}:{parts.port}"


def run_task(task: NotebookTask, batch: Batch) -> Outcome:
    """On a Dask worker: execute one notebook and store it once (see base.run_and_store)."""
    try:
        from distributed import get_worker
        where = f"dask worker {get_worker().address}"
    except Exception:  # run outside a worker (tests calling it directly)
        where = ""
    return run_and_store(task, batch, where)


def warm() -> None:
    """On a worker: import what running a notebook needs (papermill, nbclient, jupyter_client) and
    take its code revision, now, as the pipeline took its own."""
    import papermill  # noqa: F401
    import papermill.engines  # noqa: F401

    from lib import kernels  # noqa: F401
    code_revision()


class DaskExecutor(Executor):
    name = "dask"

    def __init__(self, url: str = LOCAL, workers: int | None = None, client=None, connect_timeout: float = 30.0):
        self.url, self.connect_timeout = url, connect_timeout
        self.address = parse(url)
        self.workers = workers
        self._client = client
        self._owned: list = []  # what this executor started, closed by close()

    def client(self):
        if self._client is None:
            from distributed import Client, LocalCluster
            if self.address is None:
                cluster = LocalCluster(processes=True, n_workers=self.workers or os.cpu_count() or 1,
                                       threads_per_worker=1, dashboard_address=None)
                self._owned.append(cluster)
                self._client = Client(cluster)
                self._client.run(warm)  # imports now, while the run starts, not in the first notebook's time
            else:
                self._client = Client(self.address, timeout=self.connect_timeout)
            self._owned.insert(0, self._client)
        return self._client

    def _run(self, batch: Batch, started: Started, finish: Finished) -> None:
        from distributed import wait
        client = self.client()
        remote = dataclasses.replace(batch, audit=absolute_audit_url(batch.audit), tasks=[])  # tasks go one by one
        futures = {}
        for task in batch.tasks:
            sent = dataclasses.replace(task, local=None)
            futures[client.submit(run_task, sent, remote, key=f"notebook-{batch.run_id}-{task.key}",
                                  pure=False, retries=0)] = task
            started(task.key)
        audit = open_audit(batch.audit)
        deadline = time.monotonic() + batch.deadline if batch.deadline else None
        pending = set(futures)
        while pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                done, pending = wait(pending, timeout=left, return_when="FIRST_COMPLETED")
            except TimeoutError:
                for future in pending:
                    future.cancel()
                    finish(Outcome(futures[future].key, False,
                                   f"did not finish within the stage timeout ({batch.deadline:.0f} s) on {self.url}"))
                return
            for future in done:
                task = futures[future]
                finish(self._outcome(future, task, audit))

    @staticmethod
    def _outcome(future, task: NotebookTask, audit) -> Outcome:
        try:
            outcome = future.result()
        except Exception as exc:
            name = type(exc).__name__
            if name == "KilledWorker":
                return Outcome(task.key, False, "the Dask worker running it died (KilledWorker)")
            return Outcome(task.key, False, f"{name}: {exc}"[:500])
        try:
            fetch(audit, task)
            readable = task.local is None or Path(task.local).exists()
        except Exception:
            readable = False
        if not readable:  # e.g. a local audit folder on workers of another machine
            return dataclasses.replace(outcome, ok=False, stored=False, error=(
                f"{outcome.error} {outcome.worker} stored it in {audit.url} but it is not readable here: "
                "a cluster on other machines needs a gs:// audit store").strip())
        return outcome

    def close(self) -> None:
        for thing in self._owned:
            try:
                thing.close()
            except Exception:
                pass
        self._owned = []
        self._client = None
