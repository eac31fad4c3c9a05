"""Crash-safe order management in IBBroker against the fake IB Gateway.

orders_by_ref (any client, any state, fills while nobody was connected), reserved order ids across
gateway restarts that roll nextValidId back, error 103, warnings vs rejections, cancels that only
IB itself confirms, sends whose fate is uncertain, and the fields of contingent orders.
"""
from __future__ import annotations

import time

import pytest

from lib.broker import Contract, OrderRequest, open_broker
from lib.broker.ib import (CANCEL_REFUSED, CANCELLED, REJECTED, WARNING, IBBroker, order_message_kind)
from lib.errors import BrokerConnectionError, OrderRejectedError, SendUncertainError
from tests.fake_gateway import FakeGateway
from tests.ib_harness import OTHER_CLIENT_ID, watch_ib_decoding

SPY, QQQ = Contract("SPY"), Contract("QQQ")
WORKING = ("PreSubmitted", "Submitted")


@pytest.fixture(autouse=True)
def no_decoding_errors():
    with watch_ib_decoding() as watch:
        yield
    if watch.failures:
        pytest.fail(f"ib_async could not decode messages: {watch.failures}")


@pytest.fixture
def gateway():
    gw = FakeGateway().start()
    yield gw
    gw.stop()
    assert gw.protocol_errors == []


def connect(gw: FakeGateway, client_id: int = 1, **options) -> IBBroker:
    deadline = time.monotonic() + 3  # after a drop the gateway must have seen the old socket go
    while client_id in gw.connected_client_ids() and time.monotonic() < deadline:
        time.sleep(0.01)
    return open_broker(f"ib://127.0.0.1:{gw.port}?client_id={client_id}&timeout=3", mode="paper", **options)


@pytest.fixture
def broker(gateway):
    b = connect(gateway)
    yield b
    b.close()


# ---- orders_by_ref -----------------------------------------------------------------------------
def test_orders_by_ref_finds_every_order_of_any_client_in_any_state(gateway, broker):
    resting = broker.place_order(OrderRequest(SPY, "BUY", 3, "LMT", 450.0, order_ref="cmdr-A-1"))
    filled = broker.place_order(OrderRequest(QQQ, "BUY", 2, order_ref="cmdr-A-2"))
    cancelled = broker.place_order(OrderRequest(SPY, "BUY", 1, "LMT", 400.0, order_ref="cmdr-A-3"))
    broker.cancel_order(cancelled.order_id)
    gateway.reject_next_order("no")
    broker.place_order(OrderRequest(SPY, "BUY", 1, "LMT", 400.0, order_ref="cmdr-A-4"))
    other = gateway.inject_order("TLT", "SELL", 7, 99.0, order_ref="cmdr-A-5", client_id=OTHER_CLIENT_ID)
    manual = gateway.inject_order("GLD", "BUY", 4, 150.0, order_ref="cmdr-A-6")
    gateway.inject_order("GLD", "BUY", 4, 150.0, order_ref="cmdr-B-1")
    broker.wait([filled.order_id, cancelled.order_id], 3, until="done")

    reader = connect(gateway, client_id=2)  # another client id sees them all
    try:
        found = {st.order_ref: st for st in reader.orders_by_ref("cmdr-A-")}
    finally:
        reader.close()
    assert sorted(found) == [f"cmdr-A-{n}" for n in range(1, 7)]
    assert {ref: st.status for ref, st in found.items()} == {
        "cmdr-A-1": "Submitted", "cmdr-A-2": "Filled", "cmdr-A-3": "Cancelled", "cmdr-A-4": "Inactive",
        "cmdr-A-5": "Submitted", "cmdr-A-6": "Submitted"}
    assert all(st.confirmed for st in found.values())
    assert (found["cmdr-A-1"].order_id, found["cmdr-A-1"].client_id, found["cmdr-A-1"].remaining) == (
        resting.order_id, 1, 3)
    a2 = found["cmdr-A-2"]  # completed: ids from its executions, fill and commission counted
    assert (a2.order_id, a2.client_id, a2.filled, a2.remaining, a2.commission) == (filled.order_id, 1, 2, 0, 1.0)
    assert a2.avg_fill_price == pytest.approx(430.0)
    assert (found["cmdr-A-5"].client_id, found["cmdr-A-5"].perm_id) == (OTHER_CLIENT_ID, other.perm_id)
    assert (found["cmdr-A-6"].client_id, found["cmdr-A-6"].perm_id) == (0, manual.perm_id)


