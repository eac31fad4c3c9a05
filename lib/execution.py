"""One Commander execution at the edges: read the bus, decide, place through the broker, record.

The decision itself is pure (`lib.commander.decide`); this module only gathers its inputs in one
batch read, carries out the plan it returns, and writes `executions/{execution_id}` with enough to
replay it. Order placement fails closed: a blocked decision, dry-run, the kill switch, a trading
state of `halted`, an account that does not match the mode or the snapshot — each places nothing
and says why in the record.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import time
from typing import Any, Callable

from lib import documents as docs
from lib.broker.base import Broker, Contract, OrderRequest, check_account
from lib.bus import Bus
from lib.canonical import dumps, fingerprint, iso, to_jsonable
from lib.commander import decide
from lib.errors import AccountMismatchError, BrokerConnectionError, BrokerError, DocumentError, PipelineError
from lib.pacing import Pacer

UTC = dt.timezone.utc
MAX_INLINE_BYTES = 800_000  # leave room under Firestore's 1 MiB for the rest of the record


def state_path(mode: str) -> str:
    """Where the last accepted execution of a mode is remembered."""
    return f"state/commander-{mode}"


def new_execution_id(now: dt.datetime, suffix: str) -> str:
    return f"{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{suffix}"


# ---- gather -----------------------------------------------------------------------------------
def gather_inputs(bus: Bus, mode: str, execution_id: str, now: dt.datetime, window_start: dt.datetime) -> dict:
    """The decision inputs, read with one listing and one batch read.

    Returns {"inputs": ..., "context": refs and fingerprints, "mode_config": ...}.
    """
    strategies = bus.list("strategies")
    state_doc = bus.get(state_path(mode)) or {}
    paths = [docs.common_config_path(), docs.mode_config_path(mode), docs.portfolio_path(mode)]
    paths += [docs.intent_path(sid) for sid in strategies]
    paths += [docs.ledger_path(sid) for sid in strategies]
    last_id = state_doc.get("last_execution_id")
    if last_id:
        paths.append(docs.execution_path(last_id))
    got = bus.get_many(paths)
    previous = got.get(docs.execution_path(last_id)) if last_id else None
    if previous is not None:
        # Only what the decision reads: its accepted targets and when orders were last placed.
        prev_decision = previous.get("decision") or {}
        previous = {
            "execution_id": previous.get("execution_id"), "executed_at": previous.get("executed_at"),
            "placed_orders": previous.get("placed_orders", False),
            "last_orders_at": state_doc.get("last_orders_at"),
            "decision": {k: prev_decision.get(k) for k in ("per_strategy", "final_target", "instruments")},
        }
    intents = {sid: got[docs.intent_path(sid)] for sid in strategies}
    inputs = to_jsonable({
        "now": now, "window_start": window_start, "mode": mode, "execution_id": execution_id,
        "config": got[docs.common_config_path()], "strategies": strategies, "intents": intents,
        "portfolio": got[docs.portfolio_path(mode)], "previous_execution": previous,
        "ledgers": {sid: got[docs.ledger_path(sid)] for sid in strategies if got[docs.ledger_path(sid)]},
    })
    context = {
        "portfolio_snapshot_ref": _ref(docs.portfolio_path(mode), got[docs.portfolio_path(mode)]),
        "portfolio_fingerprint": fingerprint(inputs["portfolio"]) if inputs["portfolio"] else None,
        "strategy_intents_refs": [_ref(docs.intent_path(s), d) for s, d in sorted(intents.items()) if d],
        "fingerprints": {docs.intent_path(s): fingerprint(d) for s, d in sorted(inputs["intents"].items()) if d},
        "config_fingerprint": fingerprint(inputs["config"]),
        "previous_execution_ref": docs.execution_path(last_id) if last_id else None,
    }
    return {"inputs": inputs, "context": context, "mode_config": got[docs.mode_config_path(mode)] or {}}


def _ref(path: str, doc: dict | None) -> str:
    if not doc:
        return f"{path}@missing"
    ts = doc.get("updated_at")
    return f"{path}@{iso(ts) if isinstance(ts, dt.datetime) else ts}"


# ---- place ------------------------------------------------------------------------------------
@dataclasses.dataclass
class PlacementResult:
    status: str  # completed | partial_success | failed | dry_run | disabled
    reason: str
    orders_placed: list[dict]
    cancels: list[dict]

    @property
    def placed_any(self) -> bool:
        return any(o.get("orderId") for o in self.orders_placed)


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


def place(broker: Broker, decision: dict, *, mode: str, expected_account: str | None, snapshot_account: str,
          rate_per_second: float, ack_timeout: float, sleep: Callable[[float], None] = time.sleep) -> PlacementResult:
    """Cancel our mismatched working orders, then place sells and buys, paced; wait for acknowledgements."""
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
    # At most `rate_per_second` orders in any second (below 1: one order every 1/rate seconds).
    pacer = (Pacer(int(rate_per_second), 1.0, sleep=sleep) if rate_per_second >= 1
             else Pacer(1, 1.0 / rate_per_second, sleep=sleep))

    cancels, unconfirmed = [], set()
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
            ok = st is not None and st.status in ("Cancelled", "ApiCancelled")
            cancels.append({**c, "confirmed": ok, "status": st.status if st else "unknown"})
            if not ok:
                unconfirmed.add(c["instrument"])  # it may have filled: placing the full need could double

    placed: list[dict] = []
    broken: str | None = None
    for o in decision["orders"]:
        row = {"instrument": o["instrument"], "symbol": o["contract"]["symbol"], "action": o["action"],
               "totalQuantity": o["quantity"], "orderType": o["orderType"], "lmtPrice": o["lmtPrice"],
               "orderRef": o["orderRef"], "orderId": None, "status": "NotPlaced", "error": None}
        if broken:
            row["error"] = f"not placed: {broken}"
        elif o["instrument"] in unconfirmed:
            row["error"] = "not placed: the cancel of our working order was not confirmed"
        else:
            row["paced_wait"] = round(pacer.acquire(), 3)
            try:
                state = broker.place_order(OrderRequest(
                    contract=Contract.from_dict(o["contract"]), action=o["action"], quantity=o["quantity"],
                    order_type=o["orderType"], limit_price=o["lmtPrice"], tif=o["tif"], order_ref=o["orderRef"]))
                row.update(orderId=state.order_id, permId=state.perm_id, status=state.status, error=state.error)
            except BrokerConnectionError as err:
                broken = f"connection lost: {err}"
                row["error"] = broken
            except BrokerError as err:
                row["error"] = str(err)
        placed.append(row)

    ids = [r["orderId"] for r in placed if r["orderId"] is not None]
    if ids and not broken:
        try:
            states = broker.wait(ids, ack_timeout, until="acknowledged")
            for r in placed:
                st = states.get(r["orderId"])
                if st is not None:
                    r.update(status=st.status, filled=st.filled, remaining=st.remaining,
                             avgFillPrice=st.avg_fill_price, commission=st.commission, error=st.error)
        except BrokerError as err:
            broken = f"waiting for acknowledgements failed: {err}"

    good = [r for r in placed if r["orderId"] is not None and r["status"] not in ("Inactive", "NotPlaced")
            and not r["error"] and r["status"] not in ("PendingSubmit", "ApiPending")]
    wanted = len(decision["orders"])
    if wanted == 0:
        status = "completed" if not unconfirmed else "partial_success"
    elif len(good) == wanted and not unconfirmed:
        status = "completed"
    elif good:
        status = "partial_success"
    else:
        status = "failed"
    reason = broken or ("" if status == "completed" else f"{len(good)} of {wanted} orders acknowledged")
    return PlacementResult(status, reason, placed, cancels)


# ---- record -----------------------------------------------------------------------------------
def summarize(decision: dict, result: PlacementResult) -> str:
    """One line like the seed's: 'Placed 2 orders: BUY 20 SPY, SELL 50 VIXY.'"""
    def fmt(rows):
        return ", ".join(f"{r['action']} {r.get('totalQuantity', r.get('quantity'))} {r['symbol'] if 'symbol' in r else r['contract']['symbol']}"
                         for r in rows)
    if result.status in ("dry_run", "disabled", "awaiting_approval") or (
            result.status == "failed" and not result.orders_placed):
        plan = decision.get("orders") or []
        head = {"dry_run": "Dry run", "disabled": "Trading disabled", "failed": "Failed",
                "awaiting_approval": "Awaiting approval"}[result.status]
        what = f"would place {len(plan)} orders" + (f": {fmt(plan)}" if plan else "")
        return f"{head}: {what}." + (f" {result.reason}." if result.status != "dry_run" and result.reason else "")
    ok = [r for r in result.orders_placed if r["orderId"] is not None]
    if not decision.get("orders"):
        return "No orders needed: holdings and pending orders already match the target."
    text = f"Placed {len(ok)} orders" + (f": {fmt(ok)}." if ok else ".")
    failed = [r for r in result.orders_placed if r["orderId"] is None or r["status"] == "Inactive"]
    if failed:
        text += f" {len(failed)} not placed or rejected: {fmt(failed)}."
    return text


