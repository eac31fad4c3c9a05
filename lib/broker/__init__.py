"""Brokers behind one interface; `open_broker(url, mode)` picks one from a URL-like setting."""
from __future__ import annotations

from lib.broker.base import (AccountSnapshot, Bar, Broker, Contract, Holding, OrderRequest,
                             OrderState, check_account)

__all__ = ["AccountSnapshot", "Bar", "Broker", "Contract", "Holding", "OrderRequest", "OrderState",
           "check_account", "open_broker"]


def open_broker(url: str, mode: str, expected_account: str | None = None, **options) -> Broker:
    """Open `sim[:///PATH][?as_of=YYYY-MM-DD]` or `ib://HOST:PORT?client_id=N` in `mode`.

    Raises ValueError for an unknown scheme, BrokerConnectionError when it cannot connect.
    """
    if url == "sim" or url.startswith("sim:") or url.startswith("sim?"):
        from lib.broker.sim import SimBroker
        return SimBroker.from_url(url, mode=mode, expected_account=expected_account, **options)
    if url.startswith("ib://"):
        from lib.broker.ib import IBBroker
        return IBBroker.from_url(url, mode=mode, expected_account=expected_account, **options)
    raise ValueError(f"unknown broker URL {url!r}; expected 'sim', 'sim:///PATH' or 'ib://HOST:PORT?client_id=N'")
