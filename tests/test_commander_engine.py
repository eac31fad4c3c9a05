"""Worked examples for every rule of the decision (DESIGN.md §5)."""
from __future__ import annotations

import pytest

from lib.canonical import dumps
from lib.commander import InputError, decide, replay
from tests.commander_inputs import (STALE, config, holding, inputs, intent, order, portfolio, record_of,
                                    strategy, target)


def orders_of(decision):
    return [(o["action"], o["quantity"], o["contract"]["symbol"]) for o in decision["orders"]]


def row(decision, symbol):
    return next(r for r in decision["diff"] if r["instrument"] == f"STK:{symbol}:USD")


def test_origin_case_held_10_pending_buy_2_target_20_buys_8():
    d = decide(inputs({"a": strategy(1.0)}, {"a": intent(target("SPY", 20))},
                      portfolio([holding("SPY", 10)], [order("SPY", "BUY", 2, ref="")])))
    assert orders_of(d) == [("BUY", 8, "SPY")]
    r = row(d, "SPY")
    assert {k: r[k] for k in ("target", "held", "pending_manual", "pending_own", "delta")} == {
        "target": 20, "held": 10, "pending_manual": 2, "pending_own": 0, "delta": 8}


def test_weights_become_whole_shares_toward_zero():
    # C = 100,000 × 1.0 × 0.5 = 50,000; 0.3 × 50,000 / 70 = 214.28 → 214; −0.1 × 50,000 / 30 = −166.6 → −166
    d = decide(inputs({"a": strategy(0.5)}, {"a": intent(target("SPY", weight=0.3, price=70.0),
                                                        target("VIXY", weight=-0.1, price=30.0))}))
    assert orders_of(d) == [("SELL", 166, "VIXY"), ("BUY", 214, "SPY")]
    assert d["capital"] == {"a": 50_000.0}


def test_snapshot_market_price_beats_intent_price():
    d = decide(inputs({"a": strategy(1.0)}, {"a": intent(target("SPY", weight=0.5, price=None))},
                      portfolio([holding("SPY", 0, price=250.0)])))
    assert orders_of(d) == [("BUY", 200, "SPY")]


def test_netting_across_strategies_with_contributions():
    d = decide(inputs({"a": strategy(0.5), "b": strategy(0.5)},
                      {"a": intent(target("SPY", 30)), "b": intent(target("SPY", -10), target("TLT", 5))}))
    agg = {r["instrument"]: r for r in d["aggregated_target"]}
    assert agg["STK:SPY:USD"]["quantity"] == 20
    assert agg["STK:SPY:USD"]["contributions"] == [{"strategy": "a", "quantity": 30}, {"strategy": "b", "quantity": -10}]
    assert orders_of(d) == [("BUY", 20, "SPY"), ("BUY", 5, "TLT")]


def test_exchange_and_conid_are_not_part_of_the_key():
    h = holding("SPY", 10) | {"exchange": "ARCA", "conId": 756733}
    d = decide(inputs({"a": strategy(1.0)}, {"a": intent(target("SPY", 10, exchange="SMART"))}, portfolio([h])))
    assert d["orders"] == [] and row(d, "SPY")["held"] == 10


def test_manual_only_holdings_are_never_touched():
    d = decide(inputs({"a": strategy(1.0)}, {"a": intent(target("SPY", 10))},
                      portfolio([holding("AAPL", 50), holding("SPY", 10)], [order("MSFT", "BUY", 5)])))
    assert d["orders"] == [] and d["cancels"] == []
    assert [r["instrument"] for r in d["diff"]] == ["STK:SPY:USD"]
    assert d["unmanaged_holdings"] == ["STK:AAPL:USD"]


def first_run():
    return decide(inputs({"a": strategy(0.5), "b": strategy(0.5)},
                         {"a": intent(target("SPY", 10)), "b": intent(target("TLT", 20))}, execution_id="exec-1"))


