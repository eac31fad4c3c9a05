"""The Commander's decision: a pure function from documents to orders (DESIGN.md §5).

`decide(inputs)` takes the documents as they are stored on the bus and returns the Decision as
plain JSON-able data. The steps run in this order, each a function below:

    validate intents → size → per-strategy caps → hold previous → aggregate → global caps
    → managed universe → pending orders → keep-or-cancel own orders → delta and band → orders

Nothing here reads a clock, a file or the network, so the same inputs always give the same bytes
(`lib.canonical.dumps(decide(inputs))`), and an execution record that keeps its inputs replays.
"""
from __future__ import annotations

import collections
import datetime as dt
import gc
import math
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from itertools import repeat
from typing import Any, Mapping, NamedTuple

import numpy as np

from lib import documents as docs
from lib.canonical import iso
from lib.broker.base import TERMINAL_STATUSES
from lib.commander import ledger, limits
from lib.commander.instrument import Catalog, multiplier_of, target_columns
from lib.errors import DocumentError

FUTURE_SKEW = dt.timedelta(minutes=5)  # tolerated clock skew between a strategy host and ours
MAX_WEIGHT = 2.0  # |weight| above this is a units mistake, not a position
MAX_CAPITAL_MULTIPLE = 2.0  # a quantity worth more than this × the strategy's capital: a units mistake
ALLOCATION_TOLERANCE = 1e-9


#: A document dated later than now by more than this is invalid (a wrong clock, a bad write).
FUTURE_TOLERANCE = dt.timedelta(minutes=5)


class InputError(ValueError):
    """The inputs object itself is malformed (not a document inside it): the CLI exits 2."""


# ---- small helpers ------------------------------------------------------------------------------
def _timestamp(inputs: Mapping[str, Any], name: str) -> dt.datetime:
    value = inputs.get(name)
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InputError(f"inputs: field '{name}': {value!r} is not an ISO-8601 timestamp") from None
    if not isinstance(value, dt.datetime):
        raise InputError(f"inputs: field '{name}' is required (an ISO-8601 timestamp)")
    if value.tzinfo is None:
        raise InputError(f"inputs: field '{name}': timestamp must carry a time zone (UTC)")
    return value.astimezone(dt.timezone.utc)


def _trunc(x: float) -> int:
    """Whole shares, rounded toward zero; tolerant of float noise like 9.999999999999998."""
    r = round(x)
    return int(r) if abs(x - r) < 1e-9 else int(math.trunc(x))


def _adj(rule: str, scope: str, instrument: str | None, before: Any, after: Any, detail: str = "") -> dict:
    out = {"rule": rule, "scope": scope, "instrument": instrument, "from": before, "to": after}
    if detail:
        out["detail"] = detail
    return out


def _blocked(base: dict, check: str, detail: str) -> dict:
    base["status"] = "blocked"
    base["blocked_reasons"].append({"check": check, "detail": detail})
    return base


def _refuse(decision: dict, check: str, detail: str) -> None:
    """Record why the decision is blocked; returns None for the caller to hand back."""
    _blocked(decision, check, detail)
    return None


def _round_to_tick(price: float, tick: float, action: str) -> float:
    """Buys round down, sells round up: the limit never gives away more than the offset allows."""
    p, t = Decimal(repr(price)), Decimal(repr(tick))
    steps = (p / t).to_integral_value(rounding=ROUND_FLOOR if action == "BUY" else ROUND_CEILING)
    return float(steps * t)


# ---- step 1: validate intents ------------------------------------------------------------------
class Rows(NamedTuple):
    """An intent's target rows as columns: key, reference price, quantity or None, weight or None
    (or, from `target_columns`, quantity and weight as float arrays with NaN for None, the prices
    as an array too and the keys' numbers in the catalog)."""
    keys: list[str]
    prices: list[float]
    quantities: list[int | None] | np.ndarray
    weights: list[float | None] | np.ndarray
    price_array: np.ndarray | None = None
    numbers: np.ndarray | None = None


def validate_intent(sid: str, raw: Any, window_start: dt.datetime, now: dt.datetime,
                    market: Mapping[str, float], catalog: Catalog) -> tuple[docs.Intent | None, Rows | None, dict | None]:
    """The parsed intent and its rows as columns, or None and a `skipped` entry saying why
    (missing/stale/error/invalid).

    Rows of plain JSON types are checked a column at a time (`target_columns`); whenever that
    cannot prove every row valid, or a rule below fails, the intent goes through the row model one
    row at a time (`_validate_intent_rows`), which finds the first problem and names its field."""
    rows = raw.get("target_positions", []) if type(raw) is dict else None
    columns = target_columns(rows, catalog) if rows is not None else None
    if columns is None:
        return _validate_intent_rows(sid, raw, window_start, now, market, catalog)
    path = docs.intent_path(sid)
    try:  # the rows are valid: the rest of the document
        intent = docs.load(docs.Intent, path, {**raw, "target_positions": []}, check=False)
    except DocumentError as err:
        return None, None, {"strategy": sid, "reason": "invalid", "detail": str(err), "field": err.field}
    skip = _unusable(sid, path, intent, window_start, now)
    if skip is not None:
        return None, None, skip
    keys, numbers, given, weight = columns.keys, columns.numbers, columns.quantities, columns.weights
    # The snapshot's market price, else the row's own.
    if numbers is not None:
        price = catalog.price_array(market)[numbers]
        duplicate = len(numbers) and np.bincount(numbers).max() > 1
    else:
        price = np.fromiter(map(market.get, keys, repeat(math.nan)), dtype=float, count=len(keys))
        duplicate = len(set(keys)) != len(keys)
    missing = np.isnan(price)
    if missing.any():
        price = np.where(missing, columns.prices, price)
        if np.isnan(price).any():  # no price at all
            return _validate_intent_rows(sid, raw, window_start, now, market, catalog)
    if duplicate:
        return _validate_intent_rows(sid, raw, window_start, now, market, catalog)
    if numbers is None:
        catalog.register(columns)
        numbers = np.fromiter(map(catalog.index.__getitem__, keys), dtype=np.intp, count=len(keys))
    else:
        keys = catalog.key_array()[numbers].tolist()
    # The prices as the snapshot's own float objects where they come from there (no copies).
    prices = price.tolist() if missing.any() else catalog.price_objects(market)[numbers].tolist()
    return intent, Rows(keys, prices, given, weight, price, numbers), None


