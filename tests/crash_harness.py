"""Crash-safety scenarios: kill the Commander at a fault point, rerun it, count the truth at the broker.

A scenario runs `python run_pipeline.py commander` as a real process against a real broker (the
simulator's SQLite file, or the fake IB Gateway through the real ib_async client), makes it die by
SIGKILL at a named point (`$COMMANDER_FAULT`, see `lib.execution.fault_point`), reruns it one of
three ways, and then reads the broker itself — never our own record — to check:

- every planned order reached the broker at most once (orders counted by `orderRef`);
- the final positions equal the target once orders fill;
- no order of ours is left working (orphaned);
- every execution record ends in a terminal status that matches what the broker did, and every
  order of ours at the broker belongs to a recorded execution (no lost records).

`tests/test_crash_safety.py` runs the matrix in `make test`; `python scripts/fault_matrix.py`
prints it.
"""
from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

from lib import documents as docs
from lib.broker import Contract, OrderRequest
from lib.bus import open_bus
from lib.execution import UNFINISHED, state_path

ROOT = Path(__file__).resolve().parents[1]
UTC = dt.timezone.utc
PREFIX = "cmdr-"
TTL = 2.0  # lease seconds in the scenarios: a dead run's lease expires this long after its last beat
#: The crashing run's lease lives longer, so that "another host is blocked while it lives" holds even when
#: a busy machine takes seconds to start the next process; the test then waits for the real expiry.
CRASH_TTL = 8.0
#: The strategy's target; VIXY is held by hand first and must be sold (so the plan has a sell and buys).
TARGET = {"GLD": 10, "SPY": 5, "TLT": 20, "VIXY": 0}
START = {"VIXY": 50}
PLANNED = 4  # orders in the first plan: SELL VIXY, then BUY GLD, SPY, TLT
FAULT_POINTS = ("before_write_ahead", "after_write_ahead", "after_order:1", f"after_order:{PLANNED - 1}",
                "before_final_write", "after_final_write")
RERUN_MODES = ("reconcile", "no_reconcile", "lease_expiry")


@dataclasses.dataclass
class BrokerOrder:
    ref: str
    status: str
    action: str
    quantity: float
    filled: float
    symbol: str

    @property
    def working(self) -> bool:
        return self.status in ("PreSubmitted", "Submitted", "PendingSubmit", "ApiPending", "PendingCancel")


class SimWorld:
    """The embedded simulator: state in one SQLite file the test reads directly."""

    name = "sim"

    def __init__(self, tmp: Path):
        self.tmp = Path(tmp)
        self.sim_path = self.tmp / "sim.sqlite"
        self.broker_url = f"sim:///{self.sim_path}?as_of=2026-11-20"
        self.received: list[str] = []

    def price(self, symbol: str) -> float:
        from lib.broker.sim import load_market
        return load_market().bar(symbol, dt.date(2026, 11, 20)).close

    def start_holdings(self) -> None:
        from lib.broker.sim import MANUAL_CLIENT_ID, SimBroker
        with SimBroker(self.sim_path, mode="paper", client_id=MANUAL_CLIENT_ID, as_of="2026-11-20") as op:
            for symbol, qty in START.items():
                op.place_order(OrderRequest(Contract(symbol), "BUY", qty, order_ref="manual"))

    def orders(self) -> list[BrokerOrder]:
        from lib.broker.sim import MANUAL_CLIENT_ID, SimBroker
        with SimBroker(self.sim_path, mode="paper", client_id=MANUAL_CLIENT_ID) as op:
            return [BrokerOrder(s.order_ref, s.status, s.action, s.quantity, s.filled, s.contract.symbol)
                    for s in op.orders().values()]

    def positions(self) -> dict[str, float]:
        from lib.broker.sim import MANUAL_CLIENT_ID, SimBroker
        with SimBroker(self.sim_path, mode="paper", client_id=MANUAL_CLIENT_ID) as op:
            return {h.contract.symbol: h.quantity for h in op.snapshot().holdings if h.quantity}

    def settle(self) -> None:
        """Market orders fill at once on the simulator."""

    def received_refs(self) -> list[str]:
        return [o.ref for o in self.orders()]

    def close(self) -> None:
        pass


