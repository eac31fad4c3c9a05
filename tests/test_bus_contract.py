"""One contract for both bus backends: SQLite (embedded) and Firestore (the official emulator)."""
from __future__ import annotations

import datetime as dt
import multiprocessing

import pytest

from lib.bus import DELETE, open_bus
from lib.errors import (AlreadyExistsError, DocumentTooLargeError, InvalidPathError,
                        InvalidValueError, NotFoundError)

UTC = dt.timezone.utc


def test_set_get_roundtrip_keeps_types(bus):
    ts = dt.datetime(2025, 10, 29, 16, 10, 0, 123000, tzinfo=UTC)
    doc = {"updated_at": ts, "n": 3, "x": 1.5, "s": "é", "b": True, "none": None,
           "list": [1, "a", {"k": 2}], "map": {"inner": {"deep": [0.25]}}}
    bus.set("strategies/a/intent/latest", doc)
    got = bus.get("strategies/a/intent/latest")
    assert got == doc
    assert got["updated_at"].tzinfo is not None and got["updated_at"].utcoffset() == dt.timedelta(0)


def test_missing_document_is_none(bus):
    assert bus.get("config/nothing") is None


def test_odd_segment_document_path_refused(bus):
    with pytest.raises(InvalidPathError, match="even number of segments"):
        bus.set("positions/paper/latest_portfolio", {"a": 1})
    with pytest.raises(InvalidPathError):
        bus.get("positions/paper/latest_portfolio")
    assert bus.list("positions") == {}


def test_even_segment_collection_path_refused(bus):
    with pytest.raises(InvalidPathError, match="odd number"):
        bus.list("strategies/a")


@pytest.mark.parametrize("bad", ["", "/config/common", "config//common", "config/common/", "config/__x__"])
def test_malformed_paths_refused(bus, bad):
    with pytest.raises(InvalidPathError):
        bus.set(bad, {"a": 1})


def test_oversized_document_refused_and_previous_version_kept(bus):
    bus.set("executions/big", {"v": 1})
    with pytest.raises(DocumentTooLargeError, match="1 MiB"):
        bus.set("executions/big", {"blob": "x" * int(1.1 * 1024 * 1024)})
    assert bus.get("executions/big") == {"v": 1}


def test_document_just_under_limit_accepted(bus):
    bus.set("executions/fits", {"blob": "x" * 1_000_000})
    assert len(bus.get("executions/fits")["blob"]) == 1_000_000


@pytest.mark.parametrize("value", [float("nan"), float("inf"), object(), {1, 2}, dt.datetime(2025, 1, 1)])
def test_values_firestore_refuses(bus, value):
    with pytest.raises(InvalidValueError) as err:
        bus.set("config/common", {"risk": {"limit": value}})
    assert "config/common" in str(err.value) and "risk.limit" in str(err.value)
    assert bus.get("config/common") is None


def test_create_only_refuses_existing(bus):
    bus.create("strategies/dummy", {"enabled": True})
    with pytest.raises(AlreadyExistsError):
        bus.create("strategies/dummy", {"enabled": False})
    assert bus.get("strategies/dummy") == {"enabled": True}


def test_update_merges_and_requires_existing(bus):
    with pytest.raises(NotFoundError):
        bus.update("config/common", {"tradingEnabled": False})
    bus.set("config/common", {"tradingEnabled": True, "exposure": {"overall": 1.0}})
    bus.update("config/common", {"tradingEnabled": False})
    assert bus.get("config/common") == {"tradingEnabled": False, "exposure": {"overall": 1.0}}


def test_delete(bus):
    bus.set("locks/x", {"a": 1})
    bus.delete("locks/x")
    bus.delete("locks/x")  # idempotent
    assert bus.get("locks/x") is None


def test_list_collection_only_direct_documents(bus):
    bus.set("strategies/b", {"n": 2})
    bus.set("strategies/a", {"n": 1})
    bus.set("strategies/a/intent/latest", {"n": 9})
    assert bus.list("strategies") == {"a": {"n": 1}, "b": {"n": 2}}
    assert bus.list("strategies/a/intent") == {"latest": {"n": 9}}


def test_subcollection_without_parent_is_not_listed(bus):
    # Firestore: a parent that was never written does not show up when its collection is listed.
    bus.set("strategies/ghost/intent/latest", {"n": 1})
    assert "ghost" not in bus.list("strategies")


def test_get_many_returns_all_in_order(bus):
    bus.set("config/common", {"a": 1})
    bus.set("config/paper", {"account": "DU1"})
    got = bus.get_many(["config/paper", "config/missing", "config/common"])
    assert list(got) == ["config/paper", "config/missing", "config/common"]
    assert got == {"config/paper": {"account": "DU1"}, "config/missing": None, "config/common": {"a": 1}}


def test_transact_lease_semantics(bus):
    def acquire(owner):
        def fn(current):
            if current is None or current["owner"] == owner:
                return {"owner": owner}
            return None
        return fn

    assert bus.transact("locks/commander-paper", acquire("a")) == {"owner": "a"}
    assert bus.transact("locks/commander-paper", acquire("b")) == {"owner": "a"}
    assert bus.transact("locks/commander-paper", lambda cur: DELETE) is None
    assert bus.get("locks/commander-paper") is None


def test_transact_error_leaves_document_unchanged(bus):
    bus.set("locks/l", {"owner": "a"})

    def boom(current):
        raise RuntimeError("decided not to")

    with pytest.raises(RuntimeError):
        bus.transact("locks/l", boom)
    with pytest.raises(DocumentTooLargeError):
        bus.transact("locks/l", lambda cur: {"blob": "x" * 1_200_000})
    assert bus.get("locks/l") == {"owner": "a"}