def _unusable(sid: str, path: str, intent: docs.Intent, window_start: dt.datetime, now: dt.datetime) -> dict | None:
    """A `skipped` entry for an intent that reports an error, is stale or comes from the future."""
    if intent.status == "error":
        return {"strategy": sid, "reason": "error",
                "detail": f"{path}: strategy reported an error: {intent.error_message or '(no message)'}"}
    if intent.updated_at < window_start:
        return {"strategy": sid, "reason": "stale",
                "detail": f"{path}: field 'updated_at' {iso(intent.updated_at)} is before the window "
                          f"start {iso(window_start)}"}
    if intent.updated_at > now + FUTURE_SKEW:
        return {"strategy": sid, "reason": "invalid", "field": "updated_at",
                "detail": f"{path}: field 'updated_at' {iso(intent.updated_at)} is in the future (now {iso(now)})"}
    return None


def _validate_intent_rows(sid: str, raw: Any, window_start: dt.datetime, now: dt.datetime, market: Mapping[str, float],
                          catalog: Catalog) -> tuple[docs.Intent | None, Rows | None, dict | None]:
    """`validate_intent` with the row model, one row at a time: the reference for the bulk path."""
    path = docs.intent_path(sid)
    if raw is None:
        return None, None, {"strategy": sid, "reason": "missing", "detail": f"{path} does not exist"}
    try:
        intent = docs.load(docs.Intent, path, raw, check=False)  # the row rules are checked below, in one pass
    except DocumentError as err:
        return None, None, {"strategy": sid, "reason": "invalid", "detail": str(err), "field": err.field}
    skip = _unusable(sid, path, intent, window_start, now)
    if skip is not None:
        return None, None, skip
    # One pass over the rows: the instrument key, exactly one of quantity/weight, a reference price.
    key_of = catalog.key
    keys, prices, quantities, weights = [], [], [], []
    for i, t in enumerate(intent.target_positions):
        key = key_of(t)
        get = t.get
        q, w = get("quantity"), get("weight")
        if (q is None) == (w is None):
            return None, None, {"strategy": sid, "reason": "invalid", "field": f"target_positions[{i}]",
                                "detail": f"{path}: field 'target_positions[{i}]': give exactly one of 'quantity' "
                                          f"(shares) or 'weight' (fraction of capital)"}
        price = market.get(key) or get("price")
        if price is None:
            return None, None, {"strategy": sid, "reason": "invalid", "field": f"target_positions[{i}].price",
                                "detail": f"{path}: field 'target_positions[{i}].price': no reference price for "
                                          f"{key} and the portfolio snapshot has no market price for it"}
        keys.append(key)
        prices.append(price)
        quantities.append(q)
        weights.append(w)
    if len(set(keys)) != len(keys):
        seen: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key in seen:
                return None, None, {"strategy": sid, "reason": "invalid", "field": f"target_positions[{i}]",
                                    "detail": f"{path}: field 'target_positions[{i}]': duplicate instrument {key} "
                                              f"(also target_positions[{seen[key]}])"}
            seen[key] = i
    return intent, Rows(keys, prices, quantities, weights), None


def implausible(sid: str, rows: Rows, capital: float, catalog: Catalog,
                qualified: Mapping[str, Any] | None) -> dict | None:
    """A `skipped` entry when a row is a units mistake or names an instrument the broker does not know.

    A weight above 2 in size, or a quantity worth more than twice the strategy's capital, is a units
    mistake (shares for weights, cents for dollars), never clipped and traded; an instrument the broker
    does not know would otherwise look new, and the held one would be sold for it."""
    path = docs.intent_path(sid)

    def invalid(i: int, field: str, why: str) -> dict:
        where = f"target_positions[{i}]" + (f".{field}" if field else "")
        return {"strategy": sid, "reason": "invalid", "field": where, "detail": f"{path}: field '{where}': {why}"}

    weight = np.asarray(rows.weights, dtype=float)
    bad = np.flatnonzero(np.abs(np.nan_to_num(weight)) > MAX_WEIGHT)
    if bad.size:
        i = int(bad[0])
        return invalid(i, "weight", f"{weight[i]:g} is above {MAX_WEIGHT:g} in size: a units mistake "
                                    "(a weight is a fraction of the strategy's capital)")
    given = np.asarray(rows.quantities, dtype=float)
    if not np.isnan(given).all():
        array = getattr(rows, "price_array", None)
        price = np.array(rows.prices, dtype=float) if array is None else array
        units = np.fromiter(map(catalog.units.__getitem__, rows.keys), dtype=float, count=len(rows.keys)) \
            if getattr(catalog, "scaled", True) else 1.0
        notional = np.abs(np.nan_to_num(given)) * price * units
        bad = np.flatnonzero(notional > MAX_CAPITAL_MULTIPLE * capital + 1e-9)
        if bad.size:
            i = int(bad[0])
            return invalid(i, "quantity", f"{given[i]:g} is worth {notional[i]:,.2f}, more than "
                                          f"{MAX_CAPITAL_MULTIPLE:g} × the strategy's capital {capital:,.2f}: a units mistake")
    if qualified:
        for i, key in enumerate(rows.keys):
            found = qualified.get(key)
            if found is not None and found.get("error"):
                return invalid(i, "", f"the broker does not know {key}: {found['error']}")
    return None


# ---- step 2 and 3: size and per-strategy caps --------------------------------------------------
def _trunc_array(x: np.ndarray) -> np.ndarray:
    """Vectorised `_trunc`: toward zero, but 9.999999999999998 counts as 10."""
    r = np.round(x)
    return np.where(np.abs(x - r) < 1e-9, r, np.trunc(x)).astype(np.int64)


