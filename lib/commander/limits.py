"""Limits on the orders of one decision, after the diff: trading state, per-order notional,
buying power, orders per run; and whether the plan needs a person's approval.

Each limit only ever shrinks an order toward zero (whole shares, toward zero) or drops it, and
records an adjustment saying so. The input is the candidate list, sells first.
"""
from __future__ import annotations

import math
from typing import Any

from lib import documents as docs


def _adj(rule: str, instrument: str, before: int, after: int, detail: str) -> dict[str, Any]:
    return {"rule": rule, "scope": "global", "instrument": instrument, "from": before, "to": after, "detail": detail}


def _shrink(candidate: dict, quantity: int) -> None:
    candidate["delta"] = int(math.copysign(quantity, candidate["delta"])) if quantity else 0


def reduce_only(candidates: list[dict], adjustments: list) -> None:
    """Keep only the part of each order that moves its position toward zero, without flipping it."""
    for c in candidates:
        before, delta = c["position"], c["delta"]
        after = before + delta
        if abs(after) < abs(before) and (after == 0 or (after > 0) == (before > 0)):
            continue
        allowed = -before if before != 0 and (delta > 0) != (before > 0) else 0
        allowed = int(math.trunc(allowed))
        if allowed != delta:
            adjustments.append(_adj("reduce_only", c["instrument"], delta, allowed,
                                    f"tradingState is reduce_only; position {before:+g}"))
            c["delta"] = allowed


def max_order_notional(candidates: list[dict], cap: float, adjustments: list) -> None:
    for c in candidates:
        unit = c["unit_price"]
        if c["delta"] and abs(c["delta"]) * unit > cap + 1e-9:
            allowed = int(math.trunc(cap / unit))
            adjustments.append(_adj("max_order_notional", c["instrument"], c["delta"],
                                    int(math.copysign(allowed, c["delta"])), f"cap {cap:.2f}"))
            _shrink(c, allowed)


def _sell_parts(c: dict) -> tuple[int, int]:
    """A sell split into (shares that reduce an existing long, shares that open or increase a short)."""
    sold = -c["delta"]
    long_before = max(0, math.floor(c["position"] + 1e-9))  # whole shares held long (with pending orders)
    reducing = min(sold, long_before)
    return reducing, sold - reducing


def buying_power(candidates: list[dict], available_funds: float, multiplier: float, adjustments: list) -> None:
    """Budget = (available funds + proceeds of sells that reduce an existing long) × `multiplier`.

    What uses it, in the order orders are placed (the candidates: sells first, then buys): the part
    of each sell that opens or increases a short (as a buy of the same notional would), then the
    buys. A sell crossing from long to short adds the proceeds of the part down to zero and uses
    buying power for the part below it. When the budget is short, the short-opening sells are
    scaled down first (one factor for all of them, whole shares toward zero, never the part that
    reduces a long), then the buys share what is left the same way; each cut is an adjustment.
    """
    proceeds, shorts, buys = 0.0, [], []
    for c in candidates:
        if c["delta"] < 0:
            reducing, opening = _sell_parts(c)
            proceeds += reducing * c["unit_price"]
            if opening:
                shorts.append((c, reducing, opening))
        elif c["delta"] > 0:
            buys.append(c)
    budget = max(0.0, (available_funds + proceeds) * multiplier)
    basis = (f"(available funds {available_funds:.2f} + sells reducing longs {proceeds:.2f}) × {multiplier:g} "
             f"= {budget:.2f}")

    short_notional = sum(opening * c["unit_price"] for c, _, opening in shorts)
    if short_notional > budget + 1e-9:
        factor = budget / short_notional
        for c, reducing, opening in shorts:
            allowed = -(reducing + int(math.trunc(opening * factor)))
            if allowed != c["delta"]:
                adjustments.append(_adj("buying_power", c["instrument"], c["delta"], allowed,
                                        f"short sales {short_notional:.2f} above {basis}"))
                c["delta"] = allowed
        short_notional = sum((-c["delta"] - reducing) * c["unit_price"] for c, reducing, _ in shorts)
    left = max(0.0, budget - short_notional)

    wanted = sum(c["delta"] * c["unit_price"] for c in buys)
    if wanted <= left + 1e-9:
        return
    factor = left / wanted
    used = f"; short sales use {short_notional:.2f}" if short_notional else ""
    for c in buys:
        allowed = int(math.trunc(c["delta"] * factor))
        adjustments.append(_adj("buying_power", c["instrument"], c["delta"], allowed,
                                f"buys {wanted:.2f} above {basis}{used}"))
        c["delta"] = allowed


