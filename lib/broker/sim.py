"""`SimBroker`: the embedded broker, a persistent simulator with bundled SYNTHETIC daily bars.

URL: `sim` (state in `runs/sim.sqlite`) or `sim:///PATH` (`sim:///runs/x.sqlite` is relative,
`sim:////tmp/x.sqlite` absolute), with optional query options
`?as_of=YYYY-MM-DD|today&account=DU...&cash=N&slippage_bps=N&client_id=N`.

State. One SQLite file (WAL, busy timeout, every change in one `BEGIN IMMEDIATE` transaction)
holds cash, positions with average cost, orders, fills with commission, the order-id sequence,
the account id, the starting cash and the simulation clock, so any number of processes can share
one account. `account` and `cash` only apply when the file is created (a different value later is
refused); `slippage_bps` and `client_id` belong to the connection.

Clock. `as_of` is a session date; the simulator lives at that day's close. A new file starts at the
last XNYS session on or before today (UTC), clamped to the bars' range; after that the stored
clock is authoritative: `as_of=` in the URL (or `today`) or `advance_to()` moves it forward, never back.

Prices. The current price of a symbol is the close of the `as_of` session, unless an operator set
an override with `set_price()`; overrides last until the clock moves.

Fill rules (evaluated on placement, on `set_price()`, and for each session the clock passes):
  * MKT  fills at the current price plus slippage (buys pay `slippage_bps` more, sells get less).
  * MOC  fills at the close (the current price), without slippage: the closing auction is the close.
  * LMT  on placement or a price override: fills at the current price if it is at or better than
         the limit. For each passed session: fills if the day's low (buy) / high (sell) reached the
         limit, at the limit or at the close if the close is better.
  * LOC  fills at the close if the close is at or better than the limit; otherwise it keeps resting.
  * STP  (a stop, `aux_price` its trigger; a person's protective stop, never the Commander's) rests
         until the price reaches the trigger (sells at or below, buys at or above), then fills as MKT;
         in a passed session when the day's low (sell) / high (buy) reached it, at the trigger or at
         the open if the session opened beyond it.
  Contingent orders (placed with `place_order(..., aux_price=, parent_id=, oca_group=)`): the child
  of a bracket (`parent_id`) can fill only once its parent has filled, and is cancelled with it; when
  an order of an OCA group (`oca_group`) fills, the group's other open orders are cancelled.
  Orders that do not fill rest with status "Submitted" until they fill or are cancelled; `tif` is
  recorded but not enforced (the simulator has no intraday session in which a DAY order could expire).

Costs. IB's fixed pricing per order: $0.005 a share, at least $1.00, at most 1% of trade value.
Average cost includes commission, as IB reports it.

Buying power. A simple cash account without margin: available funds = cash minus what open buy
orders would cost (remaining × limit, or × current price for MKT/MOC). A buy that costs more than
the available funds is rejected by the "broker" (status Inactive, error 201). Short sales are
allowed, their proceeds credited to cash (no borrow or margin is modelled), because the pipeline's
`allow_short` switch must be exercisable against the simulator.

Rejections mirror IB: the account guard raises AccountMismatchError and a malformed request raises
OrderRejectedError before anything is stored; a rejection by the broker itself (unknown symbol,
insufficient funds, or a test-injected `reject_next_order()`) stores the order with status
"Inactive" and `error` set, as IB's error 200/201 do.

A CLI plays the person at TWS: `python -m lib.broker.sim --help` (lib/broker/sim_cli.py).
"""
from __future__ import annotations

import bisect
import contextlib
import csv
import datetime as dt
import functools
import json
import math
import numbers
import os
import sqlite3
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Iterable, Iterator

from lib.broker.base import (ORDER_TYPES, AccountSnapshot, Bar, Broker, Contract,
                             Holding, OrderRequest, OrderState, check_account)
from lib.broker.sim_bars import BARS_CSV
from lib.errors import (BrokerConnectionError, BrokerError, OrderRejectedError,
                        UnknownContractError)

DEFAULT_DB = Path("runs/sim.sqlite")
DEFAULT_ACCOUNT = "DU0000001"
DEFAULT_CASH = 1_000_000.0
DEFAULT_SLIPPAGE_BPS = 5.0
DEFAULT_CLIENT_ID = 1
MANUAL_CLIENT_ID = 0  # orders entered by hand in TWS carry clientId 0
PERM_ID_OFFSET = 1_000_000_000  # keeps permIds visibly distinct from orderIds

# symbol: (conId, primaryExchange). The conIds are made up for the simulator.
CONTRACTS = {
    "SPY": (900001, "ARCA"),
    "QQQ": (900002, "NASDAQ"),
    "TLT": (900003, "NASDAQ"),
    "GLD": (900004, "ARCA"),
    "VIXY": (900005, "BATS"),
}

