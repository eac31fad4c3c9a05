"""The one small interface every broker implements, and the plain data it speaks.

Strategies, reconcile and the commander reach the broker only through `Broker`. Two
implementations exist: `lib.broker.ib.IBBroker` (IB Gateway/TWS through ib_async) and
`lib.broker.sim.SimBroker` (the embedded, persistent simulator). Both raise only the errors in
`lib.errors` and return the dataclasses below, so callers never see a library's own types.
"""
from __future__ import annotations

import abc
import dataclasses
import datetime as dt
from typing import Any, Iterable

from lib.errors import AccountMismatchError

#: IB statuses after which an order can no longer fill.
TERMINAL_STATUSES = frozenset({"Filled", "Cancelled", "ApiCancelled", "Inactive"})
#: Statuses an order passes through before the broker has acknowledged it.
UNACKNOWLEDGED_STATUSES = frozenset({"PendingSubmit", "ApiPending"})

ORDER_TYPES = ("MKT", "LMT", "MOC", "LOC")


@dataclasses.dataclass(frozen=True)
class Contract:
    """An instrument as IB describes it. Exchange and conId are descriptive, not identity."""

    symbol: str
    secType: str = "STK"
    currency: str = "USD"
    exchange: str = "SMART"
    primaryExchange: str = ""
    lastTradeDateOrContractMonth: str = ""
    strike: float = 0.0
    right: str = ""
    multiplier: str = ""
    conId: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Contract":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names and v is not None})


@dataclasses.dataclass(frozen=True)
class Bar:
    """One OHLCV bar; `date` is the session date for daily bars, a UTC datetime otherwise."""

    date: dt.date | dt.datetime
    open: float
    high: float
    low: float
    close: float
    volume: float


@dataclasses.dataclass(frozen=True)
class OrderRequest:
    """What to send. `quantity` is positive; `action` carries the sign."""

    contract: Contract
    action: str  # "BUY" | "SELL"
    quantity: int
    order_type: str = "MKT"  # one of ORDER_TYPES
    limit_price: float | None = None
    tif: str = "DAY"
    order_ref: str = ""
    #: An explicit order id from `Broker.reserve_order_ids` (IB honours it; the simulator numbers
    #: its own orders and ignores it).
    order_id: int | None = None


@dataclasses.dataclass
class OrderState:
    """The broker's view of one order at a point in time."""

    order_id: int
    perm_id: int
    client_id: int
    contract: Contract
    action: str
    quantity: float
    order_type: str
    limit_price: float | None
    tif: str
    order_ref: str
    status: str
    filled: float = 0.0
    remaining: float = 0.0
    avg_fill_price: float = 0.0
    commission: float = 0.0
    error: str | None = None
    #: Stop price of STP/STP LMT/TRAIL orders (None when unset).
    aux_price: float | None = None
    #: Non-zero for the child of a bracket (its parent's order id).
    parent_id: int = 0
    #: One-cancels-all group name ("" when none).
    oca_group: str = ""
    #: Informational broker messages that left the order working (e.g. "IB warning 399: ...").
    warnings: list[str] = dataclasses.field(default_factory=list)
    #: Whether the broker itself reported the terminal status (not a client-side guess, as
    #: ib_async's local "Cancelled" after errors 161/10148 is). Recovery and cancel confirmation
    #: trust only confirmed terminal states.
    confirmed: bool = True

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def is_acknowledged(self) -> bool:
        return self.status not in UNACKNOWLEDGED_STATUSES

    def signed_remaining(self) -> float:
        return self.remaining if self.action == "BUY" else -self.remaining

    def to_dict(self) -> dict[str, Any]:
        """The `open_orders[]` / `orders_placed[]` shape stored in the bus."""
        c = self.contract
        return {
            "orderId": self.order_id, "permId": self.perm_id, "clientId": self.client_id,
            "symbol": c.symbol, "secType": c.secType, "currency": c.currency,
            "conId": c.conId, "primaryExchange": c.primaryExchange,
            "exchange": c.exchange, "lastTradeDateOrContractMonth": c.lastTradeDateOrContractMonth,
            "strike": c.strike, "right": c.right, "multiplier": c.multiplier,
            "action": self.action, "totalQuantity": self.quantity, "orderType": self.order_type,
            "lmtPrice": self.limit_price, "tif": self.tif, "orderRef": self.order_ref,
            "status": self.status, "filled": self.filled, "remaining": self.remaining,
            "avgFillPrice": self.avg_fill_price, "commission": self.commission, "error": self.error,
            "auxPrice": self.aux_price, "parentId": self.parent_id, "ocaGroup": self.oca_group,
        }


@dataclasses.dataclass
class Holding:
    contract: Contract
    quantity: float
    avg_cost: float
    market_price: float | None
    market_value: float | None

    def to_dict(self) -> dict[str, Any]:
        c = self.contract
        return {
            "symbol": c.symbol, "secType": c.secType, "currency": c.currency,
            "exchange": c.exchange, "lastTradeDateOrContractMonth": c.lastTradeDateOrContractMonth,
            "strike": c.strike, "right": c.right, "multiplier": c.multiplier,
            "quantity": self.quantity, "avg_cost": self.avg_cost,
            "market_price": self.market_price, "market_value": self.market_value,
            "contract": c.to_dict(),
        }


