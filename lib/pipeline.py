"""The scheduled job: strategies in parallel, then reconcile, then the Commander, each a notebook
executed by papermill and kept unchanged in the audit store.

`run(settings, options)` is the one entry point; `run_pipeline.py` (CLI) and `main.py` (HTTP) both
call it. It returns a `RunResult`; the exit codes are EXIT_*.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import secrets
import tempfile
import time
from pathlib import Path
from zoneinfo import ZoneInfo

from lib import documents as docs
from lib import intent as intents
from lib import kernels, lease, scraps, sessions
from lib.audit import AuditError, AuditStore, open_audit
from lib.bus import Bus, open_bus
from lib.errors import BusError, PipelineError
from lib.execution import new_execution_id
from lib.executors import Batch, NotebookTask, Outcome, code_revision, open_executor
from lib.executors.base import execute
from lib.progress import Progress
from lib.seed import MISSING_CONFIG, is_empty, seed
from lib.settings import Settings

UTC = dt.timezone.utc
ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
EXCHANGE_TZ = ZoneInfo("America/New_York")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED = 0, 1, 2, 3


@dataclasses.dataclass
class Options:
    strategies: list[str] | None = None  # None: every enabled strategy
    dry_run: bool = False
    reconcile: bool = True
    trigger: str = "manual"
    as_of: str | None = None  # simulator clock; default: today's session
    window_start: str | None = None
    force: bool = False  # run on a day the exchange is closed
    strategy_timeout: float = 600.0
    stage_timeout: float = 900.0
    lease_seconds: float = 90.0  # renewed by a heartbeat; a dead run's lease expires by itself
    workers: int | None = None


@dataclasses.dataclass
class StageResult:
    name: str
    notebook: str  # link in the audit store
    ok: bool
    seconds: float
    error: str = ""


@dataclasses.dataclass
class RunResult:
    exit_code: int
    status: str
    message: str
    run_id: str = ""
    execution_id: str = ""
    record: dict | None = None
    stages: list[StageResult] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        rec = self.record or {}
        return {"exit_code": self.exit_code, "status": self.status, "message": self.message, "run_id": self.run_id,
                "execution_id": self.execution_id, "summary": rec.get("summary"),
                "orders": rec.get("orders_placed") or (rec.get("decision") or {}).get("orders", []),
                "skipped": (rec.get("decision") or {}).get("skipped", []),
                "notebooks": [s.notebook for s in self.stages],
                "stages": [dataclasses.asdict(s) for s in self.stages]}


# ---- running one notebook ---------------------------------------------------------------------
# One notebook on one kernel (with kernel-start retries); shared with the executors' workers.
_execute = execute


def _kept(audit: AuditStore, local: Path, name: str, meta: dict) -> str:
    """Store an executed notebook (local stores executed in place already)."""
    if not local.exists():
        local.parent.mkdir(parents=True, exist_ok=True)
        import nbformat
        stub = nbformat.v4.new_notebook()
        stub.cells = [nbformat.v4.new_markdown_cell(f"# {name}\n\nThis stage produced no notebook: {meta.get('error')}")]
        nbformat.write(stub, local)
    return audit.put_file(local, name, {k: str(v) for k, v in meta.items()})


# ---- the run ----------------------------------------------------------------------------------
def _git_revision() -> str:
    """The code revision recorded with each notebook; a remote worker on another one refuses tasks."""
    return code_revision()


def broker_for_stage(url: str, offset: int) -> str:
    """IB needs one client id per simultaneous connection: strategy i gets `client_id + 1 + i`,
    reconcile `client_id + 1`, and the Commander the base id, so it can cancel its own orders."""
    if not url.startswith("ib://") or offset == 0:
        return url
    import urllib.parse
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    if "client_id" not in query:
        return url  # the adapter refuses it with a clear message
    query["client_id"] = str(int(query["client_id"]) + offset)
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _strategy_notebook(sid: str, doc: dict) -> Path:
    rel = doc.get("notebook") or f"notebooks/strategies/{sid}.ipynb"
    path = (ROOT / rel).resolve()
    if not path.is_file():
        raise PipelineError(f"strategies/{sid}: field 'notebook': {rel} does not exist")
    return path


def live_announcement(mode: str, bus: Bus) -> str:
    """What a live run says in its first line: the account it trades (config/live.account), or
    that none is set and so nothing will be placed. Empty for paper."""
    if mode != "live":
        return ""
    account = (bus.get(docs.mode_config_path("live")) or {}).get("account")
    if account:
        return f" — LIVE: trades account {account} (config/live.account)"
    return " — LIVE: config/live.account is not set, so nothing will be placed until it names the account to trade"


def run(settings: Settings, options: Options, progress: Progress | None = None,
        now: dt.datetime | None = None) -> RunResult:
    """Run the three stages once; never raises for an operational failure (the result says)."""
    now = now or dt.datetime.now(UTC)
    run_id = new_execution_id(now, secrets.token_hex(3))
    progress = progress or Progress(run_id=run_id)
    progress.run_id = run_id
    first = f"run {run_id}: {settings.describe()}" + (" (dry run)" if options.dry_run else "")

    try:
        bus = open_bus(settings.bus)
        progress.log(first + live_announcement(settings.mode, bus))
        first = ""
        if bus.get(docs.common_config_path()) is None:
            if not is_empty(bus):  # never re-seed over a bus in use: the kill switch would be lost
                progress.log(MISSING_CONFIG, "error")
                bus.close()
                return RunResult(EXIT_FAILED, "failed", MISSING_CONFIG, run_id)
            created = [p for p, what in seed(bus, settings.mode).items() if what == "created"]
            progress.log(f"empty bus: seeded {', '.join(created)}" + (
                " (live: tradingEnabled false, example strategies disabled)" if settings.mode == "live" else ""))
        audit = open_audit(settings.audit)
    except (BusError, AuditError, ValueError) as err:
        if first:
            progress.log(first)
        return RunResult(EXIT_FAILED, "failed", f"cannot open the bus or the audit store: {err}", run_id)

    is_sim = settings.broker.startswith("sim")
    day = dt.date.fromisoformat(options.as_of) if options.as_of else now.astimezone(EXCHANGE_TZ).date()
    clock = _sim_clock(settings) if is_sim and not options.as_of else None
    if clock and clock > sessions.last_session_on_or_before(day):
        # The simulator only moves forward: after one run with a later --as-of, run at its clock.
        progress.log(f"the simulator's clock is at {clock}, ahead of today ({day}): running at the simulator's clock")
        options = dataclasses.replace(options, as_of=clock.isoformat())
        day = clock
    if not sessions.is_session(day) and not options.force:
        msg = f"{day} is not a trading session of the exchange (XNYS): nothing to do (use --force to run anyway)"
        progress.log(msg)
        return RunResult(EXIT_OK, "closed", msg, run_id)
    as_of = (options.as_of or sessions.last_session_on_or_before(day).isoformat()) if is_sim else None

    try:
        held = lease.acquire(bus, settings.mode, run_id, dt.timedelta(seconds=options.lease_seconds)).start_heartbeat()
    except lease.LeaseHeldError as err:
        progress.log(str(err), "error")
        return RunResult(EXIT_LOCKED, "locked", str(err), run_id)
    except BusError as err:
        return RunResult(EXIT_FAILED, "failed", f"bus unreachable: {err}", run_id)
    try:
        return _run_stages(bus, audit, settings, options, progress, run_id, now, as_of, held)
    except (BusError, PipelineError) as err:
        progress.log(f"run failed: {err}", "error")
        return RunResult(EXIT_FAILED, "failed", str(err), run_id)
    finally:
        try:
            held.release()
        except BusError:
            progress.log(f"could not release {docs.lock_path(settings.mode)}; it expires by itself", "warn")
        bus.close()


def _sim_clock(settings: Settings) -> dt.date | None:
    """The simulator's stored clock (None when its file does not exist yet)."""
    from lib.broker.sim import SimBroker
    base = settings.broker.partition("?")[0]
    path = Path(base[len("sim:///"):]) if base.startswith("sim:///") else None
    if path is None:
        from lib.broker.sim import DEFAULT_DB
        path = Path(DEFAULT_DB)
    if not path.exists():
        return None
    try:
        with SimBroker.from_url(settings.broker.partition("?")[0], mode=settings.mode) as sim:
            return sim.as_of()
    except (PipelineError, ValueError):
        return None


