"""Results a notebook hands back to the pipeline, behind one small seam.

Scraps use scrapbook's format (a display output of type `application/scrapbook.scrap.json+json`)
and are read with scrapbook's `read_notebook`. scrapbook 0.5 is unmaintained, and importing it
inside a kernel costs over two seconds (it imports papermill), so `record` writes that documented
output itself; everything that records or reads a result goes through these two functions, so the
format can be replaced in one place.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SCRAP_MIME = "application/scrapbook.scrap.json+json"
SCRAP_VERSION = 1


def payload(name: str, value: Any) -> tuple[dict, dict]:
    """The display data and metadata of one JSON scrap, exactly as scrapbook's `glue(..., display=False)`."""
    data = json.loads(json.dumps(value, default=str, allow_nan=False))  # JSON-able or a clear error now
    return ({SCRAP_MIME: {"name": name, "data": data, "encoder": "json", "version": SCRAP_VERSION}},
            {"scrapbook": {"name": name, "data": True, "display": False}})


def record(name: str, value: Any) -> None:
    """Inside a notebook: record a JSON-able `value` under `name` (nothing visible is displayed)."""
    from IPython.display import display
    data, metadata = payload(name, value)
    display(data, metadata=metadata, raw=True)


def read(notebook: str | Path) -> dict[str, Any]:
    """Outside: every recorded value of an executed notebook, name → value ({} if none or unreadable)."""
    import scrapbook as sb
    try:
        return {name: scrap.data for name, scrap in sb.read_notebook(str(notebook)).scraps.items()}
    except Exception:  # a notebook killed mid-write may be truncated; the caller treats {} as "no result"
        return {}
