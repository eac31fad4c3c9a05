"""What only the simulator does: persistence, concurrency, costs, its clock, its CLI and its bars."""
from __future__ import annotations

import datetime as dt
import hashlib
import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest

from lib.broker import Contract, OrderRequest, open_broker
from lib.broker import sim_bars
from lib.broker.sim import (DEFAULT_CASH, SimBroker, default_as_of, ib_fixed_commission, load_market,
                            position_after)
from lib.errors import (AccountMismatchError, BrokerConnectionError, OrderRejectedError,
                        UnknownContractError)

ROOT = Path(__file__).resolve().parents[1]
AS_OF = dt.date(2025, 6, 2)


@pytest.fixture
def db(tmp_path):
    return tmp_path / "sim.sqlite"


@pytest.fixture
def broker(db):
    with SimBroker(db, as_of=AS_OF) as b:
        yield b


def buy(symbol="SPY", quantity=10, order_type="MKT", limit=None, ref=""):
    return OrderRequest(Contract(symbol), "BUY", quantity, order_type, limit, order_ref=ref)


def sell(symbol="SPY", quantity=10, order_type="MKT", limit=None, ref=""):
    return OrderRequest(Contract(symbol), "SELL", quantity, order_type, limit, order_ref=ref)


# ---- state ---------------------------------------------------------------------------------------
def test_state_persists_across_instances(db):
    with SimBroker(db, as_of=AS_OF) as first:
        filled = first.place_order(buy("SPY", 10))
        resting = first.place_order(buy("QQQ", 5, "LMT", 1.0, ref="keep"))
        first.set_price("GLD", 123.0)
        cash = first.cash()
    with open_broker(f"sim:///{db}", mode="paper") as second:
        assert second.as_of() == AS_OF
        assert second.cash() == pytest.approx(cash)
        snap = second.snapshot()
        assert [(h.contract.symbol, h.quantity) for h in snap.holdings] == [("SPY", 10)]
        assert [(o.order_id, o.order_ref) for o in snap.open_orders] == [(resting.order_id, "keep")]
        assert second.price("GLD") == 123.0
        assert second.orders()[filled.order_id].status == "Filled"
        assert second.place_order(buy("SPY", 1)).order_id == resting.order_id + 1


def test_reopening_with_a_different_account_or_cash_is_refused(db):
    SimBroker(db, account="DU7654321", cash=50_000).close()
    with pytest.raises(ValueError, match="DU7654321"):
        SimBroker(db, account="DU0000009")
    with pytest.raises(ValueError, match="50,000"):
        SimBroker(db, cash=60_000)
    with SimBroker(db, account="DU7654321", cash=50_000) as same:
        assert same.account_id() == "DU7654321" and same.cash() == 50_000


def test_url_options_and_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open_broker("sim", mode="paper") as b:
        assert b.path == Path("runs/sim.sqlite") and (tmp_path / "runs" / "sim.sqlite").exists()
        assert b.account_id() == "DU0000001" and b.cash() == DEFAULT_CASH
        assert b.as_of() == default_as_of(load_market())
        assert b.client_id == 1 and b.slippage_bps == 5.0
    url = f"sim:///{tmp_path}/x.sqlite?as_of=2024-03-01&account=DU1112223&cash=25000&slippage_bps=0&client_id=7"
    with open_broker(url, mode="paper", expected_account="DU1112223") as b:
        assert (b.as_of(), b.account_id(), b.cash(), b.client_id, b.slippage_bps) == (
            dt.date(2024, 3, 1), "DU1112223", 25_000, 7, 0.0)
        assert b.place_order(buy("SPY", 1)).client_id == 7
    with pytest.raises(ValueError, match="colour"):
        open_broker("sim?colour=red", mode="paper")
    with pytest.raises(ValueError, match="not 'sim'"):
        open_broker("sim://elsewhere", mode="paper")


def test_closed_broker_raises_connection_error(broker):
    broker.close()
    broker.close()  # idempotent
    for call in (broker.snapshot, broker.account_id, lambda: broker.qualify(Contract("SPY")),
                 lambda: broker.history(Contract("SPY"), 10), lambda: broker.place_order(buy()),
                 lambda: broker.cancel_order(1), lambda: broker.wait([1], 0)):
        with pytest.raises(BrokerConnectionError, match="closed"):
            call()


