"""`IBBroker`: the `Broker` interface over IB Gateway / TWS, through ib_async's synchronous API.

Every public method returns the plain dataclasses of `lib.broker.base` and raises only the
errors of `lib.errors`; no ib_async or asyncio exception escapes. Outgoing messages go through a
`Pacer` (IB disconnects clients above 50 messages/s; the default here is 45) and historical-data
requests through a `HistoryPacer` (lib/pacing.py): IB's hard limits for bars of 30 s or less (60
requests per 10 minutes, no identical request within 15 s, at most 5 per contract, exchange and tick
type within 2 s), a configurable window for larger bars, and at most 50 requests open. Pass one
`hist_pacer` to every connection of a stage so one pacer governs all of its requests. A request IB
refuses for pacing raises `PacingViolationError` ("pacing violation"), which `lib.pacing.with_backoff`
retries.

Each IBBroker runs its ib_async `IB` on a private event loop in a daemon thread and hands every
request to it. So it works from any thread, inside Jupyter/papermill or an async program (where a
loop is already running and ib_async's own sync API would need nest_asyncio), and one
connection's drop never disturbs another's requests (ib_async's sync runner cancels whatever
runs in the thread when ANY connection there drops).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import math
import threading
import urllib.parse
from typing import Any, Callable, Coroutine, Iterable, Iterator
from zoneinfo import ZoneInfo

from ib_async import IB, Contract as IBContract, ExecutionFilter, LimitOrder, MarketOrder, Order
from ib_async.wrapper import RequestError

from lib.broker.base import (ORDER_TYPES, TERMINAL_STATUSES, UNACKNOWLEDGED_STATUSES, AccountSnapshot,
                             Bar, Broker, Contract, Holding, OrderRequest, OrderState, check_account)
from lib.errors import (AccountMismatchError, BrokerConnectionError, BrokerError, BrokerTimeoutError,
                        OrderRejectedError, PacingViolationError, PipelineError, SendUncertainError,
                        UnknownContractError)
from lib.pacing import HistoryPacer, Pacer

USUAL_PORTS = "4002 (IB Gateway paper), 4001 (IB Gateway live), 7497 (TWS paper), 7496 (TWS live)"
DEFAULT_MSG_RATE = 45  # per second; IB's hard limit is 50
#: Added to the windows of IB's hard historical-data rules: a request let go at t reaches IB a little later.
HIST_MARGIN = 0.5
#: A "N Y" duration covers N calendar years; a year had at least 248 XNYS sessions since 2000 (2001).
MIN_SESSIONS_PER_YEAR = 248
DAILY = "1 day"
#: IB's answers to a historical request refused for pacing (error 162 and, for more than 50 open
#: requests, IB's own sentence): https://interactivebrokers.github.io/tws-api/historical_limitations.html
PACING_TEXTS = ("pacing violation", "simultaneous api historical data requests")
UNSET_DOUBLE = 1.7976931348623157e308
NEW_YORK = ZoneInfo("America/New_York")

# ---- what an IB message tied to an order id means for that order --------------------------------
# IB sends errors, warnings and notices alike through `error(reqId, code, message)`. The codes come
# from IB's "Message Codes" table: https://interactivebrokers.github.io/tws-api/message_codes.html
# (continued as "Error Codes" at https://ibkrcampus.com/campus/ibkr-api-page/twsapi-doc/#api-error-codes).
# ib_async marks an order Cancelled on its own for every code outside its short warning list
# (wrapper.error), 10349 and the cancel answers 161/10148 included; the adapter reads the codes
# itself instead.
WARNING = "warning"  # informational: the order keeps working; noted in OrderState.warnings
REJECTED = "rejected"  # IB refused the order: it ends "Inactive" with `error`
MODIFY_REFUSED = "modify_refused"  # refuses a modification (the order works on); a new order: REJECTED
CANCEL_REFUSED = "cancel_refused"  # answers a cancel; the order's fate is unknown until IB reports it
CANCELLED = "cancelled"  # IB's own word that the order was cancelled

ORDER_MESSAGES: dict[int, tuple[str, str]] = {  # code: (kind, IB's text)
    399: (WARNING, "Order message error (e.g. 'Warning: your order will not be placed at the exchange until ...')"),
    404: (WARNING, "Shares for this order are not immediately available for short sale. "
                   "The order will be held while we attempt to locate the shares."),
    10349: (WARNING, "Order TIF was set to DAY based on order preset (seen from IB, missing in its table)"),
    104: (MODIFY_REFUSED, "Can't modify a filled order."),
    105: (MODIFY_REFUSED, "Order being modified does not match original order."),
    110: (MODIFY_REFUSED, "The price does not conform to the minimum price variation for this contract."),
    321: (MODIFY_REFUSED, "Server error when validating an API client request."),
    329: (MODIFY_REFUSED, "Order modify failed. Cannot change to the new order type."),
    161: (CANCEL_REFUSED, "Cancel attempted when order is not in a cancellable state. Order permId ="),
    10147: (CANCEL_REFUSED, "OrderId <OrderId> that needs to be cancelled is not found."),
    10148: (CANCEL_REFUSED, "OrderId <OrderId> that needs to be cancelled can not be cancelled, state: <State>."),
    202: (CANCELLED, "Order cancelled - Reason:"),
    103: (REJECTED, "Duplicate order id."),
    200: (REJECTED, "No security definition has been found for the request."),
    201: (REJECTED, "Order rejected - Reason:"),
    203: (REJECTED, "The security <security> is not available or allowed for this account."),
}
#: IB's "Warning Message Codes" (e.g. 2109 "Order Event Warning: Attribute 'Outside Regular Trading
#: Hours' is ignored based on the order type and destination. PlaceOrder is now processed.", 2137
#: "The closing order quantity is greater than your current position.").
WARNING_RANGE = range(2100, 2200)
# Any other code tied to an order id (163, 434, 10006, ...) means IB refused the order: REJECTED.


def order_message_kind(code: int, acknowledged: bool = False) -> str:
    """What IB message `code`, tied to an order, means for it (see ORDER_MESSAGES).

    `acknowledged`: IB had acknowledged the order, so a modify refusal leaves it working.
    """
    if code in WARNING_RANGE:
        return WARNING
    kind = ORDER_MESSAGES.get(code, (REJECTED, ""))[0]
    if kind == MODIFY_REFUSED:
        return WARNING if acknowledged else REJECTED
    return kind


# Codes that answer a request (not an order) without failing it.
_REQUEST_NOTICE_CODES = frozenset({165, 10167})
#: Order types whose lmtPrice is a limit price.
LIMIT_ORDER_TYPES = frozenset({"LMT", "LOC", "STP LMT", "LIT", "TRAIL LIMIT"})
_URL_KEYS = frozenset({"client_id", "timeout", "account", "msg_rate"})


async def _next_emit(event: Any) -> Any:
    """The arguments of an eventkit event's next emit."""
    return await event


