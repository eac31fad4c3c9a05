"""Daily bars for a backtest: from the market data store when it has them, else the simulator's bars.

A `PriceBook` knows which source it came from; the simulator's bundled bars are SYNTHETIC and every
chart of a backtest on them says so (`synthetic`, `label`).
"""
from __future__ import annotations

import bisect
import datetime as dt
from typing import Iterable, Mapping

import pandas as pd

from lib.broker.base import Bar


class PriceBook:
    """Bars per symbol and date, and the sessions any symbol trades."""

    def __init__(self, bars: Mapping[str, pd.DataFrame], *, synthetic: bool, label: str):
        self.synthetic, self.label = synthetic, label
        self._frames = {s: f.sort_index() for s, f in bars.items()}
        self._index = {s: {d: i for i, d in enumerate(f.index)} for s, f in self._frames.items()}
        self._rows = {s: f[["open", "high", "low", "close"]].to_numpy() for s, f in self._frames.items()}
        self.sessions = sorted({d for f in self._frames.values() for d in f.index})

    @classmethod
    def from_simulator(cls) -> "PriceBook":
        from lib.broker.sim import load_market
        market = load_market()
        frames = {s: pd.DataFrame([(b.open, b.high, b.low, b.close) for b in rows],
                                  index=[b.date for b in rows], columns=["open", "high", "low", "close"])
                  for s, rows in market.bars.items()}
        return cls(frames, synthetic=True, label="simulator bars (SYNTHETIC, not real prices)")

    @classmethod
    def from_closes(cls, closes: pd.DataFrame, *, label: str, synthetic: bool = False) -> "PriceBook":
        """Close-only data (each bar's open, high and low are its close): LMT fills are then judged
        on the close alone. Index: dates; one column per symbol."""
        frames = {}
        for s in closes.columns:
            c = closes[s].dropna()
            c.index = [d.date() if isinstance(d, (pd.Timestamp, dt.datetime)) else d for d in c.index]
            frames[s] = pd.DataFrame({"open": c, "high": c, "low": c, "close": c})
        return cls(frames, synthetic=synthetic, label=label + " (close only)")

    @classmethod
    def for_symbols(cls, symbols: Iterable[str], data_url: str | None = None) -> "PriceBook":
        """Each symbol's bars from the market data store when it holds them, else from the simulator's
        (SYNTHETIC) bars; the label says which is which. Raises ValueError for a symbol neither has."""
        from lib.broker.sim import load_market
        frames, labels, synthetic = {}, {}, False
        store = None
        if data_url:
            from lib.data import open_store
            store = open_store(data_url)
        market = None
        for symbol in sorted(set(symbols)):
            series = store.read(symbol) if store is not None else None
            if series is not None and len(series.bars):
                bars = series.bars.copy()
                close = bars["close"].where(bars["close"].notna(), bars["adj_close"])
                frame = pd.DataFrame({c: bars[c].where(bars[c].notna(), close) for c in ("open", "high", "low")})
                frame["close"] = close
                frame.index = [d.date() for d in bars.index]
                frames[symbol], labels[symbol] = frame.dropna(), series.label()
                synthetic = synthetic or series.synthetic
                continue
            market = market or load_market()
            if not market.knows(symbol):
                raise ValueError(f"no bars for {symbol}: neither the market data store ({data_url}) nor the "
                                 f"simulator has it (python -m lib.data update/import)")
            rows = market.bars[symbol]
            frames[symbol] = pd.DataFrame([(b.open, b.high, b.low, b.close) for b in rows],
                                          index=[b.date for b in rows], columns=["open", "high", "low", "close"])
            labels[symbol], synthetic = "simulator bars (SYNTHETIC)", True
        label = "; ".join(f"{s}: {l}" for s, l in labels.items())
        return cls(frames, synthetic=synthetic, label=label)

    def symbols(self) -> list[str]:
        return sorted(self._frames)

    def has(self, symbol: str, day: dt.date) -> bool:
        return day in self._index.get(symbol, {})

    def bar(self, symbol: str, day: dt.date) -> Bar:
        row = self._rows[symbol][self._index[symbol][day]]
        return Bar(day, float(row[0]), float(row[1]), float(row[2]), float(row[3]), 0.0)

    def aligned(self, symbols: Iterable[str], days: list[dt.date]) -> dict[str, tuple]:
        """Per symbol, its open, high, low and close as arrays over `days` (NaN where it has no bar)."""
        out = {}
        for s in symbols:
            frame = self._frames[s].reindex(days)
            out[s] = tuple(frame[c].to_numpy(dtype=float) for c in ("open", "high", "low", "close"))
        return out

    def closes(self, symbols: Iterable[str], start: dt.date | None = None, end: dt.date | None = None,
               lookback: int = 0) -> pd.DataFrame:
        """Closes, one column per symbol, from `lookback` sessions before `start` to `end`."""
        first = 0
        if start is not None:
            first = max(0, bisect.bisect_left(self.sessions, start) - lookback)
        last = len(self.sessions) if end is None else bisect.bisect_right(self.sessions, end)
        days = self.sessions[first:last]
        out = pd.DataFrame({s: self._frames[s]["close"] for s in symbols}).reindex(days)
        out.index = pd.to_datetime(out.index)
        return out