def test_orders_by_ref_sees_fills_that_happened_while_nobody_was_connected(gateway, broker):
    first = broker.place_order(OrderRequest(SPY, "BUY", 10, "LMT", 450.0, order_ref="cmdr-C-1"))
    second = broker.place_order(OrderRequest(QQQ, "SELL", 5, "LMT", 440.0, order_ref="cmdr-C-2"))
    gateway.drop_connections()
    gateway.partial_fill(first.order_id, 4, client_id=1)
    gateway.set_price("SPY", 449.0)  # the rest fills, nobody is told
    gateway.partial_fill(second.order_id, 2, client_id=1)
    broker.close()
    again = connect(gateway)
    try:
        found = {st.order_ref: st for st in again.orders_by_ref("cmdr-C-")}
        c1, c2 = found["cmdr-C-1"], found["cmdr-C-2"]
        assert (c1.status, c1.order_id, c1.filled, c1.remaining) == ("Filled", first.order_id, 10, 0)
        assert c1.avg_fill_price == pytest.approx((4 * 450.0 + 6 * 449.0) / 10)
        assert (c2.status, c2.filled, c2.remaining) == ("Submitted", 2, 3)
        # IB's completed-orders list may no longer hold an order: its executions still tell.
        gateway.forget_completed_orders()
        [only] = again.orders_by_ref("cmdr-C-1")
        assert (only.status, only.quantity, only.filled, only.order_id, only.client_id) == (
            "Filled", 10, 10, first.order_id, 1)
        assert only.action == "BUY" and only.contract.symbol == "SPY" and only.confirmed
        assert again.orders_by_ref("nothing-") == []
    finally:
        again.close()


# ---- order ids ---------------------------------------------------------------------------------
def test_reserved_ids_survive_a_rolled_back_restart_and_a_reused_id_fails_with_103(gateway, broker):
    ids = broker.reserve_order_ids(3, floor=0)
    assert ids == [ids[0], ids[0] + 1, ids[0] + 2]
    assert broker.reserve_order_ids(2, floor=0)[0] == ids[2] + 1  # never hands out an id twice
    assert broker.reserve_order_ids(1, floor=500) == [501]
    placed = broker.place_order(OrderRequest(SPY, "BUY", 1, order_ref="cmdr-D-1", order_id=ids[1]))
    assert placed.order_id == ids[1] and placed.status in WORKING + ("Filled",)
    broker.wait([ids[1]], 3, until="done")
    # Our own sequence moved past every reservation.
    auto = broker.place_order(OrderRequest(SPY, "BUY", 1, "LMT", 400.0, order_ref="cmdr-D-2"))
    assert auto.order_id > 501  # (qualifying the contract may take a request id from the same sequence)
    with pytest.raises(OrderRejectedError, match="already used"):  # ib_async would modify it
        broker.place_order(OrderRequest(SPY, "BUY", 1, "LMT", 401.0, order_ref="cmdr-D-x", order_id=auto.order_id))

    gateway.restart(next_order_id=1)  # IB Gateway came back with nextValidId rolled back
    with pytest.raises(BrokerConnectionError):
        broker.snapshot()
    broker.close()
    again = connect(gateway)
    try:
        # Without a floor the rolled-back id is reused: IB refuses it, clearly, and nothing is retried.
        [stale] = again.reserve_order_ids(1)
        assert stale <= ids[1]
        refused = again.place_order(OrderRequest(SPY, "BUY", 1, "LMT", 400.0, order_ref="cmdr-E-1", order_id=stale))
        assert (refused.status, refused.confirmed) == ("Inactive", True)
        assert refused.error.startswith("IB error 103: Duplicate order id")
        assert again.wait([stale], 1, until="done")[stale].status == "Inactive"
        assert "cmdr-E-1" not in [o.order_ref for o in gateway.orders()]
        # With the persisted floor every id is fresh.
        fresh = again.reserve_order_ids(2, floor=auto.order_id)
        assert fresh == [auto.order_id + 1, auto.order_id + 2]
        for n, order_id in enumerate(fresh, start=2):
            state = again.place_order(OrderRequest(SPY, "BUY", 1, "LMT", 400.0, order_ref=f"cmdr-E-{n}",
                                                   order_id=order_id))
            assert state.status in WORKING and state.error is None
        assert gateway.received_refs().count("cmdr-E-2") == 1
        assert {o.order_ref: o.order_id for o in gateway.orders() if o.order_ref.startswith("cmdr-E")} == {
            "cmdr-E-2": fresh[0], "cmdr-E-3": fresh[1]}
    finally:
        again.close()