def _finite(value: Any, positive: bool = False) -> float | None:
    """IB reports a missing price as NaN (or UNSET_DOUBLE); the bus stores None instead."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number) or number == UNSET_DOUBLE or (positive and number <= 0):
        return None
    return number


def ib_duration(sessions: int) -> str:
    """IB's durationStr for `sessions` daily bars: "N D" counts sessions (IB aligns D to trading
    days: "20 D" up to an end date returns the 20 sessions ending there) and takes at most 365; longer
    ones must be whole calendar years ("N Y"), enough of them to hold `sessions`."""
    if sessions <= 365:
        return f"{sessions} D"
    return f"{math.ceil(sessions / MIN_SESSIONS_PER_YEAR)} Y"


def _is_failure(code: int) -> bool:
    """Whether an error code tied to a request id means that request failed."""
    return code not in _REQUEST_NOTICE_CODES and order_message_kind(code) == REJECTED


@dataclasses.dataclass
class _Guess:
    """A status ib_async set on its own (after an error, or a local cancel), not reported by IB."""

    real: str  # the status before it (IB's or ib_async's own PendingSubmit)
    local: str  # what ib_async set
    kind: str  # the order_message_kind of the message (or CANCEL_REFUSED for a local cancel)


@dataclasses.dataclass
class _Book:
    """What the adapter knows of one ib_async Trade beyond ib_async's own state (loop thread only)."""

    trade: Any
    ib_status: str | None = None  # the last status IB reported in an orderStatus message
    guess: _Guess | None = None
    failure: tuple[int, str] | None = None  # the rejection (code, message)
    warnings: list[str] = dataclasses.field(default_factory=list)


class _LoopThread:
    """A private asyncio loop on a daemon thread: the only place a broker's IB object runs."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float) -> Any:
        """Run `coro` on the loop, cancelled after `timeout` s; returns its result or raises its error."""
        if not self._thread.is_alive():
            coro.close()
            raise ConnectionError("the broker's event loop has stopped")
        future = asyncio.run_coroutine_threadsafe(asyncio.wait_for(coro, timeout), self.loop)
        return future.result(timeout + 5)  # wait_for ends it in time; the margin covers a stuck loop

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call a plain function on the loop thread and return its result."""

        async def call() -> Any:
            return fn(*args)

        return self.run(call(), 30)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)


