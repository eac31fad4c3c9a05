"""What every executor shares: a batch of notebooks, their outcomes, and running one notebook.

An executor runs a `Batch` of `NotebookTask`s (today the strategy stage; a backtest sweep is the
same shape: one notebook, many parameter sets) and returns one `Outcome` per task. A failed or
timed-out task is a failed outcome, never an exception: it fails only its own notebook.

The worker side (`run_and_store`) is shared by the Dask and Cloud Run executors: it refuses a
task from another code revision, executes the notebook with papermill in this process (one at a
time: papermill's working-directory handling is process-wide, papermill #473/#578) and stores it
once in the audit store, create-only, so a retried task never overwrites a finished notebook.
"""
from __future__ import annotations

import abc
import dataclasses
import functools
import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from lib.audit import AuditError, AuditStore, open_audit
from lib.errors import PipelineError

ROOT = Path(__file__).resolve().parents[2]
#: Set in an image built without .git (deploy/Dockerfile): the revision it was built from.
REVISION_ENV = "COMMANDER_REVISION"
#: Kernel starts that fail (ports collide when kernels start together, papermill #511) are retried.
KERNEL_START_ATTEMPTS = 3


class ExecutorError(PipelineError):
    """An executor URL that cannot be used, or a worker that refuses a task."""


class RevisionMismatch(ExecutorError):
    """A worker runs other code than the pipeline that sent the task."""


@dataclasses.dataclass
class NotebookTask:
    key: str  # unique in its batch: the strategy id (or a sweep point's name)
    notebook: str  # the source notebook, relative to the project root (absolute only on this machine)
    name: str  # where it is kept in the audit store: 'DATE/RUN_ID/NN_key.ipynb'
    parameters: dict
    timeout: float  # seconds for the whole notebook
    local: str | None = None  # where the pipeline reads the executed notebook afterwards


@dataclasses.dataclass
class Batch:
    run_id: str
    folder: str  # the run's folder in the audit store ('DATE/RUN_ID')
    audit: str  # the audit store's URL, as workers open it
    revision: str  # the pipeline's code revision; a worker on another one refuses
    tasks: list[NotebookTask]
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)  # stored with each notebook
    deadline: float | None = None  # seconds for the whole batch on a remote engine (the stage timeout)


@dataclasses.dataclass
class Outcome:
    key: str
    ok: bool
    error: str = ""
    seconds: float = 0.0
    stored: bool = False  # the worker kept it in the audit store (the pipeline must not store it again)
    worker: str = ""
    earlier: bool = False  # found stored by an earlier attempt, not executed again


Started = Callable[[str], None]
Finished = Callable[[Outcome], None]