# ---- message codes -----------------------------------------------------------------------------
def test_message_codes_are_classified_from_ibs_table():
    assert [order_message_kind(c) for c in (399, 404, 2109, 2137, 10349)] == [WARNING] * 5
    assert [order_message_kind(c) for c in (103, 200, 201, 203, 163, 10006)] == [REJECTED] * 6
    assert [order_message_kind(c) for c in (161, 10147, 10148)] == [CANCEL_REFUSED] * 3
    assert order_message_kind(202) == CANCELLED
    assert order_message_kind(110) == REJECTED and order_message_kind(110, acknowledged=True) == WARNING


def test_warnings_leave_the_order_working_and_rejections_end_it(gateway, broker):
    held = "Order Message:\nSELL 5 SPY\nWarning: your order will not be placed at the exchange until 09:30:00"
    gateway.warn_next_order(399, held)
    gateway.warn_next_order(2109, "Order Event Warning: Attribute 'Outside Regular Trading Hours' is ignored")
    gateway.warn_next_order(10349, "Order TIF was set to DAY based on order preset.")  # ib_async cancels locally
    state = broker.place_order(OrderRequest(SPY, "SELL", 5, "LMT", 600.0, order_ref="warned"))
    assert (state.status, state.error, state.confirmed) == ("Submitted", None, True)
    assert [w.split(":")[0] for w in state.warnings] == ["IB warning 399", "IB warning 2109", "IB warning 10349"]
    assert state.warnings[0] == f"IB warning 399: {held}"
    gateway.warn_next_order(404, "Shares for this order are not immediately available for short sale.")
    short = broker.place_order(OrderRequest(QQQ, "SELL", 5, "LMT", 600.0, order_ref="short"))
    assert short.status == "Submitted" and short.warnings[0].startswith("IB warning 404: Shares")
    later = broker.wait([state.order_id, short.order_id], 0.2)
    assert [later[i].status for i in (state.order_id, short.order_id)] == ["Submitted", "Submitted"]

    gateway.reject_next_order("The security is not available or allowed for this account", code=203)
    refused = broker.place_order(OrderRequest(SPY, "BUY", 1, "LMT", 400.0, order_ref="refused"))
    assert (refused.status, refused.confirmed, refused.warnings) == ("Inactive", True, [])
    assert refused.error == "IB error 203: The security is not available or allowed for this account"
    assert broker.wait([refused.order_id], 1, until="done")[refused.order_id].status == "Inactive"


# ---- cancels -----------------------------------------------------------------------------------
def test_a_cancel_refused_with_161_is_unconfirmed_until_ib_reports_the_fill(gateway, broker):
    state = broker.place_order(OrderRequest(SPY, "BUY", 5, "LMT", 450.0, order_ref="raced"))
    gateway.refuse_cancels_with(161)
    gateway.delay_fill_reports(1.0)
    gateway.set_price("SPY", 449.0)  # filled at IB; the report is on its way
    broker.cancel_order(state.order_id)  # IB answers 161; ib_async marks the order Cancelled itself
    guessed = broker.wait([state.order_id], 0.3, until="done")[state.order_id]
    assert (guessed.status, guessed.confirmed) == ("Cancelled", False)
    final = broker.wait([state.order_id], 3, until="done")[state.order_id]
    assert (final.status, final.confirmed, final.filled, final.remaining) == ("Filled", True, 5, 0)


def test_a_second_cancel_while_ib_is_still_cancelling_waits_for_ibs_word(gateway, broker):
    state = broker.place_order(OrderRequest(SPY, "BUY", 5, "LMT", 450.0, order_ref="slow-cancel"))
    gateway.delay_cancels(1.0)
    broker.cancel_order(state.order_id)
    pending = broker.wait([state.order_id], 0.15, until="done")[state.order_id]
    assert (pending.status, pending.is_terminal) == ("PendingCancel", False)
    broker.cancel_order(state.order_id)  # IB: 10148, state PendingCancel
    guessed = broker.wait([state.order_id], 0.15, until="done")[state.order_id]
    assert (guessed.status, guessed.confirmed) == ("Cancelled", False)
    final = broker.wait([state.order_id], 3, until="done")[state.order_id]
    assert (final.status, final.confirmed, final.filled) == ("Cancelled", True, 0)