@pytest.mark.parametrize("bad_intent, reason", [
    (None, "missing"),
    (intent(target("SPY", 99), updated_at=STALE), "stale"),
    (intent(status="error", error_message="data feed down"), "error"),
    (intent(target("SPY", 99, price=-1.0)), "invalid"),
])
def test_unusable_intent_holds_previous_targets(bad_intent, reason):
    prev = record_of(first_run())
    held_port = portfolio([holding("SPY", 10), holding("TLT", 20)])
    d = decide(inputs({"a": strategy(0.5), "b": strategy(0.5)}, {"a": bad_intent, "b": intent(target("TLT", 25))},
                      held_port, previous=prev))
    assert [(s["strategy"], s["reason"], s["action"]) for s in d["skipped"]] == [("a", reason, "hold_previous")]
    assert d["per_strategy"]["a"]["source"] == "previous"
    assert orders_of(d) == [("BUY", 5, "TLT")]  # SPY held at 10, not sold


def test_disabled_strategy_winds_down():
    prev = record_of(first_run())
    d = decide(inputs({"a": strategy(0.5, enabled=False), "b": strategy(0.5)},
                      {"a": intent(target("SPY", 10)), "b": intent(target("TLT", 20))},
                      portfolio([holding("SPY", 10), holding("TLT", 20)]), previous=prev))
    assert ("a", "disabled") in [(s["strategy"], s["reason"]) for s in d["skipped"]]
    assert orders_of(d) == [("SELL", 10, "SPY")]
    # Flat afterwards: SPY leaves the managed universe on the next run.
    after = decide(inputs({"a": strategy(0.5, enabled=False), "b": strategy(0.5)},
                          {"b": intent(target("TLT", 20))}, portfolio([holding("TLT", 20)]),
                          previous=record_of(d, executed_at="2025-10-29T20:10:00Z"), execution_id="exec-3"))
    assert after["orders"] == [] and [r["instrument"] for r in after["final_target"]] == ["STK:TLT:USD"]


def test_own_working_order_kept_when_it_matches():
    d = decide(inputs({"a": strategy(1.0)}, {"a": intent(target("SPY", 20))},
                      portfolio([holding("SPY", 10)], [order("SPY", "BUY", 10, order_id=7, ref="cmdr-exec-1")])))
    assert d["orders"] == [] and d["cancels"] == []
    assert row(d, "SPY")["action"] == "keep_own_orders"


def test_own_working_order_cancelled_and_replaced_when_it_does_not_match():
    d = decide(inputs({"a": strategy(1.0)}, {"a": intent(target("SPY", 20))},
                      portfolio([holding("SPY", 10)], [order("SPY", "BUY", 4, order_id=7, ref="cmdr-exec-1"),
                                                       order("SPY", "BUY", 2, order_id=8, ref="manual")])))
    assert [c["orderId"] for c in d["cancels"]] == [7]
    assert orders_of(d) == [("BUY", 8, "SPY")]  # full need: 20 − 10 − 2 (manual), own order replaced


def test_terminal_orders_are_ignored():
    d = decide(inputs({"a": strategy(1.0)}, {"a": intent(target("SPY", 20))},
                      portfolio([holding("SPY", 10)], [order("SPY", "BUY", 2, status="Cancelled"),
                                                       order("SPY", "BUY", 3, order_id=2, status="Filled")])))
    assert orders_of(d) == [("BUY", 10, "SPY")]


def test_oversized_weights_scaled_back_to_capital():
    d = decide(inputs({"a": strategy(0.5)}, {"a": intent(target("SPY", weight=0.8), target("TLT", weight=0.7))}))
    gross = sum(o["notional"] for o in d["orders"])
    assert gross <= 50_000
    assert orders_of(d) == [("BUY", 266, "SPY"), ("BUY", 233, "TLT")]
    assert {a["rule"] for a in d["adjustments"]} == {"strategy_gross_exposure"}


def test_single_position_cap_clips_and_records():
    d = decide(inputs({"a": strategy(0.5, max_single=0.4)}, {"a": intent(target("SPY", 300))}))
    assert orders_of(d) == [("BUY", 200, "SPY")]
    assert d["adjustments"] == [{"rule": "max_single_position_exposure", "scope": "a", "instrument": "STK:SPY:USD",
                                 "from": 300, "to": 200}]