class _Run:
    """One run's stages: names, working folder and the parameters every notebook gets."""

    def __init__(self, bus: Bus, audit: AuditStore, settings: Settings, options: Options, progress: Progress,
                 run_id: str, now: dt.datetime, as_of: str | None, strategies: dict[str, dict], chosen: list[str]):
        self.bus, self.audit, self.settings, self.options, self.progress = bus, audit, settings, options, progress
        self.run_id, self.now, self.strategies, self.chosen = run_id, now, strategies, chosen
        self.keys = [*chosen, *(["reconcile"] if options.reconcile else []), "commander"]
        folder = f"{now.astimezone(EXCHANGE_TZ).date().isoformat()}/{run_id}"
        numbered = [*chosen, "reconcile", "commander"]  # numbers stay stable whether reconcile runs or not
        self.names = {key: f"{folder}/{i:02d}_{key}.ipynb" for i, key in enumerate(numbered, start=1)}
        self.folder, self.stored = folder, {}  # stored: key → link of notebooks an executor's worker kept
        work = audit.local_dir(folder) or Path(tempfile.mkdtemp(prefix=f"run-{run_id}-"))
        self.local = {key: work / Path(name).name for key, name in self.names.items()}
        self.common = {"mode": settings.mode, "bus_url": settings.bus, "broker_url": settings.broker,
                       "as_of": as_of, "run_id": run_id}
        self.meta = {"run_id": run_id, "git_revision": _git_revision()}

    def _report(self, name: str, link: str, ok: bool, err: str, t0: float) -> StageResult:
        result = StageResult(name, link, ok, round(time.monotonic() - t0, 2), err)
        self.progress.update(name, "ok" if ok else "FAILED", f"{result.seconds:.1f} s {err}".strip(),
                             "ok" if ok else "error")
        return result

    def strategy_task(self, sid: str) -> NotebookTask:
        """Stage 1's task for one strategy: its notebook and parameters (PipelineError: no notebook)."""
        doc = self.strategies[sid]
        params = {**(doc.get("parameters") or {}),  # the operator's non-secret strategy parameters
                  **self.common, "strategy_id": sid,
                  "broker_url": broker_for_stage(self.settings.broker, 1 + self.chosen.index(sid))}
        path = _strategy_notebook(sid, doc)
        notebook = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)  # relative: workers
        return NotebookTask(sid, notebook, self.names[sid], params, self.options.strategy_timeout, str(self.local[sid]))

    def strategy(self, sid: str, outcome: Outcome, t0: float) -> StageResult:
        """Stage 1's result for one strategy; a failure is recorded as an error intent if the notebook could not."""
        if not outcome.ok:
            current = self.bus.get(docs.intent_path(sid)) or {}
            if not current.get("updated_at") or current["updated_at"] < self.now:
                intents.publish_error(self.bus, sid, f"strategy notebook failed: {outcome.error}")
        if outcome.stored:
            self.stored[sid] = self.audit.link(self.names[sid])
        return self._report(f"strategy {sid}", self.names[sid], outcome.ok, outcome.error,
                            time.monotonic() - outcome.seconds if outcome.seconds else t0)

    def strategy_stage(self) -> list[StageResult]:
        """Stage 1: the chosen strategies' notebooks as one batch on the executor (local kernels, Dask
        or Cloud Run Jobs: `settings.executor`); one failing or hanging does not stop the others."""
        t0, results, tasks = time.monotonic(), {}, []
        for sid in self.chosen:
            try:
                tasks.append(self.strategy_task(sid))
            except PipelineError as exc:
                results[sid] = self.strategy(sid, Outcome(sid, False, str(exc)), t0)
        batch = Batch(self.run_id, self.folder, self.settings.audit, self.meta["git_revision"], tasks,
                      dict(self.meta), deadline=max(self.options.stage_timeout, self.options.strategy_timeout + 120))
        with open_executor(self.settings.executor, workers=self.options.workers) as executor:
            executor.run(batch, started=lambda sid: self.progress.update(f"strategy {sid}", "running"),
                         finished=lambda o: results.__setitem__(o.key, self.strategy(o.key, o, t0)))
        return [results[sid] for sid in self.chosen]

    def single(self, key: str, params: dict, warm) -> StageResult:
        """Stage 2 or 3 on its pre-started kernel (a cold one if warming failed)."""
        self.progress.update(key, "running")
        t0 = time.monotonic()
        try:
            km = warm.result()
        except Exception:
            km = None
        ok, err = _execute(NOTEBOOKS / f"{key}.ipynb", self.local[key], {**self.common, **params},
                           self.options.stage_timeout, km)
        return self._report(key, self.names[key], ok, err, t0)

    def keep(self, stages: list[StageResult]) -> None:
        """Every executed notebook, failed ones too, unchanged, into the audit store."""
        for key, st in zip(self.keys, stages):
            if key in self.stored:  # kept once by the executor's worker; a second write would be refused
                st.notebook = self.stored[key]
                continue
            try:
                st.notebook = _kept(self.audit, self.local[key], self.names[key],
                                    {**self.meta, "stage": key, "status": "ok" if st.ok else "failed", "error": st.error})
            except AuditError as err:
                self.progress.log(f"could not keep {self.names[key]}: {err}", "error")
                st.ok, st.error = False, f"{st.error} audit: {err}".strip()

    def record(self, execution_id: str, links: list[str], commander: StageResult) -> dict:
        """The execution record; when the commander notebook died before writing it, a failed one."""
        record = self.bus.get(docs.execution_path(execution_id))
        if record is not None:
            found = scraps.read(self.local["commander"]).get("execution", {})
            if found and found.get("status") != record.get("status"):
                self.progress.log("the commander notebook's result and the bus record disagree", "warn")
            return record
        record = {"execution_id": execution_id, "executed_at": self.now, "mode": self.settings.mode,
                  "trigger": self.options.trigger, "run_id": self.run_id, "status": "failed", "placed_orders": False,
                  "summary": f"Failed: the commander notebook did not finish: {commander.error}",
                  "decision": None, "orders_placed": [], "notebooks": links}
        try:
            self.bus.create(docs.execution_path(execution_id), record)
        except BusError as err:
            self.progress.log(f"could not write {docs.execution_path(execution_id)}: {err}", "error")
        return record


