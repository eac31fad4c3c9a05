"""Firestore's rules, enforced before any write by every backend.

The embedded SQLite bus must refuse exactly what Firestore refuses, so nothing passes locally that
production would reject; the Firestore backend checks the same rules first so both raise the same
error types (the real client would raise bare ValueErrors or gRPC errors instead).
"""
from __future__ import annotations

import datetime as dt
import math
from typing import Any

from lib.errors import DocumentTooLargeError, InvalidPathError, InvalidValueError

MAX_DOCUMENT_BYTES = 1_048_576  # 1 MiB, Firestore's limit on a document's storage size
MAX_DEPTH = 20  # Firestore allows maps/arrays nested at most 20 levels deep


def split_path(path: str) -> list[str]:
    if not isinstance(path, str) or not path:
        raise InvalidPathError(f"path must be a non-empty string, got {path!r}")
    if path.startswith("/") or path.endswith("/") or "//" in path:
        raise InvalidPathError(f"path {path!r} has an empty segment")
    segments = path.split("/")
    for seg in segments:
        if seg in (".", "..") or (seg.startswith("__") and seg.endswith("__")):
            raise InvalidPathError(f"path {path!r}: segment {seg!r} is reserved in Firestore")
        if len(seg.encode("utf-8")) > 1500:
            raise InvalidPathError(f"path {path!r}: a segment is longer than 1,500 bytes")
    return segments


def check_document_path(path: str) -> list[str]:
    """Return the segments of a document path; raise InvalidPathError unless it has an even count."""
    segments = split_path(path)
    if len(segments) % 2:
        raise InvalidPathError(
            f"{path!r} is not a document path: a document path has an even number of segments "
            f"(collection/document[/collection/document...]), this one has {len(segments)}")
    return segments


def check_document_paths(paths) -> list[str]:
    """Several document paths, checked, duplicates dropped, order kept."""
    unique = list(dict.fromkeys(paths))
    for path in unique:
        check_document_path(path)
    return unique


def check_collection_path(path: str) -> list[str]:
    """Return the segments of a collection path; raise InvalidPathError unless it has an odd count."""
    segments = split_path(path)
    if len(segments) % 2 == 0:
        raise InvalidPathError(
            f"{path!r} is not a collection path: a collection path has an odd number of segments, "
            f"this one has {len(segments)}")
    return segments


def check_fields(path: str, data: Any) -> None:
    """Refuse values Firestore would not store; the error names the document and the field."""
    if not isinstance(data, dict):
        raise InvalidValueError(f"{path}: a document must be a mapping, got {type(data).__name__}")
    _check_value(path, "", data, 0)


def _check_value(path: str, field: str, value: Any, depth: int) -> None:
    where = f"{path}: field '{field}'" if field else path
    if depth > MAX_DEPTH:
        raise InvalidValueError(f"{where}: nested deeper than Firestore's {MAX_DEPTH} levels")
    if value is None or isinstance(value, (bool, str, bytes)):
        return
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise InvalidValueError(f"{where}: integer {value} does not fit in 64 bits")
        return
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise InvalidValueError(f"{where}: {value} is not allowed (NaN and infinity are refused; store null)")
        return
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise InvalidValueError(f"{where}: naive datetime {value.isoformat()}; timestamps must be timezone-aware UTC")
        return
    if isinstance(value, dict):
        for key, sub in value.items():
            if not isinstance(key, str) or not key:
                raise InvalidValueError(f"{where}: field names must be non-empty strings, got {key!r}")
            if key.startswith("__") and key.endswith("__"):
                raise InvalidValueError(f"{where}: field name {key!r} is reserved in Firestore")
            _check_value(path, f"{field}.{key}" if field else key, sub, depth + 1)
        return
    if isinstance(value, (list, tuple)):
        for i, sub in enumerate(value):
            if isinstance(sub, (list, tuple)):
                raise InvalidValueError(f"{where}[{i}]: Firestore does not store an array directly inside an array")
            _check_value(path, f"{field}[{i}]", sub, depth + 1)
        return
    raise InvalidValueError(f"{where}: values of type {type(value).__name__} cannot be stored (undefined in Firestore)")


def _value_size(value: Any) -> int:
    # Sizes from Firestore's "storage size calculations" documentation.
    if value is None or isinstance(value, bool):
        return 1
    if isinstance(value, (int, float, dt.datetime)):
        return 8
    if isinstance(value, str):
        return len(value.encode("utf-8")) + 1
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, dict):
        return sum(len(k.encode("utf-8")) + 1 + _value_size(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return sum(_value_size(v) for v in value)
    return 0


def document_size(path: str, data: dict) -> int:
    """Firestore's storage size of a document: name + fields + 32 bytes of overhead."""
    name = sum(len(s.encode("utf-8")) + 1 for s in path.split("/")) + 16
    return name + _value_size(data) + 32


def check_document(path: str, data: Any) -> None:
    """All write-time rules in one call: path, values, size."""
    check_document_path(path)
    check_fields(path, data)
    size = document_size(path, data)
    if size > MAX_DOCUMENT_BYTES:
        raise DocumentTooLargeError(
            f"{path}: document is {size:,} bytes, above Firestore's limit of {MAX_DOCUMENT_BYTES:,} bytes (1 MiB)")
