"""The operator's command line: everyday work on the bus without Python or sqlite3.

    python -m lib.ops [--bus URL] [--mode paper|live] COMMAND ...

    strategies list | show ID | add NOTEBOOK [--id ID] [--allocation X] [--name N] [--enable]
               | enable ID | disable ID | set-allocation ID X
    config show | set FIELD VALUE          (FIELD dotted: risk.allow_short, exposure.overall, ...;
                                            VALUE is JSON: true, 0.5, "LMT", null)
    halt | resume                          the kill switch (config/common.tradingEnabled)
    trading-state active|reduce_only|halted
    executions list [--limit N] [--status S] | show ID | export ID [--out FILE]
    approvals list
    lock show | clear                      (clear only a lease whose holder is gone or expired)
    manual list | release SYMBOL | settle SYMBOL QTY
                                           manual parts (holding − the Commander's own book); release
                                           hands one to the Commander; settle states its own position
    operations list [--limit N]            the trail of every change made here

Every write is validated by the document's model and refused whole when invalid (the message names
the document and the field); it is committed atomically with an entry in `operations/{id}` saying
what changed, when, and from which host and user. Exit codes: 0 done; 1 refused or failed; 2 bad usage.
"""
from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import secrets
import socket
import sys
from pathlib import Path
from typing import Any

from lib import documents as docs
from lib import lease as leases
from lib.bus import Bus, Write, open_bus
from lib.canonical import dumps, iso
from lib.errors import DocumentError, PipelineError

UTC = dt.timezone.utc


class OpsError(PipelineError):
    """An operator command was refused; nothing was written."""


def _who() -> dict:
    try:
        user = getpass.getuser()
    except Exception:  # no login name in some containers
        user = "unknown"
    return {"host": socket.gethostname(), "user": user}


def record_change(bus: Bus, what: str, writes: list[Write], before: dict[str, Any], now: dt.datetime | None = None,
                  expect: dict | None = None) -> str:
    """Commit `writes` together with an `operations/{id}` entry; returns the entry's id."""
    now = now or dt.datetime.now(UTC)
    op_id = f"{now:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
    entry = {"at": now, "what": what, **_who(), "paths": [w.path for w in writes],
             "before": json.loads(dumps(before)) if before else {},
             "after": {w.path: json.loads(dumps(w.data)) if w.data is not None else None for w in writes}}
    bus.commit([*writes, Write("create", f"operations/{op_id}", entry)], expect=expect)
    return op_id


def _unchanged(path: str, current: dict | None):
    """A precondition: the document is still what the command read (no lost update)."""
    snapshot = dumps(current)
    return {path: lambda doc: None if dumps(doc) == snapshot else "changed while this command ran; try again"}


def _set_dotted(doc: dict, field: str, value: Any) -> dict:
    out = json.loads(dumps(doc))
    node = out
    parts = field.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise OpsError(f"config/common: field '{field}': {p} is not an object")
    node[parts[-1]] = value
    return out


# ---- strategies ---------------------------------------------------------------------------------
def _strategy(bus: Bus, sid: str) -> dict:
    doc = bus.get(docs.strategy_path(sid))
    if doc is None:
        raise OpsError(f"{docs.strategy_path(sid)} does not exist (see: strategies list)")
    return doc


def _check_allocations(bus: Bus, sid: str, new: dict) -> None:
    others = {k: v for k, v in bus.list("strategies").items() if k != sid}
    total = sum(float(v.get("capital_allocation") or 0) for v in others.values() if v.get("enabled"))
    if new.get("enabled"):
        total += float(new.get("capital_allocation") or 0)
    if total > 1 + 1e-9:
        raise OpsError(f"{docs.strategy_path(sid)}: enabled strategies' capital_allocation would sum to "
                       f"{total:.6g}, above 1; lower an allocation first")


def update_strategy(bus: Bus, sid: str, what: str, change: dict) -> str:
    path = docs.strategy_path(sid)
    current = _strategy(bus, sid)
    new = {**current, **change}
    docs.load(docs.StrategyConfig, path, new)
    _check_allocations(bus, sid, new)
    return record_change(bus, what, [Write("set", path, new)], {path: current}, expect=_unchanged(path, current))