def _data_stage(run: _Run):
    """Stage 0: the market data the chosen strategies declare (`universe`, `lookback`), brought up to
    date once for their union, through one pacer (lib.data). Returns stage 1's `strategy_task`: a
    strategy one of whose series could not be updated fails at once with the reason (stage 1 then
    records it as for any failed strategy: an error intent, so its previous targets are held); every
    other strategy gets the store's URL as the notebook parameter `data_url`."""
    from lib import data
    from lib.pacing import HistoryPacer
    original = run.strategy_task
    wanted = data.declared({sid: run.strategies[sid] for sid in run.chosen})
    blocked: dict[str, str] = {}
    if wanted:
        name = "data"
        run.progress.update(name, "running", f"{len(wanted)} series: {', '.join(sorted(wanted))}")

        def shown(done: int, total: int, left: float | None, outcome) -> None:
            run.progress.update(name, "running", f"{done}/{total} series, last {outcome.symbol} "
                                f"{'ok' if outcome.ok else 'FAILED'}, ~{left or 0:.0f} s left")

        try:
            # The stage's own connection: on IB reconcile's client id, free until stage 2. One pacer
            # governs every request of the stage (on IB the connection paces with it: IB's hard
            # rules for bars of 30 s or less, a window for larger ones, at most 50 open).
            pacer = HistoryPacer()
            report = data.update_from_broker(run.settings.data, broker_for_stage(run.settings.broker, 1),
                                             run.settings.mode, wanted, as_of=run.common["as_of"], now=run.now,
                                             pacer=pacer, on_progress=shown, log=run.progress.log)
            failed, summary = report.failed, report.summary()
            for outcome in report.outcomes.values():
                if outcome.notes or not outcome.ok:
                    run.progress.log(f"data: {outcome.line()}", "info" if outcome.ok else "error")
        except Exception as exc:  # the store or the broker could not be opened: every series fails
            failed = dict.fromkeys(wanted, f"{type(exc).__name__}: {exc}")
            summary = f"0/{len(wanted)} series: {type(exc).__name__}: {exc}"
        blocked = data.blocked({sid: run.strategies[sid] for sid in run.chosen}, failed)
        run.progress.update(name, "FAILED" if failed else "ok", summary, "error" if failed else "ok")

    def strategy_task(sid: str) -> NotebookTask:
        if sid in blocked:
            raise PipelineError(blocked[sid])
        task = original(sid)
        task.parameters["data_url"] = run.settings.data
        return task

    return strategy_task