def test_shorting_disallowed():
    d = decide(inputs({"a": strategy(1.0)}, {"a": intent(target("SPY", -50), target("TLT", 10))},
                      cfg=config(risk__allow_short=False)))
    assert orders_of(d) == [("BUY", 10, "TLT")]
    assert [a["rule"] for a in d["adjustments"]] == ["allow_short"]


def test_global_instrument_and_gross_caps():
    d = decide(inputs({"a": strategy(0.5), "b": strategy(0.5)},
                      {"a": intent(target("SPY", 400)), "b": intent(target("SPY", 100), target("TLT", 400))},
                      cfg=config(risk__max_instrument_exposure=0.3, risk__max_gross_exposure=0.5)))
    final = {r["instrument"]: r["quantity"] for r in d["final_target"]}
    # SPY 500 and TLT 400 → 300 each (30% of 100k at $100); gross 600 × $100 = 60k > 50k → × 5/6
    assert final == {"STK:SPY:USD": 250, "STK:TLT:USD": 250}
    assert [(a["rule"], a["from"], a["to"]) for a in d["adjustments"]] == [
        ("max_instrument_exposure", 500, 300), ("max_instrument_exposure", 400, 300),
        ("max_gross_exposure", 300, 250), ("max_gross_exposure", 300, 250)]


@pytest.mark.parametrize("band, held, expect", [
    ({"risk__min_order_quantity": 5}, 97, []),
    ({"risk__min_order_notional": 500.0}, 97, []),
    ({"risk__rebalance_threshold": 0.05}, 97, []),
    ({"risk__rebalance_threshold": 0.05}, 90, [("BUY", 10, "SPY")]),
])
def test_no_trade_band(band, held, expect):
    d = decide(inputs({"a": strategy(1.0)}, {"a": intent(target("SPY", 100))}, portfolio([holding("SPY", held)]),
                      cfg=config(**band)))
    assert orders_of(d) == expect
    if not expect:
        assert row(d, "SPY")["action"] == "suppressed"


def test_closing_is_never_suppressed_by_the_threshold():
    d = decide(inputs({"a": strategy(1.0)}, {"a": intent(target("SPY", 0))}, portfolio([holding("SPY", 3)]),
                      cfg=config(risk__rebalance_threshold=0.5)))
    assert orders_of(d) == [("SELL", 3, "SPY")]


def test_limit_orders_offset_and_tick_sells_first():
    d = decide(inputs({"a": strategy(1.0)}, {"a": intent(target("SPY", 10, price=100.007), target("TLT", -5, price=50.003))},
                      cfg=config(orders__type="LMT", orders__limit_offset_bps=10.0, orders__tif="GTC")))
    assert [(o["action"], o["lmtPrice"], o["tif"], o["orderRef"]) for o in d["orders"]] == [
        ("SELL", 49.96, "GTC", "cmdr-exec-2-1"),  # 50.003 × 0.999 = 49.95300 → up to 49.96
        ("BUY", 100.1, "GTC", "cmdr-exec-2-2"),  # 100.007 × 1.001 = 100.107 → down to 100.10
    ]


@pytest.mark.parametrize("cfg, strategies, needle", [
    (config(), {"a": strategy(0.7), "b": strategy(0.4)}, "sum to 1.1"),
    (config(), {"a": strategy(-0.1)}, "capital_allocation' is negative"),
    (config(exposure__overall=0.0), {"a": strategy(0.5)}, "exposure.overall"),
    ({"tradingEnabled": "maybe"}, {"a": strategy(0.5)}, "tradingEnabled"),
])
def test_configuration_errors_fail_closed(cfg, strategies, needle):
    d = decide(inputs(strategies, {"a": intent(target("SPY", 10))}, cfg=cfg))
    assert d["status"] == "blocked" and d["orders"] == []
    assert needle in d["blocked_reasons"][0]["detail"]


def test_disabled_allocation_does_not_count_toward_the_sum():
    d = decide(inputs({"a": strategy(0.7), "b": strategy(0.7, enabled=False)}, {"a": intent(target("SPY", 1))}))
    assert d["status"] == "ok"


