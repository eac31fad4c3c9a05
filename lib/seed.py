"""Default documents for an empty bus: config/common, config/{mode} and the three example strategies.

Seeding only creates documents that do not exist; it never overwrites an operator's config (the
origin project reset `tradingEnabled` on every deploy — not here).

For `live` the defaults are safe: `tradingEnabled` is false, `config/live.account` is unset (placing
in live needs it) and the example strategies are written *disabled*, so an operator can read them
and enable one knowingly, but nothing trades real money until a person turns it on.

    python -m lib.seed [--bus URL] [--mode paper|live]
"""
from __future__ import annotations

import argparse
import sys

from lib import documents as docs
from lib.bus import Bus, open_bus
from lib.errors import AlreadyExistsError, PipelineError

DEFAULT_COMMON = docs.CommonConfig(
    tradingEnabled=True,  # paper trading on the simulator by default; live needs an explicit mode
    tradingState="active",
    # A no-trade band: weight targets drift with net liquidation by a few shares every day.
    risk=docs.RiskLimits(min_order_notional=100.0, rebalance_threshold=0.01),
)

DEFAULT_STRATEGIES = {
    "spy_macd_vixy": docs.StrategyConfig(
        name="SPY MACD VIXY Strategy",
        description="MACD regime on SPY with VIXY as the hedge in bearish regimes",
        enabled=True, author="system", capital_allocation=0.6,
        risk_parameters=docs.RiskParameters(max_drawdown=0.15, max_single_position_exposure=1.0),
        notebook="notebooks/strategies/spy_macd_vixy.ipynb", universe=["SPY", "VIXY"], lookback=200),
    "test_signal_generator": docs.StrategyConfig(
        name="Test Signal Generator",
        description="MACD on SPY, long or short every run: produces a signal to validate the pipeline end to end",
        enabled=True, author="system", capital_allocation=0.1,
        risk_parameters=docs.RiskParameters(max_drawdown=0.5, max_single_position_exposure=1.0),
        notebook="notebooks/strategies/test_signal_generator.ipynb", universe=["SPY"], lookback=60),
    "dummy": docs.StrategyConfig(
        name="Dummy Strategy",
        description="A fixed target; the template to copy for a new strategy",
        enabled=True, author="system", capital_allocation=0.1,
        risk_parameters=docs.RiskParameters(max_drawdown=0.5, max_single_position_exposure=1.0),
        notebook="notebooks/strategies/dummy.ipynb", universe=["GLD", "TLT"], lookback=40),
}


def default_documents(mode: str = "paper") -> dict[str, dict]:
    """The seed's documents for `mode`: in live, trading disabled and every example strategy disabled."""
    if mode not in ("paper", "live"):
        raise ValueError(f"unknown trading mode {mode!r}; expected 'paper' or 'live'")
    live = mode == "live"
    common = DEFAULT_COMMON.model_copy(update={"tradingEnabled": False}) if live else DEFAULT_COMMON
    out = {docs.common_config_path(): docs.dump(common),
           docs.mode_config_path(mode): docs.dump(docs.ModeConfig(account=None))}
    for sid, cfg in DEFAULT_STRATEGIES.items():
        out[docs.strategy_path(sid)] = docs.dump(cfg.model_copy(update={"enabled": False}) if live else cfg)
    return out


def seed(bus: Bus, mode: str = "paper") -> dict[str, str]:
    """Create each default document of `mode` that is missing; returns path → 'created' | 'kept'."""
    result = {}
    for path, data in default_documents(mode).items():
        try:
            bus.create(path, data)
            result[path] = "created"
        except AlreadyExistsError:
            result[path] = "kept"
    return result


#: Collections whose documents mean the bus is in use (an operator's, or a run's).
_IN_USE = ("config", "strategies", "state", "books", "operations", "order_ids")


def is_empty(bus: Bus) -> bool:
    """Whether the bus holds none of this project's documents: only then is seeding automatic."""
    if any(bus.list(c) for c in _IN_USE):
        return False
    return not bus.page("executions", order_by="executed_at", limit=1)


def restore_config(bus: Bus, mode: str = "paper") -> bool:
    """Recreate a missing config/common with trading DISABLED (an operator re-enables it deliberately:
    `python -m lib.ops resume`); returns whether it wrote it. Never overwrites."""
    data = default_documents(mode)[docs.common_config_path()]
    try:
        bus.create(docs.common_config_path(), {**data, "tradingEnabled": False})
        return True
    except AlreadyExistsError:
        return False


MISSING_CONFIG = ("config/common is missing on a bus that holds other documents: nothing runs and nothing "
                  "is placed. Restore it with `python -m lib.seed --restore-config` (trading disabled; then "
                  "`python -m lib.ops config set ...` and `python -m lib.ops resume`), or write it back from a backup.")


def main(argv: list[str] | None = None) -> int:
    from lib.settings import resolve
    parser = argparse.ArgumentParser(prog="python -m lib.seed", description=__doc__.splitlines()[0])
    parser.add_argument("--bus", help="bus URL (default: $COMMANDER_BUS or sqlite:///runs/bus.sqlite)")
    parser.add_argument("--mode", choices=["paper", "live"],
                        help="trading mode to seed for (default: $COMMANDER_MODE or paper); live seeds trading "
                             "disabled and the example strategies disabled")
    parser.add_argument("--restore-config", action="store_true",
                        help="recreate a missing config/common with tradingEnabled false (on a bus in use)")
    args = parser.parse_args(argv)
    try:
        settings = resolve({"bus": args.bus, "mode": args.mode})
    except ValueError as exc:
        print(f"seed failed: {exc}", file=sys.stderr)
        return 2
    try:
        with open_bus(settings.bus) as bus:
            if args.restore_config:
                done = restore_config(bus, settings.mode)
                print("restored config/common with tradingEnabled false; review it (python -m lib.ops config "
                      "show) and resume trading with: python -m lib.ops resume" if done
                      else "config/common exists: nothing changed")
                return 0
            if not is_empty(bus):
                missing = [p for p in default_documents(settings.mode) if bus.get(p) is None]
                if docs.common_config_path() in missing:
                    print(MISSING_CONFIG, file=sys.stderr)
                    return 1
            for path, what in seed(bus, settings.mode).items():
                print(f"{what:8s} {path}")
            if settings.mode == "live":
                print("live: nothing trades until config/common.tradingEnabled is true, a strategy is enabled "
                      "and config/live.account names the broker account")
    except (PipelineError, ValueError) as exc:
        print(f"seed failed: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