def build_record(*, execution_id: str, now: dt.datetime, mode: str, trigger: str, run_id: str,
                 gathered: dict, decision: dict, result: PlacementResult, notebooks: list[str],
                 spill: Callable[[str, bytes], str] | None = None) -> dict:
    """The `executions/{id}` document. Inputs go inline when small, else to the audit store (`spill`)."""
    previous_orders_at = (gathered["inputs"].get("previous_execution") or {}).get("last_orders_at")
    record = {
        "execution_id": execution_id, "executed_at": now, "mode": mode, "trigger": trigger, "run_id": run_id,
        "status": result.status, "summary": summarize(decision, result), "reason": result.reason,
        "placed_orders": result.placed_any,
        "last_orders_at": iso(now) if result.placed_any else previous_orders_at,
        "context": gathered["context"], "decision": decision, "orders_placed": result.orders_placed,
        "cancels_done": result.cancels, "notebooks": notebooks,
        "inputs_fingerprint": fingerprint(gathered["inputs"]),
    }
    body = dumps(gathered["inputs"]).encode("utf-8")
    if len(body) + len(dumps(decision)) < MAX_INLINE_BYTES or spill is None:
        record["inputs"] = gathered["inputs"]
    else:
        record["inputs_ref"] = spill(f"inputs/{execution_id}.json", body)
    return record