def _pick(keys: list[str], numbers: np.ndarray | None, mask: np.ndarray, catalog: Catalog) -> list[str]:
    """The keys where `mask` is set."""
    if numbers is not None:
        return catalog.key_array()[numbers[mask]].tolist()
    return [keys[i] for i in np.flatnonzero(mask).tolist()]


def size_strategy(sid: str, rows: Rows, capital: float, max_single: float, catalog: Catalog,
                  adjustments: list) -> list[dict]:
    """Targets in whole shares, within the strategy's single-position and gross caps.

    Vectorised over the strategy's rows (numpy): a strategy may name thousands of instruments.
    """
    keys = rows.keys
    if not keys:
        return []
    price = np.array(rows.prices, dtype=float) if rows.price_array is None else rows.price_array
    if not catalog.scaled or catalog.scaled.isdisjoint(keys):
        unit = price  # every multiplier is 1
    elif rows.numbers is not None:
        unit = price * catalog.unit_array()[rows.numbers]
    else:
        unit = price * np.fromiter(map(catalog.units.__getitem__, keys), dtype=float, count=len(keys))
    given = np.asarray(rows.quantities, dtype=float)  # None → NaN: sized from the weight instead
    weight = np.asarray(rows.weights, dtype=float)
    qty = np.where(np.isnan(given), _trunc_array(np.nan_to_num(weight) * capital / unit),
                   np.nan_to_num(given)).astype(np.int64)

    limit = max_single * capital
    over = np.abs(qty) * unit > limit + 1e-9
    if over.any():
        capped = np.sign(qty) * _trunc_array(limit / unit)
        rule = "max_single_position_exposure"
        adjustments.extend([{"rule": rule, "scope": sid, "instrument": k, "from": a, "to": b}
                            for k, a, b in zip(_pick(keys, rows.numbers, over, catalog), qty[over].tolist(),
                                               capped[over].tolist())])
        qty = np.where(over, capped, qty)

    gross = float(np.sum(np.abs(qty) * unit))
    if gross > capital + 1e-9:
        scaled = _trunc_array(qty * (capital / gross))
        detail = f"gross {gross:.2f} above capital {capital:.2f}"
        rule = "strategy_gross_exposure"
        changed = scaled != qty
        adjustments.extend([{"rule": rule, "scope": sid, "instrument": k, "from": a, "to": b, "detail": detail}
                            for k, a, b in zip(_pick(keys, rows.numbers, changed, catalog), qty[changed].tolist(),
                                               scaled[changed].tolist())])
        qty = scaled
    quantities = qty.tolist()
    targets = [{"instrument": k, "quantity": q, "price": p} for k, q, p in zip(keys, quantities, rows.prices)]
    catalog.columns[sid] = (targets, keys, quantities, qty, rows.numbers)  # for _aggregate, while still the targets
    return targets


def previous_targets(previous: Mapping[str, Any] | None, sid: str, catalog: Catalog) -> list[dict] | None:
    """The strategy's accepted targets in the previous execution, or None if it had none."""
    if not previous:
        return None
    decision = previous.get("decision") or {}
    entry = (decision.get("per_strategy") or {}).get(sid)
    if not entry:
        return None
    contracts = decision.get("instruments") or {}
    rows = []
    for r in entry.get("targets", []):
        catalog.add(r["instrument"], contracts.get(r["instrument"]) or {})
        rows.append({"instrument": r["instrument"], "quantity": int(r["quantity"]), "price": r.get("price")})
    return rows


# ---- per-strategy ledger and max_drawdown ------------------------------------------------------
class _RowPrices(Mapping):
    """Instrument → the rows' own reference price, built on first use (a ledger without targets
    never looks one up)."""

    def __init__(self, rows: list[dict]) -> None:
        self._rows, self._prices = rows, None

    def _get(self) -> dict:
        if self._prices is None:
            self._prices = {r["instrument"]: r["price"] for r in self._rows if r.get("price")}
        return self._prices

    def __getitem__(self, key: str) -> float:
        return self._get()[key]

    def __contains__(self, key: object) -> bool:
        return key in self._get()

    def __iter__(self):
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


class _LedgerPrices:
    """Today's price of an instrument: the snapshot's, else the strategy's own reference price (the
    second looked up only when needed). Only `get`, which is all a ledger reads, and in one step."""

    __slots__ = ("_market", "_rows")

    def __init__(self, market: Mapping[str, float], rows: "_RowPrices") -> None:
        self._market, self._rows = market, rows

    def get(self, key: str, default: float | None = None) -> float | None:
        found = self._market.get(key)
        if found is None:
            found = self._rows._get().get(key, default)
        return found


