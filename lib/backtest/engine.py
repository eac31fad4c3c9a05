"""The portfolio backtest: every strategy's target series, netted by the real Commander, session by session.

Each session, after the close: resting orders try the session's bar; the account is snapshotted as
reconcile would; each strategy's row for the session becomes its intent; `lib.commander.decide`
runs with the bus's `config/common`, strategy documents and the previous decision and ledgers — so
allocation, caps, bands, buying power, drawdown halts, trading state and the calendar all apply —
and its orders fill by the simulator's own rules (`lib.backtest.account`). What the Commander
would never trade never shows up here.

Strategies traded alone (same rules, one strategy each) give what netting saved: commissions and
turnover of the netted account against the sum of the standalone ones.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import time
from typing import Any, Callable, Mapping

import pandas as pd

from lib import documents as docs
from lib import sessions as cal
from lib.backtest.account import Account
from lib.backtest.prices import PriceBook
from lib.canonical import iso
from lib.commander import decide
from lib.errors import DocumentError, PipelineError

UTC = dt.timezone.utc


class BacktestError(PipelineError):
    """The backtest cannot run (no sessions, no prices for a target, a bad configuration)."""


@dataclasses.dataclass
class BacktestResult:
    sessions: pd.DataFrame          # per session: equity, cash, gross, net, orders, fills, commission, turnover
    positions: pd.DataFrame         # session × symbol: quantity held after the session's fills
    strategy_equity: pd.DataFrame   # session × strategy: the ledger's attributed equity
    fills: pd.DataFrame             # every fill: session, symbol, action, quantity, price, commission, orderRef
    orders: pd.DataFrame            # every planned order: session, symbol, action, quantity, notional
    events: list[dict]              # halts, rejections, blocked decisions, approvals waived
    last_decision: dict             # the Commander's decision on the last session (parity with a dry run)
    synthetic: bool                 # prices are the simulator's synthetic bars
    standalone: pd.DataFrame | None = None  # per strategy traded alone: commission, turnover, final equity

    @property
    def netting(self) -> dict[str, float] | None:
        """Commissions and turnover saved by netting, against each strategy traded alone."""
        if self.standalone is None or self.standalone.empty:
            return None
        alone_c, alone_t = float(self.standalone["commission"].sum()), float(self.standalone["turnover"].sum())
        net_c, net_t = float(self.sessions["commission"].sum()), float(self.sessions["turnover"].sum())
        return {"commission_netted": net_c, "commission_alone": alone_c, "commission_saved": alone_c - net_c,
                "turnover_netted": net_t, "turnover_alone": alone_t, "turnover_saved": alone_t - net_t}


def _intent(symbols: list[str], weights, closes: Mapping[str, float], at: str, day: dt.date) -> dict | None:
    """One session's row of weights as the intent document the strategy would have published."""
    rows = []
    for symbol, w in zip(symbols, weights.tolist()):
        if w != w:  # NaN: no target for this symbol in this session
            continue
        price = closes.get(symbol)
        if price is None:
            raise BacktestError(f"no price for {symbol} on {day}: a target needs one")
        rows.append({"symbol": symbol, "secType": "STK", "exchange": "SMART", "currency": "USD",
                     "weight": w, "price": price})
    if not rows:
        return None  # warm-up: the strategy has no row yet, as if it had not published
    return {"updated_at": at, "status": "success", "error_message": None, "metadata": {}, "target_positions": rows}