def write_record(bus: Bus, record: dict) -> None:
    """Create `executions/{id}` (never overwriting) and, for a decision that was not blocked, point the
    mode's state at it so the next run holds these targets. The record is validated first, so a
    malformed one is refused with its field named before anything is written."""
    path = docs.execution_path(record["execution_id"])
    docs.load(docs.ExecutionRecord, path, record)
    bus.create(path, record)
    if record["decision"]["status"] == "ok":
        for sid, ledger in sorted(record["decision"].get("ledgers", {}).items()):
            bus.set(docs.ledger_path(sid), ledger)
        state = {"last_execution_id": record["execution_id"], "last_decided_at": record["executed_at"],
                 "last_orders_at": record["last_orders_at"]}
        bus.set(state_path(record["mode"]), state)


def run_commander(bus: Bus, open_broker: Callable[[], Broker], *, mode: str, execution_id: str, now: dt.datetime,
                  window_start: dt.datetime, dry_run: bool, trigger: str, run_id: str, notebooks: list[str],
                  spill: Callable[[str, bytes], str] | None = None) -> dict:
    """Gather, decide, place (unless gated), write the record; returns the record."""
    gathered = gather_inputs(bus, mode, execution_id, now, window_start)
    decision = decide(gathered["inputs"])
    try:
        config = docs.load(docs.CommonConfig, docs.common_config_path(), gathered["inputs"]["config"])
    except DocumentError:
        config = None  # the decision is blocked already and says why
    stop = gate(decision, config, dry_run)
    if stop:
        result = PlacementResult(stop[0], stop[1], [], [])
    elif not decision["orders"] and not decision["cancels"]:
        result = PlacementResult("completed", "", [], [])
    else:
        expected = (gathered["mode_config"] or {}).get("account")
        try:
            with open_broker() as broker:
                result = place(broker, decision, mode=mode, expected_account=expected,
                               snapshot_account=gathered["inputs"]["portfolio"]["account"],
                               rate_per_second=config.order_rate_per_second, ack_timeout=config.ack_timeout_seconds)
        except BrokerError as err:
            result = PlacementResult("failed", f"broker: {err}", [], [])
    record = build_record(execution_id=execution_id, now=now, mode=mode, trigger=trigger, run_id=run_id,
                          gathered=gathered, decision=decision, result=result, notebooks=notebooks, spill=spill)
    write_record(bus, record)
    return record


# ---- approval ---------------------------------------------------------------------------------
class ApprovalRefused(PipelineError):
    """The plan cannot be approved (wrong status, changed snapshot, closed window)."""


def approve(bus: Bus, open_broker: Callable[[], Broker], execution_id: str, now: dt.datetime,
            current_window_start: dt.datetime) -> dict:
    """Place exactly the plan of an `awaiting_approval` execution; returns the updated record.

    Refuses (ApprovalRefused, nothing placed) unless the record awaits approval, the portfolio
    snapshot's fingerprint is unchanged, and the decision's window is still the current one.
    """
    path = docs.execution_path(execution_id)
    record = bus.get(path)
    if record is None:
        raise ApprovalRefused(f"{path} does not exist")
    if record.get("status") != "awaiting_approval":
        raise ApprovalRefused(f"{path}: field 'status' is {record.get('status')!r}, not 'awaiting_approval'")
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

    def claim(current):
        if current is None or current.get("status") != "awaiting_approval":
            raise ApprovalRefused(f"{path} is no longer awaiting approval (approved by someone else?)")
        return {**current, "status": "approving", "approved_at": now}

    bus.transact(path, claim)  # two approvers can never both place the plan
    config = docs.load(docs.CommonConfig, docs.common_config_path(), bus.get(docs.common_config_path()))
    expected = (bus.get(docs.mode_config_path(mode)) or {}).get("account")
    try:
        with open_broker() as broker:
            result = place(broker, decision, mode=mode, expected_account=expected, snapshot_account=snapshot["account"],
                           rate_per_second=config.order_rate_per_second, ack_timeout=config.ack_timeout_seconds)
    except BrokerError as err:
        result = PlacementResult("failed", f"broker: {err}", [], [])
    fields = {"status": result.status, "summary": "Approved. " + summarize(decision, result), "reason": result.reason,
              "orders_placed": result.orders_placed, "cancels_done": result.cancels, "placed_orders": result.placed_any,
              "last_orders_at": iso(now) if result.placed_any else record.get("last_orders_at")}
    updated = bus.update(path, fields)
    if result.placed_any:
        state = bus.get(state_path(mode)) or {}
        bus.set(state_path(mode), {**state, "last_orders_at": iso(now)})
    return updated
