"""A fake IB Gateway that speaks the real TWS API socket protocol, for tests.

The fake binds 127.0.0.1 on an ephemeral port and keeps everything in memory. It runs its own
asyncio loop in a background thread (the sync ib_async `IB()` API runs the caller's loop, so the
fake must not share it); tests drive it through the thread-safe control methods below.

Wire format (checked against ib_async 2.1.0's client.py / decoder.py):

* handshake: the client sends ``API\\0`` and a length-prefixed ``v157..178`` (no trailing NUL);
  the server answers ``<version>\\0<YYYYMMDD HH:MM:SS TZ>\\0`` length-prefixed;
* every other message: a 4-byte big-endian length, then NUL-terminated fields.

One server version is negotiated per gateway (178 by default; 176 and 177 also supported) and
every message below is laid out exactly for it: faProfile exists below 177, the execution's
pendingPriceRevision field from 178, error messages carry the advanced-reject JSON (>= 166),
contract details have no version field and carry minSize/sizeIncrement (>= 164).

What it serves: start-up synchronisation, positions, account updates (single and multi),
account summary, open / all open / completed orders, executions with commission reports,
contract details for a few ETFs, historical bars (daily, intraday down to 1 s, TRADES and
ADJUSTED_LAST; see "Historical data" below), placeOrder (parsed field by field,
including the what-if flag and every optional section), cancelOrder, global cancel,
current time, next ids and managed accounts.

Order ids behave as IB's do: a placeOrder reusing an id of an open order of the same client is a
modification; one reusing an id of that client's finished order, or an unknown id at or below the
highest id that client used, is refused with error 103 ("Duplicate order id") and not stored.
The gateway survives `restart()` with all its state (optionally rolling nextValidId back, as real
IB Gateway restarts have done), and fills, completed orders and executions that happen while no
client is connected are reported to the clients that connect later.

Historical data as IB serves it (https://interactivebrokers.github.io/tws-api/historical_limitations.html):

* "N D" counts sessions (bars), at most 365 ("... longer than 365 days must be made in years"); "N W",
  "N M" and "N Y" are calendar spans ending at the end date; "N S" (intraday bars) seconds of
  regular trading hours.
* ADJUSTED_LAST bars (adjusted for the dividends given to `set_dividend`) only up to now: an end date
  is refused with 321 "End date not supported with adjusted last", as IB does.
* Pacing, enforced by default (`pacing=False` turns it off), over every client of the gateway (one
  login) and timed by `clock` (injectable, so tests never wait minutes): for bars of 30 s or less,
  more than 60 requests in any 10 minutes, an identical request within 15 s, or six or more requests
  for the same contract, exchange and tick type within 2 s (BID_ASK counts twice); for every bar
  size, more than 50 requests of one connection open at once (`set_history_delay` keeps answers
  open). Each is answered with error 162 "Historical Market Data Service error message:Historical
  data request pacing violation" (the 51st open request with IB's "Only 50 simultaneous API
  historical data requests allowed"); refused requests count too. Larger bars are throttled softly
  by IB, never refused. `history_log` records every request with its time and answer.
"""
from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import math
import random
import struct
import threading
import time
from typing import Any, Callable, Iterable
from zoneinfo import ZoneInfo

UNSET_DOUBLE = 1.7976931348623157e308  # IB's "no value" double
UNSET_DOUBLE_TEXT = "1.7976931348623157E308"  # as TWS (Java) writes it
UNSET_INTEGER = 2**31 - 1
SUPPORTED_VERSIONS = (176, 177, 178)
NEW_YORK = ZoneInfo("America/New_York")
TERMINAL = frozenset({"Filled", "Cancelled", "ApiCancelled", "Inactive"})

# IB's fixed commission schedule for US stocks.
COMMISSION_PER_SHARE = 0.005
COMMISSION_MIN = 1.0
COMMISSION_MAX_RATE = 0.01


#: IB's historical-data pacing rules (bars of 30 s or less) and its limit on open requests.
PACING_VIOLATION = "Historical Market Data Service error message:Historical data request pacing violation"
TOO_MANY_OPEN = "Historical Market Data Service error message:Only 50 simultaneous API historical data requests allowed."
SMALL_BAR_SECONDS = 30
SMALL_LIMIT, SMALL_PERIOD = 60, 600.0
IDENTICAL_GAP = 15.0
PER_CONTRACT_LIMIT, PER_CONTRACT_PERIOD = 6, 2.0  # six or more within 2 s is a violation
MAX_OPEN = 50
BAR_SECONDS = {"1 secs": 1, "5 secs": 5, "10 secs": 10, "15 secs": 15, "30 secs": 30, "1 min": 60,
               "2 mins": 120, "3 mins": 180, "5 mins": 300, "10 mins": 600, "15 mins": 900,
               "20 mins": 1200, "30 mins": 1800, "1 hour": 3600, "1 day": 86400}
#: Bar sizes the fake serves: daily, and intraday ones that divide the 6.5-hour session evenly.
SERVED_BAR_SIZES = tuple(b for b, secs in BAR_SECONDS.items() if secs == 86400 or 23400 % secs == 0)
RTH_SECONDS = 23400  # 09:30-16:00 New York


@dataclasses.dataclass
class HistoryRequest:
    """One reqHistoricalData as the gateway saw it, and how it answered."""

    at: float  # the gateway's clock when it arrived
    client_id: int | None
    req_id: int
    symbol: str
    exchange: str
    end: str
    duration: str
    bar_size: str
    what: str
    rth: bool
    answer: str = ""  # "bars", "pacing violation", "too many open", or "error <code>"
    bars: int = 0
    open_before: int = 0  # this connection's requests still open when it arrived

    @property
    def small(self) -> bool:
        return BAR_SECONDS.get(self.bar_size, 86400) <= SMALL_BAR_SECONDS

    @property
    def contract_key(self) -> tuple:
        """IB's "same Contract, Exchange and Tick Type"."""
        return self.symbol, self.exchange, self.what

    @property
    def identity(self) -> tuple:
        return self.symbol, self.exchange, self.end, self.duration, self.bar_size, self.what, self.rth

    @property
    def weight(self) -> int:
        return 2 if self.what == "BID_ASK" else 1  # IB counts a BID_ASK request twice


def pacing_problems(log: list[HistoryRequest]) -> list[str]:
    """Every request of `log` that broke one of IB's small-bar rules, recomputed from the log alone
    (independent of how the gateway answered): what a test checks a client against."""
    problems = []
    for i, r in enumerate(log):
        if not r.small:
            continue
        before = [p for p in log[:i] if p.small]
        window = sum(p.weight for p in before if r.at - p.at < SMALL_PERIOD) + r.weight
        if window > SMALL_LIMIT:
            problems.append(f"request {r.req_id} ({r.symbol} {r.bar_size}) is number {window} within 10 minutes")
        if any(p.identity == r.identity and r.at - p.at < IDENTICAL_GAP for p in before):
            problems.append(f"request {r.req_id} ({r.symbol} {r.bar_size}) repeats one of the last 15 s")
        same = sum(1 for p in before if p.contract_key == r.contract_key and r.at - p.at < PER_CONTRACT_PERIOD) + 1
        if same >= PER_CONTRACT_LIMIT:
            problems.append(f"request {r.req_id} is number {same} for {r.symbol} {r.what} within 2 s")
    problems += [f"request {r.req_id} ({r.symbol}) arrived with {r.open_before} open" for r in log
                 if r.open_before >= MAX_OPEN]
    return problems


def commission_for(shares: float, value: float) -> float:
    """IB fixed pricing: $0.005/share, at least $1, at most 1% of the trade value."""
    return round(min(max(COMMISSION_PER_SHARE * shares, COMMISSION_MIN), COMMISSION_MAX_RATE * value), 6)


@dataclasses.dataclass(frozen=True)
class Instrument:
    """A stock/ETF the fake knows, with the conId and listing IB reports for it."""

    symbol: str
    con_id: int
    primary_exchange: str
    long_name: str
    price: float  # in its own currency
    currency: str = "USD"


INSTRUMENTS = {
    i.symbol: i for i in (
        Instrument("SPY", 756733, "ARCA", "SPDR S&P 500 ETF TRUST", 500.0),
        Instrument("VIXY", 178063733, "BATS", "PROSHARES VIX SHORT-TERM FUTU", 15.0),
        Instrument("QQQ", 320227571, "NASDAQ", "INVESCO QQQ TRUST SERIES 1", 430.0),
        Instrument("TLT", 15547841, "NASDAQ", "ISHARES 20+ YEAR TREASURY BO", 95.0),
        Instrument("GLD", 51529211, "ARCA", "SPDR GOLD SHARES", 190.0),
        Instrument("SHOP", 195013618, "TSE", "SHOPIFY INC - CLASS A", 150.0, "CAD"),  # a non-base currency
    )
}


# ---- wire helpers ------------------------------------------------------------------------------
class ProtocolError(Exception):
    """A client message the fake could not parse exactly."""


def fmt(value: Any) -> str:
    """One field as TWS writes it: bools as 1/0, None as empty, IB's unset double spelled out."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        if value == UNSET_DOUBLE:
            return UNSET_DOUBLE_TEXT
        return repr(value)
    return str(value)


def qty(value: float) -> str:
    """Quantities travel as decimals without a trailing '.0' when whole ('100', '12.5')."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def encode(fields: Iterable[Any]) -> bytes:
    """A length-prefixed message of NUL-terminated fields."""
    body = "".join(fmt(f) + "\0" for f in fields).encode()
    return struct.pack(">I", len(body)) + body


def named(*pairs: tuple[str, Any]) -> list[Any]:
    """Field values from (name, value) pairs; the names only document the layout."""
    return [value for _name, value in pairs]


class FieldReader:
    """Reads a client message's fields in order and insists on consuming all of them."""

    def __init__(self, fields: list[str], what: str):
        self._fields, self._pos, self._what = fields, 0, what

    def str(self) -> str:
        if self._pos >= len(self._fields):
            raise ProtocolError(f"{self._what}: message ended after {self._pos} fields")
        value = self._fields[self._pos]
        self._pos += 1
        return value

    def int(self) -> int | None:
        text = self.str()
        return int(text) if text else None

    def float(self) -> float | None:
        text = self.str()
        if not text:
            return None
        return math.inf if text == "Infinite" else float(text)

    def bool(self) -> bool:
        return self.str() not in ("", "0")

    def finish(self) -> None:
        left = len(self._fields) - self._pos
        if left:
            raise ProtocolError(f"{self._what}: {left} unexpected trailing field(s): {self._fields[self._pos:]}")


