"""Risk and operations rules in the pure decision: ledger and max_drawdown, buying power, per-order
and per-run caps, trading states, approval; and order pacing in placement."""
from __future__ import annotations

import copy

import pytest

from lib.commander import decide, replay
from lib.commander.ledger import clear
from tests.commander_inputs import config, holding, inputs, intent, portfolio, record_of, strategy, target


def orders_of(d):
    return [(o["action"], o["quantity"], o["contract"]["symbol"]) for o in d["orders"]]


def rules(d):
    return [a["rule"] for a in d["adjustments"]]


# ---- ledger and max_drawdown -----------------------------------------------------------------
def test_first_execution_starts_equity_at_capital():
    d = decide(inputs({"a": strategy(0.5)}, {"a": intent(target("SPY", 100))}))
    led = d["ledgers"]["a"]
    assert (led["equity"], led["peak"], led["drawdown"], led["halted"]) == (50_000.0, 50_000.0, 0.0, False)
    assert led["targets"] == [{"instrument": "STK:SPY:USD", "quantity": 100, "price": 100.0}]


def day_two(price, max_drawdown=0.15, ledger=None):
    first = decide(inputs({"a": strategy(0.5, max_drawdown=None)}, {"a": intent(target("SPY", 400))}))
    led = ledger or first["ledgers"]["a"]
    cfg = strategy(0.5)
    cfg["risk_parameters"]["max_drawdown"] = max_drawdown
    i = inputs({"a": cfg}, {"a": intent(target("SPY", 400, price=price))},
               portfolio([holding("SPY", 400, price=price)]), previous=record_of(first))
    i["ledgers"] = {"a": led}
    return decide(i)


def test_pnl_since_previous_execution_moves_equity():
    d = day_two(price=95.0)
    led = d["ledgers"]["a"]
    assert led["pnl"] == -2_000.0 and led["equity"] == 48_000.0 and led["peak"] == 50_000.0
    assert led["drawdown"] == pytest.approx(0.04)
    assert d["orders"] == [] and not led["halted"]


def test_drawdown_reaching_the_limit_halts_and_winds_down():
    d = day_two(price=80.0)  # 400 × −20 = −8,000 → drawdown 16% ≥ 15%
    skip = d["skipped"][0]
    assert (skip["strategy"], skip["reason"], skip["action"]) == ("a", "drawdown", "wind_down")
    assert "clear-halt a" in skip["detail"]
    assert d["ledgers"]["a"]["halted"] and d["ledgers"]["a"]["targets"] == []
    assert orders_of(d) == [("SELL", 400, "SPY")]
    assert "max_drawdown" in rules(d)


def test_halted_strategy_stays_halted_until_cleared():
    halted = day_two(price=80.0)["ledgers"]["a"]
    again = day_two(price=100.0, ledger=halted)
    assert [s["reason"] for s in again["skipped"]] == ["halted"]
    assert orders_of(again) == [("SELL", 400, "SPY")]
    cleared = day_two(price=80.0, ledger=clear(halted))
    assert cleared["skipped"] == [] and cleared["orders"] == []


def test_malformed_ledger_fails_closed_for_that_strategy():
    d = day_two(price=80.0, ledger={"equity": "lots", "peak": 1.0})
    skip = d["skipped"][0]
    assert skip["reason"] == "invalid" and skip["field"] == "equity" and "strategies/a/ledger/latest" in skip["detail"]
    assert skip["action"] == "hold_previous" and d["per_strategy"]["a"]["source"] == "previous"
    assert d["orders"] == [] and "a" not in d["ledgers"]


# ---- buying power and caps --------------------------------------------------------------------
def test_buys_limited_to_available_funds_plus_sell_proceeds():
    d = decide(inputs({"a": strategy(1.0)}, {"a": intent(target("SPY", 300), target("TLT", 0))},
                      portfolio([holding("TLT", 50)], funds=10_000.0)))
    # sells 50 TLT → +5,000; budget 15,000 → SPY 300 (30,000) scaled to 150
    assert orders_of(d) == [("SELL", 50, "TLT"), ("BUY", 150, "SPY")]
    assert rules(d) == ["buying_power"]
    row = next(r for r in d["diff"] if r["instrument"] == "STK:SPY:USD")
    assert (row["action"], row["delta"], row["limited"]) == ("limited", 150, 150)


def test_margin_multiplier_scales_buying_power():
    d = decide(inputs({"a": strategy(1.0)}, {"a": intent(target("SPY", 300))}, portfolio(funds=10_000.0),
                      cfg=config(risk__margin_multiplier=2.0)))
    assert orders_of(d) == [("BUY", 200, "SPY")]