def add_strategy(bus: Bus, notebook: str, sid: str | None, allocation: float, name: str | None, enable: bool,
                 root: Path) -> str:
    nb = Path(notebook)
    if not (root / nb).is_file() and not nb.is_file():
        raise OpsError(f"notebook {notebook} does not exist")
    if nb.is_absolute():
        try:
            nb = nb.resolve().relative_to(root)
        except ValueError:
            raise OpsError(f"notebook {notebook} is outside the project ({root})") from None
    sid = sid or nb.stem
    path = docs.strategy_path(sid)
    if bus.get(path) is not None:
        raise OpsError(f"{path} already exists; change it with enable/disable/set-allocation")
    doc = {"name": name or sid, "description": "", "enabled": enable, "author": _who()["user"],
           "capital_allocation": allocation, "notebook": str(nb)}
    doc = docs.dump(docs.load(docs.StrategyConfig, path, doc))
    _check_allocations(bus, sid, doc)
    return record_change(bus, f"strategies add {sid}", [Write("create", path, doc)], {})


# ---- config -------------------------------------------------------------------------------------
def set_config(bus: Bus, field: str, value: Any, what: str | None = None) -> str:
    path = docs.common_config_path()
    current = bus.get(path)
    if current is None:
        raise OpsError(f"{path} is missing; restore it with `python -m lib.seed` on an empty bus, or write "
                       "it whole from a backup: nothing was changed")
    new = _set_dotted(current, field, value)
    docs.load(docs.CommonConfig, path, new)
    return record_change(bus, what or f"config set {field} {dumps(value)}", [Write("set", path, new)],
                         {path: current}, expect=_unchanged(path, current))


# ---- executions ---------------------------------------------------------------------------------
def list_executions(bus: Bus, limit: int, status: str | None = None) -> list[tuple[str, dict]]:
    rows, before = [], None
    while len(rows) < limit:
        page = bus.page("executions", order_by="executed_at", limit=100, before=before)
        if not page:
            break
        rows += [(i, d) for i, d in page if status is None or d.get("status") == status]
        before = page[-1][1]["executed_at"]
        if len(page) < 100:
            break
    return rows[:limit]


def export_execution(bus: Bus, execution_id: str) -> dict:
    """The record with its spilled parts read back: what `python -m lib.commander replay` reads."""
    from lib import blobs
    record = bus.get(docs.execution_path(execution_id))
    if record is None:
        raise OpsError(f"{docs.execution_path(execution_id)} does not exist")
    return json.loads(dumps(blobs.load(record)))