def _writer(url: str, worker: int, count: int) -> None:
    bus = open_bus(url)
    for i in range(count):
        bus.set(f"runs/w{worker}-{i:03d}", {"worker": worker, "i": i})
        bus.transact("counters/shared", lambda cur: {"n": (cur or {"n": 0})["n"] + 1})
    bus.close()


def test_sqlite_concurrent_processes_lose_nothing(sqlite_url):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(sqlite_url, w, 50)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    bus = open_bus(sqlite_url)
    docs = bus.list("runs")
    assert len(docs) == 200
    assert {(d["worker"], d["i"]) for d in docs.values()} == {(w, i) for w in range(4) for i in range(50)}
    assert bus.get("counters/shared") == {"n": 200}


def test_unknown_bus_url():
    with pytest.raises(ValueError, match="unknown bus URL"):
        open_bus("redis://x")


def test_firestore_batch_read_is_one_round_trip(firestore_url, monkeypatch):
    bus = open_bus(firestore_url)
    for i in range(30):
        bus.set(f"strategies/s{i:02d}", {"i": i})
    calls = {"get_all": 0, "get": 0}
    real_get_all = bus._client.get_all
    monkeypatch.setattr(bus._client, "get_all", lambda *a, **k: (calls.__setitem__("get_all", calls["get_all"] + 1),
                                                                 real_get_all(*a, **k))[1])
    from google.cloud.firestore_v1.document import DocumentReference
    real_get = DocumentReference.get
    monkeypatch.setattr(DocumentReference, "get", lambda self, *a, **k: (calls.__setitem__("get", calls["get"] + 1),
                                                                         real_get(self, *a, **k))[1])
    got = bus.get_many([f"strategies/s{i:02d}" for i in range(30)] + ["strategies/missing"])
    assert calls == {"get_all": 1, "get": 0}
    assert [got[f"strategies/s{i:02d}"]["i"] for i in range(30)] == list(range(30))
    assert got["strategies/missing"] is None


# ---- atomic multi-document commit (write-ahead of an execution, fencing by the lease) ----------
from lib.bus import Write  # noqa: E402
from lib.errors import PreconditionFailedError  # noqa: E402


def test_commit_applies_every_write(bus):
    bus.set("state/s", {"a": 1, "b": 2})
    bus.set("config/gone", {"x": 1})
    bus.commit([Write("create", "executions/e1", {"status": "placing"}),
                Write("merge", "state/s", {"b": 3, "c": 4}),
                Write("set", "config/other", {"y": 2}),
                Write("delete", "config/gone")])
    assert bus.get("executions/e1") == {"status": "placing"}
    assert bus.get("state/s") == {"a": 1, "b": 3, "c": 4}
    assert bus.get("config/other") == {"y": 2}
    assert bus.get("config/gone") is None


def test_commit_is_all_or_nothing_when_a_create_finds_the_document(bus):
    bus.set("executions/e1", {"status": "completed"})
    bus.set("state/s", {"a": 1})
    with pytest.raises(AlreadyExistsError):
        bus.commit([Write("set", "state/s", {"a": 2}), Write("create", "executions/e1", {"status": "placing"})])
    assert bus.get("state/s") == {"a": 1}
    assert bus.get("executions/e1") == {"status": "completed"}


def test_commit_merge_of_missing_document_writes_nothing(bus):
    with pytest.raises(NotFoundError):
        bus.commit([Write("set", "state/s", {"a": 2}), Write("merge", "executions/none", {"x": 1})])
    assert bus.get("state/s") is None


def test_commit_precondition_fences_a_lost_lease(bus):
    bus.set("locks/commander-paper", {"owner": "run-b", "generation": 8})

    def held_by(owner, generation):
        return lambda doc: None if doc and doc.get("owner") == owner and doc.get("generation") == generation \
            else f"lease is held by {doc and doc.get('owner')!r} (generation {doc and doc.get('generation')})"

    with pytest.raises(PreconditionFailedError, match="run-b"):
        bus.commit([Write("create", "executions/e1", {"status": "placing"})],
                   expect={"locks/commander-paper": held_by("run-a", 7)})
    assert bus.get("executions/e1") is None
    bus.commit([Write("create", "executions/e1", {"status": "placing"})],
               expect={"locks/commander-paper": held_by("run-b", 8)})
    assert bus.get("executions/e1") == {"status": "placing"}


def test_commit_validates_every_write_before_writing(bus):
    with pytest.raises(InvalidPathError):
        bus.commit([Write("set", "config/ok", {"a": 1}), Write("set", "positions/paper/latest", {"a": 1})])
    with pytest.raises(InvalidValueError):
        bus.commit([Write("set", "config/ok", {"a": 1}), Write("set", "config/nan", {"a": float("nan")})])
    with pytest.raises(DocumentTooLargeError):
        bus.commit([Write("set", "config/ok", {"a": 1}), Write("set", "config/big", {"b": "x" * 1_100_000})])
    assert bus.get("config/ok") is None


def test_commit_merge_that_grows_past_the_limit_writes_nothing(bus):
    bus.set("executions/e1", {"blob": "x" * 700_000})
    with pytest.raises(DocumentTooLargeError):
        bus.commit([Write("set", "config/ok", {"a": 1}), Write("merge", "executions/e1", {"more": "y" * 500_000})])
    assert bus.get("config/ok") is None
    assert len(bus.get("executions/e1")["blob"]) == 700_000
