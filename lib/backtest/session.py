"""`python run_pipeline.py backtest`: strategy notebooks in backtest mode, the Commander loop, the tear sheet.

1. Each selected strategy notebook runs once with `start`/`end` set (in parallel, like the strategy
   stage): the same function of price history that publishes today's intent computes one row of
   targets per session and writes them to `targets_<id>.parquet` in the run's folder (a scrap says
   where) instead of publishing.
2. The Commander loop (`lib.backtest.engine.run`) nets them with the bus's `config/common` and
   strategy documents, session by session, and the result is saved beside them.
3. `notebooks/backtest.ipynb` is executed on that result as the tear sheet, kept under `runs/` like
   every stage.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import os
import secrets
import time
from pathlib import Path

import pandas as pd

from lib import documents as docs
from lib import scraps
from lib.backtest.engine import BacktestError, BacktestResult, run, save
from lib.backtest.prices import PriceBook
from lib.progress import Progress

UTC = dt.timezone.utc


@dataclasses.dataclass
class BacktestRun:
    run_id: str
    folder: Path
    result: BacktestResult | None
    notebooks: dict[str, str]
    failed: dict[str, str]
    tearsheet: str | None
    message: str


def run_backtest(settings, *, start: dt.date, end: dt.date, strategies: list[str] | None = None,
                 cash: float = 1_000_000.0, progress: Progress | None = None, workers: int | None = None,
                 standalone: bool = True, timeout: float = 600.0, benchmark: str = "SPY") -> BacktestRun:
    """Run the whole backtest; never raises for a strategy's failure (it is left out and said)."""
    from lib.audit import open_audit
    from lib.bus import open_bus
    from lib.pipeline import EXCHANGE_TZ, NOTEBOOKS, _execute, _strategy_notebook
    progress = progress or Progress()
    now = dt.datetime.now(UTC)
    run_id = f"{now:%Y%m%dT%H%M%SZ}-bt-{secrets.token_hex(3)}"
    audit = open_audit(settings.audit)
    name = f"{now.astimezone(EXCHANGE_TZ).date().isoformat()}/{run_id}"
    folder = audit.local_dir(name) or Path(f"/tmp/{run_id}")
    folder.mkdir(parents=True, exist_ok=True)
    from lib.seed import MISSING_CONFIG, is_empty, seed
    with open_bus(settings.bus) as bus:
        if bus.get(docs.common_config_path()) is None:
            if not is_empty(bus):
                raise BacktestError(MISSING_CONFIG)
            seed(bus, settings.mode)  # a first run on the embedded defaults, as the pipeline does
        config = bus.get(docs.common_config_path())
        docs_ = bus.list("strategies")
    chosen = strategies or sorted(s for s, d in docs_.items() if d.get("enabled"))
    unknown = sorted(set(chosen) - set(docs_))
    if unknown:
        raise BacktestError(f"unknown strategies: {', '.join(unknown)} (known: {', '.join(sorted(docs_))})")
    common = {"mode": settings.mode, "bus_url": settings.bus, "broker_url": settings.broker, "run_id": run_id,
              "data_url": getattr(settings, "data", None), "start": start.isoformat(), "end": end.isoformat()}
    notebooks, failed, targets = {}, {}, {}

    def one(sid: str):
        t0 = time.monotonic()
        progress.update(f"strategy {sid} (backtest mode)", "running")
        out = folder / f"targets_{sid}.parquet"
        local = folder / f"{sid}.ipynb"
        params = {**(docs_[sid].get("parameters") or {}), **common, "strategy_id": sid, "backtest_out": str(out)}
        try:
            ok, err = _execute(_strategy_notebook(sid, docs_[sid]), local, params, timeout)
        except Exception as exc:  # a missing notebook file
            ok, err = False, str(exc)
        progress.update(f"strategy {sid} (backtest mode)", "ok" if ok else "FAILED",
                        f"{time.monotonic() - t0:.1f} s {err}".strip(), "ok" if ok else "error")
        return sid, local, ok, err

    n = max(1, min(len(chosen) or 1, workers or os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(max_workers=n) as pool:
        for sid, local, ok, err in pool.map(one, chosen):
            notebooks[sid] = audit.link(f"{name}/{local.name}")
            recorded = scraps.read(local).get("targets") if ok else None
            if not ok or not recorded:
                failed[sid] = err or "the notebook recorded no targets (does it support backtest mode?)"
                continue
            frame = pd.read_parquet(recorded["path"])
            frame.index = [d.date() if hasattr(d, "date") else d for d in pd.to_datetime(frame.index)]
            targets[sid] = frame
    if not targets:
        return BacktestRun(run_id, folder, None, notebooks, failed, None,
                           "no strategy produced targets: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    prices = PriceBook.for_symbols({s for t in targets.values() for s in t.columns}, getattr(settings, "data", None))

    def tick(done: int, total: int, left: float) -> None:
        progress.update("commander loop", "running", f"{done}/{total} sessions, ~{left:.0f} s left")

    # Strategies named for the backtest take part even when disabled on the bus (an example, a candidate).
    result = run(targets, prices, config=config, strategies={s: {**docs_[s], "enabled": True} for s in targets}, cash=cash,
                 start=start, end=end, standalone=standalone, progress=tick)
    progress.update("commander loop", "ok", f"{len(result.sessions)} sessions")
    save(result, folder / "result", label=prices.label)
    local = folder / "backtest.ipynb"
    ok, err = _execute(NOTEBOOKS / "backtest.ipynb", local, {"result_dir": str(folder / "result"), "benchmark": benchmark,
                                                               "run_id": run_id, "bus_url": settings.bus,
                                                               "data_url": getattr(settings, "data", None)}, timeout)
    progress.update("tear sheet", "ok" if ok else "FAILED", err)
    final = result.sessions["equity"].iloc[-1]
    message = (f"{len(result.sessions)} sessions {start} … {end}, {len(targets)} strategies: equity "
               f"{cash:,.0f} → {final:,.0f}" + (f"; left out: {', '.join(failed)}" if failed else "")
               + (" (SYNTHETIC prices)" if prices.synthetic else ""))
    return BacktestRun(run_id, folder, result, notebooks, failed, audit.link(f"{name}/backtest.ipynb"), message)
