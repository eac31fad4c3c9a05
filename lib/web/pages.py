"""The reviewer's pages (read-only, rendered on the server with Jinja2):

    GET /runs                         every execution, newest first; filters and paging
    GET /executions/{id}              one execution: card, checks, instruments, orders, ledgers, notebooks
    GET /executions/{id}/diff         what changed since the previous execution, and which strategy moved
    GET /notebooks/{name}             an executed notebook of the audit store, sanitized (?inputs=hide)
    GET /strategies, /strategies/{id} each strategy's recent intents and status history

Nothing here writes. Settings and credentials never reach a template: the bus and audit store are
opened from the environment and only documents are shown.
"""
from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import jinja2
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from lib import documents as docs
from lib.audit import AuditError
from lib.bus import open_bus
from lib.settings import resolve
from lib.web import records, viewer

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
router = APIRouter()
STATUSES = ["completed", "partial_success", "failed", "dry_run", "disabled", "awaiting_approval", "approving",
            "placing", "uncertain", "interrupted"]


def _blank(value) -> bool:
    return value is None or value == "" or isinstance(value, jinja2.Undefined)


def _fmt_qty(value) -> str:
    if _blank(value):
        return ""
    try:
        return f"{float(value):+,.0f}" if float(value) else "0"
    except (TypeError, ValueError):
        return str(value)


def _fmt_int(value) -> str:
    if _blank(value):
        return ""
    try:
        return f"{float(value):,.0f}"
    except (TypeError, ValueError):
        return str(value)


def _fmt_money(value, digits: int = 2) -> str:
    if _blank(value) or (isinstance(value, float) and math.isnan(value)):
        return ""
    try:
        return f"{float(value):,.{digits}f}"
    except (TypeError, ValueError):
        return str(value)


def _fmt_pct(value) -> str:
    return "" if _blank(value) else f"{float(value):.2%}"


def _fmt_time(value) -> str:
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return "" if value is None else str(value)


templates.env.filters.update(qty=_fmt_qty, int=_fmt_int, money=_fmt_money, pct=_fmt_pct, time=_fmt_time)


def _bus():
    return open_bus(resolve().bus)


def _audit_url() -> str:
    return resolve().audit


def _notebook_links(record: dict) -> list[dict]:
    """Each notebook link of a record as (label, name inside the store or None when refused)."""
    audit = _audit_url()
    failed = {f["link"] for f in records.failed_notebooks(record)}
    out = []
    for link in record.get("notebooks") or []:
        try:
            name = viewer.store_name(link, audit)
        except viewer.NotInAuditStore as exc:
            name, why = None, str(exc)
        else:
            why = ""
        out.append({"label": Path(link).name, "name": name, "refused": why, "failed": link in failed})
    return out


def _date(value: str | None, field: str) -> dt.date | None:
    if not value:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise HTTPException(400, f"{field}: expected a date YYYY-MM-DD, got {value!r}") from None


@router.get("/", include_in_schema=False)
def index() -> RedirectResponse:
    return RedirectResponse("/runs")


@router.get("/runs", response_class=HTMLResponse)
def runs(request: Request, date_from: str | None = None, date_to: str | None = None, status: str | None = None,
         mode: str | None = None, strategy: str | None = None, before: str | None = None,
         limit: int = Query(25, ge=1, le=100)):
    filters = records.Filters(_date(date_from, "date_from"), _date(date_to, "date_to"), status or None,
                              mode or None, strategy or None)
    cursor = None
    if before:
        try:
            cursor = dt.datetime.fromisoformat(before)
        except ValueError:
            raise HTTPException(400, f"before: expected an ISO timestamp, got {before!r}") from None
    with _bus() as bus:
        page = records.find(bus, filters, limit=limit, before=cursor)
        strategies = sorted(bus.list("strategies"))
    audit = _audit_url()
    for r in page.rows:
        for f in r["failed"]:
            try:
                f["name"] = viewer.store_name(f["link"], audit) if f["link"] else None
            except viewer.NotInAuditStore:
                f["name"] = None
    query = {k: v for k, v in {"date_from": date_from, "date_to": date_to, "status": status, "mode": mode,
                               "strategy": strategy, "limit": limit}.items() if v}
    return templates.TemplateResponse(request, "runs.html", {
        "page": page, "filters": query, "statuses": STATUSES, "strategies": strategies,
        "next_before": page.next_before.isoformat() if page.next_before else None})


def _record(bus, execution_id: str) -> dict:
    try:
        record = bus.get(docs.execution_path(execution_id))
    except Exception:  # an id that is not a valid document id
        record = None
    if record is None:
        raise HTTPException(404, f"no execution {execution_id!r}")
    from lib import blobs
    try:
        return blobs.load(record)  # a large record's parts live in the audit store
    except blobs.BlobError as err:
        record.setdefault("warnings", []).append(f"part of this record could not be read back: {err}")
        return record