class IBWorld:
    """A fake IB Gateway in this process; the Commander connects to it over a socket."""

    name = "ib"

    def __init__(self, tmp: Path):
        from tests.fake_gateway import FakeGateway
        self.tmp = Path(tmp)
        self.gateway = FakeGateway(account="DU1234567", fill_delay=0.01).start()
        self.broker_url = f"ib://127.0.0.1:{self.gateway.port}?client_id=1&timeout=5"

    def price(self, symbol: str) -> float:
        return self.gateway.prices[symbol]

    def start_holdings(self) -> None:
        for symbol, qty in START.items():
            self.gateway.inject_order(symbol, "BUY", qty, None, order_ref="manual", client_id=99)
        self.settle()

    def orders(self) -> list[BrokerOrder]:
        return [BrokerOrder(o.order_ref, o.status, o.action, o.total_qty, o.filled, o.instrument.symbol)
                for o in self.gateway.orders()]

    def received_refs(self) -> list[str]:
        """Every placeOrder the gateway received (refused ones too): the strictest count."""
        return self.gateway.received_refs()

    def positions(self) -> dict[str, float]:
        return {s: q for s, q in self.gateway.positions().items() if q}

    def settle(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while any(o.working and o.status != "Submitted" for o in self.orders()) and time.monotonic() < deadline:
            time.sleep(0.02)

    def close(self) -> None:
        self.gateway.stop()


def seed_bus(bus_url: str, world, account: str | None = None) -> None:
    with open_bus(bus_url) as bus:
        bus.set(docs.common_config_path(), {
            "tradingEnabled": True, "tradingState": "active", "exposure": {"overall": 1.0},
            "orders": {"type": "MKT", "tif": "DAY", "order_ref_prefix": PREFIX},
            "risk": {"allow_short": False, "min_order_quantity": 1, "min_order_notional": 0.0,
                     "rebalance_threshold": 0.0}})
        bus.set(docs.mode_config_path("paper"), {"account": account})
        bus.set(docs.strategy_path("s"), {"name": "crash test", "enabled": True, "capital_allocation": 0.5,
                                           "risk_parameters": {"max_single_position_exposure": 1.0}})
    _publish(bus_url, world, TARGET)


class Scenario:
    """One world (broker), one bus, and the commander command line against them."""

    def __init__(self, world, tmp: Path):
        self.world, self.tmp = world, Path(tmp)
        self.bus_url = f"sqlite:///{self.tmp / 'bus.sqlite'}"
        self.audit = str(self.tmp / "runs")
        self.log: list[str] = []

    def commander(self, *args: str, fault: str | None = None, host: str = "host-a",
                  extra_env: dict | None = None, ttl: float = TTL) -> subprocess.CompletedProcess:
        env = {**os.environ, "COMMANDER_HOST_ID": host, "PYTHONPATH": str(ROOT)}
        env.pop("COMMANDER_FAULT", None)
        if fault:
            env["COMMANDER_FAULT"] = fault
        env.update(extra_env or {})
        cmd = [sys.executable, str(ROOT / "run_pipeline.py"), "commander", "--mode", "paper", "--bus", self.bus_url,
               "--broker", self.world.broker_url, "--audit", self.audit, "--lease-seconds", str(ttl), *args]
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        self.log.append(f"$ commander {' '.join(args)} fault={fault} host={host} → exit {done.returncode}\n"
                        f"{done.stdout}{done.stderr[-3000:]}")
        return done

    def wait_for_lease_expiry(self) -> None:
        """Sleep until the lease left by a dead run has expired by itself (no one deletes it)."""
        with open_bus(self.bus_url) as bus:
            held = bus.get(docs.lock_path("paper"))
        if held:
            left = (held["expires_at"] - dt.datetime.now(UTC)).total_seconds()
            time.sleep(max(0.0, left) + 0.3)

    # ---- the truth at the broker, and what our records say -------------------------------------
    def records(self) -> dict[str, dict]:
        with open_bus(self.bus_url) as bus:
            return bus.list("executions")

    def state(self) -> dict:
        with open_bus(self.bus_url) as bus:
            return bus.get(state_path("paper")) or {}

    def verdict(self, target: dict | None = None) -> dict:
        """Counts of duplicates, orphans, lost records and the final positions, from the broker."""
        self.world.settle()
        ours = [o for o in self.world.orders() if o.ref.startswith(PREFIX)]
        counts = collections.Counter(r for r in self.world.received_refs() if r.startswith(PREFIX))
        duplicates = sorted(ref for ref, n in counts.items() if n > 1)
        orphans = sorted(o.ref for o in ours if o.working)
        records = self.records()
        problems = []
        for eid, rec in records.items():
            if rec.get("status") in UNFINISHED:
                problems.append(f"{eid} left {rec['status']}")
            for row in rec.get("orders_placed") or []:
                at_broker = [o for o in ours if o.ref == row.get("orderRef")]
                said = row.get("outcome") or row.get("status")
                if said in ("not_sent", "NotPlaced", "NotNeeded") and at_broker:
                    problems.append(f"{row['orderRef']} recorded {said} but the broker has it")
                if said in ("filled", "Filled") and not (at_broker and at_broker[0].filled > 0):
                    problems.append(f"{row['orderRef']} recorded {said} but the broker has no fill")
        for o in ours:
            eid = o.ref[len(PREFIX):].rsplit("-", 1)[0]
            if eid not in records:
                problems.append(f"{o.ref} at the broker belongs to no recorded execution")
        unfinished = self.state().get("placing_execution_id")
        if unfinished:
            problems.append(f"state still points at unfinished {unfinished}")
        want = {s: q for s, q in (target or TARGET).items() if q}
        return {"duplicates": duplicates, "orphans": orphans, "record_problems": problems,
                "positions": self.world.positions(), "target": want,
                "converged": self.world.positions() == want}


def run_scenario(world, tmp: Path, point: str, mode: str) -> dict:
    """Seed, crash at `point`, rerun by `mode`, run once more; returns the verdict plus what happened."""
    sc = Scenario(world, tmp)
    world.start_holdings()
    seed_bus(sc.bus_url, world)
    crashed = sc.commander("--reconcile", fault=point, ttl=CRASH_TTL)
    killed = crashed.returncode == -9
    if mode == "reconcile":
        rerun = sc.commander("--reconcile")
    elif mode == "no_reconcile":
        rerun = sc.commander()
    else:
        # Another machine: it cannot see that the holder died, so it must wait for the lease to expire.
        blocked = sc.commander(host="host-b")
        if killed and blocked.returncode != 3:
            raise AssertionError(f"a live-looking lease did not block the other host:\n{sc.log[-1]}")
        sc.wait_for_lease_expiry()
        rerun = sc.commander(host="host-b")
    world.settle()
    again = sc.commander("--reconcile")  # converged: nothing more to do, and nothing doubled
    verdict = sc.verdict()
    verdict.update(point=point, mode=mode, broker=world.name, killed=killed, rerun_exit=rerun.returncode,
                   last_exit=again.returncode, last_summary=(again.stdout.splitlines() or [""])[1].strip()
                   if len(again.stdout.splitlines()) > 1 else again.stdout, log=sc.log)
    return verdict


def passed(v: dict) -> bool:
    return (not v["duplicates"] and not v["orphans"] and not v["record_problems"] and v["converged"]
            and v["rerun_exit"] == 0 and v["last_exit"] == 0 and "No orders needed" in v["last_summary"])


# ---- connection faults (IB only: the fake gateway drops, restarts and fills on its own) -------------
CONNECTION_FAULTS = ("drop_before_ack:1", f"drop_before_ack:{PLANNED}", "drop_after_ack:1",
                     f"drop_after_ack:{PLANNED - 1}", "restart_with_rolled_back_ids", "fills_while_disconnected")


def run_connection_fault(world: IBWorld, tmp: Path, fault: str, mode: str) -> dict:
    """A connection fault on the fake IB Gateway, then a rerun by `mode`, then once more."""
    sc = Scenario(world, tmp)
    world.start_holdings()
    seed_bus(sc.bus_url, world)
    gw = world.gateway
    first = None
    if fault.startswith("drop_before_ack:"):
        gw.drop_before_ack(int(fault.split(":")[1]))
        first = sc.commander("--reconcile")
    elif fault.startswith("drop_after_ack:"):
        gw.drop_after_orders(int(fault.split(":")[1]))
        first = sc.commander("--reconcile")
    elif fault == "restart_with_rolled_back_ids":
        first = sc.commander("--reconcile")
        world.settle()
        gw.restart(next_order_id=1)  # IB Gateway restarts have rolled nextValidId back
        new_target = {**TARGET, "GLD": TARGET["GLD"] + 5, "SPY": TARGET["SPY"] + 3}
        _publish(sc.bus_url, world, new_target)
        world.target = new_target
    elif fault == "fills_while_disconnected":
        with open_bus(sc.bus_url) as bus:  # orders that wait for the closing auction
            cfg = bus.get(docs.common_config_path())
            cfg["orders"] = {**cfg["orders"], "type": "MOC"}
            bus.set(docs.common_config_path(), cfg)
        first = sc.commander("--reconcile")
        gw.run_closing_auction()  # they fill while nobody is connected
    if mode == "reconcile":
        rerun = sc.commander("--reconcile")
    elif mode == "no_reconcile":
        rerun = sc.commander()
    else:
        sc.wait_for_lease_expiry()
        rerun = sc.commander(host="host-b")
    world.settle()
    if fault == "fills_while_disconnected":
        gw.run_closing_auction()
    again = sc.commander("--reconcile")
    world.settle()
    verdict = sc.verdict(target=getattr(world, "target", None))
    verdict.update(point=fault, mode=mode, broker="ib", killed=first is not None, rerun_exit=rerun.returncode,
                   last_exit=again.returncode,
                   last_summary=(again.stdout.splitlines() or ["", ""])[1].strip() if len(again.stdout.splitlines()) > 1
                   else again.stdout, log=sc.log)
    return verdict


def _publish(bus_url: str, world, target: dict) -> None:
    now = dt.datetime.now(UTC)
    with open_bus(bus_url) as bus:
        bus.set(docs.intent_path("s"), {
            "updated_at": now, "status": "success", "error_message": None, "metadata": {},
            "target_positions": [{"symbol": s, "secType": "STK", "currency": "USD", "exchange": "SMART",
                                  "quantity": q, "price": world.price(s)} for s, q in target.items()]})