def apply_ledgers(decision: dict, ledgers: Mapping[str, Any], strategies: Mapping[str, docs.StrategyConfig],
                  per_strategy: dict[str, dict], market: Mapping[str, float], catalog: Catalog,
                  previous: Mapping[str, Any] | None, adjustments: list) -> None:
    """Mark each strategy's previous targets to today's prices (the snapshot's, else the strategy's
    own reference prices); halt (wind down) a strategy whose drawdown reached its max_drawdown.
    Writes the new ledgers into decision['ledgers']; their targets are the accepted targets."""
    out = decision["ledgers"]
    for sid in sorted(strategies):
        cfg = strategies[sid]
        before = ledgers.get(sid)
        halted_before = isinstance(before, Mapping) and before.get("halted")
        if sid not in per_strategy and not halted_before:
            continue  # disabled, or no targets at all: its ledger is left as it is
        rows = per_strategy[sid]["targets"] if sid in per_strategy else []
        prices = _LedgerPrices(market, _RowPrices(rows))
        try:
            new = ledger.advance(before if isinstance(before, Mapping) else None, decision["capital"].get(sid, 0.0),
                                 cfg.risk_parameters.max_drawdown, prices, catalog.units, decision["now"])
        except ledger.LedgerError as err:
            # Fail closed: no new targets on a broken ledger; a halted strategy stays wound down.
            held = None if halted_before else previous_targets(previous, sid, catalog)
            if held is None:
                per_strategy.pop(sid, None)
            else:
                per_strategy[sid] = {"source": "previous", "capital": per_strategy[sid]["capital"], "targets": held}
            decision["skipped"].append({"strategy": sid, "reason": "invalid", "field": err.field,
                                        "action": "hold_previous" if held is not None else
                                        ("wind_down" if halted_before else "no_previous_targets"),
                                        "detail": f"{docs.ledger_path(sid)}: {err}"})
            continue
        if new["halted"] and not halted_before:
            per_strategy.pop(sid, None)
            adjustments.append(_adj("max_drawdown", sid, None, new["drawdown"], 0, new["halted_reason"]))
            decision["skipped"].append({"strategy": sid, "reason": "drawdown", "action": "wind_down",
                                        "detail": f"{docs.ledger_path(sid)}: {new['halted_reason']}; "
                                                  f"clear with: python -m lib.commander clear-halt {sid}"})
        if sid in per_strategy:
            new["targets"] = per_strategy[sid]["targets"]  # instrument, quantity, reference price
        out[sid] = new


# ---- step 6: global caps ------------------------------------------------------------------------
def apply_global_caps(aggregated: dict[str, dict], units: Mapping[str, float], risk: docs.RiskLimits,
                      nav: float, adjustments: list) -> dict[str, int]:
    """Final quantities per instrument after allow_short, per-instrument and gross exposure caps."""
    final = {k: a["quantity"] for k, a in aggregated.items()}
    if not risk.allow_short:
        for k, q in final.items():
            if q < 0:
                adjustments.append(_adj("allow_short", "global", k, q, 0, "shorting is disabled in config/common"))
                final[k] = 0
    limit = risk.max_instrument_exposure * nav
    for k, q in final.items():
        unit = aggregated[k]["price"] * units[k]
        if abs(q) * unit > limit + 1e-9:
            capped = int(math.copysign(_trunc(limit / unit), q))
            adjustments.append(_adj("max_instrument_exposure", "global", k, q, capped))
            final[k] = capped
    gross = sum(abs(q) * aggregated[k]["price"] * units[k] for k, q in final.items())
    gross_limit = risk.max_gross_exposure * nav
    if gross > gross_limit + 1e-9:
        factor = gross_limit / gross
        for k, q in final.items():
            scaled = _trunc(q * factor)
            if scaled != q:
                adjustments.append(_adj("max_gross_exposure", "global", k, q, scaled,
                                        f"gross {gross:.2f} above {gross_limit:.2f}"))
                final[k] = scaled
    return final


# ---- step 8-10: pending orders, own orders, delta and band ---------------------------------------
#: Order types that work only once a price triggers them: a protective stop is not a sale in flight.
TRIGGERED_ORDER_TYPES = frozenset({"STP", "STP LMT", "STP PRT", "TRAIL", "TRAIL LIMIT", "TRAIL LIT", "TRAIL MIT",
                                   "MIT", "LIT"})


def _empty_slot() -> dict:
    return {"manual": 0.0, "own": 0.0, "own_orders": [], "contingent": 0.0, "contingent_orders": []}


def contingency(o: docs.OpenOrder, shared_oca: set[str] | frozenset[str]) -> str | None:
    """Why a working order cannot fill on its own (so it is not pending), or None when it can:
    a stop/trailing/touched order, an order with conditions, the child of a bracket (non-zero
    parentId), or a member of an OCA group another working order shares."""
    kind = " ".join(str(o.orderType).upper().split())
    if kind in TRIGGERED_ORDER_TYPES:
        return f"{kind} order: fills only once its trigger price is reached"
    if o.conditions:
        return f"conditional order ({len(o.conditions)} condition(s))"
    if o.parentId:
        return f"child of order {o.parentId} (bracket)"
    if o.ocaGroup and o.ocaGroup in shared_oca:
        return f"member of OCA group {o.ocaGroup!r} shared with another working order"
    return None


def pending_by_instrument(open_orders: list[docs.OpenOrder], prefix: str, catalog: Catalog) -> dict[str, dict]:
    """Signed remaining quantity per instrument, split into manual (any client) and our own orders.

    Only orders that can fill on their own count. Contingent ones (`contingency`) are listed apart,
    in `contingent` and `contingent_orders`, and never count as pending."""
    working = []
    for o in open_orders:
        if o.status in TERMINAL_STATUSES:
            continue
        remaining = o.remaining if o.remaining is not None else o.totalQuantity - float(
            (o.model_extra or {}).get("filled") or 0.0)
        if remaining <= 0:
            continue
        working.append((o, remaining))
    groups = collections.Counter(o.ocaGroup for o, _ in working if o.ocaGroup)
    shared_oca = {g for g, n in groups.items() if n > 1}
    out: dict[str, dict] = {}
    for o, remaining in working:
        signed = remaining if o.action == "BUY" else -remaining
        key = catalog.key(o.__dict__)
        slot = out.get(key)
        if slot is None:
            slot = out[key] = _empty_slot()
        why = contingency(o, shared_oca)
        if why is not None:
            slot["contingent"] += signed
            slot["contingent_orders"].append({
                "orderId": o.orderId, "permId": o.permId, "clientId": o.clientId, "action": o.action,
                "remaining": remaining, "orderType": o.orderType, "auxPrice": o.auxPrice, "parentId": o.parentId,
                "ocaGroup": o.ocaGroup, "orderRef": o.orderRef, "reason": why})
        elif o.orderRef.startswith(prefix):
            slot["own"] += signed
            slot["own_orders"].append(o)
        else:
            slot["manual"] += signed
    return out


