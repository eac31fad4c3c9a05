"""The embedded bus: one SQLite file, safe for several processes at once.

WAL mode lets readers proceed while one writer commits; `BEGIN IMMEDIATE` takes the write lock
before a read-modify-write so two processes never interleave inside `transact`.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from lib.bus import rules
from lib.bus.base import DELETE, Bus, Write, _check_page, check_writes
from lib.errors import AlreadyExistsError, BusUnavailableError, NotFoundError, PreconditionFailedError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    path        TEXT PRIMARY KEY,
    collection  TEXT NOT NULL,
    id          TEXT NOT NULL,
    data        TEXT NOT NULL,
    update_time TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS documents_by_collection ON documents (collection, id);
"""

_UPSERT = ("INSERT INTO documents (path, collection, id, data, update_time) VALUES (?, ?, ?, ?, ?) "
           "ON CONFLICT(path) DO UPDATE SET data = excluded.data, update_time = excluded.update_time")
_TS = "__timestamp__"  # reserved in Firestore, so it can never collide with a stored field name


def _encode(value):
    if isinstance(value, dt.datetime):
        return {_TS: value.astimezone(dt.timezone.utc).isoformat()}
    if isinstance(value, bytes):
        raise TypeError("bytes")  # never reached: bytes are stored via _default below
    raise TypeError(type(value).__name__)


def _decode_hook(obj: dict):
    if len(obj) == 1 and _TS in obj:
        return dt.datetime.fromisoformat(obj[_TS])
    return obj


