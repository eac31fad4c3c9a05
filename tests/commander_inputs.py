"""Builders for decision inputs, as the documents are stored on the bus (timestamps as ISO strings)."""
from __future__ import annotations

import copy

NOW = "2025-10-29T21:00:00Z"
WINDOW = "2025-10-29T20:00:00Z"
FRESH = "2025-10-29T20:30:00Z"
STALE = "2025-10-28T20:30:00Z"


def target(symbol, quantity=None, weight=None, price=100.0, **extra):
    t = {"symbol": symbol, "secType": "STK", "exchange": "SMART", "currency": "USD"}
    if quantity is not None:
        t["quantity"] = quantity
    if weight is not None:
        t["weight"] = weight
    if price is not None:
        t["price"] = price
    t.update(extra)
    return t


def intent(*targets, updated_at=FRESH, status="success", error_message=None):
    return {"updated_at": updated_at, "status": status, "error_message": error_message, "metadata": {},
            "target_positions": list(targets)}


def strategy(allocation=0.5, enabled=True, max_single=1.0, max_drawdown=None, **extra):
    doc = {"name": "s", "enabled": enabled, "capital_allocation": allocation,
           "risk_parameters": {"max_single_position_exposure": max_single, "max_drawdown": max_drawdown}}
    doc.update(extra)
    return doc


def holding(symbol, quantity, price=100.0):
    return {"symbol": symbol, "secType": "STK", "currency": "USD", "exchange": "SMART", "quantity": quantity,
            "market_price": price, "market_value": quantity * price}


def order(symbol, action, qty, order_id=1, ref="", status="Submitted", client_id=0, lmt=None):
    return {"orderId": order_id, "permId": 1000 + order_id, "clientId": client_id, "symbol": symbol,
            "secType": "STK", "currency": "USD", "action": action, "totalQuantity": qty, "remaining": qty,
            "orderType": "LMT" if lmt else "MKT", "lmtPrice": lmt, "orderRef": ref, "status": status}


def portfolio(holdings=(), open_orders=(), nav=100_000.0, funds=None, updated_at=FRESH, account="DU123"):
    return {"updated_at": updated_at, "account": account, "net_liquidation": nav,
            "available_funds": nav if funds is None else funds, "holdings": list(holdings),
            "open_orders": list(open_orders)}


def config(**overrides):
    cfg = {"tradingEnabled": True, "tradingState": "active", "exposure": {"overall": 1.0},
           "orders": {"type": "MKT", "tif": "DAY", "limit_offset_bps": 10.0, "tick_size": 0.01,
                      "order_ref_prefix": "cmdr-"},
           "risk": {"max_instrument_exposure": 1.0, "max_gross_exposure": 1.0, "allow_short": True,
                    "min_order_quantity": 1, "min_order_notional": 0.0, "rebalance_threshold": 0.0},
           "approval": {}}
    for path, value in overrides.items():
        node = cfg
        parts = path.split("__")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = value
    return cfg


def inputs(strategies, intents, port=None, previous=None, cfg=None, execution_id="exec-2", mode="paper"):
    return {"now": NOW, "window_start": WINDOW, "mode": mode, "execution_id": execution_id,
            "config": cfg if cfg is not None else config(), "strategies": copy.deepcopy(strategies),
            "intents": copy.deepcopy(intents), "portfolio": port if port is not None else portfolio(),
            "previous_execution": previous}


def record_of(decision, executed_at="2025-10-28T21:00:00Z", placed=True):
    """A minimal previous execution record around a decision."""
    return {"execution_id": decision["execution_id"], "executed_at": executed_at, "placed_orders": placed,
            "decision": decision}
