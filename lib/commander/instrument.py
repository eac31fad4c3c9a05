"""The instrument key the Commander nets on (DESIGN.md §5).

`(secType, symbol, currency, lastTradeDateOrContractMonth, strike, right, multiplier)`; exchange and
conId are not part of it because IB reports SMART/BATS/primary inconsistently.
"""
from __future__ import annotations

import math
from itertools import compress, repeat
from operator import contains, itemgetter, not_
from typing import Any, Mapping, NamedTuple

import numpy as np

CONTRACT_FIELDS = ("secType", "symbol", "currency", "lastTradeDateOrContractMonth", "strike", "right", "multiplier")


def _multiplier(value: Any) -> str:
    text = str(value or "").strip()
    # IB reports "1" or "" for stocks; both mean "no multiplier".
    return "" if text in ("", "1", "1.0") else text


def _strike(value: Any) -> str:
    number = float(value or 0.0)
    return "" if number == 0.0 else format(number, "g")


def key_of(row: Mapping[str, Any]) -> str:
    """A canonical string key: 'STK:SPY:USD', or with expiry/strike/right/multiplier appended for derivatives."""
    sec_type = str(row.get("secType") or "STK").upper()
    symbol = str(row.get("symbol") or "").upper()
    currency = str(row.get("currency") or "USD").upper()
    tail = (str(row.get("lastTradeDateOrContractMonth") or ""), _strike(row.get("strike")),
            str(row.get("right") or "").upper(), _multiplier(row.get("multiplier")))
    if any(tail):
        return ":".join((sec_type, symbol, currency) + tail)
    return f"{sec_type}:{symbol}:{currency}"


def contract_from_key(key: str) -> dict[str, Any]:
    """The identifying contract fields a key encodes (for records that lack the contract itself)."""
    parts = key.split(":") + [""] * 7
    sec_type, symbol, currency, expiry, strike, right, multiplier = parts[:7]
    return contract_of({"secType": sec_type, "symbol": symbol, "currency": currency,
                        "lastTradeDateOrContractMonth": expiry, "strike": float(strike or 0.0),
                        "right": right, "multiplier": multiplier})


def contract_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """The identifying contract fields of a row, plus exchange, for placing an order."""
    return {
        "symbol": str(row.get("symbol") or "").upper(),
        "secType": str(row.get("secType") or "STK").upper(),
        "currency": str(row.get("currency") or "USD").upper(),
        "exchange": str(row.get("exchange") or "SMART"),
        "lastTradeDateOrContractMonth": str(row.get("lastTradeDateOrContractMonth") or ""),
        "strike": float(row.get("strike") or 0.0),
        "right": str(row.get("right") or "").upper(),
        "multiplier": _multiplier(row.get("multiplier")),
    }


def multiplier_of(contract: Mapping[str, Any]) -> float:
    text = _multiplier(contract.get("multiplier"))
    try:
        return float(text) if text else 1.0
    except ValueError:
        return 1.0