def band_reason(delta: int, target: int, price: float, mult: float, risk: docs.RiskLimits) -> str | None:
    """Why a delta is too small to trade, or None. Closing a position ignores the threshold."""
    if abs(delta) < risk.min_order_quantity:
        return f"min_order_quantity: |{delta}| < {risk.min_order_quantity}"
    if abs(delta) * price * mult < risk.min_order_notional:
        return f"min_order_notional: {abs(delta) * price * mult:.2f} < {risk.min_order_notional:.2f}"
    if target != 0 and abs(delta) < risk.rebalance_threshold * abs(target):
        return f"rebalance_threshold: |{delta}| < {risk.rebalance_threshold} × |{target}|"
    return None


def make_order(key: str, contract: dict, delta: int, price: float, execution_id: str,
               defaults: docs.OrderDefaults, unit: float | None = None) -> dict:
    """One order; `notional` in the base currency (`unit`: multiplier × fx rate; default the multiplier)."""
    action = "BUY" if delta > 0 else "SELL"
    order = {"instrument": key, "contract": contract, "action": action, "quantity": abs(delta),
             "orderType": defaults.type, "tif": defaults.tif, "lmtPrice": None,
             "orderRef": f"{defaults.order_ref_prefix}{execution_id}", "reference_price": price,
             "notional": round(abs(delta) * price * (multiplier_of(contract) if unit is None else unit), 2)}
    if defaults.type in ("LMT", "LOC"):
        offset = defaults.limit_offset_bps / 10_000.0
        raw = price * (1 + offset) if action == "BUY" else price * (1 - offset)
        order["lmtPrice"] = _round_to_tick(raw, defaults.tick_size, action)
    return order


# ---- the decision -------------------------------------------------------------------------------
def decide(inputs: Mapping[str, Any]) -> dict:
    """The full decision for one execution; see the module docstring. Raises InputError only when
    the inputs object itself is malformed; every problem inside a document is recorded instead.

    Equal parts of the decision may be one object (a strategy's contribution of the same quantity
    to several instruments): read it, serialise it, copy it, but do not modify it in place."""
    # The decision allocates one small dict per target row and creates no reference cycles, so the
    # cyclic collector would only rescan those rows again and again (about a fifth of the time
    # with 400,000 rows); it is paused for the call and restored after.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _decide(inputs)
    finally:
        if was_enabled:
            gc.enable()


class _Inputs(NamedTuple):
    now: dt.datetime
    window_start: dt.datetime
    mode: str
    execution_id: str
    strategies: Mapping[str, Any]
    intents: Mapping[str, Any]
    ledgers: Mapping[str, Any]
    previous: Mapping[str, Any] | None
    qualified: Mapping[str, Any] | None = None  # instrument key → the broker's answer (execution.qualify_targets)


def _parse_inputs(inputs: Any) -> _Inputs:
    """The inputs object's own fields; raises InputError when it is malformed."""
    if not isinstance(inputs, Mapping):
        raise InputError("inputs must be a JSON object")
    now = _timestamp(inputs, "now")
    window_start = _timestamp(inputs, "window_start")
    mode = inputs.get("mode")
    if mode not in ("paper", "live"):
        raise InputError(f"inputs: field 'mode' must be 'paper' or 'live', got {mode!r}")
    execution_id = inputs.get("execution_id")
    if not isinstance(execution_id, str) or not execution_id:
        raise InputError("inputs: field 'execution_id' must be a non-empty string")
    for name in ("strategies", "intents", "ledgers"):
        if not isinstance(inputs.get(name) or {}, Mapping):
            raise InputError(f"inputs: field '{name}' must be an object of strategy id → document")
    previous = inputs.get("previous_execution")
    if previous is not None and not isinstance(previous, Mapping):
        raise InputError("inputs: field 'previous_execution' must be an execution record or null")
    qualified = inputs.get("qualified")
    if qualified is not None and not isinstance(qualified, Mapping):
        raise InputError("inputs: field 'qualified' must be an object of instrument key → contract or error")
    return _Inputs(now, window_start, mode, execution_id, inputs.get("strategies") or {},
                   inputs.get("intents") or {}, inputs.get("ledgers") or {}, previous, qualified)


def _check_config(decision: dict, raw_config: Any, raw_strategies: Mapping[str, Any]):
    """config/common and the strategy documents, or None after recording why the decision is blocked.

    Anything that makes capital ambiguous fails closed; a strategy document that is merely invalid
    only skips that strategy.
    """
    try:
        config = docs.load(docs.CommonConfig, docs.common_config_path(), raw_config)
    except DocumentError as err:
        return _refuse(decision, "config", str(err))
    if config.exposure.overall <= 0:
        return _refuse(decision, "config", f"config/common: field 'exposure.overall' must be above 0, "
                                           f"got {config.exposure.overall}")
    strategies: dict[str, docs.StrategyConfig] = {}
    for sid in sorted(raw_strategies):
        raw = raw_strategies[sid]
        alloc = raw.get("capital_allocation") if isinstance(raw, Mapping) else None
        if isinstance(alloc, (int, float)) and not isinstance(alloc, bool) and alloc < 0:
            return _refuse(decision, "config",
                           f"strategies/{sid}: field 'capital_allocation' is negative ({alloc})")
        try:
            strategies[sid] = docs.load(docs.StrategyConfig, docs.strategy_path(sid), raw)
        except DocumentError as err:
            decision["skipped"].append({"strategy": sid, "reason": "invalid", "detail": str(err), "field": err.field})
    total = sum(s.capital_allocation for s in strategies.values() if s.enabled)
    if total > 1 + ALLOCATION_TOLERANCE:
        return _refuse(decision, "config",
                       f"enabled strategies' capital_allocation sum to {total:.6g}, above 1")
    return config, strategies


