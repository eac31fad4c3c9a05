"""`local`: the notebooks run on this machine, one Jupyter kernel (a process) per notebook, at most
one per core at a time. The pipeline keeps each executed notebook in the audit store afterwards."""
from __future__ import annotations

import concurrent.futures
import os
import time
from pathlib import Path

from lib.executors.base import ROOT, Batch, Executor, Finished, NotebookTask, Outcome, Started, execute


class LocalExecutor(Executor):
    name = "local"

    def __init__(self, workers: int | None = None):
        self.workers = workers

    def _run(self, batch: Batch, started: Started, finish: Finished) -> None:
        def one(task: NotebookTask) -> None:
            started(task.key)
            t0 = time.monotonic()
            ok, err = execute(ROOT / task.notebook, Path(task.local), task.parameters, task.timeout)
            finish(Outcome(task.key, ok, err, round(time.monotonic() - t0, 2)))

        workers = max(1, min(len(batch.tasks), self.workers or os.cpu_count() or 1))
        # Threads only drive the kernels (each notebook runs in its own kernel process); papermill is
        # called with cwd=None, so nothing here changes the process-wide working directory.
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            for future in [pool.submit(one, task) for task in batch.tasks]:
                future.result()