def _place_many(db: str, worker: int, count: int, go) -> None:
    with SimBroker(db, client_id=100 + worker) as b:
        go.wait(60)  # start together, so the writers really contend
        for i in range(count):
            b.place_order(OrderRequest(Contract("SPY"), "BUY", 1, order_ref=f"w{worker}-{i}"))


def test_parallel_processes_lose_no_order(db):
    SimBroker(db, as_of=AS_OF).close()
    ctx = multiprocessing.get_context("spawn")
    go = ctx.Event()
    procs = [ctx.Process(target=_place_many, args=(str(db), w, 60, go)) for w in range(4)]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with SimBroker(db) as b:
        orders = b.orders()
        fills = b.fills()
        assert sorted(orders) == list(range(1, 241))
        assert {o.order_ref for o in orders.values()} == {f"w{w}-{i}" for w in range(4) for i in range(60)}
        assert all(o.status == "Filled" for o in orders.values())
        assert len(fills) == 240
        assert b.snapshot().holdings[0].quantity == 240
        spent = sum(f["quantity"] * f["price"] + f["commission"] for f in fills)
        assert b.cash() == pytest.approx(DEFAULT_CASH - spent)


# ---- validation and rejections ----------------------------------------------------------------
@pytest.mark.parametrize("quantity", [0, -5, 1.5, "10", True, float("nan")])
def test_bad_quantity_refused_before_sending(broker, quantity):
    with pytest.raises(OrderRejectedError, match="quantity"):
        broker.place_order(buy("SPY", quantity))
    assert broker.orders() == {}


def test_limit_order_without_price_refused(broker):
    with pytest.raises(OrderRejectedError, match="limit price"):
        broker.place_order(buy("SPY", 1, "LMT", None))
    assert broker.orders() == {}


def test_live_mode_on_paper_account_stores_nothing(db):
    SimBroker(db, as_of=AS_OF).close()
    with open_broker(f"sim:///{db}", mode="live") as live:
        with pytest.raises(AccountMismatchError, match="paper account"):
            live.place_order(buy("SPY", 1))
        assert live.orders() == {} and live.fills() == [] and live.cash() == DEFAULT_CASH
    with open_broker(f"sim:///{db}", mode="paper", expected_account="DU9999999") as wrong:
        with pytest.raises(AccountMismatchError, match="DU9999999"):
            wrong.place_order(buy("SPY", 1))
        assert wrong.orders() == {}


def test_unknown_symbol_order_is_inactive_error_200(broker):
    state = broker.place_order(buy("NOSUCH", 1))
    assert state.status == "Inactive" and "Error 200" in state.error and "NOSUCH" in state.error
    assert broker.snapshot().holdings == [] and broker.cash() == DEFAULT_CASH
    with pytest.raises(UnknownContractError, match="NOSUCH"):
        broker.history(Contract("NOSUCH"), 5)


def test_buy_beyond_available_funds_is_inactive(broker):
    price = broker.price("SPY")
    resting = broker.place_order(buy("SPY", 1000, "LMT", round(price * 0.5, 2)))
    available = broker.snapshot().available_funds
    assert available == pytest.approx(DEFAULT_CASH - 1000 * resting.limit_price)
    too_many = int(available / price) + 1
    state = broker.place_order(buy("SPY", too_many))
    assert state.status == "Inactive" and "insufficient available funds" in state.error
    assert broker.cash() == DEFAULT_CASH
    assert broker.place_order(buy("SPY", too_many - 20)).status == "Filled"


def test_cancel_only_own_orders_unless_operator(db):
    SimBroker(db, as_of=AS_OF).close()
    with SimBroker(db, client_id=1) as one, SimBroker(db, client_id=2) as two, SimBroker(db, client_id=0) as tws:
        mine = one.place_order(buy("SPY", 1, "LMT", 1.0))
        with pytest.raises(OrderRejectedError, match="client 1"):
            two.cancel_order(mine.order_id)
        tws.cancel_order(mine.order_id)
        assert one.orders([mine.order_id])[mine.order_id].status == "Cancelled"
        with pytest.raises(OrderRejectedError, match="no order 999"):
            one.cancel_order(999)