def _run_stages(bus: Bus, audit: AuditStore, settings: Settings, options: Options, progress: Progress,
                run_id: str, now: dt.datetime, as_of: str | None, held: lease.Lease) -> RunResult:
    strategies = bus.list("strategies")
    if options.strategies is not None:
        unknown = sorted(set(options.strategies) - set(strategies))
        if unknown:
            return RunResult(EXIT_USAGE, "failed", f"unknown strategies: {', '.join(unknown)} "
                                                   f"(known: {', '.join(sorted(strategies))})", run_id)
        chosen = [s for s in options.strategies if strategies[s].get("enabled")]
    else:
        chosen = sorted(s for s, d in strategies.items() if d.get("enabled"))
    run = _Run(bus, audit, settings, options, progress, run_id, now, as_of, strategies, chosen)

    # Kernels for stage 2 and 3 start (and import) while stage 1 runs, one after the other.
    warmer = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    warm = {key: warmer.submit(kernels.start) for key in run.keys if key in ("reconcile", "commander")}
    try:
        run.strategy_task = _data_stage(run)  # stage 0: market data; a strategy whose series failed fails
        # Stage 1: strategies in parallel on the executor (local: kernels bounded by the CPU count).
        stages = run.strategy_stage()
        # Stage 2 and 3 only after stage 1 has finished.
        if options.reconcile:
            stages.append(run.single("reconcile", {"broker_url": broker_for_stage(settings.broker, 1)},
                                     warm["reconcile"]))
        else:
            progress.update("reconcile", "skipped", "--no-reconcile: the last snapshot is used if still fresh")
        execution_id = run_id
        links = [audit.link(run.names[k]) for k in run.keys]
        stages.append(run.single("commander", {
            "execution_id": execution_id, "dry_run": options.dry_run, "trigger": options.trigger,
            "window_start": options.window_start, "notebooks": links, "audit_url": settings.audit,
            "reconcile_failed": bool(options.reconcile and not stages[-1].ok), **held.to_params()},
            warm["commander"]))
    finally:
        for future in warm.values():
            future.add_done_callback(lambda f: f.exception() is None and kernels.kill(f.result()))
        warmer.shutdown(wait=False)

    run.keep(stages)
    record = run.record(execution_id, links, stages[-1])
    status = record.get("status", "failed")
    failed_stage = any(not s.ok for s in stages)
    exit_code = EXIT_OK if status in ("completed", "dry_run", "disabled", "awaiting_approval") and not failed_stage \
        else EXIT_FAILED
    message = record.get("summary") or status
    progress.log(f"execution {execution_id}: {status}: {message}", "info" if exit_code == 0 else "error",
                 execution_id=execution_id, status=status)
    return RunResult(exit_code, status, message, run_id, execution_id, record, stages)


