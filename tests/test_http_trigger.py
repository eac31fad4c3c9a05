"""The Cloud Run trigger through FastAPI's test client, on the embedded defaults in a temp folder."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.pipeline_env import PipelineEnv


@pytest.fixture
def client(tmp_path, monkeypatch):
    env = PipelineEnv.embedded(tmp_path)
    monkeypatch.setenv("COMMANDER_BUS", env.settings.bus)
    monkeypatch.setenv("COMMANDER_BROKER", env.settings.broker)
    monkeypatch.setenv("COMMANDER_AUDIT", env.settings.audit)
    import main
    # On loopback, where the app asks for no credential (tests/test_web_auth.py covers the rest).
    return TestClient(main.app, base_url="http://127.0.0.1"), env


def test_healthz(client):
    c, env = client
    res = c.get("/healthz")
    assert res.status_code == 200 and res.json()["mode"] == "paper" and res.json()["broker"] == env.settings.broker


def test_orchestrator_seed_body_dry_run(client):
    c, env = client
    res = c.post("/orchestrator", json={"strategies": ["dummy"], "dryRun": True, "runReconcile": True,
                                        "asOf": "2026-11-20"})
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["status"] == "dry_run" and body["orders"] and body["summary"].startswith("Dry run")
    assert len(body["notebooks"]) == 3
    assert env.bus().get(f"executions/{body['execution_id']}")["status"] == "dry_run"


def test_orchestrator_rejects_unknown_fields_and_strategies(client):
    c, _ = client
    bad = c.post("/orchestrator", json={"dryrun": True})
    assert bad.status_code == 400 and bad.json()["message"] == "request body: field 'dryrun' is not a known field"
    future = c.post("/orchestrator", json={"dryRun": True, "asOf": "2099-01-02"})
    assert future.status_code == 400 and "asOf 2099-01-02 is in the future" in future.json()["message"]
    res = c.post("/orchestrator", json={"strategies": ["nope"], "dryRun": True, "asOf": "2026-11-20"})
    assert res.status_code == 400 and "unknown strategies" in res.json()["message"]