# ---- uncertain sends ---------------------------------------------------------------------------
def test_a_drop_before_the_acknowledgement_raises_send_uncertain_and_the_order_is_found_later(gateway, broker):
    [order_id] = broker.reserve_order_ids(1)
    gateway.drop_before_ack(1)
    with pytest.raises(SendUncertainError) as info:
        broker.place_order(OrderRequest(SPY, "BUY", 4, order_ref="cmdr-F-1", order_id=order_id))
    assert (info.value.order_id, info.value.order_ref) == (order_id, "cmdr-F-1")
    assert isinstance(info.value, BrokerConnectionError) and "cmdr-F-1" in str(info.value)
    broker.close()
    again = connect(gateway)
    try:
        deadline = time.monotonic() + 3  # the MKT order fills at the gateway meanwhile
        while gateway.orders()[0].status != "Filled" and time.monotonic() < deadline:
            time.sleep(0.01)
        [found] = again.orders_by_ref("cmdr-F-")
        assert (found.order_id, found.status, found.filled, found.confirmed) == (order_id, "Filled", 4, True)
        assert gateway.received_refs() == ["cmdr-F-1"]
    finally:
        again.close()


# ---- contingent orders -------------------------------------------------------------------------
def test_stop_bracket_and_oca_fields_round_trip(gateway, broker):
    parent = gateway.inject_order("SPY", "BUY", 10, 490.0, order_ref="br-parent", client_id=OTHER_CLIENT_ID)
    common = dict(parent_id=parent.order_id, oca_group="br-oca", client_id=OTHER_CLIENT_ID)
    gateway.inject_order("SPY", "SELL", 10, None, order_type="STP", aux_price=480.0, order_ref="br-stop", **common)
    gateway.inject_order("SPY", "SELL", 10, 520.0, order_ref="br-take", **common)
    gateway.inject_order("QQQ", "SELL", 5, 419.0, order_type="STP LMT", aux_price=420.0, order_ref="br-stplmt",
                         client_id=OTHER_CLIENT_ID)
    seen = {o.order_ref: o for o in broker.snapshot().open_orders}
    stop, take, stop_limit = seen["br-stop"], seen["br-take"], seen["br-stplmt"]
    assert (stop.order_type, stop.aux_price, stop.limit_price, stop.parent_id, stop.oca_group) == (
        "STP", 480.0, None, parent.order_id, "br-oca")
    assert (take.aux_price, take.limit_price, take.parent_id, take.oca_group) == (None, 520.0, parent.order_id, "br-oca")
    assert (stop_limit.order_type, stop_limit.aux_price, stop_limit.limit_price) == ("STP LMT", 420.0, 419.0)
    assert (seen["br-parent"].aux_price, seen["br-parent"].parent_id, seen["br-parent"].oca_group) == (None, 0, "")

    gateway.set_price("SPY", 485.0)  # the parent fills; the stop (480) is not reached
    gateway.set_price("SPY", 479.0)  # the stop fills; OCA cancels the take-profit
    found = {o.order_ref: o for o in broker.orders_by_ref("br-")}
    assert {r: o.status for r, o in found.items()} == {
        "br-parent": "Filled", "br-stop": "Filled", "br-take": "Cancelled", "br-stplmt": "Submitted"}
    assert (found["br-stop"].aux_price, found["br-stop"].oca_group, found["br-stop"].filled) == (480.0, "br-oca", 10)
    assert gateway.positions() == {}


def test_harness_restart_keeps_the_gateways_state():
    from tests.ib_harness import make_ib_harness
    with make_ib_harness() as h:
        h.broker.place_order(OrderRequest(SPY, "BUY", 2, "LMT", 450.0, order_ref="kept"))
        port = h.gateway.port
        fresh = h.restart_gateway(next_order_id=1)
        assert h.gateway.port == port and fresh is h.broker
        assert [o.order_ref for o in fresh.snapshot().open_orders] == ["kept"]
