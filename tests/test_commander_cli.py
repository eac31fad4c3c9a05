"""The CLI contract: `python -m lib.commander decide|replay FILE|-`."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from lib.canonical import dumps
from lib.commander import decide
from tests.commander_inputs import holding, inputs, intent, order, portfolio, strategy, target

ROOT = Path(__file__).resolve().parents[1]


def run(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "lib.commander", *args], cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=60)


def sample():
    return inputs({"a": strategy(1.0)}, {"a": intent(target("SPY", 20))},
                  portfolio([holding("SPY", 10)], [order("SPY", "BUY", 2)]))


def test_decide_from_stdin_prints_the_decision():
    res = run("decide", "-", stdin=json.dumps(sample()))
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert [(o["action"], o["quantity"]) for o in out["orders"]] == [("BUY", 8)]
    assert out == json.loads(dumps(decide(sample())))


def test_decide_from_file_nothing_to_do_still_exits_0(tmp_path):
    i = inputs({"a": strategy(1.0)}, {"a": intent(target("SPY", 10))}, portfolio([holding("SPY", 10)]))
    f = tmp_path / "in.json"
    f.write_text(json.dumps(i))
    res = run("decide", str(f))
    assert res.returncode == 0 and json.loads(res.stdout)["orders"] == []


def test_invalid_input_exits_2_with_reason():
    res = run("decide", "-", stdin="{not json")
    assert res.returncode == 2 and "not valid JSON" in res.stderr and res.stdout == ""
    res = run("decide", "-", stdin=json.dumps({"now": "yesterday"}))
    assert res.returncode == 2 and "'now'" in res.stderr
    res = run("decide", "-", stdin='{"now": NaN}')
    assert res.returncode == 2 and "NaN" in res.stderr
    res = run("decide", "/nonexistent/file.json")
    assert res.returncode == 2 and "cannot read" in res.stderr


def test_replay_matches_and_detects_tampering(tmp_path):
    i = sample()
    record = {"execution_id": "exec-2", "inputs": i, "decision": json.loads(dumps(decide(i)))}
    f = tmp_path / "rec.json"
    f.write_text(json.dumps(record))
    res = run("replay", str(f))
    assert res.returncode == 0 and json.loads(res.stdout)["orders_match"] is True
    record["decision"]["orders"][0]["quantity"] = 9
    f.write_text(json.dumps(record))
    res = run("replay", str(f))
    assert res.returncode == 1 and "DIFFER" in res.stderr
    f.write_text(json.dumps({"execution_id": "x"}))
    assert run("replay", str(f)).returncode == 2


def test_replay_reads_inputs_spilled_to_the_audit_store(tmp_path):
    from lib.audit import open_audit
    i = sample()
    link = open_audit(str(tmp_path / "runs")).put_bytes("inputs/exec-2.json", dumps(i).encode())
    record = {"execution_id": "exec-2", "inputs_ref": link, "decision": json.loads(dumps(decide(i)))}
    f = tmp_path / "rec.json"
    f.write_text(json.dumps(record))
    res = run("replay", str(f))
    assert res.returncode == 0 and json.loads(res.stdout)["decision_match"] is True