def run(targets: Mapping[str, pd.DataFrame], prices: PriceBook, *, config: Mapping[str, Any],
        strategies: Mapping[str, Mapping[str, Any]], cash: float, start: dt.date, end: dt.date,
        slippage_bps: float = 5.0, standalone: bool = False,
        progress: Callable[[int, int, float], None] | None = None) -> BacktestResult:
    """Step the Commander over every exchange session from `start` to `end` (inclusive).

    `targets[sid]` holds one row of signed weights (fraction of the strategy's capital) per session,
    one column per symbol; `strategies[sid]` is the strategy's bus document (allocation, caps). Only
    strategies present in both take part. `progress(done, total, seconds_left)` is called as it goes.
    """
    try:
        docs.load(docs.CommonConfig, docs.common_config_path(), dict(config))
    except DocumentError as err:
        raise BacktestError(str(err)) from None
    days = [d for d in prices.sessions if start <= d <= end]
    if not days:
        raise BacktestError(f"no session with prices between {start} and {end} "
                            f"(prices cover {prices.sessions[0]} … {prices.sessions[-1]})")
    chosen = {sid: strategies[sid] for sid in targets if sid in strategies}
    result = _loop(targets, prices, config, chosen, cash, days, slippage_bps, progress)
    if standalone and len(chosen) > 1:
        rows = []
        for sid in chosen:
            alone = _loop({sid: targets[sid]}, prices, config, {sid: chosen[sid]}, cash, days, slippage_bps, None)
            rows.append({"strategy": sid, "commission": float(alone.sessions["commission"].sum()),
                         "turnover": float(alone.sessions["turnover"].sum()),
                         "final_equity": float(alone.sessions["equity"].iloc[-1])})
        result.standalone = pd.DataFrame(rows).set_index("strategy")
    return result


def _loop(targets, prices: PriceBook, config, strategies, cash, days, slippage_bps, progress) -> BacktestResult:
    from lib.execution import accepted_view
    account = Account(cash, slippage_bps)
    symbols = sorted({s for t in targets.values() for s in t.columns})
    # Plain arrays, not a pandas row per session: the loop runs thousands of times.
    frames = {sid: (list(map(str, t.columns)), t.reindex(days).to_numpy(dtype=float)) for sid, t in targets.items()}
    previous: dict | None = None
    ledgers: dict = {}
    rows, positions, equity_rows, orders, events = [], [], [], [], []
    decision: dict = {}
    started = time.monotonic()
    # Everything per session that does not depend on the account, computed once, in bulk.
    closing = cal.session_closes(days)
    ohlc = prices.aligned(symbols, days)  # symbol → (open, high, low, close) arrays, NaN where absent
    for i, day in enumerate(days):
        close_at = closing[i]
        closes = {s: float(a[3][i]) for s, a in ohlc.items() if a[3][i] == a[3][i]}
        for s in account.positions:
            if s not in closes:
                raise BacktestError(f"{s} is held but has no price on {day}")
        fills_before = len(account.fills)
        if account.resting:
            account.pass_session(day, {o.symbol: prices.bar(o.symbol, day) for o in account.resting
                                       if o.symbol in closes})
        intents = {}
        published = iso(close_at + dt.timedelta(minutes=1))
        for sid, (columns, values) in frames.items():
            doc = _intent(columns, values[i], closes, published, day)
            if doc is not None:
                intents[sid] = doc
        inputs = {"now": iso(close_at + dt.timedelta(minutes=10)), "window_start": iso(close_at), "mode": "paper",
                  "execution_id": f"bt-{day:%Y%m%d}", "config": config, "strategies": strategies,
                  "intents": intents, "portfolio": account.snapshot(closes, close_at + dt.timedelta(minutes=2)),
                  "previous_execution": previous, "ledgers": ledgers}
        decision = decide(inputs)
        placed = 0
        if decision["status"] != "ok":
            events.append({"session": day, "event": "blocked",
                           "detail": "; ".join(r["detail"] for r in decision["blocked_reasons"])})
        elif not config.get("tradingEnabled") or decision.get("trading_state") == "halted":
            events.append({"session": day, "event": "trading_disabled", "detail": "nothing placed"})
        else:
            if decision.get("approval", {}).get("required"):
                events.append({"session": day, "event": "approval_waived",
                               "detail": "; ".join(decision["approval"]["reasons"])})
            for c in decision["cancels"]:
                account.cancel(c["orderId"])
            rejected_before = len(account.rejected)
            for o in decision["orders"]:
                account.place(day, o, closes)
                orders.append({"session": day, "symbol": o["contract"]["symbol"], "action": o["action"],
                               "quantity": o["quantity"], "notional": o["notional"], "orderRef": o["orderRef"]})
                placed += 1
            for r in account.rejected[rejected_before:]:
                events.append({"session": day, "event": "rejected", "detail": f"{r['symbol']}: {r['reason']}"})
            rejected = {f"STK:{r['symbol']}:USD" for r in account.rejected[rejected_before:]}
            view = {k: decision[k] for k in ("per_strategy", "final_target", "instruments")}
            reached = {o["instrument"] for o in decision["orders"]} - rejected
            held_back = accepted_view(decision, (previous or {}).get("decision") or {}, reached)
            previous = {"execution_id": decision["execution_id"], "executed_at": inputs["now"],
                        "placed_orders": False, "decision": held_back or view}
            for sid, led in decision.get("ledgers", {}).items():
                if led.get("halted") and not (ledgers.get(sid) or {}).get("halted"):
                    events.append({"session": day, "event": "halt", "detail": f"{sid}: {led.get('halted_reason')}"})
            ledgers = {**ledgers, **decision.get("ledgers", {})}
        new_fills = account.fills[fills_before:]
        nav = account.net_liquidation(closes)
        gross = sum(abs(q) * closes[s] for s, (q, _) in account.positions.items())
        net = sum(q * closes[s] for s, (q, _) in account.positions.items())
        rows.append({"session": day, "equity": nav, "cash": account.cash, "gross": gross, "net": net,
                     "orders": placed, "fills": len(new_fills),
                     "commission": sum(f.commission for f in new_fills),
                     "turnover": sum(f.notional for f in new_fills)})
        positions.append({"session": day, **{s: q for s, (q, _) in account.positions.items()}})
        equity_rows.append({"session": day, **{sid: led.get("equity") for sid, led in ledgers.items()}})
        if progress is not None and (i % 25 == 0 or i == len(days) - 1):
            spent = time.monotonic() - started
            progress(i + 1, len(days), spent / (i + 1) * (len(days) - i - 1))
    fills = pd.DataFrame([(f.session, f.order_id, f.symbol, f.action, f.quantity, f.price, f.commission, f.order_ref)
                          for f in account.fills],
                         columns=["session", "order_id", "symbol", "action", "quantity", "price", "commission",
                                  "order_ref"])
    return BacktestResult(
        sessions=pd.DataFrame(rows).set_index("session"),
        positions=pd.DataFrame(positions).set_index("session").fillna(0.0),
        strategy_equity=pd.DataFrame(equity_rows).set_index("session"),
        fills=fills, orders=pd.DataFrame(orders, columns=["session", "symbol", "action", "quantity", "notional",
                                                          "orderRef"]),
        events=events, last_decision=decision, synthetic=prices.synthetic)


