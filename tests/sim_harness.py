"""The broker-contract harness for the simulator (its twin for IB is tests/ib_harness.py).

`make_sim_harness(tmp_path)` is a context manager yielding a `SimHarness`: a connected paper
`SimBroker` (client 1) on a fresh state file, plus an operator connection (client 0, the person at
TWS) that moves the market and enters other-client orders the way the fake gateway does for IB.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from lib.broker import Broker, Contract, OrderRequest, open_broker
from lib.broker.sim import MANUAL_CLIENT_ID, SimBroker

#: A fixed clock keeps the contract tests independent of today's date (and > 250 bars of history).
AS_OF = "2025-06-02"


class SimHarness:
    def __init__(self, tmp_path: Path):
        self.path = Path(tmp_path) / "sim.sqlite"
        self.url = f"sim:///{self.path}"
        # The operator connection creates the state and outlives any drop of the client's connection.
        self._operator = SimBroker(self.path, mode="paper", client_id=MANUAL_CLIENT_ID, as_of=AS_OF)
        self.broker: Broker = open_broker(self.url, mode="paper")
        self.account = self.broker.account_id()

    def set_price(self, symbol: str, price: float) -> None:
        """Move the market: `symbol` trades at `price`; resting orders it crosses fill."""
        self._operator.set_price(symbol, price)

    def place_other_client_order(self, symbol: str, action: str, quantity: int, limit_price: float,
                                 order_ref: str = "manual") -> int:
        """A resting LMT order entered in TWS (clientId 0); returns its order id."""
        state = self._operator.place_order(OrderRequest(Contract(symbol), action, quantity, "LMT", limit_price,
                                                        order_ref=order_ref))
        assert state.status == "Submitted", f"the other client's order should rest, got {state}"
        return state.order_id

    def partial_fill(self, order_id: int, quantity: int) -> None:
        """Execute `quantity` of a resting order now, at its limit."""
        self._operator.fill(order_id, quantity)

    def reject_next_order(self, message: str = "rejected by the test") -> None:
        """The next order placed is rejected by the broker (status Inactive, error 201)."""
        self._operator.reject_next_order(message)

    def drop_connection(self) -> None:
        """Cut the client's connection: further requests through `broker` raise BrokerConnectionError."""
        self.broker.close()

    def reconnect(self) -> Broker:
        """A fresh connected broker on the same state; replaces `broker`."""
        self.broker.close()
        self.broker = open_broker(self.url, mode="paper")
        return self.broker

    def close(self) -> None:
        self.broker.close()
        self._operator.close()


@contextlib.contextmanager
def make_sim_harness(tmp_path: Path) -> Iterator[SimHarness]:
    harness = SimHarness(tmp_path)
    try:
        yield harness
    finally:
        harness.close()
