"""Execution records shaped for a reviewer: list rows, filters, one execution's instruments, the diff
against the previous execution, a strategy's history. Pure functions over the stored documents,
plus `find`, which reads pages of the bus and never more than `max_scan` records per request.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import PurePosixPath
from typing import Iterable

from lib.bus import Bus

UTC = dt.timezone.utc
COLLECTION = "executions"
ORDER_FIELD = "executed_at"
MAX_SCAN = 500  # records read per request at most, however selective the filters


@dataclasses.dataclass
class Filters:
    date_from: dt.date | None = None
    date_to: dt.date | None = None  # inclusive
    status: str | None = None
    mode: str | None = None
    strategy: str | None = None

    def matches(self, record: dict) -> bool:
        if self.status and record.get("status") != self.status:
            return False
        if self.mode and record.get("mode") != self.mode:
            return False
        if self.strategy and self.strategy not in strategies_of(record):
            return False
        return True

    def bounds(self) -> tuple[dt.datetime | None, dt.datetime | None]:
        """The date range as exclusive `executed_at` bounds (dates are UTC days)."""
        after = before = None
        if self.date_from:
            after = dt.datetime.combine(self.date_from, dt.time.min, UTC) - dt.timedelta(microseconds=1)
        if self.date_to:
            before = dt.datetime.combine(self.date_to + dt.timedelta(days=1), dt.time.min, UTC)
        return after, before


@dataclasses.dataclass
class Page:
    rows: list[dict]
    next_before: dt.datetime | None  # pass as `before` for the next (older) page
    scanned: int
    exhausted_scan: bool  # stopped at MAX_SCAN before filling the page


def find(bus: Bus, filters: Filters, limit: int = 25, before: dt.datetime | None = None,
         max_scan: int = MAX_SCAN) -> Page:
    """Newest first, `limit` matching records older than `before`, reading bounded pages."""
    after, upper = filters.bounds()
    if before is not None and (upper is None or before < upper):
        upper = before
    found: list[dict] = []
    scanned = 0
    cursor = upper
    while len(found) < limit and scanned < max_scan:
        chunk = bus.page(COLLECTION, order_by=ORDER_FIELD, limit=min(max(limit * 2, 20), max_scan - scanned),
                         after=after, before=cursor)
        if not chunk:
            cursor = None
            break
        scanned += len(chunk)
        for _, record in chunk:
            cursor = record[ORDER_FIELD]
            if filters.matches(record):
                found.append(record)
                if len(found) == limit:
                    break
        else:
            if len(chunk) < min(max(limit * 2, 20), max_scan):
                cursor = None  # the collection (or the range) is read to its end
                break
    more = cursor is not None and (len(found) == limit or scanned >= max_scan)
    return Page([row(r) for r in found], cursor if more else None, scanned,
                scanned >= max_scan and len(found) < limit)


def previous(bus: Bus, record: dict, scan: int = 50) -> dict | None:
    """The execution of the same mode just before this one."""
    rows = bus.page(COLLECTION, order_by=ORDER_FIELD, limit=scan, before=record[ORDER_FIELD])
    return next((r for _, r in rows if r.get("mode") == record.get("mode")), None)


# ---- shaping ------------------------------------------------------------------------------------
def strategies_of(record: dict) -> set[str]:
    decision = record.get("decision") or {}
    return set(decision.get("per_strategy") or {}) | {s["strategy"] for s in decision.get("skipped") or []}


def notebook_of(record: dict, strategy: str) -> str | None:
    """The link of a strategy's executed notebook (named NN_<strategy>.ipynb by the pipeline)."""
    for link in record.get("notebooks") or []:
        name = PurePosixPath(link.replace("\\", "/")).name
        if name.split("_", 1)[-1] == f"{strategy}.ipynb":
            return link
    return None