@pytest.mark.parametrize("port, previous, needle", [
    (None, None, "missing"),
    (portfolio(updated_at="2025-10-29T19:00:00Z"), None, "before the window start"),
    (portfolio(updated_at="2025-10-29T20:30:00Z"), {"execution_id": "x", "executed_at": "2025-10-29T20:40:00Z",
                                                    "placed_orders": True, "decision": {}}, "older than the last"),
    (portfolio(account="U1234"), None, "does not match mode"),
    (portfolio(nav=0.0), None, "net_liquidation"),
])
def test_portfolio_problems_fail_closed(port, previous, needle):
    i = inputs({"a": strategy(1.0)}, {"a": intent(target("SPY", 10))}, previous=previous)
    i["portfolio"] = port
    d = decide(i)
    assert d["status"] == "blocked" and d["orders"] == []
    assert needle in d["blocked_reasons"][0]["detail"]


@pytest.mark.parametrize("bad_target, field", [
    (target("SPY", "ten"), "target_positions[0].quantity"),
    (target("SPY", float("nan")), "target_positions[0].quantity"),
    (target("SPY", weight=float("nan")), "target_positions[0].weight"),
    (target("SPY", 10, price=None), "target_positions[0].price"),
    (target("SPY", 10, price=-5.0), "target_positions[0].price"),
    (target("SPY", 10, price="cheap"), "target_positions[0].price"),
])
def test_malformed_intents_never_trade_and_name_the_field(bad_target, field):
    d = decide(inputs({"bad": strategy(0.5), "ok": strategy(0.5)},
                      {"bad": intent(bad_target), "ok": intent(target("TLT", 3))}))
    assert orders_of(d) == [("BUY", 3, "TLT")]
    skip = d["skipped"][0]
    assert skip["strategy"] == "bad" and skip["reason"] == "invalid" and skip["field"] == field
    assert "strategies/bad/intent/latest" in skip["detail"] and field in skip["detail"]


def test_duplicate_instrument_in_one_intent_is_invalid():
    d = decide(inputs({"a": strategy(1.0)}, {"a": intent(target("SPY", 1), target("SPY", 2, exchange="ARCA"))}))
    assert d["orders"] == [] and d["skipped"][0]["field"] == "target_positions[1]"
    assert "duplicate instrument STK:SPY:USD" in d["skipped"][0]["detail"]


def test_same_inputs_same_bytes_and_replay():
    i = inputs({"a": strategy(0.5), "b": strategy(0.5)},
               {"a": intent(target("SPY", weight=0.5)), "b": intent(target("TLT", -7), target("GLD", 3))},
               portfolio([holding("SPY", 3), holding("AAPL", 1)], [order("TLT", "SELL", 2)]))
    first, second = dumps(decide(i)), dumps(decide(i))
    assert first == second
    record = {"execution_id": "exec-2", "inputs": i, "decision": decide(i)}
    assert replay(record)["orders_match"] and replay(record)["decision_match"]
    record["decision"]["orders"][0]["quantity"] += 1
    assert not replay(record)["orders_match"]


def test_malformed_inputs_object_raises_input_error():
    with pytest.raises(InputError, match="now"):
        decide({"window_start": "2025-01-01T00:00:00Z"})
    with pytest.raises(InputError, match="mode"):
        i = inputs({}, {})
        i["mode"] = "real"
        decide(i)


def test_keys_are_canonical_and_round_trip_to_contracts():
    from lib.commander.instrument import contract_from_key, key_of
    fut = {"secType": "FUT", "symbol": "es", "currency": "USD", "lastTradeDateOrContractMonth": "202512",
           "multiplier": "50", "exchange": "CME"}
    assert key_of(fut) == "FUT:ES:USD:202512:::50"
    assert key_of(contract_from_key(key_of(fut))) == key_of(fut)
    assert key_of({"symbol": "SPY", "multiplier": "1"}) == key_of({"symbol": "spy", "secType": "STK"}) == "STK:SPY:USD"
    assert contract_from_key("STK:SPY:USD")["symbol"] == "SPY"
