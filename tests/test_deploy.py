"""deploy/: what can be checked without a Docker engine or GCP. Every path the Dockerfile copies
exists; the image's commands (the service's and the job's) run in the project's venv; the
service's settings resolve; no file carries a secret."""
from __future__ import annotations

import json
import os
import re
import shlex
import string
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from tests.emulators import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PLACEHOLDERS = {"PROJECT": "my-project", "REGION": "europe-west1", "IMAGE": "img", "BUCKET": "bkt",
                "IB_HOST": "10.8.0.10", "SERVICE_URL": "https://commander-abc-ew.a.run.app"}


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of deploy/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    return [tuple(line.split(None, 1)) for line in text.splitlines() if line.strip() and not line.startswith("#")]


def manifest(name: str) -> dict:
    return yaml.safe_load(string.Template((DEPLOY / name).read_text()).substitute(PLACEHOLDERS))


def venv_command(argv: list[str]) -> list[str]:
    """The image's command with this checkout's venv python for `python` (the image puts its venv first on PATH)."""
    return [sys.executable if argv[0] == "python" else argv[0], *argv[1:]]


def test_every_copied_path_exists_and_the_venv_comes_first():
    steps = dockerfile()
    copies = [shlex.split(args) for op, args in steps if op == "COPY"]
    assert copies
    for *sources, _dest in copies:
        for src in sources:
            assert not src.startswith("--"), "no COPY --from: the build has one stage"
            assert (ROOT / src).exists(), f"the Dockerfile copies {src}, which does not exist"
    env = " ".join(args for op, args in steps if op == "ENV")
    assert "VIRTUAL_ENV=/app/.venv" in env and "PATH=/app/.venv/bin:$PATH" in env
    assert any(op == "RUN" and "python -m venv .venv" in args and "pip install" in args for op, args in steps)
    # what the pipeline imports at run time is in the image: lib/, the notebooks, the two entry points
    copied = {Path(s).parts[0] for *sources, _ in copies for s in sources}
    assert {"lib", "notebooks", "run_pipeline.py", "main.py", "pyproject.toml"} <= copied


def test_the_service_command_serves_in_the_venv():
    [cmd] = [json.loads(args) for op, args in dockerfile() if op == "CMD"]
    assert cmd[:3] == ["python", "-m", "lib.web"]
    port = free_port()
    env = {**os.environ, "PORT": str(port), "K_SERVICE": "commander",
           "COMMANDER_WEB_AUDIENCE": PLACEHOLDERS["SERVICE_URL"], "COMMANDER_WEB_ALLOWED": "s@p.iam.gserviceaccount.com"}
    proc = subprocess.Popen(venv_command(cmd), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, 60, proc, "the image's command")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10)
            status = 200
        except urllib.error.HTTPError as err:
            status = err.code
        assert status == 401  # up, and on Cloud Run every route wants a Google ID token
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_job_command_runs_in_the_venv():
    job = manifest("job.yaml")
    [container] = job["spec"]["template"]["spec"]["template"]["spec"]["containers"]
    res = subprocess.run(venv_command(container["command"] + container["args"]), cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "CLOUD_RUN_TASK_INDEX" in res.stdout and "--manifest" in res.stdout
    # what the pipeline overrides per execution exists in the definition it overrides
    assert container["command"] == ["python", "run_pipeline.py"] and container["args"][0] == "task"
    assert job["spec"]["template"]["spec"]["template"]["spec"]["maxRetries"] >= 1


def test_the_service_settings_resolve_to_the_job():
    from lib.settings import resolve
    service = manifest("service.yaml")
    [container] = service["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    settings = resolve({}, env)
    assert settings.executor == "cloudrun://my-project/europe-west1/commander-notebooks"
    assert settings.executor.rsplit("/", 1)[1] == manifest("job.yaml")["metadata"]["name"]
    assert settings.bus.startswith("firestore://") and settings.audit.startswith("gs://")
    assert settings.broker.startswith("ib://") and ":4002" in settings.broker  # paper port by default


def test_no_file_carries_a_secret():
    for path in DEPLOY.iterdir():
        text = path.read_text()
        assert not re.search(r"(?i)(password|passwd|api[_-]?key|private[_-]?key|COMMANDER_WEB_TOKEN)\s*[:=]", text), path
        assert "BEGIN PRIVATE KEY" not in text and '"private_key"' not in text, path
    for name in ("job.yaml", "service.yaml"):
        containers = [c for c in yaml.safe_load_all((DEPLOY / name).read_text())][0]["spec"]["template"]["spec"]
        containers = containers.get("containers") or containers["template"]["spec"]["containers"]
        for c in containers:
            for e in c.get("env", []):
                assert not re.search(r"(?i)secret|token|password|key", e["name"]), (name, e["name"])