# ---- costs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("shares, value, expected", [
    (10, 1_000.0, 1.00),      # $0.05 at $0.005/share → the $1 minimum
    (200, 20_000.0, 1.00),    # exactly $1
    (1_000, 400_000.0, 5.00),  # per share
    (10, 50.0, 0.50),         # the 1% cap beats the $1 minimum
    (1_000, 300.0, 3.00),     # 1% of a $300 trade caps $5
])
def test_commission_schedule(shares, value, expected):
    assert ib_fixed_commission(shares, value) == pytest.approx(expected)


def test_commission_cap_and_per_order_minimum_in_trades(broker):
    broker.set_price("VIXY", 5.0)
    cheap = broker.place_order(buy("VIXY", 10))
    assert cheap.commission == pytest.approx(0.01 * cheap.avg_fill_price * 10)
    broker.set_price("SPY", 100.0)
    big = broker.place_order(buy("SPY", 100, "LMT", 90.0))
    broker.fill(big.order_id, 40)
    state = broker.fill(big.order_id, 60)
    assert state.status == "Filled" and state.commission == pytest.approx(1.0)  # $1 once per order
    assert sum(f["commission"] for f in broker.fills() if f["order_id"] == big.order_id) == pytest.approx(1.0)


def test_slippage_makes_buys_dearer_and_sells_cheaper(db):
    with SimBroker(db, as_of=AS_OF, slippage_bps=10) as b:
        b.set_price("SPY", 200.0)
        bought = b.place_order(buy("SPY", 10))
        sold = b.place_order(sell("SPY", 10))
        assert bought.avg_fill_price == pytest.approx(200.2)
        assert sold.avg_fill_price == pytest.approx(199.8)
        assert b.snapshot().holdings == []
        assert b.cash() == pytest.approx(DEFAULT_CASH - 2002 - 1 + 1998 - 1)


def test_position_average_cost_includes_commission_and_survives_reductions():
    assert position_after(0, 0, 10, 100.0, 1.0) == (10, pytest.approx(100.1))
    assert position_after(10, 100.1, -4, 120.0, 1.0) == (6, pytest.approx(100.1))
    assert position_after(6, 100.1, -10, 90.0, 1.0) == (-4, 90.0)
    assert position_after(-4, 90.0, 4, 80.0, 1.0) == (0.0, 0.0)


# ---- clock and order types ---------------------------------------------------------------------
def _next_sessions(after: dt.date, count: int) -> list:
    market = load_market()
    return [b for b in market.bars["SPY"] if b.date > after][:count]


def test_advancing_the_clock_fills_a_resting_limit_at_limit_or_better_close(broker):
    later = _next_sessions(AS_OF, 10)
    limit = round(min(b.low for b in later) + 0.01, 2)  # reached within ten sessions, not on placement
    assert limit < broker.price("SPY")
    placed = broker.place_order(buy("SPY", 10, "LMT", limit))
    assert placed.status == "Submitted"
    broker.set_price("SPY", 999.0)
    filled = broker.advance_to(later[-1].date)
    fill_day = next(b for b in later if b.low <= limit)
    assert [s.order_id for s in filled] == [placed.order_id]
    assert filled[0].avg_fill_price == pytest.approx(min(limit, fill_day.close))
    assert broker.fills()[0]["as_of"] == fill_day.date.isoformat()
    assert broker.as_of() == later[-1].date
    assert broker.price("SPY") == later[-1].close  # the override ended when the clock moved
    with pytest.raises(ValueError, match="cannot move back"):
        broker.advance_to(AS_OF)


def test_clock_steps_to_the_last_session_and_history_never_shows_the_future(broker):
    broker.advance_to("2025-06-08")  # a Sunday
    assert broker.as_of() == dt.date(2025, 6, 6)
    bars = broker.history(Contract("SPY"), 250, end=dt.date(2026, 1, 1))
    assert len(bars) == 250 and bars[-1].date == dt.date(2025, 6, 6)
    assert broker.history(Contract("SPY"), 5, end=dt.date(2025, 1, 10))[-1].date == dt.date(2025, 1, 10)


def test_default_clock_is_the_last_session_clamped_to_the_bars():
    market = load_market()
    assert default_as_of(market, dt.date(2025, 6, 8)) == dt.date(2025, 6, 6)
    assert default_as_of(market, dt.date(2031, 1, 1)) == market.last == dt.date(2027, 11, 19)
    assert default_as_of(market, dt.date(2020, 1, 1)) == market.first == dt.date(2023, 1, 3)


