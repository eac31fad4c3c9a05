"""What a notebook needs to start: the project root as working directory, the settings, and lazy
handles on the bus and the broker.

Every notebook calls `Context(...)` with its parameters; a parameter left at None falls back to the
environment and then the embedded defaults (lib.settings), so a researcher can open any notebook in
Jupyter and run it top to bottom with no set-up.
"""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pandas as pd

from lib import documents as docs
from lib.broker import Contract, open_broker
from lib.bus import open_bus
from lib.settings import resolve

UTC = dt.timezone.utc


def project_root(start: Path | None = None) -> Path:
    """The folder holding run_pipeline.py, searched upward from `start` (default: the working directory)."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "run_pipeline.py").is_file() and (folder / "lib").is_dir():
            return folder
    return Path(__file__).resolve().parents[1]


class Context:
    def __init__(self, mode: str | None = None, bus: str | None = None, broker: str | None = None,
                 as_of: str | None = None, audit: str | None = None):
        self.root = project_root()
        os.chdir(self.root)  # relative defaults (runs/...) mean the same thing from any notebook
        self.settings = resolve({"mode": mode, "bus": bus, "broker": broker, "audit": audit})
        self.mode = self.settings.mode
        self.as_of = as_of
        self._bus = None

    @property
    def bus(self):
        if self._bus is None:
            self._bus = open_bus(self.settings.bus)
            if self._bus.get(docs.common_config_path()) is None:
                from lib.seed import seed
                seed(self._bus)  # a researcher's first run on an empty bus
        return self._bus

    def expected_account(self) -> str | None:
        return (self.bus.get(docs.mode_config_path(self.mode)) or {}).get("account")

    def broker(self):
        """A new broker connection (use it in a `with` block)."""
        options = {"as_of": self.as_of} if self.as_of and self.settings.broker.startswith("sim") else {}
        return open_broker(self.settings.broker, self.mode, self.expected_account(), **options)

    def closes(self, symbols: list[str], days: int, bar_size: str = "1 day") -> pd.DataFrame:
        """Closes, one column per symbol, over the last `days` days, oldest first.

        Raises ValueError when the broker returns too little history to compute on (fail loudly:
        a signal from a handful of bars is not a signal)."""
        with self.broker() as broker:
            series = {}
            for s in symbols:
                bars = broker.history(Contract(symbol=s), days, bar_size=bar_size)
                series[s] = pd.Series([b.close for b in bars], index=pd.to_datetime([b.date for b in bars]))
        frame = pd.DataFrame(series).dropna()
        if bar_size == "1 day" and len(frame) < days * 0.9:
            raise ValueError(f"only {len(frame)} common daily bars for {symbols}; {days} were asked for")
        if len(frame) < 35:
            raise ValueError(f"only {len(frame)} bars for {symbols}: too few for a 26/9 MACD")
        return frame