class Executor(abc.ABC):
    """Runs a batch of notebooks. `started(key)` and `finished(outcome)` are called as tasks go
    (from any thread); `run` returns the outcomes in the batch's order and never raises for a
    task's failure, nor for an engine that cannot be reached (every task then fails with why)."""

    name = "executor"

    def run(self, batch: Batch, started: Started | None = None, finished: Finished | None = None) -> list[Outcome]:
        started = started or (lambda key: None)
        done: dict[str, Outcome] = {}

        def finish(outcome: Outcome) -> None:
            done[outcome.key] = outcome
            if finished:
                finished(outcome)

        if batch.tasks:
            try:
                self._run(batch, started, finish)
            except Exception as exc:  # the engine itself failed: every unfinished task fails with why
                why = f"the {self.name} executor failed: {type(exc).__name__}: {exc}"[:500]
                for task in batch.tasks:
                    if task.key not in done:
                        finish(Outcome(task.key, False, why))
        return [done.get(t.key) or Outcome(t.key, False, f"the {self.name} executor returned no result")
                for t in batch.tasks]

    @abc.abstractmethod
    def _run(self, batch: Batch, started: Started, finish: Finished) -> None:
        """Run every task, calling `finish` once per task."""

    def close(self) -> None:
        """Release the engine (a LocalCluster, a client); idempotent."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- code revision ----------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def code_revision() -> str:
    """This process's code revision: $COMMANDER_REVISION (set in images), else `git rev-parse --short HEAD`,
    taken once, at first use: a long-lived process (a Dask worker, the service) runs the code it loaded
    then, whatever the checkout has moved to since, so a worker left on old code is refused."""
    if os.environ.get(REVISION_ENV):
        return os.environ[REVISION_ENV]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def check_revision(expected: str, where: str) -> None:
    mine = code_revision()
    if mine != expected:
        raise RevisionMismatch(
            f"{where} runs code revision {mine}, the pipeline {expected}: task refused "
            f"(deploy revision {expected} to the workers and restart them, or run the pipeline from revision {mine})")


# ---- running one notebook ---------------------------------------------------------------------
def execute(src: Path, out: Path, params: dict, timeout: float, km=None) -> tuple[bool, str]:
    """Execute `src` into `out` with papermill on `km` (a fresh kernel if None); returns (ok, error).

    The whole notebook gets `timeout` seconds: a watchdog kills its kernel then, so a hanging
    notebook fails with papermill's banner instead of stalling the run. A kernel that fails to
    start or dies before running any cell is replaced, up to KERNEL_START_ATTEMPTS times, after a
    short random pause (kernels started together can collide on ports, papermill #511); nothing
    ran, so running again is safe. The kernel is always stopped afterwards.
    """
    for attempt in range(1, KERNEL_START_ATTEMPTS + 1):
        ok, err, started = _execute_once(src, out, params, timeout, km)
        if ok or started or attempt == KERNEL_START_ATTEMPTS:
            return ok, err
        km = None  # the kernel never ran a cell: one more try on a fresh one
        time.sleep(random.uniform(0.2, 1.0) * attempt)
    return ok, err


def _execute_once(src: Path, out: Path, params: dict, timeout: float, km) -> tuple[bool, str, bool]:
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    from lib import kernels

    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        km = km or kernels.start(warm=None)
    except Exception as exc:
        return False, f"the kernel did not start: {exc}", False
    killed = threading.Event()

    def kill() -> None:
        killed.set()
        kernels.kill(km)

    # papermill's own cell timeout normally fires first; the watchdog is the last resort.
    watchdog = threading.Timer(timeout + 10, kill)
    watchdog.daemon = True
    watchdog.start()
    try:
        # cwd stays None: papermill's chdir is process-wide and would race between threads; the
        # kernel already runs in the project root.
        pm.execute_notebook(str(src), str(out), parameters=params, kernel_name="python3", progress_bar=False,
                            execution_timeout=timeout, km=km, log_output=False,
                            # Save at start, every 30 s and at the end (banner included), not after
                            # every cell: each save re-validates the whole notebook in this process.
                            request_save_on_cell_execute=False,
                            shutdown_kernel="immediate")  # without it ~1 run in 6 waits 3 s for the kernel
        return True, "", True
    except PapermillExecutionError as exc:
        if killed.is_set():
            return False, f"timed out after {timeout:.0f} s and was killed", True
        return False, f"{exc.ename}: {exc.evalue}"[:500], True
    except Exception as exc:  # dead kernel, cell timeout, unreadable notebook
        if killed.is_set() or type(exc).__name__ == "CellTimeoutError":
            return False, f"timed out after {timeout:.0f} s and was killed", True
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        started = "before replying to kernel_info" not in first
        tail = kernels.log_tail(km)
        return False, f"{type(exc).__name__}: {first}" + (f" (kernel: {tail})" if tail else "")[:500], started
    finally:
        watchdog.cancel()
        kernels.kill(km)


# ---- the worker side: execute once, store once --------------------------------------------------
#: One notebook at a time in a process, whatever the engine's threads per worker.
_ONE_AT_A_TIME = threading.Lock()


def stub_notebook(path: Path, title: str, error: str) -> None:
    """A notebook saying a stage produced none (the audit keeps one file per task whatever happened)."""
    import nbformat
    path.parent.mkdir(parents=True, exist_ok=True)
    stub = nbformat.v4.new_notebook()
    stub.cells = [nbformat.v4.new_markdown_cell(f"# {title}\n\nThis stage produced no notebook: {error}")]
    stub.metadata["commander"] = {"status": "failed", "error": error}
    nbformat.write(stub, path)


def outcome_of_stored(key: str, data: bytes, metadata: dict[str, str]) -> Outcome:
    """The outcome a stored notebook records: the store's metadata (GCS), else the notebook's own."""
    if metadata.get("status"):
        return Outcome(key, metadata["status"] == "ok", metadata.get("error", ""), stored=True,
                       worker=metadata.get("worker", ""))
    try:
        nb = json.loads(data)
    except ValueError:
        return Outcome(key, False, "the stored notebook is not readable", stored=True)
    meta = nb.get("metadata", {})
    if "commander" in meta:
        return Outcome(key, False, meta["commander"].get("error", ""), stored=True)
    if "papermill" not in meta:
        return Outcome(key, False, "the stored notebook was never executed", stored=True)
    if meta["papermill"].get("exception"):
        for cell in nb.get("cells", []):
            for out in cell.get("outputs", []):
                if out.get("output_type") == "error":
                    return Outcome(key, False, f"{out.get('ename')}: {out.get('evalue')}"[:500], stored=True)
        return Outcome(key, False, "the notebook failed", stored=True)
    return Outcome(key, True, stored=True)


def run_and_store(task: NotebookTask, batch: Batch, where: str = "") -> Outcome:
    """On a worker: execute `task` and keep it in the batch's audit store, exactly once.

    Raises RevisionMismatch when this process runs other code than the pipeline. A notebook an
    earlier attempt already stored is not executed again: its recorded outcome is returned and the
    stored file stays as it is. Raises AuditError when the notebook could not be stored (so the
    engine may retry the task).
    """
    where = where or f"worker {socket.gethostname()} (pid {os.getpid()})"
    check_revision(batch.revision, where)
    audit = open_audit(batch.audit)
    with _ONE_AT_A_TIME:
        earlier = audit.read(task.name)
        if earlier is not None:
            return dataclasses.replace(outcome_of_stored(task.key, *earlier), earlier=True)
        t0 = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix=f"task-{task.key}-"))
        try:
            out = work / Path(task.name).name
            src = ROOT / task.notebook
            if src.is_file():
                ok, err = execute(src, out, task.parameters, task.timeout)
            else:
                ok, err = False, f"{task.notebook} does not exist on {where}"
            if not out.exists():
                stub_notebook(out, task.key, err)
            meta = {**batch.metadata, "stage": task.key, "status": "ok" if ok else "failed", "error": err,
                    "worker": where}
            try:
                audit.put_file(out, task.name, {k: str(v) for k, v in meta.items()})
            except AuditError:
                again = audit.read(task.name)
                if again is None:
                    raise
                # another attempt stored it first: that one stays
                return dataclasses.replace(outcome_of_stored(task.key, *again), earlier=True)
            return Outcome(task.key, ok, err, round(time.monotonic() - t0, 2), stored=True, worker=where)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def fetch(audit: AuditStore, task: NotebookTask) -> None:
    """Make a notebook a worker stored readable at `task.local`, as the local executor leaves it."""
    if not task.local or Path(task.local).exists():
        return
    found = audit.read(task.name)
    if found is not None:
        Path(task.local).parent.mkdir(parents=True, exist_ok=True)
        Path(task.local).write_bytes(found[0])


def absolute_audit_url(url: str) -> str:
    """A local audit folder as an absolute path, so worker processes with another cwd find it."""
    return url if "://" in url else str(Path(url).resolve()) + "/"
