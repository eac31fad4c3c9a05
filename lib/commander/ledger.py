"""Per-strategy ledger (`strategies/{id}/ledger/latest`): paper P&L on accepted targets, and the
`max_drawdown` halt.

P&L since the previous execution = Σ over the previous targets of quantity × (price now − previous
price) × multiplier. Equity starts at the strategy's capital C_s on its first execution;
drawdown = 1 − equity / peak equity. Reaching `max_drawdown` halts the strategy (its targets become
zero) until an operator clears it (`python -m lib.commander clear-halt STRATEGY`).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

HISTORY = 250  # points of the equity curve kept in the document


class LedgerError(ValueError):
    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


def _number(ledger: Mapping[str, Any], field: str) -> float:
    value = ledger.get(field)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise LedgerError(field, f"field '{field}' must be a finite number, got {value!r}")
    return float(value)


def advance(ledger: Mapping[str, Any] | None, capital: float, max_drawdown: float | None,
            prices: Mapping[str, float], units: Mapping[str, float], at: str) -> dict[str, Any]:
    """The ledger after marking its previous targets to `prices`; sets `halted` when the drawdown
    reaches `max_drawdown`. Raises LedgerError (naming the field) for a malformed ledger."""
    if ledger is None:
        equity = peak = float(capital)
        pnl, history, halted, reason = 0.0, [], False, None
    else:
        equity, peak = _number(ledger, "equity"), _number(ledger, "peak")
        pnl = 0.0
        for i, t in enumerate(ledger.get("targets") or []):
            try:
                key, qty, before = t["instrument"], float(t["quantity"]), float(t["price"])
            except (KeyError, TypeError, ValueError):
                raise LedgerError(f"targets[{i}]", f"field 'targets[{i}]' needs instrument, quantity and price") from None
            pnl += qty * (prices.get(key, before) - before) * units.get(key, 1.0)
        equity += pnl
        peak = max(peak, equity)
        history = list(ledger.get("history") or [])
        halted, reason = bool(ledger.get("halted")), ledger.get("halted_reason")
    drawdown = 1.0 - equity / peak if peak > 0 else 1.0
    if not halted and max_drawdown is not None and drawdown >= max_drawdown - 1e-12:
        halted = True
        reason = f"drawdown {drawdown:.2%} reached max_drawdown {max_drawdown:.2%} at {at}"
    history.append({"at": at, "equity": round(equity, 2), "drawdown": round(drawdown, 6)})
    return {"updated_at": at, "capital": round(float(capital), 6), "equity": round(equity, 6), "peak": round(peak, 6),
            "pnl": round(pnl, 6), "drawdown": round(drawdown, 6), "halted": halted, "halted_reason": reason,
            "targets": [], "history": history[-HISTORY:]}


def clear(ledger: Mapping[str, Any]) -> dict[str, Any]:
    """An operator's reset: not halted, and the peak restarts at the current equity."""
    out = dict(ledger)
    out.update(halted=False, halted_reason=None, peak=out.get("equity"), drawdown=0.0)
    return out
