"""Parity: on a backtest session with orders, the backtest's orders equal what `run_pipeline.py --dry-run
--as-of` plans on the simulator for that date, from the same holdings and the same documents."""
from __future__ import annotations

import datetime as dt

from lib import documents as docs
from lib.backtest.session import run_backtest
from lib.broker.sim import reset_state
from tests.pipeline_env import PipelineEnv

STRATEGIES = ["dummy", "spy_macd_vixy"]


def test_the_backtest_plans_what_a_dry_run_plans(tmp_path):
    bt = PipelineEnv.embedded(tmp_path / "bt")
    done = run_backtest(bt.settings, start=dt.date(2025, 9, 2), end=dt.date(2025, 10, 31), strategies=STRATEGIES,
                        standalone=False)
    assert done.result is not None and not done.failed, done.message
    result = done.result
    traded = sorted(set(result.orders["session"]))
    assert len(traded) >= 2, "the period must hold sessions with orders"
    day = traded[-1]  # the last session the Commander traded
    before = result.sessions.index[list(result.sessions.index).index(day) - 1]
    expected = {(o.action, o.symbol, o.quantity) for o in result.orders.itertuples() if o.session == day}

    dry = PipelineEnv.embedded(tmp_path / "dry")
    held = {s: (q, 0.0) for s, q in result.positions.loc[before].items() if q}
    reset_state(tmp_path / "dry" / "sim.sqlite", cash=float(result.sessions.loc[before, "cash"]), positions=held,
                as_of=before)
    with bt.bus() as source, dry.bus() as target:  # the same documents
        target.set(docs.common_config_path(), source.get(docs.common_config_path()))
        target.set(docs.mode_config_path("paper"), source.get(docs.mode_config_path("paper")) or {"account": None})
        for sid, doc in source.list("strategies").items():
            target.set(docs.strategy_path(sid), {**doc, "enabled": sid in STRATEGIES})
    planned = dry.run(dry_run=True, as_of=day.isoformat(), strategies=STRATEGIES)
    assert planned.status == "dry_run", planned.message
    orders = {(o["action"], o["contract"]["symbol"], o["quantity"]) for o in planned.record["decision"]["orders"]}
    assert orders == expected and orders