# ---- lock ---------------------------------------------------------------------------------------
def clear_lock(bus: Bus, mode: str, now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(UTC)
    path = docs.lock_path(mode)
    current = bus.get(path)
    if current is None:
        raise OpsError(f"{path} is not held: nothing to clear")
    if current["expires_at"] > now and not leases.holder_gone(current):
        raise OpsError(f"{path} is held by {current['owner']} on {current.get('host')} (pid {current.get('pid')}) "
                       f"until {iso(current['expires_at'])}, and that run looks alive; it is renewed while the run "
                       "lives and expires by itself within its time to live if it died")
    return record_change(bus, f"lock clear {mode}", [Write("delete", path)], {path: current},
                         expect=_unchanged(path, current))


# ---- manual parts (the Commander's own book) -----------------------------------------------------
def manual_rows(bus: Bus, mode: str) -> list[dict]:
    """Per instrument: held (last snapshot), the Commander's own book, the manual part, uncertainty."""
    from lib import book
    from lib.commander.instrument import Catalog
    snap = bus.get(docs.portfolio_path(mode)) or {}
    catalog = Catalog()
    held: dict[str, float] = {}
    for h in snap.get("holdings") or []:
        key = catalog.key(h)
        held[key] = held.get(key, 0.0) + float(h.get("quantity") or 0)
    own = bus.get(book.book_path(mode)) or {}
    parts = book.manual_parts(own, held)
    keys = sorted(set(held) | set(own.get("positions") or {}) | set(own.get("uncertain") or {}))
    return [{"instrument": k, "held": held.get(k, 0.0), "own": (own.get("positions") or {}).get(k, 0.0),
             "manual": parts.get(k, 0.0), "uncertain": (own.get("uncertain") or {}).get(k, "")} for k in keys]


def assign_book(bus: Bus, mode: str, symbol: str, quantity: float | None, what: str) -> str:
    """Set the Commander's own position in SYMBOL (None: the whole holding, i.e. release the manual part)."""
    from lib import book
    rows = {r["instrument"].split(":")[1]: r for r in manual_rows(bus, mode)}
    if symbol not in rows:
        raise OpsError(f"{symbol} is neither held nor in the Commander's book (see: manual list)")
    row = rows[symbol]
    path = book.book_path(mode)
    current = bus.get(path)
    new = book.assign(current, row["instrument"], row["held"] if quantity is None else quantity,
                      dt.datetime.now(UTC))
    return record_change(bus, what, [Write("set", path, new)], {path: current} if current else {},
                         expect=_unchanged(path, current))


# ---- the command line ---------------------------------------------------------------------------
def _print_table(rows: list[list[Any]], header: list[str]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)] if rows else [len(h) for h in header]
    for r in [header, *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip())


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lib.ops", description=__doc__.splitlines()[0],
                                epilog="Exit codes: 0 done; 1 refused or failed; 2 bad usage.")
    p.add_argument("--bus", help="bus URL (default: $COMMANDER_BUS or sqlite:///runs/bus.sqlite)")
    p.add_argument("--mode", help="paper or live (default: $COMMANDER_MODE or paper)")
    sub = p.add_subparsers(dest="noun", required=True)
    st = sub.add_parser("strategies", help="list, show, add, enable, disable, set-allocation").add_subparsers(
        dest="verb", required=True)
    st.add_parser("list")
    st.add_parser("show").add_argument("id")
    add = st.add_parser("add")
    add.add_argument("notebook")
    add.add_argument("--id")
    add.add_argument("--allocation", type=float, default=0.0)
    add.add_argument("--name")
    add.add_argument("--enable", action="store_true")
    st.add_parser("enable").add_argument("id")
    st.add_parser("disable").add_argument("id")
    alloc = st.add_parser("set-allocation")
    alloc.add_argument("id")
    alloc.add_argument("allocation", type=float)
    cf = sub.add_parser("config", help="show or set config/common").add_subparsers(dest="verb", required=True)
    cf.add_parser("show")
    cset = cf.add_parser("set")
    cset.add_argument("field")
    cset.add_argument("value", help="JSON: true, 0.5, \"LMT\", null")
    sub.add_parser("halt", help="kill switch on: tradingEnabled false")
    sub.add_parser("resume", help="kill switch off: tradingEnabled true")
    sub.add_parser("trading-state").add_argument("state", choices=["active", "reduce_only", "halted"])
    ex = sub.add_parser("executions", help="list, show, export").add_subparsers(dest="verb", required=True)
    el = ex.add_parser("list")
    el.add_argument("--limit", type=int, default=20)
    el.add_argument("--status")
    ex.add_parser("show").add_argument("id")
    exp = ex.add_parser("export")
    exp.add_argument("id")
    exp.add_argument("--out", help="file to write (default: stdout)")
    sub.add_parser("approvals", help="executions awaiting approval").add_subparsers(dest="verb", required=True) \
        .add_parser("list")
    lk = sub.add_parser("lock", help="show or clear the run lease").add_subparsers(dest="verb", required=True)
    lk.add_parser("show")
    lk.add_parser("clear")
    mn = sub.add_parser("manual", help="manual parts: list, release, settle").add_subparsers(dest="verb", required=True)
    mn.add_parser("list")
    mn.add_parser("release").add_argument("symbol")
    st_ = mn.add_parser("settle")
    st_.add_argument("symbol")
    st_.add_argument("quantity", type=float)
    op = sub.add_parser("operations", help="the trail of changes").add_subparsers(dest="verb", required=True)
    ol = op.add_parser("list")
    ol.add_argument("--limit", type=int, default=20)
    return p


def main(argv: list[str] | None = None) -> int:
    from lib.pipeline import ROOT
    from lib.settings import resolve
    args = _parser().parse_args(argv)
    try:
        settings = resolve({"bus": args.bus, "mode": args.mode})
    except ValueError as err:
        print(f"python -m lib.ops: {err}", file=sys.stderr)
        return 2
    try:
        with open_bus(settings.bus) as bus:
            return _dispatch(bus, args, settings.mode, ROOT)
    except (OpsError, DocumentError) as err:
        print(f"refused, nothing changed: {err}", file=sys.stderr)
        return 1
    except PipelineError as err:
        print(f"failed: {err}", file=sys.stderr)
        return 1


