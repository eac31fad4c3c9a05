"""The manual-trade policy: `correct` (default) converges to the strategies' target; `respect` keeps the
manual part (holding − the Commander's own book) and leaves manual orders to their owner."""
from __future__ import annotations

import subprocess
import sys

import pytest

from lib import documents as docs
from lib.bus import open_bus
from lib.commander import decide
from tests.commander_inputs import config, holding, inputs, intent, order, portfolio, strategy, target
from tests.crash_harness import ROOT, IBWorld, Scenario, SimWorld, seed_bus

SPY, GLD = "STK:SPY:USD", "STK:GLD:USD"


def plan(cfg, book, holdings=(), orders=()):
    i = inputs({"a": strategy(1.0)}, {"a": intent(target("SPY", 10), target("GLD", 0))},
               portfolio(list(holdings), list(orders)), cfg=cfg)
    i["book"] = book
    return decide(i)


def trades(d):
    return {(o["action"], o["contract"]["symbol"], o["quantity"]) for o in d["orders"]}


def test_correct_sells_a_manual_buy_back_and_respect_keeps_it():
    held = [holding("SPY", 50)]  # the Commander bought 10, a person bought 40 more
    book = {"positions": {SPY: 10}, "uncertain": {}}
    assert trades(plan(config(), book, held)) == {("SELL", "SPY", 40)}
    kept = plan(config(manual_trades="respect"), book, held)
    assert trades(kept) == set()
    row = next(r for r in kept["diff"] if r["instrument"] == SPY)
    assert row["policy"] == "respect" and row["manual_part"] == 40


def test_respect_leaves_a_manual_resting_order_to_its_owner():
    rest = [order("GLD", "BUY", 5, lmt=1.0, ref="")]  # far below the market, entered by hand
    book = {"positions": {}, "uncertain": {}}
    assert ("SELL", "GLD", 5) in trades(plan(config(), book, orders=rest))  # correct: counted, then undone
    assert not any(o["contract"]["symbol"] == "GLD" for o in plan(config(manual_trades="respect"), book,
                                                                    orders=rest)["orders"])


def test_per_symbol_override_and_uncertain_books_place_nothing_there():
    held = [holding("SPY", 50), holding("GLD", 7)]
    book = {"positions": {SPY: 10}, "uncertain": {}}
    cfg = config(manual_trades="correct")
    cfg["manual_trades_by_symbol"] = {"SPY": "respect"}
    d = plan(cfg, book, held)
    assert trades(d) == {("SELL", "GLD", 7)}  # GLD corrected, SPY's manual 40 kept
    gap = plan(config(manual_trades="respect"), {"positions": {SPY: 3}, "uncertain": {SPY: "order x forgotten"}},
               [holding("SPY", 3)])
    row = next(r for r in gap["diff"] if r["instrument"] == SPY)
    assert row["action"] == "uncertain_book" and "forgotten" in row["note"] and not gap["orders"]
    stale = plan(config(manual_trades="respect"), {"positions": {}, "stale": "broker down"}, [])
    assert not stale["orders"] and all(r["action"] == "uncertain_book" for r in stale["diff"])


def test_a_bad_policy_is_refused_naming_the_field():
    d = plan(config(manual_trades="ignore"), {}, [])
    assert d["status"] == "blocked" and "config/common: field 'manual_trades'" in d["blocked_reasons"][0]["detail"]


def _ops(sc, *args):
    done = subprocess.run([sys.executable, "-m", "lib.ops", "--bus", sc.bus_url, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("world_type", [SimWorld, IBWorld], ids=["sim", "ib"])
def test_respect_end_to_end_a_manual_buy_kept_released_then_traded(tmp_path, world_type):
    world = world_type(tmp_path)
    try:
        sc = Scenario(world, tmp_path)
        world.start_holdings()  # VIXY 50 bought by hand before anything
        seed_bus(sc.bus_url, world)
        with open_bus(sc.bus_url) as bus:
            cfg = bus.get(docs.common_config_path())
            bus.set(docs.common_config_path(), {**cfg, "manual_trades": "respect"})
        assert sc.commander("--reconcile").returncode == 0
        world.settle()
        # The target says VIXY 0, but those 50 were bought by hand: kept. The rest was bought.
        assert world.positions() == {"GLD": 10, "SPY": 5, "TLT": 20, "VIXY": 50}
        listed = _ops(sc, "manual", "list")
        assert "STK:VIXY:USD" in listed and " 50 " in f" {listed} "
        _ops(sc, "manual", "release", "VIXY")  # hand the manual part to the Commander
        assert sc.commander("--reconcile").returncode == 0
        world.settle()
        assert world.positions() == {"GLD": 10, "SPY": 5, "TLT": 20}  # now the Commander sells it
        refs = [o.ref for o in world.orders() if o.symbol == "VIXY" and o.ref.startswith("cmdr-")]
        assert len(refs) == 1
    finally:
        world.close()
