"""The simulator's command line, a person at TWS: `python -m lib.broker.sim [--db PATH] COMMAND`.

    trade SYMBOL BUY|SELL QTY [--limit PRICE]   trade now (MKT, or LMT that rests if it does not cross)
    order SYMBOL BUY|SELL QTY --limit PRICE [--ref REF] [--oca GROUP]   leave a LMT order resting
    stop SYMBOL BUY|SELL QTY --stop PRICE [--oca GROUP]   leave a STP order resting (e.g. a protective stop)
    bracket SYMBOL BUY|SELL QTY --take-profit PRICE --stop-loss PRICE [--limit PRICE]
        an entry (MKT, or LMT) with two children in one OCA group: a LMT take-profit and a STP stop-loss
    cancel ID | book | advance DATE|next | price SYMBOL PRICE | reset --yes [--cash N] [--account ID] [--as-of DATE]

Orders carry clientId 0 and no orderRef, like manual TWS orders. Exit status: 0 done, 1 the simulated
broker rejected the order, 2 bad input (with a message on stderr).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from lib.broker.base import Contract, OrderRequest, OrderState
from lib.broker.sim import (CONTRACTS, DEFAULT_ACCOUNT, DEFAULT_CASH, DEFAULT_DB, MANUAL_CLIENT_ID, SimBroker,
                            crosses, reset_state, triggered)
from lib.errors import BrokerError, OrderRejectedError, UnknownContractError


class _UsageError(Exception):
    """Bad input on the command line: printed, exit status 2."""


def _table(headers: list[str], rows: list[list]) -> str:
    """A plain-text table: numbers (int or float cells) right-aligned, text left-aligned."""
    numeric = [any(isinstance(r[i], (int, float)) for r in rows) for i in range(len(headers))]
    cells = [list(headers)] + [[_cell(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, numeric)).rstrip()
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)


def _shares(value: float) -> int | float:
    """Whole share counts print without decimals."""
    return int(value) if float(value).is_integer() else value


def _describe(state: OrderState) -> str:
    c = state.contract
    limit = f" @ {state.limit_price:g}" if state.limit_price else ""
    limit += f" stop {state.aux_price:g}" if state.aux_price else ""
    limit += f" parent {state.parent_id}" if state.parent_id else ""
    limit += f" oca {state.oca_group}" if state.oca_group else ""
    text = (f"order {state.order_id}: {state.action} {state.quantity:g} {c.symbol} {state.order_type}{limit}"
            f" -> {state.status}")
    if state.filled:
        text += f", filled {state.filled:g} at {state.avg_fill_price:.4f}, commission {state.commission:.2f}"
    if state.remaining and not state.is_terminal:
        text += f", {state.remaining:g} remaining"
    if state.error:
        text += f" ({state.error})"
    return text


def _book(broker: SimBroker) -> str:
    snap = broker.snapshot()
    lines = [f"account {snap.account}   as of {broker.as_of()} (close)   SYNTHETIC prices",
             _table(["", "USD"], [["cash", broker.cash()], ["net liquidation", snap.net_liquidation],
                                  ["available funds", snap.available_funds]]),
             "", "positions"]
    lines.append(_table(["symbol", "quantity", "avg cost", "price", "value"],
                        [[h.contract.symbol, _shares(h.quantity), h.avg_cost, h.market_price, h.market_value]
                         for h in snap.holdings]) if snap.holdings else "  (none)")
    lines += ["", "open orders"]
    lines.append(_table(["id", "client", "ref", "symbol", "action", "type", "qty", "limit", "stop", "parent", "oca",
                         "filled", "remaining", "status"],
                        [[o.order_id, o.client_id, o.order_ref, o.contract.symbol, o.action, o.order_type,
                          _shares(o.quantity), o.limit_price, o.aux_price, o.parent_id or None, o.oca_group,
                          _shares(o.filled), _shares(o.remaining), o.status] for o in snap.open_orders])
                 if snap.open_orders else "  (none)")
    return "\n".join(lines)


def _quantity(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"quantity must be a whole number of shares, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"quantity must be positive, got {value}")
    return value


def _price_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"price must be a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"price must be positive, got {text!r}")
    return value


def _action(text: str) -> str:
    if text.upper() not in ("BUY", "SELL"):
        raise argparse.ArgumentTypeError(f"action must be BUY or SELL, got {text!r}")
    return text.upper()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lib.broker.sim",
        description="Act on the simulated account like a person at TWS (orders carry clientId 0).")
    parser.add_argument("--db", type=Path, default=DEFAULT_DB, help=f"simulator state file (default {DEFAULT_DB})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def order_args(p, limit_required: bool):
        p.add_argument("symbol", type=str.upper)
        p.add_argument("action", type=_action, metavar="BUY|SELL")
        p.add_argument("quantity", type=_quantity)
        p.add_argument("--limit", type=_price_arg, required=limit_required, help="limit price")

    order_args(sub.add_parser("trade", help="trade now: MKT, or LMT with --limit (rests if it does not cross)"), False)
    resting = sub.add_parser("order", help="leave a LMT order resting (refused if it would fill now)")
    order_args(resting, True)
    resting.add_argument("--ref", default="", help="orderRef (default: none, as a manual order)")
    resting.add_argument("--oca", default="", help="one-cancels-all group (default: none)")
    stop = sub.add_parser("stop", help="leave a STP order resting (refused if it would trigger now)")
    order_args(stop, False)
    stop.add_argument("--stop", type=_price_arg, required=True, help="trigger price")
    stop.add_argument("--oca", default="", help="one-cancels-all group (default: none)")
    bracket = sub.add_parser("bracket", help="an entry with a take-profit (LMT) and a stop-loss (STP) child, one OCA group")
    order_args(bracket, False)
    bracket.add_argument("--take-profit", dest="take_profit", type=_price_arg, required=True)
    bracket.add_argument("--stop-loss", dest="stop_loss", type=_price_arg, required=True)
    sub.add_parser("cancel", help="cancel an open order").add_argument("order_id", type=int)
    sub.add_parser("book", help="cash, positions, open orders and net liquidation")
    sub.add_parser("advance", help="move the clock forward to DATE (or 'next' session), filling resting orders"
                   ).add_argument("date", help="YYYY-MM-DD, 'today' or 'next'")
    price = sub.add_parser("price", help="override a symbol's price until the clock moves")
    price.add_argument("symbol", type=str.upper)
    price.add_argument("price", type=_price_arg)
    reset = sub.add_parser("reset", help="erase the account and start over")
    reset.add_argument("--yes", action="store_true", help="confirm erasing everything")
    reset.add_argument("--cash", type=_price_arg, help=f"starting cash (default {DEFAULT_CASH:,.0f})")
    reset.add_argument("--account", help=f"account id (default {DEFAULT_ACCOUNT})")
    reset.add_argument("--as-of", dest="as_of", help="clock start YYYY-MM-DD (default: today's session)")
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.command == "reset":
        if not args.yes:
            raise _UsageError("reset erases every order, fill and position; add --yes to confirm")
        reset_state(args.db, account=args.account, cash=args.cash, as_of=args.as_of)
        print(f"reset {args.db}")
        return 0
    with SimBroker(args.db, client_id=MANUAL_CLIENT_ID) as broker:
        # A person at TWS is not bound by the pipeline's mode; trade in whichever mode the account is.
        broker.mode = "paper" if broker.account_id().startswith("DU") else "live"
        # Nor by config/live.account: the account guard's own checks still apply.
        broker.expected_account = broker.account_id()
        if args.command in ("stop", "bracket"):
            return _contingent(broker, args)
        if args.command in ("trade", "order"):
            if args.symbol not in CONTRACTS:
                raise _UsageError(f"unknown symbol {args.symbol!r}; the simulator trades {', '.join(CONTRACTS)}")
            if args.command == "order":
                now = broker.price(args.symbol)
                if crosses(args.action, now, args.limit):
                    raise _UsageError(f"a {args.action} limit of {args.limit:g} would fill now ({args.symbol} is at "
                                      f"{now:g}); use 'trade' to trade now")
            state = broker.place_order(OrderRequest(
                contract=Contract(args.symbol), action=args.action, quantity=args.quantity,
                order_type="LMT" if args.limit else "MKT", limit_price=args.limit,
                order_ref=getattr(args, "ref", "")), oca_group=getattr(args, "oca", ""))
            print(_describe(state))
            return 1 if state.status == "Inactive" else 0
        if args.command == "cancel":
            broker.cancel_order(args.order_id)
            print(_describe(broker.orders([args.order_id])[args.order_id]))
        elif args.command == "book":
            print(_book(broker))
        elif args.command == "advance":
            day = args.date
            if day.strip().lower() == "next":  # the session after the clock
                later = [d for d in broker.market.sessions if d > broker.as_of()]
                if not later:
                    raise _UsageError(f"the clock is at the last bundled session {broker.as_of()}")
                day = later[0].isoformat()
            for state in broker.advance_to(day):
                print(_describe(state))
            print(f"clock at {broker.as_of()}")
        elif args.command == "price":
            for state in broker.set_price(args.symbol, args.price):
                print(_describe(state))
            print(f"{args.symbol} at {args.price:g} until the clock moves")
    return 0


def _contingent(broker: SimBroker, args: argparse.Namespace) -> int:
    """`stop` and `bracket`: orders that work only once a price, or their parent's fill, triggers them."""
    if args.symbol not in CONTRACTS:
        raise _UsageError(f"unknown symbol {args.symbol!r}; the simulator trades {', '.join(CONTRACTS)}")
    now = broker.price(args.symbol)
    exit_action = "SELL" if args.action == "BUY" else "BUY"
    if args.command == "stop":
        if args.limit:
            raise _UsageError("stop takes --stop PRICE, not --limit")
        if triggered(args.action, now, args.stop):
            raise _UsageError(f"a {args.action} stop at {args.stop:g} would trigger now ({args.symbol} is at {now:g})")
        state = broker.place_order(OrderRequest(contract=Contract(args.symbol), action=args.action,
                                                quantity=args.quantity, order_type="STP"),
                                   aux_price=args.stop, oca_group=args.oca)
        print(_describe(state))
        return 1 if state.status == "Inactive" else 0
    entry = args.limit or now
    profit_side, loss_side = (args.take_profit > entry, args.stop_loss < entry) if args.action == "BUY" \
        else (args.take_profit < entry, args.stop_loss > entry)
    if not (profit_side and loss_side):
        raise _UsageError(f"a {args.action} bracket entered at {entry:g} needs its take-profit beyond the entry and its "
                          f"stop-loss on the other side (got take-profit {args.take_profit:g}, stop-loss {args.stop_loss:g})")
    parent = broker.place_order(OrderRequest(contract=Contract(args.symbol), action=args.action, quantity=args.quantity,
                                             order_type="LMT" if args.limit else "MKT", limit_price=args.limit))
    print(_describe(parent))
    if parent.status == "Inactive":
        return 1
    group = f"bracket-{parent.order_id}"
    for request, aux in ((OrderRequest(contract=Contract(args.symbol), action=exit_action, quantity=args.quantity,
                                       order_type="LMT", limit_price=args.take_profit), None),
                         (OrderRequest(contract=Contract(args.symbol), action=exit_action, quantity=args.quantity,
                                       order_type="STP"), args.stop_loss)):
        print(_describe(broker.place_order(request, aux_price=aux, parent_id=parent.order_id, oca_group=group)))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns 0 on success, 1 when the simulated broker rejected an order, 2 on bad input."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except (_UsageError, ValueError, OrderRejectedError, UnknownContractError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
