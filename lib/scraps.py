"""Results a notebook hands back to the pipeline, behind one small seam.

scrapbook 0.5 (`glue` / `read_notebook`) is unmaintained; everything that records or reads a
notebook result goes through these two functions so it can be replaced in one place.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any


def record(name: str, value: Any) -> None:
    """Inside a notebook: record a JSON-able `value` under `name` (display suppressed)."""
    import scrapbook as sb
    sb.glue(name, value, display=False)


def read(notebook: str | Path) -> dict[str, Any]:
    """Outside: every recorded value of an executed notebook, name → value ({} if none or unreadable)."""
    import scrapbook as sb
    try:
        return {name: scrap.data for name, scrap in sb.read_notebook(str(notebook)).scraps.items()}
    except Exception:  # a notebook killed mid-write may be truncated; the caller treats {} as "no result"
        return {}