URL_OPTIONS = ("as_of", "account", "cash", "slippage_bps", "client_id")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS state (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    account       TEXT NOT NULL,
    starting_cash REAL NOT NULL,
    cash          REAL NOT NULL,
    as_of         TEXT NOT NULL,
    next_order_id INTEGER NOT NULL,
    created_at    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS positions (
    symbol   TEXT PRIMARY KEY,
    quantity REAL NOT NULL,
    avg_cost REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS orders (
    order_id       INTEGER PRIMARY KEY,
    perm_id        INTEGER NOT NULL,
    client_id      INTEGER NOT NULL,
    contract       TEXT NOT NULL,
    action         TEXT NOT NULL,
    quantity       REAL NOT NULL,
    order_type     TEXT NOT NULL,
    limit_price    REAL,
    tif            TEXT NOT NULL,
    order_ref      TEXT NOT NULL,
    status         TEXT NOT NULL,
    filled         REAL NOT NULL DEFAULT 0,
    avg_fill_price REAL NOT NULL DEFAULT 0,
    commission     REAL NOT NULL DEFAULT 0,
    error          TEXT,
    placed_as_of   TEXT NOT NULL,
    placed_at      TEXT NOT NULL,
    aux_price      REAL,
    parent_id      INTEGER NOT NULL DEFAULT 0,
    oca_group      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS orders_by_status ON orders (status);
CREATE TABLE IF NOT EXISTS fills (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id   INTEGER NOT NULL,
    symbol     TEXT NOT NULL,
    action     TEXT NOT NULL,
    quantity   REAL NOT NULL,
    price      REAL NOT NULL,
    commission REAL NOT NULL,
    as_of      TEXT NOT NULL,
    at         TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS price_overrides (
    symbol TEXT PRIMARY KEY,
    price  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS pending_rejects (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    message TEXT NOT NULL
);
"""

#: Columns added after the first release: an older state file gets them on open (ALTER TABLE).
_ADDED_ORDER_COLUMNS = {"aux_price": "REAL", "parent_id": "INTEGER NOT NULL DEFAULT 0",
                        "oca_group": "TEXT NOT NULL DEFAULT ''"}
#: What a person may enter in the simulator besides the Commander's ORDER_TYPES.
SIM_ORDER_TYPES = (*ORDER_TYPES, "STP")

_OPEN = ("PreSubmitted", "Submitted")
_OPEN_SQL = "status IN ('PreSubmitted', 'Submitted')"


# ---- market data -------------------------------------------------------------------------------
class MarketData:
    """The bundled synthetic daily bars, indexed by symbol and date."""

    def __init__(self, bars: dict[str, list[Bar]]):
        self.bars = bars
        self.dates = {symbol: [b.date for b in rows] for symbol, rows in bars.items()}
        all_dates = sorted({d for dates in self.dates.values() for d in dates})
        self.first, self.last = all_dates[0], all_dates[-1]
        self.sessions = all_dates

    def knows(self, symbol: str) -> bool:
        return symbol in self.bars

    def session_on_or_before(self, day: dt.date) -> dt.date:
        """The last session on or before `day`; ValueError outside the bars' range."""
        if day < self.first or day > self.last:
            raise ValueError(f"{day} is outside the simulator's bars ({self.first} .. {self.last})")
        return self.sessions[bisect.bisect_right(self.sessions, day) - 1]

    def bar(self, symbol: str, day: dt.date) -> Bar:
        """The bar of the last session on or before `day`."""
        i = bisect.bisect_right(self.dates[symbol], day) - 1
        if i < 0:
            raise ValueError(f"no {symbol} bar on or before {day}")
        return self.bars[symbol][i]

    def history(self, symbol: str, end: dt.date, count: int) -> list[Bar]:
        """The last `count` bars up to and including `end`, oldest first."""
        i = bisect.bisect_right(self.dates[symbol], end)
        return list(self.bars[symbol][max(0, i - count):i])


@functools.lru_cache(maxsize=4)
def load_market(path: Path = BARS_CSV) -> MarketData:
    """Read a bars CSV (date,symbol,open,high,low,close,volume) once per path."""
    bars: dict[str, list[Bar]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            bars.setdefault(row["symbol"], []).append(Bar(
                dt.date.fromisoformat(row["date"]), float(row["open"]), float(row["high"]),
                float(row["low"]), float(row["close"]), float(row["volume"])))
    for rows in bars.values():
        rows.sort(key=lambda b: b.date)
    return MarketData(bars)


def default_as_of(market: MarketData, today: dt.date | None = None) -> dt.date:
    """The last session on or before `today` (UTC by default), clamped to the bars' range."""
    today = today or dt.datetime.now(dt.timezone.utc).date()
    return market.session_on_or_before(min(max(today, market.first), market.last))


# ---- costs and fills (pure) --------------------------------------------------------------------
def ib_fixed_commission(shares: float, trade_value: float) -> float:
    """IB's fixed pricing for one order: $0.005 a share, at least $1.00, at most 1% of trade value."""
    fee = max(0.005 * abs(shares), 1.00)
    return round(min(fee, 0.01 * abs(trade_value)), 6)


def crosses(action: str, price: float, limit: float) -> bool:
    """Whether `price` is at or better than `limit` for a buy (at or below) or a sell (at or above)."""
    return price <= limit if action == "BUY" else price >= limit


def _slipped(action: str, price: float, slippage_bps: float) -> float:
    factor = slippage_bps / 10_000.0
    return price * (1 + factor) if action == "BUY" else price * (1 - factor)


def triggered(action: str, price: float, stop: float) -> bool:
    """Whether a stop is triggered at `price`: a sell stop at or below its trigger, a buy stop at or above."""
    return price <= stop if action == "SELL" else price >= stop


def fill_price_now(order_type: str, action: str, limit: float | None, price: float,
                   slippage_bps: float, aux: float | None = None) -> float | None:
    """Where an order fills against the current price (the close of `as_of`), or None if it rests."""
    if order_type == "MKT":
        return _slipped(action, price, slippage_bps)
    if order_type == "STP":
        return _slipped(action, price, slippage_bps) if triggered(action, price, aux) else None
    if order_type == "MOC":
        return price
    return price if crosses(action, price, limit) else None  # LMT, LOC


def fill_price_in_session(order_type: str, action: str, limit: float | None, bar: Bar,
                          slippage_bps: float, aux: float | None = None) -> float | None:
    """Where a resting order fills during a session the clock passes, or None if it keeps resting."""
    if order_type == "STP":
        if not triggered(action, bar.low if action == "SELL" else bar.high, aux):
            return None
        at = min(aux, bar.open) if action == "SELL" else max(aux, bar.open)  # a gap fills beyond the trigger
        return _slipped(action, at, slippage_bps)
    if order_type == "LMT":
        reached = bar.low <= limit if action == "BUY" else bar.high >= limit
        if not reached:
            return None
        return min(limit, bar.close) if action == "BUY" else max(limit, bar.close)
    return fill_price_now(order_type, action, limit, bar.close, slippage_bps)


def position_after(quantity: float, avg_cost: float, signed_fill: float, price: float,
                   commission: float) -> tuple[float, float]:
    """The (quantity, average cost) after a fill; commission goes into the cost of what is opened."""
    new_quantity = quantity + signed_fill
    if abs(new_quantity) < 1e-9:
        return 0.0, 0.0
    if quantity == 0 or (quantity > 0) == (signed_fill > 0):  # opening or adding
        cost = quantity * avg_cost + signed_fill * price + commission
        return new_quantity, cost / new_quantity
    if (new_quantity > 0) == (quantity > 0):  # reducing keeps the cost of what remains
        return new_quantity, avg_cost
    return new_quantity, price  # flipped through zero: the new side was opened at this fill


# ---- the broker --------------------------------------------------------------------------------
def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def _parse_date(value: str | dt.date, market: MarketData) -> dt.date:
    if isinstance(value, dt.datetime):
        value = value.date()
    if isinstance(value, dt.date):
        return value
    if str(value).strip().lower() == "today":
        return default_as_of(market)
    try:
        return dt.date.fromisoformat(str(value).strip())
    except ValueError:
        raise ValueError(f"{value!r} is not a date; expected YYYY-MM-DD or 'today'") from None


class SimBroker(Broker):
    """The simulator behind the `Broker` interface, plus operator hooks (`set_price`, `advance_to`,
    `fill`, `reject_next_order`) that tests and the CLI use to move the market."""

    def __init__(self, path: str | os.PathLike = DEFAULT_DB, mode: str = "paper",
                 expected_account: str | None = None, *, as_of: str | dt.date | None = None,
                 account: str | None = None, cash: float | None = None,
                 slippage_bps: float = DEFAULT_SLIPPAGE_BPS, client_id: int = DEFAULT_CLIENT_ID,
                 bars: Path = BARS_CSV):
        """Open (creating if needed) the state at `path`. Raises BrokerConnectionError if the file
        cannot be opened, ValueError for a bad option or one that contradicts the stored state."""
        self.path = Path(path)
        self.mode = mode
        self.expected_account = expected_account
        self.client_id = int(client_id)
        self.slippage_bps = float(slippage_bps)
        if not math.isfinite(self.slippage_bps) or self.slippage_bps < 0:
            raise ValueError(f"slippage_bps must be a non-negative number, got {slippage_bps!r}")
        if cash is not None and not (math.isfinite(float(cash)) and float(cash) >= 0):
            raise ValueError(f"cash must be a non-negative number, got {cash!r}")
        self.market = load_market(Path(bars))
        requested = _parse_date(as_of, self.market) if as_of is not None else None
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = None
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._connection().executescript(_SCHEMA)
            self._migrate()
        except (sqlite3.Error, OSError) as exc:
            self.close()
            raise BrokerConnectionError(f"cannot open the simulator state at {self.path}: {exc}") from exc
        try:
            self._initialise(account, cash, requested)
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_url(cls, url: str, mode: str, expected_account: str | None = None, **options) -> "SimBroker":
        """Open `sim`, `sim:///PATH` or either with `?as_of=...&account=...&cash=...&slippage_bps=...&client_id=...`.

        Keyword options override the URL's. Raises ValueError for an unknown option or a malformed URL.
        """
        base, _, query = url.partition("?")
        if base in ("sim", "sim:"):
            path = DEFAULT_DB
        elif base.startswith("sim:///") and len(base) > len("sim:///"):
            path = Path(base[len("sim:///"):])
        else:
            raise ValueError(f"broker URL {url!r} is not 'sim' or 'sim:///PATH'")
        merged: dict[str, str] = {}
        for key, values in urllib.parse.parse_qs(query, keep_blank_values=True, strict_parsing=bool(query)).items():
            merged[key] = values[-1]
        merged.update(options)
        unknown = sorted(set(merged) - set(URL_OPTIONS))
        if unknown:
            raise ValueError(f"unknown sim broker option(s) {', '.join(unknown)}; known: {', '.join(URL_OPTIONS)}")
        kwargs: dict = {}
        try:
            if merged.get("as_of") not in (None, ""):
                kwargs["as_of"] = merged["as_of"]
            if merged.get("account") not in (None, ""):
                kwargs["account"] = str(merged["account"])
            if merged.get("cash") not in (None, ""):
                kwargs["cash"] = float(merged["cash"])
            if merged.get("slippage_bps") not in (None, ""):
                kwargs["slippage_bps"] = float(merged["slippage_bps"])
            if merged.get("client_id") not in (None, ""):
                kwargs["client_id"] = int(merged["client_id"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"broker URL {url!r}: {exc}") from None
        return cls(path, mode=mode, expected_account=expected_account, **kwargs)

    # ---- connection and transactions -------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        # A connection must not cross a fork, so a child process opens its own.
        if self._conn is None or self._pid != os.getpid():
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    @contextlib.contextmanager
    def _transaction(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction: IMMEDIATE (the write lock up front, so two processes never interleave a
        read-modify-write) or DEFERRED for a consistent read. sqlite errors become BrokerConnectionError."""
        self._ensure_open()
        with self._lock:
            try:
                conn = self._connection()
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.Error as exc:
                raise BrokerConnectionError(f"simulator state {self.path}: {exc}") from exc
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise BrokerConnectionError(f"simulator state {self.path}: {exc}") from exc
                raise

    def _migrate(self) -> None:
        """Add the order columns a state file written by an older version lacks."""
        conn = self._connection()
        have = {r[1] for r in conn.execute("PRAGMA table_info(orders)")}
        for name, decl in _ADDED_ORDER_COLUMNS.items():
            if name not in have:
                try:
                    conn.execute(f"ALTER TABLE orders ADD COLUMN {name} {decl}")
                except sqlite3.OperationalError as exc:  # another process added it first
                    if "duplicate column" not in str(exc):
                        raise

    def _ensure_open(self) -> None:
        if self._closed:
            raise BrokerConnectionError(f"the simulator connection to {self.path} is closed")

    def _initialise(self, account: str | None, cash: float | None, as_of: dt.date | None) -> None:
        """Create the state row on first use; otherwise check options against it and move the clock."""
        with self._transaction() as conn:
            row = conn.execute("SELECT * FROM state WHERE id = 1").fetchone()
            if row is None:
                start = self.market.session_on_or_before(as_of) if as_of else default_as_of(self.market)
                money = DEFAULT_CASH if cash is None else float(cash)
                conn.execute("INSERT INTO state VALUES (1, ?, ?, ?, ?, 1, ?)",
                             (account or DEFAULT_ACCOUNT, money, money, start.isoformat(), _now()))
                return
            if account and account != row["account"]:
                raise ValueError(f"the simulator state at {self.path} belongs to account {row['account']!r}, "
                                 f"not {account!r}; use another file or reset it")
            if cash is not None and float(cash) != row["starting_cash"]:
                raise ValueError(f"the simulator state at {self.path} started with cash {row['starting_cash']:,.2f}, "
                                 f"not {float(cash):,.2f}; use another file or reset it")
            if as_of is not None:
                self._advance(conn, as_of)

    def close(self) -> None:
        """Release the connection. Idempotent; later calls raise BrokerConnectionError."""
        with self._lock:
            self._closed = True
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    # ---- reads -----------------------------------------------------------------------------
    def account_id(self) -> str:
        """The simulated account's id (DU0000001 unless the state was created with another)."""
        with self._transaction(write=False) as conn:
            return conn.execute("SELECT account FROM state WHERE id = 1").fetchone()[0]

    def cash(self) -> float:
        """Cash in the account (USD): starting cash plus sale proceeds, minus purchases and commissions."""
        with self._transaction(write=False) as conn:
            return conn.execute("SELECT cash FROM state WHERE id = 1").fetchone()[0]

    def as_of(self) -> dt.date:
        """The simulation clock: the session whose close is 'now'."""
        with self._transaction(write=False) as conn:
            return self._as_of(conn)

    def price(self, symbol: str) -> float:
        """The current price of `symbol` (override, else the `as_of` close); UnknownContractError if unknown."""
        self._check_symbol(symbol)
        with self._transaction(write=False) as conn:
            return self._price(conn, symbol)

    def snapshot(self) -> AccountSnapshot:
        """Account, net liquidation (cash + Σ quantity × current price), available funds, holdings
        with market prices, and the open orders of every client, read in one consistent transaction."""
        with self._transaction(write=False) as conn:
            state = conn.execute("SELECT account, cash FROM state WHERE id = 1").fetchone()
            holdings = []
            for row in conn.execute("SELECT symbol, quantity, avg_cost FROM positions ORDER BY symbol"):
                price = self._price(conn, row["symbol"])
                holdings.append(Holding(self._contract(row["symbol"]), row["quantity"], row["avg_cost"],
                                        price, row["quantity"] * price))
            open_orders = [self._state(r) for r in
                           conn.execute(f"SELECT * FROM orders WHERE {_OPEN_SQL} ORDER BY order_id")]
            net_liquidation = state["cash"] + sum(h.market_value for h in holdings)
            available = state["cash"] - self._reserved(conn)
            return AccountSnapshot(state["account"], net_liquidation, available, holdings, open_orders)

    def history(self, contract: Contract, days: int, bar_size: str = "1 day",
                end: dt.date | None = None) -> list[Bar]:
        """The last `days` daily bars (sessions, not calendar days) up to `end`, oldest first.

        `end` defaults to the simulation clock and is capped by it: the simulator never shows the
        future. Raises UnknownContractError for an unknown symbol, BrokerError for another bar size.
        """
        self._check_symbol(contract.symbol, contract)
        if bar_size != "1 day":
            raise BrokerError(f"the simulator has daily bars only; bar size {bar_size!r} is not available")
        if not isinstance(days, numbers.Integral) or days < 1:
            raise ValueError(f"days must be a positive integer, got {days!r}")
        clock = self.as_of()
        if isinstance(end, dt.datetime):
            end = end.date()
        last = min(end, clock) if end else clock
        return self.market.history(contract.symbol, last, int(days))

    def qualify(self, contract: Contract) -> Contract:
        """The contract with conId, primary exchange, SMART routing; UnknownContractError otherwise."""
        self._check_symbol(contract.symbol, contract)
        return self._contract(contract.symbol)

    # ---- orders ----------------------------------------------------------------------------
    def place_order(self, request: OrderRequest, *, aux_price: float | None = None, parent_id: int = 0,
                    oca_group: str = "") -> OrderState:
        """Run the account guard, validate, store and (if its condition holds now) fill the order.

        The keyword options are the simulator's contingent orders, as a person enters them at TWS:
        `aux_price` the trigger of an STP order, `parent_id` makes it a bracket child (it works only
        once that order has filled), `oca_group` a one-cancels-all group.

        Returns the order's state: "Filled", "Submitted" (resting) or "Inactive" with `error` when the
        simulated broker rejects it. Raises AccountMismatchError or OrderRejectedError with nothing
        stored, BrokerConnectionError when the connection is closed.
        """
        check_account(self.account_id(), self.mode, self.expected_account)
        _validate(request, aux_price, parent_id, oca_group)
        return self._submit(request, self.client_id, aux_price, int(parent_id), oca_group)

    def cancel_order(self, order_id: int) -> None:
        """Cancel an open order of this client (client 0, the TWS operator, may cancel any).

        Cancelling an order that is already done changes nothing, as IB only reports it.
        Raises OrderRejectedError for an unknown order or another client's order.
        """
        with self._transaction() as conn:
            row = self._order_row(conn, order_id)
            if self.client_id not in (MANUAL_CLIENT_ID, row["client_id"]):
                raise OrderRejectedError(
                    f"order {order_id} belongs to client {row['client_id']}; client {self.client_id} cannot cancel it")
            if row["status"] in _OPEN:
                conn.execute("UPDATE orders SET status = 'Cancelled' WHERE order_id = ?", (order_id,))
                # A bracket's children go with their parent, unless it already filled.
                if row["filled"] == 0:
                    conn.execute(f"UPDATE orders SET status = 'Cancelled' WHERE parent_id = ? AND {_OPEN_SQL}",
                                 (order_id,))

    def wait(self, order_ids: Iterable[int], timeout: float, until: str = "acknowledged") -> dict[int, OrderState]:
        """Poll until every known order is acknowledged (or terminal, for until="done") or `timeout`
        passes; returns the latest state of each known order (unknown ids are left out), never raises
        on timeout. Another process may fill orders meanwhile, hence the polling."""
        if until not in ("acknowledged", "done"):
            raise ValueError(f"until must be 'acknowledged' or 'done', got {until!r}")
        ids = [int(i) for i in order_ids]
        deadline = time.monotonic() + max(0.0, float(timeout))
        while True:
            states = self.orders(ids)
            ready = all(s.is_terminal if until == "done" else s.is_acknowledged for s in states.values())
            if ready or time.monotonic() >= deadline:
                return states
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def orders(self, order_ids: Iterable[int] | None = None) -> dict[int, OrderState]:
        """States of the given orders (all orders if None), by order id."""
        with self._transaction(write=False) as conn:
            if order_ids is None:
                rows = conn.execute("SELECT * FROM orders ORDER BY order_id").fetchall()
            else:
                ids = list(order_ids)
                marks = ",".join("?" * len(ids))
                rows = conn.execute(f"SELECT * FROM orders WHERE order_id IN ({marks}) ORDER BY order_id",
                                    ids).fetchall() if ids else []
            return {r["order_id"]: self._state(r) for r in rows}

    def orders_by_ref(self, prefix: str) -> list[OrderState]:
        """Every order (any client, any state) whose orderRef starts with `prefix`, by order id."""
        self._ensure_open()
        with self._transaction(write=False) as conn:
            rows = conn.execute("SELECT * FROM orders WHERE substr(order_ref, 1, ?) = ? ORDER BY order_id",
                                (len(prefix), prefix)).fetchall()
            return [self._state(r) for r in rows]

    def reserve_order_ids(self, count: int, floor: int = 0) -> list[int] | None:
        """None: the simulator numbers every order itself from one sequence shared by all clients."""
        self._ensure_open()
        return None

    def fills(self) -> list[dict]:
        """Every execution so far, oldest first (order_id, symbol, action, quantity, price, commission, as_of)."""
        with self._transaction(write=False) as conn:
            return [dict(r) for r in conn.execute("SELECT * FROM fills ORDER BY id")]

    # ---- operator hooks: move the market -------------------------------------------------------
    def advance_to(self, day: str | dt.date) -> list[OrderState]:
        """Move the clock forward to the session on or before `day`, filling resting orders session by
        session; clears price overrides. Returns the orders that filled. ValueError if `day` is in
        the past or outside the bars."""
        target = _parse_date(day, self.market)
        with self._transaction() as conn:
            return self._advance(conn, target)

    def set_price(self, symbol: str, price: float) -> list[OrderState]:
        """Override `symbol`'s current price until the clock moves, then fill resting orders the new
        price crosses. Returns the orders that filled."""
        self._check_symbol(symbol)
        price = float(price)
        if not (math.isfinite(price) and price > 0):
            raise ValueError(f"price must be a positive number, got {price!r}")
        with self._transaction() as conn:
            conn.execute("INSERT INTO price_overrides VALUES (?, ?) ON CONFLICT (symbol) DO UPDATE SET price = excluded.price",
                         (symbol, price))
            filled = []
            for row in self._working(conn):
                if json.loads(row["contract"])["symbol"] == symbol:
                    at = fill_price_now(row["order_type"], row["action"], row["limit_price"], price, self.slippage_bps,
                                        row["aux_price"])
                    if at is not None:
                        filled.append(self._fill(conn, row, row["quantity"] - row["filled"], at))
            return filled

    def fill(self, order_id: int, quantity: float, price: float | None = None) -> OrderState:
        """Fill `quantity` of an open order now (a partial fill when less than remains), at `price`
        or else the order's limit or the current price. Returns the order's new state."""
        with self._transaction() as conn:
            row = self._order_row(conn, order_id)
            remaining = row["quantity"] - row["filled"]
            if row["status"] not in _OPEN:
                raise OrderRejectedError(f"order {order_id} is {row['status']}; only open orders can fill")
            if not (0 < float(quantity) <= remaining):
                raise ValueError(f"order {order_id} has {remaining:g} remaining; cannot fill {quantity!r}")
            symbol = json.loads(row["contract"])["symbol"]
            at = price if price is not None else row["limit_price"] or self._price(conn, symbol)
            return self._fill(conn, row, float(quantity), float(at))

    def reject_next_order(self, message: str = "rejected by the simulator") -> None:
        """Make the next order placed (by any client) fail like IB's error 201, with `message`."""
        with self._transaction() as conn:
            conn.execute("INSERT INTO pending_rejects (message) VALUES (?)", (message,))

    # ---- internals -------------------------------------------------------------------------
    def _check_symbol(self, symbol: str, contract: Contract | None = None) -> None:
        """Raise BrokerConnectionError when closed, UnknownContractError for what the simulator lacks."""
        self._ensure_open()
        if not self.market.knows(symbol) or (contract is not None and (
                contract.secType != "STK" or contract.currency != "USD")):
            what = f"{symbol!r}" if contract is None else f"{symbol!r} ({contract.secType}, {contract.currency})"
            raise UnknownContractError(f"the simulator knows no contract {what}; it trades {', '.join(CONTRACTS)}")

    @staticmethod
    def _contract(symbol: str) -> Contract:
        con_id, primary = CONTRACTS.get(symbol, (0, ""))
        return Contract(symbol=symbol, secType="STK", currency="USD", exchange="SMART",
                        primaryExchange=primary, conId=con_id)

    @staticmethod
    def _as_of(conn: sqlite3.Connection) -> dt.date:
        return dt.date.fromisoformat(conn.execute("SELECT as_of FROM state WHERE id = 1").fetchone()[0])

    def _price(self, conn: sqlite3.Connection, symbol: str) -> float:
        row = conn.execute("SELECT price FROM price_overrides WHERE symbol = ?", (symbol,)).fetchone()
        return row[0] if row else self.market.bar(symbol, self._as_of(conn)).close

    def _reserved(self, conn: sqlite3.Connection) -> float:
        """Cash that open buy orders would spend: remaining × limit, or × current price without one."""
        total = 0.0
        for row in conn.execute(f"SELECT * FROM orders WHERE {_OPEN_SQL} AND action = 'BUY'").fetchall():
            symbol = json.loads(row["contract"])["symbol"]
            price = row["limit_price"] or (self._price(conn, symbol) if self.market.knows(symbol) else 0.0)
            total += (row["quantity"] - row["filled"]) * price
        return total

    def _working(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Row]:
        """The open orders that may fill now, by order id, each read afresh (an earlier fill in the
        same pass may have filled a bracket's parent or cancelled an OCA sibling)."""
        for (order_id,) in conn.execute(f"SELECT order_id FROM orders WHERE {_OPEN_SQL} ORDER BY order_id").fetchall():
            row = self._order_row(conn, order_id)
            if row["status"] in _OPEN and self._parent_filled(conn, row):
                yield row

    @staticmethod
    def _parent_filled(conn: sqlite3.Connection, row: sqlite3.Row) -> bool:
        if not row["parent_id"]:
            return True
        parent = conn.execute("SELECT status FROM orders WHERE order_id = ?", (row["parent_id"],)).fetchone()
        return parent is not None and parent["status"] == "Filled"

    @staticmethod
    def _order_row(conn: sqlite3.Connection, order_id: int) -> sqlite3.Row:
        row = conn.execute("SELECT * FROM orders WHERE order_id = ?", (int(order_id),)).fetchone()
        if row is None:
            raise OrderRejectedError(f"no order {order_id} in the simulator")
        return row

    @staticmethod
    def _state(row: sqlite3.Row) -> OrderState:
        return OrderState(
            order_id=row["order_id"], perm_id=row["perm_id"], client_id=row["client_id"],
            contract=Contract.from_dict(json.loads(row["contract"])), action=row["action"],
            quantity=row["quantity"], order_type=row["order_type"], limit_price=row["limit_price"],
            tif=row["tif"], order_ref=row["order_ref"], status=row["status"], filled=row["filled"],
            remaining=row["quantity"] - row["filled"], avg_fill_price=row["avg_fill_price"],
            commission=row["commission"], error=row["error"], aux_price=row["aux_price"],
            parent_id=row["parent_id"], oca_group=row["oca_group"])

    def _submit(self, request: OrderRequest, client_id: int, aux_price: float | None = None, parent_id: int = 0,
                oca_group: str = "") -> OrderState:
        """Store one validated order and fill it if its condition holds now, in one transaction."""
        symbol = request.contract.symbol
        with self._transaction() as conn:
            if parent_id:
                parent = conn.execute("SELECT status, contract FROM orders WHERE order_id = ?", (parent_id,)).fetchone()
                if parent is None or parent["status"] not in (*_OPEN, "Filled"):
                    raise OrderRejectedError(f"parent order {parent_id} is not a working or filled order of this account")
                if json.loads(parent["contract"])["symbol"] != symbol:
                    raise OrderRejectedError(f"a bracket child must trade its parent's instrument "
                                             f"({json.loads(parent['contract'])['symbol']}), not {symbol}")
            order_id = conn.execute("SELECT next_order_id FROM state WHERE id = 1").fetchone()[0]
            conn.execute("UPDATE state SET next_order_id = next_order_id + 1 WHERE id = 1")
            error = self._broker_rejection(conn, request)
            contract = self._contract(symbol) if error is None else request.contract
            conn.execute(
                "INSERT INTO orders (order_id, perm_id, client_id, contract, action, quantity, order_type,"
                " limit_price, tif, order_ref, status, error, placed_as_of, placed_at, aux_price, parent_id, oca_group)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (order_id, PERM_ID_OFFSET + order_id, client_id, json.dumps(contract.to_dict()), request.action,
                 float(request.quantity), request.order_type, request.limit_price, request.tif, request.order_ref,
                 "Inactive" if error else "Submitted", error, self._as_of(conn).isoformat(), _now(),
                 aux_price, int(parent_id), oca_group))
            row = self._order_row(conn, order_id)
            if error is None and self._parent_filled(conn, row):
                at = fill_price_now(request.order_type, request.action, request.limit_price,
                                    self._price(conn, symbol), self.slippage_bps, aux_price)
                if at is not None:
                    return self._fill(conn, row, row["quantity"], at)
            return self._state(row)

    def _broker_rejection(self, conn: sqlite3.Connection, request: OrderRequest) -> str | None:
        """The error text IB would send for this order (None if accepted): an injected reject,
        an unknown contract (error 200), or a buy beyond the available funds (error 201)."""
        injected = conn.execute("SELECT id, message FROM pending_rejects ORDER BY id LIMIT 1").fetchone()
        if injected:
            conn.execute("DELETE FROM pending_rejects WHERE id = ?", (injected["id"],))
            return f"Error 201: Order rejected - reason: {injected['message']}"
        c = request.contract
        if not self.market.knows(c.symbol) or c.secType != "STK" or c.currency != "USD":
            return f"Error 200: No security definition has been found for the request ({c.symbol} {c.secType} {c.currency})"
        if request.action == "BUY":
            price = self._price(conn, c.symbol)
            reference = request.limit_price if request.order_type in ("LMT", "LOC") else _slipped("BUY", price, self.slippage_bps)
            cost = request.quantity * reference + ib_fixed_commission(request.quantity, request.quantity * reference)
            cash = conn.execute("SELECT cash FROM state WHERE id = 1").fetchone()[0]
            available = cash - self._reserved(conn)
            if cost > available:
                return (f"Error 201: Order rejected - reason: insufficient available funds "
                        f"(needs {cost:,.2f}, available {available:,.2f})")
        return None

    def _fill(self, conn: sqlite3.Connection, row: sqlite3.Row, quantity: float, price: float) -> OrderState:
        """Execute `quantity` of an order at `price`: update the order, the position and cash, record the fill."""
        symbol = json.loads(row["contract"])["symbol"]
        filled = row["filled"] + quantity
        avg = (row["filled"] * row["avg_fill_price"] + quantity * price) / filled
        # Commission is per order (the $1 minimum applies once), so charge what the total owes now.
        commission = ib_fixed_commission(filled, filled * avg) - row["commission"]
        status = "Filled" if filled >= row["quantity"] - 1e-9 else row["status"]
        conn.execute("UPDATE orders SET filled = ?, avg_fill_price = ?, commission = ?, status = ? WHERE order_id = ?",
                     (filled, avg, row["commission"] + commission, status, row["order_id"]))
        signed = quantity if row["action"] == "BUY" else -quantity
        held = conn.execute("SELECT quantity, avg_cost FROM positions WHERE symbol = ?", (symbol,)).fetchone()
        new_quantity, new_avg = position_after(held[0] if held else 0.0, held[1] if held else 0.0,
                                               signed, price, commission)
        if new_quantity == 0:
            conn.execute("DELETE FROM positions WHERE symbol = ?", (symbol,))
        else:
            conn.execute("INSERT INTO positions VALUES (?, ?, ?) ON CONFLICT (symbol) DO UPDATE"
                         " SET quantity = excluded.quantity, avg_cost = excluded.avg_cost",
                         (symbol, new_quantity, new_avg))
        conn.execute("UPDATE state SET cash = cash - ? WHERE id = 1", (signed * price + commission,))
        conn.execute("INSERT INTO fills (order_id, symbol, action, quantity, price, commission, as_of, at)"
                     " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     (row["order_id"], symbol, row["action"], quantity, price, commission,
                      self._as_of(conn).isoformat(), _now()))
        if row["oca_group"]:  # one cancels all: a fill cancels the group's other open orders
            conn.execute(f"UPDATE orders SET status = 'Cancelled' WHERE oca_group = ? AND order_id != ? AND {_OPEN_SQL}",
                         (row["oca_group"], row["order_id"]))
        return self._state(self._order_row(conn, row["order_id"]))

    def _advance(self, conn: sqlite3.Connection, day: dt.date) -> list[OrderState]:
        """Walk the clock from the stored `as_of` to `day` inside the caller's transaction."""
        current = self._as_of(conn)
        target = self.market.session_on_or_before(day)
        if target < current:
            raise ValueError(f"the simulation clock is at {current}; it cannot move back to {target} "
                             f"(reset the simulator to start over)")
        if target == current:
            return []
        conn.execute("DELETE FROM price_overrides")
        filled = []
        start = bisect.bisect_right(self.market.sessions, current)
        for session in self.market.sessions[start:bisect.bisect_right(self.market.sessions, target)]:
            conn.execute("UPDATE state SET as_of = ? WHERE id = 1", (session.isoformat(),))
            for row in self._working(conn):
                symbol = json.loads(row["contract"])["symbol"]
                bar = self.market.bar(symbol, session)
                at = fill_price_in_session(row["order_type"], row["action"], row["limit_price"], bar, self.slippage_bps,
                                           row["aux_price"])
                if at is not None:
                    filled.append(self._fill(conn, row, row["quantity"] - row["filled"], at))
        return filled


def _validate(request: OrderRequest, aux_price: float | None = None, parent_id: int = 0, oca_group: str = "") -> None:
    """Refuse a malformed request before anything is sent (OrderRejectedError, naming the field)."""
    if not isinstance(request, OrderRequest):
        raise OrderRejectedError(f"expected an OrderRequest, got {type(request).__name__}")
    if not isinstance(request.contract, Contract) or not request.contract.symbol:
        raise OrderRejectedError("order has no contract symbol")
    q = request.quantity
    if isinstance(q, bool) or not isinstance(q, numbers.Real) or not math.isfinite(q) or q != int(q):
        raise OrderRejectedError(f"order quantity must be a whole number of shares, got {q!r}")
    if q <= 0:
        raise OrderRejectedError(f"order quantity must be positive (the action carries the sign), got {q!r}")
    if request.action not in ("BUY", "SELL"):
        raise OrderRejectedError(f"order action must be BUY or SELL, got {request.action!r}")
    if request.order_type not in SIM_ORDER_TYPES:
        raise OrderRejectedError(f"order type must be one of {', '.join(SIM_ORDER_TYPES)}, got {request.order_type!r}")
    if request.order_type == "STP":
        ap = aux_price
        if isinstance(ap, bool) or not isinstance(ap, numbers.Real) or not math.isfinite(ap) or ap <= 0:
            raise OrderRejectedError(f"a STP order needs a positive stop price (aux_price), got {ap!r}")
    elif aux_price is not None:
        raise OrderRejectedError(f"aux_price is the trigger of a STP order; a {request.order_type} order has none")
    if isinstance(parent_id, bool) or not isinstance(parent_id, numbers.Integral) or parent_id < 0:
        raise OrderRejectedError(f"parent_id must be a non-negative order id, got {parent_id!r}")
    if not isinstance(oca_group, str):
        raise OrderRejectedError(f"oca_group must be a string, got {type(oca_group).__name__}")
    if request.order_type in ("LMT", "LOC"):
        lp = request.limit_price
        if isinstance(lp, bool) or not isinstance(lp, numbers.Real) or not math.isfinite(lp) or lp <= 0:
            raise OrderRejectedError(f"a {request.order_type} order needs a positive limit price, got {lp!r}")
    if not isinstance(request.order_ref, str):
        raise OrderRejectedError(f"orderRef must be a string, got {type(request.order_ref).__name__}")


def reset_state(path: str | os.PathLike = DEFAULT_DB, *, account: str | None = None, cash: float | None = None,
                as_of: str | dt.date | None = None, positions: dict[str, tuple[float, float]] | None = None) -> None:
    """Erase every order, fill, position and override at `path` and start over with fresh cash, and
    optionally with `positions` (symbol → (quantity, average cost)) already held: an account that
    starts where another one (a backtest's session, say) stands."""
    broker = SimBroker(path, client_id=MANUAL_CLIENT_ID)
    try:
        start = broker.market.session_on_or_before(_parse_date(as_of, broker.market)) if as_of else default_as_of(broker.market)
        money = DEFAULT_CASH if cash is None else float(cash)
        with broker._transaction() as conn:
            for table in ("orders", "fills", "positions", "price_overrides", "pending_rejects", "state"):
                conn.execute(f"DELETE FROM {table}")
            conn.execute("INSERT INTO state VALUES (1, ?, ?, ?, ?, 1, ?)",
                         (account or DEFAULT_ACCOUNT, money, money, start.isoformat(), _now()))
            for symbol, (quantity, avg_cost) in sorted((positions or {}).items()):
                broker._check_symbol(symbol)
                if quantity:
                    conn.execute("INSERT INTO positions VALUES (?, ?, ?)", (symbol, float(quantity), float(avg_cost)))
    finally:
        broker.close()


if __name__ == "__main__":  # `python -m lib.broker.sim ...`: the CLI lives in its own module
    from lib.broker.sim_cli import main

    raise SystemExit(main())
