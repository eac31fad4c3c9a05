"""The bar store: one Parquet file of daily bars per instrument, with where they came from.

A series is `daily/<SYMBOL>.parquet` under the store's root (runs/data/ or gs://BUCKET/PREFIX/data/):
columns `date, open, high, low, close, volume, adj_close` (TRADES bars as the broker gave them; the
adjusted close where a source gives one, else empty) and, in the file's own metadata, the series'
`source` (`ib`, `sim`, `import:<file>`), bar size, first and last session, whether the source had no
older bars (`history_complete`), when it was written, and a note (e.g. a licence). A series from
`sim` is SYNTHETIC and says so wherever it is shown.

Every change is a read-change-write under `Files.lock` with a compare-and-swap write (`BarStore.modify`),
so two processes updating one series take turns (locally) or the later write retries on the newer
version (GCS): nothing is corrupted or lost. A file that cannot be read back raises
`DamagedSeriesError` naming it; an update fetches such a series again.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import re
import urllib.parse
from typing import Any, Callable

import numpy as np
import pandas as pd

from lib.data.files import ConflictError, DataError, Files, open_files

DAILY = "1 day"
COLUMNS = ("open", "high", "low", "close", "volume", "adj_close")
FORMAT = 1
META_KEY = b"commander.series"
SYMBOL_RE = re.compile(r"^[A-Z0-9][A-Z0-9 ._\-]{0,23}$")
CAS_ATTEMPTS = 8


class DamagedSeriesError(DataError):
    """A stored series cannot be read back (truncated, not Parquet, wrong columns)."""

    def __init__(self, link: str, reason: str):
        self.link, self.reason = link, reason
        super().__init__(f"{link} is damaged ({reason}); `python -m lib.data update` fetches it again")


def check_symbol(symbol: str) -> str:
    if not isinstance(symbol, str) or not SYMBOL_RE.match(symbol):
        raise ValueError(f"symbol {symbol!r}: expected upper-case letters, digits, space, '.', '_' or '-' "
                         "(at most 24 characters)")
    return symbol


def is_synthetic(source: str) -> bool:
    return source == "sim"


def describe_source(source: str) -> str:
    """How a source is shown to people: the simulator's bars always say SYNTHETIC."""
    if is_synthetic(source):
        return "sim (SYNTHETIC simulator bars, not real prices)"
    return source


@dataclasses.dataclass
class Series:
    """One instrument's daily bars, oldest first, indexed by session date (a naive DatetimeIndex)."""

    symbol: str
    bars: pd.DataFrame
    source: str
    bar_size: str = DAILY
    history_complete: bool = False  # the source had no bars older than the first one stored
    updated_at: str = ""
    note: str = ""

    def __post_init__(self):
        check_symbol(self.symbol)
        self.bars = normalise(self.bars)

    @property
    def first_session(self) -> dt.date | None:
        return self.bars.index[0].date() if len(self.bars) else None

    @property
    def last_session(self) -> dt.date | None:
        return self.bars.index[-1].date() if len(self.bars) else None

    @property
    def synthetic(self) -> bool:
        return is_synthetic(self.source)

    @property
    def has_close(self) -> bool:
        return bool(self.bars["close"].notna().any())

    @property
    def has_adjusted(self) -> bool:
        return bool(self.bars["adj_close"].notna().any())

    @property
    def close_only(self) -> bool:
        """Only a close (raw or adjusted) is given: no open, high, low or volume."""
        return not self.bars[["open", "high", "low", "volume"]].notna().any().any()

    def label(self) -> str:
        """A one-line description: source, and what kind of prices it holds."""
        parts = [describe_source(self.source)]
        if self.close_only:
            parts.append("close-only")
        if self.has_adjusted and not self.has_close:
            parts.append("adjusted closes")
        elif self.has_adjusted:
            parts.append("with adjusted close")
        return ", ".join(parts)

    def meta(self) -> dict[str, Any]:
        return {"format": FORMAT, "symbol": self.symbol, "source": self.source, "synthetic": self.synthetic,
                "bar_size": self.bar_size, "first_session": _iso(self.first_session),
                "last_session": _iso(self.last_session), "rows": len(self.bars),
                "history_complete": self.history_complete, "close_only": self.close_only,
                "adjusted": self.has_adjusted, "updated_at": self.updated_at, "note": self.note}


def _iso(day: dt.date | None) -> str | None:
    return day.isoformat() if day else None


def normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """Bars as the store keeps them: the COLUMNS as float64 (missing ones empty), a DatetimeIndex of
    session dates named `date`, sorted, one row per date."""
    out = pd.DataFrame(index=pd.DatetimeIndex(pd.to_datetime(frame.index).normalize(), name="date"))
    for col in COLUMNS:
        out[col] = pd.to_numeric(frame[col], errors="raise").astype("float64").to_numpy() \
            if col in frame.columns else np.nan
    out = out[~out.index.duplicated(keep="last")].sort_index()
    return out


def bars_frame(bars) -> pd.DataFrame:
    """lib.broker Bars (TRADES) → a store frame (no adjusted close: the broker interface has none)."""
    rows = [{"date": pd.Timestamp(b.date.date() if isinstance(b.date, dt.datetime) else b.date),
             "open": b.open, "high": b.high, "low": b.low, "close": b.close, "volume": b.volume} for b in bars]
    frame = pd.DataFrame(rows, columns=["date", "open", "high", "low", "close", "volume"]).set_index("date")
    return normalise(frame)


def merge(old: pd.DataFrame | None, new: pd.DataFrame) -> pd.DataFrame:
    """`old` with `new`'s bars added; where both have a date, `new` wins (a refetched partial bar)."""
    if old is None or old.empty:
        return normalise(new)
    return normalise(pd.concat([old, new]))