def test_max_order_notional_and_orders_per_run():
    d = decide(inputs({"a": strategy(1.0)}, {"a": intent(target("SPY", 300), target("TLT", 20), target("GLD", -5))},
                      cfg=config(risk__max_order_notional=5_000.0, risk__max_orders_per_run=2)))
    assert orders_of(d) == [("SELL", 5, "GLD"), ("BUY", 50, "SPY")]
    assert rules(d) == ["max_order_notional", "max_orders_per_run"]


# ---- trading states ---------------------------------------------------------------------------
def test_reduce_only_keeps_only_orders_toward_zero():
    d = decide(inputs({"a": strategy(1.0)},
                      {"a": intent(target("SPY", 150), target("TLT", 20), target("GLD", -30), target("QQQ", 5))},
                      portfolio([holding("SPY", 100), holding("TLT", 50), holding("GLD", 10), holding("QQQ", -20)]),
                      cfg=config(tradingState="reduce_only")))
    # SPY 100→150 grows: dropped. TLT 50→20 shrinks: kept. GLD 10→−30 flips: only the close (−10).
    # QQQ −20→5 flips: only the cover (+20).
    assert orders_of(d) == [("SELL", 10, "GLD"), ("SELL", 30, "TLT"), ("BUY", 20, "QQQ")]
    assert rules(d).count("reduce_only") == 3


@pytest.mark.parametrize("cfg", [config(tradingState="halted"), config(tradingEnabled=False)])
def test_halted_states_still_compute_the_full_decision(cfg):
    d = decide(inputs({"a": strategy(1.0)}, {"a": intent(target("SPY", 10))}, cfg=cfg))
    assert d["trading_state"] == "halted" and orders_of(d) == [("BUY", 10, "SPY")]


# ---- approval ---------------------------------------------------------------------------------
def test_approval_required_above_plan_notional_or_single_order_share():
    d = decide(inputs({"a": strategy(1.0)}, {"a": intent(target("SPY", 300), target("TLT", 10))},
                      cfg=config(approval__notional=25_000.0, approval__fraction_of_nav=0.2)))
    assert d["approval"]["required"] is True and len(d["approval"]["reasons"]) == 2
    small = decide(inputs({"a": strategy(1.0)}, {"a": intent(target("TLT", 10))},
                          cfg=config(approval__notional=25_000.0, approval__fraction_of_nav=0.2)))
    assert small["approval"] == {"required": False, "reasons": [], "total_notional": 1000.0}


def test_new_rules_replay_identically():
    i = inputs({"a": strategy(1.0)}, {"a": intent(target("SPY", 300), target("TLT", 0))},
               portfolio([holding("TLT", 50)], funds=10_000.0),
               cfg=config(tradingState="reduce_only", risk__max_orders_per_run=1, approval__notional=1.0))
    i["ledgers"] = {"a": {"equity": 100.0, "peak": 120.0, "targets": []}}
    record = {"execution_id": "exec-2", "inputs": copy.deepcopy(i), "decision": decide(i)}
    assert replay(record)["decision_match"]


# ---- order pacing -----------------------------------------------------------------------------
def test_orders_are_sent_no_faster_than_the_configured_rate(tmp_path):
    from lib.broker.sim import SimBroker
    from lib.execution import place
    d = decide(inputs({"a": strategy(1.0)}, {"a": intent(*(target(s, 1) for s in ("SPY", "TLT", "GLD", "QQQ", "VIXY")))},
                      portfolio(account="DU0000001")))
    slept: list[float] = []
    with SimBroker(tmp_path / "sim.sqlite", as_of="2026-11-20") as sim:
        result = place(sim, d, mode="paper", expected_account=None, snapshot_account="DU0000001",
                       rate_per_second=2, ack_timeout=5, sleep=slept.append)
    assert [r["status"] for r in result.orders_placed] == ["Filled"] * 5
    assert len(slept) >= 1 and sum(slept) > 0  # 5 orders at 2 per second must wait


def test_a_halted_strategy_with_an_unreadable_ledger_stays_wound_down_instead_of_crashing():
    from tests.commander_inputs import inputs, intent, record_of, strategy, target
    from lib.commander import decide
    first = decide(inputs({"a": strategy(1.0)}, {"a": intent(target("SPY", 5))}))
    broken = {"halted": True, "equity": "lots", "peak": 1.0, "targets": []}
    d = decide(inputs({"a": strategy(1.0)}, {"a": intent(target("SPY", 5))}, previous=record_of(first)) |
               {"ledgers": {"a": broken}})
    assert d["status"] == "ok" and "a" not in d["per_strategy"]
    assert any(s["strategy"] == "a" and s.get("field") == "equity" and s["action"] == "wind_down" for s in d["skipped"])
