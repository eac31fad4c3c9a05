"""One contract for both brokers: the simulator and the IB adapter against the fake IB gateway.

Each harness (tests/sim_harness.py, tests/ib_harness.py) yields a connected paper broker plus the
levers a test needs to move the market and act as another client. Fills may arrive asynchronously
from a real gateway, so the checks that follow a market move poll with `eventually`.
"""
from __future__ import annotations

import time

import pytest

from lib.broker import Contract, OrderRequest
from lib.errors import AccountMismatchError, BrokerConnectionError, UnknownContractError

SYMBOLS = ("SPY", "VIXY", "QQQ", "TLT", "GLD")
TIMEOUT = 10.0


@pytest.fixture(params=["sim", "ib"])
def harness(request, tmp_path):
    # No skip for a missing harness: an absent IB half must fail loudly, not pass quietly.
    if request.param == "sim":
        from tests.sim_harness import make_sim_harness as make
    else:
        from tests.ib_harness import make_ib_harness as make
    with make(tmp_path) as h:
        yield h


def eventually(read, check, timeout: float = TIMEOUT):
    """Call `read()` until `check(value)` holds or `timeout` passes; returns the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if check(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def order(symbol="SPY", action="BUY", quantity=10, order_type="MKT", limit=None, ref="contract-test"):
    return OrderRequest(contract=Contract(symbol), action=action, quantity=quantity, order_type=order_type,
                        limit_price=limit, order_ref=ref)


def open_order(broker, order_id):
    return next((o for o in broker.snapshot().open_orders if o.order_id == order_id), None)


def holding(broker, symbol):
    return next((h for h in broker.snapshot().holdings if h.contract.symbol == symbol), None)


def done(broker, order_id):
    return broker.wait([order_id], timeout=TIMEOUT, until="done")[order_id]


# ---- account and market data -------------------------------------------------------------------
def test_snapshot_reports_paper_account_and_holdings_after_a_fill(harness):
    broker = harness.broker
    before = broker.snapshot()
    assert before.account == harness.account and before.account.startswith("DU")
    assert broker.account_id() == harness.account
    assert before.net_liquidation > 0 and before.available_funds > 0

    harness.set_price("SPY", 100.0)
    placed = broker.place_order(order("SPY", "BUY", 10))
    assert done(broker, placed.order_id).status == "Filled"

    h = eventually(lambda: holding(broker, "SPY"), lambda h: h is not None and h.quantity == 10)
    assert h is not None and h.quantity == 10
    assert h.avg_cost > 0
    assert h.market_price == pytest.approx(100.0, rel=0.01)
    assert h.market_value == pytest.approx(10 * h.market_price)
    assert broker.snapshot().net_liquidation > 0


def test_history_has_a_200_day_lookback_oldest_first(harness):
    for symbol in SYMBOLS:
        bars = harness.broker.history(Contract(symbol), days=365)
        assert len(bars) >= 200, symbol
        dates = [b.date for b in bars]
        assert dates == sorted(dates) and len(set(dates)) == len(dates)
        assert all(b.close > 0 and b.low <= b.close <= b.high for b in bars)


def test_qualify_fills_in_conid_and_refuses_unknown_symbols(harness):
    spy = harness.broker.qualify(Contract("SPY"))
    assert spy.symbol == "SPY" and spy.conId > 0 and spy.secType == "STK"
    with pytest.raises(UnknownContractError, match="NOSUCHSYM"):
        harness.broker.qualify(Contract("NOSUCHSYM"))


# ---- orders ------------------------------------------------------------------------------------
def test_market_order_fills_with_price_and_minimum_commission(harness):
    harness.set_price("SPY", 100.0)
    placed = harness.broker.place_order(order("SPY", "BUY", 10))
    assert placed.order_id > 0 and placed.is_acknowledged
    state = done(harness.broker, placed.order_id)
    assert state.status == "Filled"
    assert state.filled == 10 and state.remaining == 0
    assert state.avg_fill_price == pytest.approx(100.0, rel=0.01)
    # 10 shares × $0.005 is below IB's $1 minimum, and $1 is below 1% of $1,000.
    assert state.commission == pytest.approx(1.0)


def test_limit_order_rests_then_fills_when_the_price_crosses(harness):
    broker = harness.broker
    harness.set_price("SPY", 100.0)
    placed = broker.place_order(order("SPY", "BUY", 10, "LMT", 95.0))
    state = broker.wait([placed.order_id], timeout=TIMEOUT)[placed.order_id]
    assert state.status == "Submitted"
    resting = open_order(broker, placed.order_id)
    assert resting is not None and resting.remaining == 10 and resting.limit_price == 95.0

    harness.set_price("SPY", 94.0)
    state = done(broker, placed.order_id)
    assert state.status == "Filled"
    assert 0 < state.avg_fill_price <= 95.0
    assert open_order(broker, placed.order_id) is None


def test_partial_fill_shows_filled_and_remaining(harness):
    broker = harness.broker
    harness.set_price("SPY", 100.0)
    placed = broker.place_order(order("SPY", "BUY", 10, "LMT", 90.0))
    broker.wait([placed.order_id], timeout=TIMEOUT)
    harness.partial_fill(placed.order_id, 4)

    resting = eventually(lambda: open_order(broker, placed.order_id), lambda o: o is not None and o.filled == 4)
    assert resting is not None and resting.filled == 4 and resting.remaining == 6
    assert not resting.is_terminal
    h = eventually(lambda: holding(broker, "SPY"), lambda h: h is not None and h.quantity == 4)
    assert h is not None and h.quantity == 4


def test_cancel_leaves_order_cancelled_and_gone_from_open_orders(harness):
    broker = harness.broker
    harness.set_price("SPY", 100.0)
    placed = broker.place_order(order("SPY", "BUY", 10, "LMT", 90.0))
    broker.wait([placed.order_id], timeout=TIMEOUT)
    assert open_order(broker, placed.order_id) is not None
    broker.cancel_order(placed.order_id)
    assert done(broker, placed.order_id).status == "Cancelled"
    assert open_order(broker, placed.order_id) is None
    assert holding(broker, "SPY") is None


def test_broker_rejection_is_inactive_with_error(harness):
    harness.set_price("SPY", 100.0)
    harness.reject_next_order("no trading permissions for the test")
    placed = harness.broker.place_order(order("SPY", "BUY", 10))
    state = done(harness.broker, placed.order_id)
    assert state.status == "Inactive"
    assert state.error and "no trading permissions for the test" in state.error
    assert open_order(harness.broker, placed.order_id) is None
    assert holding(harness.broker, "SPY") is None


def test_other_client_orders_show_in_snapshot_with_their_order_ref(harness):
    broker = harness.broker
    harness.set_price("SPY", 100.0)
    ours = broker.place_order(order("SPY", "BUY", 10, "LMT", 90.0, ref="ours"))
    other_id = harness.place_other_client_order("SPY", "BUY", 5, 80.0, order_ref="manual-tws")
    other = eventually(lambda: open_order(broker, other_id), lambda o: o is not None)
    assert other is not None
    assert other.order_ref == "manual-tws" and other.remaining == 5 and other.action == "BUY"
    assert other.client_id != ours.client_id
    assert open_order(broker, ours.order_id) is not None


def test_order_ref_round_trips(harness):
    broker = harness.broker
    harness.set_price("TLT", 100.0)
    ref = "cmd-20250602-abc123"
    placed = broker.place_order(order("TLT", "BUY", 3, "LMT", 90.0, ref=ref))
    assert placed.order_ref == ref
    assert broker.wait([placed.order_id], timeout=TIMEOUT)[placed.order_id].order_ref == ref
    resting = open_order(broker, placed.order_id)
    assert resting is not None and resting.order_ref == ref and resting.to_dict()["orderRef"] == ref


def test_dropped_connection_mid_placement_loses_nothing_and_invents_nothing(harness):
    harness.set_price("SPY", 100.0)
    a = harness.broker.place_order(order("SPY", "BUY", 10, "LMT", 90.0, ref="order-A"))
    a = harness.broker.wait([a.order_id], timeout=TIMEOUT)[a.order_id]
    assert a.is_acknowledged and not a.is_terminal

    harness.drop_connection()
    with pytest.raises(BrokerConnectionError):
        harness.broker.place_order(order("QQQ", "BUY", 7, ref="order-B"))

    broker = harness.reconnect()
    assert harness.broker is broker
    snap = broker.snapshot()
    refs = {o.order_ref for o in snap.open_orders}
    assert "order-A" in refs or any(h.contract.symbol == "SPY" for h in snap.holdings)
    assert "order-B" not in refs
    assert not any(h.contract.symbol == "QQQ" for h in snap.holdings)


def test_live_mode_on_a_paper_account_refuses_to_trade(harness):
    broker = harness.broker
    harness.set_price("SPY", 100.0)
    before = broker.snapshot()
    # The harness interface opens paper brokers only; the guard reads `mode` at placement time,
    # so this is the broker a mode="live" open would give (the sim suite also opens one for real).
    broker.mode = "live"
    with pytest.raises(AccountMismatchError, match="paper account"):
        broker.place_order(order("SPY", "BUY", 10, ref="must-not-exist"))
    after = broker.snapshot()
    assert [o.order_id for o in after.open_orders] == [o.order_id for o in before.open_orders]
    assert [h.to_dict() for h in after.holdings] == [h.to_dict() for h in before.holdings]
    assert all(o.order_ref != "must-not-exist" for o in after.open_orders)
