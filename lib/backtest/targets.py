"""A strategy notebook in backtest mode: its rule over a whole period, recorded instead of published.

The same function of price history that gives today's intent (its last row) gives one row of
targets per session over `start … end`. The notebook reads the history with `history` (the market
data store, else the simulator's synthetic bars — never the broker's clock) and hands the series
back with `record`: a Parquet file the backtest reads, named in a scrap.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd

from lib import scraps
from lib.backtest.prices import PriceBook


def _day(value) -> dt.date:
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))


def history(symbols: list[str], start, end, lookback: int, data_url: str | None = None) -> pd.DataFrame:
    """Closes of `symbols` from `lookback` sessions before `start` to `end`, one column per symbol;
    `attrs["label"]` says where they came from and `attrs["synthetic"]` whether they are synthetic."""
    book = PriceBook.for_symbols(symbols, data_url)
    frame = book.closes(symbols, _day(start), _day(end), lookback=lookback).dropna()
    frame.attrs["label"], frame.attrs["synthetic"] = book.label, book.synthetic
    return frame


def record(weights: pd.DataFrame, start, end, out: str | None) -> pd.DataFrame:
    """Keep the rows of `start … end`, write them to `out` (Parquet) and record the `targets` scrap."""
    rows = weights.loc[pd.Timestamp(_day(start)):pd.Timestamp(_day(end))]
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        rows.to_parquet(out)
    scraps.record("targets", {"path": out, "rows": len(rows), "columns": list(map(str, rows.columns)),
                              "first": str(rows.index[0].date()) if len(rows) else None,
                              "last": str(rows.index[-1].date()) if len(rows) else None})
    return rows
