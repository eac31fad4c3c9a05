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
                 as_of: str | None = None, audit: str | None = None, data: str | None = None,
                 run_id: str | None = None):
        self.root = project_root()
        os.chdir(self.root)  # relative defaults (runs/...) mean the same thing from any notebook
        self.settings = resolve({"mode": mode, "bus": bus, "broker": broker, "audit": audit, "data": data})
        self.mode = self.settings.mode
        self.as_of = as_of
        #: Set by run_pipeline.py: the pipeline's data stage has already brought the declared series up
        #: to date. Without it (a researcher's own run) `closes` updates the store for its symbols first.
        self.run_id = run_id
        self._bus = None
        self._data = None

    @property
    def bus(self):
        if self._bus is None:
            self._bus = open_bus(self.settings.bus)
            if self._bus.get(docs.common_config_path()) is None:
                from lib.seed import MISSING_CONFIG, is_empty, seed
                if not is_empty(self._bus):
                    raise RuntimeError(MISSING_CONFIG)
                seed(self._bus, self.mode)  # a researcher's first run on an empty bus
        return self._bus

    def expected_account(self) -> str | None:
        return (self.bus.get(docs.mode_config_path(self.mode)) or {}).get("account")

    def broker(self):
        """A new broker connection (use it in a `with` block)."""
        options = {"as_of": self.as_of} if self.as_of and self.settings.broker.startswith("sim") else {}
        return open_broker(self.settings.broker, self.mode, self.expected_account(), **options)

    @property
    def data(self):
        """The market data store (lib.data.BarStore) of the `data` setting."""
        if self._data is None:
            from lib.data import open_store
            self._data = open_store(self.settings.data)
        return self._data

    def closes(self, symbols: list[str], days: int, bar_size: str = "1 day", adjusted: bool = False) -> pd.DataFrame:
        """Closes, one column per symbol, over the last `days` sessions, oldest first.

        Daily bars come from the market data store (lib.data): in a pipeline run the data stage has
        updated them already, and only a series that is missing or behind is fetched here; a
        researcher's own run updates the store for `symbols` first (the last stored session and any
        after it). `frame.attrs["sources"]` says where each column came from (the simulator's bars
        are SYNTHETIC). Intraday bars (e.g. "30 mins") are not stored: they come straight from
        the broker.

        Raises ValueError when there is too little history to compute on (fail loudly: a signal from
        a handful of bars is not a signal), lib.data.DataError when the store cannot be updated."""
        if bar_size != "1 day":
            frame = self._broker_closes(symbols, days, bar_size)
        else:
            frame = self._store_closes(symbols, days, adjusted)
        if bar_size == "1 day" and len(frame) < days * 0.9:
            raise ValueError(f"only {len(frame)} common daily bars for {symbols}; {days} were asked for")
        if len(frame) < 35:
            raise ValueError(f"only {len(frame)} bars for {symbols}: too few for a 26/9 MACD")
        return frame

    def _store_closes(self, symbols: list[str], days: int, adjusted: bool) -> pd.DataFrame:
        from lib import sessions
        from lib.data import DataError, Updater, broker_end, source_of
        from lib.data.update import today_session
        store = self.data
        if self.as_of:
            end = sessions.last_session_on_or_before(dt.date.fromisoformat(self.as_of))
        elif source_of(self.settings.broker) != "sim":
            end = today_session()
        else:
            end = None  # the simulator's own clock, asked below
        if self.run_id and end is not None:  # a pipeline run: fetch only what the data stage did not bring
            behind = [s for s in symbols if not self._stored_enough(s, days, end)]
        else:
            behind = list(symbols)
        if behind:
            with self.broker() as broker:
                end = broker_end(broker) if end is None else end
                updater = Updater(store, broker, source_of(self.settings.broker))
                failed = [o for o in (updater.update(s, days, end) for s in behind) if not o.ok]
            if failed:
                raise DataError("; ".join(f"{o.symbol}: {o.error}" for o in failed))
        return store.closes(symbols, days, end, adjusted=adjusted)

    #: A series updated this recently counts as up to date in a pipeline run even if it has no bar for
    #: today's session yet (the data stage fetched it moments ago; before the open there is none).
    FRESH_SECONDS = 15 * 60

    def _stored_enough(self, symbol: str, days: int, end: dt.date) -> bool:
        """Whether the store's series has `days` sessions (or all its source has) and reaches `end` or
        was just updated."""
        from lib.data import DataError
        try:
            series = self.data.read(symbol)
        except DataError:  # damaged: the update below fetches it again
            return False
        if series is None or series.last_session is None:
            return False
        if not series.history_complete and int((series.bars.index <= pd.Timestamp(end)).sum()) < days:
            return False
        if series.last_session >= end:
            return True
        updated = dt.datetime.fromisoformat(series.updated_at) if series.updated_at else None
        return updated is not None and (dt.datetime.now(UTC) - updated).total_seconds() < self.FRESH_SECONDS

    def _broker_closes(self, symbols: list[str], days: int, bar_size: str) -> pd.DataFrame:
        """Intraday closes straight from the broker (the store keeps daily bars only)."""
        with self.broker() as broker:
            series = {}
            for s in symbols:
                bars = broker.history(Contract(symbol=s), days, bar_size=bar_size)
                series[s] = pd.Series([b.close for b in bars], index=pd.to_datetime([b.date for b in bars]))
        frame = pd.DataFrame(series).dropna()
        frame.attrs["sources"] = {s: f"{self.settings.broker.split(':')[0]} {bar_size} bars, from the broker"
                                  for s in symbols}
        return frame
