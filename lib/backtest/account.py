"""The backtest's account: cash, positions and resting orders, filled by the simulator's own rules.

Fill prices, commissions and average cost come from `lib.broker.sim` (the same functions the
embedded broker uses), so a backtest and a paper run on the simulator charge the same costs:
MKT at the close plus slippage, MOC at the close, LMT/LOC when the price crosses, IB's fixed
commission schedule. Orders are decided after a session's close and fill against that close;
those that rest are tried against each later session's bar.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from lib.broker import sim
from lib.broker.base import Bar

PERM_OFFSET = 2_000_000_000


@dataclasses.dataclass
class Fill:
    session: dt.date
    order_id: int
    symbol: str
    action: str
    quantity: float
    price: float
    commission: float
    order_ref: str

    @property
    def notional(self) -> float:
        return self.quantity * self.price


@dataclasses.dataclass
class RestingOrder:
    order_id: int
    symbol: str
    action: str
    quantity: float
    order_type: str
    limit: float | None
    order_ref: str
    filled: float = 0.0

    @property
    def remaining(self) -> float:
        return self.quantity - self.filled

    def to_dict(self) -> dict[str, Any]:
        """As reconcile would store it among the snapshot's `open_orders`."""
        return {"orderId": self.order_id, "permId": PERM_OFFSET + self.order_id, "clientId": 1,
                "symbol": self.symbol, "secType": "STK", "currency": "USD", "action": self.action,
                "totalQuantity": self.quantity, "remaining": self.remaining, "filled": self.filled,
                "orderType": self.order_type, "lmtPrice": self.limit, "orderRef": self.order_ref,
                "status": "Submitted"}


class Account:
    """A cash account like the simulator's: no margin; a buy beyond available funds is rejected."""

    def __init__(self, cash: float, slippage_bps: float = 5.0, account: str = "DU0000001"):
        self.cash = float(cash)
        self.slippage_bps = float(slippage_bps)
        self.account = account
        self.positions: dict[str, tuple[float, float]] = {}  # symbol → (quantity, average cost)
        self.resting: list[RestingOrder] = []
        self.fills: list[Fill] = []
        self.rejected: list[dict] = []
        self._next_id = 1

    # ---- what reconcile would see --------------------------------------------------------------
    def net_liquidation(self, closes: dict[str, float]) -> float:
        return self.cash + sum(q * closes[s] for s, (q, _) in self.positions.items())

    def available_funds(self, closes: dict[str, float]) -> float:
        reserved = sum(o.remaining * (o.limit or closes[o.symbol]) for o in self.resting if o.action == "BUY")
        return self.cash - reserved

    def snapshot(self, closes: dict[str, float], updated_at: dt.datetime) -> dict[str, Any]:
        """The `positions/{mode}/portfolio/latest` document reconcile would write now."""
        return {
            "updated_at": updated_at, "account": self.account,
            "net_liquidation": self.net_liquidation(closes), "available_funds": self.available_funds(closes),
            "holdings": [{"symbol": s, "secType": "STK", "currency": "USD", "exchange": "SMART", "quantity": q,
                          "avg_cost": c, "market_price": closes[s], "market_value": q * closes[s]}
                         for s, (q, c) in sorted(self.positions.items())],
            "open_orders": [o.to_dict() for o in self.resting],
        }

    # ---- orders ---------------------------------------------------------------------------------
    def cancel(self, order_id: int) -> None:
        self.resting = [o for o in self.resting if o.order_id != order_id]

    def place(self, session: dt.date, order: dict, closes: dict[str, float]) -> None:
        """Place one order of a decision after `session`'s close: fill now or rest."""
        action, quantity = order["action"], float(order["quantity"])
        symbol = order["contract"]["symbol"]
        close = closes[symbol]
        if action == "BUY":
            reference = order["lmtPrice"] if order["orderType"] in ("LMT", "LOC") else sim._slipped(
                "BUY", close, self.slippage_bps)
            cost = quantity * reference + sim.ib_fixed_commission(quantity, quantity * reference)
            available = self.available_funds(closes)
            if cost > available:
                self.rejected.append({"session": session, "orderRef": order["orderRef"], "symbol": symbol,
                                      "reason": f"insufficient available funds (needs {cost:,.2f}, "
                                                f"available {available:,.2f})"})
                return
        resting = RestingOrder(self._next_id, symbol, action, quantity, order["orderType"], order["lmtPrice"],
                               order["orderRef"])
        self._next_id += 1
        at = sim.fill_price_now(resting.order_type, action, resting.limit, close, self.slippage_bps)
        if at is None:
            self.resting.append(resting)
        else:
            self._fill(session, resting, quantity, at)

    def pass_session(self, session: dt.date, bars: dict[str, Bar]) -> None:
        """Resting orders fill during a later session when its bar crosses them (the simulator's rule)."""
        still = []
        for o in self.resting:
            bar = bars.get(o.symbol)
            at = None if bar is None else sim.fill_price_in_session(o.order_type, o.action, o.limit, bar,
                                                                    self.slippage_bps)
            if at is None:
                still.append(o)
            else:
                self._fill(session, o, o.remaining, at)
        self.resting = still

    def _fill(self, session: dt.date, o: RestingOrder, quantity: float, price: float) -> None:
        before = o.filled
        o.filled += quantity
        # Commission per order (the $1 minimum once), charged on what the whole order owes so far.
        commission = sim.ib_fixed_commission(o.filled, o.filled * price) - (
            sim.ib_fixed_commission(before, before * price) if before else 0.0)
        signed = quantity if o.action == "BUY" else -quantity
        held, avg = self.positions.get(o.symbol, (0.0, 0.0))
        new_q, new_avg = sim.position_after(held, avg, signed, price, commission)
        if new_q == 0:
            self.positions.pop(o.symbol, None)
        else:
            self.positions[o.symbol] = (new_q, new_avg)
        self.cash -= signed * price + commission
        self.fills.append(Fill(session, o.order_id, o.symbol, o.action, quantity, price, commission, o.order_ref))