def _dumps(data: dict) -> str:
    return json.dumps(data, default=_encode, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _loads(text: str) -> dict:
    return json.loads(text, object_hook=_decode_hook)


class SqliteBus(Bus):
    """`sqlite:///PATH` — the embedded default (a file under runs/)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self._local = threading.local()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as conn:
                conn.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise BusUnavailableError(f"cannot open the SQLite bus at {self.path}: {exc}") from exc

    # One connection per thread and process: sqlite3 connections must not cross a fork.
    def _connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def _run(self, what: str, fn):
        try:
            return fn(self._connect())
        except sqlite3.Error as exc:
            raise BusUnavailableError(f"SQLite bus {self.path}: {what} failed: {exc}") from exc

    @staticmethod
    def _row(path: str, data: dict) -> tuple[str, str, str, str, str]:
        collection, _, doc_id = path.rpartition("/")
        now = dt.datetime.now(dt.timezone.utc).isoformat()
        return path, collection, doc_id, _dumps(data), now

    def get(self, path: str) -> dict | None:
        rules.check_document_path(path)
        row = self._run("get", lambda c: c.execute("SELECT data FROM documents WHERE path = ?", (path,)).fetchone())
        return _loads(row[0]) if row else None

    def get_many(self, paths: Iterable[str]) -> dict[str, dict | None]:
        paths = rules.check_document_paths(paths)
        if not paths:
            return {}
        found: dict[str, dict] = {}

        def read(conn):
            # One statement per chunk keeps below SQLite's host-parameter limit.
            for i in range(0, len(paths), 500):
                chunk = paths[i:i + 500]
                marks = ",".join("?" * len(chunk))
                for p, data in conn.execute(f"SELECT path, data FROM documents WHERE path IN ({marks})", chunk):
                    found[p] = _loads(data)

        self._run("get_many", read)
        return {p: found.get(p) for p in paths}

    def set(self, path: str, data: dict) -> None:
        rules.check_document(path, data)
        row = self._row(path, data)
        self._run("set", lambda c: c.execute(
            "INSERT INTO documents (path, collection, id, data, update_time) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(path) DO UPDATE SET data = excluded.data, update_time = excluded.update_time", row))

    def create(self, path: str, data: dict) -> None:
        rules.check_document(path, data)
        row = self._row(path, data)
        try:
            self._connect().execute(
                "INSERT INTO documents (path, collection, id, data, update_time) VALUES (?, ?, ?, ?, ?)", row)
        except sqlite3.IntegrityError:
            raise AlreadyExistsError(f"{path}: document already exists (create-only write refused)") from None
        except sqlite3.Error as exc:
            raise BusUnavailableError(f"SQLite bus {self.path}: create failed: {exc}") from exc

    def delete(self, path: str) -> None:
        rules.check_document_path(path)
        self._run("delete", lambda c: c.execute("DELETE FROM documents WHERE path = ?", (path,)))

    def list(self, collection: str) -> dict[str, dict]:
        rules.check_collection_path(collection)
        rows = self._run("list", lambda c: c.execute(
            "SELECT id, data FROM documents WHERE collection = ? ORDER BY id", (collection,)).fetchall())
        return {doc_id: _loads(data) for doc_id, data in rows}

    def page(self, collection: str, *, order_by: str, limit: int, descending: bool = True,
             after=None, before=None) -> list[tuple[str, dict]]:
        _check_page(collection, order_by, limit)
        # Timestamps are stored as {"__timestamp__": ISO-8601 UTC}: compare those strings.
        key = f"COALESCE(json_extract(data, '$.\"{order_by}\".{_TS}'), json_extract(data, '$.\"{order_by}\"'))"
        sql, args = f"SELECT id, data FROM documents WHERE collection = ? AND {key} IS NOT NULL", [collection]
        for bound, op in ((after, ">"), (before, "<")):
            if bound is not None:
                sql += f" AND {key} {op} ?"
                args.append(bound.astimezone(dt.timezone.utc).isoformat() if isinstance(bound, dt.datetime) else bound)
        order = "DESC" if descending else "ASC"
        sql += f" ORDER BY {key} {order}, id {order} LIMIT ?"
        rows = self._run("page", lambda c: c.execute(sql, (*args, limit)).fetchall())
        return [(doc_id, _loads(data)) for doc_id, data in rows]

    def _begin(self) -> sqlite3.Connection:
        """This thread's connection inside `BEGIN IMMEDIATE`: the write lock, taken before reading."""
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise BusUnavailableError(f"SQLite bus {self.path}: cannot start a transaction: {exc}") from exc
        return conn

    def transact(self, path: str, fn: Callable[[dict | None], object]) -> dict | None:
        rules.check_document_path(path)
        conn = self._begin()
        try:
            row = conn.execute("SELECT data FROM documents WHERE path = ?", (path,)).fetchone()
            current = _loads(row[0]) if row else None
            new = fn(current)
            if new is DELETE:
                conn.execute("DELETE FROM documents WHERE path = ?", (path,))
                result = None
            elif new is None:
                result = current
            else:
                rules.check_document(path, new)
                conn.execute(_UPSERT, self._row(path, new))
                result = _loads(_dumps(new))
            conn.execute("COMMIT")
            return result
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def commit(self, writes: Sequence[Write], expect: Mapping[str, Callable] | None = None) -> None:
        writes = check_writes(writes)
        expect = dict(expect or {})
        for path in expect:
            rules.check_document_path(path)
        conn = self._begin()
        upsert = _UPSERT

        def current(path):
            row = conn.execute("SELECT data FROM documents WHERE path = ?", (path,)).fetchone()
            return _loads(row[0]) if row else None

        try:
            for path, check in expect.items():
                reason = check(current(path))
                if reason:
                    raise PreconditionFailedError(f"{path}: {reason}; nothing was written")
            for w in writes:
                if w.op == "delete":
                    conn.execute("DELETE FROM documents WHERE path = ?", (w.path,))
                elif w.op == "set":
                    conn.execute(upsert, self._row(w.path, w.data))
                elif w.op == "create":
                    if current(w.path) is not None:
                        raise AlreadyExistsError(f"{w.path}: document already exists (create-only write refused)")
                    conn.execute(upsert, self._row(w.path, w.data))
                else:  # merge
                    old = current(w.path)
                    if old is None:
                        raise NotFoundError(f"{w.path}: cannot merge into a document that does not exist")
                    merged = {**old, **w.data}
                    rules.check_document(w.path, merged)
                    conn.execute(upsert, self._row(w.path, merged))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise BusUnavailableError(f"SQLite bus {self.path}: commit failed: {exc}") from exc
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
