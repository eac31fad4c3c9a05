"""Recovery: resolve an execution whose placement did not finish, against the broker, before deciding.

A run that crashed, was killed or lost its connection leaves `executions/{id}` as `placing`,
`approving` or `uncertain`, with `state/commander-{mode}.placing_execution_id` pointing at it. The
next run asks the broker for every order whose `orderRef` carries that execution's prefix — open
orders of all clients, completed orders and executions — and records, for each planned order, what
actually happened. The record is closed as `interrupted` with that evidence; the state then holds
what reached the broker (and the previous targets where nothing did). Nothing is resent: orders
still working count as pending in the next snapshot, filled ones as holdings.
"""
from __future__ import annotations

import datetime as dt

from lib import blobs
from lib import documents as docs
from lib.broker.base import Broker, OrderState
from lib.bus import Bus, Write
from lib.errors import PipelineError

UTC = dt.timezone.utc


class RecoveryError(PipelineError):
    """An unfinished execution could not be resolved; nothing may be placed until it is."""


def outcome(state: OrderState) -> str:
    """What became of one order at the broker, in a word."""
    if state.status == "Filled":
        return "filled"
    if state.status == "Inactive":
        return "rejected"
    if state.status in ("Cancelled", "ApiCancelled"):
        return "partially_filled_then_cancelled" if state.filled else "cancelled"
    return "working"  # PreSubmitted, Submitted, PendingCancel...: it may still fill


def evidence(planned: list[dict], found: list[OrderState], prefix: str, planned_ids: dict) -> list[dict]:
    """One row per planned order (and per unplanned order of ours the broker knows)."""
    by_ref: dict[str, list[OrderState]] = {}
    for st in found:
        by_ref.setdefault(st.order_ref, []).append(st)
    rows = []
    for n, order in enumerate(planned, start=1):
        ref = order.get("orderRef") or f"{prefix}{n}"
        seen = by_ref.pop(ref, [])
        row = {"n": n, "orderRef": ref, "instrument": order.get("instrument"),
               "symbol": (order.get("contract") or {}).get("symbol"), "action": order.get("action"),
               "totalQuantity": order.get("quantity"), "orderType": order.get("orderType"),
               "lmtPrice": order.get("lmtPrice"), "reservedOrderId": planned_ids.get(ref)}
        if not seen:
            row.update(outcome="not_sent", status="NotPlaced", orderId=None, filled=0.0,
                       error="never reached the broker")
        else:
            st = seen[0]
            row.update(outcome=outcome(st), status=st.status, orderId=st.order_id, permId=st.perm_id,
                       clientId=st.client_id, filled=st.filled, remaining=st.remaining,
                       avgFillPrice=st.avg_fill_price, commission=st.commission, error=st.error,
                       confirmed=st.confirmed)
            if len(seen) > 1:  # IB does not deduplicate orderRef: this must never happen, and says so
                row.update(outcome="duplicate", duplicates=[s.to_dict() for s in seen])
        rows.append(row)
    for ref, states in sorted(by_ref.items()):
        for st in states:
            rows.append({"orderRef": ref, "outcome": "unplanned", **st.to_dict()})
    return rows


def resolve(bus: Bus, broker: Broker, mode: str, execution_id: str, *, fence: dict | None,
            now: dt.datetime, audit=None) -> dict:
    """Close the unfinished execution as `interrupted` with the broker's evidence; returns the record.

    Raises BrokerError when the broker cannot be asked and RecoveryError when the record is unreadable.
    """
    from lib import execution
    path = docs.execution_path(execution_id)
    state = bus.get(execution.state_path(mode)) or {}
    record = bus.get(path)
    if record is None or record.get("status") not in execution.UNFINISHED:
        # Already finished (or never written): only the pointer is left to clear.
        bus.commit([Write("set", execution.state_path(mode), {**state, "placing_execution_id": None})], expect=fence)
        return record or {"execution_id": execution_id, "summary": "no record: nothing to resolve"}
    try:
        full = blobs.load(record)
    except blobs.BlobError as err:
        raise RecoveryError(f"{path}: {err}") from None
    decision = full.get("decision") or {}
    planned = decision.get("orders") or []
    prefix = f"{record.get('order_ref_prefix') or 'cmdr-'}{execution_id}-"
    found = broker.orders_by_ref(prefix)
    rows = evidence(planned, found, prefix, record.get("planned_order_ids") or {})
    reached = {r["instrument"] for r in rows if r.get("instrument") and r["outcome"] not in ("not_sent", "rejected", "cancelled")}
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    words = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in sorted(counts.items())) or "no order planned"
    summary = (f"Interrupted while {record['status']}; resolved with the broker by the next run: {words} "
               f"(of {len(planned)} planned).")
    previous = execution.previous_view(bus.get(docs.execution_path(record["previous_execution_id"]))) \
        if record.get("previous_execution_id") else {}
    accepted = execution.accepted_view(decision, previous, reached)
    placed_any = any(r["outcome"] != "not_sent" for r in rows)
    closed = {**full, "status": "interrupted", "summary": summary, "placed_orders": placed_any,
              "orders_placed": rows,
              "recovery": {"resolved_at": now, "interrupted_status": record["status"], "outcomes": counts,
                           "orders_at_broker": len(found)}}
    if accepted is not None:
        closed["accepted"] = accepted
    closed = blobs.fit(closed, audit)
    docs.load(docs.ExecutionRecord, path, closed)
    new_state = {**state, "placing_execution_id": None}
    writes = [Write("set", path, closed)]
    if reached:
        # The state follows what reached the broker; ledgers are left for a complete execution.
        new_state.update(last_execution_id=execution_id, last_decided_at=record.get("executed_at"))
    writes.append(Write("set", execution.state_path(mode), new_state))
    bus.commit(writes, expect=fence)
    return closed