def report(result: RunResult) -> str:
    """The end-of-run table for a person: skipped strategies, orders, the execution id, the notebooks."""
    lines = [f"run {result.run_id}: {result.status} (exit {result.exit_code})", f"  {result.message}"]
    rec = result.record or {}
    decision = rec.get("decision") or {}
    if decision.get("skipped"):
        lines.append("  skipped strategies:")
        lines += [f"    {s['strategy']:<24} {s['reason']:<9} {s.get('action', ''):<20} {s['detail']}"
                  for s in decision["skipped"]]
    orders = rec.get("orders_placed") or decision.get("orders") or []
    if orders:
        lines.append("  orders:" if rec.get("orders_placed") else "  planned orders (not placed):")
        for o in orders:
            qty = o.get("totalQuantity", o.get("quantity"))
            sym = o.get("symbol") or o["contract"]["symbol"]
            lines.append(f"    {o['action']:<4} {qty:>8} {sym:<8} {o.get('orderType', ''):<4} "
                         f"{o.get('status', 'planned'):<12} {o.get('error') or ''}")
    if result.execution_id:
        lines.append(f"  execution: executions/{result.execution_id}")
    if result.stages:
        lines.append("  notebooks:")
        lines += [f"    {'ok ' if s.ok else 'ERR'} {s.notebook}" for s in result.stages]
    return "\n".join(lines)