def _check_portfolio(decision: dict, raw: Any, args: _Inputs) -> docs.PortfolioSnapshot | None:
    """The snapshot, the single source of truth, or None after recording why it cannot be used."""
    path = docs.portfolio_path(args.mode)
    if raw is None:
        return _refuse(decision, "portfolio", f"{path} is missing: run reconcile first")
    try:
        portfolio = docs.load(docs.PortfolioSnapshot, path, raw)
    except DocumentError as err:
        return _refuse(decision, "portfolio", str(err))
    if portfolio.updated_at > args.now + FUTURE_TOLERANCE:
        return _refuse(decision, "portfolio", f"{path}: field 'updated_at' {iso(portfolio.updated_at)} is in the "
                                              f"future (now {iso(args.now)}): a wrong clock or a bad write")
    if portfolio.updated_at < args.window_start:
        return _refuse(decision, "portfolio", f"{path}: field 'updated_at' {iso(portfolio.updated_at)} is before "
                                              f"the window start {iso(args.window_start)} (stale snapshot)")
    previous = args.previous or {}
    last_orders = previous.get("last_orders_at") or (previous.get("executed_at") if previous.get("placed_orders") else None)
    if last_orders:
        last_orders_ts = _timestamp({"t": last_orders}, "t")
        if portfolio.updated_at < last_orders_ts:
            return _refuse(decision, "portfolio",
                           f"{path}: field 'updated_at' {iso(portfolio.updated_at)} is older than the last "
                           f"execution that placed orders ({iso(last_orders_ts)}): reconcile again")
    if (args.mode == "paper") != portfolio.account.startswith("DU"):
        return _refuse(decision, "account", f"{path}: field 'account' {portfolio.account!r} does not match mode "
                                            f"{args.mode!r} (paper accounts start with 'DU')")
    return portfolio


def _strategy_targets(decision: dict, args: _Inputs, config: docs.CommonConfig,
                      strategies: Mapping[str, docs.StrategyConfig], nav: float, market: Mapping[str, float],
                      catalog: Catalog) -> dict[str, dict]:
    """Each strategy's accepted targets: sized from a usable intent, or held from the previous
    execution; disabled and halted strategies contribute nothing."""
    adjustments = decision["adjustments"]
    per_strategy: dict[str, dict] = {}
    for sid, cfg in strategies.items():
        capital = nav * config.exposure.overall * cfg.capital_allocation
        decision["capital"][sid] = round(capital, 6)
        if not cfg.enabled:
            decision["skipped"].append({"strategy": sid, "reason": "disabled",
                                        "detail": f"strategies/{sid}: field 'enabled' is false; positions wind down"})
            continue
        if cfg.halted:
            decision["skipped"].append({"strategy": sid, "reason": "halted",
                                        "detail": f"strategies/{sid}: halted ({cfg.halted_reason or 'by operator'}); "
                                                  f"positions wind down"})
            continue
        ledger_doc = args.ledgers.get(sid)
        if isinstance(ledger_doc, Mapping) and ledger_doc.get("halted"):
            decision["skipped"].append({"strategy": sid, "reason": "halted", "action": "wind_down",
                                        "detail": f"{docs.ledger_path(sid)}: {ledger_doc.get('halted_reason') or 'halted'}; "
                                                  f"clear with: python -m lib.commander clear-halt {sid}"})
            continue
        intent, columns, skip = validate_intent(sid, args.intents.get(sid), args.window_start, args.now, market, catalog)
        if intent is not None:
            skip = implausible(sid, columns, capital, catalog, args.qualified)
            if skip is not None:
                intent = None
        if intent is not None:
            rows = size_strategy(sid, columns, capital, cfg.risk_parameters.max_single_position_exposure,
                                 catalog, adjustments)
            per_strategy[sid] = {"source": "intent", "capital": round(capital, 6), "targets": rows}
            continue
        held_rows = previous_targets(args.previous, sid, catalog)
        skip["action"] = "hold_previous" if held_rows is not None else "no_previous_targets"
        decision["skipped"].append(skip)
        if held_rows is not None:
            per_strategy[sid] = {"source": "previous", "capital": round(capital, 6), "targets": held_rows}
    # Strategies whose own document was invalid hold their previous targets too.
    for skip in decision["skipped"]:
        sid = skip["strategy"]
        if skip["reason"] == "invalid" and sid not in strategies and sid not in per_strategy:
            rows = previous_targets(args.previous, sid, catalog)
            skip["action"] = "hold_previous" if rows is not None else "no_previous_targets"
            if rows is not None:
                per_strategy[sid] = {"source": "previous", "capital": None, "targets": rows}
    apply_ledgers(decision, args.ledgers, strategies, per_strategy, market, catalog, args.previous, adjustments)
    return per_strategy