#: Order types whose lmtPrice field carries a limit.
LIMIT_TYPES = ("LMT", "LOC", "STP LMT")
#: Order types the gateway accepts.
ORDER_TYPES = ("MKT", "LMT", "MOC", "LOC", "STP", "STP LMT", "TRAIL")
#: Order types that fill during the continuous session (MOC/LOC wait for the closing auction).
CONTINUOUS_TYPES = ("MKT", "LMT", "STP", "STP LMT")

CONTRACT_KEYS = ("conId", "symbol", "secType", "lastTradeDateOrContractMonth", "strike", "right",
                 "multiplier", "exchange", "primaryExchange", "currency", "localSymbol", "tradingClass")
# Fields of each order-condition type after its condType (ib_async.order.*Condition).
CONDITION_FIELD_COUNTS = {1: 6, 3: 3, 4: 3, 5: 4, 6: 5, 7: 5}


def read_contract(r: FieldReader) -> dict[str, Any]:
    c: dict[str, Any] = {k: r.str() for k in CONTRACT_KEYS}
    c["conId"] = int(c["conId"] or 0)
    c["strike"] = float(c["strike"] or 0)
    return c


def parse_place_order(fields: list[str], version: int) -> dict[str, Any]:
    """Parse a placeOrder (3) message field by field, following ib_async's Client.placeOrder.

    Returns the named fields (contract under "contract"). Raises ProtocolError when the message
    is shorter or longer than its own flags say it should be.
    """
    r = FieldReader(fields[1:], "placeOrder")
    o: dict[str, Any] = {"orderId": r.int(), "contract": read_contract(r)}
    o["secIdType"], o["secId"], o["action"] = r.str(), r.str(), r.str()
    o["totalQuantity"], o["orderType"] = r.float(), r.str()
    o["lmtPrice"], o["auxPrice"] = r.float(), r.float()
    for key in ("tif", "ocaGroup", "account", "openClose"):
        o[key] = r.str()
    o["origin"], o["orderRef"], o["transmit"], o["parentId"] = r.int(), r.str(), r.bool(), r.int()
    for key in ("blockOrder", "sweepToFill"):
        o[key] = r.bool()
    o["displaySize"], o["triggerMethod"] = r.int(), r.int()
    o["outsideRth"], o["hidden"] = r.bool(), r.bool()
    if o["contract"]["secType"] == "BAG":
        o["comboLegs"] = [[r.str() for _ in range(8)] for _ in range(r.int() or 0)]
        o["orderComboLegs"] = [r.float() for _ in range(r.int() or 0)]
        o["smartComboRoutingParams"] = [(r.str(), r.str()) for _ in range(r.int() or 0)]
    r.str()  # deprecated sharesAllocation
    o["discretionaryAmt"] = r.float()
    for key in ("goodAfterTime", "goodTillDate", "faGroup", "faMethod", "faPercentage"):
        o[key] = r.str()
    if version < 177:
        o["faProfile"] = r.str()
    o["modelCode"], o["shortSaleSlot"], o["designatedLocation"] = r.str(), r.int(), r.str()
    o["exemptCode"], o["ocaType"], o["rule80A"], o["settlingFirm"] = r.int(), r.int(), r.str(), r.str()
    o["allOrNone"], o["minQty"], o["percentOffset"] = r.bool(), r.int(), r.float()
    o["eTradeOnly"], o["firmQuoteOnly"], o["nbboPriceCap"] = r.bool(), r.bool(), r.float()
    o["auctionStrategy"] = r.int()
    for key in ("startingPrice", "stockRefPrice", "delta", "stockRangeLower", "stockRangeUpper"):
        o[key] = r.float()
    o["overridePercentageConstraints"] = r.bool()
    o["volatility"], o["volatilityType"] = r.float(), r.int()
    o["deltaNeutralOrderType"], o["deltaNeutralAuxPrice"] = r.str(), r.float()
    if o["deltaNeutralOrderType"]:
        o["deltaNeutral"] = [r.str() for _ in range(8)]
    o["continuousUpdate"], o["referencePriceType"] = r.bool(), r.int()
    o["trailStopPrice"], o["trailingPercent"] = r.float(), r.float()
    o["scaleInitLevelSize"], o["scaleSubsLevelSize"] = r.int(), r.int()
    o["scalePriceIncrement"] = r.float()
    if o["scalePriceIncrement"] is not None and 0 < o["scalePriceIncrement"] < UNSET_DOUBLE:
        o["scale"] = [r.str() for _ in range(7)]
    o["scaleTable"], o["activeStartTime"], o["activeStopTime"] = r.str(), r.str(), r.str()
    o["hedgeType"] = r.str()
    if o["hedgeType"]:
        o["hedgeParam"] = r.str()
    o["optOutSmartRouting"], o["clearingAccount"] = r.bool(), r.str()
    o["clearingIntent"], o["notHeld"] = r.str(), r.bool()
    if r.bool():  # delta-neutral contract present
        o["deltaNeutralContract"] = (r.int(), r.float(), r.float())
    o["algoStrategy"] = r.str()
    if o["algoStrategy"]:
        o["algoParams"] = [(r.str(), r.str()) for _ in range(r.int() or 0)]
    o["algoId"], o["whatIf"], o["orderMiscOptions"] = r.str(), r.bool(), r.str()
    o["solicited"], o["randomizeSize"], o["randomizePrice"] = r.bool(), r.bool(), r.bool()
    if o["orderType"] in ("PEG BENCH", "PEGBENCH"):
        o["pegBench"] = [r.str() for _ in range(5)]
    conditions = []
    for _ in range(r.int() or 0):
        cond_type = r.int()
        if cond_type not in CONDITION_FIELD_COUNTS:
            raise ProtocolError(f"placeOrder: unknown order condition type {cond_type}")
        conditions.append([cond_type] + [r.str() for _ in range(CONDITION_FIELD_COUNTS[cond_type])])
    o["conditions"] = conditions
    if conditions:
        o["conditionsIgnoreRth"], o["conditionsCancelOrder"] = r.bool(), r.bool()
    o["adjustedOrderType"], o["triggerPrice"], o["lmtPriceOffset"] = r.str(), r.float(), r.float()
    o["adjustedStopPrice"], o["adjustedStopLimitPrice"] = r.float(), r.float()
    o["adjustedTrailingAmount"], o["adjustableTrailingUnit"] = r.float(), r.int()
    o["extOperator"], o["softDollarTier"] = r.str(), (r.str(), r.str())
    o["cashQty"] = r.float()
    for key in ("mifid2DecisionMaker", "mifid2DecisionAlgo", "mifid2ExecutionTrader", "mifid2ExecutionAlgo"):
        o[key] = r.str()
    for key in ("dontUseAutoPriceForHedge", "isOmsContainer", "discretionaryUpToLimitPrice", "usePriceMgmtAlgo"):
        o[key] = r.bool()
    o["duration"], o["postToAts"], o["autoCancelParent"] = r.int(), r.int(), r.bool()  # >= 158/160/162
    o["advancedErrorOverride"], o["manualOrderTime"] = r.str(), r.str()  # >= 166 / 169
    if o["contract"]["exchange"] == "IBKRATS":  # >= 170
        o["minTradeQty"] = r.int()
    if o["orderType"] in ("PEG BEST", "PEGBEST"):
        o["minCompeteSize"], o["competeAgainstBestOffset"] = r.int(), r.float()
        if o["competeAgainstBestOffset"] == math.inf:
            o["midOffsetAtWhole"], o["midOffsetAtHalf"] = r.float(), r.float()
    elif o["orderType"] in ("PEG MID", "PEGMID"):
        o["midOffsetAtWhole"], o["midOffsetAtHalf"] = r.float(), r.float()
    r.finish()
    return o


# ---- gateway state -----------------------------------------------------------------------------
@dataclasses.dataclass
class FakeOrder:
    """One order as the gateway holds it."""

    client_id: int
    order_id: int
    perm_id: int
    instrument: Instrument
    exchange: str
    action: str
    total_qty: float
    order_type: str
    lmt_price: float | None
    tif: str
    order_ref: str
    account: str
    status: str = "PreSubmitted"
    filled: float = 0.0
    avg_fill_price: float = 0.0
    last_fill_price: float = 0.0
    commission_charged: float = 0.0
    completed_time: str = ""
    aux_price: float | None = None  # stop price (STP, STP LMT), trailing amount (TRAIL)
    parent_id: int = 0  # the parent's order id (same client) for a bracket child
    oca_group: str = ""  # one-cancels-all group: a fill of one cancels the others

    @property
    def remaining(self) -> float:
        return 0.0 if self.status in ("Cancelled", "ApiCancelled", "Inactive") else self.total_qty - self.filled

    @property
    def is_open(self) -> bool:
        return self.status not in TERMINAL


@dataclasses.dataclass
class FakeExecution:
    exec_id: str
    order: FakeOrder
    shares: float
    price: float
    cum_qty: float
    avg_price: float
    time: dt.datetime
    commission: float
    realized_pnl: float | None


@dataclasses.dataclass
class Holding:
    quantity: float = 0.0
    avg_cost: float = 0.0  # per share, commissions included (as IB reports it)
    realized: float = 0.0


class _Conn:
    """One client socket and what it subscribed to."""

    def __init__(self, writer: asyncio.StreamWriter):
        self.writer = writer
        self.client_id: int | None = None
        self.account_updates = False
        self.positions = False
        self.multi_req_ids: set[int] = set()
        self.open_history: dict[int, tuple[asyncio.TimerHandle | None, Callable[[], None]]] = {}  # req id ->
        # (its timer, or None while held) and the answer to send
        self.closed = False

    def send(self, *fields: Any) -> None:
        if not self.closed:
            self.writer.write(encode(fields))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.close()


