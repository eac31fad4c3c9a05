"""Helpers for the market data store's tests: a real simulator that counts its history requests."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

from lib.broker.sim import SimBroker

AS_OF = dt.date(2026, 11, 20)  # a Friday session inside the simulator's bundled bars
PACING_ERROR = ("IB refused 1 day bars of {symbol}: error 162: Historical Market Data Service error "
                "message:API historical data query cancelled: pacing violation")


class CountingBroker:
    """A real SimBroker whose `history` calls are counted (symbol, days, bar_size, end). `refuse`
    makes its next calls fail as IB's pacing error would (a BrokerError with that text)."""

    def __init__(self, path: Path, as_of: dt.date = AS_OF):
        self.inner = SimBroker(path, as_of=as_of.isoformat())
        self.calls: list[tuple[str, int, str, dt.date | None]] = []
        self.refuse = 0

    def history(self, contract, days, bar_size="1 day", end=None):
        from lib.errors import BrokerError
        self.calls.append((contract.symbol, days, bar_size, end))
        if self.refuse:
            self.refuse -= 1
            raise BrokerError(PACING_ERROR.format(symbol=contract.symbol))
        return self.inner.history(contract, days, bar_size=bar_size, end=end)

    def as_of(self) -> dt.date:
        return self.inner.as_of()

    def advance_to(self, day: dt.date) -> None:
        self.inner.advance_to(day)

    def close(self) -> None:
        self.inner.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def update_in_process(data_url: str, sim_path: str, symbol: str, rounds: int, start, results) -> None:
    """One of the processes of the concurrency test: wait for `start`, then update `symbol` `rounds`
    times from its own connection to the shared simulator; put its request log on `results`."""
    from lib.data import Updater, open_store
    with CountingBroker(Path(sim_path)) as broker:
        updater = Updater(open_store(data_url), broker, "sim")
        start.wait(30)
        outcomes = [updater.update(symbol, 200, AS_OF) for _ in range(rounds)]
        results.put(([o.ok for o in outcomes], [o.error for o in outcomes], broker.calls))
