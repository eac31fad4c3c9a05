"""Currencies: every notional in the account's base currency, prices in the instrument's own; a currency
without a rate is not traded, the rest goes ahead."""
from __future__ import annotations

import datetime as dt

from lib.commander import decide
from tests.commander_inputs import config, inputs, intent, portfolio, strategy, target
from tests.ib_harness import make_ib_harness


def cad_portfolio(rates):
    p = portfolio(nav=100_000.0)
    p.update(base_currency="USD", fx_rates=rates)
    return p


def test_a_cad_stock_is_sized_and_capped_in_the_base_currency():
    shop = target("SHOP", weight=0.5, price=50.0, currency="CAD")  # 50 CAD = 36.50 USD a share
    d = decide(inputs({"a": strategy(1.0)}, {"a": intent(shop)}, cad_portfolio({"USD": 1.0, "CAD": 0.73}),
                      cfg=config(approval__notional=60_000.0)))
    [order] = d["orders"]
    assert order["quantity"] == int(0.5 * 100_000 / (50 * 0.73)) == 1369  # not 1000, as if CAD were USD
    assert order["notional"] == round(1369 * 50 * 0.73, 2)  # in USD: under the 60,000 approval threshold
    assert not d["approval"]["required"]


def test_a_currency_without_a_rate_is_not_traded_and_the_rest_goes_ahead():
    d = decide(inputs({"a": strategy(1.0)}, {"a": intent(target("SAP", 10, price=120.0, currency="EUR"),
                                                          target("SPY", 5, price=100.0))},
                      cad_portfolio({"USD": 1.0, "CAD": 0.73})))
    assert [o["contract"]["symbol"] for o in d["orders"]] == ["SPY"]
    row = next(r for r in d["diff"] if r["instrument"] == "STK:SAP:EUR")
    assert row["action"] == "no_fx_rate" and "EUR" in row["note"]


def test_one_currency_snapshots_decide_as_before():
    plain = inputs({"a": strategy(1.0)}, {"a": intent(target("SPY", weight=0.5))})
    with_rates = inputs({"a": strategy(1.0)}, {"a": intent(target("SPY", weight=0.5))}, cad_portfolio({"USD": 1.0}))
    assert decide(plain)["orders"] == decide(with_rates)["orders"]


def test_reconcile_records_base_currency_and_ibs_exchange_rates(tmp_path):
    with make_ib_harness(tmp_path) as h:
        h.gateway.fx_rates = {"CAD": 0.73, "EUR": 1.08}
        doc = h.broker.snapshot().to_document(dt.datetime.now(dt.timezone.utc))
    assert doc["base_currency"] == "USD" and doc["fx_rates"] == {"USD": 1.0, "CAD": 0.73, "EUR": 1.08}


def test_end_to_end_on_the_fake_gateway_a_cad_stock_is_bought_in_base_currency_terms(tmp_path):
    from lib import documents as docs
    from lib.bus import open_bus
    from tests.crash_harness import IBWorld, Scenario

    world = IBWorld(tmp_path)
    try:
        world.gateway.fx_rates = {"CAD": 0.73}
        sc = Scenario(world, tmp_path)
        now = dt.datetime.now(dt.timezone.utc)
        with open_bus(sc.bus_url) as bus:
            bus.set(docs.common_config_path(), config(risk__allow_short=False))
            bus.set(docs.mode_config_path("paper"), {"account": None})
            bus.set(docs.strategy_path("s"), strategy(0.5))
            bus.set(docs.intent_path("s"), {**intent(target("SHOP", weight=0.5, price=150.0, currency="CAD",
                                                            exchange="SMART")), "updated_at": now})
        done = sc.commander("--reconcile")
        assert done.returncode == 0, "\n".join(sc.log)
        [order] = [o for o in world.gateway.orders() if o.order_ref.startswith("cmdr-")]
        capital = 0.5 * 1_000_000
        assert (order.instrument.symbol, order.action) == ("SHOP", "BUY")
        assert order.total_qty == int(0.5 * capital / (150.0 * 0.73)) == 2283  # not 1666, as if CAD were USD
    finally:
        world.close()
