"""Executors: where a batch of notebooks runs (the strategy stage; backtest sweeps are batches too).

One setting chooses it (`--executor`, `COMMANDER_EXECUTOR`, default `local`):

| URL | where |
|---|---|
| `local` | Jupyter kernels on this machine, one per core at a time (`local.py`) |
| `dask://HOST:PORT`, `dask://local` | a Dask distributed cluster, or a LocalCluster started for the run (`dask.py`) |
| `cloudrun://PROJECT/REGION/JOB` | the tasks of one Cloud Run job execution (`cloudrun.py`) |

Importing this package imports no engine: dask and google-cloud-run load only when chosen.
"""
from __future__ import annotations

from lib.executors.base import (Batch, Executor, ExecutorError, NotebookTask, Outcome, RevisionMismatch,
                                code_revision)

SCHEMES = ("local", "dask://", "cloudrun://")


def check(url: str) -> None:
    """Raise ExecutorError when `url` names no executor (the URL's syntax only; nothing is contacted)."""
    if url == "local":
        return
    if url.startswith("dask://"):
        from lib.executors.dask import parse
        parse(url)
    elif url.startswith("cloudrun://"):
        from lib.executors.cloudrun import parse
        parse(url)
    else:
        raise ExecutorError(f"executor {url!r}: expected local, dask://HOST:PORT, dask://local "
                            "or cloudrun://PROJECT/REGION/JOB")


def open_executor(url: str, *, workers: int | None = None, starter=None) -> Executor:
    """The executor `url` names. Nothing is started until its first batch runs."""
    check(url)
    if url.startswith("dask://"):
        from lib.executors.dask import DaskExecutor
        return DaskExecutor(url, workers=workers)
    if url.startswith("cloudrun://"):
        from lib.executors.cloudrun import CloudRunExecutor
        return CloudRunExecutor(url, starter=starter)
    from lib.executors.local import LocalExecutor
    return LocalExecutor(workers=workers)


__all__ = ["Batch", "Executor", "ExecutorError", "NotebookTask", "Outcome", "RevisionMismatch", "check",
           "code_revision", "open_executor"]