class Catalog:
    """Keys, contracts and multipliers of the instruments one decision sees, each computed once.

    A decision touches the same few thousand instruments in hundreds of thousands of rows; keying
    the cache on the raw identifying fields makes a row's key one tuple and one dict lookup. Each
    key also gets a number (in the order keys are registered), for numpy over whole columns.
    """

    def __init__(self, fx: Mapping[str, float] | None = None) -> None:
        self._keys: dict[tuple, str] = {}
        self.contracts: dict[str, dict[str, Any]] = {}
        # A key's unit: what one unit of its price is worth in the base currency (multiplier × the
        # currency's rate), so every notional computed from it is in the base currency.
        self.units: dict[str, float] = {}
        self.scaled: set[str] = set()  # keys whose unit is not 1
        self.fx = fx  # currency → value of one unit in the base currency; None: a one-currency account
        self.no_rate: dict[str, str] = {}  # key → its currency, which has no rate: never traded
        self.index: dict[str, int] = {}  # key → its number
        # Bulk rows (`target_columns`): per layout of identity fields, their values → the key's
        # number, each tuple validated and its contract registered once.
        self._tuples: dict[tuple[str, ...], dict[Any, int]] = {}
        self._arrays: dict[str, tuple[int, np.ndarray]] = {}
        # Sized strategies' columns, for the aggregation (engine.size_strategy → engine._aggregate).
        self.columns: dict[str, tuple] = {}

    def key(self, row: Mapping[str, Any]) -> str:
        get = row.get
        raw = (get("secType"), get("symbol"), get("currency"), get("lastTradeDateOrContractMonth"),
               get("strike"), get("right"), get("multiplier"))
        key = self._keys.get(raw)
        if key is None:
            key = self._keys[raw] = key_of(row)
            if key not in self.contracts:
                self.add(key, contract_of(row))
        return key

    def add(self, key: str, contract: Mapping[str, Any]) -> None:
        """Register a contract under its key (first one seen wins: exchange is not identity)."""
        if key not in self.contracts:
            contract = dict(contract) if contract and contract.get("symbol") else contract_from_key(key)
            self.contracts[key] = contract
            unit = multiplier_of(contract)
            if self.fx is not None:
                rate = self.fx.get(str(contract.get("currency") or "USD").upper())
                if rate is None:
                    self.no_rate[key] = str(contract.get("currency") or "USD").upper()
                else:
                    unit *= rate
            self.units[key] = unit
            self.index[key] = len(self.index)
            if unit != 1.0:
                self.scaled.add(key)

    def register(self, columns: "TargetColumns") -> None:
        """Adopt the identity tuples an accepted intent's rows introduced, in the order first seen."""
        cache = self._tuples.setdefault(columns.layout, {})
        for values, key in columns.fresh.items():
            self.add(key, contract_of(_identity_row(columns.layout, values)))
            cache[values] = self.index[key]

    def _array(self, name: str, build) -> np.ndarray:
        """A per-number array, rebuilt when keys were added since."""
        n, array = self._arrays.get(name, (-1, None))
        if n != len(self.index):
            array = build()
            self._arrays[name] = (len(self.index), array)
        return array

    def key_array(self) -> np.ndarray:
        """Keys by number (object array)."""
        return self._array("keys", lambda: np.array(list(self.index), dtype=object))

    def unit_array(self) -> np.ndarray:
        """Multipliers by number."""
        return self._array("units", lambda: np.fromiter(self.units.values(), dtype=float, count=len(self.units)))

    def price_array(self, market: Mapping[str, float]) -> np.ndarray:
        """`market` prices by number, NaN where there is none (`market` is fixed for a decision)."""
        return self._array("market", lambda: np.array([market.get(k, np.nan) for k in self.index], dtype=float))

    def price_objects(self, market: Mapping[str, float]) -> np.ndarray:
        """`market` prices by number as the very float objects of `market`, None where there is none."""
        return self._array("market objects", lambda: np.array([market.get(k) for k in self.index], dtype=object))


# ---- target rows in bulk -----------------------------------------------------------------------
# The row model (lib.documents.TargetPosition) validates one row at a time, which is most of the cost
# of a decision over hundreds of thousands of rows. `target_columns` proves the same rows valid a
# column at a time instead, for rows of plain JSON types; for anything it cannot prove valid (any
# doubt at all: an unexpected type, a non-ASCII string, an integer too large for an exact float) it
# answers None, and the caller asks the row model, which then names the document and the field.
MISSING = type("Missing", (), {"__repr__": lambda self: "MISSING"})()  # a field the row does not have
_NONE = type(None)
_NAN_FOR_NONE = {None: math.nan}
_EXACT = 2 ** 53  # integers up to this convert to float exactly, as the row model converts them