class FakeGateway:
    """An in-memory IB Gateway on 127.0.0.1:<port>; use `start()`/`stop()` or `with`.

    Control methods (thread-safe, callable from the test thread): `set_price`, `set_bars`,
    `set_account_values`, `inject_order`, `partial_fill`, `reject_next_order`, `warn_next_order`,
    `drop_connections`, `drop_after_orders`, `drop_before_ack`, `restart`, `delay_cancels`,
    `delay_fill_reports`, `refuse_cancels_with`, `forget_completed_orders`,
    `run_closing_auction`, `set_dividend`, `set_history_delay`, `refuse_history`; inspection:
    `orders()`, `positions()`, `received_refs()`, `history_requests()`, `parsed_orders`, `received`,
    `protocol_errors`.

    `clock` times the historical-data pacing rules (default time.monotonic; a test's fake clock
    lets it step over 10 minutes at once); `pacing=False` serves every request.
    """

    def __init__(self, account: str = "DU1234567", cash: float = 1_000_000.0,
                 server_version: int = 178, fill_delay: float = 0.02,
                 today: dt.date | None = None, prices: dict[str, float] | None = None,
                 clock: Callable[[], float] | None = None, pacing: bool = True):
        if server_version not in SUPPORTED_VERSIONS:
            raise ValueError(f"server_version must be one of {SUPPORTED_VERSIONS}")
        self.account = account
        self.version = server_version
        self.fill_delay = fill_delay
        self.today = today or dt.datetime.now(NEW_YORK).date()
        self.port = 0
        self.prices = {s: i.price for s, i in INSTRUMENTS.items()}
        self.prices.update(prices or {})
        self.cash = cash
        self.holdings: dict[str, Holding] = {}
        self.account_overrides: dict[str, float] = {}
        self.fx_rates: dict[str, float] = {}  # currency → value in USD, sent as ExchangeRate account values
        self.bars: dict[str, list[tuple]] = {}
        self.dividends: dict[str, dict[dt.date, float]] = {}  # symbol -> ex-date -> cash amount
        self.clock = clock or time.monotonic
        self.pacing = pacing
        self.history_log: list[HistoryRequest] = []
        self._history_delay = 0.0
        self._refuse_history: tuple[int, str | None] = (0, None)
        self.orders_by_perm: dict[int, FakeOrder] = {}
        self.executions: list[FakeExecution] = []
        # Inspection for tests: every message (client id, fields), parsed placeOrders, parse errors.
        self.received: list[tuple[int | None, list[str]]] = []
        self.parsed_orders: list[dict[str, Any]] = []
        self.protocol_errors: list[str] = []
        self._conns: list[_Conn] = []
        self._next_order_id = 1
        self._next_perm_id = 1_000_000_001
        self._next_exec = 1
        self._reject_next: tuple[int, str] | None = None
        self._warn_next: list[tuple[int, str]] = []
        self._drop_after: int | None = None
        self._drop_before_ack: int | None = None
        self._max_id_used: dict[int, int] = {}  # client id -> highest order id it placed
        self._cancel_delay = 0.0
        self._fill_report_delay = 0.0
        self._cancel_refusal_code = 10148
        self._forgotten: set[int] = set()  # perm ids left out of completed orders
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "FakeGateway":
        """Start the loop thread and listen on 127.0.0.1 (ephemeral port, see `port`)."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._serve, "127.0.0.1", 0))
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:  # reported to start()'s caller
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-ib-gateway", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        """Close every socket and the listener, then end the loop thread. Idempotent."""
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._thread = None

    async def _shutdown(self) -> None:
        for conn in list(self._conns):
            conn.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if tasks:  # handlers end on their own once their sockets are closed
            _done, pending = await asyncio.wait(tasks, timeout=1)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def __enter__(self) -> "FakeGateway":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run `fn` on the gateway's loop (where all state lives) and return its result."""
        if self._loop is None or not self._loop.is_running():
            raise RuntimeError("the fake gateway is not running")

        async def wrapper() -> Any:
            return fn(*args, **kwargs)

        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result(10)

    # ---- control methods (test thread) ---------------------------------------------------------
    def set_price(self, symbol: str, price: float) -> None:
        """Move the market; resting LMT orders that the new price crosses fill at it."""
        self._call(self._set_price, symbol, float(price))

    def set_bars(self, symbol: str, bars: Iterable[Any]) -> None:
        """Serve these daily bars for `symbol`.

        Each bar is a (date, open, high, low, close, volume) tuple or an object with those attributes.
        """
        rows = []
        for b in bars:
            if isinstance(b, tuple):
                rows.append(tuple(b[:6]))
            else:
                rows.append((b.date, b.open, b.high, b.low, b.close, b.volume))
        self._call(self.bars.__setitem__, symbol, sorted(rows))

    def set_dividend(self, symbol: str, ex_date: dt.date, amount: float) -> None:
        """A cash dividend going ex on `ex_date`: ADJUSTED_LAST bars before it are scaled by
        1 - amount / (the close before ex_date), as IB adjusts them; TRADES bars stay as traded."""
        self._call(lambda: self.dividends.setdefault(symbol, {}).__setitem__(ex_date, float(amount)))

    def set_history_delay(self, seconds: float) -> None:
        """Answer historical requests `seconds` after they arrive (they stay open until then);
        `math.inf` holds every answer until `release_history()`."""
        self._call(setattr, self, "_history_delay", float(seconds))

    def release_history(self) -> int:
        """Send every held historical answer now; returns how many."""
        def release() -> int:
            sent = 0
            for conn in list(self._conns):
                for req_id, (handle, answer) in list(conn.open_history.items()):
                    if handle is None:
                        answer()
                        sent += 1
            return sent
        return self._call(release)

    def refuse_history(self, n: int = 1, symbol: str | None = None) -> None:
        """Refuse the next `n` historical requests (for `symbol` only, when given) with error 162
        pacing violation, whatever the rules say (as when another application on the same login
        used up the window)."""
        self._call(setattr, self, "_refuse_history", (int(n), symbol))

    def history_requests(self) -> list[HistoryRequest]:
        """Copies of every historical request received, in arrival order, with its answer."""
        return self._call(lambda: [dataclasses.replace(r) for r in self.history_log])

    def set_account_values(self, **values: float) -> None:
        """Pin account tags (NetLiquidation=..., AvailableFunds=...) instead of computing them."""
        self._call(self.account_overrides.update, values)

    def set_account(self, account: str) -> None:
        """Report another account id to clients that connect from now on."""
        self._call(setattr, self, "account", account)

    def inject_order(self, symbol: str, action: str, quantity: float, limit_price: float | None,
                     order_ref: str = "manual", client_id: int = 0, tif: str = "DAY",
                     order_type: str | None = None, aux_price: float | None = None,
                     parent_id: int = 0, oca_group: str = "") -> FakeOrder:
        """Place a resting order as another API client, or as a manual TWS order (client id 0,
        order id 0, identified by its permId). Returns a copy of the gateway's order.

        `order_type` defaults to LMT with a limit price, MKT without; "STP", "STP LMT" and "TRAIL"
        take `aux_price` (the stop price; TRAIL: the trailing amount). `parent_id` (the parent's
        order id, same client) makes a bracket child that works only once its parent filled;
        orders sharing an `oca_group` cancel each other when one fills.
        """
        if order_type is None:
            order_type = "LMT" if limit_price is not None else "MKT"
        if order_type not in ("MKT", "LMT", "STP", "STP LMT", "TRAIL", "MOC", "LOC"):
            raise ValueError(f"unsupported order type {order_type!r}")
        if order_type in ("STP", "STP LMT", "TRAIL") and not aux_price:
            raise ValueError(f"a {order_type} order needs aux_price")
        return self._call(self._inject_order, symbol, action, float(quantity), limit_price, order_ref, client_id, tif,
                          order_type, aux_price, int(parent_id), oca_group)

    def partial_fill(self, order_id: int, quantity: float, client_id: int | None = None,
                     perm_id: int | None = None) -> None:
        """Fill `quantity` of an open order (at its limit for LMT, at the market otherwise)."""
        self._call(self._partial_fill, order_id, float(quantity), client_id, perm_id)

    def reject_next_order(self, message: str = "rejected by the fake gateway", code: int = 201) -> None:
        """The next placeOrder is answered with error 201 ("Order rejected - reason: ...") and
        status Inactive; another `code` (e.g. 203) sends that error with `message` alone."""
        self._call(setattr, self, "_reject_next", (int(code), message))

    def warn_next_order(self, code: int, message: str) -> None:
        """Before acknowledging the next placeOrder, send it this informational error (e.g. 399,
        404, 2109, 10349); the order is accepted and works as usual. Calls accumulate."""
        self._call(self._warn_next.append, (int(code), message))

    def drop_connections(self) -> None:
        """Close every client socket now (the gateway keeps its orders and accepts reconnects)."""
        self._call(self._drop_all)

    def drop_after_orders(self, n: int) -> None:
        """Drop every client socket right after the next `n` placeOrders are acknowledged."""
        self._call(setattr, self, "_drop_after", int(n))

    def drop_before_ack(self, k: int = 1) -> None:
        """When the k-th next placeOrder arrives, accept it (it works and may fill) but close every
        client socket before sending its openOrder/orderStatus: the sender cannot know it arrived."""
        self._call(setattr, self, "_drop_before_ack", int(k))

    def restart(self, next_order_id: int | None = None) -> None:
        """Close every client socket and the listener, then listen again on the same port.

        Orders, executions, positions and cash survive. With `next_order_id`, nextValidId starts
        there again (rolled back, as real IB Gateway restarts have done); ids a client already
        used are still refused with error 103.
        """
        if self._loop is None or not self._loop.is_running():
            raise RuntimeError("the fake gateway is not running")
        asyncio.run_coroutine_threadsafe(self._restart(next_order_id), self._loop).result(10)

    def delay_cancels(self, seconds: float) -> None:
        """Confirm cancels only after `seconds`: the order reads PendingCancel until then, and a
        second cancel meanwhile is refused like one of a finished order (`refuse_cancels_with`)."""
        self._call(setattr, self, "_cancel_delay", float(seconds))

    def delay_fill_reports(self, seconds: float) -> None:
        """Report fills (execDetails, orderStatus, commission) to the order's owner only after
        `seconds`: the gateway's order is filled at once, its owner learns it late."""
        self._call(setattr, self, "_fill_report_delay", float(seconds))

    def refuse_cancels_with(self, code: int) -> None:
        """The error that answers a cancel of an order that is not cancellable (finished, or
        already cancelling): 10148 (default, "... can not be cancelled, state: ...") or 161
        ("Cancel attempted when order is not in a cancellable state")."""
        if code not in (161, 10148):
            raise ValueError("IB refuses such cancels with 161 or 10148")
        self._call(setattr, self, "_cancel_refusal_code", int(code))

    def forget_completed_orders(self) -> None:
        """Leave every order finished so far out of reqCompletedOrders (their executions stay), as
        when IB's completed-orders list no longer holds them."""
        self._call(lambda: self._forgotten.update(p for p, o in self.orders_by_perm.items() if not o.is_open))

    def run_closing_auction(self) -> None:
        """Fill MOC orders at the current price and LOC orders whose limit it crosses; cancel the other LOCs."""
        self._call(self._closing_auction)

    def orders(self) -> list[FakeOrder]:
        """Copies of every order the gateway has seen, in placement order."""
        return self._call(lambda: [dataclasses.replace(o) for o in self.orders_by_perm.values()])

    def positions(self) -> dict[str, float]:
        return self._call(lambda: {s: h.quantity for s, h in self.holdings.items() if h.quantity})

    def place_order_count(self) -> int:
        """How many placeOrder messages reached the gateway (what-if ones included)."""
        return self._call(lambda: sum(1 for _cid, f in self.received if f and f[0] == "3"))

    def received_refs(self) -> list[str]:
        """The orderRef of every placeOrder that reached the gateway, in arrival order: new
        orders, modifications and refused ones (103, 200, 201) alike; what-if requests left out."""
        return self._call(lambda: [p["orderRef"] for p in self.parsed_orders if not p["whatIf"]])

    def connected_client_ids(self) -> list[int]:
        return self._call(lambda: sorted(c.client_id for c in self._conns if not c.closed and c.client_id is not None))

    # ---- connection handling -------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(writer)
        try:
            if await reader.readexactly(4) != b"API\0":
                raise ProtocolError("handshake: expected the 'API\\0' prefix")
            size = struct.unpack(">I", await reader.readexactly(4))[0]
            versions = (await reader.readexactly(size)).decode().split(" ")[0]  # "v157..178[ +opts]"
            low, high = (int(v) for v in versions.lstrip("v").split(".."))
            version = min(high, self.version)
            if version < low:
                raise ProtocolError(f"handshake: client needs versions {low}..{high}, fake serves {self.version}")
            now = dt.datetime.now(NEW_YORK)
            writer.write(encode([version, now.strftime("%Y%m%d %H:%M:%S ") + (now.tzname() or "EST")]))
            self._conns.append(conn)
            while not conn.closed:
                size = struct.unpack(">I", await reader.readexactly(4))[0]
                fields = (await reader.readexactly(size)).decode().split("\0")[:-1]
                self.received.append((conn.client_id, fields))
                try:
                    self._dispatch(conn, fields)
                except ProtocolError as exc:
                    self.protocol_errors.append(str(exc))
                    conn.send(4, 2, -1, 320, f"Error reading request: {exc}", "")
                except (ValueError, IndexError) as exc:
                    self.protocol_errors.append(f"message {fields[:2]}: {exc!r}")
                    conn.send(4, 2, -1, 320, f"Error reading request: {exc!r}", "")
        except ProtocolError as exc:
            self.protocol_errors.append(str(exc))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away
        except asyncio.CancelledError:
            pass  # shutdown; returning (not re-raising) keeps asyncio's server callback quiet
        finally:
            conn.close()
            if conn in self._conns:
                self._conns.remove(conn)

    def _dispatch(self, conn: _Conn, fields: list[str]) -> None:
        msg_id = int(fields[0])
        if conn.client_id is None and msg_id != 71:
            raise ProtocolError(f"message {msg_id} before startApi")
        handler = self._handlers().get(msg_id)
        if handler is None:
            self.protocol_errors.append(f"unhandled message id {msg_id}: {fields}")
            return
        handler(conn, fields)

    def _handlers(self) -> dict[int, Callable[[_Conn, list[str]], None]]:
        return {
            71: self._on_start_api, 61: self._on_req_positions, 64: self._on_cancel_positions,
            5: self._on_req_open_orders, 16: self._on_req_all_open_orders, 15: lambda c, f: None,
            99: self._on_req_completed_orders, 6: self._on_req_account_updates,
            76: self._on_req_account_updates_multi, 77: self._on_cancel_multi,
            62: self._on_req_account_summary, 63: lambda c, f: None,
            7: self._on_req_executions, 9: self._on_req_contract_details,
            20: self._on_req_historical_data, 25: self._on_cancel_historical_data,
            3: self._on_place_order, 4: self._on_cancel_order, 58: self._on_global_cancel,
            49: self._on_req_current_time, 8: self._on_req_ids, 17: self._on_req_managed_accounts,
            59: lambda c, f: None,  # reqMarketDataType
        }

    def _live(self) -> list[_Conn]:
        return [c for c in self._conns if not c.closed and c.client_id is not None]

    def _owners(self, order: FakeOrder) -> list[_Conn]:
        """Connections that receive live updates of `order`: those with its client id."""
        return [c for c in self._live() if c.client_id == order.client_id]

    def _drop_all(self) -> None:
        for conn in list(self._conns):
            conn.close()

    async def _restart(self, next_order_id: int | None) -> None:
        self._drop_all()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if next_order_id is not None:
            self._next_order_id = int(next_order_id)
        # start_server sets SO_REUSEADDR: the port is free again at once.
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    # ---- start-up and account ------------------------------------------------------------------
    def _on_start_api(self, conn: _Conn, fields: list[str]) -> None:
        r = FieldReader(fields[1:], "startApi")
        r.int()  # version
        client_id = r.int() or 0
        r.str()  # optional capabilities
        r.finish()
        if any(c.client_id == client_id for c in self._live()):
            conn.send(4, 2, -1, 326, "Unable to connect as the client id is already in use. "
                      "Retry with a unique client id.", "")
            conn.close()
            return
        conn.client_id = client_id
        conn.send(15, 1, self.account)
        conn.send(9, 1, self._next_order_id)

    def _on_req_ids(self, conn: _Conn, fields: list[str]) -> None:
        conn.send(9, 1, self._next_order_id)

    def _on_req_managed_accounts(self, conn: _Conn, fields: list[str]) -> None:
        conn.send(15, 1, self.account)

    def _on_req_current_time(self, conn: _Conn, fields: list[str]) -> None:
        conn.send(49, 1, int(dt.datetime.now(dt.timezone.utc).timestamp()))

    def _account_values(self) -> dict[str, float]:
        """The account tags IB reports, computed from cash and positions (Reg-T-like margins)."""
        stock = sum(h.quantity * self.prices[s] for s, h in self.holdings.items())
        gross = sum(abs(h.quantity) * self.prices[s] for s, h in self.holdings.items())
        net = self.cash + stock
        init, maint = 0.5 * gross, 0.25 * gross
        values = {
            "NetLiquidation": net, "TotalCashValue": self.cash, "SettledCash": self.cash,
            "EquityWithLoanValue": net, "GrossPositionValue": gross, "InitMarginReq": init,
            "MaintMarginReq": maint, "AvailableFunds": net - init, "ExcessLiquidity": net - maint,
            "BuyingPower": 4 * (net - init), "StockMarketValue": stock,
        }
        values.update(self.account_overrides)
        return {k: round(v, 2) for k, v in values.items()}

    def _send_account_values(self, conn: _Conn) -> None:
        conn.send(6, 2, "AccountCode", self.account, "", self.account)
        conn.send(6, 2, "AccountType", "INDIVIDUAL", "", self.account)
        values = self._account_values()
        for tag, value in values.items():
            conn.send(6, 2, tag, value, "USD", self.account)
        for tag, key in (("CashBalance", "TotalCashValue"), ("TotalCashBalance", "TotalCashValue"),
                         ("NetLiquidationByCurrency", "NetLiquidation")):
            conn.send(6, 2, tag, values[key], "BASE", self.account)
        # IB reports one ExchangeRate per currency held (value: one unit in the base currency).
        conn.send(6, 2, "ExchangeRate", "1.00", "BASE", self.account)
        for currency, rate in sorted({"USD": 1.0, **self.fx_rates}.items()):
            conn.send(6, 2, "ExchangeRate", rate, currency, self.account)
        conn.send(8, 1, dt.datetime.now(NEW_YORK).strftime("%H:%M"))

    def _portfolio_fields(self, symbol: str, h: Holding) -> list[Any]:
        i, price = INSTRUMENTS[symbol], self.prices[symbol]
        unrealized = h.quantity * (price - h.avg_cost) if h.quantity else 0.0
        return named(
            ("msgId", 7), ("version", 8), ("conId", i.con_id), ("symbol", symbol), ("secType", "STK"),
            ("lastTradeDateOrContractMonth", ""), ("strike", 0.0), ("right", ""), ("multiplier", ""),
            ("primaryExchange", i.primary_exchange), ("currency", i.currency), ("localSymbol", symbol),
            ("tradingClass", symbol), ("position", qty(h.quantity)), ("marketPrice", price),
            ("marketValue", round(h.quantity * price, 2)), ("averageCost", round(h.avg_cost, 6)),
            ("unrealizedPNL", round(unrealized, 2)), ("realizedPNL", round(h.realized, 2)),
            ("accountName", self.account))

    def _position_fields(self, symbol: str, h: Holding) -> list[Any]:
        i = INSTRUMENTS[symbol]
        return named(
            ("msgId", 61), ("version", 3), ("account", self.account), ("conId", i.con_id),
            ("symbol", symbol), ("secType", "STK"), ("lastTradeDateOrContractMonth", ""),
            ("strike", 0.0), ("right", ""), ("multiplier", ""), ("exchange", i.primary_exchange),
            ("currency", i.currency), ("localSymbol", symbol), ("tradingClass", symbol),
            ("position", qty(h.quantity)), ("avgCost", round(h.avg_cost, 6)))

    def _on_req_account_updates(self, conn: _Conn, fields: list[str]) -> None:
        r = FieldReader(fields[1:], "reqAccountUpdates")
        r.int()
        subscribe, account = r.bool(), r.str()
        r.finish()
        conn.account_updates = subscribe
        if not subscribe:
            return
        if account and account != self.account:
            conn.send(4, 2, -1, 321, f"Error validating request: unknown account {account}", "")
            return
        self._send_account_values(conn)
        for symbol, h in sorted(self.holdings.items()):
            conn.send(*self._portfolio_fields(symbol, h))
        conn.send(54, 1, self.account)

    def _on_req_account_updates_multi(self, conn: _Conn, fields: list[str]) -> None:
        r = FieldReader(fields[1:], "reqAccountUpdatesMulti")
        r.int()
        req_id, account, model, _ledger = r.int(), r.str(), r.str(), r.bool()
        r.finish()
        conn.multi_req_ids.add(req_id)
        for tag, value in self._account_values().items():
            conn.send(73, 1, req_id, account or self.account, model, tag, value, "USD")
        conn.send(74, 1, req_id)

    def _on_cancel_multi(self, conn: _Conn, fields: list[str]) -> None:
        conn.multi_req_ids.discard(int(fields[2]))

    def _on_req_account_summary(self, conn: _Conn, fields: list[str]) -> None:
        r = FieldReader(fields[1:], "reqAccountSummary")
        r.int()
        req_id, _group, tags = r.int(), r.str(), r.str()
        r.finish()
        values = self._account_values()
        wanted = [t for t in tags.split(",") if t]
        if "AccountType" in wanted:
            conn.send(63, 1, req_id, self.account, "AccountType", "INDIVIDUAL", "")
        for tag in wanted:
            if tag in values:
                conn.send(63, 1, req_id, self.account, tag, values[tag], "USD")
        conn.send(64, 1, req_id)

    def _on_req_positions(self, conn: _Conn, fields: list[str]) -> None:
        conn.positions = True
        for symbol, h in sorted(self.holdings.items()):
            conn.send(*self._position_fields(symbol, h))
        conn.send(62, 1)

    def _on_cancel_positions(self, conn: _Conn, fields: list[str]) -> None:
        conn.positions = False

    def _broadcast_account(self, symbol: str | None) -> None:
        """Push account values, the symbol's portfolio line and position to subscribers."""
        for conn in self._live():
            if conn.account_updates:
                self._send_account_values(conn)
                if symbol in self.holdings:
                    conn.send(*self._portfolio_fields(symbol, self.holdings[symbol]))
            if conn.positions and symbol in self.holdings:
                conn.send(*self._position_fields(symbol, self.holdings[symbol]))
            for req_id in conn.multi_req_ids:
                for tag, value in self._account_values().items():
                    conn.send(73, 1, req_id, self.account, "", tag, value, "USD")

    # ---- orders: messages ----------------------------------------------------------------------
    def _order_contract(self, o: FakeOrder) -> list[Any]:
        i = o.instrument
        return named(("conId", i.con_id), ("symbol", i.symbol), ("secType", "STK"),
                     ("lastTradeDateOrContractMonth", ""), ("strike", 0.0), ("right", ""),
                     ("multiplier", ""), ("exchange", o.exchange), ("currency", i.currency),
                     ("localSymbol", i.symbol), ("tradingClass", i.symbol))

    def _lmt(self, o: FakeOrder) -> Any:
        return o.lmt_price if o.order_type in LIMIT_TYPES and o.lmt_price is not None else ""

    @staticmethod
    def _aux(o: FakeOrder) -> Any:
        return o.aux_price if o.aux_price is not None else ""

    def _open_order_fields(self, o: FakeOrder, what_if: dict[str, Any] | None = None) -> list[Any]:
        """openOrder (5), laid out as ib_async's Decoder.openOrder reads it at this server version."""
        f = [5, o.order_id] + self._order_contract(o) + named(
            ("action", o.action), ("totalQuantity", qty(o.total_qty)), ("orderType", o.order_type),
            ("lmtPrice", self._lmt(o)), ("auxPrice", self._aux(o)), ("tif", o.tif),
            ("ocaGroup", o.oca_group), ("account", o.account), ("openClose", ""), ("origin", 0),
            ("orderRef", o.order_ref), ("clientId", o.client_id), ("permId", o.perm_id), ("outsideRth", False),
            ("hidden", False), ("discretionaryAmt", 0.0), ("goodAfterTime", ""),
            ("sharesAllocation", ""), ("faGroup", ""), ("faMethod", ""), ("faPercentage", ""))
        if self.version < 177:
            f += named(("faProfile", ""))
        f += named(
            ("modelCode", ""), ("goodTillDate", ""), ("rule80A", ""), ("percentOffset", ""),
            ("settlingFirm", ""), ("shortSaleSlot", 0), ("designatedLocation", ""), ("exemptCode", -1),
            ("auctionStrategy", 0), ("startingPrice", ""), ("stockRefPrice", ""), ("delta", ""),
            ("stockRangeLower", ""), ("stockRangeUpper", ""), ("displaySize", 0), ("blockOrder", False),
            ("sweepToFill", False), ("allOrNone", False), ("minQty", ""), ("ocaType", 3),
            ("eTradeOnly", False), ("firmQuoteOnly", False), ("nbboPriceCap", ""), ("parentId", o.parent_id),
            ("triggerMethod", 0), ("volatility", ""), ("volatilityType", 0),
            ("deltaNeutralOrderType", ""), ("deltaNeutralAuxPrice", ""),
            ("continuousUpdate", False), ("referencePriceType", 0), ("trailStopPrice", ""),
            ("trailingPercent", ""), ("basisPoints", ""), ("basisPointsType", ""),
            ("comboLegsDescrip", ""), ("numComboLegs", 0), ("numOrderComboLegs", 0),
            ("numSmartComboRoutingParams", 0), ("scaleInitLevelSize", ""), ("scaleSubsLevelSize", ""),
            ("scalePriceIncrement", ""), ("hedgeType", ""), ("optOutSmartRouting", False),
            ("clearingAccount", ""), ("clearingIntent", "IB"), ("notHeld", False),
            ("deltaNeutralContractPresent", False), ("algoStrategy", ""), ("solicited", False),
            ("whatIf", what_if is not None), ("status", o.status))
        w = what_if or {}
        f += [w.get(k, "") for k in ("initMarginBefore", "maintMarginBefore", "equityWithLoanBefore",
                                      "initMarginChange", "maintMarginChange", "equityWithLoanChange",
                                      "initMarginAfter", "maintMarginAfter", "equityWithLoanAfter",
                                      "commission", "minCommission", "maxCommission")]
        f += named(
            ("commissionCurrency", "USD" if what_if else ""), ("warningText", ""),
            ("randomizeSize", False), ("randomizePrice", False), ("numConditions", 0),
            ("adjustedOrderType", "None"), ("triggerPrice", ""), ("trailStopPrice", ""),
            ("lmtPriceOffset", ""), ("adjustedStopPrice", ""), ("adjustedStopLimitPrice", ""),
            ("adjustedTrailingAmount", ""), ("adjustableTrailingUnit", 0), ("softDollarTierName", ""),
            ("softDollarTierValue", ""), ("softDollarTierDisplayName", ""), ("cashQty", ""),
            ("dontUseAutoPriceForHedge", True), ("isOmsContainer", False),
            ("discretionaryUpToLimitPrice", False), ("usePriceMgmtAlgo", False),
            ("duration", ""), ("postToAts", ""), ("autoCancelParent", False),
            ("minTradeQty", ""), ("minCompeteSize", ""), ("competeAgainstBestOffset", ""),
            ("midOffsetAtWhole", ""), ("midOffsetAtHalf", ""))
        return f

    def _completed_order_fields(self, o: FakeOrder) -> list[Any]:
        """completedOrder (101), laid out as ib_async's Decoder.completedOrder reads it."""
        f = [101] + self._order_contract(o) + named(
            ("action", o.action), ("totalQuantity", qty(o.total_qty)), ("orderType", o.order_type),
            ("lmtPrice", self._lmt(o)), ("auxPrice", self._aux(o)), ("tif", o.tif),
            ("ocaGroup", o.oca_group), ("account", o.account), ("openClose", ""), ("origin", 0),
            ("orderRef", o.order_ref), ("permId", o.perm_id), ("outsideRth", False), ("hidden", False),
            ("discretionaryAmt", 0.0), ("goodAfterTime", ""), ("faGroup", ""), ("faMethod", ""),
            ("faPercentage", ""))
        if self.version < 177:
            f += named(("faProfile", ""))
        completed_status = {"Filled": "Filled", "Inactive": "Rejected"}.get(o.status, "Cancelled by Trader")
        f += named(
            ("modelCode", ""), ("goodTillDate", ""), ("rule80A", ""), ("percentOffset", ""),
            ("settlingFirm", ""), ("shortSaleSlot", 0), ("designatedLocation", ""), ("exemptCode", -1),
            ("startingPrice", ""), ("stockRefPrice", ""), ("delta", ""), ("stockRangeLower", ""),
            ("stockRangeUpper", ""), ("displaySize", 0), ("sweepToFill", False), ("allOrNone", False),
            ("minQty", ""), ("ocaType", 3), ("triggerMethod", 0), ("volatility", ""),
            ("volatilityType", 0), ("deltaNeutralOrderType", ""), ("deltaNeutralAuxPrice", ""),
            ("continuousUpdate", False), ("referencePriceType", 0), ("trailStopPrice", ""),
            ("trailingPercent", ""), ("comboLegsDescrip", ""), ("numComboLegs", 0),
            ("numOrderComboLegs", 0), ("numSmartComboRoutingParams", 0), ("scaleInitLevelSize", ""),
            ("scaleSubsLevelSize", ""), ("scalePriceIncrement", ""), ("hedgeType", ""),
            ("clearingAccount", ""), ("clearingIntent", "IB"), ("notHeld", False),
            ("deltaNeutralContractPresent", False), ("algoStrategy", ""), ("solicited", False),
            ("status", o.status), ("randomizeSize", False), ("randomizePrice", False),
            ("numConditions", 0), ("trailStopPrice", ""), ("lmtPriceOffset", ""), ("cashQty", ""),
            ("dontUseAutoPriceForHedge", True), ("isOmsContainer", False), ("autoCancelDate", ""),
            ("filledQuantity", qty(o.filled)), ("refFuturesConId", 0), ("autoCancelParent", False),
            ("shareholder", ""), ("imbalanceOnly", False), ("routeMarketableToBbo", False),
            ("parentPermId", self._parent_perm_id(o)), ("completedTime", o.completed_time),
            ("completedStatus", completed_status), ("minTradeQty", ""), ("minCompeteSize", ""),
            ("competeAgainstBestOffset", ""), ("midOffsetAtWhole", ""), ("midOffsetAtHalf", ""))
        return f

    def _parent_perm_id(self, o: FakeOrder) -> int:
        parent = self._find(o.client_id, o.parent_id) if o.parent_id else None
        return parent.perm_id if parent else 0

    def _status_fields(self, o: FakeOrder) -> list[Any]:
        return named(
            ("msgId", 3), ("orderId", o.order_id), ("status", o.status), ("filled", qty(o.filled)),
            ("remaining", qty(o.remaining)), ("avgFillPrice", round(o.avg_fill_price, 6)),
            ("permId", o.perm_id), ("parentId", o.parent_id), ("lastFillPrice", o.last_fill_price),
            ("clientId", o.client_id), ("whyHeld", ""), ("mktCapPrice", 0.0))

    def _exec_fields(self, req_id: int, e: FakeExecution) -> list[Any]:
        o = e.order
        f = [11, req_id, o.order_id] + self._order_contract(o) + named(
            ("execId", e.exec_id), ("time", e.time.astimezone(NEW_YORK).strftime("%Y%m%d %H:%M:%S US/Eastern")),
            ("acctNumber", o.account), ("exchange", o.instrument.primary_exchange),
            ("side", "BOT" if o.action == "BUY" else "SLD"), ("shares", qty(e.shares)),
            ("price", e.price), ("permId", o.perm_id), ("clientId", o.client_id), ("liquidation", 0),
            ("cumQty", qty(e.cum_qty)), ("avgPrice", round(e.avg_price, 6)), ("orderRef", o.order_ref),
            ("evRule", ""), ("evMultiplier", ""), ("modelCode", ""), ("lastLiquidity", 2))
        if self.version >= 178:
            f += named(("pendingPriceRevision", False))
        return f

    def _commission_fields(self, e: FakeExecution) -> list[Any]:
        return named(("msgId", 59), ("version", 1), ("execId", e.exec_id), ("commission", e.commission),
                     ("currency", "USD"),
                     ("realizedPNL", UNSET_DOUBLE if e.realized_pnl is None else round(e.realized_pnl, 2)),
                     ("yield", UNSET_DOUBLE), ("yieldRedemptionDate", ""))

    def _send_order(self, conn: _Conn, o: FakeOrder) -> None:
        conn.send(*self._open_order_fields(o))
        conn.send(*self._status_fields(o))

    def _on_req_open_orders(self, conn: _Conn, fields: list[str]) -> None:
        for o in self.orders_by_perm.values():
            if o.is_open and o.client_id == conn.client_id:
                self._send_order(conn, o)
        conn.send(53, 1)

    def _on_req_all_open_orders(self, conn: _Conn, fields: list[str]) -> None:
        for o in self.orders_by_perm.values():
            if o.is_open:
                self._send_order(conn, o)
        conn.send(53, 1)

    def _on_req_completed_orders(self, conn: _Conn, fields: list[str]) -> None:
        api_only = fields[1] not in ("", "0")
        for o in self.orders_by_perm.values():
            if o.perm_id in self._forgotten:
                continue
            if not o.is_open and not (api_only and o.client_id == 0 and o.order_id == 0):
                conn.send(*self._completed_order_fields(o))
        conn.send(102)

    def _on_req_executions(self, conn: _Conn, fields: list[str]) -> None:
        r = FieldReader(fields[1:], "reqExecutions")
        r.int()
        req_id, client_id = r.int(), r.int() or 0
        account, _time, symbol, sec_type, _exchange, side = (r.str() for _ in range(6))
        r.finish()
        for e in self.executions:
            o = e.order
            if ((client_id and o.client_id != client_id) or (account and o.account != account)
                    or (symbol and o.instrument.symbol != symbol) or (sec_type and sec_type != "STK")
                    or (side and side[:1] != o.action[:1])):
                continue
            conn.send(*self._exec_fields(req_id, e))
            conn.send(*self._commission_fields(e))
        conn.send(55, 1, req_id)

    # ---- orders: life cycle --------------------------------------------------------------------
    def _new_ids(self, order_id: int | None) -> tuple[int, int]:
        perm_id = self._next_perm_id
        self._next_perm_id += 1
        if order_id:
            self._next_order_id = max(self._next_order_id, order_id + 1)
        return order_id or 0, perm_id

    def _find(self, client_id: int, order_id: int) -> FakeOrder | None:
        for o in self.orders_by_perm.values():
            if o.client_id == client_id and o.order_id == order_id:
                return o
        return None

    def _on_place_order(self, conn: _Conn, fields: list[str]) -> None:
        p = parse_place_order(fields, self.version)
        p["clientId"] = conn.client_id
        self.parsed_orders.append(p)
        order_id, c = p["orderId"], p["contract"]
        if p["whatIf"]:
            instrument = self._lookup(c)
            if instrument is None:
                conn.send(4, 2, order_id, 200, "No security definition has been found for the request", "")
            else:
                self._answer_what_if(conn, p, instrument)
            return
        existing = self._find(conn.client_id, order_id)
        if existing is not None and existing.is_open:
            self._modify(conn, existing, p)  # ib_async modifies an order by sending its id again
            return
        if existing is not None or order_id <= self._max_id_used.get(conn.client_id, 0):
            conn.send(4, 2, order_id, 103, "Duplicate order id", "")  # refused, not stored
            return
        self._max_id_used[conn.client_id] = order_id
        instrument = self._lookup(c)
        if instrument is None:
            conn.send(4, 2, order_id, 200, "No security definition has been found for the request", "")
            return
        _, perm_id = self._new_ids(order_id)
        aux = p["auxPrice"] if p["auxPrice"] is not None and p["auxPrice"] < UNSET_DOUBLE else None
        order = FakeOrder(
            client_id=conn.client_id, order_id=order_id, perm_id=perm_id, instrument=instrument,
            exchange=c["exchange"] or "SMART", action=p["action"], total_qty=p["totalQuantity"] or 0.0,
            order_type=p["orderType"], lmt_price=p["lmtPrice"], tif=p["tif"] or "DAY",
            order_ref=p["orderRef"], account=p["account"] or self.account, aux_price=aux,
            parent_id=p["parentId"] or 0, oca_group=p["ocaGroup"])
        self.orders_by_perm[perm_id] = order
        rejection = self._rejection(order)
        if rejection:
            code, reason = rejection
            order.status = "Inactive"
            order.completed_time = dt.datetime.now(NEW_YORK).strftime("%Y%m%d %H:%M:%S America/New_York")
            if code == 201:
                conn.send(4, 2, order_id, 201, f"Order rejected - reason:{reason}", "")
                conn.send(*self._status_fields(order))
            else:
                conn.send(4, 2, order_id, code, reason, "")
            return
        if self._drop_before_ack is not None:
            self._drop_before_ack -= 1
            if self._drop_before_ack <= 0:
                self._drop_before_ack = None
                self._drop_all()
                self._acknowledge(order)  # accepted and working; nobody is told
                return
        warnings, self._warn_next = self._warn_next, []
        for code, message in warnings:
            conn.send(4, 2, order_id, code, message, "")
        self._acknowledge(order)
        if self._drop_after is not None:
            self._drop_after -= 1
            if self._drop_after <= 0:
                self._drop_after = None
                self._drop_all()

    def _rejection(self, o: FakeOrder) -> tuple[int, str] | None:
        """(error code, reason) when the gateway refuses a new order, or None."""
        if self._reject_next is not None:
            rejection, self._reject_next = self._reject_next, None
            return rejection
        if o.action not in ("BUY", "SELL"):
            reason = f"invalid action {o.action!r}"
        elif o.total_qty <= 0:
            reason = "order quantity must be positive"
        elif o.order_type not in ORDER_TYPES:
            reason = f"the fake gateway supports {', '.join(ORDER_TYPES)}, not {o.order_type!r}"
        elif o.order_type in LIMIT_TYPES and (o.lmt_price is None or o.lmt_price <= 0):
            reason = "a limit order needs a positive limit price"
        elif o.order_type in ("STP", "STP LMT", "TRAIL") and (o.aux_price is None or o.aux_price <= 0):
            reason = f"a {o.order_type} order needs a positive aux price"
        elif o.account != self.account:
            reason = f"unknown account {o.account!r}"
        else:
            return None
        return 201, reason

    def _acknowledge(self, o: FakeOrder) -> None:
        """PreSubmitted then Submitted to the owner; marketable orders fill after `fill_delay`."""
        for conn in self._owners(o):
            self._send_order(conn, o)
        o.status = "Submitted"
        for conn in self._owners(o):
            self._send_order(conn, o)
        if o.order_type in CONTINUOUS_TYPES:
            asyncio.get_running_loop().call_later(self.fill_delay, self._match, o)

    def _modify(self, conn: _Conn, o: FakeOrder, p: dict[str, Any]) -> None:
        o.total_qty = p["totalQuantity"] or o.total_qty
        o.lmt_price, o.tif, o.order_ref = p["lmtPrice"], p["tif"] or o.tif, p["orderRef"]
        if p["auxPrice"] is not None and p["auxPrice"] < UNSET_DOUBLE:
            o.aux_price = p["auxPrice"]
        for c in self._owners(o):
            self._send_order(c, o)
        self._match(o)

    def _crosses(self, o: FakeOrder, price: float) -> bool:
        if o.order_type in ("MKT", "MOC", "STP"):
            return True
        return price <= o.lmt_price if o.action == "BUY" else price >= o.lmt_price

    def _match(self, o: FakeOrder) -> None:
        """Fill a continuous-session order completely if the current price allows it.

        Stops trigger when the price reaches the stop (BUY: at or above, SELL: at or below); a
        bracket child works only once its parent filled; TRAIL orders fill only by `partial_fill`.
        """
        if not o.is_open or o.order_type not in CONTINUOUS_TYPES:
            return
        if o.parent_id:
            parent = self._find(o.client_id, o.parent_id)
            if parent is not None and parent.status != "Filled":
                return
        price = self.prices[o.instrument.symbol]
        if o.order_type in ("STP", "STP LMT") and not (
                price >= o.aux_price if o.action == "BUY" else price <= o.aux_price):
            return
        if self._crosses(o, price):
            self._execute(o, o.remaining, price)

    def _execute(self, o: FakeOrder, shares: float, price: float) -> None:
        """One execution: update the order, holdings and cash, and tell the owner and subscribers."""
        shares = min(shares, o.remaining)
        if shares <= 0:
            return
        value_before = o.filled * o.avg_fill_price
        o.filled += shares
        o.avg_fill_price = (value_before + shares * price) / o.filled
        o.last_fill_price = price
        total_commission = commission_for(o.filled, o.filled * o.avg_fill_price)
        commission = round(total_commission - o.commission_charged, 6)
        o.commission_charged = total_commission
        realized = self._book(o.instrument.symbol, shares if o.action == "BUY" else -shares, price, commission)
        exec_id = f"0000f{o.perm_id:011x}.{self._next_exec:08x}.01.01"
        self._next_exec += 1
        e = FakeExecution(exec_id, o, shares, price, o.filled, o.avg_fill_price,
                          dt.datetime.now(dt.timezone.utc), commission, realized)
        self.executions.append(e)
        if o.remaining <= 1e-9:
            o.status = "Filled"
            o.completed_time = dt.datetime.now(NEW_YORK).strftime("%Y%m%d %H:%M:%S America/New_York")

        def report() -> None:
            for conn in self._owners(o):
                conn.send(*self._exec_fields(-1, e))
                self._send_order(conn, o)
                conn.send(*self._commission_fields(e))

        if self._fill_report_delay > 0:
            asyncio.get_running_loop().call_later(self._fill_report_delay, report)
        else:
            report()
        self._broadcast_account(o.instrument.symbol)
        if o.status == "Filled":
            for other in list(self.orders_by_perm.values()):
                if other is o or not other.is_open:
                    continue
                if o.oca_group and other.oca_group == o.oca_group:
                    self._cancel(other, f"OCA group {o.oca_group} filled")
                elif other.parent_id == o.order_id and other.client_id == o.client_id and o.order_id:
                    self._match(other)  # a bracket child starts working

    def _book(self, symbol: str, signed: float, price: float, commission: float) -> float | None:
        """Apply a fill to the holding and cash; returns realized PnL when it closes shares."""
        h = self.holdings.setdefault(symbol, Holding())
        self.cash -= signed * price + commission
        realized = None
        if h.quantity == 0 or (h.quantity > 0) == (signed > 0):
            cost = h.quantity * h.avg_cost + signed * price + commission
            h.quantity += signed
            h.avg_cost = cost / h.quantity
        else:
            closing = min(abs(signed), abs(h.quantity))
            direction = 1 if h.quantity > 0 else -1
            realized = closing * direction * (price - h.avg_cost) - commission
            h.realized += realized
            h.quantity += signed
            if abs(h.quantity) < 1e-9:
                h.quantity, h.avg_cost = 0.0, 0.0
            elif (h.quantity > 0) != (direction > 0):  # flipped through zero
                h.avg_cost = price
        return realized

    def _cancel(self, o: FakeOrder, reason: str = "") -> None:
        o.status = "Cancelled"
        o.completed_time = dt.datetime.now(NEW_YORK).strftime("%Y%m%d %H:%M:%S America/New_York")
        for conn in self._owners(o):
            conn.send(*self._status_fields(o))
            conn.send(4, 2, o.order_id, 202, f"Order Canceled - reason:{reason}", "")

    def _finish_cancel(self, o: FakeOrder) -> None:
        if o.status == "PendingCancel":  # it may have filled meanwhile
            self._cancel(o)

    def _on_cancel_order(self, conn: _Conn, fields: list[str]) -> None:
        r = FieldReader(fields[1:], "cancelOrder")
        r.int()
        order_id = r.int()
        r.str()  # manualCancelOrderTime (>= 169)
        r.finish()
        o = self._find(conn.client_id, order_id)
        if o is None:
            conn.send(4, 2, order_id, 10147, f"OrderId {order_id} that needs to be cancelled is not found.", "")
        elif not o.is_open or o.status == "PendingCancel":
            if self._cancel_refusal_code == 161:
                conn.send(4, 2, order_id, 161, "Cancel attempted when order is not in a cancellable state.  "
                          f"Order permId ={o.perm_id}", "")
            else:
                conn.send(4, 2, order_id, 10148,
                          f"OrderId {order_id} that needs to be cancelled can not be cancelled, state: {o.status}.", "")
        elif self._cancel_delay > 0:
            o.status = "PendingCancel"
            for c in self._owners(o):
                c.send(*self._status_fields(o))
            asyncio.get_running_loop().call_later(self._cancel_delay, self._finish_cancel, o)
        else:
            self._cancel(o)

    def _on_global_cancel(self, conn: _Conn, fields: list[str]) -> None:
        for o in list(self.orders_by_perm.values()):
            if o.is_open:
                self._cancel(o, "global cancel")

    def _answer_what_if(self, conn: _Conn, p: dict[str, Any], instrument: Instrument) -> None:
        price = p["lmtPrice"] if p["orderType"] in ("LMT", "LOC") and p["lmtPrice"] else self.prices[instrument.symbol]
        shares = p["totalQuantity"] or 0.0
        values = self._account_values()
        change = 0.5 * shares * price
        o = FakeOrder(conn.client_id, p["orderId"], 0, instrument, p["contract"]["exchange"] or "SMART",
                      p["action"], shares, p["orderType"], p["lmtPrice"], p["tif"] or "DAY",
                      p["orderRef"], p["account"] or self.account, status="PreSubmitted")
        commission = commission_for(shares, shares * price)
        what_if = {
            "initMarginBefore": values["InitMarginReq"], "maintMarginBefore": values["MaintMarginReq"],
            "equityWithLoanBefore": values["EquityWithLoanValue"], "initMarginChange": round(change, 2),
            "maintMarginChange": round(change / 2, 2), "equityWithLoanChange": -commission,
            "initMarginAfter": round(values["InitMarginReq"] + change, 2),
            "maintMarginAfter": round(values["MaintMarginReq"] + change / 2, 2),
            "equityWithLoanAfter": round(values["EquityWithLoanValue"] - commission, 2),
            "commission": commission, "minCommission": commission, "maxCommission": commission,
        }
        conn.send(*self._open_order_fields(o, what_if))

    # ---- control-method bodies (loop thread) ---------------------------------------------------
    def _set_price(self, symbol: str, price: float) -> None:
        if symbol not in INSTRUMENTS:
            raise KeyError(f"unknown symbol {symbol!r}; the fake knows {sorted(INSTRUMENTS)}")
        self.prices[symbol] = price
        for o in list(self.orders_by_perm.values()):
            if o.instrument.symbol == symbol:
                self._match(o)
        self._broadcast_account(symbol)

    def _inject_order(self, symbol: str, action: str, quantity: float, limit_price: float | None,
                      order_ref: str, client_id: int, tif: str, order_type: str, aux_price: float | None,
                      parent_id: int, oca_group: str) -> FakeOrder:
        instrument = INSTRUMENTS[symbol]
        # Manual TWS orders carry order id 0; other API clients get ids clear of everybody's.
        order_id = 0 if client_id == 0 else max(self._next_order_id, 9000)
        order_id, perm_id = self._new_ids(order_id)
        if client_id:
            self._max_id_used[client_id] = max(self._max_id_used.get(client_id, 0), order_id)
        o = FakeOrder(client_id, order_id, perm_id, instrument, "SMART", action, quantity, order_type,
                      limit_price, tif, order_ref, self.account, aux_price=aux_price, parent_id=parent_id,
                      oca_group=oca_group)
        self.orders_by_perm[perm_id] = o
        self._acknowledge(o)
        return dataclasses.replace(o)

    def _partial_fill(self, order_id: int, quantity: float, client_id: int | None, perm_id: int | None) -> None:
        matches = [o for o in self.orders_by_perm.values() if o.is_open and (
            o.perm_id == perm_id if perm_id is not None else
            o.order_id == order_id and (client_id is None or o.client_id == client_id))]
        if len(matches) != 1:
            raise KeyError(f"expected one open order with id {order_id} (client {client_id}, perm {perm_id}), "
                           f"found {len(matches)}")
        o = matches[0]
        price = o.lmt_price if o.order_type in LIMIT_TYPES else self.prices[o.instrument.symbol]
        self._execute(o, quantity, price)

    def _closing_auction(self) -> None:
        for o in list(self.orders_by_perm.values()):
            if o.is_open and o.order_type in ("MOC", "LOC"):
                price = self.prices[o.instrument.symbol]
                if self._crosses(o, price):
                    self._execute(o, o.remaining, price)
                else:
                    self._cancel(o, "not filled in the closing auction")

    # ---- contracts and history -----------------------------------------------------------------
    def _lookup(self, c: dict[str, Any]) -> Instrument | None:
        instrument = INSTRUMENTS.get(c["symbol"].upper()) if c["symbol"] else next(
            (i for i in INSTRUMENTS.values() if i.con_id == c["conId"]), None)
        if instrument is None:
            return None
        if c["secType"] not in ("STK", "") or c["currency"] not in (instrument.currency, ""):
            return None
        if c["conId"] and c["conId"] != instrument.con_id:
            return None
        if c["exchange"] not in ("", "SMART", instrument.primary_exchange):
            return None
        return instrument

    def _on_req_contract_details(self, conn: _Conn, fields: list[str]) -> None:
        r = FieldReader(fields[1:], "reqContractDetails")
        r.int()
        req_id, c = r.int(), read_contract(r)
        r.bool(), r.str(), r.str()  # includeExpired, secIdType, secId
        if self.version >= 176:
            r.str()  # issuerId
        r.finish()
        i = self._lookup(c)
        if i is None:
            conn.send(4, 2, req_id, 200, "No security definition has been found for the request", "")
            return
        conn.send(*named(
            ("msgId", 10), ("reqId", req_id), ("symbol", i.symbol), ("secType", "STK"),
            ("lastTradeDateOrContractMonth", ""), ("strike", 0.0), ("right", ""),
            ("exchange", c["exchange"] or "SMART"), ("currency", i.currency), ("localSymbol", i.symbol),
            ("marketName", i.symbol), ("tradingClass", i.symbol), ("conId", i.con_id), ("minTick", 0.01),
            ("multiplier", ""), ("orderTypes", "ACTIVETIM,AD,ALERT,ALLOC,LIT,LMT,LOC,MKT,MOC,STP"),
            ("validExchanges", f"SMART,AMEX,NYSE,{i.primary_exchange},ISLAND,IEX"),
            ("priceMagnifier", 1), ("underConId", 0), ("longName", i.long_name),
            ("primaryExchange", i.primary_exchange), ("contractMonth", ""), ("industry", ""),
            ("category", ""), ("subcategory", ""), ("timeZoneId", "US/Eastern"),
            ("tradingHours", ""), ("liquidHours", ""), ("evRule", ""), ("evMultiplier", ""),
            ("numSecIds", 0), ("aggGroup", 1), ("underSymbol", ""), ("underSecType", ""),
            ("marketRuleIds", "26,26,26"), ("realExpirationDate", ""), ("stockType", "ETF"),
            ("minSize", 0.0001), ("sizeIncrement", 0.0001), ("suggestedSizeIncrement", 100)))
        conn.send(52, 1, req_id)

    def _daily_bars(self, symbol: str) -> list[tuple]:
        """Test-given bars, or ~3 years of deterministic weekday bars ending today at the start price."""
        if symbol in self.bars:
            return self.bars[symbol]
        days, day = [], self.today
        while len(days) < 780:
            if day.weekday() < 5:
                days.append(day)
            day -= dt.timedelta(days=1)
        rng = random.Random(f"fake-ib-bars:{symbol}")
        close, rows = INSTRUMENTS[symbol].price, []
        for day in days:  # newest first, walking back in time
            prev_close = close / math.exp(rng.gauss(0.0003, 0.012))
            open_ = prev_close * math.exp(rng.gauss(0, 0.004))
            high = max(open_, close) * (1 + abs(rng.gauss(0, 0.005)))
            low = min(open_, close) * (1 - abs(rng.gauss(0, 0.005)))
            rows.append((day, round(open_, 2), round(high, 2), round(low, 2), round(close, 2),
                         rng.randint(1_000_000, 50_000_000)))
            close = prev_close
        self.bars[symbol] = rows[::-1]
        return self.bars[symbol]

    def _end_moment(self, text: str) -> dt.datetime:
        """The New York moment an endDateTime names; '' means now (today's close at the latest)."""
        if not text:
            return dt.datetime.combine(self.today, dt.time(16, 0), NEW_YORK)
        if "-" in text[:9]:  # "yyyymmdd-hh:mm:ss" is UTC
            moment = dt.datetime.strptime(text, "%Y%m%d-%H:%M:%S").replace(tzinfo=dt.timezone.utc)
        else:
            date, clock, *zone = text.split()
            moment = dt.datetime.strptime(date + clock, "%Y%m%d%H:%M:%S").replace(
                tzinfo=ZoneInfo(zone[0]) if zone else NEW_YORK)
        return moment.astimezone(NEW_YORK)

    def _refusal(self, conn: _Conn, r: HistoryRequest) -> str:
        """Why IB's pacing rules refuse request `r` ("" when they let it through); counts it."""
        left, symbol = self._refuse_history
        if left and symbol in (None, r.symbol):
            self._refuse_history = (left - 1, symbol)
            return "pacing violation"
        if not self.pacing:
            return ""
        if r.open_before >= MAX_OPEN:
            return "too many open"
        if not r.small:
            return ""  # larger bars: soft throttling at IB, never a refusal
        before = [p for p in self.history_log if p.small and p is not r and r.at - p.at < SMALL_PERIOD]
        if sum(p.weight for p in before) + r.weight > SMALL_LIMIT:
            return "pacing violation"
        if any(p.identity == r.identity and r.at - p.at < IDENTICAL_GAP for p in before):
            return "pacing violation"
        if sum(1 for p in before if p.contract_key == r.contract_key
               and r.at - p.at < PER_CONTRACT_PERIOD) + 1 >= PER_CONTRACT_LIMIT:
            return "pacing violation"
        return ""

    def _on_req_historical_data(self, conn: _Conn, fields: list[str]) -> None:
        r = FieldReader(fields[1:], "reqHistoricalData")
        req_id, c = r.int(), read_contract(r)
        r.bool()  # includeExpired
        end, bar_size, duration = r.str(), r.str(), r.str()
        rth, what, _format_date = r.bool(), r.str(), r.int()
        if c["secType"] == "BAG":
            for _ in range((r.int() or 0) * 4):  # combo legs: conId, ratio, action, exchange
                r.str()
        _keep_up_to_date, _chart_options = r.bool(), r.str()
        r.finish()
        i = self._lookup(c)
        request = HistoryRequest(self.clock(), conn.client_id, req_id, i.symbol if i else c["symbol"],
                                 c["exchange"], end, duration, bar_size, what, rth,
                                 open_before=len(conn.open_history))
        self.history_log.append(request)

        def refuse(code: int, message: str, answer: str = "") -> None:
            request.answer = answer or f"error {code}"
            conn.send(4, 2, req_id, code, message, "")

        if i is None:
            return refuse(200, "No security definition has been found for the request")
        refused = self._refusal(conn, request)
        if refused:
            return refuse(162, TOO_MANY_OPEN if refused == "too many open" else PACING_VIOLATION, refused)
        if bar_size not in SERVED_BAR_SIZES:
            return refuse(162, "Historical Market Data Service error message:"
                          f"the fake gateway serves {', '.join(SERVED_BAR_SIZES)} bars only, not {bar_size!r}")
        if what not in ("TRADES", "ADJUSTED_LAST", "MIDPOINT", "BID", "ASK", "BID_ASK"):
            return refuse(321, f"Error validating request.-'bP' : cause - unknown whatToShow {what!r}")
        if what == "ADJUSTED_LAST" and end:
            return refuse(321, "Error validating request.-'bX' : cause - End date not supported with adjusted last")
        try:
            count, unit = duration.split()
            count = int(count)
            moment = self._end_moment(end)
            if unit == "D" and count > 365:
                raise ValueError("Historical data requests for durations longer than 365 days must be made in years.")
        except (ValueError, KeyError) as exc:
            return refuse(321, f"Error validating request.-'bP' : cause - {exc}")
        daily = [b for b in self._daily_bars(i.symbol) if b[0] <= moment.date()]
        if what == "ADJUSTED_LAST":
            daily = self._adjusted(i.symbol, daily)
        if unit == "D":
            daily = daily[-count:]
        elif unit == "S":
            daily = daily[-math.ceil(count / RTH_SECONDS):]
        elif unit in ("W", "M", "Y"):
            first = {"W": lambda d: d - dt.timedelta(weeks=count),
                     "M": lambda d: _months_before(d, count),
                     "Y": lambda d: _months_before(d, 12 * count)}[unit](moment.date())
            daily = [b for b in daily if b[0] > first]
        else:
            return refuse(321, f"Error validating request.-'bP' : cause - unknown duration unit {unit!r}")
        if not daily:
            return refuse(162, "Historical Market Data Service error message:HMDS query returned no data")
        bars = daily
        if bar_size != "1 day":
            bars = self._intraday_bars(daily, BAR_SECONDS[bar_size])
            bars = [b for b in bars if b[0] < moment]
            if unit == "S":
                bars = bars[-max(1, count // BAR_SECONDS[bar_size]):]
        out: list[Any] = [17, req_id, f"{bars[0][0]:%Y%m%d} 00:00:00", f"{moment.date():%Y%m%d} 23:59:59", len(bars)]
        for when, o, h, low, c_, v in bars:
            # formatDate=2: daily bars as yyyymmdd, intraday bars as epoch seconds
            stamp = f"{when:%Y%m%d}" if not isinstance(when, dt.datetime) else str(int(when.timestamp()))
            out += [stamp, o, h, low, c_, qty(v), round((o + h + low + c_) / 4, 4), max(1, int(v) // 100)]
        request.answer, request.bars = "bars", len(bars)

        def answer() -> None:
            if conn.open_history.pop(req_id, None) is not None:  # not cancelled meanwhile
                conn.send(*out)

        if self._history_delay == math.inf:
            conn.open_history[req_id] = (None, answer)
        elif self._history_delay > 0 and self._loop is not None:
            conn.open_history[req_id] = (self._loop.call_later(self._history_delay, answer), answer)
        else:
            conn.send(*out)

    def _on_cancel_historical_data(self, conn: _Conn, fields: list[str]) -> None:
        r = FieldReader(fields[1:], "cancelHistoricalData")
        r.int()  # version
        req_id = r.int()
        r.finish()
        handle, _answer = conn.open_history.pop(req_id, (None, None))
        if handle is not None:
            handle.cancel()

    def _adjusted(self, symbol: str, daily: list[tuple]) -> list[tuple]:
        """ADJUSTED_LAST: every bar before an ex-date scaled by 1 - dividend / the close before it."""
        events = sorted(self.dividends.get(symbol, {}).items())
        if not events:
            return daily
        closes = {b[0]: b[4] for b in self._daily_bars(symbol)}
        days = sorted(closes)
        out = []
        for when, o, h, low, c, v in daily:
            factor = 1.0
            for ex, amount in events:
                if when < ex:
                    prior = [d for d in days if d < ex]
                    factor *= 1 - amount / closes[prior[-1]] if prior else 1.0
            out.append((when, round(o * factor, 4), round(h * factor, 4), round(low * factor, 4),
                        round(c * factor, 4), v))
        return out

    @staticmethod
    def _intraday_bars(daily: list[tuple], seconds: int) -> list[tuple]:
        """Regular-hours bars of `seconds` per session, walking from the day's open to its close."""
        n = RTH_SECONDS // seconds
        rows = []
        for day, o, h, low, c, v in daily:
            start = dt.datetime.combine(day, dt.time(9, 30), NEW_YORK)
            for k in range(n):
                p0, p1 = o + (c - o) * k / n, o + (c - o) * (k + 1) / n
                wiggle = (h - low) * 0.05 * (1 if k % 2 else -1)
                rows.append((start + dt.timedelta(seconds=seconds * k), round(p0, 2), round(max(p0, p1) + abs(wiggle), 2),
                             round(min(p0, p1) - abs(wiggle), 2), round(p1 + wiggle * 0.2, 2), max(1, v // n)))
        return rows


def _months_before(day: dt.date, months: int) -> dt.date:
    """The same day `months` calendar months earlier (the month's last day when it has fewer)."""
    import calendar
    year, month = divmod(day.year * 12 + day.month - 1 - months, 12)
    return dt.date(year, month + 1, min(day.day, calendar.monthrange(year, month + 1)[1]))
