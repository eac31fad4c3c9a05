#!/usr/bin/env python3
"""The scheduled entry point: strategies → reconcile → commander, each notebook kept as the audit.

    python run_pipeline.py approve EXECUTION_ID [--mode M] [--bus URL] [--broker URL]
    python run_pipeline.py commander [--reconcile] [--dry-run] [--mode M] [--bus URL] [--broker URL]
                           [--audit URL] [--window-start ISO] [--lease-seconds S]
    python run_pipeline.py [--strategies a,b] [--dry-run] [--no-reconcile] [--mode paper|live]
                           [--bus URL] [--broker URL] [--audit URL] [--data URL] [--as-of DATE]
                           [--trigger scheduled|manual] [--window-start ISO] [--force]
                           [--executor local|dask://HOST:PORT|dask://local|cloudrun://PROJECT/REGION/JOB]
                           [--log-format text|json]
    python run_pipeline.py task --manifest gs://BUCKET/…/manifest.json   (a Cloud Run job's task)

With no flags it runs everything on the embedded defaults (SQLite bus, simulated broker, runs/),
seeding an empty bus first. Exit codes: 0 success, dry run or exchange closed; 1 failure;
2 bad usage; 3 another run holds the lock.
"""
from __future__ import annotations

import argparse
import sys

from lib import pipeline
from lib.progress import Progress
from lib.settings import resolve


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="run_pipeline.py", description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="other commands:\n"
               "  run_pipeline.py approve EXECUTION_ID      place exactly a plan awaiting approval\n"
               "  run_pipeline.py commander [--reconcile]   the Commander alone, without notebooks\n"
               "  run_pipeline.py task --manifest gs://…    one Cloud Run task of the strategy stage\n"
               "  run_pipeline.py backtest --from D --to D  the portfolio backtest through the real Commander\n"
               "  python -m lib.ops --help                  operator commands: strategies, config, halt/resume,\n"
               "                                            trading-state, executions, approvals, lock, operations\n"
               "exit codes: 0 success, dry run, trading disabled or exchange closed; 1 failure; 2 bad usage;\n"
               "            3 another run holds the lease")
    p.add_argument("--strategies", help="comma-separated strategy ids (default: every enabled strategy)")
    p.add_argument("--dry-run", action="store_true", help="compute and record the plan, place nothing")
    p.add_argument("--no-reconcile", dest="reconcile", action="store_false", help="skip the reconcile stage")
    p.add_argument("--mode", choices=["paper", "live"], help="trading mode (default: $COMMANDER_MODE or paper)")
    p.add_argument("--bus", help="sqlite:///PATH or firestore://PROJECT[/DATABASE]")
    p.add_argument("--broker", help="sim[:///PATH] or ib://HOST:PORT?client_id=N")
    p.add_argument("--audit", help="runs/ or gs://BUCKET/PREFIX")
    p.add_argument("--data", help="market data store: runs/data/ or gs://BUCKET/PREFIX/data/ (default: the audit "
                                  "store's data/)")
    p.add_argument("--executor", help="where strategy notebooks run: local (default), dask://HOST:PORT, "
                                      "dask://local or cloudrun://PROJECT/REGION/JOB")
    p.add_argument("--as-of", help="simulator clock date YYYY-MM-DD (default: today's session)")
    p.add_argument("--trigger", choices=["scheduled", "manual"], default="manual")
    p.add_argument("--window-start", help="ISO-8601 start of the freshness window (default: the most recent exchange close)")
    p.add_argument("--force", action="store_true", help="run even though the exchange is closed that day")
    p.add_argument("--strategy-timeout", type=float, default=600.0, help="seconds per strategy notebook (600)")
    p.add_argument("--log-format", choices=["text", "json"], default="text")
    return p.parse_args(argv)


def check_dates(args: argparse.Namespace) -> str | None:
    """What is wrong with --as-of or --window-start, before any stage runs (exit 2), or None."""
    import datetime as dt
    from zoneinfo import ZoneInfo
    today = dt.datetime.now(ZoneInfo("America/New_York")).date()
    if args.as_of:
        try:
            day = dt.date.fromisoformat(args.as_of)
        except ValueError:
            return f"--as-of {args.as_of!r} is not a date (YYYY-MM-DD)"
        if day > today:
            return f"--as-of {day} is in the future (today is {today} in New York)"
        if (args.broker or "").startswith("sim") or not args.broker:
            from lib.broker.sim import load_market
            market = load_market()
            if not market.first <= day <= market.last:
                return f"--as-of {day} is outside the simulator's bars ({market.first} … {market.last})"
    if args.window_start:
        try:
            start = dt.datetime.fromisoformat(args.window_start.replace("Z", "+00:00"))
        except ValueError:
            return f"--window-start {args.window_start!r} is not an ISO-8601 time (e.g. 2026-12-02T21:00:00Z)"
        if start.tzinfo is None:
            return f"--window-start {args.window_start!r} has no time zone (add Z or +00:00)"
    return None


def approve_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="run_pipeline.py approve",
                                description="Place exactly the plan of an execution awaiting approval.")
    p.add_argument("execution_id")
    for flag in ("--mode", "--bus", "--broker"):
        p.add_argument(flag)
    args = p.parse_args(argv)
    try:
        settings = resolve({"mode": args.mode, "bus": args.bus, "broker": args.broker})
    except ValueError as err:
        print(f"run_pipeline.py: {err}", file=sys.stderr)
        return pipeline.EXIT_USAGE
    result = pipeline.approve(settings, args.execution_id)
    print(pipeline.report(result))
    return result.exit_code


