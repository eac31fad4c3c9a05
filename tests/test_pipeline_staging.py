"""The seed's "staging" set-up end to end: Firestore emulator + fake IB Gateway + fake-gcs-server.

The notebooks' kernels reach the emulators through FIRESTORE_EMULATOR_HOST and
STORAGE_EMULATOR_HOST (set by the fixtures) and the gateway through its ib:// URL.
"""
from __future__ import annotations

import time

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from lib import documents as docs
from lib import pipeline
from lib.bus import open_bus
from lib.progress import Progress
from lib.seed import seed
from lib.settings import Settings
from tests.fake_gateway import FakeGateway

STRATEGIES = ["dummy", "spy_macd_vixy", "test_signal_generator"]  # the last on 30-minute bars


@pytest.fixture
def staging(firestore_url, gcs_bucket, tmp_path):
    gateway = FakeGateway(account="DU7654321").start()
    settings = Settings(mode="paper", bus=firestore_url, broker=f"ib://127.0.0.1:{gateway.port}?client_id=7&timeout=10",
                        audit=f"gs://{gcs_bucket}/staging", data=str(tmp_path / "data"))
    bus = open_bus(firestore_url)
    seed(bus)
    yield settings, gateway, bus, gcs_bucket, tmp_path
    bus.close()
    gateway.stop()
    assert not gateway.protocol_errors, gateway.protocol_errors


def run(settings, tmp_path, **options):
    options.setdefault("strategies", STRATEGIES)
    options.setdefault("force", True)  # the fake gateway trades on any day
    return pipeline.run(settings, pipeline.Options(**options), Progress(stream=open(tmp_path / "log.txt", "a")))


def blobs(bucket: str) -> list[storage.Blob]:
    return list(storage.Client(credentials=AnonymousCredentials(), project="local").list_blobs(bucket))


def test_staging_dry_run_then_real(staging):
    settings, gateway, bus, bucket, tmp_path = staging
    dry = run(settings, tmp_path, dry_run=True)
    assert dry.exit_code == 0, dry.message
    assert dry.status == "dry_run" and dry.record["decision"]["orders"]
    assert gateway.orders() == [] and gateway.positions() == {}
    for sid in STRATEGIES:
        assert bus.get(docs.intent_path(sid))["status"] == "success"
    assert bus.get(docs.intent_path("test_signal_generator"))["metadata"]["bars"] == 5 * 13  # 30-minute bars
    snap = bus.get(docs.portfolio_path("paper"))
    assert snap["account"] == "DU7654321"

    real = run(settings, tmp_path)
    assert real.exit_code == 0, real.message
    assert real.status == "completed"
    placed = real.record["orders_placed"]
    assert placed and all(o["status"] in ("PreSubmitted", "Submitted", "Filled") and not o["error"] for o in placed)
    assert sorted(o["orderRef"] for o in placed) == [f"cmdr-{real.execution_id}-{n}" for n in range(1, len(placed) + 1)]
    deadline = time.monotonic() + 10
    while any(o.status != "Filled" for o in gateway.orders()) and time.monotonic() < deadline:
        time.sleep(0.1)  # the fake fills market orders a moment after acknowledging them
    held = gateway.positions()
    final = {r["instrument"].split(":")[1]: r["quantity"] for r in real.record["decision"]["final_target"]}
    assert {s: q for s, q in held.items() if q} == {s: q for s, q in final.items() if q}

    # Every executed notebook of both runs is in the bucket, once, as the audit.
    names = sorted(b.name for b in blobs(bucket))
    assert len(names) == 10 and all(n.startswith("staging/") and n.endswith(".ipynb") for n in names)
    kept = {b.name: b for b in blobs(bucket)}
    commander = next(b for n, b in kept.items() if real.run_id in n and n.endswith("commander.ipynb"))
    assert commander.content_type == "application/x-ipynb+json"
    assert commander.metadata["run_id"] == real.run_id and commander.metadata["stage"] == "commander"
    assert real.record["notebooks"][-1] == f"gs://{bucket}/{commander.name}"

    # Idempotent against the gateway too.
    again = run(settings, tmp_path)
    assert again.exit_code == 0 and again.record["orders_placed"] == []
