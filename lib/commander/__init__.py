"""The Commander: a pure decision (`decide`) plus the CLI `python -m lib.commander decide|replay FILE`."""
from lib.commander.engine import InputError, decide

__all__ = ["InputError", "decide", "replay"]


def replay(record: dict) -> dict:
    """Re-derive the decision from an execution record's stored inputs.

    Parts spilled to the audit store (`parts_ref`, or an older record's `inputs_ref`) are read back
    from it, each checked against its sha256.
    Returns {"match": bool, "orders_match": bool, "recorded_orders": [...], "replayed_orders": [...],
    "decision": {...}}. Raises InputError when the record holds no inputs.
    """
    import json

    from lib.canonical import dumps
    if isinstance(record, dict) and record.get("parts_ref"):
        from lib.blobs import BlobError, load
        try:
            record = load(record)
        except BlobError as exc:
            raise InputError(f"execution record: field 'parts_ref': {exc}") from None
    inputs = record.get("inputs") if isinstance(record, dict) else None
    if inputs is None and isinstance(record, dict) and record.get("inputs_ref"):
        from lib.audit import AuditError, read_link
        try:  # large inputs were spilled to the audit store
            inputs = json.loads(read_link(record["inputs_ref"]))
        except (AuditError, ValueError) as exc:
            raise InputError(f"execution record: field 'inputs_ref': {exc}") from None
    if not isinstance(inputs, dict):
        raise InputError("execution record: field 'inputs' is missing; it cannot be replayed")
    decision = decide(inputs)
    recorded = (record.get("decision") or {})
    return {
        "execution_id": record.get("execution_id"),
        "orders_match": dumps(recorded.get("orders", [])) == dumps(decision["orders"]),
        "cancels_match": dumps(recorded.get("cancels", [])) == dumps(decision["cancels"]),
        "decision_match": dumps(recorded) == dumps(decision),
        "recorded_orders": recorded.get("orders", []),
        "replayed_orders": decision["orders"],
    }