def _dispatch(bus: Bus, a: argparse.Namespace, mode: str, root: Path) -> int:
    noun, verb = a.noun, getattr(a, "verb", None)
    if noun == "strategies":
        if verb == "list":
            rows = [[sid, "yes" if d.get("enabled") else "no", d.get("capital_allocation"),
                     "halted" if d.get("halted") else "", d.get("notebook") or f"notebooks/strategies/{sid}.ipynb"]
                    for sid, d in bus.list("strategies").items()]
            _print_table(rows, ["id", "enabled", "allocation", "halted", "notebook"])
        elif verb == "show":
            print(dumps(_strategy(bus, a.id), indent=2))
        elif verb == "add":
            op = add_strategy(bus, a.notebook, a.id, a.allocation, a.name, a.enable, root)
            print(f"added strategies/{a.id or Path(a.notebook).stem} (operations/{op})")
        elif verb in ("enable", "disable"):
            op = update_strategy(bus, a.id, f"strategies {verb} {a.id}", {"enabled": verb == "enable"})
            print(f"strategies/{a.id}: enabled = {verb == 'enable'} (operations/{op})")
        else:
            op = update_strategy(bus, a.id, f"strategies set-allocation {a.id} {a.allocation}",
                                 {"capital_allocation": a.allocation})
            print(f"strategies/{a.id}: capital_allocation = {a.allocation} (operations/{op})")
    elif noun == "config":
        if verb == "show":
            print(dumps({"config/common": bus.get(docs.common_config_path()),
                         f"config/{mode}": bus.get(docs.mode_config_path(mode))}, indent=2))
        else:
            try:
                value = json.loads(a.value)
            except json.JSONDecodeError:
                raise OpsError(f"config/common: field '{a.field}': {a.value!r} is not JSON "
                               "(strings need quotes: '\"LMT\"')") from None
            op = set_config(bus, a.field, value)
            print(f"config/common: {a.field} = {dumps(value)} (operations/{op})")
    elif noun in ("halt", "resume"):
        op = set_config(bus, "tradingEnabled", noun == "resume", noun)
        print(f"trading {'enabled' if noun == 'resume' else 'disabled (kill switch)'} (operations/{op})")
    elif noun == "trading-state":
        op = set_config(bus, "tradingState", a.state, f"trading-state {a.state}")
        print(f"config/common: tradingState = {a.state} (operations/{op})")
    elif noun == "executions":
        if verb == "list":
            rows = [[i, iso(d["executed_at"]) if isinstance(d.get("executed_at"), dt.datetime) else d.get("executed_at"),
                     d.get("mode"), d.get("status"), (d.get("summary") or "")[:90]]
                    for i, d in list_executions(bus, a.limit, a.status)]
            _print_table(rows, ["execution", "executed_at", "mode", "status", "summary"])
        elif verb == "show":
            rec = export_execution(bus, a.id)
            rec.pop("inputs", None)
            print(dumps(rec, indent=2))
        else:
            text = dumps(export_execution(bus, a.id), indent=2)
            if a.out:
                Path(a.out).write_text(text + "\n", encoding="utf-8")
                print(f"wrote {a.out}: python -m lib.commander replay {a.out}")
            else:
                print(text)
    elif noun == "approvals":
        rows = [[i, d.get("mode"), (d.get("summary") or "")[:100], f"python run_pipeline.py approve {i}"]
                for i, d in list_executions(bus, 100, "awaiting_approval")]
        if rows:
            _print_table(rows, ["execution", "mode", "summary", "to approve"])
        else:
            print("No execution awaits approval.")
    elif noun == "lock":
        if verb == "show":
            doc = bus.get(docs.lock_path(mode))
            print(dumps(doc, indent=2) if doc else f"{docs.lock_path(mode)} is free")
        else:
            op = clear_lock(bus, mode)
            print(f"cleared {docs.lock_path(mode)} (operations/{op})")
    elif noun == "manual":
        if verb == "list":
            rows = [[r["instrument"], f"{r['held']:g}", f"{r['own']:g}", f"{r['manual']:g}", r["uncertain"]]
                    for r in manual_rows(bus, mode)]
            if rows:
                _print_table(rows, ["instrument", "held", "own book", "manual part", "uncertain"])
            else:
                print("Nothing held and nothing in the Commander's book.")
        elif verb == "release":
            op = assign_book(bus, mode, a.symbol, None, f"manual release {a.symbol}")
            print(f"{a.symbol}: the manual part is handed to the Commander (operations/{op})")
        else:
            op = assign_book(bus, mode, a.symbol, a.quantity, f"manual settle {a.symbol} {a.quantity:g}")
            print(f"{a.symbol}: the Commander's own position is {a.quantity:g} (operations/{op})")
    elif noun == "operations":
        rows = [[i, iso(d["at"]), d.get("user"), d.get("host"), d.get("what")]
                for i, d in bus.page("operations", order_by="at", limit=a.limit)]
        _print_table(rows, ["operation", "at", "user", "host", "what"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
