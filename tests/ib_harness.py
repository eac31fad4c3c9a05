"""`make_ib_harness(tmp_path)`: an `IBBroker` on a `FakeGateway`, with controls over the market.

The shared broker contract suite runs against this for its "ib" parameter (alongside the sim
harness); the interface is fixed:

    harness.broker, harness.account, harness.set_price(symbol, price),
    harness.place_other_client_order(symbol, action, quantity, limit_price, order_ref="manual") -> int,
    harness.partial_fill(order_id, quantity), harness.reject_next_order(message=...),
    harness.drop_connection(), harness.reconnect() -> Broker

IB-only extras: harness.gateway (the FakeGateway), harness.restart_gateway(next_order_id=None) -> Broker.

Leaving the context fails (AssertionError) when ib_async logged a decoding failure or the fake
could not parse a client message: a misaligned field would otherwise only show up as a timeout.
"""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Iterator

from lib.broker.base import Broker
from lib.broker.ib import IBBroker
from tests.fake_gateway import INSTRUMENTS, FakeGateway

#: The API client id the harness's broker uses, and the one "another client" uses.
CLIENT_ID = 1
OTHER_CLIENT_ID = 99
DECODING_FAILURES = ("Error handling fields", "Error for ")


class DecodingWatch(logging.Handler):
    """Collects ib_async log records that mean a message could not be decoded."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.failures: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if any(marker in message for marker in DECODING_FAILURES):
            self.failures.append(message)


@contextlib.contextmanager
def watch_ib_decoding() -> Iterator[DecodingWatch]:
    """Attach a DecodingWatch to the `ib_async` loggers for the duration of the block."""
    logger = logging.getLogger("ib_async")
    watch = DecodingWatch()
    logger.addHandler(watch)
    try:
        yield watch
    finally:
        logger.removeHandler(watch)


class IBHarness:
    """A paper IBBroker on a running FakeGateway; see the module docstring for the interface."""

    def __init__(self, gateway: FakeGateway, mode: str = "paper", timeout: float = 5.0):
        self.gateway = gateway
        self.mode = mode
        self.timeout = timeout
        self.prices = {s: i.price for s, i in INSTRUMENTS.items()}
        self.broker: Broker = self._connect()

    @property
    def account(self) -> str:
        return self.gateway.account

    def _connect(self) -> IBBroker:
        return IBBroker.from_url(f"ib://127.0.0.1:{self.gateway.port}?client_id={CLIENT_ID}&timeout={self.timeout}",
                                 mode=self.mode)

    def set_price(self, symbol: str, price: float) -> None:
        """Move the market; resting LMT orders that cross the new price fill at it."""
        self.prices[symbol] = price
        self.gateway.set_price(symbol, price)

    def place_other_client_order(self, symbol: str, action: str, quantity: float, limit_price: float,
                                 order_ref: str = "manual") -> int:
        """A resting LMT order from another API client (id 99); returns its order id."""
        return self.gateway.inject_order(symbol, action, quantity, limit_price, order_ref=order_ref,
                                         client_id=OTHER_CLIENT_ID).order_id

    def partial_fill(self, order_id: int, quantity: float) -> None:
        """Fill part of an open order (LMT at its limit, others at the market)."""
        self.gateway.partial_fill(order_id, quantity)

    def reject_next_order(self, message: str = "rejected by the test harness") -> None:
        """The next placeOrder is rejected with IB error 201."""
        self.gateway.reject_next_order(message)

    def drop_connection(self) -> None:
        """Close every client socket now; the gateway keeps its orders and accepts reconnects."""
        self.gateway.drop_connections()

    def reconnect(self) -> Broker:
        """Replace `broker` by a freshly connected one (same client id, same gateway state)."""
        self.broker.close()
        deadline = time.monotonic() + 5
        # The gateway must have seen the old socket close, or it refuses the client id as in use.
        while CLIENT_ID in self.gateway.connected_client_ids() and time.monotonic() < deadline:
            time.sleep(0.01)
        self.broker = self._connect()
        return self.broker

    def restart_gateway(self, next_order_id: int | None = None) -> Broker:
        """Restart the gateway (state kept; nextValidId rolled back to `next_order_id` when given)
        and replace `broker` by a freshly connected one."""
        self.gateway.restart(next_order_id)
        return self.reconnect()

    def close(self) -> None:
        self.broker.close()


@contextlib.contextmanager
def make_ib_harness(tmp_path: Path | None = None, account: str = "DU1234567", **gateway_options) -> Iterator[IBHarness]:
    """A started FakeGateway and a connected paper IBBroker; both are stopped on exit.

    `tmp_path` is accepted for symmetry with the sim harness (the fake keeps state in memory).
    """
    with watch_ib_decoding() as watch:
        gateway = FakeGateway(account=account, **gateway_options).start()
        harness = None
        try:
            harness = IBHarness(gateway)
            yield harness
        finally:
            if harness is not None:
                harness.close()
            gateway.stop()
        # Reached only when the body did not raise: then check the wire was clean.
        problems = watch.failures + gateway.protocol_errors
        if problems:
            raise AssertionError(f"IB protocol problems during the test: {problems}")


# ---- market data store tests and benchmark (add-only) -------------------------------------------
def session_bars(symbol: str, end, count: int) -> list[tuple]:
    """`count` deterministic daily bars (date, open, high, low, close, volume) on the XNYS sessions
    ending at `end` (a session), closing at the instrument's price: for `FakeGateway.set_bars`, so
    the fake's sessions are the exchange calendar's, as the store expects of IB."""
    import math
    import random

    import pandas as pd

    from lib import sessions
    days = [d.date() for d in sessions.calendar().sessions_window(pd.Timestamp(end), -count)]
    rng = random.Random(f"session-bars:{symbol}")
    close, rows = INSTRUMENTS[symbol].price if symbol in INSTRUMENTS else 100.0, []
    for day in reversed(days):  # newest first, walking back in time
        prev = close / math.exp(rng.gauss(0.0003, 0.012))
        open_ = prev * math.exp(rng.gauss(0, 0.004))
        rows.append((day, round(open_, 2), round(max(open_, close) * 1.004, 2), round(min(open_, close) * 0.996, 2),
                     round(close, 2), rng.randint(1_000_000, 50_000_000)))
        close = prev
    return rows[::-1]
