"""Reconcile reads a consistent snapshot: a fill landing between two reads is never missed."""
from __future__ import annotations

import pytest

from lib.broker import Contract, OrderRequest
from lib.broker.sim import MANUAL_CLIENT_ID, SimBroker
from lib.errors import BrokerError
from lib.reconcile import consistent_snapshot


class FillsBetweenReads:
    """A real simulator connection; after chosen reads, another client's resting order fills, as a
    fill arriving between reconcile's reads of positions and open orders would."""

    def __init__(self, broker: SimBroker, operator: SimBroker, order_ids: list[int]):
        self.broker, self.operator, self.pending = broker, operator, list(order_ids)
        self.reads = 0

    def snapshot(self):
        snap = self.broker.snapshot()
        self.reads += 1
        if self.pending:
            self.operator.fill(self.pending.pop(0), 1)
        return snap


@pytest.fixture
def pair(tmp_path):
    with SimBroker(tmp_path / "sim.sqlite", as_of="2026-11-20") as broker, \
            SimBroker(tmp_path / "sim.sqlite", client_id=MANUAL_CLIENT_ID) as op:
        yield broker, op


def resting(op, n):
    return [op.place_order(OrderRequest(Contract("SPY"), "BUY", 5, "LMT", 1.0, order_ref="manual")).order_id
            for _ in range(n)]


def test_a_fill_between_reads_is_read_again(pair):
    broker, op = pair
    reader = FillsBetweenReads(broker, op, resting(op, 1))
    snap, reads = consistent_snapshot(reader)
    assert reads == 3  # read, fill landed, read (differs), read (agrees)
    assert {h.contract.symbol: h.quantity for h in snap.holdings} == {"SPY": 1}
    assert [o.remaining for o in snap.open_orders] == [4]


def test_an_account_that_never_settles_writes_nothing(pair):
    broker, op = pair
    reader = FillsBetweenReads(broker, op, resting(op, 1) * 5)
    with pytest.raises(BrokerError, match="kept changing while it was read"):
        consistent_snapshot(reader, max_reads=3)