def commander(settings: Settings, *, dry_run: bool = False, reconcile: bool = False,
              lease_seconds: float = 90.0, window_start: str | None = None, trigger: str = "manual",
              progress: Progress | None = None) -> RunResult:
    """`run_pipeline.py commander`: reconcile (optional) and the Commander, without notebooks.

    For an operator who wants one decision now, and for the crash-safety suite. It takes the lease
    itself (and resolves any unfinished execution first, as every Commander run does).
    """
    from lib import execution
    from lib.broker import open_broker
    from lib.reconcile import snapshot_to_bus
    progress = progress or Progress()
    now = dt.datetime.now(UTC)
    execution_id = new_execution_id(now, secrets.token_hex(3))
    try:
        bus = open_bus(settings.bus)
        audit = open_audit(settings.audit)
    except (BusError, AuditError, ValueError) as err:
        return RunResult(EXIT_FAILED, "failed", f"cannot open the bus or the audit store: {err}")
    try:
        held = None if dry_run else lease.acquire(
            bus, settings.mode, f"commander-{execution_id}", dt.timedelta(seconds=lease_seconds)).start_heartbeat()
    except lease.LeaseHeldError as err:
        bus.close()
        return RunResult(EXIT_LOCKED, "locked", str(err), execution_id=execution_id)
    try:
        if settings.mode == "live":
            progress.log(f"commander {execution_id}" + live_announcement(settings.mode, bus))
        expected = (bus.get(docs.mode_config_path(settings.mode)) or {}).get("account")
        opener = lambda: open_broker(settings.broker, settings.mode, expected)  # noqa: E731
        if reconcile:
            with opener() as broker:
                snap = snapshot_to_bus(broker, bus, settings.mode, expected)
            progress.log(f"reconciled {snap['account']}: {len(snap['holdings'])} holdings, "
                         f"{len(snap['open_orders'])} open orders")
        config = bus.get(docs.common_config_path()) or {}
        start = sessions.window_start(now, config.get("freshMinutes"),
                                      dt.datetime.fromisoformat(window_start.replace("Z", "+00:00")) if window_start else None)
        record = execution.run_commander(bus, opener, mode=settings.mode, execution_id=execution_id, now=now,
                                         window_start=start, dry_run=dry_run, trigger=trigger, run_id=execution_id,
                                         notebooks=[], audit=audit, lease=held)
    except (BusError, PipelineError) as err:
        progress.log(f"commander failed: {err}", "error")
        return RunResult(EXIT_FAILED, "failed", str(err), execution_id=execution_id)
    finally:
        if held is not None:
            held.release()
        bus.close()
    ok = record["status"] in ("completed", "dry_run", "disabled", "awaiting_approval")
    return RunResult(EXIT_OK if ok else EXIT_FAILED, record["status"], record["summary"], execution_id,
                     execution_id, record)


def approve(settings: Settings, execution_id: str, progress: Progress | None = None,
            now: dt.datetime | None = None) -> RunResult:
    """`run_pipeline.py approve EXECUTION_ID`: place exactly an awaiting plan, under the lease."""
    from lib import execution
    from lib.broker import open_broker
    now = now or dt.datetime.now(UTC)
    progress = progress or Progress()
    try:
        bus = open_bus(settings.bus)
    except (BusError, ValueError) as err:
        return RunResult(EXIT_FAILED, "failed", f"cannot open the bus: {err}")
    owner = f"approve-{execution_id}"
    try:
        held = lease.acquire(bus, settings.mode, owner).start_heartbeat()
    except lease.LeaseHeldError as err:
        return RunResult(EXIT_LOCKED, "locked", str(err))
    try:
        if settings.mode == "live":
            progress.log(f"approve {execution_id}" + live_announcement(settings.mode, bus))
        config = bus.get(docs.common_config_path()) or {}
        start = sessions.window_start(now, config.get("freshMinutes"))
        expected = (bus.get(docs.mode_config_path(settings.mode)) or {}).get("account")
        record = execution.approve(bus, lambda: open_broker(settings.broker, settings.mode, expected),
                                   execution_id, now, start, lease=held, audit=open_audit(settings.audit))
    except execution.ApprovalRefused as err:
        progress.log(f"approval refused: {err}", "error")
        return RunResult(EXIT_FAILED, "refused", f"approval refused, nothing placed: {err}", execution_id=execution_id)
    except (BusError, PipelineError) as err:
        return RunResult(EXIT_FAILED, "failed", str(err), execution_id=execution_id)
    finally:
        held.release()
        bus.close()
    code = EXIT_OK if record["status"] == "completed" else EXIT_FAILED
    return RunResult(code, record["status"], record["summary"], "", execution_id, record)