def commander_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="run_pipeline.py commander",
                                description="Run the Commander alone (optionally after reconcile), without notebooks.")
    p.add_argument("--reconcile", action="store_true", help="snapshot the broker first")
    p.add_argument("--dry-run", action="store_true", help="compute and record the plan, place nothing")
    for flag in ("--mode", "--bus", "--broker", "--audit", "--window-start"):
        p.add_argument(flag)
    p.add_argument("--lease-seconds", type=float, default=90.0, help="lease time to live, renewed while alive (90)")
    args = p.parse_args(argv)
    try:
        settings = resolve({"mode": args.mode, "bus": args.bus, "broker": args.broker, "audit": args.audit})
    except ValueError as err:
        print(f"run_pipeline.py: {err}", file=sys.stderr)
        return pipeline.EXIT_USAGE
    result = pipeline.commander(settings, dry_run=args.dry_run, reconcile=args.reconcile,
                                lease_seconds=args.lease_seconds, window_start=args.window_start)
    print(pipeline.report(result))
    return result.exit_code


def backtest_main(argv: list[str]) -> int:
    import datetime as dt
    p = argparse.ArgumentParser(prog="run_pipeline.py backtest",
                                description="Backtest the whole portfolio through the real Commander, from the "
                                            "strategy notebooks in backtest mode; the tear sheet is kept under runs/.")
    p.add_argument("--from", dest="start", required=True, help="first session, YYYY-MM-DD")
    p.add_argument("--to", dest="end", required=True, help="last session, YYYY-MM-DD")
    p.add_argument("--strategies", help="comma-separated strategy ids (default: every enabled strategy)")
    p.add_argument("--cash", type=float, default=1_000_000.0, help="starting cash (1,000,000)")
    p.add_argument("--benchmark", default="SPY", help="buy-and-hold benchmark symbol (SPY)")
    for flag in ("--mode", "--bus", "--audit", "--data"):
        p.add_argument(flag)
    args = p.parse_args(argv)
    try:
        start, end = dt.date.fromisoformat(args.start), dt.date.fromisoformat(args.end)
        settings = resolve({"mode": args.mode, "bus": args.bus, "audit": args.audit, "data": args.data})
    except ValueError as err:
        print(f"run_pipeline.py backtest: {err}", file=sys.stderr)
        return pipeline.EXIT_USAGE
    if end < start:
        print(f"run_pipeline.py backtest: --to {end} is before --from {start}", file=sys.stderr)
        return pipeline.EXIT_USAGE
    from lib.backtest.engine import BacktestError
    from lib.backtest.session import run_backtest
    try:
        done = run_backtest(settings, start=start, end=end, cash=args.cash, benchmark=args.benchmark,
                            strategies=[s.strip() for s in args.strategies.split(",")] if args.strategies else None)
    except BacktestError as err:
        print(f"backtest refused: {err}", file=sys.stderr)
        return pipeline.EXIT_USAGE
    print(f"backtest {done.run_id}: {done.message}")
    for sid, err in done.failed.items():
        print(f"  left out {sid}: {err}")
    if done.tearsheet:
        print(f"  tear sheet: {done.tearsheet}")
    return pipeline.EXIT_OK if done.result is not None and not done.failed else pipeline.EXIT_FAILED


def task_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="run_pipeline.py task",
                                description="Run this Cloud Run task's notebooks of a manifest "
                                            "(tasks[CLOUD_RUN_TASK_INDEX::CLOUD_RUN_TASK_COUNT]), each stored once.")
    p.add_argument("--manifest", required=True, help="gs://…/manifest.json written by the pipeline")
    args = p.parse_args(argv)
    from lib.executors.cloudrun import task_main as run_task
    return run_task(args.manifest)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["task"]:
        return task_main(argv[1:])
    if argv[:1] == ["backtest"]:
        return backtest_main(argv[1:])
    if argv[:1] == ["approve"]:
        return approve_main(argv[1:])
    if argv[:1] == ["commander"]:
        return commander_main(argv[1:])
    args = parse(argv)
    try:
        settings = resolve({"mode": args.mode, "bus": args.bus, "broker": args.broker, "audit": args.audit,
                            "executor": args.executor, "data": args.data})
    except ValueError as err:
        print(f"run_pipeline.py: {err}", file=sys.stderr)
        return pipeline.EXIT_USAGE
    problem = check_dates(args)
    if problem:
        print(f"run_pipeline.py: {problem}", file=sys.stderr)
        return pipeline.EXIT_USAGE
    options = pipeline.Options(
        strategies=[s.strip() for s in args.strategies.split(",") if s.strip()] if args.strategies else None,
        dry_run=args.dry_run, reconcile=args.reconcile, trigger=args.trigger, as_of=args.as_of,
        window_start=args.window_start, force=args.force, strategy_timeout=args.strategy_timeout)
    json_lines = args.log_format == "json"
    progress = Progress(stream=sys.stdout if json_lines else sys.stderr, json_lines=json_lines)
    result = pipeline.run(settings, options, progress)
    if args.log_format == "json":
        progress.log("run finished", "info" if result.exit_code == 0 else "error", result=result.to_dict())
    else:
        print(pipeline.report(result))
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
