"""Bringing bars into the store from files: a vendor's CSV, and skfolio's real example prices.

`import_csv(store, path, symbol)`: a CSV with a `date` column and a `close` and/or an adjusted close
(`adj close`, `adj_close`, `adjusted_close`, `adjclose`), optionally `open`, `high`, `low`, `volume`
(column names in any case). The series' source is `import:<file name>`.

`import_examples(store)`: the real daily **adjusted closes** that skfolio's wheel ships (BSD-3-Clause,
© 2023-2026 The skfolio developers; the prices come from Yahoo Finance): 20 US large caps and the S&P
500 index (symbol `SP500`), 1990-01-02 … 2022-12-28, and the factor ETFs MTUM, QUAL, SIZE, USMV, VLUE,
2014-01-02 … 2022-12-28. They are close-only (no open, high, low or volume) and adjusted for splits and
dividends. The files are read from the installed package (found with importlib, without importing
skfolio, which would import scikit-learn); nothing is copied into this repository or downloaded.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

from lib.data.files import DataError
from lib.data.store import BarStore, Series, check_symbol, normalise

ADJUSTED_NAMES = ("adj close", "adj_close", "adjusted_close", "adjclose", "adjusted close")
SKFOLIO_FILES = {
    "sp500_dataset.csv.gz": "20 US large caps",
    "sp500_index.csv.gz": "the S&P 500 index",
    "factors_dataset.csv.gz": "factor ETFs",
}
SKFOLIO_NOTE = ("real daily adjusted closes (close-only) from skfolio's datasets, originally Yahoo Finance; "
                "skfolio is BSD-3-Clause, Copyright (c) 2023-2026 The skfolio developers")
SKFOLIO_SOURCE = "import:skfolio/{name}"


def _write(store: BarStore, series: Series, replace: bool) -> Series:
    """Store an imported series; another source's series is only replaced with `replace`."""

    def change(current: Series | None, damaged: str) -> Series:
        if current is not None and current.source != series.source and not replace:
            raise DataError(f"{store.link(series.symbol)} already holds {current.source} bars; "
                            "import with --replace to overwrite them")
        return series

    return store.modify(series.symbol, change).series


def read_csv(path: str | Path) -> pd.DataFrame:
    """A CSV of bars → a store frame; DataError naming the file and the problem."""
    path = Path(path)
    try:
        raw = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    cols = {c.strip().lower(): c for c in raw.columns}
    if "date" not in cols:
        raise DataError(f"{path}: no 'date' column (columns: {', '.join(raw.columns)})")
    adjusted = next((cols[n] for n in ADJUSTED_NAMES if n in cols), None)
    if "close" not in cols and adjusted is None:
        raise DataError(f"{path}: no 'close' or adjusted close column (columns: {', '.join(raw.columns)})")
    try:
        dates = pd.to_datetime(raw[cols["date"]], errors="raise")
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path}: column 'date': {exc}") from None
    if getattr(dates.dt, "tz", None) is not None:
        dates = dates.dt.tz_localize(None)
    frame = pd.DataFrame(index=pd.DatetimeIndex(dates.dt.normalize(), name="date"))
    for name in ("open", "high", "low", "close", "volume"):
        if name in cols:
            frame[name] = _numbers(raw[cols[name]], path, name)
    if adjusted is not None:
        frame["adj_close"] = _numbers(raw[adjusted], path, adjusted)
    dupes = frame.index[frame.index.duplicated()]
    if len(dupes):
        raise DataError(f"{path}: date {dupes[0].date()} appears more than once")
    price = frame["close"] if "close" in frame else frame["adj_close"]
    frame = frame[price.notna()]
    if frame.empty:
        raise DataError(f"{path}: no row with a price")
    return normalise(frame)


def _numbers(column: pd.Series, path: Path, name: str) -> pd.Series:
    values = pd.to_numeric(column, errors="coerce")
    bad = column[values.isna() & column.notna()]
    if len(bad):
        raise DataError(f"{path}: column {name!r}, row {bad.index[0] + 2}: {bad.iloc[0]!r} is not a number")
    return values.to_numpy()


def import_csv(store: BarStore, path: str | Path, symbol: str, replace: bool = False) -> Series:
    check_symbol(symbol)
    frame = read_csv(path)
    return _write(store, Series(symbol, frame, f"import:{Path(path).name}",
                                note=f"imported from {Path(path).name}"), replace)


def skfolio_data_dir() -> Path:
    """skfolio's bundled data folder, located without importing skfolio."""
    spec = importlib.util.find_spec("skfolio")  # a top-level package: found, not imported
    if spec is None or not spec.submodule_search_locations:
        raise DataError("skfolio is not installed: `make install` installs it (or "
                        "`.venv/bin/pip install --no-deps 'skfolio>=1.12,<2'`); its wheel ships the example prices")
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    missing = [n for n in SKFOLIO_FILES if not (folder / n).is_file()]
    if missing:
        raise DataError(f"skfolio at {folder.parent.parent} has no {', '.join(missing)}: not a version this knows")
    return folder


def import_examples(store: BarStore, replace: bool = False) -> list[Series]:
    """Every series of skfolio's three price files into the store (see the module's docstring)."""
    folder = skfolio_data_dir()
    out = []
    for name in SKFOLIO_FILES:
        prices = pd.read_csv(folder / name, index_col="Date", parse_dates=True)
        for symbol in prices.columns:
            column = prices[symbol].dropna()
            frame = pd.DataFrame({"adj_close": column.to_numpy()}, index=column.index)
            out.append(_write(store, Series(check_symbol(symbol), frame, SKFOLIO_SOURCE.format(name=name),
                                            history_complete=True, note=SKFOLIO_NOTE), replace))
    return out