#: The row model's fields and their annotations, as this module validates them (and, in
#: `ROW_FIELD_VARIANTS`, the other spellings it knows). When lib.documents.TargetPosition changes
#: otherwise, `ROW_MODEL_MATCHES` turns False and every intent goes through the row model until this
#: module learns the new field.
ROW_FIELDS = {
    "symbol": "Annotated[str, Field(min_length=1)]",
    "secType": "NotRequired[str]",
    "exchange": "NotRequired[str]",
    "primaryExchange": "NotRequired[str]",
    "currency": "NotRequired[str]",
    "lastTradeDateOrContractMonth": "NotRequired[str]",
    "strike": "NotRequired[float]",
    "right": "NotRequired[str]",
    "multiplier": "NotRequired[str]",
    "quantity": "NotRequired[Optional[Annotated[int, Field(strict=True)]]]",
    "weight": "NotRequired[Optional[float]]",
    "price": "NotRequired[Optional[Annotated[float, Field(gt=0.0)]]]",
    "contract_details": "NotRequired[Optional[dict[str, Any]]]",
}
ROW_FIELD_VARIANTS = {
    "secType": "NotRequired[SEC_TYPES]",  # one of IB's own security types (lib.documents.SEC_TYPES)
    "conId": "NotRequired[Annotated[int, Field(ge=0)]]",  # optional field: IB's contract id, not identity
}
#: Identity fields (key and contract), in the order of an identity tuple.
IDENTITY = ("symbol", "secType", "currency", "exchange", "lastTradeDateOrContractMonth", "strike", "right",
            "multiplier")


def _row_model() -> tuple[bool, frozenset[str], frozenset[str] | None]:
    """Whether lib.documents.TargetPosition is the model this module validates; its field names; the
    security types it allows (None: any string)."""
    import typing

    from lib import documents as docs
    model = docs.TargetPosition
    config = getattr(model, "__pydantic_config__", {})
    annotations = {name: getattr(a, "__forward_arg__", a) for name, a in model.__annotations__.items()}
    known = all(a == ROW_FIELDS.get(name) or a == ROW_FIELD_VARIANTS.get(name) for name, a in annotations.items())
    matches = (known and ROW_FIELDS.keys() - ROW_FIELD_VARIANTS.keys() <= annotations.keys()
               and config.get("extra") == "forbid" and config.get("allow_inf_nan") is False)
    sec_types = None
    if annotations.get("secType") == ROW_FIELD_VARIANTS["secType"]:
        sec_types = frozenset(typing.get_args(getattr(docs, "SEC_TYPES", None)))
        matches = matches and bool(sec_types) and all(type(t) is str for t in sec_types)
    return matches, frozenset(annotations), sec_types


ROW_MODEL_MATCHES, _ROW_FIELD_NAMES, _SEC_TYPES = _row_model()


class TargetColumns(NamedTuple):
    """An intent's rows, proven valid for the row model (and to give exactly one of quantity and
    weight each), as columns."""
    keys: list[str] | None  # None when `numbers` are known (the keys are `catalog.key_array()[numbers]`)
    numbers: np.ndarray | None  # the keys' numbers in the catalog; None while some are `fresh`
    prices: np.ndarray  # the rows' own reference prices; NaN where the row gives none
    quantities: np.ndarray  # float; NaN where the row gives none
    weights: np.ndarray  # float; NaN where the row gives none
    layout: tuple[str, ...]  # the identity fields the rows use
    fresh: dict[Any, str]  # identity tuples not seen before (first seen first) → key; see Catalog.register


def _identity_row(layout: tuple[str, ...], values: Any) -> dict[str, Any]:
    if len(layout) == 1:
        values = (values,)
    return {f: v for f, v in zip(layout, values) if v is not MISSING}


def _valid_identity(layout: tuple[str, ...], values: Any) -> bool:
    """The identity fields of one distinct tuple, as the row model checks them (ASCII only here)."""
    if len(layout) == 1:
        values = (values,)
    for field, v in zip(layout, values):
        if v is MISSING:
            if field == "symbol":
                return False
        elif field == "strike":
            t = type(v)
            if not ((t is float and math.isfinite(v)) or (t is int and -_EXACT <= v <= _EXACT)):
                return False
        elif type(v) is not str or not v.isascii() or (field == "symbol" and not v):
            return False
        elif field == "secType" and _SEC_TYPES is not None and v not in _SEC_TYPES:
            return False
    return True