def test_moc_fills_at_the_close_without_slippage(broker):
    close = broker.price("SPY")
    state = broker.place_order(buy("SPY", 10, "MOC"))
    assert state.status == "Filled" and state.avg_fill_price == pytest.approx(close)


def test_loc_fills_only_when_the_close_is_within_the_limit(broker):
    close = broker.price("SPY")
    inside = broker.place_order(buy("SPY", 5, "LOC", close + 1))
    assert inside.status == "Filled" and inside.avg_fill_price == pytest.approx(close)
    later = _next_sessions(AS_OF, 30)
    limit = round(min(b.close for b in later) + 0.005, 3)
    outside = broker.place_order(buy("SPY", 5, "LOC", limit))
    assert outside.status == "Submitted"
    # A low that touches the limit is not enough for LOC; only a close within it fills.
    filled = broker.advance_to(later[-1].date)
    day = next(b for b in later if b.close <= limit)
    assert [s.order_id for s in filled] == [outside.order_id]
    assert filled[0].avg_fill_price == pytest.approx(day.close)
    assert broker.fills()[-1]["as_of"] == day.date.isoformat()


def test_sell_limit_fills_when_price_rises(broker):
    broker.place_order(buy("GLD", 10))
    broker.set_price("GLD", 100.0)
    placed = broker.place_order(sell("GLD", 10, "LMT", 110.0))
    assert placed.status == "Submitted"
    broker.set_price("GLD", 109.99)
    assert broker.orders([placed.order_id])[placed.order_id].status == "Submitted"
    broker.set_price("GLD", 111.0)
    state = broker.orders([placed.order_id])[placed.order_id]
    assert state.status == "Filled" and state.avg_fill_price == pytest.approx(111.0)
    assert broker.snapshot().holdings == []


def test_wait_returns_states_without_raising_on_timeout(broker):
    resting = broker.place_order(buy("SPY", 1, "LMT", 1.0))
    states = broker.wait([resting.order_id, 12345], timeout=0.2, until="done")
    assert list(states) == [resting.order_id] and states[resting.order_id].status == "Submitted"


