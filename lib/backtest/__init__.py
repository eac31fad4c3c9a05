"""The portfolio backtest: strategy target series netted by the real Commander, filled by the simulator's rules."""
from lib.backtest.engine import BacktestError, BacktestResult, run
from lib.backtest.prices import PriceBook

__all__ = ["BacktestError", "BacktestResult", "PriceBook", "run"]