# ---- Parquet ----------------------------------------------------------------------------------
def encode(series: Series) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq
    b = series.bars
    table = pa.table({"date": pa.array(b.index.date, type=pa.date32()),
                      **{col: pa.array(b[col].to_numpy(), type=pa.float64(), from_pandas=True) for col in COLUMNS}})
    table = table.replace_schema_metadata({META_KEY: json.dumps(series.meta()).encode()})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def decode(data: bytes, link: str) -> Series:
    """Read a series back; DamagedSeriesError naming `link` for anything that is not one."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        table = pq.read_table(pa.BufferReader(data))
        meta = json.loads((table.schema.metadata or {})[META_KEY])
    except KeyError:
        raise DamagedSeriesError(link, "no series metadata") from None
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for a damaged file
        raise DamagedSeriesError(link, f"not readable as Parquet: {exc}") from None
    missing = [c for c in ("date", *COLUMNS) if c not in table.column_names]
    if missing:
        raise DamagedSeriesError(link, f"columns missing: {', '.join(missing)}")
    if meta.get("format") != FORMAT:
        raise DamagedSeriesError(link, f"unknown format {meta.get('format')!r}")
    frame = pd.DataFrame({c: table.column(c).to_numpy(zero_copy_only=False) for c in COLUMNS},
                         index=pd.DatetimeIndex(table.column("date").to_numpy().astype("datetime64[ns]"), name="date"))
    return Series(symbol=meta["symbol"], bars=frame, source=meta["source"], bar_size=meta.get("bar_size", DAILY),
                  history_complete=bool(meta.get("history_complete")), updated_at=meta.get("updated_at", ""),
                  note=meta.get("note", ""))


# ---- the store --------------------------------------------------------------------------------
@dataclasses.dataclass
class Change:
    """What `BarStore.modify` did: the series now stored, whether it wrote, and whether the file it
    found was damaged (and why)."""

    series: Series | None
    written: bool
    damaged: str = ""


class BarStore:
    """Daily bars per instrument on a `Files` backend (local folder or GCS)."""

    FOLDER = "daily"

    def __init__(self, files: Files):
        self.files = files
        self.url = files.url

    def name(self, symbol: str) -> str:
        return f"{self.FOLDER}/{urllib.parse.quote(check_symbol(symbol), safe='')}.parquet"

    def link(self, symbol: str) -> str:
        return self.files.link(self.name(symbol))

    def symbols(self) -> list[str]:
        return sorted(urllib.parse.unquote(n[:-len(".parquet")]) for n in self.files.list(self.FOLDER)
                      if n.endswith(".parquet"))

    def read(self, symbol: str) -> Series | None:
        """The stored series, None when there is none; DamagedSeriesError naming a damaged file."""
        found = self.files.read(self.name(symbol))
        return None if found is None else decode(found[0], self.link(symbol))

    def modify(self, symbol: str, change: Callable[[Series | None, str], Series | None]) -> Change:
        """Read the series, let `change(current, damaged_reason)` return the new one (or the same
        object / None to leave it), and write it if it differs: under the backend's lock, with a
        compare-and-swap write, retried on a newer version. `current` is None for a missing or
        damaged file (then `damaged_reason` says why)."""
        name, link = self.name(symbol), self.link(symbol)
        for _ in range(CAS_ATTEMPTS):
            with self.files.lock(name):
                found = self.files.read(name)
                current, damaged, version = None, "", None
                if found is not None:
                    version = found[1]
                    try:
                        current = decode(found[0], link)
                    except DamagedSeriesError as err:
                        damaged = err.reason
                new = change(current, damaged)
                if new is None or new is current:
                    return Change(current, False, damaged)
                if new.symbol != symbol:
                    raise ValueError(f"a change of {symbol} returned a series of {new.symbol}")
                new.updated_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
                try:
                    self.files.write(name, encode(new), version)
                except ConflictError:
                    continue  # another writer got there first: read its version and apply the change to it
                return Change(new, True, damaged)
        raise DataError(f"{link} kept changing under {CAS_ATTEMPTS} attempts to update it")

    def closes(self, symbols: list[str], days: int, end: dt.date | None = None,
               adjusted: bool = False) -> pd.DataFrame:
        """Closes, one column per symbol, the last `days` common sessions up to `end`, oldest first.

        `adjusted=True` reads adjusted closes where a series has them. A series with adjusted
        closes only (close-only imports such as skfolio's) gives those either way, and says so.
        `frame.attrs["sources"]` describes each column (sim's bars say SYNTHETIC); `attrs["notes"]`
        lists any substitution. Raises DataError for a symbol the store does not hold.
        """
        columns, sources, notes = {}, {}, []
        for symbol in symbols:
            series = self.read(symbol)
            if series is None:
                raise DataError(f"{self.link(symbol)} does not exist: no {symbol} bars in the store "
                                f"(`python -m lib.data update --symbols {symbol}`, or import them)")
            bars = series.bars if end is None else series.bars.loc[:pd.Timestamp(end)]
            field = "adj_close" if adjusted and series.has_adjusted else "close"
            if field == "close" and not series.has_close:
                field = "adj_close"
                notes.append(f"{symbol}: adjusted closes (the source gives no raw close)")
            elif adjusted and field == "close":
                notes.append(f"{symbol}: raw closes (the source gives no adjusted close)")
            columns[symbol] = bars[field]
            sources[symbol] = series.label()
        frame = pd.DataFrame(columns).dropna().tail(days)
        frame.index.name = "date"
        frame.attrs["sources"], frame.attrs["notes"] = sources, notes
        return frame


def open_store(url: str) -> BarStore:
    """The bar store at `url`: a local folder (default runs/data/) or gs://BUCKET/PREFIX/data/."""
    return BarStore(open_files(url))