def _column(rows: list[dict], field: str, common: set[str], default: Any) -> list:
    if field in common:
        return list(map(itemgetter(field), rows))
    return list(map(dict.get, rows, repeat(field), repeat(default)))


def _numbers(column: list, kinds: set[type]) -> bool:
    """Float (or exactly convertible int) or None values only."""
    if not kinds <= {float, int, _NONE}:
        return False
    return int not in kinds or all(-_EXACT <= v <= _EXACT for v in column if type(v) is int)


def _floats(column: list, kinds: set[type]) -> np.ndarray:
    """A column of numbers or None as floats, NaN for None (`kinds`: the column's types, checked)."""
    if _NONE not in kinds:
        return np.array(column, dtype=float)
    if kinds == {_NONE}:
        return np.full(len(column), math.nan)
    return np.fromiter(map(_NAN_FOR_NONE.get, column, column), dtype=float, count=len(column))


def target_columns(rows: Any, catalog: Catalog) -> TargetColumns | None:
    """An intent's target rows as columns, or None unless every row is proven valid for the row model.

    Pure: nothing is registered in the catalog until the caller accepts the intent (`Catalog.register`).
    """
    if type(rows) is not list or not ROW_MODEL_MATCHES:
        return None
    if not rows:
        empty = np.zeros(0)
        return TargetColumns(None, np.zeros(0, dtype=np.intp), empty, empty, empty, ("symbol",), {})
    if set(map(type, rows)) != {dict}:
        return None
    fields = set().union(*rows)
    if not fields <= _ROW_FIELD_NAMES or "symbol" not in fields:
        return None
    n = len(rows)
    # The fields every row has are read with an itemgetter, the others with a default. A guess
    # from a sample of rows; a KeyError proves it wrong.
    common = fields.intersection(*(rows[i * (n - 1) // 24] for i in range(25)))
    try:
        try:
            columns, sizes = _read(rows, fields, common), _sizes(rows, fields, common)
        except KeyError:  # a field the sample showed in every row is not: find exactly which are
            common = {f for f in fields if all(map(contains, rows, repeat(f)))}
            columns, sizes = _read(rows, fields, common), _sizes(rows, fields, common)
        return None if sizes is None else _finish(catalog, *columns, *sizes)
    except TypeError:  # an unhashable value where a string or number belongs
        return None


def _read(rows: list[dict], fields: set[str], common: set[str]) -> tuple:
    """The identity layout and tuples, then the price, quantity, weight, primaryExchange and
    contract_details columns (KeyError: a field in `common` is missing from a row)."""
    n = len(rows)
    layout = tuple(f for f in IDENTITY if f in fields)
    if common.issuperset(layout):
        ids = list(map(itemgetter(*layout), rows))
    elif len(layout) == 1:
        ids = _column(rows, "symbol", common, MISSING)
    else:
        ids = list(zip(*(_column(rows, f, common, MISSING) for f in layout)))
    others = [_column(rows, f, common, default) if f in fields else None
              for f, default in (("price", None), ("primaryExchange", MISSING), ("conId", MISSING),
                                 ("contract_details", None))]
    return (layout, ids, *others)


def _sizes(rows: list[dict], fields: set[str], common: set[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """Quantities and weights as floats, NaN where a row gives none; or None unless every row is
    proven to give exactly one of them: a quantity (a strict int) or a weight (a finite float, or
    an int that converts exactly)."""
    n = len(rows)
    if "weight" not in fields or "quantity" not in fields:  # one of them, in every row (else invalid)
        field = "quantity" if "quantity" in fields else "weight"
        if field not in common:
            return None
        column = list(map(itemgetter(field), rows))
        values = _sized(column, field)
        if values is None:
            return None
        nothing = np.full(n, math.nan)
        return (values, nothing) if field == "quantity" else (nothing, values)
    if "weight" not in common and "quantity" not in common:
        # Rows of either kind: split by which field they have (neither or both: see below).
        has_weight = list(map(contains, rows, repeat("weight")))
        weighted = list(compress(rows, has_weight))
        if not any(map(contains, weighted, repeat("quantity"))):
            try:
                quantities = list(map(itemgetter("quantity"), compress(rows, map(not_, has_weight))))
            except KeyError:  # a row with neither
                return None
            quantities = _sized(quantities, "quantity")
            weights = _sized(list(map(itemgetter("weight"), weighted)), "weight")
            if quantities is None or weights is None:
                return None
            mask = np.frombuffer(bytes(has_weight), dtype=bool)
            given, weight = np.full(n, math.nan), np.full(n, math.nan)
            given[~mask], weight[mask] = quantities, weights
            return given, weight
    # The general case: a quantity or a weight may also be given as None.
    quantities, weights = _column(rows, "quantity", common, None), _column(rows, "weight", common, None)
    quantity_kinds, weight_kinds = set(map(type, quantities)), set(map(type, weights))
    if not quantity_kinds <= {int, _NONE} or not _numbers(weights, weight_kinds):
        return None
    try:
        given = _floats(quantities, quantity_kinds)
    except OverflowError:  # beyond any float: the row model takes it, sizing will not
        return None
    weight = _floats(weights, weight_kinds)
    if (np.abs(given) >= _EXACT).any():
        return None
    # A weight exactly where there is no quantity (NaN only for None, not a NaN weight); nothing infinite.
    weight_nan = np.isnan(weight)
    if not np.array_equal(weight_nan, ~np.isnan(given)) or weight_nan.sum() != weights.count(None) \
            or np.isinf(weight).any():
        return None
    return given, weight


def _sized(column: list, field: str) -> np.ndarray | None:
    """A column of quantities (strict ints) or weights (finite floats; ints convert), none of them
    None, as floats; None unless all are."""
    kinds = set(map(type, column))
    if field == "quantity":
        if not kinds <= {int}:
            return None
        try:
            values = np.array(column, dtype=float)
        except OverflowError:  # beyond any float: the row model takes it, sizing will not
            return None
        return None if (np.abs(values) >= _EXACT).any() else values
    if _NONE in kinds or not _numbers(column, kinds):
        return None
    values = np.array(column, dtype=float)
    return None if not np.isfinite(values).all() else values


def _finish(catalog: Catalog, layout: tuple[str, ...], ids: list, prices: list | None, primary: list | None,
            contract_ids: list | None, details: list | None, given: np.ndarray,
            weight: np.ndarray) -> TargetColumns | None:
    n = len(ids)
    prices = [None] * n if prices is None else prices
    # Fields that only need their type checked.
    if primary is not None:
        strings = set(primary)
        strings.discard(MISSING)
        if not all(type(v) is str and v.isascii() for v in strings):
            return None
    if contract_ids is not None:
        numbers = set(contract_ids)
        numbers.discard(MISSING)
        if not all(type(v) is int and v >= 0 for v in numbers):
            return None
    if details is not None:
        if not set(map(type, details)) <= {dict, _NONE}:
            return None
        if not all(type(k) is str for d in details if d for k in d):
            return None
    # A price is a finite float above 0 (an int converts) or None.
    price_kinds = set(map(type, prices))
    if not _numbers(prices, price_kinds):
        return None
    price = _floats(prices, price_kinds)
    if np.isinf(price).any():
        return None
    bad = np.count_nonzero(~(price > 0))
    if bad and bad != prices.count(None):
        return None
    # Keys: each distinct identity tuple validated once per decision.
    cache = catalog._tuples.get(layout) or {}
    try:
        numbers = np.fromiter(map(cache.__getitem__, ids), dtype=np.intp, count=n)
        return TargetColumns(None, numbers, price, given, weight, layout, {})
    except KeyError:  # a tuple not seen before
        pass
    fresh: dict[Any, str] = {}
    for values in dict.fromkeys(ids):
        if values not in cache:
            if not _valid_identity(layout, values):
                return None
            fresh[values] = key_of(_identity_row(layout, values))
    keys = catalog.key_array()
    lookup = {values: keys[i] for values, i in cache.items()}
    lookup.update(fresh)
    return TargetColumns(list(map(lookup.__getitem__, ids)), None, price, given, weight, layout, fresh)
