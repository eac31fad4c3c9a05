"""Strategy rules as vectorised functions of the whole price history.

Each rule takes closes (a DataFrame indexed by date, one column per symbol) and returns one row of
target weights per day. The published intent is the last row; the same function over the whole
history is the strategy's backtest. No I/O here.
"""
from __future__ import annotations

import pandas as pd


def macd(close: pd.Series, fast: int = 12, slow: int = 26, signal: int = 9) -> pd.DataFrame:
    """MACD = EMA(fast) − EMA(slow) of the close; signal = EMA(signal) of MACD; hist = MACD − signal.

    Exponential means with `adjust=False` (the recursive form charting packages use).
    """
    ema_fast = close.ewm(span=fast, adjust=False).mean()
    ema_slow = close.ewm(span=slow, adjust=False).mean()
    line = ema_fast - ema_slow
    sig = line.ewm(span=signal, adjust=False).mean()
    return pd.DataFrame({"macd": line, "signal": sig, "hist": line - sig})


def spy_macd_vixy(closes: pd.DataFrame) -> pd.DataFrame:
    """Bullish (MACD above signal): SPY +1.0, VIXY 0. Otherwise: SPY −0.5, VIXY +0.5.

    The regime holds from one crossover to the next, so every day has a full row of weights (the
    origin project published empty targets between crossovers, which reads as "sell everything").
    """
    m = macd(closes["SPY"])
    bullish = m["macd"] > m["signal"]
    return pd.DataFrame({"SPY": bullish.map({True: 1.0, False: -0.5}),
                         "VIXY": bullish.map({True: 0.0, False: 0.5})}, index=closes.index)


def test_signal(closes: pd.DataFrame) -> pd.DataFrame:
    """SPY +1 when MACD is above its signal, −1 otherwise: a signal on every run, to exercise the pipeline."""
    m = macd(closes["SPY"])
    return pd.DataFrame({"SPY": (m["macd"] > m["signal"]).map({True: 1.0, False: -1.0})}, index=closes.index)


def fixed(closes: pd.DataFrame, weights: dict[str, float]) -> pd.DataFrame:
    """The same weights every day (the dummy strategy)."""
    return pd.DataFrame({s: float(w) for s, w in weights.items()}, index=closes.index)


def backtest(closes: pd.DataFrame, weights: pd.DataFrame) -> pd.DataFrame:
    """Daily returns of holding yesterday's weights today, and the equity curve starting at 1."""
    rets = closes[weights.columns].pct_change().fillna(0.0)
    strat = (weights.shift(1).fillna(0.0) * rets).sum(axis=1)
    return pd.DataFrame({"return": strat, "equity": (1.0 + strat).cumprod()})


def momentum_rotation(closes: pd.DataFrame, lookback: int = 126, top: int = 2) -> pd.DataFrame:
    """Hold the `top` instruments with the best return over `lookback` sessions, equally weighted,
    re-chosen on the first session of each month and held in between (all zero until enough history)."""
    momentum = closes / closes.shift(lookback) - 1.0
    months = closes.index.to_period("M")
    first_of_month = pd.Series(months, index=closes.index).ne(pd.Series(months, index=closes.index).shift())
    weights = pd.DataFrame(0.0, index=closes.index, columns=closes.columns)
    current = pd.Series(0.0, index=closes.columns)
    for day, is_first in first_of_month.items():
        row = momentum.loc[day]
        if is_first and row.notna().sum() >= top:
            current = pd.Series(0.0, index=closes.columns)
            current[row.nlargest(top).index] = 1.0 / top
        weights.loc[day] = current
    return weights