# ---- CLI -----------------------------------------------------------------------------------------
def _cli(db: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lib.broker.sim", "--db", str(db), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cli_manual_trade_and_resting_order_show_in_the_book(db):
    traded = _cli(db, "trade", "SPY", "BUY", "10")
    assert traded.returncode == 0, traded.stderr
    assert "Filled" in traded.stdout
    rested = _cli(db, "order", "QQQ", "BUY", "3", "--limit", "1", "--ref", "by-hand")
    assert rested.returncode == 0, rested.stderr
    book = _cli(db, "book")
    assert book.returncode == 0, book.stderr
    positions = book.stdout.split("open orders")[0]
    assert any(line.split()[:2] == ["SPY", "10"] for line in positions.splitlines())
    orders = book.stdout.split("open orders")[1]
    assert any("by-hand" in line and "QQQ" in line for line in orders.splitlines())
    with SimBroker(db) as b:
        placed = b.orders()
        assert {o.client_id for o in placed.values()} == {0}
        assert [o.order_ref for o in placed.values()] == ["", "by-hand"]
    cancelled = _cli(db, "cancel", "2")
    assert cancelled.returncode == 0 and "Cancelled" in cancelled.stdout


@pytest.mark.parametrize("args, message", [
    (("trade", "SPY", "HOLD", "10"), "BUY or SELL"),
    (("trade", "SPY", "BUY", "-3"), "positive"),
    (("trade", "NOPE", "BUY", "1"), "unknown symbol"),
    (("order", "SPY", "BUY", "1", "--limit", "100000"), "would fill now"),
    (("advance", "not-a-date"), "not a date"),
    (("price", "SPY", "zero"), "price must be a number"),
    (("cancel", "42"), "no order 42"),
    (("reset",), "--yes"),
])
def test_cli_bad_input_exits_2_with_a_message(db, args, message):
    result = _cli(db, *args)
    assert result.returncode == 2
    assert message in result.stderr


def test_cli_price_advance_and_reset(db):
    assert _cli(db, "reset", "--yes", "--as-of", "2025-06-02", "--cash", "5000").returncode == 0
    assert _cli(db, "order", "SPY", "BUY", "1", "--limit", "500").returncode == 0
    moved = _cli(db, "price", "SPY", "499")
    assert moved.returncode == 0 and "Filled" in moved.stdout
    advanced = _cli(db, "advance", "2025-06-09")
    assert advanced.returncode == 0 and "clock at 2025-06-09" in advanced.stdout
    assert _cli(db, "reset", "--yes").returncode == 0
    with SimBroker(db) as b:
        assert b.orders() == {} and b.cash() == DEFAULT_CASH


# ---- contingent orders: stops, brackets, OCA groups (issue 12) -------------------------------------
def stop(symbol="SPY", quantity=10, action="SELL"):
    return OrderRequest(Contract(symbol), action, quantity, "STP")


def test_a_sell_stop_rests_until_the_price_reaches_it_then_fills_as_market(broker):
    broker.place_order(buy("SPY", 10))
    st = broker.place_order(stop("SPY", 10), aux_price=540.0)
    assert (st.status, st.order_type, st.aux_price) == ("Submitted", "STP", 540.0)
    assert broker.set_price("SPY", 545.0) == []  # above the stop: still resting
    [filled] = broker.set_price("SPY", 539.0)
    assert filled.order_id == st.order_id and filled.status == "Filled"
    assert filled.avg_fill_price == pytest.approx(539.0 * (1 - 5 / 10_000))  # a market order once triggered
    assert broker.snapshot().holdings == []


def test_a_stop_in_a_passed_session_fills_at_the_trigger_or_at_a_gap_open(broker):
    # 2025-06-04: open 551.56, low 549.92
    at_trigger = broker.place_order(stop("SPY", 1), aux_price=550.5)
    gapped = broker.place_order(stop("SPY", 1), aux_price=552.0)
    untouched = broker.place_order(stop("SPY", 1), aux_price=540.0)
    broker.advance_to("2025-06-04")
    states = broker.orders()
    assert states[at_trigger.order_id].avg_fill_price == pytest.approx(550.5 * (1 - 5 / 10_000))
    assert states[gapped.order_id].avg_fill_price == pytest.approx(551.56 * (1 - 5 / 10_000))
    assert states[untouched.order_id].status == "Submitted"


def test_bracket_children_wait_for_their_parent_and_cancel_each_other(broker):
    parent = broker.place_order(buy("SPY", 10, "LMT", 500.0))
    assert parent.status == "Submitted"
    take = broker.place_order(sell("SPY", 10, "LMT", 540.0), parent_id=parent.order_id, oca_group="b1")
    loss = broker.place_order(stop("SPY", 10), aux_price=560.0, parent_id=parent.order_id, oca_group="b1")
    # Both children would fill at 553 on their own, but their parent has not filled.
    assert (take.status, loss.status) == ("Submitted", "Submitted")
    docs = [o.to_dict() for o in broker.snapshot().open_orders]
    assert [(d["orderType"], d["auxPrice"], d["parentId"], d["ocaGroup"]) for d in docs] == [
        ("LMT", None, 0, ""), ("LMT", None, parent.order_id, "b1"), ("STP", 560.0, parent.order_id, "b1")]
    broker.set_price("SPY", 499.0)  # the parent fills; the stop-loss (above 499) triggers, the take-profit does not
    states = broker.orders()
    assert states[parent.order_id].status == "Filled"
    assert states[loss.order_id].status == "Filled"
    assert states[take.order_id].status == "Cancelled"  # one cancels all
    assert broker.snapshot().holdings == []


def test_cancelling_an_unfilled_parent_cancels_its_children(broker):
    parent = broker.place_order(buy("SPY", 10, "LMT", 500.0))
    child = broker.place_order(sell("SPY", 10, "LMT", 600.0), parent_id=parent.order_id, oca_group="b")
    broker.cancel_order(parent.order_id)
    assert broker.orders()[child.order_id].status == "Cancelled"


@pytest.mark.parametrize("request_, options, message", [
    (stop("SPY"), {}, "stop price"),
    (stop("SPY"), {"aux_price": -1.0}, "stop price"),
    (buy("SPY", 1, "LMT", 500.0), {"aux_price": 490.0}, "aux_price"),
    (sell("SPY"), {"parent_id": 999}, "parent order 999"),
    (sell("SPY"), {"parent_id": -1}, "parent_id"),
    (sell("SPY"), {"oca_group": 7}, "oca_group"),
])
def test_malformed_contingent_orders_are_refused(broker, request_, options, message):
    with pytest.raises(OrderRejectedError, match=message):
        broker.place_order(request_, **options)
    assert broker.orders() == {}


def test_an_older_state_file_gains_the_contingent_columns(db):
    import sqlite3
    from lib.broker import sim
    old = sim._SCHEMA.replace(""",
    aux_price      REAL,
    parent_id      INTEGER NOT NULL DEFAULT 0,
    oca_group      TEXT NOT NULL DEFAULT ''""", "")
    assert "aux_price" not in old
    conn = sqlite3.connect(db)
    conn.executescript(old)
    conn.execute("INSERT INTO state VALUES (1, 'DU0000001', 1000000, 1000000, '2025-06-02', 2, 'x')")
    conn.execute("INSERT INTO orders (order_id, perm_id, client_id, contract, action, quantity, order_type, tif,"
                 " order_ref, status, placed_as_of, placed_at) VALUES (1, 1000000001, 0, '{\"symbol\": \"SPY\"}',"
                 " 'BUY', 1, 'LMT', 'DAY', '', 'Submitted', '2025-06-02', 'x')")
    conn.commit()
    conn.close()
    with SimBroker(db) as b:
        [o] = b.snapshot().open_orders
        assert (o.aux_price, o.parent_id, o.oca_group) == (None, 0, "")
        assert b.place_order(stop("SPY", 1), aux_price=500.0).status == "Submitted"


def test_cli_stop_and_bracket_show_in_the_book(db):
    assert _cli(db, "reset", "--yes", "--as-of", "2025-06-02").returncode == 0
    assert _cli(db, "trade", "SPY", "BUY", "10").returncode == 0
    placed = _cli(db, "stop", "SPY", "SELL", "10", "--stop", "500")
    assert placed.returncode == 0, placed.stderr
    assert "STP stop 500" in placed.stdout
    bracket = _cli(db, "bracket", "GLD", "BUY", "5", "--take-profit", "1000", "--stop-loss", "1")
    assert bracket.returncode == 0, bracket.stderr
    with SimBroker(db) as b:
        orders = b.snapshot().open_orders
    assert [(o.contract.symbol, o.order_type, o.aux_price, o.parent_id, o.oca_group) for o in orders] == [
        ("SPY", "STP", 500.0, 0, ""), ("GLD", "LMT", None, 3, "bracket-3"), ("GLD", "STP", 1.0, 3, "bracket-3")]
    book = _cli(db, "book").stdout.split("open orders")[1]
    assert "bracket-3" in book and "STP" in book
    refused = _cli(db, "stop", "SPY", "SELL", "1", "--stop", "10000")
    assert refused.returncode == 2 and "would trigger now" in refused.stderr
    wrong = _cli(db, "bracket", "SPY", "BUY", "1", "--take-profit", "1", "--stop-loss", "10000")
    assert wrong.returncode == 2 and "take-profit" in wrong.stderr


# ---- bars ----------------------------------------------------------------------------------------
def test_bars_are_reproduced_exactly_by_the_generator(tmp_path):
    out = tmp_path / "bars.csv"
    assert sim_bars.main(["--out", str(out)]) == 0
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(out) == digest(sim_bars.BARS_CSV)


def test_bars_cover_xnys_sessions_for_every_symbol():
    market = load_market()
    sessions = [dt.date.fromisoformat(d) for d in sim_bars.trading_sessions()]
    assert set(market.bars) == {"SPY", "VIXY", "QQQ", "TLT", "GLD"}
    for symbol, bars in market.bars.items():
        assert [b.date for b in bars] == sessions, symbol
        assert all(0 < b.low <= min(b.open, b.close) and max(b.open, b.close) <= b.high for b in bars)
    assert dt.date(2025, 12, 25) not in sessions and dt.date(2025, 11, 27) not in sessions  # Christmas, Thanksgiving
    assert market.bars["VIXY"][-1].close < market.bars["VIXY"][0].close / 3  # VIXY decays
