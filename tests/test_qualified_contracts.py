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
