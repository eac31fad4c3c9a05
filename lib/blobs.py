"""Large parts of an execution record, kept content-addressed in the audit store.

An `executions/{id}` document must stay under Firestore's 1 MiB whatever the plan's size. `fit`
moves its largest parts (the inputs, then the decision's per-row tables, then the orders) to
`blobs/<sha256>.json` in the audit store until the record fits, leaving `{"ref", "sha256", "count"}`
in `parts_ref`. `load` puts them back, checking each hash, for replay and for the next run's
previous targets. Same content, same name: writing a part twice is harmless.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from lib.audit import AuditError, AuditStore, read_link
from lib.canonical import dumps
from lib.errors import PipelineError

#: Leave room under Firestore's 1,048,576 bytes for field-name overhead and the final fields.
RECORD_LIMIT = 900_000

#: The order in which parts leave the record: biggest and least read first.
SPILL_ORDER = ("inputs", "decision.per_strategy", "decision.diff", "decision.aggregated_target",
               "decision.adjustments", "decision.instruments", "decision.final_target", "decision.orders",
               "orders_placed", "accepted", "decision.ledgers", "decision.cancels")


class BlobError(PipelineError):
    """A spilled part could not be stored or read back intact."""


def _get(record: dict, part: str) -> tuple[dict, str] | None:
    head, _, tail = part.partition(".")
    if not tail:
        return (record, head) if head in record else None
    inner = record.get(head)
    return (inner, tail) if isinstance(inner, dict) and tail in inner else None


def size(record: dict) -> int:
    return len(dumps(record).encode("utf-8"))


def put(audit: AuditStore, value: Any) -> dict:
    """Store one value content-addressed; returns its reference."""
    data = dumps(value).encode("utf-8")
    digest = hashlib.sha256(data).hexdigest()
    name = f"blobs/{digest}.json"
    try:
        link = audit.put_bytes(name, data)
    except AuditError as err:
        if "already exists" not in str(err):
            raise BlobError(f"cannot store {name}: {err}") from err
        link = audit.link(name)  # same name, same content
    return {"ref": link, "sha256": digest, "count": len(value) if isinstance(value, (list, dict)) else None}


def get(ref: dict) -> Any:
    """Read a stored part back; BlobError when it is missing or its hash does not match."""
    try:
        data = read_link(ref["ref"])
    except (AuditError, KeyError, TypeError) as err:
        raise BlobError(f"cannot read the spilled part {ref!r}: {err}") from None
    if hashlib.sha256(data).hexdigest() != ref.get("sha256"):
        raise BlobError(f"{ref['ref']}: content does not match its sha256 {ref.get('sha256')}")
    return json.loads(data)


def fit(record: dict, audit: AuditStore | None, limit: int | None = None) -> dict:
    """The record, with parts moved to the audit store until it is at most `limit` bytes.

    Raises BlobError when it does not fit and there is no audit store (or nothing left to move),
    before anything is written to the bus.
    """
    limit = RECORD_LIMIT if limit is None else limit
    if size(record) <= limit:
        return record
    out = json.loads(dumps(record))
    refs = dict(out.get("parts_ref") or {})
    for part in SPILL_ORDER:
        if size(out) <= limit:
            break
        found = _get(out, part)
        if found is None or audit is None:
            continue
        holder, key = found
        refs[part] = put(audit, holder.pop(key))
        out["parts_ref"] = refs
    if size(out) > limit:
        raise BlobError(f"executions/{record.get('execution_id')} is {size(out):,} bytes after moving parts to "
                        f"{'the audit store' if audit else 'nowhere (no audit store)'}; the limit is {limit:,}")
    return out


def load(record: dict, parts: tuple[str, ...] | None = None) -> dict:
    """The record with its spilled parts (all, or only `parts`) read back in place."""
    refs = record.get("parts_ref") or {}
    wanted = [p for p in refs if parts is None or p in parts]
    if not wanted:
        return record
    out = dict(record)
    if "decision" in out and isinstance(out["decision"], dict):
        out["decision"] = dict(out["decision"])
    for part in wanted:
        head, _, tail = part.partition(".")
        if tail:
            out.setdefault(head, {})[tail] = get(refs[part])
        else:
            out[head] = get(refs[part])
    return out
