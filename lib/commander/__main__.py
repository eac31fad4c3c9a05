"""Command line for the decision engine.

    python -m lib.commander decide FILE|-    print the Decision for one inputs object as JSON
    python -m lib.commander replay FILE|-    re-derive an execution record's decision and compare

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
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
