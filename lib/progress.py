"""What the pipeline tells people and machines while it runs.

On a terminal: one line per stage and strategy, redrawn in place. In a log: one plain line per
change. With `json=True`: one JSON object per line with `severity`, which Cloud Logging reads.
"""
from __future__ import annotations

import datetime as dt
import json
import sys
import threading
from typing import TextIO

SEVERITY = {"info": "INFO", "ok": "INFO", "warn": "WARNING", "error": "ERROR"}


class Progress:
    def __init__(self, stream: TextIO | None = None, json_lines: bool = False, run_id: str = ""):
        self.stream = stream or sys.stderr
        self.json = json_lines
        self.run_id = run_id
        self.live = (not json_lines) and hasattr(self.stream, "isatty") and self.stream.isatty()
        self._lines: dict[str, str] = {}
        self._drawn = 0
        self._lock = threading.Lock()

    def update(self, name: str, state: str, detail: str = "", level: str = "info") -> None:
        """Set the line for `name` (a stage or strategy) to `state` and `detail`."""
        with self._lock:
            text = f"{name:<28} {state:<10} {detail}".rstrip()
            self._lines[name] = text
            if self.json:
                self._emit_json(f"{name}: {state} {detail}".strip(), level, stage=name, state=state)
            elif self.live:
                self._redraw()
            else:
                print(text, file=self.stream, flush=True)

    def log(self, message: str, level: str = "info", **fields) -> None:
        with self._lock:
            if self.json:
                self._emit_json(message, level, **fields)
            else:
                if self.live:
                    self._clear()
                print(message, file=self.stream, flush=True)
                if self.live:
                    self._drawn = 0
                    self._redraw()

    def _emit_json(self, message: str, level: str, **fields) -> None:
        entry = {"severity": SEVERITY.get(level, "INFO"), "message": message, "run_id": self.run_id,
                 "time": dt.datetime.now(dt.timezone.utc).isoformat(), **fields}
        print(json.dumps(entry, default=str), file=self.stream, flush=True)

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")

    def _redraw(self) -> None:
        self._clear()
        for text in self._lines.values():
            self.stream.write(text + "\n")
        self._drawn = len(self._lines)
        self.stream.flush()