class IBBroker(Broker):
    """One API connection (one client id) to IB Gateway or TWS, trading one account.

    Rejections: `place_order` returns an OrderState with status "Inactive" and `error` set
    ("IB error 201: Order rejected - reason: ...") when IB rejects the order; it raises
    OrderRejectedError only for requests that are invalid before anything is sent (quantity
    <= 0, unknown order type or action, a missing or superfluous limit price, a reused order id).
    IB's informational messages about an order (399, 404, 2109, 10349, ...; see ORDER_MESSAGES)
    land in `OrderState.warnings` and leave its status alone. `OrderState.confirmed` is False
    while a terminal status is only ib_async's local guess (its "Cancelled" after IB refused a
    cancel with 161/10147/10148); `wait(until="done")` waits for IB's own word.

    Crash safety: `reserve_order_ids` hands out ids above a persisted floor and IB's nextValidId,
    `place_order` sends with such an id and raises SendUncertainError when the connection drops
    between sending and IB's acknowledgement, and `orders_by_ref` tells afterwards, from IB's
    open orders, completed orders and executions, which orders reached IB.
    """

    def __init__(self, host: str, port: int, client_id: int, mode: str,
                 expected_account: str | None = None, timeout: float = 10.0,
                 account: str | None = None, msg_rate: int = DEFAULT_MSG_RATE,
                 msg_pacer: Pacer | None = None, hist_pacer: HistoryPacer | Pacer | None = None,
                 ack_timeout: float | None = None):
        """Connect (blocking) and synchronise.

        `account` picks one of several managed accounts; `expected_account` is the configured
        `config/{mode}.account` that the account guard compares before each order. Raises
        BrokerConnectionError when the connection fails, AccountMismatchError when `account` is
        not managed by the login (or the login manages several and none was named).

        `hist_pacer`: the `HistoryPacer` every historical request goes through (default: one of its
        own); a plain `Pacer` paces every historical request alike, whatever its bar size.
        """
        self.host, self.port, self.client_id = host, int(port), int(client_id)
        self.mode = mode
        self.expected_account = expected_account
        self.timeout = float(timeout)
        self.ack_timeout = min(self.timeout, 5.0) if ack_timeout is None else float(ack_timeout)
        self._msg_pacer = msg_pacer or Pacer(int(msg_rate), 1.0)
        self._hist_pacer = hist_pacer or HistoryPacer(margin=HIST_MARGIN)
        # The attributes below are touched on the loop thread only.
        self._trades: dict[int, Any] = {}  # order id -> ib_async Trade, for orders placed here
        self._errors: dict[int, tuple[int, str]] = {}  # request id -> failing (code, message)
        self._books: dict[int, _Book] = {}  # id(trade) -> what IB said of it beyond ib_async's state
        self._id_waiters: list[asyncio.Future] = []  # reserve_order_ids waiting for nextValidId
        self._reserved_next = 0  # every id below this was reserved by this connection
        self._last_api_error = ""
        self._last_contract_error = ""
        self._contracts: dict[tuple, Any] = {}  # instrument → IB's qualified contract, per connection
        self._closed = False
        self._account = ""
        self._thread = _LoopThread(f"ib-broker-{self.host}:{self.port}-{self.client_id}")
        self._ib: IB = self._call(self._make_ib)
        self._account = self._connect(account)

    @classmethod
    def from_url(cls, url: str, mode: str, expected_account: str | None = None, **options) -> "IBBroker":
        """Open `ib://HOST:PORT?client_id=N[&timeout=S][&account=ID][&msg_rate=R]`.

        Keyword `options` (same names, plus msg_pacer/hist_pacer/ack_timeout) override the URL.
        Raises ValueError for a malformed URL, BrokerConnectionError when it cannot connect.
        """
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "ib" or not parts.hostname or not parts.port:
            raise ValueError(f"bad IB broker URL {url!r}; expected 'ib://HOST:PORT?client_id=N'")
        query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
        unknown = set(query) - _URL_KEYS
        if unknown:
            raise ValueError(f"unknown parameter(s) {sorted(unknown)} in {url!r}; allowed: {sorted(_URL_KEYS)}")
        settings: dict[str, Any] = {}
        try:
            if "client_id" in query:
                settings["client_id"] = int(query["client_id"])
            if "timeout" in query:
                settings["timeout"] = float(query["timeout"])
            if "msg_rate" in query:
                settings["msg_rate"] = int(query["msg_rate"])
        except ValueError as exc:
            raise ValueError(f"bad number in IB broker URL {url!r}: {exc}") from None
        if query.get("account"):
            settings["account"] = query["account"]
        settings.update(options)
        if "client_id" not in settings:
            raise ValueError(f"IB broker URL {url!r} lacks client_id (e.g. 'ib://127.0.0.1:4002?client_id=1')")
        return cls(parts.hostname, parts.port, mode=mode, expected_account=expected_account, **settings)

    # ---- the loop thread -----------------------------------------------------------------------
    def _run(self, coro: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
        """Run a coroutine on the broker's loop thread, bounded by `timeout` (default: the request timeout)."""
        return self._thread.run(coro, timeout or self.timeout)

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._thread.call(fn, *args)

    def _make_ib(self) -> IB:
        ib = IB()  # created on the loop thread: its futures and events belong to that loop
        ib.errorEvent += self._on_error
        ib.client.apiError += self._on_api_error
        # ib_async's decoder looks its wrapper methods up per message, so these wrap the originals:
        # the adapter learns which statuses IB itself reported, which ones ib_async guessed after
        # an error, and the nextValidId answers ib_async ignores once connected.
        wrapper = ib.wrapper
        order_status, error, next_valid_id = wrapper.orderStatus, wrapper.error, wrapper.nextValidId

        def on_order_status(*args: Any) -> None:
            order_status(*args)
            order_id, status, perm_id, client_id = args[0], args[1], args[5], args[8]
            trade = wrapper.trades.get(wrapper.orderKey(client_id, order_id, perm_id))
            if trade is not None:
                book = self._book(trade)
                book.ib_status, book.guess = status, None
                if status in ("PreSubmitted", "Submitted"):
                    book.failure = None  # IB works the order: an earlier refusal was not its end

        def on_error(req_id: int, code: int, message: str, advanced: str = "") -> None:
            trade = wrapper.trades.get((wrapper.clientId, req_id)) if req_id > 0 else None
            before = trade.orderStatus.status if trade is not None else None
            error(req_id, code, message, advanced)
            if trade is not None:
                self._on_order_message(trade, before, code, message)

        def on_next_valid_id(order_id: int) -> None:
            next_valid_id(order_id)
            waiters, self._id_waiters = self._id_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(order_id)

        wrapper.orderStatus, wrapper.error, wrapper.nextValidId = on_order_status, on_error, on_next_valid_id
        return ib

    def _book(self, trade: Any) -> _Book:
        book = self._books.get(id(trade))
        if book is None or book.trade is not trade:
            book = self._books[id(trade)] = _Book(trade)
        return book

    def _on_order_message(self, trade: Any, before: str, code: int, message: str) -> None:
        """(Loop thread) Classify an IB message about one of this client's orders (see ORDER_MESSAGES)."""
        book = self._book(trade)
        real = book.guess.real if book.guess and book.guess.local == before else before
        acknowledged = book.ib_status is not None or real not in UNACKNOWLEDGED_STATUSES
        kind = order_message_kind(code, acknowledged)
        if kind == WARNING:
            book.warnings.append(f"IB warning {code}: {message}")
        elif kind == REJECTED:
            book.failure = (code, message)
        after = trade.orderStatus.status
        if after != before:  # ib_async changed the status on its own (Cancelled, ValidationError)
            book.guess = _Guess(real=real, local=after, kind=kind)

    # ---- connection ----------------------------------------------------------------------------
    @property
    def _where(self) -> str:
        return f"{self.host}:{self.port} (client id {self.client_id})"

    def _connect(self, wanted_account: str | None) -> str:
        """Connect and synchronise, failing fast on a refused or closed socket; returns the account."""
        self._pace(7)  # startApi and the six synchronisation requests
        try:
            self._run(self._connect_async(), timeout=3 * self.timeout + 1)  # connectAsync bounds each step
        except (Exception, asyncio.CancelledError) as exc:
            self.close()
            raise BrokerConnectionError(self._connect_message(exc)) from None
        accounts = self._call(self._ib.managedAccounts)
        if wanted_account:
            if wanted_account not in accounts:
                self.close()
                raise AccountMismatchError(
                    f"account {wanted_account!r} is not managed by the IB login at {self._where}; "
                    f"it manages {accounts}")
            return wanted_account
        if len(accounts) == 1:
            return accounts[0]
        if self.expected_account in accounts:
            return self.expected_account
        self.close()
        raise AccountMismatchError(
            f"the IB login at {self._where} manages {accounts or 'no accounts'}; name one with '&account=...'")

    async def _connect_async(self) -> None:
        # ib_async waits out its whole timeout when the gateway closes the socket during the
        # handshake (e.g. client id in use); racing its apiError event fails fast instead.
        # No account is passed: ib_async would subscribe to it before we could check it is managed
        # (snapshot subscribes to the checked one).
        connecting = asyncio.ensure_future(self._ib.connectAsync(
            self.host, self.port, self.client_id, timeout=self.timeout, raiseSyncErrors=True))
        failed = asyncio.ensure_future(_next_emit(self._ib.client.apiError))
        done, _ = await asyncio.wait({connecting, failed}, return_when=asyncio.FIRST_COMPLETED)
        failed.cancel()
        if connecting not in done:
            connecting.cancel()
            with contextlib.suppress(BaseException):
                await connecting
            raise ConnectionError(failed.result())
        connecting.result()

    def _connect_message(self, exc: BaseException) -> str:
        if isinstance(exc, ConnectionRefusedError):
            reason = "connection refused"
        elif isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
            reason = f"no answer within {self.timeout:g} s"
        elif "already in use" in (self._last_api_error + str(exc)):
            reason = f"client id {self.client_id} is already in use by another connection"
        else:
            reason = str(exc) or type(exc).__name__
        return (f"cannot connect to IB at {self.host}:{self.port} with client id {self.client_id}: {reason}. "
                f"Check that IB Gateway or TWS runs there with the API enabled; the usual ports are {USUAL_PORTS}.")

    def _on_error(self, req_id: int, code: int, message: str, _contract: Any) -> None:
        # Errors about orders are read by the wrapped wrapper.error (_on_order_message).
        if req_id >= 0 and _is_failure(code) and (self._ib.wrapper.clientId, req_id) not in self._ib.wrapper.trades:
            self._errors[req_id] = (code, message)
        if code == 326:
            self._last_api_error = message
        if code == 200:
            self._last_contract_error = f"IB error 200: {message}"

    def _on_api_error(self, message: str) -> None:
        self._last_api_error = message

    def _lost_message(self) -> str:
        why = f" ({self._last_api_error.rstrip('.')})" if self._last_api_error else ""
        return (f"the connection to IB at {self._where} was lost{why}; "
                f"reconnect once IB Gateway/TWS is back (usual ports: {USUAL_PORTS})")

    def _ensure_connected(self) -> None:
        if self._closed:
            raise BrokerConnectionError(f"this IB connection to {self._where} was closed")

        async def connected() -> bool:
            await asyncio.sleep(0.005)  # take in a socket close that is on its way
            return self._ib.isConnected()

        if not self._run(connected()):
            raise BrokerConnectionError(self._lost_message())

    def _pace(self, messages: int = 1) -> None:
        for _ in range(messages):
            self._msg_pacer.acquire()

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Translate library exceptions raised while doing `what` into lib.errors types."""
        try:
            yield
        except PipelineError:
            raise
        except (TimeoutError, asyncio.TimeoutError) as exc:
            raise BrokerTimeoutError(f"IB at {self._where} did not answer in time ({self.timeout:g} s) "
                                     f"while trying to {what}") from exc
        except (ConnectionError, OSError, asyncio.CancelledError, concurrent.futures.CancelledError) as exc:
            raise BrokerConnectionError(f"the connection to IB at {self._where} failed while trying to "
                                        f"{what}: {exc or type(exc).__name__}") from exc
        except RequestError as exc:
            raise BrokerError(f"IB refused to {what}: error {exc.code}: {exc.message}") from exc
        except Exception as exc:
            raise BrokerError(f"IB request failed while trying to {what}: {exc!r}") from exc

    async def _until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """(Loop thread) Process messages until `predicate()` holds, `timeout` passes or the socket closes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            left = deadline - loop.time()
            if left <= 0 or not self._ib.isConnected():
                return predicate()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(_next_emit(self._ib.updateEvent), min(left, 0.25))
        return True

    def _wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Block until `predicate()` (evaluated on the loop thread) holds or `timeout` passes."""
        return self._run(self._until(predicate, timeout), timeout + 1)

    def close(self) -> None:
        """Disconnect and stop the loop thread. Idempotent; never raises."""
        if self._closed:
            return
        self._closed = True

        async def disconnect() -> None:
            self._ib.errorEvent -= self._on_error
            self._ib.client.apiError -= self._on_api_error
            self._ib.disconnect()
            await asyncio.sleep(0.01)  # let the transport close before the loop stops

        with contextlib.suppress(BaseException):
            if getattr(self, "_ib", None) is not None:
                self._run(disconnect(), 5)
        self._thread.stop()

    # ---- conversions ---------------------------------------------------------------------------
    @staticmethod
    def _ib_contract(c: Contract) -> IBContract:
        return IBContract(secType=c.secType, symbol=c.symbol, currency=c.currency, exchange=c.exchange,
                          primaryExchange=c.primaryExchange, conId=c.conId, strike=c.strike, right=c.right,
                          lastTradeDateOrContractMonth=c.lastTradeDateOrContractMonth,
                          multiplier=c.multiplier)

    @staticmethod
    def _lib_contract(c: IBContract) -> Contract:
        sec_type = c.secType or "STK"
        exchange, primary = c.exchange, c.primaryExchange
        if sec_type == "STK":  # stocks route SMART; a reported listing exchange is the primary one
            primary = primary or (exchange if exchange not in ("", "SMART") else "")
            exchange = "SMART"
        return Contract(symbol=c.symbol, secType=sec_type, currency=c.currency or "USD",
                        exchange=exchange or "SMART", primaryExchange=primary or "",
                        lastTradeDateOrContractMonth=c.lastTradeDateOrContractMonth or "",
                        strike=float(c.strike or 0.0), right=c.right or "", multiplier=c.multiplier or "",
                        conId=int(c.conId or 0))

    def _status(self, trade: Any) -> tuple[str, str | None, bool]:
        """(status, error, confirmed) of a trade.

        A rejected order (error 201 and friends, see ORDER_MESSAGES) reads "Inactive" with the
        error. Warnings leave the status as IB last reported it. ib_async's local "Cancelled" after
        a cancel was refused (161, 10147, 10148) stays "Cancelled" but unconfirmed until IB reports
        the order's status itself.
        """
        status = trade.orderStatus.status
        book = self._books.get(id(trade))
        if book is not None and book.trade is not trade:
            book = None
        guess = book.guess if book is not None and book.guess and book.guess.local == status else None
        if guess is not None:
            status = guess.real
        if status == "ValidationError":  # ib_async's marker for a warning: the order lives on
            status = next((e.status for e in reversed(trade.log) if e.status != "ValidationError"), "Submitted")
        failure = book.failure if book is not None else None
        if failure is not None and status not in ("Filled", "Submitted", "PreSubmitted", "PendingCancel"):
            filled = trade.orderStatus.filled or sum(f.execution.shares for f in trade.fills)
            return ("Cancelled" if filled else "Inactive"), f"IB error {failure[0]}: {failure[1]}", True
        if guess is not None and guess.kind == CANCELLED:
            return "Cancelled", None, True
        if guess is not None and guess.kind == CANCEL_REFUSED:
            return guess.local, None, False
        return status, None, True

    def _state(self, trade: Any) -> OrderState:
        o, s = trade.order, trade.orderStatus
        order_id, client_id = self._ids(trade)
        status, error, confirmed = self._status(trade)
        filled = s.filled or sum(f.execution.shares for f in trade.fills)
        remaining = s.remaining if (s.filled or s.remaining) else max(float(o.totalQuantity) - filled, 0.0)
        if status in ("Cancelled", "ApiCancelled", "Inactive"):
            remaining = 0.0
        limit = _finite(o.lmtPrice) if o.orderType in LIMIT_ORDER_TYPES else None
        book = self._books.get(id(trade))
        warnings = list(book.warnings) if book is not None and book.trade is trade else []
        return OrderState(
            order_id=order_id, perm_id=o.permId or s.permId, client_id=client_id,
            contract=self._lib_contract(trade.contract), action=o.action,
            quantity=float(o.totalQuantity), order_type=o.orderType, limit_price=limit, tif=o.tif,
            order_ref=o.orderRef, status=status, filled=float(filled), remaining=float(remaining),
            avg_fill_price=float(s.avgFillPrice or 0.0),
            commission=round(float(sum(f.commissionReport.commission for f in trade.fills)), 6), error=error,
            aux_price=_finite(o.auxPrice), parent_id=int(o.parentId or s.parentId or 0),
            oca_group=o.ocaGroup or "", warnings=warnings, confirmed=confirmed)

    def _find_trade(self, order_id: int) -> Any | None:
        """This client's order `order_id`: placed here, or loaded from IB at connect.

        Orders completed before this connection arrive without their order id (IB's
        completedOrder omits it); their executions carry it, so filled ones are found too.
        """
        trade = self._trades.get(order_id) or self._ib.wrapper.trades.get((self.client_id, order_id))
        if trade is None:
            trade = next((t for t in self._ib.wrapper.trades.values() if any(
                f.execution.orderId == order_id and f.execution.clientId == self.client_id for f in t.fills)), None)
        return trade

    @staticmethod
    def _ids(trade: Any) -> tuple[int, int]:
        """(order id, client id) of a trade, taken from its executions when the order lacks them."""
        o, s = trade.order, trade.orderStatus
        if not o.orderId and trade.fills:
            return trade.fills[0].execution.orderId, trade.fills[0].execution.clientId
        return o.orderId, o.clientId or s.clientId

    # ---- Broker --------------------------------------------------------------------------------
    def account_id(self) -> str:
        """The account this connection trades (from IB's managedAccounts)."""
        return self._account

    def snapshot(self) -> AccountSnapshot:
        """Account values, holdings (with market price and value) and ALL clients' open orders.

        Refreshes account updates, positions and open orders from IB (three requests); orders in
        a terminal status are left out.
        """
        with self._guard("read the account snapshot"):
            self._ensure_connected()
            self._pace(3)
            return self._run(self._snapshot_async(), 3 * self.timeout)

    async def _snapshot_async(self) -> AccountSnapshot:
        account = self._account
        await asyncio.wait_for(self._ib.reqAccountUpdatesAsync(account), self.timeout)
        positions = await asyncio.wait_for(self._ib.reqPositionsAsync(), self.timeout)
        trades = await asyncio.wait_for(self._ib.reqAllOpenOrdersAsync(), self.timeout)
        net = await self._account_value("NetLiquidation")
        available = await self._account_value("AvailableFunds")
        items = {item.contract.conId: item for item in self._ib.portfolio(account)}
        holdings = []
        for p in positions:
            if p.account != account or not p.position:
                continue
            item = items.get(p.contract.conId)
            holdings.append(Holding(
                contract=self._lib_contract(item.contract if item else p.contract),
                quantity=float(p.position), avg_cost=float(p.avgCost),
                market_price=_finite(item.marketPrice if item else None, positive=True),
                market_value=_finite(item.marketValue if item else None)))
        orders = [self._state(t) for t in trades if t.order.account in ("", account)]
        values = self._ib.accountValues(account)
        base = next((v.currency for v in values if v.tag == "NetLiquidation" and v.currency not in ("", "BASE")), "USD")
        rates = {v.currency: rate for v in values if v.tag == "ExchangeRate" and v.currency not in ("", "BASE")
                 and (rate := _finite(v.value, positive=True)) is not None}
        return AccountSnapshot(account=account, net_liquidation=net, available_funds=available,
                               base_currency=base, fx_rates={**rates, base: 1.0},
                               holdings=holdings, open_orders=[o for o in orders if not o.is_terminal])

    async def _account_value(self, tag: str) -> float:
        """A tag from account updates in the base currency (IB reports these tags only in it)."""
        values = [v for v in self._ib.accountValues(self._account) if v.tag == tag and v.currency not in ("", "BASE")]
        if not values:  # fall back to the account summary: one more message through the pacer
            await asyncio.get_running_loop().run_in_executor(None, self._pace)
            summary = await asyncio.wait_for(self._ib.accountSummaryAsync(self._account), self.timeout)
            values = [v for v in summary if v.tag == tag]
        if not values:
            raise BrokerError(f"IB reported no {tag} for account {self._account}")
        return float(values[0].value)

    @property
    def history_pacer(self) -> HistoryPacer | Pacer:
        """The pacer every historical request of this connection goes through."""
        return self._hist_pacer

    def history(self, contract: Contract, days: int, bar_size: str = "1 day",
                end: dt.date | None = None) -> list[Bar]:
        """The last `days` bars (trading sessions for daily bars) up to `end`, oldest first.

        TRADES, regular trading hours, as one request of "`days` D" (IB counts D in sessions: up to
        `end`, the last `days` sessions) or, beyond 365 days, of whole calendar years, trimmed.
        Paced by `history_pacer`. Raises UnknownContractError for an unknown contract,
        PacingViolationError when IB refuses it for pacing (retry after a back-off) and BrokerError
        when IB refuses it otherwise.
        """
        return self._history(contract, days, bar_size, end, "TRADES")

    def adjusted_history(self, contract: Contract, days: int, end: dt.date | None = None) -> list[Bar]:
        """IB only, an extra beside `history`: the last `days` daily bars up to `end` adjusted for
        splits and dividends (ADJUSTED_LAST), oldest first.

        IB serves ADJUSTED_LAST only up to now (an end date is refused: "End date not supported with
        adjusted last"), so the request reaches back from now over the sessions after `end` as well,
        and those bars are dropped. Every bar before the latest split or dividend changes when one
        happens: keep the raw TRADES bars as the record and these as the adjusted view. Same errors
        and pacing as `history`.
        """
        return self._history(contract, days, DAILY, end, "ADJUSTED_LAST")

    def _history(self, contract: Contract, days: int, bar_size: str, end: dt.date | None, what: str) -> list[Bar]:
        if days < 1:
            raise ValueError(f"days must be >= 1, got {days}")
        with self._guard(f"fetch {bar_size} {what} bars of {contract.symbol}"):
            self._ensure_connected()
            if what == "ADJUSTED_LAST":
                end_text, count = "", days + self._sessions_after(end) if end is not None else days
            else:
                # A bare date would go out as that day's 23:59:59 in the local zone; name New York's instead.
                end_text, count = ("" if end is None else f"{end:%Y%m%d} 23:59:59 US/Eastern"), days
            duration = ib_duration(count)
            # IB's rules count per contract, exchange and tick type; identical = every field alike.
            key = f"{contract.conId or contract.symbol}@{contract.exchange}:{what}"
            identity = (key, contract.symbol, contract.secType, contract.currency, contract.primaryExchange,
                        end_text, duration, bar_size, what, True)
            with self._paced(key, bar_size, identity):
                self._pace()
                return self._run(self._history_async(contract, days, bar_size, end, what, end_text, duration),
                                 self.timeout + 1)

    @contextlib.contextmanager
    def _paced(self, key: str, bar_size: str, identity: tuple) -> Iterator[None]:
        """Hold the historical pacer's permission (and an open-request slot) around one request."""
        pacer = self._hist_pacer
        if isinstance(pacer, HistoryPacer):
            with pacer.request(key, bar_size, identity):
                yield
        else:
            pacer.acquire()
            yield

    @staticmethod
    def _sessions_after(end: dt.date) -> int:
        """XNYS sessions after `end` up to today in New York (ADJUSTED_LAST reaches back from now)."""
        import pandas as pd

        from lib import sessions
        today = dt.datetime.now(NEW_YORK).date()
        if today <= end:
            return 0
        found = sessions.calendar().sessions_in_range(pd.Timestamp(end + dt.timedelta(days=1)), pd.Timestamp(today))
        return len(found) + 1  # one spare: a session whose bar IB already has before the calendar's day turns

    async def _history_async(self, contract: Contract, days: int, bar_size: str, end: dt.date | None, what: str,
                             end_text: str, duration: str) -> list[Bar]:
        bars = await self._ib.reqHistoricalDataAsync(
            self._ib_contract(contract), end_text, duration, bar_size, what, True, formatDate=2,
            timeout=self.timeout)
        failure = self._errors.pop(bars.reqId, None)
        if failure and failure[0] == 200:
            raise UnknownContractError(f"IB does not know the contract {contract.symbol!r}: {failure[1]}")
        if failure and any(text in failure[1].lower() for text in PACING_TEXTS):
            raise PacingViolationError(
                f"IB refused {bar_size} {what} bars of {contract.symbol}: error {failure[0]}: {failure[1]}"
                + ("" if "pacing violation" in failure[1].lower() else " (a pacing violation)"))
        if failure:
            raise BrokerError(f"IB refused {bar_size} bars of {contract.symbol}: error {failure[0]}: {failure[1]}")
        if not bars:  # ib_async returns an empty list when its own timeout passed
            if not self._ib.isConnected():
                raise BrokerConnectionError(self._lost_message())
            raise BrokerTimeoutError(f"IB at {self._where} sent no {bar_size} bars of {contract.symbol} "
                                     f"within {self.timeout:g} s")
        out = []
        for b in bars:
            date = b.date.astimezone(dt.timezone.utc) if isinstance(b.date, dt.datetime) else b.date
            out.append(Bar(date=date, open=float(b.open), high=float(b.high), low=float(b.low),
                           close=float(b.close), volume=float(b.volume)))
        if bar_size == DAILY:  # daily bars: the last `days` sessions up to `end`
            if end is not None:
                out = [b for b in out if b.date <= end]
            out = out[-days:]
        return out  # intraday bars: everything the duration returned

    def qualify(self, contract: Contract) -> Contract:
        """The contract completed by IB (conId, primary exchange); raises UnknownContractError with
        IB's reason when it does not know it or finds several. Cached per connection."""
        with self._guard(f"qualify {contract.symbol}"):
            self._ensure_connected()
            return self._lib_contract(self._qualified(contract))

    def _qualified(self, contract: Contract) -> IBContract:
        """IB's own contract for `contract` (reqContractDetails once per instrument and connection)."""
        key = (contract.secType, contract.symbol, contract.currency, contract.lastTradeDateOrContractMonth,
               contract.strike, contract.right, contract.multiplier, contract.primaryExchange, contract.conId)
        found = self._contracts.get(key)
        if found is not None:
            return found
        self._pace()
        self._last_contract_error = ""
        result = self._run(self._ib.qualifyContractsAsync(self._ib_contract(contract), returnAll=True))
        what = f"{contract.symbol!r} ({contract.secType}, {contract.currency}, {contract.exchange})"
        if not result or result[0] is None:
            why = f": {self._last_contract_error}" if self._last_contract_error else ""
            raise UnknownContractError(f"IB does not know the contract {what}{why}")
        if isinstance(result[0], list):
            choices = ", ".join(f"{c.symbol} {c.secType} {c.primaryExchange or c.exchange} conId {c.conId}"
                                for c in result[0] if c is not None)
            raise UnknownContractError(f"IB finds the contract {what} ambiguous: {choices}; give conId or "
                                       "primaryExchange")
        self._contracts[key] = result[0]
        return result[0]

    def place_order(self, request: OrderRequest) -> OrderState:
        """Check the account guard, send the order, and return its state once IB acknowledged it.

        Uses `request.order_id` when set (from `reserve_order_ids`), ib_async's next id otherwise.
        Waits up to `ack_timeout` for the acknowledgement (or rejection); a later state comes from
        `wait`, and a state still "PendingSubmit" means IB did not answer in time. A refused order
        comes back "Inactive" with `error` (e.g. "IB error 103: Duplicate order id" for a reused
        id: it is never retried with another id); informational messages land in `warnings`.

        Raises AccountMismatchError (nothing sent) when the account does not fit the mode or the
        configured account, OrderRejectedError for a request invalid before sending (including an
        order id this connection knows for another order), BrokerConnectionError when the
        connection is down before sending, and SendUncertainError (a BrokerConnectionError naming
        the order id and orderRef) when it drops after the order was sent and before IB
        acknowledged it: the order may be working at IB, so look it up by orderRef
        (`orders_by_ref`) before sending anything again.
        """
        with self._guard(f"place an order for {request.contract.symbol}"):
            self._ensure_connected()
            check_account(self._account, self.mode, self.expected_account)
            order = self._ib_order(request)
            # Orders go out as IB's own qualified contract; an unknown or ambiguous one is never sent.
            contract = self._qualified(request.contract)
            self._pace()
            return self._run(self._place_async(request, order, contract), self.ack_timeout + 1)

    async def _place_async(self, request: OrderRequest, order: Order, contract: IBContract) -> OrderState:
        if request.order_id is not None:
            if self._find_trade(request.order_id) is not None:
                # ib_async would send it as a modification of that order.
                raise OrderRejectedError(
                    f"refusing to send {request.action} {request.quantity} {request.contract.symbol}: order id "
                    f"{request.order_id} is already used by an order of client id {self.client_id} "
                    "(IB would answer 103 'Duplicate order id')")
            order.orderId = request.order_id
            self._ib.client.updateReqId(request.order_id + 1)
        trade = self._ib.placeOrder(contract, order)  # raises when not connected
        self._trades[order.orderId] = trade
        if not await self._until(lambda: self._acknowledged(trade), self.ack_timeout) and not self._ib.isConnected():
            raise SendUncertainError(
                f"the connection to IB at {self._where} dropped after order {order.orderId} "
                f"({request.action} {request.quantity} {request.contract.symbol}, orderRef "
                f"{request.order_ref!r}) was sent and before IB acknowledged it; it may or may not have "
                "reached IB: look it up by orderRef after reconnecting, do not send it again blindly",
                order.orderId, request.order_ref)
        return self._state(trade)

    def _ib_order(self, r: OrderRequest) -> Order:
        """The ib_async order for a request; raises OrderRejectedError when it is invalid."""
        problem = None
        if r.action not in ("BUY", "SELL"):
            problem = f"action must be BUY or SELL, not {r.action!r}"
        elif not r.quantity or r.quantity <= 0:
            problem = f"quantity must be positive, got {r.quantity}"
        elif r.order_type not in ORDER_TYPES:
            problem = f"order type must be one of {ORDER_TYPES}, not {r.order_type!r}"
        elif r.order_type in ("LMT", "LOC") and (r.limit_price is None or r.limit_price <= 0):
            problem = f"a {r.order_type} order needs a positive limit price"
        elif r.order_type in ("MKT", "MOC") and r.limit_price is not None:
            problem = f"a {r.order_type} order takes no limit price"
        elif r.order_id is not None and (not isinstance(r.order_id, int) or r.order_id <= 0):
            problem = f"an explicit order id must be a positive integer, got {r.order_id!r}"
        if problem:
            raise OrderRejectedError(f"refusing to send {r.action} {r.quantity} {r.contract.symbol}: {problem}")
        common = dict(tif=r.tif, orderRef=r.order_ref, account=self._account)
        if r.order_type == "MKT":
            return MarketOrder(r.action, r.quantity, **common)
        if r.order_type == "LMT":
            return LimitOrder(r.action, r.quantity, r.limit_price, **common)
        return Order(orderType=r.order_type, action=r.action, totalQuantity=r.quantity,
                     lmtPrice=r.limit_price if r.order_type == "LOC" else UNSET_DOUBLE, **common)

    def _acknowledged(self, trade: Any) -> bool:
        return self._status(trade)[0] not in UNACKNOWLEDGED_STATUSES

    def _done(self, trade: Any) -> bool:
        """Terminal as IB reported it (not ib_async's guess), with every fill's commission report
        (which trails the fill)."""
        status, _error, confirmed = self._status(trade)
        return (status in TERMINAL_STATUSES and confirmed
                and all(f.commissionReport.execId for f in trade.fills))

    def _own_trade(self, order_id: int) -> Any:
        trade = self._find_trade(order_id)
        if trade is None:
            raise BrokerError(f"order {order_id} is not an order of client id {self.client_id} at {self._where}")
        return trade

    def orders_by_ref(self, prefix: str) -> list[OrderState]:
        """Every order of this account whose orderRef starts with `prefix`, of any client id, in
        any state, as IB reports it now.

        Asks IB for all open orders, the completed orders (API and manual ones) and the executions
        (three messages), and merges them by permId (else by client id and order id). The filled
        quantity is the larger of the reported one and the sum of the executions; an order known
        only from its executions comes back "Filled" with quantity = filled (its type, limit and
        tif are unknown: "", None, ""). Raises BrokerError (BrokerConnectionError,
        BrokerTimeoutError) when IB cannot be asked.
        """
        with self._guard(f"look up orders with orderRef {prefix!r}*"):
            self._ensure_connected()
            self._pace(3)
            return self._run(self._orders_by_ref_async(prefix), 3 * self.timeout + 1)

    async def _orders_by_ref_async(self, prefix: str) -> list[OrderState]:
        open_trades = await asyncio.wait_for(self._ib.reqAllOpenOrdersAsync(), self.timeout)
        completed = await asyncio.wait_for(self._ib.reqCompletedOrdersAsync(False), self.timeout)
        fills = await asyncio.wait_for(
            self._ib.reqExecutionsAsync(ExecutionFilter(acctCode=self._account)), self.timeout)
        if not self._ib.isConnected():  # the futures end empty when the socket closes
            raise BrokerConnectionError(self._lost_message())

        def key(perm_id: int, client_id: int, order_id: int) -> tuple:
            return ("perm", perm_id) if perm_id else ("id", client_id, order_id)

        mine = (self._account, "")
        executions: dict[tuple, dict[str, Any]] = {}  # key -> {exec id: Fill}
        for fill in fills:
            e = fill.execution
            if e.orderRef.startswith(prefix) and e.acctNumber in mine:
                executions.setdefault(key(e.permId, e.clientId, e.orderId), {})[e.execId] = fill
        found: dict[tuple, OrderState] = {}
        finished = {id(trade) for trade in completed}
        # Completed orders first: an order that finished between the two answers is reported done.
        for trade in list(completed) + list(open_trades):
            o = trade.order
            if not o.orderRef.startswith(prefix) or o.account not in mine:
                continue
            state = self._state(trade)
            k = key(state.perm_id, state.client_id, state.order_id)
            if k not in found:
                found[k] = state
                if id(trade) in finished:
                    found[k].filled = max(found[k].filled, _finite(o.filledQuantity) or 0.0)
        for k, by_exec in executions.items():
            execs = [f.execution for f in by_exec.values()]
            shares = sum(e.shares for e in execs)
            value = sum(e.shares * e.price for e in execs)
            commission = round(sum(self._commission(f) for f in by_exec.values()), 6)
            state = found.get(k)
            if state is None:
                first = next(iter(by_exec.values()))
                e = first.execution
                found[k] = OrderState(
                    order_id=e.orderId, perm_id=e.permId, client_id=e.clientId,
                    contract=self._lib_contract(first.contract), action="BUY" if e.side == "BOT" else "SELL",
                    quantity=float(shares), order_type="", limit_price=None, tif="", order_ref=e.orderRef,
                    status="Filled", filled=float(shares), remaining=0.0,
                    avg_fill_price=round(value / shares, 6) if shares else 0.0, commission=commission)
                continue
            if not state.order_id and not state.client_id:  # completed orders carry neither
                state.order_id, state.client_id = execs[0].orderId, execs[0].clientId
            if shares and (shares > state.filled or not state.avg_fill_price):
                state.filled = max(state.filled, float(shares))
                state.avg_fill_price = round(value / shares, 6)
            state.commission = max(state.commission, commission)
        for state in found.values():
            state.remaining = 0.0 if state.is_terminal else max(state.quantity - state.filled, 0.0)
        return sorted(found.values(), key=lambda st: (st.order_ref, st.perm_id))

    def _commission(self, fill: Any) -> float:
        """A fill's commission; ib_async keeps the reports on the first Fill object it saw per execId."""
        known = self._ib.wrapper.fills.get(fill.execution.execId, fill)
        value = known.commissionReport.commission or fill.commissionReport.commission
        return float(value) if _finite(value) is not None else 0.0

    def reserve_order_ids(self, count: int, floor: int = 0) -> list[int] | None:
        """`count` consecutive order ids from max(floor + 1, IB's nextValidId) onward.

        Asks IB for nextValidId afresh (IB Gateway restarts have rolled it back: the caller keeps
        the highest id it used and passes it as `floor`), never hands out an id this connection
        reserved before, and moves ib_async's own id sequence past the reserved ids so no later
        order or request reuses them. Raises BrokerError when IB does not answer.
        """
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        if count == 0:
            return []
        with self._guard("reserve order ids"):
            self._ensure_connected()
            self._pace()
            return self._run(self._reserve_async(int(count), int(floor)), self.timeout + 1)

    async def _reserve_async(self, count: int, floor: int) -> list[int]:
        answer = asyncio.get_running_loop().create_future()
        self._id_waiters.append(answer)
        self._ib.client.reqIds(-1)  # IB answers nextValidId (ib_async itself ignores it once connected)
        closed = asyncio.ensure_future(_next_emit(self._ib.disconnectedEvent))
        try:
            done, _ = await asyncio.wait({answer, closed}, timeout=self.timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
        if answer not in done:
            answer.cancel()
            if not self._ib.isConnected():
                raise BrokerConnectionError(self._lost_message())
            raise BrokerTimeoutError(f"IB at {self._where} sent no nextValidId within {self.timeout:g} s")
        start = max(floor + 1, answer.result(), self._reserved_next)
        self._reserved_next = start + count
        self._ib.client.updateReqId(start + count)
        return list(range(start, start + count))

    def cancel_order(self, order_id: int) -> None:
        """Ask IB to cancel one of this connection's orders; does not wait for the outcome.

        Only IB's own orderStatus confirms the cancel (see `wait`): ib_async's local "Cancelled"
        after IB refused the cancel (161, 10148: the order may have filled or still be cancelling)
        reads as an unconfirmed state. Raises BrokerError for an order id this connection does not know.
        """
        with self._guard(f"cancel order {order_id}"):
            self._ensure_connected()
            self._pace()
            self._call(self._cancel, order_id)

    def _cancel(self, order_id: int) -> None:
        trade = self._own_trade(order_id)
        order = trade.order
        if not order.orderId:  # loaded from completed orders: IB's record omits the ids
            order = Order(orderId=order_id, clientId=self.client_id, permId=order.permId)
        before = trade.orderStatus.status
        self._ib.cancelOrder(order)
        if trade.orderStatus.status != before and trade.orderStatus.status in TERMINAL_STATUSES:
            # ib_async cancels unsent and Inactive orders locally: no word from IB yet
            book = self._book(trade)
            book.guess = _Guess(real=before, local=trade.orderStatus.status, kind=CANCEL_REFUSED)

    def wait(self, order_ids: Iterable[int], timeout: float, until: str = "acknowledged") -> dict[int, OrderState]:
        """Wait until every order is acknowledged (or done: terminal with commissions) or `timeout` passes.

        "done" needs IB's own terminal status: ib_async's local "Cancelled" after a refused cancel
        (161/10148) is waited past, and comes back with confirmed=False if IB said nothing more
        within `timeout`. Returns the latest state of each order and never raises on timeout; raises BrokerError
        for an order id this connection does not know and BrokerConnectionError when the
        connection drops before the condition holds.
        """
        if until not in ("acknowledged", "done"):
            raise ValueError(f"until must be 'acknowledged' or 'done', not {until!r}")
        ids = list(order_ids)
        with self._guard("wait for orders"):
            self._ensure_connected()
            return self._run(self._wait_async(ids, timeout, until), timeout + 1)

    async def _wait_async(self, ids: list[int], timeout: float, until: str) -> dict[int, OrderState]:
        trades = {order_id: self._own_trade(order_id) for order_id in ids}
        ready = self._acknowledged if until == "acknowledged" else self._done
        if not await self._until(lambda: all(ready(t) for t in trades.values()), timeout):
            if not self._ib.isConnected():
                raise BrokerConnectionError(self._lost_message())
        return {order_id: self._state(t) for order_id, t in trades.items()}