def failed_notebooks(record: dict) -> list[dict]:
    """Notebooks whose strategy failed (error intent), and the commander's when the run failed."""
    out = []
    for skip in (record.get("decision") or {}).get("skipped") or []:
        if skip.get("reason") == "error":
            out.append({"strategy": skip["strategy"], "link": notebook_of(record, skip["strategy"]),
                        "detail": skip.get("detail", "")})
    if record.get("status") == "failed" and not record.get("decision"):
        links = record.get("notebooks") or []
        out.append({"strategy": "commander", "link": links[-1] if links else None, "detail": record.get("reason", "")})
    return out


def orders_of(record: dict) -> list[dict]:
    """What was placed; for a plan that was not placed (dry run, disabled, approval), the plan."""
    if record.get("orders_placed"):
        return record["orders_placed"]
    return [{**o, "totalQuantity": o["quantity"], "symbol": o["contract"]["symbol"], "status": "planned"}
            for o in (record.get("decision") or {}).get("orders") or []]


def row(record: dict) -> dict:
    decision = record.get("decision") or {}
    return {"id": record["execution_id"], "executed_at": record.get(ORDER_FIELD), "mode": record.get("mode"),
            "trigger": record.get("trigger"), "status": record.get("status"), "summary": record.get("summary", ""),
            "orders": len(orders_of(record)),
            "skipped": decision.get("skipped") or [], "failed": failed_notebooks(record)}


def instruments(record: dict) -> list[dict]:
    """Per instrument: held → target, contributions, adjustments, delta, order and fill."""
    decision = record.get("decision") or {}
    diff = {d["instrument"]: d for d in decision.get("diff") or []}
    agg = {a["instrument"]: a for a in decision.get("aggregated_target") or []}
    final = {f["instrument"]: f for f in decision.get("final_target") or []}
    planned = {o["instrument"]: o for o in decision.get("orders") or []}
    placed = {o["instrument"]: o for o in record.get("orders_placed") or []}
    adjustments: dict[str, list[dict]] = {}
    for adj in decision.get("adjustments") or []:
        adjustments.setdefault(adj.get("instrument") or "", []).append(adj)
    keys = sorted(set(diff) | set(agg) | set(final) | set(planned))
    out = []
    for key in keys:
        d = diff.get(key, {})
        out.append({
            "instrument": key, "symbol": key.split(":")[1] if ":" in key else key,
            "held": d.get("held"), "pending": (d.get("pending_manual") or 0) + (d.get("pending_own") or 0),
            "aggregated": agg.get(key, {}).get("quantity"), "target": final.get(key, {}).get("quantity", d.get("target")),
            "price": final.get(key, {}).get("price"),
            "contributions": agg.get(key, {}).get("contributions") or [],
            "adjustments": adjustments.get(key, []), "delta": d.get("delta"), "action": d.get("action"),
            "note": d.get("note"), "order": planned.get(key), "placed": placed.get(key)})
    return out


def portfolio_adjustments(record: dict) -> list[dict]:
    """Adjustments that name no instrument (a strategy's gross cap, buying power, ...)."""
    return [a for a in (record.get("decision") or {}).get("adjustments") or [] if not a.get("instrument")]


def fingerprints(record: dict) -> list[tuple[str, str]]:
    """(input, fingerprint) for every input the decision read."""
    ctx = record.get("context") or {}
    out = [("portfolio " + str(ctx.get("portfolio_snapshot_ref") or ""), ctx.get("portfolio_fingerprint") or "")]
    refs = {r.split("@")[0]: r for r in ctx.get("strategy_intents_refs") or []}
    for path, fp in sorted((ctx.get("fingerprints") or {}).items()):
        out.append((refs.get(path, path), fp))
    out.append(("config", ctx.get("config_fingerprint") or ""))
    if record.get("inputs_fingerprint"):
        out.append(("all decision inputs", record["inputs_fingerprint"]))
    return [(k, v) for k, v in out if v]


def _targets(record: dict | None) -> dict[str, float]:
    return {t["instrument"]: t["quantity"] for t in ((record or {}).get("decision") or {}).get("final_target") or []}


