"""Jupyter kernels for the pipeline's notebooks: started in the project root, optionally warmed.

A kernel started while another stage runs, with the heavy imports already done (silently: the
executed notebook's cells and counters are unaffected), lets the next stage start at once.
The managers are asynchronous ones, as nbclient expects: a blocking client inside nbclient's event
loop would block that loop and with it every timeout.
"""
from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import run_sync

ROOT = Path(__file__).resolve().parents[1]
#: Modules every pipeline notebook imports; importing them is all a warm-up does.
WARM_IMPORTS = "import pandas, lib.notebook, lib.intent, lib.signals, lib.scraps"


def start(warm: str | None = WARM_IMPORTS, timeout: float = 60.0) -> AsyncKernelManager:
    """A running python3 kernel whose working directory is the project root; `warm` code is run
    silently first. Raises RuntimeError when the kernel does not start or the warm-up fails."""
    km = AsyncKernelManager(kernel_name="python3")
    # The kernel's own log lines would interleave with the pipeline's (JSON) log, so they go to a
    # file of their own (`log_tail` reads it when a kernel dies); cell output travels over ZeroMQ
    # into the notebook and is unaffected.
    log = tempfile.NamedTemporaryFile(prefix="kernel-", suffix=".log", delete=False)
    km.log_path = log.name
    run_sync(km.start_kernel)(cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=log)
    log.close()
    if warm:
        client = km.blocking_client()
        client.start_channels()
        try:
            client.wait_for_ready(timeout=timeout)
            reply = client.execute_interactive(warm, silent=True, store_history=False, timeout=timeout)
            if reply["content"]["status"] != "ok":
                raise RuntimeError(f"kernel warm-up failed: {reply['content'].get('evalue')}")
        except Exception:
            kill(km)
            raise
        finally:
            client.stop_channels()
    return km


def log_tail(km: AsyncKernelManager, lines: int = 3) -> str:
    """The last lines the kernel process wrote to stderr ('' if none)."""
    try:
        with open(getattr(km, "log_path", ""), encoding="utf-8", errors="replace") as fh:
            return " | ".join(l.strip() for l in fh.read().strip().splitlines()[-lines:])
    except OSError:
        return ""


def kill(km: AsyncKernelManager) -> None:
    """Kill the kernel process now, from any thread (no event loop involved). Idempotent."""
    provisioner = getattr(km, "provisioner", None)
    process = getattr(provisioner, "process", None)
    if process is not None and process.poll() is None:
        try:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)
        except (OSError, Exception):
            pass
    try:
        run_sync(km.cleanup_resources)()  # connection file and ports; the process is gone
    except Exception:
        pass
    try:
        os.unlink(getattr(km, "log_path", ""))
    except OSError:
        pass
