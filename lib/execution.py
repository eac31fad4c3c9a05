"""One Commander execution at the edges: recover, read the bus, decide, place through the broker, record.

The decision itself is pure (`lib.commander.decide`); this module carries out the plan it returns
so that a crash, a kill or a dropped connection at any instant never doubles or loses an order:

1. **Recovery first.** An execution left `placing`, `approving` or `uncertain` (the state points at
   it) is resolved against the broker by `orderRef` before anything is decided (`lib.recovery`).
2. **Gather and decide** from one batch read of the bus.
3. **Pre-trade check.** Just before placing, the broker's positions and open orders must equal the
   snapshot the decision used; otherwise reconcile in-process and decide once more, one time only.
4. **Write-ahead.** One atomic, lease-fenced bus commit creates `executions/{id}` as `placing` with
   the full plan (every `orderRef`, the reserved order ids) and points `state/commander-{mode}` at it.
5. **Place** cancels (confirmed only by the broker's own terminal status), then sells, then buys
   (rescaled if a sell they counted on failed). A send whose fate is unknown is `uncertain`: it
   counts as placed and the next run's recovery resolves it; it is never resent.
6. **Final write.** One atomic, fenced commit finishes the record and moves the state and ledgers
   only as far as what the broker acknowledged.

Placement fails closed: a blocked decision, dry-run, the kill switch, a trading state of `halted`,
an account that does not match the mode or the snapshot, a snapshot the broker contradicts — each
places nothing and says why in the record.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import signal
import time
from typing import Callable

from lib import blobs
from lib import documents as docs
from lib import lease as leases
from lib.audit import AuditStore
from lib.broker.base import Broker, Contract, OrderRequest, check_account
from lib.book import book_path
from lib.bus import Bus, Write
from lib.canonical import fingerprint, iso, to_jsonable
from lib.commander import decide
from lib.errors import (AccountMismatchError, BrokerConnectionError, BrokerError, DocumentError,
                        PipelineError, PreconditionFailedError)
from lib.pacing import Pacer
from lib.reconcile import contradiction, order_identity, snapshot_to_bus

UTC = dt.timezone.utc
#: Statuses of an execution whose placement did not finish; recovery resolves them.
UNFINISHED = ("placing", "approving", "uncertain")
#: How the engine says the snapshot predates orders placed since (the in-process reconcile cures it).
_STALE_AFTER_ORDERS = "older than the last execution that placed orders"


def state_path(mode: str) -> str:
    """Where the last accepted execution of a mode, and an unfinished one, are remembered."""
    return f"state/commander-{mode}"


def order_ids_path(account: str, client_id: int) -> str:
    """The highest order id this account's client id has used (IB restarts have rolled nextValidId back)."""
    return f"order_ids/{account}-{client_id}"


def new_execution_id(now: dt.datetime, suffix: str) -> str:
    return f"{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{suffix}"


# ---- fault injection (the crash-safety suite) ----------------------------------------------------
FAULT_ENV = "COMMANDER_FAULT"


