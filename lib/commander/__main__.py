"""Command line for the decision engine.

    python -m lib.commander decide FILE|-    print the Decision for one inputs object as JSON
    python -m lib.commander replay FILE|-    re-derive an execution record's decision and compare
    python -m lib.commander clear-halt STRATEGY [--bus URL]
                                             clear a max_drawdown halt (the peak restarts at today's equity)

Exit codes: 0 a decision (even one that places nothing) / a replay that matches; 1 a replay whose
orders differ; 2 invalid input, with the reason on stderr.
"""
from __future__ import annotations

import argparse
import json
import sys

from lib.canonical import dumps
from lib.commander import InputError, decide, replay


def _read(name: str):
    try:
        text = sys.stdin.read() if name == "-" else open(name, encoding="utf-8").read()
    except OSError as exc:
        raise InputError(f"cannot read {name}: {exc.strerror}") from None
    try:
        # NaN in a document is refused, not silently parsed into a float.
        return json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(InputError(
            f"{name}: {c} is not valid JSON; documents may not hold NaN or infinity")))
    except json.JSONDecodeError as exc:
        raise InputError(f"{name}: not valid JSON: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.commander", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("decide", help="print the Decision for an inputs object").add_argument("file")
    sub.add_parser("replay", help="re-derive an execution record's decision").add_argument("file")
    clear = sub.add_parser("clear-halt", help="clear a strategy's max_drawdown halt")
    clear.add_argument("strategy")
    clear.add_argument("--bus", help="bus URL (default: $COMMANDER_BUS or sqlite:///runs/bus.sqlite)")
    args = parser.parse_args(argv)
    if args.command == "clear-halt":
        return clear_halt(args.strategy, args.bus)
    try:
        data = _read(args.file)
        if args.command == "decide":
            print(dumps(decide(data), indent=2))
            return 0
        result = replay(data)
    except InputError as exc:
        print(f"invalid input: {exc}", file=sys.stderr)
        return 2
    print(dumps(result, indent=2))
    verdict = "match" if result["orders_match"] and result["cancels_match"] else "DIFFER"
    print(f"replay of {result['execution_id']}: orders {verdict}", file=sys.stderr)
    return 0 if verdict == "match" else 1


def clear_halt(strategy: str, bus_url: str | None) -> int:
    from lib import documents as docs
    from lib.bus import open_bus
    from lib.commander import ledger
    from lib.errors import PipelineError
    from lib.settings import resolve
    path = docs.ledger_path(strategy)
    try:
        with open_bus(resolve({"bus": bus_url}).bus) as bus:
            current = bus.get(path)
            if current is None:
                print(f"{path} does not exist: nothing to clear", file=sys.stderr)
                return 2
            if not current.get("halted"):
                print(f"{path} is not halted")
                return 0
            bus.transact(path, lambda cur: ledger.clear(cur) if cur else None)
    except (PipelineError, ValueError) as exc:
        print(f"clear-halt failed: {exc}", file=sys.stderr)
        return 2
    print(f"cleared the halt of {strategy}: it trades again from the next execution, peak reset to its equity")
    return 0


if __name__ == "__main__":
    sys.exit(main())