def _held(record: dict | None) -> dict[str, float]:
    return {d["instrument"]: d.get("held") or 0 for d in ((record or {}).get("decision") or {}).get("diff") or []}


def _orders(record: dict | None) -> dict[str, str]:
    return {o["instrument"]: f"{o['action']} {o.get('totalQuantity', o.get('quantity'))}"
            for o in orders_of(record or {})}


def _contributions(record: dict | None) -> dict[str, dict[str, int]]:
    """instrument → strategy → quantity, from each strategy's accepted targets."""
    out: dict[str, dict[str, int]] = {}
    for sid, ps in (((record or {}).get("decision") or {}).get("per_strategy") or {}).items():
        for t in ps.get("targets") or []:
            out.setdefault(t["instrument"], {})[sid] = t["quantity"]
    return out


def diff(current: dict, prior: dict | None) -> dict:
    """What changed since `prior`: targets, holdings and orders per instrument, and which strategy
    moved each target (and whether it did so by a new intent or by holding its previous one)."""
    t0, t1 = _targets(prior), _targets(current)
    h0, h1 = _held(prior), _held(current)
    o0, o1 = _orders(prior), _orders(current)
    c0, c1 = _contributions(prior), _contributions(current)
    sources = {sid: ps.get("source") for sid, ps in ((current.get("decision") or {}).get("per_strategy") or {}).items()}
    rows = []
    for key in sorted(set(t0) | set(t1) | set(h0) | set(h1) | set(o0) | set(o1)):
        movers = []
        for sid in sorted(set(c0.get(key, {})) | set(c1.get(key, {}))):
            before, after = c0.get(key, {}).get(sid, 0), c1.get(key, {}).get(sid, 0)
            if before != after:
                movers.append({"strategy": sid, "from": before, "to": after, "source": sources.get(sid, "gone")})
        changed = t0.get(key, 0) != t1.get(key, 0) or h0.get(key, 0) != h1.get(key, 0) or o0.get(key) != o1.get(key)
        if changed or movers:
            rows.append({"instrument": key, "target": (t0.get(key, 0), t1.get(key, 0)),
                         "held": (h0.get(key, 0), h1.get(key, 0)), "orders": (o0.get(key, ""), o1.get(key, "")),
                         "movers": movers})
    skipped0 = {s["strategy"]: s["reason"] for s in ((prior or {}).get("decision") or {}).get("skipped") or []}
    skipped1 = {s["strategy"]: s["reason"] for s in (current.get("decision") or {}).get("skipped") or []}
    status_changes = [{"strategy": sid, "from": skipped0.get(sid, "ok"), "to": skipped1.get(sid, "ok")}
                      for sid in sorted(set(skipped0) | set(skipped1)) if skipped0.get(sid) != skipped1.get(sid)]
    return {"previous": (prior or {}).get("execution_id"), "rows": rows, "strategy_status": status_changes}


def strategy_history(records: Iterable[dict], sid: str) -> list[dict]:
    """One row per execution that involved the strategy: its status there and its accepted targets."""
    out = []
    for record in records:
        decision = record.get("decision") or {}
        skip = next((s for s in decision.get("skipped") or [] if s["strategy"] == sid), None)
        ps = (decision.get("per_strategy") or {}).get(sid)
        if skip is None and ps is None:
            continue
        ref = next((r for r in (record.get("context") or {}).get("strategy_intents_refs") or []
                    if r.startswith(f"strategies/{sid}/")), "")
        out.append({"id": record["execution_id"], "executed_at": record.get(ORDER_FIELD),
                    "status": skip["reason"] if skip else "ok", "detail": (skip or {}).get("detail", ""),
                    "action": (skip or {}).get("action", ""), "source": (ps or {}).get("source", ""),
                    "intent_at": ref.split("@")[1] if "@" in ref else "",
                    "targets": (ps or {}).get("targets") or [], "notebook": notebook_of(record, sid)})
    return out
