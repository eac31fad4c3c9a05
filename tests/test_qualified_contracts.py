"""Qualified contracts: IB's own secTypes, conId and primaryExchange kept (never part of the key), and an
instrument the broker does not know makes its intent invalid — the held position is never sold."""
from __future__ import annotations

from lib.commander import decide
from tests.commander_inputs import holding, inputs, intent, portfolio, strategy, target


def test_a_sectype_outside_ibs_set_invalidates_the_intent_and_holds_the_position():
    held = portfolio([holding("GLD", 135)])
    d = decide(inputs({"a": strategy(1.0)}, {"a": intent(target("GLD", 135, secType="XYZ"))}, held))
    skip = d["skipped"][0]
    assert skip["reason"] == "invalid" and "target_positions[0].secType" in skip["detail"]
    assert not d["orders"]  # the real 135 GLD are not sold for a typo


def test_conid_and_primary_exchange_are_kept_out_of_the_key():
    d = decide(inputs({"a": strategy(1.0)}, {"a": intent(target("SPY", 3, conId=756733, primaryExchange="ARCA"))}))
    assert not d["skipped"] and [(o["instrument"], o["quantity"]) for o in d["orders"]] == [("STK:SPY:USD", 3)]


def test_an_instrument_the_broker_does_not_know_holds_the_previous_targets():
    i = inputs({"a": strategy(1.0)}, {"a": intent(target("GLD", 135), target("GLDX", 10))},
               portfolio([holding("GLD", 135)]))
    i["qualified"] = {"STK:GLD:USD": {"conId": 51529211, "primaryExchange": "ARCA"},
                      "STK:GLDX:USD": {"error": "IB error 200: No security definition has been found"}}
    d = decide(i)
    skip = d["skipped"][0]
    assert skip["reason"] == "invalid" and skip["field"] == "target_positions[1]" and "GLDX" in skip["detail"]
    assert not d["orders"]


def test_units_mistakes_are_invalid_not_clipped():
    big = decide(inputs({"a": strategy(0.5)}, {"a": intent(target("SPY", weight=50.0))}))
    assert big["skipped"][0]["field"] == "target_positions[0].weight" and not big["orders"]
    huge = decide(inputs({"a": strategy(0.5)}, {"a": intent(target("SPY", 10**12))}))
    assert huge["skipped"][0]["field"] == "target_positions[0].quantity" and "units mistake" in huge["skipped"][0]["detail"]
    assert not huge["orders"]


def test_the_simulator_qualifies_what_it_trades_and_refuses_the_rest(tmp_path):
    from lib.broker.sim import SimBroker
    from lib.execution import qualify_targets
    with SimBroker(tmp_path / "sim.sqlite", as_of="2026-11-20") as sim:
        found = qualify_targets(sim, {"a": intent(target("SPY", 1), target("NOPE", 1))})
    assert found["STK:SPY:USD"]["conId"] and "NOPE" in found["STK:NOPE:USD"]["error"]
