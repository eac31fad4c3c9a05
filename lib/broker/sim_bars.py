"""Generate the simulator's daily bars: `python -m lib.broker.sim_bars [--out PATH]`.

THE BARS ARE SYNTHETIC. They are not market data and resemble SPY, VIXY, QQQ, TLT and GLD only in
rough price level, drift, volatility and correlation. Each symbol follows a seeded geometric random
walk over the XNYS trading sessions (from `exchange_calendars`, not a hand-written holiday list)
from 2023-01-03 through 2027-11-19; VIXY decays the way a long-volatility ETF does and moves against
the equity index. The output, `lib/broker/data/bars.csv`, is committed; the fixed seed makes this
script reproduce it byte for byte, so anyone can check where the numbers came from.
"""
from __future__ import annotations

import argparse
import csv
import io
import warnings
from pathlib import Path

import numpy as np

BARS_CSV = Path(__file__).with_name("data") / "bars.csv"
FIRST_SESSION = "2023-01-03"
LAST_SESSION = "2027-11-19"
SEED = 20230103
TRADING_DAYS_PER_YEAR = 252

# symbol: (first close, annual drift, annual volatility, typical daily volume)
PROFILES = {
    "SPY": (383.0, 0.09, 0.16, 75_000_000),
    "QQQ": (262.0, 0.12, 0.22, 45_000_000),
    "TLT": (104.0, -0.01, 0.15, 20_000_000),
    "GLD": (170.0, 0.08, 0.14, 8_000_000),
    "VIXY": (60.0, -0.45, 0.55, 5_000_000),  # volatility ETFs bleed from rolling futures
}
SYMBOLS = tuple(PROFILES)

# Daily-return correlations in SYMBOLS order: equities move together, VIXY against them,
# bonds slightly against equities, gold mostly on its own.
CORRELATION = np.array([
    #  SPY    QQQ    TLT    GLD    VIXY
    [1.00, 0.90, -0.20, 0.05, -0.70],
    [0.90, 1.00, -0.15, 0.05, -0.65],
    [-0.20, -0.15, 1.00, 0.25, 0.15],
    [0.05, 0.05, 0.25, 1.00, 0.00],
    [-0.70, -0.65, 0.15, 0.00, 1.00],
])


def trading_sessions(first: str = FIRST_SESSION, last: str = LAST_SESSION) -> list[str]:
    """XNYS session dates from `first` through `last`, as 'YYYY-MM-DD' strings."""
    import exchange_calendars

    # exchange_calendars still uses pandas APIs that newer pandas deprecates; the sessions are
    # unaffected, so its deprecation warnings are noise here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        calendar = exchange_calendars.get_calendar("XNYS", start=first, end=last)
        sessions = calendar.sessions_in_range(first, last)
    return [session.strftime("%Y-%m-%d") for session in sessions]


def generate(sessions: list[str], seed: int = SEED) -> list[tuple]:
    """One (date, symbol, open, high, low, close, volume) row per symbol and session.

    Close-to-close moves are the correlated random walk; the open gaps from the previous close,
    and high/low stretch beyond the open-close range, so every bar satisfies low <= open, close <= high.
    """
    rng = np.random.default_rng(seed)
    n_days, n_symbols = len(sessions), len(SYMBOLS)
    start, drift, vol, volume = (np.array([PROFILES[s][i] for s in SYMBOLS], dtype=float) for i in range(4))
    daily_vol = vol / np.sqrt(TRADING_DAYS_PER_YEAR)
    # Itô correction so that `drift` is the expected arithmetic return, not the log return.
    log_drift = (drift - vol ** 2 / 2) / TRADING_DAYS_PER_YEAR

    shocks = rng.standard_normal((n_days, n_symbols)) @ np.linalg.cholesky(CORRELATION).T
    log_returns = log_drift + daily_vol * shocks
    log_returns[0] = 0.0  # the first session closes at the profile's starting price
    closes = start * np.exp(np.cumsum(log_returns, axis=0))
    previous = np.vstack([start, closes[:-1]])
    opens = previous * np.exp(0.25 * daily_vol * rng.standard_normal((n_days, n_symbols)))
    highs = np.maximum(opens, closes) * np.exp(np.abs(0.5 * daily_vol * rng.standard_normal((n_days, n_symbols))))
    lows = np.minimum(opens, closes) * np.exp(-np.abs(0.5 * daily_vol * rng.standard_normal((n_days, n_symbols))))
    volumes = np.rint(volume * rng.lognormal(0.0, 0.3, (n_days, n_symbols))).astype(np.int64)

    rows = []
    for j, symbol in enumerate(SYMBOLS):
        for i, date in enumerate(sessions):
            # Rounding is monotone, so the low <= open/close <= high ordering survives it.
            rows.append((date, symbol, round(opens[i, j], 2), round(highs[i, j], 2), round(lows[i, j], 2),
                         round(closes[i, j], 2), int(volumes[i, j])))
    return rows


def render(rows: list[tuple]) -> str:
    """The CSV text: a header line, then one line per bar with prices to the cent."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(("date", "symbol", "open", "high", "low", "close", "volume"))
    for date, symbol, o, h, low, c, v in rows:
        writer.writerow((date, symbol, f"{o:.2f}", f"{h:.2f}", f"{low:.2f}", f"{c:.2f}", v))
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    """Write the bars CSV (default: lib/broker/data/bars.csv); returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m lib.broker.sim_bars", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=BARS_CSV, help=f"where to write (default {BARS_CSV})")
    args = parser.parse_args(argv)
    text = render(generate(trading_sessions()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8", newline="")
    print(f"wrote {text.count(chr(10)) - 1} synthetic bars to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
