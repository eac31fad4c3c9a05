"""Authentication of every route (pages and /orchestrator) once the app listens beyond loopback.

Google ID tokens are signed here with a local RSA key and verified with google-auth against the
matching certificate, passed in as Google's certificates would be (no network)."""
from __future__ import annotations

import datetime as dt
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient
from google.auth import crypt, jwt

from lib.web import auth
from tests.pipeline_env import PipelineEnv

SERVICE_URL = "https://commander-abc-uc.a.run.app"
SCHEDULER = "scheduler@proj.iam.gserviceaccount.com"


@pytest.fixture(scope="module")
def key():
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-google")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
            .sign(private, hashes.SHA256()))
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return {"signer": crypt.RSASigner.from_string(pem, key_id="k1"),
            "certs": {"k1": cert.public_bytes(serialization.Encoding.PEM).decode()}}


def token(key, *, aud=SERVICE_URL, email=SCHEDULER, iss="https://accounts.google.com", expires_in=600) -> str:
    now = int(time.time())
    claims = {"iss": iss, "aud": aud, "sub": "1234", "email": email, "email_verified": True,
              "iat": now - 60 if expires_in > 0 else now - 7200, "exp": now + expires_in}
    return jwt.encode(key["signer"], claims).decode()


@pytest.fixture
def app_env(tmp_path, monkeypatch):
    env = PipelineEnv.embedded(tmp_path)
    for k, v in {"COMMANDER_BUS": env.settings.bus, "COMMANDER_BROKER": env.settings.broker,
                 "COMMANDER_AUDIT": env.settings.audit}.items():
        monkeypatch.setenv(k, v)
    for k in ("K_SERVICE", "COMMANDER_WEB_TOKEN", "COMMANDER_WEB_AUDIENCE", "COMMANDER_WEB_ALLOWED"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("COMMANDER_WEB_HOST", "127.0.0.1")
    import main
    return main.app, monkeypatch


def test_loopback_needs_no_credential_but_any_other_address_does(app_env):
    app, _ = app_env
    assert TestClient(app, base_url="http://127.0.0.1").get("/runs").status_code == 200
    # A request that came in on a non-loopback socket (the TestClient's "testserver").
    res = TestClient(app).get("/runs")
    assert res.status_code == 401 and "authentication required" in res.json()["detail"]
    assert TestClient(app).post("/orchestrator", json={}).status_code == 401


def test_bearer_token_off_loopback(app_env):
    app, mp = app_env
    mp.setenv("COMMANDER_WEB_HOST", "0.0.0.0")
    mp.setenv("COMMANDER_WEB_TOKEN", "s3cret-token-value")
    c = TestClient(app, base_url="http://127.0.0.1")  # bound to 0.0.0.0: even a local caller must authenticate
    assert c.get("/runs").status_code == 401
    assert c.get("/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = c.get("/runs", headers={"Authorization": "Bearer s3cret-token-value"})
    assert ok.status_code == 200 and "s3cret" not in ok.text
    # No token configured while listening beyond loopback: everything is refused.
    mp.delenv("COMMANDER_WEB_TOKEN")
    res = c.get("/healthz", headers={"Authorization": "Bearer anything"})
    assert res.status_code == 401 and "COMMANDER_WEB_TOKEN is not set" in res.json()["detail"]


def test_cloud_run_google_id_token(app_env, key):
    app, mp = app_env
    mp.setenv("K_SERVICE", "commander")
    mp.setenv("COMMANDER_WEB_AUDIENCE", SERVICE_URL)
    mp.setenv("COMMANDER_WEB_ALLOWED", f"other@proj.iam.gserviceaccount.com, {SCHEDULER}")
    app.state.google_certs = lambda: key["certs"]
    try:
        c = TestClient(app, base_url="http://127.0.0.1")
        assert c.get("/runs").status_code == 401
        assert c.get("/runs", headers={"Authorization": f"Bearer {token(key)}"}).status_code == 200
        for bad, why in ((token(key, aud="https://elsewhere.example"), "audience"),
                         (token(key, expires_in=-3600), "expired"),
                         (token(key, email="intruder@proj.iam.gserviceaccount.com"), "not among"),
                         (token(key, iss="https://evil.example"), "not issued by Google")):
            res = c.get("/runs", headers={"Authorization": f"Bearer {bad}"})
            assert res.status_code == 401 and why.lower() in res.json()["detail"].lower(), res.json()
        # A token signed by another key is refused too.
        other = {"signer": crypt.RSASigner.from_string(rsa.generate_private_key(65537, 2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode(),
            key_id="k1")}
        assert c.get("/runs", headers={"Authorization": f"Bearer {token(other)}"}).status_code == 401
        mp.delenv("COMMANDER_WEB_AUDIENCE")
        res = c.get("/runs", headers={"Authorization": f"Bearer {token(key)}"})
        assert res.status_code == 401 and "COMMANDER_WEB_AUDIENCE" in res.json()["detail"]
    finally:
        del app.state.google_certs


def test_orchestrator_over_http_only_plans_unless_told(app_env):
    import main
    app, _ = app_env
    res = TestClient(app, base_url="http://127.0.0.1").post(
        "/orchestrator", json={"strategies": ["dummy"], "runReconcile": True, "asOf": "2026-11-20"})
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["status"] == "dry_run" and body["orders"]  # planned, not placed
    import os
    from lib.broker.sim import SimBroker
    with SimBroker(os.environ["COMMANDER_BROKER"][len("sim:///"):]) as sim:
        assert [h for h in sim.snapshot().holdings if h.quantity] == []  # the broker received nothing
    assert main.OrchestratorRequest(dryRun=False).dryRun is False


def test_guard_rules():
    assert not auth.Guard({}).required("127.0.0.1")
    assert auth.Guard({}).required("10.0.0.5")
    assert auth.Guard({"COMMANDER_WEB_HOST": "0.0.0.0"}).required("127.0.0.1")
    assert auth.Guard({"K_SERVICE": "x"}).required("127.0.0.1")
    assert auth.Guard({"COMMANDER_WEB_TOKEN": "t"}).required("::1")
    assert auth.is_loopback("::1") and auth.is_loopback("localhost") and not auth.is_loopback("0.0.0.0")


def test_serve_refuses_to_listen_beyond_loopback_without_auth(monkeypatch, capsys):
    from lib.web.__main__ import main as serve
    monkeypatch.delenv("COMMANDER_WEB_TOKEN", raising=False)
    monkeypatch.delenv("K_SERVICE", raising=False)
    assert serve(["--host", "0.0.0.0", "--port", "0"]) == 2
    assert "without authentication" in capsys.readouterr().err
