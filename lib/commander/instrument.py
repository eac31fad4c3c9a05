"""The instrument key the Commander nets on (DESIGN.md §5).

`(secType, symbol, currency, lastTradeDateOrContractMonth, strike, right, multiplier)`; exchange and
conId are not part of it because IB reports SMART/BATS/primary inconsistently.
"""
from __future__ import annotations

from typing import Any, Mapping

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
    the cache on the raw identifying fields makes a row's key one tuple and one dict lookup.
    """

    def __init__(self) -> None:
        self._keys: dict[tuple, str] = {}
        self.contracts: dict[str, dict[str, Any]] = {}
        self.units: dict[str, float] = {}

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
            self.units[key] = multiplier_of(contract)