def max_orders(candidates: list[dict], limit: int, adjustments: list) -> None:
    """Keep the first `limit` orders (sells first, then buys, each by instrument)."""
    live = [c for c in candidates if c["delta"]]
    for c in live[limit:]:
        adjustments.append(_adj("max_orders_per_run", c["instrument"], c["delta"], 0, f"at most {limit} orders per run"))
        c["delta"] = 0


def gross_guard(candidates: list[dict], exposures: dict[str, float], limit: float, adjustments: list) -> None:
    """A limit that shrank a sell must not let the buys raise gross exposure above the cap (or above
    where it already was): scale the orders that grow a position until it holds."""
    def gross_after() -> float:
        moved = {c["instrument"]: abs(c["position"] + c["delta"]) * c["unit_price"] for c in candidates}
        return sum(moved.get(k, v) for k, v in exposures.items())

    allowed = max(limit, sum(exposures.values()))
    for _ in range(20):  # whole shares: a few passes settle it
        excess = gross_after() - allowed
        growing = [c for c in candidates if abs(c["position"] + c["delta"]) > abs(c["position"])]
        if excess <= 1e-6 or not growing:
            return
        growth = sum((abs(c["position"] + c["delta"]) - abs(c["position"])) * c["unit_price"] for c in growing)
        factor = max(0.0, 1.0 - excess / growth)
        for c in growing:
            new = int(math.trunc(c["delta"] * factor))
            if new == c["delta"]:
                new -= int(math.copysign(1, c["delta"]))
            adjustments.append(_adj("gross_exposure_guard", c["instrument"], c["delta"], new,
                                    f"gross after orders would exceed {allowed:.2f}"))
            c["delta"] = new


def apply(candidates: list[dict], config: docs.CommonConfig, available_funds: float, nav: float,
          exposures: dict[str, float], adjustments: list) -> None:
    """All limits, in order: trading state, per-order notional, buying power, orders per run, the
    gross-exposure guard, and buying power again. `exposures` is |position| × unit price per managed
    instrument."""
    risk = config.risk
    if config.tradingState == "reduce_only":
        reduce_only(candidates, adjustments)
    if risk.max_order_notional is not None:
        max_order_notional(candidates, risk.max_order_notional, adjustments)
    buying_power(candidates, available_funds, risk.margin_multiplier, adjustments)
    if risk.max_orders_per_run is not None:
        max_orders(candidates, risk.max_orders_per_run, adjustments)
    gross_guard(candidates, exposures, risk.max_gross_exposure * nav, adjustments)
    # Those two may have dropped or shrunk a sell whose proceeds funded a short sale or a buy: check
    # the budget once more (a no-op, with no adjustment, when it still holds).
    buying_power(candidates, available_funds, risk.margin_multiplier, adjustments)


def approval(orders: list[dict], config: docs.CommonConfig, nav: float) -> dict[str, Any]:
    """Whether a person must approve the plan: its total notional, or any single order's share of NAV."""
    reasons = []
    total = sum(o["notional"] for o in orders)
    if config.approval.notional is not None and total > config.approval.notional:
        reasons.append(f"plan notional {total:.2f} above approval.notional {config.approval.notional:.2f}")
    if config.approval.fraction_of_nav is not None:
        for o in orders:
            if o["notional"] > config.approval.fraction_of_nav * nav:
                reasons.append(f"{o['action']} {o['quantity']} {o['contract']['symbol']}: notional {o['notional']:.2f} "
                               f"above {config.approval.fraction_of_nav:g} of net liquidation")
    return {"required": bool(reasons), "reasons": reasons, "total_notional": round(total, 2)}
