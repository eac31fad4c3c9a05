"""The Commander's own book, built from the broker's reports of our orders (pure)."""
from __future__ import annotations

import datetime as dt

from lib import book
from lib.broker.base import Contract, OrderState

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 12, 3, 21, 30, tzinfo=UTC)


def order(ref, action, qty, filled, status="Filled", symbol="SPY"):
    return OrderState(order_id=1, perm_id=hash(ref) % 10**6, client_id=1, contract=Contract(symbol), action=action,
                      quantity=qty, order_type="MKT", limit_price=None, tif="DAY", order_ref=ref, status=status,
                      filled=filled, remaining=qty - filled)


def test_fills_are_counted_once_however_often_reported():
    first = book.update(None, [order("cmdr-20261203T210000Z-a-1", "BUY", 10, 4, "Submitted")], "cmdr-", NOW)
    assert first["positions"] == {"STK:SPY:USD": 4}
    again = book.update(first, [order("cmdr-20261203T210000Z-a-1", "BUY", 10, 10)], "cmdr-", NOW)
    assert again["positions"] == {"STK:SPY:USD": 10}
    same = book.update(again, [order("cmdr-20261203T210000Z-a-1", "BUY", 10, 10)], "cmdr-", NOW)
    assert same["positions"] == {"STK:SPY:USD": 10}
    sold = book.update(same, [order("cmdr-20261204T210000Z-b-1", "SELL", 3, 3)], "cmdr-", NOW)
    assert sold["positions"] == {"STK:SPY:USD": 7} and not sold["uncertain"]


def test_manual_part_is_the_holding_minus_the_book():
    b = {"positions": {"STK:SPY:USD": 7.0}}
    assert book.manual_parts(b, {"STK:SPY:USD": 47.0, "STK:GLD:USD": 5.0}) == {"STK:GLD:USD": 5.0, "STK:SPY:USD": 40.0}


def test_a_working_order_the_broker_forgot_marks_its_instrument_uncertain():
    b = book.update(None, [order("cmdr-20261203T210000Z-a-1", "BUY", 10, 2, "Submitted")], "cmdr-", NOW)
    later = book.update(b, [], "cmdr-", NOW + dt.timedelta(days=3))  # IB no longer reports it
    assert "STK:SPY:USD" in later["uncertain"] and later["positions"] == {"STK:SPY:USD": 2}
    settled = book.assign(later, "STK:SPY:USD", 10, NOW)
    assert settled["positions"] == {"STK:SPY:USD": 10} and not settled["uncertain"]


def test_finished_orders_are_folded_into_the_cutoff_and_never_counted_again():
    old = order("cmdr-20261101T210000Z-a-1", "BUY", 5, 5)
    b = book.update(None, [old], "cmdr-", NOW)
    assert b["orders"] == {} and b["positions"] == {"STK:SPY:USD": 5}  # older than KEEP: folded
    assert book.update(b, [old], "cmdr-", NOW)["positions"] == {"STK:SPY:USD": 5}  # reported again: not recounted
