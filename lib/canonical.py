"""Canonical JSON: one byte sequence per value, so fingerprints and replays compare exactly."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any


def iso(ts: dt.datetime) -> str:
    """An aware datetime as ISO-8601 UTC with a 'Z' (microseconds kept when present)."""
    return ts.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _default(value: Any):
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} has no time zone")
        return iso(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(value: Any, indent: int | None = None) -> str:
    """Sorted keys, no NaN, datetimes as ISO UTC strings."""
    return json.dumps(value, sort_keys=True, default=_default, allow_nan=False, ensure_ascii=False,
                      separators=(",", ":") if indent is None else None, indent=indent)


def to_jsonable(value: Any) -> Any:
    """The value as plain JSON types (datetimes become ISO strings)."""
    return json.loads(dumps(value))


def fingerprint(value: Any) -> str:
    """'sha256:<hex>' of the canonical JSON."""
    return "sha256:" + hashlib.sha256(dumps(value).encode("utf-8")).hexdigest()
