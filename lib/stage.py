"""Run one notebook with papermill in this process: `python -m lib.stage INPUT OUTPUT PARAMS_JSON TIMEOUT`.

The pipeline starts one of these per notebook in its own process group, so a hanging notebook (and
its kernel) can be killed without touching the others. Exit 0 when the notebook ran to the end,
1 when it raised (papermill has written its error banner into OUTPUT).
"""
from __future__ import annotations

import json
import logging
import sys


def main(argv: list[str]) -> int:
    src, out, params_json, timeout = argv
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError
    logging.getLogger("papermill").setLevel(logging.WARNING)
    try:
        pm.execute_notebook(src, out, parameters=json.loads(params_json), cwd=".", kernel_name="python3",
                            progress_bar=False, execution_timeout=float(timeout),
                            shutdown_kernel="immediate")  # without it ~1 run in 6 waits 3 s for the kernel
    except PapermillExecutionError as exc:
        _fail(f"{exc.ename}: {exc.evalue}")
        return 1
    except Exception as exc:  # kernel died, cell timeout, unreadable notebook: still a failed stage
        if type(exc).__name__ == "CellTimeoutError":
            _fail(f"timed out: a cell ran longer than {float(timeout):.0f} s")
        else:
            _fail(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return 1
    return 0


MARKER = "STAGE-ERROR: "


def _fail(message: str) -> None:
    """One line the pipeline picks out of stderr (kernels and papermill log a lot around it)."""
    print(MARKER + message.replace("\n", " ")[:500], file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