# ---- keeping a result (the tear-sheet notebook reads it back) -------------------------------------
_TABLES = ("sessions", "positions", "strategy_equity", "fills", "orders", "standalone")


def save(result: BacktestResult, folder, label: str = "") -> None:
    """Write a result as Parquet tables plus `meta.json` into `folder`."""
    import json
    from pathlib import Path

    from lib.canonical import dumps
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in _TABLES:
        table = getattr(result, name)
        if table is None:
            continue
        table = table.copy()
        if table.index.name == "session":
            table.index = pd.to_datetime(table.index)
        if "session" in table.columns:
            table["session"] = pd.to_datetime(table["session"])
        table.columns = [str(c) for c in table.columns]
        table.to_parquet(folder / f"{name}.parquet")
    meta = {"synthetic": result.synthetic, "label": label, "events": result.events, "netting": result.netting,
            "last_decision_orders": result.last_decision.get("orders", [])}
    (folder / "meta.json").write_text(json.dumps(json.loads(dumps(meta)), indent=1), encoding="utf-8")


def load(folder) -> tuple[BacktestResult, dict]:
    """A saved result and its meta (label, netting, events)."""
    import json
    from pathlib import Path
    folder = Path(folder)
    tables = {n: pd.read_parquet(folder / f"{n}.parquet") if (folder / f"{n}.parquet").exists() else None
              for n in _TABLES}
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    result = BacktestResult(sessions=tables["sessions"], positions=tables["positions"],
                            strategy_equity=tables["strategy_equity"], fills=tables["fills"], orders=tables["orders"],
                            events=meta["events"], last_decision={"orders": meta["last_decision_orders"]},
                            synthetic=meta["synthetic"], standalone=tables["standalone"])
    return result, meta