def _aggregate(per_strategy: Mapping[str, dict], previous: Mapping[str, Any] | None,
               market: Mapping[str, float], catalog: Catalog) -> dict[str, dict]:
    """Quantity per instrument with each strategy's contribution; the previous final target stays
    managed (at zero if no strategy names it) so its positions wind down.

    Strategies sized in this decision (`catalog.columns`: unique instruments, int64 quantities)
    are summed with numpy; other targets (held from the previous execution) row by row."""
    aggregated: dict[str, dict] = {}
    contributions: dict[str, list] = {}  # instrument → its slot's contributions
    unpriced: set[str] = set()  # slots still without a reference price
    number = catalog.index  # every key here is registered: sized rows and held targets both
    seen = np.zeros(len(number), dtype=bool)  # by number: has a slot
    total = np.zeros(len(number), dtype=np.int64)  # by number: the sized strategies' quantities
    bound = 0  # no partial sum in `total` exceeds this in magnitude
    sized: list[tuple[np.ndarray, np.ndarray]] = []
    # Contributions of consecutive sized strategies over the same instruments in the same order,
    # appended per instrument in one go (`flush`). One contribution object per strategy and
    # quantity, shared by the instruments it applies to: the same JSON, and a decision is never
    # modified in place.
    block: list[list[dict]] = []
    block_keys: list[str] = []
    block_numbers = np.zeros(0, dtype=np.intp)

    def flush() -> None:
        for contributed, column in zip(map(contributions.__getitem__, block_keys), zip(*block)):
            contributed.extend(column)
        block.clear()

    def new_slot(key: str, price: float | None) -> None:
        seen[number[key]] = True
        aggregated[key] = {"instrument": key, "quantity": 0, "price": market.get(key, price),
                           "contributions": contributions.setdefault(key, [])}
        if aggregated[key]["price"] is None:
            unpriced.add(key)

    for sid in sorted(per_strategy):
        targets = per_strategy[sid]["targets"]
        columns = catalog.columns.get(sid)
        if columns is None or columns[0] is not targets:
            flush()
            for r in targets:
                slot = aggregated.get(r["instrument"])
                if slot is None:
                    new_slot(r["instrument"], r["price"])
                    slot = aggregated[r["instrument"]]
                elif slot["price"] is None:
                    slot["price"] = r["price"]
                    if r["price"] is not None:
                        unpriced.discard(r["instrument"])
                slot["quantity"] += r["quantity"]
                slot["contributions"].append({"strategy": sid, "quantity": r["quantity"]})
            continue
        _, keys, quantities, qty, numbers = columns
        if numbers is None:
            numbers = np.fromiter(map(number.__getitem__, keys), dtype=np.intp, count=len(keys))
        if unpriced or not seen[numbers].all():
            for r in targets:
                key = r["instrument"]
                if key not in aggregated:
                    new_slot(key, r["price"])
                elif key in unpriced:
                    aggregated[key]["price"] = r["price"]  # never None for a sized row
                    unpriced.discard(key)
        if not (len(numbers) == len(block_numbers) and np.array_equal(numbers, block_numbers)):
            flush()
            block_keys, block_numbers = keys, numbers
        made = {q: {"strategy": sid, "quantity": q} for q in set(quantities)}
        block.append(list(map(made.__getitem__, quantities)))
        sized.append((numbers, qty))
        bound += max(int(qty.max()), -int(qty.min()))
    flush()
    if sized:
        if bound < 2 ** 63:
            for at, qty in sized:
                total[at] += qty  # an instrument appears once per strategy
            totals = total.tolist()
        else:  # beyond int64: Python integers
            totals = [0] * len(number)
            for at, qty in sized:
                for i, q in zip(at.tolist(), qty.tolist()):
                    totals[i] += q
        for key, slot in aggregated.items():
            slot["quantity"] += totals[number[key]]
    prev_decision = (previous or {}).get("decision") or {}
    prev_contracts = prev_decision.get("instruments") or {}
    for r in prev_decision.get("final_target", []):
        key = r["instrument"]
        if key not in aggregated:
            catalog.add(key, prev_contracts.get(key) or {})
            aggregated[key] = {"instrument": key, "quantity": 0,
                               "price": market.get(key, r.get("price")), "contributions": []}
    return aggregated


def manual_policy(config: docs.CommonConfig, catalog: Catalog, keys) -> dict[str, str]:
    """The instruments under the `respect` manual-trade policy (the default and `correct` are left out)."""
    by_symbol = config.manual_trades_by_symbol
    out = {}
    for key in keys:
        policy = by_symbol.get(catalog.contracts[key].get("symbol"), config.manual_trades)
        if policy == "respect":
            out[key] = policy
    return out


def _diff(decision: dict, final: Mapping[str, int], aggregated: Mapping[str, dict], held: Mapping[str, float],
          pending: Mapping[str, dict], config: docs.CommonConfig, catalog: Catalog,
          respected: Mapping[str, float] | None = None, uncertain: Mapping[str, str] | None = None) -> list[dict]:
    """One diff row per managed instrument, our mismatched working orders to cancel, and the
    candidate orders (sells first) that the band let through.

    `respected` maps the instruments under the `respect` policy to their manual part: the account's
    target there is the strategies' target plus that part, and manual working orders are left to
    their owner (not counted). Those in `uncertain` (the own book has a gap) get no order at all."""
    candidates = []
    respected, uncertain = respected or {}, uncertain or {}
    no_rate = getattr(catalog, "no_rate", None) or {}
    for key in sorted(final):
        a = aggregated[key]
        target, have = final[key], held.get(key, 0.0)
        slot = pending.get(key) or _empty_slot()
        mult = catalog.units[key]
        counted_manual = 0.0 if key in respected else slot["manual"]
        need = target + respected.get(key, 0.0) - have - counted_manual
        row = {"instrument": key, "target": target, "held": have, "pending_manual": slot["manual"],
               "pending_own": slot["own"], "delta": 0, "action": "none"}
        if key in no_rate:
            # No exchange rate for its currency: its notional is unknown, so it is not traded at all.
            row.update(action="no_fx_rate", note=f"no exchange rate for {no_rate[key]} in the snapshot's "
                                                 f"fx_rates: not traded")
            decision["adjustments"].append(_adj("fx_rate", "global", key, None, None, row["note"]))
            decision["final_target"].append({"instrument": key, "quantity": target, "price": a["price"]})
            decision["diff"].append(row)
            continue
        if key in respected:
            row.update(policy="respect", manual_part=respected[key])
            if key in uncertain:
                row.update(action="uncertain_book", note=uncertain[key])
                decision["final_target"].append({"instrument": key, "quantity": target, "price": a["price"]})
                decision["diff"].append(row)
                continue
        if slot["contingent_orders"]:
            # Stops, conditional orders, bracket children, OCA members: listed, never counted as pending.
            row["pending_contingent"] = slot["contingent"]
            row["contingent"] = sorted(slot["contingent_orders"], key=lambda c: (c["orderId"], c["permId"]))
        if slot["own_orders"] and slot["own"] == need:
            row["action"] = "keep_own_orders"
        else:
            for o in sorted(slot["own_orders"], key=lambda o: (o.orderId, o.permId)):
                decision["cancels"].append({"orderId": o.orderId, "permId": o.permId, "instrument": key,
                                            "remaining": o.remaining, "action": o.action, "orderRef": o.orderRef,
                                            "reason": f"own working orders {slot['own']:+g} ≠ needed {need:+g}"})
            delta = _trunc(need)
            if delta != 0:
                reason = band_reason(delta, target, a["price"], mult, config.risk)
                if reason:
                    row.update(action="suppressed", note=reason, suppressed=delta)
                else:
                    row.update(action="trade", delta=delta)
                    candidates.append({"instrument": key, "delta": delta, "wanted": delta, "row": row,
                                       "position": have + counted_manual, "unit_price": a["price"] * mult,
                                       "price": a["price"]})
            if slot["own_orders"] and row["action"] == "none":
                row["action"] = "cancel_own_orders"
        # Once flat with nothing pending, an instrument no strategy names leaves the managed universe.
        if target == 0 and have == 0 and slot["manual"] == 0 and not a["contributions"] and row["action"] == "none" \
                and not slot["own_orders"]:
            continue
        decision["final_target"].append({"instrument": key, "quantity": target, "price": a["price"]})
        decision["diff"].append(row)
    candidates.sort(key=lambda c: (c["delta"] > 0, c["instrument"]))  # sells first: their proceeds fund buys
    return candidates