@dataclasses.dataclass
class AccountSnapshot:
    """Everything reconcile writes to `positions/{mode}/portfolio/latest` (bar `updated_at`)."""

    account: str
    net_liquidation: float
    available_funds: float
    holdings: list[Holding]
    open_orders: list[OrderState]  # of all clients, manual TWS orders included; non-terminal only
    base_currency: str = "USD"
    #: Currency → the value of one unit in the base currency (IB's ExchangeRate account values).
    fx_rates: dict[str, float] = dataclasses.field(default_factory=lambda: {"USD": 1.0})

    def to_document(self, updated_at: dt.datetime) -> dict[str, Any]:
        return {
            "updated_at": updated_at,
            "account": self.account,
            "net_liquidation": self.net_liquidation,
            "available_funds": self.available_funds,
            "base_currency": self.base_currency,
            "fx_rates": {**self.fx_rates, self.base_currency: 1.0},
            "holdings": [h.to_dict() for h in self.holdings],
            "open_orders": [o.to_dict() for o in self.open_orders],
        }


class Broker(abc.ABC):
    """A connection to one broker account. Use as a context manager or call `close()`."""

    mode: str  # "paper" | "live"

    @abc.abstractmethod
    def account_id(self) -> str:
        """The account this connection trades (e.g. 'DU1234567')."""

    @abc.abstractmethod
    def snapshot(self) -> AccountSnapshot:
        """Account id, net liquidation, available funds, holdings and all clients' open orders."""

    @abc.abstractmethod
    def history(self, contract: Contract, days: int, bar_size: str = "1 day",
                end: dt.date | None = None) -> list[Bar]:
        """Bars ending at `end` (default: the broker's today), oldest first, over `days` days."""

    @abc.abstractmethod
    def qualify(self, contract: Contract) -> Contract:
        """The contract completed by the broker (conId, primary exchange); raises UnknownContractError."""

    @abc.abstractmethod
    def place_order(self, request: OrderRequest) -> OrderState:
        """Send one order (after the account guard) and return its state once sent."""

    @abc.abstractmethod
    def orders_by_ref(self, prefix: str) -> list[OrderState]:
        """Every order of this account whose `orderRef` starts with `prefix`, of any client,
        whatever its state: working, filled, cancelled or rejected.

        The broker's open orders, completed orders and executions are all consulted, so an order
        that filled or was cancelled while nobody was connected is still found (IB keeps
        executions for the current day at least). An order known only from its executions comes
        back with its filled quantity. Used by recovery to learn which planned orders reached the
        broker; raises BrokerError when the broker cannot be asked.
        """

    @abc.abstractmethod
    def reserve_order_ids(self, count: int, floor: int = 0) -> list[int] | None:
        """`count` order ids for this connection, each above `floor` and above every id the broker
        handed out (IB: max(floor, nextValidId) onward; later ids never reuse them), or None when
        the broker numbers orders itself (the simulator)."""

    @abc.abstractmethod
    def cancel_order(self, order_id: int) -> None:
        """Ask the broker to cancel one of this connection's orders."""

    @abc.abstractmethod
    def wait(self, order_ids: Iterable[int], timeout: float, until: str = "acknowledged") -> dict[int, OrderState]:
        """Wait until every order is `acknowledged` (or `done`: terminal) or `timeout` seconds pass.

        Returns the latest state of each order; never raises on timeout (the caller reads the
        states and decides).
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection. Idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def check_account(account: str, mode: str, expected: str | None = None, *, placing: bool = True) -> None:
    """Refuse an account that does not match the mode: paper accounts start with 'DU', live ones don't.

    `expected` (from `config/{mode}.account`), when set, must match exactly. In live it must be set
    to place anything (`placing`, the default): real money is only traded on the account an operator
    named. Reconcile, which only reads, passes `placing=False`.
    Raises AccountMismatchError with the reason.
    """
    if mode not in ("paper", "live"):
        raise AccountMismatchError(f"unknown trading mode {mode!r}; expected 'paper' or 'live'")
    if not account:
        raise AccountMismatchError("the broker reported no account id; refusing to trade")
    is_paper = account.startswith("DU")
    if mode == "paper" and not is_paper:
        raise AccountMismatchError(
            f"mode is 'paper' but the connected account {account!r} is not a paper account (paper accounts start with 'DU')")
    if mode == "live" and is_paper:
        raise AccountMismatchError(
            f"mode is 'live' but the connected account {account!r} is a paper account")
    if expected and account != expected:
        raise AccountMismatchError(
            f"connected account {account!r} does not match config/{mode}.account = {expected!r}")
    if mode == "live" and placing and not expected:
        raise AccountMismatchError(
            f"config/live: field 'account' is not set; live trading places orders only on the account named "
            f"there (the broker is connected to {account!r}); nothing was placed")
