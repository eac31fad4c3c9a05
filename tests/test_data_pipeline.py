"""The pipeline's data stage on the embedded defaults: one run (runs take ~10 s each)."""
from __future__ import annotations

import datetime as dt

from lib import documents as docs
from lib.data import open_store
from lib.seed import seed
from tests.pipeline_env import AS_OF, PipelineEnv


def test_the_data_stage_updates_the_declared_union_once_and_fails_only_who_needs_a_bad_series(tmp_path):
    env = PipelineEnv.embedded(tmp_path)
    with env.bus() as bus:
        seed(bus)
        bus.set(docs.strategy_path("needs_nosuch"), docs.dump(docs.StrategyConfig(
            name="Needs a symbol the broker does not know", enabled=True, capital_allocation=0.05,
            notebook="notebooks/strategies/dummy.ipynb", universe=["SPY", "NOSUCH"], lookback=40)))
    result = env.run(dry_run=True)

    # The union of the universes, once: SPY (two strategies), VIXY, GLD, TLT and NOSUCH, one request each.
    log = (tmp_path / "pipeline.log").read_text()
    assert "4/5 series up to 2026-11-20, 5 request(s)" in log, log
    store = open_store(env.settings.data)
    assert env.settings.data == str(tmp_path / "runs") + "/data/"
    assert store.symbols() == ["GLD", "SPY", "TLT", "VIXY"]
    for symbol in store.symbols():
        series = store.read(symbol)
        assert series.source == "sim" and series.last_session == dt.date.fromisoformat(AS_OF)

    # Only the strategy needing the bad series failed, with the reason; its previous targets are held.
    stages = {s.name: s for s in result.stages}
    assert not stages["strategy needs_nosuch"].ok
    assert "NOSUCH" in stages["strategy needs_nosuch"].error and "market data" in stages["strategy needs_nosuch"].error
    assert all(stages[f"strategy {sid}"].ok for sid in ("dummy", "spy_macd_vixy", "test_signal_generator"))
    with env.bus() as bus:
        intent = bus.get(docs.intent_path("needs_nosuch"))
        assert intent["status"] == "error" and "NOSUCH" in intent["error_message"]
        # The strategies read through the store: the simulator's bars, labelled synthetic.
        prices = bus.get(docs.intent_path("spy_macd_vixy"))["metadata"]["prices"]
        assert set(prices) == {"SPY", "VIXY"} and all("SYNTHETIC" in label for label in prices.values())
    skipped = {s["strategy"]: s for s in result.record["decision"]["skipped"]}
    assert "needs_nosuch" in skipped and "NOSUCH" in skipped["needs_nosuch"]["detail"]
    assert result.status == "dry_run"