def _manual_parts(raw_book: Any, config: docs.CommonConfig, catalog: Catalog, final: Mapping[str, int],
                  held: Mapping[str, float]) -> tuple[dict[str, float], dict[str, str]]:
    """For the instruments under `respect`: the manual part (holding − own book) and the uncertain ones."""
    policy = manual_policy(config, catalog, final)
    if not policy:
        return {}, {}
    book = raw_book if isinstance(raw_book, Mapping) else {}
    own = book.get("positions") or {}
    uncertain = {k: str(v) for k, v in (book.get("uncertain") or {}).items() if k in policy}
    if book.get("stale"):
        uncertain = {k: str(book["stale"]) for k in policy}
    return {k: held.get(k, 0.0) - float(own.get(k, 0.0)) for k in policy}, uncertain


def _decide(inputs: Mapping[str, Any]) -> dict:
    args = _parse_inputs(inputs)
    decision: dict[str, Any] = {
        "execution_id": args.execution_id, "mode": args.mode, "now": iso(args.now),
        "window_start": iso(args.window_start), "status": "ok", "blocked_reasons": [], "net_liquidation": None,
        "capital": {}, "skipped": [], "per_strategy": {}, "aggregated_target": [], "adjustments": [],
        "final_target": [], "diff": [], "cancels": [], "orders": [], "instruments": {}, "ledgers": {},
    }
    if args.window_start > args.now:
        return _blocked(decision, "window", f"window_start {iso(args.window_start)} is after now {iso(args.now)}")
    checked = _check_config(decision, inputs.get("config"), args.strategies)
    if checked is None:
        return decision
    config, strategies = checked
    portfolio = _check_portfolio(decision, inputs.get("portfolio"), args)
    if portfolio is None:
        return decision

    nav = decision["net_liquidation"] = portfolio.net_liquidation
    catalog = Catalog(portfolio.fx_rates)
    market: dict[str, float] = {}
    held: dict[str, float] = {}
    for h in portfolio.holdings:
        key = catalog.key(h.__dict__)
        held[key] = held.get(key, 0.0) + h.quantity
        if h.market_price:
            market.setdefault(key, h.market_price)

    per_strategy = _strategy_targets(decision, args, config, strategies, nav, market, catalog)
    decision["per_strategy"] = {sid: per_strategy[sid] for sid in sorted(per_strategy)}
    aggregated = _aggregate(per_strategy, args.previous, market, catalog)
    unpriced = sorted(k for k, a in aggregated.items() if not a["price"] or a["price"] <= 0)
    if unpriced:
        return _blocked(decision, "prices", f"no reference price for {', '.join(unpriced)}")
    decision["aggregated_target"] = [aggregated[k] for k in sorted(aggregated) if aggregated[k]["contributions"]]

    adjustments = decision["adjustments"]
    final = apply_global_caps(aggregated, catalog.units, config.risk, nav, adjustments)
    pending = pending_by_instrument(portfolio.open_orders, config.orders.order_ref_prefix, catalog)
    respected, uncertain = _manual_parts(inputs.get("book"), config, catalog, final, held)
    candidates = _diff(decision, final, aggregated, held, pending, config, catalog, respected, uncertain)

    kept = {r["instrument"] for r in decision["diff"] if r["action"] == "keep_own_orders"}
    exposures = {}
    for k in final:
        slot = pending.get(k, {})
        position = held.get(k, 0.0) + slot.get("manual", 0.0) + (slot.get("own", 0.0) if k in kept else 0.0)
        exposures[k] = abs(position) * aggregated[k]["price"] * catalog.units[k]
    limits.apply(candidates, config, portfolio.available_funds, nav, exposures, adjustments)
    sells, buys = [], []
    for c in candidates:
        row = c["row"]
        if c["delta"] != c["wanted"]:
            row.update(action="limited", delta=c["delta"], limited=c["wanted"] - c["delta"])
        if c["delta"]:
            order = make_order(c["instrument"], catalog.contracts[c["instrument"]], c["delta"], c["price"],
                               args.execution_id, config.orders, catalog.units[c["instrument"]])
            (buys if c["delta"] > 0 else sells).append(order)
    decision["orders"] = sells + buys
    # Each planned order's own reference, n = its place in the plan: the broker's orders, completed
    # orders and executions then say exactly which planned orders reached it (IB does not dedupe).
    for n, order in enumerate(decision["orders"], start=1):
        order["orderRef"] = f"{config.orders.order_ref_prefix}{args.execution_id}-{n}"
    decision["trading_state"] = "halted" if not config.tradingEnabled else config.tradingState
    decision["approval"] = limits.approval(decision["orders"], config, nav)
    decision["instruments"] = {k: catalog.contracts[k] for k in sorted(final)}
    decision["unmanaged_holdings"] = sorted(k for k in held if k not in final)
    return decision