def fault_point(name: str) -> None:
    """Die here, by SIGKILL, when `$COMMANDER_FAULT` names this point (tests only; unset in production).

    Points: before_write_ahead, after_write_ahead, after_order:K (after the K-th order was sent),
    before_final_write, after_final_write. `$COMMANDER_FAULT_TREE=1` kills the parent process too
    (the pipeline around a commander notebook's kernel), so the whole run dies at once.
    """
    if os.environ.get(FAULT_ENV) != name:
        return
    if os.environ.get("COMMANDER_FAULT_TREE") == "1":
        os.kill(os.getppid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


# ---- gather -----------------------------------------------------------------------------------
def previous_view(record: dict | None) -> dict:
    """What the next run holds from an execution: its accepted targets (the acknowledged part of the
    plan), read back from the audit store when they were spilled."""
    if not record:
        return {}
    wanted = ("accepted", "decision.per_strategy", "decision.final_target", "decision.instruments")
    record = blobs.load(record, wanted)
    accepted = record.get("accepted") or record.get("decision") or {}
    return {k: accepted.get(k) for k in ("per_strategy", "final_target", "instruments")}


def gather_inputs(bus: Bus, mode: str, execution_id: str, now: dt.datetime, window_start: dt.datetime) -> dict:
    """The decision inputs, read with one listing and one batch read.

    Returns {"inputs": ..., "context": refs and fingerprints, "mode_config": ..., "state": ...}.
    """
    strategies = bus.list("strategies")
    state_doc = bus.get(state_path(mode)) or {}
    paths = [docs.common_config_path(), docs.mode_config_path(mode), docs.portfolio_path(mode), book_path(mode)]
    paths += [docs.intent_path(sid) for sid in strategies]
    paths += [docs.ledger_path(sid) for sid in strategies]
    last_id = state_doc.get("last_execution_id")
    if last_id:
        paths.append(docs.execution_path(last_id))
    got = {p: _finite_or_marked(d) for p, d in bus.get_many(paths).items()}
    previous = got.get(docs.execution_path(last_id)) if last_id else None
    if previous is not None:
        # Only what the decision reads: its accepted targets and when orders were last placed.
        previous = {
            "execution_id": previous.get("execution_id"), "executed_at": previous.get("executed_at"),
            "placed_orders": previous.get("placed_orders", False),
            "last_orders_at": state_doc.get("last_orders_at"),
            "decision": previous_view(previous),
        }
    elif state_doc.get("last_orders_at"):
        previous = {"last_orders_at": state_doc["last_orders_at"], "placed_orders": True}
    intents = {sid: got[docs.intent_path(sid)] for sid in strategies}
    inputs = to_jsonable({
        "now": now, "window_start": window_start, "mode": mode, "execution_id": execution_id,
        "config": got[docs.common_config_path()], "strategies": strategies, "intents": intents,
        "portfolio": got[docs.portfolio_path(mode)], "previous_execution": previous,
        "ledgers": {sid: got[docs.ledger_path(sid)] for sid in strategies if got[docs.ledger_path(sid)]},
        # Only what the manual-trade policy reads: the own positions and the uncertain instruments.
        "book": {k: (got[book_path(mode)] or {}).get(k) or {} for k in ("positions", "uncertain")},
    })
    context = {
        "portfolio_snapshot_ref": _ref(docs.portfolio_path(mode), got[docs.portfolio_path(mode)]),
        "portfolio_fingerprint": fingerprint(inputs["portfolio"]) if inputs["portfolio"] else None,
        "strategy_intents_refs": [_ref(docs.intent_path(s), d) for s, d in sorted(intents.items()) if d],
        "fingerprints": {docs.intent_path(s): fingerprint(d) for s, d in sorted(inputs["intents"].items()) if d},
        "config_fingerprint": fingerprint(inputs["config"]),
        "previous_execution_ref": docs.execution_path(last_id) if last_id else None,
    }
    return {"inputs": inputs, "context": context, "mode_config": got[docs.mode_config_path(mode)] or {},
            "state": state_doc}


def _finite_or_marked(value):
    """A document with every NaN or infinity (Firestore stores them; JSON and our models refuse them)
    replaced by the text "NaN"/"Infinity": validation then names the document and the field, and only
    what depends on that document is blocked, instead of the whole run failing on serialisation."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _finite_or_marked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_marked(v) for v in value]
    return value


def _ref(path: str, doc: dict | None) -> str:
    if not doc:
        return f"{path}@missing"
    ts = doc.get("updated_at")
    return f"{path}@{iso(ts) if isinstance(ts, dt.datetime) else ts}"


# ---- place ------------------------------------------------------------------------------------
@dataclasses.dataclass
class PlacementResult:
    status: str  # completed | partial_success | failed | uncertain | dry_run | disabled | awaiting_approval
    reason: str
    orders_placed: list[dict]
    cancels: list[dict]
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def placed_any(self) -> bool:
        """Whether any order may have reached the broker (uncertain sends count)."""
        return any(o.get("orderId") is not None or o.get("status") == "uncertain" for o in self.orders_placed)

    def reached(self) -> set[str]:
        """Instruments whose order the broker acknowledged (or may have: uncertain)."""
        return {o["instrument"] for o in self.orders_placed if _reached(o)}


def _reached(row: dict) -> bool:
    if row.get("status") == "uncertain":
        return True
    return row.get("orderId") is not None and row.get("status") not in ("Inactive", "NotPlaced", "PendingSubmit",
                                                                          "ApiPending") and not row.get("error")


def gate(decision: dict, config: docs.CommonConfig | None, dry_run: bool) -> tuple[str, str] | None:
    """Why nothing may be placed, as (status, reason), or None when placement may go ahead."""
    if decision["status"] != "ok":
        return "failed", "decision blocked: " + "; ".join(r["detail"] for r in decision["blocked_reasons"])
    if dry_run:
        return "dry_run", "dry run: the plan is recorded, nothing is placed"
    if config is None or not config.tradingEnabled:
        return "disabled", "config/common: field 'tradingEnabled' is false (kill switch)"
    if config.tradingState == "halted":
        return "disabled", "config/common: field 'tradingState' is 'halted'"
    if decision.get("approval", {}).get("required") and (decision["orders"] or decision["cancels"]):
        return "awaiting_approval", ("a person must approve this plan (python run_pipeline.py approve "
                                     f"{decision['execution_id']}): " + "; ".join(decision["approval"]["reasons"]))
    return None


def _pacer(rate_per_second: float, sleep: Callable[[float], None]) -> Pacer:
    # At most `rate_per_second` orders in any second (below 1: one order every 1/rate seconds).
    return (Pacer(int(rate_per_second), 1.0, sleep=sleep) if rate_per_second >= 1
            else Pacer(1, 1.0 / rate_per_second, sleep=sleep))


def _signed(action: str, quantity: float) -> float:
    return quantity if action == "BUY" else -quantity


def _resize_after_cancel(order: dict, extra_fill: float) -> int:
    """The replacement's quantity once the cancelled order filled `extra_fill` (signed) more than the
    snapshot knew: the need minus those fills, never flipping side."""
    need = _signed(order["action"], order["quantity"]) - extra_fill
    if (need > 0) != (order["action"] == "BUY"):
        return 0
    return int(abs(math.trunc(need)))


def rescale_buys(buys: list[dict], failed_sells: list[dict], decision: dict, available_funds: float,
                 margin_multiplier: float) -> list[dict]:
    """When sells the buys counted on were rejected or unconfirmed, scale the buys down with the
    decision's own buying-power rule (`limits.buying_power`), counting only the sells that did go
    out. Changes the buys' quantities; returns the adjustments."""
    if not failed_sells or not buys:
        return []
    from lib.commander import limits
    rows = {r["instrument"]: r for r in decision.get("diff", [])}
    failed = {o["orderRef"] for o in failed_sells}

    def candidate(order: dict, sign: int) -> dict:
        row = rows.get(order["instrument"], {})
        counted_manual = 0.0 if row.get("policy") == "respect" else row.get("pending_manual", 0.0)
        return {"instrument": order["instrument"], "delta": sign * order["quantity"], "order": order,
                "position": row.get("held", 0.0) + counted_manual,
                # base currency per share, as the decision priced it (multiplier and fx rate included)
                "unit_price": order["notional"] / order["quantity"] if order["quantity"] else 0.0}

    sent = [candidate(o, -1) for o in decision["orders"] if o["action"] == "SELL" and o["orderRef"] not in failed]
    wanted = [candidate(o, +1) for o in buys]
    adjustments: list[dict] = []
    limits.buying_power(sent + wanted, available_funds, margin_multiplier, adjustments)
    for c in wanted:
        c["order"]["quantity"] = c["delta"]
    bought = {o["instrument"] for o in buys}
    return [{**a, "rule": "buying_power_after_failed_sells"} for a in adjustments if a["instrument"] in bought]


def place(broker: Broker, decision: dict, *, mode: str, expected_account: str | None, snapshot_account: str,
          rate_per_second: float, ack_timeout: float, sleep: Callable[[float], None] = time.sleep,
          order_ids: dict[str, int] | None = None, snapshot: dict | None = None,
          available_funds: float | None = None, margin_multiplier: float = 1.0) -> PlacementResult:
    """Cancel our mismatched working orders (confirmed by the broker), then place sells, wait for
    their acknowledgement, then buys; paced. `order_ids` maps orderRef → reserved order id."""
    try:
        account = broker.account_id()
        check_account(account, mode, expected_account)
    except AccountMismatchError as err:
        return PlacementResult("failed", str(err), [], [])
    except BrokerError as err:
        return PlacementResult("failed", f"broker: {err}", [], [])
    if account != snapshot_account:
        return PlacementResult("failed", f"broker account {account!r} is not the snapshot's account "
                                         f"{snapshot_account!r}; reconcile again", [], [])
    pacer = _pacer(rate_per_second, sleep)
    filled_then = {order_identity(o): float(o.get("filled") or 0) for o in (snapshot or {}).get("open_orders") or []}

    cancels, unconfirmed, extra_fill = [], set(), {}
    if decision["cancels"]:
        try:
            for c in decision["cancels"]:
                pacer.acquire()
                broker.cancel_order(c["orderId"])
            states = broker.wait([c["orderId"] for c in decision["cancels"]], ack_timeout, until="done")
        except BrokerError as err:
            return PlacementResult("failed", f"cancelling own working orders failed: {err}", [], [
                {**c, "confirmed": False} for c in decision["cancels"]])
        for c in decision["cancels"]:
            st = states.get(c["orderId"])
            ok = st is not None and st.is_terminal and st.confirmed
            cancels.append({**c, "confirmed": ok, "status": st.status if st else "unknown",
                            "filled": st.filled if st else None})
            if not ok:
                unconfirmed.add(c["instrument"])  # it may still fill: placing the full need could double
            else:
                before = filled_then.get(order_identity(c), st.filled)
                extra_fill[c["instrument"]] = extra_fill.get(c["instrument"], 0.0) + _signed(
                    c["action"], st.filled - before)

    rows: list[dict] = []
    broken: str | None = None
    warnings: list[str] = []
    sent = 0

    def send(o: dict) -> dict:
        nonlocal broken, sent
        row = {"instrument": o["instrument"], "symbol": o["contract"]["symbol"], "action": o["action"],
               "totalQuantity": o["quantity"], "orderType": o["orderType"], "lmtPrice": o["lmtPrice"],
               "orderRef": o["orderRef"], "orderId": None, "status": "NotPlaced", "error": None}
        quantity = o["quantity"]
        if o["instrument"] in extra_fill and extra_fill[o["instrument"]]:
            quantity = _resize_after_cancel(o, extra_fill[o["instrument"]])
            row.update(totalQuantity=quantity, resized_from=o["quantity"],
                       note=f"the cancelled order filled {extra_fill[o['instrument']]:+g} since the snapshot")
        if broken:
            row["error"] = f"not placed: {broken}"
        elif o["instrument"] in unconfirmed:
            row["error"] = "not placed: the cancel of our working order was not confirmed"
        elif quantity <= 0:
            row.update(status="NotNeeded", error=None, note=row.get("note", "rescaled to zero"))
        else:
            row["paced_wait"] = round(pacer.acquire(), 3)
            reserved = (order_ids or {}).get(o["orderRef"])
            try:
                state = broker.place_order(OrderRequest(
                    contract=Contract.from_dict(o["contract"]), action=o["action"], quantity=quantity,
                    order_type=o["orderType"], limit_price=o["lmtPrice"], tif=o["tif"], order_ref=o["orderRef"],
                    order_id=reserved))
                row.update(orderId=state.order_id, permId=state.perm_id, status=state.status, error=state.error)
                if state.warnings:
                    row["warnings"] = list(state.warnings)
                    warnings.extend(state.warnings)
                if state.status in ("PendingSubmit", "ApiPending"):
                    row.update(status="uncertain", error=f"no acknowledgement within {ack_timeout:g} s")
            except BrokerConnectionError as err:
                # The message may have reached the broker: never resend; recovery resolves it.
                broken = f"connection lost: {err}"
                row.update(status="uncertain", error=broken, orderId=getattr(err, "order_id", None) or reserved)
            except BrokerError as err:
                row["error"] = str(err)
            sent += 1
            fault_point(f"after_order:{sent}")
        return row

    def acknowledge(batch: list[dict]) -> None:
        nonlocal broken
        ids = [r["orderId"] for r in batch if r["orderId"] is not None and r["status"] != "uncertain"]
        if not ids or broken:
            return
        try:
            states = broker.wait(ids, ack_timeout, until="acknowledged")
        except BrokerError as err:
            broken = f"waiting for acknowledgements failed: {err}"
            for r in batch:
                if r["orderId"] is not None and r["status"] in ("Submitted", "PreSubmitted", "PendingSubmit"):
                    r.update(status="uncertain", error=broken)
            return
        for r in batch:
            st = states.get(r["orderId"])
            if st is not None and r["status"] != "uncertain":
                r.update(status=st.status, filled=st.filled, remaining=st.remaining,
                         avgFillPrice=st.avg_fill_price, commission=st.commission, error=st.error)
                if st.status in ("PendingSubmit", "ApiPending"):
                    r.update(status="uncertain", error=f"no acknowledgement within {ack_timeout:g} s")

    sells = [dict(o) for o in decision["orders"] if o["action"] == "SELL"]
    buys = [dict(o) for o in decision["orders"] if o["action"] == "BUY"]
    sell_rows = [send(o) for o in sells]
    rows.extend(sell_rows)
    acknowledge(sell_rows)
    failed_sells = [o for o, r in zip(sells, sell_rows) if not _reached(r)]
    adjustments = []
    if available_funds is not None:
        adjustments = rescale_buys(buys, failed_sells, decision, available_funds, margin_multiplier)
    buy_rows = []
    for o in buys:
        buy_rows.append(send(o))
        rows.append(buy_rows[-1])
    acknowledge(buy_rows)
    for note in adjustments:
        warnings.append(f"{note['rule']}: {note['instrument']} {note['from']} → {note['to']} ({note['detail']})")

    wanted = [r for r in rows if r["status"] != "NotNeeded"]
    good = [r for r in wanted if _reached(r) and r["status"] != "uncertain"]
    uncertain = [r for r in rows if r["status"] == "uncertain"]
    if uncertain:
        status = "uncertain"
    elif len(good) == len(wanted) and not unconfirmed:
        status = "completed"
    elif good:
        status = "partial_success"
    else:
        status = "failed" if wanted else ("completed" if not unconfirmed else "partial_success")
    reason = broken or ("" if status == "completed" else
                        f"{len(good)} of {len(wanted)} orders acknowledged" +
                        (f", {len(uncertain)} uncertain (the next run resolves them with the broker)" if uncertain else ""))
    return PlacementResult(status, reason, rows, cancels, warnings)


# ---- record -----------------------------------------------------------------------------------
def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def summarize(decision: dict, result: PlacementResult) -> str:
    """One line like the seed's: 'Placed 2 orders: BUY 20 SPY, SELL 50 VIXY.'"""
    def fmt(rows):
        return ", ".join(f"{r['action']} {r.get('totalQuantity', r.get('quantity'))} {r['symbol'] if 'symbol' in r else r['contract']['symbol']}"
                         for r in rows)
    if result.status in ("dry_run", "disabled", "awaiting_approval", "placing") or (
            result.status == "failed" and not result.orders_placed):
        plan = decision.get("orders") or []
        head = {"dry_run": "Dry run", "disabled": "Trading disabled", "failed": "Failed",
                "awaiting_approval": "Awaiting approval", "placing": "Placing"}[result.status]
        what = f"would place {_plural(len(plan), 'order')}" + (f": {fmt(plan)}" if plan else "")
        return f"{head}: {what}." + (f" {result.reason}." if result.status != "dry_run" and result.reason else "")
    ok = [r for r in result.orders_placed if _reached(r) and r["status"] != "uncertain"]
    if not decision.get("orders"):
        return "No orders needed: holdings and pending orders already match the target."
    text = f"Placed {_plural(len(ok), 'order')}" + (f": {fmt(ok)}." if ok else ".")
    uncertain = [r for r in result.orders_placed if r["status"] == "uncertain"]
    if uncertain:
        text += f" {len(uncertain)} uncertain (sent, not acknowledged; resolved by the next run): {fmt(uncertain)}."
    failed = [r for r in result.orders_placed if not _reached(r) and r["status"] != "NotNeeded"]
    if failed:
        text += f" {len(failed)} not placed or rejected: {fmt(failed)}."
    return text


def accepted_view(decision: dict, previous: dict, reached: set[str] | None) -> dict | None:
    """The targets the next run holds: the decision's, except where an order did not reach the
    broker (there the previous accepted targets stay). None when that is the whole decision."""
    ordered = {o["instrument"] for o in decision.get("orders") or []}
    failed = set() if reached is None else ordered - reached
    if not failed:
        return None
    prev_per = previous.get("per_strategy") or {}
    prev_final = {r["instrument"]: r for r in previous.get("final_target") or []}
    per_strategy = {}
    for sid, entry in (decision.get("per_strategy") or {}).items():
        kept = [r for r in entry.get("targets", []) if r["instrument"] not in failed]
        kept += [r for r in (prev_per.get(sid) or {}).get("targets", []) if r["instrument"] in failed]
        per_strategy[sid] = {**entry, "targets": sorted(kept, key=lambda r: r["instrument"])}
    final = [r for r in decision.get("final_target") or [] if r["instrument"] not in failed]
    final += [prev_final[k] for k in sorted(failed) if k in prev_final]
    instruments = {**(previous.get("instruments") or {}), **(decision.get("instruments") or {})}
    return {"per_strategy": per_strategy, "final_target": sorted(final, key=lambda r: r["instrument"]),
            "instruments": instruments, "held_back": sorted(failed)}


def build_record(*, execution_id: str, now: dt.datetime, mode: str, trigger: str, run_id: str,
                 gathered: dict, decision: dict, result: PlacementResult, notebooks: list[str],
                 audit: AuditStore | None = None, extra: dict | None = None) -> dict:
    """The `executions/{id}` document, under 1 MiB: large parts go to the audit store (`lib.blobs`)."""
    previous_orders_at = (gathered["inputs"].get("previous_execution") or {}).get("last_orders_at")
    config = gathered["inputs"].get("config") or {}
    record = {
        "execution_id": execution_id, "executed_at": now, "mode": mode, "trigger": trigger, "run_id": run_id,
        "status": result.status, "summary": summarize(decision, result), "reason": result.reason,
        "placed_orders": result.placed_any,
        "last_orders_at": iso(now) if result.placed_any else previous_orders_at,
        "context": gathered["context"], "decision": decision, "orders_placed": result.orders_placed,
        "cancels_done": result.cancels, "notebooks": notebooks, "warnings": result.warnings,
        "order_ref_prefix": ((config.get("orders") or {}).get("order_ref_prefix") or "cmdr-"),
        "orders_planned": len(decision.get("orders") or []),
        "previous_execution_id": (gathered.get("state") or {}).get("last_execution_id"),
        "inputs_fingerprint": fingerprint(gathered["inputs"]),
        "inputs": gathered["inputs"],
        **(extra or {}),
    }
    return blobs.fit(record, audit)


def _validated(record: dict) -> dict:
    docs.load(docs.ExecutionRecord, docs.execution_path(record["execution_id"]), record)
    return record


def write_record(bus: Bus, record: dict, fence: dict | None = None) -> None:
    """Create a record of a run that placed nothing (blocked, dry run, disabled, awaiting approval,
    or nothing to do). The state and ledgers move only when the plan is complete with no order
    needed; a dry run, the kill switch or a pending approval never move them."""
    _validated(record)
    writes = [Write("create", docs.execution_path(record["execution_id"]), record)]
    if record["status"] == "completed" and record["decision"]["status"] == "ok":
        writes += _advance(bus, record, None)
    bus.commit(writes, expect=fence)


def _advance(bus: Bus, record: dict, accepted: dict | None, *, clear_placing: bool = False) -> list[Write]:
    """The writes that move the state (and, for a complete plan, the ledgers) to this record."""
    writes = []
    if accepted is None and record["status"] == "completed":
        for sid, ledger in sorted((record["decision"].get("ledgers") or {}).items()):
            writes.append(Write("set", docs.ledger_path(sid), ledger))
    current = bus.get(state_path(record["mode"])) or {}
    state = {**current, "last_execution_id": record["execution_id"], "last_decided_at": record["executed_at"],
             "last_orders_at": record.get("last_orders_at") or current.get("last_orders_at")}
    if clear_placing:
        state["placing_execution_id"] = None
    writes.append(Write("set", state_path(record["mode"]), state))
    return writes


def finish(bus: Bus, record: dict, result: PlacementResult, decision: dict, previous: dict,
           fence: dict | None, audit: AuditStore | None = None, summary_prefix: str = "") -> dict:
    """The final write of a placement, one atomic fenced commit: the record's outcome, the ledgers
    (only for a complete plan) and the state (only as far as the broker acknowledged). An uncertain
    placement stays pointed at by the state, for the next run's recovery."""
    path = docs.execution_path(record["execution_id"])
    fields = {"status": result.status, "summary": summary_prefix + summarize(decision, result),
              "reason": result.reason, "orders_placed": result.orders_placed, "cancels_done": result.cancels,
              "placed_orders": result.placed_any, "warnings": result.warnings,
              "last_orders_at": record.get("last_orders_at"), "finished_at": dt.datetime.now(UTC)}
    accepted = accepted_view(decision, previous, result.reached()) if result.status != "completed" else None
    if accepted is not None:
        fields["accepted"] = accepted
    final = _validated(blobs.fit({**record, **fields}, audit))
    writes = [Write("set", path, final)]  # our own record, replaced whole so spilled parts leave it
    current = bus.get(state_path(record["mode"])) or {}
    if result.status == "uncertain":
        state = {**current, "placing_execution_id": record["execution_id"]}
        writes.append(Write("set", state_path(record["mode"]), state))
    elif result.reached() or result.status == "completed":
        writes += _advance(bus, {**record, **fields}, accepted, clear_placing=True)
    else:
        writes.append(Write("set", state_path(record["mode"]), {**current, "placing_execution_id": None}))
    fault_point("before_final_write")
    bus.commit(writes, expect=fence)
    fault_point("after_final_write")
    return {**final}


def reserve_order_ids(bus: Bus, broker: Broker, orders: list[dict]) -> tuple[str, int, list[int] | None, dict]:
    """(account, client id, the ids reserved for `orders` above the floor persisted for that account
    and client id, orderRef → id). The broker numbers orders itself when the ids are None."""
    account, client_id = broker.account_id(), getattr(broker, "client_id", 0)
    floor = int((bus.get(order_ids_path(account, client_id)) or {}).get("highest") or 0)
    ids = broker.reserve_order_ids(len(orders), floor)
    return account, client_id, ids, ({o["orderRef"]: i for o, i in zip(orders, ids)} if ids else {})


def _placing_writes(bus: Bus, mode: str, execution_id: str, last_orders_at: str, *, account: str, client_id: int,
                    order_ids: list[int] | None) -> list[Write]:
    """The writes that accompany the start of a placement: the state points at the execution and
    moves `last_orders_at`; the reserved ids become the new floor."""
    state = {**(bus.get(state_path(mode)) or {}), "placing_execution_id": execution_id,
             "last_orders_at": last_orders_at}
    writes = [Write("set", state_path(mode), state)]
    if order_ids:
        writes.append(Write("set", order_ids_path(account, client_id),
                            {"account": account, "client_id": client_id, "highest": max(order_ids),
                             "execution_id": execution_id}))
    return writes


def write_ahead(bus: Bus, record: dict, *, order_ids: list[int] | None, account: str, client_id: int,
                fence: dict | None) -> None:
    """Create the record as `placing` and point the state at it, in one atomic fenced commit, before
    anything is sent. The state's `last_orders_at` moves now: orders may reach the broker from here on,
    so a snapshot older than this can never be trusted again."""
    _validated(record)
    writes = [Write("create", docs.execution_path(record["execution_id"]), record),
              *_placing_writes(bus, record["mode"], record["execution_id"], record["last_orders_at"],
                               account=account, client_id=client_id, order_ids=order_ids)]
    fault_point("before_write_ahead")
    bus.commit(writes, expect=fence)
    fault_point("after_write_ahead")


# ---- the run ----------------------------------------------------------------------------------
class _Connection:
    """One broker connection for the run, opened on first use."""

    def __init__(self, open_broker: Callable[[], Broker]):
        self._open, self.broker = open_broker, None

    def get(self) -> Broker:
        if self.broker is None:
            self.broker = self._open()
        return self.broker

    def close(self) -> None:
        if self.broker is not None:
            self.broker.close()
            self.broker = None


def run_commander(bus: Bus, open_broker: Callable[[], Broker], *, mode: str, execution_id: str, now: dt.datetime,
                  window_start: dt.datetime, dry_run: bool, trigger: str, run_id: str, notebooks: list[str],
                  audit: AuditStore | None = None, lease: leases.Lease | None = None,
                  lease_ttl: dt.timedelta = leases.DEFAULT_TTL, reconcile_failed: bool = False) -> dict:
    """Recover, gather, decide, place (unless gated), write the record; returns the record.

    Placing needs the lease: pass the one the pipeline holds, or (a run by hand) it is taken here
    for the duration and released after. A dry run takes none and never moves the state.
    """
    own = None
    if lease is None and not dry_run:
        own = lease = leases.acquire(bus, mode, f"commander-{execution_id}", lease_ttl, now).start_heartbeat()
    conn = _Connection(open_broker)
    try:
        record = _run(bus, conn, mode=mode, execution_id=execution_id, now=now, window_start=window_start,
                      dry_run=dry_run, trigger=trigger, run_id=run_id, notebooks=notebooks, audit=audit, lease=lease)
        if reconcile_failed:
            # Say which earlier snapshot the decision used, so "holdings match" is never read as today's.
            taken = (record.get("context") or {}).get("portfolio_snapshot_ref", "").rpartition("@")[2] or "unknown"
            note = (f"Reconcile failed in this run: the decision used the earlier snapshot "
                    f"{docs.portfolio_path(mode)} taken at {taken}.")
            record = bus.update(docs.execution_path(execution_id),
                                {"summary": f"{record['summary']} {note}", "warnings": [*record.get("warnings", []), note]})
        return record
    finally:
        conn.close()
        if own is not None:
            own.release()


def _run(bus: Bus, conn: _Connection, *, mode, execution_id, now, window_start, dry_run, trigger, run_id,
         notebooks, audit, lease) -> dict:
    from lib import recovery
    fence = lease.fence() if lease is not None else None
    state = bus.get(state_path(mode)) or {}
    notes: list[str] = []
    unfinished = state.get("placing_execution_id")
    if unfinished and lease is not None:
        try:
            closed = recovery.resolve(bus, conn.get(), mode, unfinished, fence=fence, now=now, audit=audit)
            notes.append(f"recovered {docs.execution_path(unfinished)}: {closed.get('summary', '')}")
        except (BrokerError, recovery.RecoveryError) as err:
            reason = (f"{docs.execution_path(unfinished)} did not finish placing and could not be resolved "
                      f"with the broker ({err}); nothing was placed. The next run tries again by itself.")
            return _refuse(bus, execution_id=execution_id, now=now, mode=mode, trigger=trigger, run_id=run_id,
                           notebooks=notebooks, reason=reason, fence=fence, audit=audit, window_start=window_start)
    elif unfinished:
        notes.append(f"{docs.execution_path(unfinished)} did not finish placing; a run holding the lease "
                     "resolves it (this dry run does not)")
    book_problem = _update_book(bus, conn, mode, now, fence) if lease is not None else None
    if book_problem:
        notes.append(book_problem)

    qualified: dict | None = None
    for attempt in (1, 2):
        gathered = gather_inputs(bus, mode, execution_id, now, window_start)
        if book_problem:
            gathered["inputs"]["book"] = {**(gathered["inputs"].get("book") or {}), "stale": book_problem}
        if qualified is None:
            # Every target instrument is checked with the broker before the decision: one it does not
            # know makes its intent invalid (previous targets held) instead of selling a good position.
            try:
                qualified = qualify_targets(conn.get(), gathered["inputs"]["intents"])
            except BrokerError as err:
                if not dry_run:
                    return _refuse(bus, execution_id=execution_id, now=now, mode=mode, trigger=trigger, run_id=run_id,
                                   notebooks=notebooks, fence=fence, audit=audit, window_start=window_start,
                                   reason=f"the target instruments could not be checked with the broker ({err}); "
                                          "nothing was placed")
                qualified = {}
                notes.append(f"dry run: target instruments not checked with the broker ({err})")
        gathered["inputs"]["qualified"] = qualified
        decision = decide(gathered["inputs"])
        try:
            config = docs.load(docs.CommonConfig, docs.common_config_path(), gathered["inputs"]["config"])
        except DocumentError:
            config = None  # the decision is blocked already and says why
        expected = (gathered["mode_config"] or {}).get("account")
        stale = any(_STALE_AFTER_ORDERS in r["detail"] for r in decision["blocked_reasons"])
        if stale and attempt == 1 and not dry_run and lease is not None:
            snapshot_to_bus(conn.get(), bus, mode, expected)
            notes.append("the snapshot predated orders placed since: reconciled again before deciding")
            continue
        stop = gate(decision, config, dry_run)
        if stop:
            result = PlacementResult(stop[0], stop[1], [], [])
            break
        if not decision["orders"] and not decision["cancels"]:
            result = PlacementResult("completed", "", [], [])
            break
        broker = conn.get()
        portfolio = gathered["inputs"]["portfolio"]
        try:
            current = to_jsonable(broker.snapshot().to_document(now))
        except BrokerError as err:
            result = PlacementResult("failed", f"pre-trade check: the broker could not be asked: {err}", [], [])
            break
        differs = contradiction(current, portfolio)
        if differs and attempt == 1:
            snapshot_to_bus(broker, bus, mode, expected)
            notes.append(f"pre-trade check: {differs}; reconciled and decided once more")
            continue
        if differs:
            result = PlacementResult("failed", f"pre-trade check: the broker contradicts the snapshot again "
                                               f"({differs}); nothing was placed", [], [])
            break
        return _place_and_record(bus, broker, gathered, decision, config, expected, fence=fence, audit=audit,
                                 execution_id=execution_id, now=now, mode=mode, trigger=trigger, run_id=run_id,
                                 notebooks=notebooks, notes=notes)
    if notes:
        result.warnings = notes + result.warnings
    record = build_record(execution_id=execution_id, now=now, mode=mode, trigger=trigger, run_id=run_id,
                          gathered=gathered, decision=decision, result=result, notebooks=notebooks, audit=audit)
    if dry_run:
        # A dry run records its plan and moves nothing else.
        _validated(record)
        bus.create(docs.execution_path(execution_id), record)
    else:
        write_record(bus, record, fence)
    return record


def _update_book(bus: Bus, conn: _Connection, mode: str, now: dt.datetime, fence: dict | None) -> str | None:
    """Bring the Commander's own book up to date from the broker's reports of our orders; returns
    why it could not (the decision then treats every book-dependent instrument as uncertain)."""
    from lib import book
    config = bus.get(docs.common_config_path()) or {}
    prefix = (config.get("orders") or {}).get("order_ref_prefix") or "cmdr-"
    try:
        found = conn.get().orders_by_ref(prefix)
    except BrokerError as err:
        return f"the Commander's own book could not be updated: {err}"
    updated = book.update(bus.get(book.book_path(mode)), found, prefix, now)
    bus.commit([Write("set", book.book_path(mode), updated)], expect=fence)
    return None


def qualify_targets(broker: Broker, intents: dict) -> dict[str, dict]:
    """Every instrument the intents name, checked with the broker (cached per run and, on IB, per
    connection): instrument key → {"conId", "primaryExchange"} or {"error": the broker's reason}.
    Raises BrokerError when the broker cannot be asked."""
    from lib.commander.instrument import contract_of, key_of
    from lib.errors import UnknownContractError
    out: dict[str, dict] = {}
    for doc in intents.values():
        if not isinstance(doc, dict) or doc.get("status") != "success":
            continue
        for row in doc.get("target_positions") or []:
            if not isinstance(row, dict) or not row.get("symbol"):
                continue  # the decision names what is wrong with the row
            key = key_of(row)
            if key in out:
                continue
            contract = {**contract_of(row), "primaryExchange": row.get("primaryExchange") or "",
                        "conId": row.get("conId") or 0}
            try:
                found = broker.qualify(Contract.from_dict(contract))
                out[key] = {"conId": found.conId, "primaryExchange": found.primaryExchange}
            except UnknownContractError as err:
                out[key] = {"error": str(err)}
    return out


def _refuse(bus: Bus, *, execution_id, now, mode, trigger, run_id, notebooks, reason, fence, audit,
            window_start) -> dict:
    """A failed record that places nothing and moves nothing, for a run that could not even decide."""
    record = {"execution_id": execution_id, "executed_at": now, "mode": mode, "trigger": trigger, "run_id": run_id,
              "status": "failed", "summary": f"Failed: {reason}", "reason": reason, "placed_orders": False,
              "decision": {"status": "blocked", "execution_id": execution_id, "window_start": iso(window_start),
                           "blocked_reasons": [{"check": "recovery", "detail": reason}], "orders": [],
                           "cancels": [], "skipped": []},
              "orders_placed": [], "notebooks": notebooks}
    _validated(record)
    bus.commit([Write("create", docs.execution_path(execution_id), record)], expect=fence)
    return record


def _place_and_record(bus: Bus, broker: Broker, gathered: dict, decision: dict, config: docs.CommonConfig,
                      expected: str | None, *, fence, audit, execution_id, now, mode, trigger, run_id, notebooks,
                      notes) -> dict:
    """Write-ahead, place, final write."""
    portfolio = gathered["inputs"]["portfolio"]
    placing = PlacementResult("placing", "write-ahead: the plan is recorded before anything is sent", [], [],
                              list(notes))
    try:
        check_account(broker.account_id(), mode, expected)
        account, client_id, ids, order_ids = reserve_order_ids(bus, broker, decision["orders"])
    except BrokerError as err:
        result = PlacementResult("failed", f"broker: {err}", [], [], list(notes))
        record = build_record(execution_id=execution_id, now=now, mode=mode, trigger=trigger, run_id=run_id,
                              gathered=gathered, decision=decision, result=result, notebooks=notebooks, audit=audit)
        write_record(bus, record, fence)
        return record
    record = build_record(execution_id=execution_id, now=now, mode=mode, trigger=trigger, run_id=run_id,
                          gathered=gathered, decision=decision, result=placing, notebooks=notebooks, audit=audit,
                          extra={"planned_order_ids": order_ids, "placing_started_at": now})
    # Wall-clock time: a snapshot taken before this instant cannot show what is sent from here on.
    record["last_orders_at"] = iso(dt.datetime.now(UTC))
    write_ahead(bus, record, order_ids=ids, account=account, client_id=client_id, fence=fence)
    try:
        result = place(broker, decision, mode=mode, expected_account=expected, snapshot_account=portfolio["account"],
                       rate_per_second=config.order_rate_per_second, ack_timeout=config.ack_timeout_seconds,
                       order_ids=order_ids, snapshot=portfolio, available_funds=portfolio.get("available_funds"),
                       margin_multiplier=config.risk.margin_multiplier)
    except BrokerError as err:  # anything unexpected after the write-ahead: let recovery sort it out
        result = PlacementResult("uncertain", f"placement stopped: {err}", [], [])
    result.warnings = list(notes) + result.warnings
    previous = (gathered["inputs"].get("previous_execution") or {}).get("decision") or {}
    return finish(bus, record, result, decision, previous, fence, audit)


# ---- approval ---------------------------------------------------------------------------------
class ApprovalRefused(PipelineError):
    """The plan cannot be approved (wrong status, changed snapshot, closed window)."""


def approve(bus: Bus, open_broker: Callable[[], Broker], execution_id: str, now: dt.datetime,
            current_window_start: dt.datetime, lease: leases.Lease | None = None,
            audit: AuditStore | None = None) -> dict:
    """Place exactly the plan of an `awaiting_approval` execution; returns the updated record.

    Refuses (ApprovalRefused, nothing placed) unless the record awaits approval, the portfolio
    snapshot's fingerprint is unchanged, the broker does not contradict it, and the decision's window
    is still the current one. The claim (`approving`, the state pointing at it) is the write-ahead.
    """
    path = docs.execution_path(execution_id)
    record = bus.get(path)
    if record is None:
        raise ApprovalRefused(f"{path} does not exist")
    if record.get("status") != "awaiting_approval":
        raise ApprovalRefused(f"{path}: field 'status' is {record.get('status')!r}, not 'awaiting_approval'")
    record = blobs.load(record, ("decision.orders", "decision.cancels", "decision.diff", "decision.per_strategy",
                                 "decision.final_target", "decision.instruments"))
    mode, decision = record["mode"], record["decision"]
    snapshot = bus.get(docs.portfolio_path(mode))
    now_fp = fingerprint(to_jsonable(snapshot)) if snapshot else None
    if now_fp != record["context"].get("portfolio_fingerprint"):
        raise ApprovalRefused(f"{docs.portfolio_path(mode)} changed since the plan was made "
                              f"({record['context'].get('portfolio_fingerprint')} → {now_fp}); run the pipeline again")
    recorded_start = dt.datetime.fromisoformat(decision["window_start"].replace("Z", "+00:00"))
    if current_window_start > recorded_start:
        raise ApprovalRefused(f"the plan's window (from {decision['window_start']}) has closed: a new one started "
                              f"at {iso(current_window_start)}; run the pipeline again")
    fence = lease.fence() if lease is not None else None
    config = docs.load(docs.CommonConfig, docs.common_config_path(), bus.get(docs.common_config_path()))
    expected = (bus.get(docs.mode_config_path(mode)) or {}).get("account")
    with open_broker() as broker:
        differs = contradiction(to_jsonable(broker.snapshot().to_document(now)), to_jsonable(snapshot))
        if differs:
            raise ApprovalRefused(f"the broker contradicts the snapshot the plan was made from ({differs}); "
                                  "run the pipeline again")
        try:
            check_account(broker.account_id(), mode, expected)
        except AccountMismatchError as err:
            raise ApprovalRefused(str(err)) from None
        account, client_id, ids, order_ids = reserve_order_ids(bus, broker, decision["orders"])
        sent_from = iso(dt.datetime.now(UTC))
        claim = {"status": "approving", "approved_at": now, "planned_order_ids": order_ids,
                 "last_orders_at": sent_from, "placing_started_at": now}
        writes = [Write("merge", path, claim),
                  *_placing_writes(bus, mode, execution_id, sent_from, account=account, client_id=client_id,
                                   order_ids=ids)]
        # Two approvers can never both place the plan: the claim checks the status in the same commit.
        expect = {**(fence or {}), path: lambda doc: None if doc and doc.get("status") == "awaiting_approval"
                  else f"no longer awaiting approval (status {doc and doc.get('status')!r}; approved by someone else?)"}
        try:
            bus.commit(writes, expect=expect)
        except PreconditionFailedError as err:
            raise ApprovalRefused(str(err)) from None
        record = {**record, **claim}
        try:
            result = place(broker, decision, mode=mode, expected_account=expected, snapshot_account=snapshot["account"],
                           rate_per_second=config.order_rate_per_second, ack_timeout=config.ack_timeout_seconds,
                           order_ids=order_ids, snapshot=snapshot, available_funds=snapshot.get("available_funds"),
                           margin_multiplier=config.risk.margin_multiplier)
        except BrokerError as err:
            result = PlacementResult("uncertain", f"placement stopped: {err}", [], [])
    previous = previous_view(bus.get(docs.execution_path(record["previous_execution_id"]))) \
        if record.get("previous_execution_id") else {}
    return finish(bus, record, result, decision, previous, fence, audit, summary_prefix="Approved. ")