@router.get("/executions/{execution_id}", response_class=HTMLResponse)
def execution(request: Request, execution_id: str):
    with _bus() as bus:
        record = _record(bus, execution_id)
        prior = records.previous(bus, record)
    decision = record.get("decision") or {}
    approval_command = None
    if record.get("status") == "awaiting_approval":
        approval_command = f"python run_pipeline.py approve {record['execution_id']}" + (
            f" --mode {record['mode']}" if record.get("mode") != "paper" else "")
    return templates.TemplateResponse(request, "execution.html", {
        "r": record, "d": decision, "row": records.row(record), "instruments": records.instruments(record),
        "portfolio_adjustments": records.portfolio_adjustments(record), "fingerprints": records.fingerprints(record),
        "orders": records.orders_of(record), "notebooks": _notebook_links(record), "previous": prior,
        "approval_command": approval_command,
        "account": ((record.get("inputs") or {}).get("portfolio") or {}).get("account", ""),
        "ledgers": _ledgers(decision)})


def _ledgers(decision: dict) -> list[dict]:
    out = []
    for sid, led in sorted((decision.get("ledgers") or {}).items()):
        history = led.get("history") or []
        out.append({"strategy": sid, **led, "points": len(history), "spark": _spark(history)})
    return out


def _spark(history: list[dict]) -> str:
    """An inline SVG polyline of equity (server-drawn, no script); empty below two points."""
    values = [h.get("equity") for h in history if h.get("equity") is not None]
    if len(values) < 2:
        return ""
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    pts = " ".join(f"{i * 200 / (len(values) - 1):.1f},{38 - (v - lo) * 36 / span:.1f}" for i, v in enumerate(values))
    return pts


@router.get("/executions/{execution_id}/diff", response_class=HTMLResponse)
def execution_diff(request: Request, execution_id: str):
    with _bus() as bus:
        record = _record(bus, execution_id)
        prior = records.previous(bus, record)
    return templates.TemplateResponse(request, "diff.html", {"r": record, "prior": prior,
                                                             "diff": records.diff(record, prior)})


@router.get("/notebooks/{name:path}", response_class=HTMLResponse)
def notebook(request: Request, name: str, inputs: str = Query("show", pattern="^(show|hide)$")):
    try:
        nb = viewer.read(_audit_url(), name)
    except viewer.NotInAuditStore as exc:
        raise HTTPException(403, str(exc)) from None
    except FileNotFoundError:
        raise HTTPException(404, f"no notebook {name!r} in the audit store") from None
    except AuditError as exc:
        raise HTTPException(502, str(exc)) from None
    return templates.TemplateResponse(request, "notebook.html", {
        "name": name, "body": viewer.to_html(nb, show_inputs=inputs == "show"), "failure": viewer.failure(nb),
        "inputs": inputs, "papermill": (nb.get("metadata") or {}).get("papermill") or {}})


@router.get("/strategies", response_class=HTMLResponse)
def strategies(request: Request):
    with _bus() as bus:
        docs_ = bus.list("strategies")
        intents = bus.get_many([docs.intent_path(s) for s in docs_])
    rows = [{"id": sid, "name": d.get("name", sid), "enabled": d.get("enabled"),
             "allocation": d.get("capital_allocation"), "halted": d.get("halted"),
             "intent": intents.get(docs.intent_path(sid))} for sid, d in sorted(docs_.items())]
    return templates.TemplateResponse(request, "strategies.html", {"rows": rows})


@router.get("/strategies/{sid}", response_class=HTMLResponse)
def strategy(request: Request, sid: str, scan: int = Query(100, ge=1, le=records.MAX_SCAN)):
    with _bus() as bus:
        try:
            doc = bus.get(f"strategies/{sid}")
        except Exception:
            doc = None
        if doc is None:
            raise HTTPException(404, f"no strategy {sid!r}")
        intent = bus.get(docs.intent_path(sid))
        ledger = bus.get(docs.ledger_path(sid))
        recent = [r for _, r in bus.page(records.COLLECTION, order_by=records.ORDER_FIELD, limit=scan)]
    history = records.strategy_history(recent, sid)
    for h in history:
        try:
            h["notebook_name"] = viewer.store_name(h["notebook"], _audit_url()) if h["notebook"] else None
        except viewer.NotInAuditStore:
            h["notebook_name"] = None
    return templates.TemplateResponse(request, "strategy.html", {
        "sid": sid, "doc": {k: doc.get(k) for k in ("name", "description", "enabled", "capital_allocation", "halted")},
        "intent": intent, "ledger": ledger, "history": history, "scan": scan})
