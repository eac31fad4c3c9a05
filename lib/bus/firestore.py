"""`firestore://PROJECT[/DATABASE]` — Google Cloud Firestore; honours FIRESTORE_EMULATOR_HOST.

Rules are checked locally first (lib.bus.rules) so this backend raises the same errors as the
SQLite one; gRPC failures become BusUnavailableError with the operation and the path.
"""
from __future__ import annotations

import datetime as dt
import os
from typing import Callable, Iterable, Mapping, Sequence

from lib.bus import rules
from lib.bus.base import DELETE, Bus, Write, _check_page, check_writes
from lib.errors import (AlreadyExistsError, BusError, BusUnavailableError, DocumentTooLargeError, NotFoundError,
                        PreconditionFailedError)

# Fail fast instead of the client's default of retrying for up to ten minutes: an unreachable
# bus must stop the run with a clear reason, not hang the schedule.
DEFAULT_TIMEOUT = 20.0


def _plain(value):
    """Convert the client's types (DatetimeWithNanoseconds, nested maps) to plain Python."""
    if isinstance(value, dt.datetime):
        return dt.datetime.fromtimestamp(value.timestamp(), dt.timezone.utc).replace(
            microsecond=value.microsecond)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


class FirestoreBus(Bus):
    def __init__(self, project: str, database: str | None = None, timeout: float = DEFAULT_TIMEOUT):
        from google.api_core import exceptions as gexc
        from google.api_core import retry as gretry
        from google.cloud import firestore

        self._gexc, self._firestore = gexc, firestore
        self.project, self.database = project, database or "(default)"
        self.url = f"firestore://{project}" + (f"/{database}" if database else "")
        self.timeout = timeout
        self._retry = gretry.Retry(initial=0.1, maximum=2.0, multiplier=2.0, timeout=timeout,
                                   predicate=gretry.if_exception_type(gexc.ServiceUnavailable,
                                                                      gexc.DeadlineExceeded))
        try:
            kwargs = {"project": project}
            if database:
                kwargs["database"] = database
            if os.environ.get("FIRESTORE_EMULATOR_HOST"):
                from google.auth.credentials import AnonymousCredentials
                kwargs["credentials"] = AnonymousCredentials()
            self._client = firestore.Client(**kwargs)
        except Exception as exc:  # credentials or configuration problems surface here
            raise BusUnavailableError(f"cannot open Firestore bus {self.url}: {exc}") from exc

    def _call(self, what: str, path: str, fn):
        gexc = self._gexc
        try:
            return fn()
        except BusError:
            raise
        except gexc.Conflict:
            raise AlreadyExistsError(f"{path}: document already exists (create-only write refused)") from None
        except gexc.InvalidArgument as exc:
            if "size" in str(exc).lower() or "too large" in str(exc).lower():
                raise DocumentTooLargeError(f"{path}: {exc.message}") from None
            raise BusError(f"{path}: Firestore refused {what}: {exc.message}") from None
        except (gexc.GoogleAPIError, OSError) as exc:
            raise BusUnavailableError(f"Firestore bus {self.url}: {what} {path} failed: {exc}") from exc

    def get(self, path: str) -> dict | None:
        rules.check_document_path(path)
        snap = self._call("get", path, lambda: self._client.document(path).get(
            retry=self._retry, timeout=self.timeout))
        return _plain(snap.to_dict()) if snap.exists else None

    def get_many(self, paths: Iterable[str]) -> dict[str, dict | None]:
        paths = rules.check_document_paths(paths)
        if not paths:
            return {}
        refs = [self._client.document(p) for p in paths]
        # get_all is one BatchGetDocuments round trip, not one RPC per document.
        snaps = self._call("get_many", paths[0], lambda: list(self._client.get_all(
            refs, retry=self._retry, timeout=self.timeout)))
        found = {s.reference.path: _plain(s.to_dict()) for s in snaps if s.exists}
        return {p: found.get(p) for p in paths}

    def set(self, path: str, data: dict) -> None:
        rules.check_document(path, data)
        self._call("set", path, lambda: self._client.document(path).set(
            data, retry=self._retry, timeout=self.timeout))

    def create(self, path: str, data: dict) -> None:
        rules.check_document(path, data)
        # No retry: a retried create whose first attempt landed would report a false conflict.
        self._call("create", path, lambda: self._client.document(path).create(data, timeout=self.timeout))

    def delete(self, path: str) -> None:
        rules.check_document_path(path)
        self._call("delete", path, lambda: self._client.document(path).delete(
            retry=self._retry, timeout=self.timeout))

    def list(self, collection: str) -> dict[str, dict]:
        rules.check_collection_path(collection)
        snaps = self._call("list", collection, lambda: list(self._client.collection(collection).stream(
            retry=self._retry, timeout=self.timeout)))
        return {s.id: _plain(s.to_dict()) for s in sorted(snaps, key=lambda s: s.id)}

    def page(self, collection: str, *, order_by: str, limit: int, descending: bool = True,
             after=None, before=None) -> list[tuple[str, dict]]:
        _check_page(collection, order_by, limit)
        from google.cloud.firestore_v1.base_query import FieldFilter

        # Range filters and the order on one field: served by its automatic single-field index.
        query = self._client.collection(collection).order_by(
            order_by, direction="DESCENDING" if descending else "ASCENDING")
        if after is not None:
            query = query.where(filter=FieldFilter(order_by, ">", after))
        if before is not None:
            query = query.where(filter=FieldFilter(order_by, "<", before))
        snaps = self._call("page", collection, lambda: list(query.limit(limit).stream(
            retry=self._retry, timeout=self.timeout)))
        return [(s.id, _plain(s.to_dict())) for s in snaps]

    def transact(self, path: str, fn: Callable[[dict | None], object]) -> dict | None:
        rules.check_document_path(path)
        ref = self._client.document(path)
        firestore = self._firestore

        @firestore.transactional
        def run(transaction):
            snap = ref.get(transaction=transaction)
            current = _plain(snap.to_dict()) if snap.exists else None
            new = fn(current)
            if new is DELETE:
                transaction.delete(ref)
                return None
            if new is None:
                return current
            rules.check_document(path, new)
            transaction.set(ref, new)
            return _plain(new)

        return self._call("transaction", path, lambda: run(self._client.transaction(max_attempts=10)))

    def commit(self, writes: Sequence[Write], expect: Mapping[str, Callable] | None = None) -> None:
        writes = check_writes(writes)
        expect = dict(expect or {})
        for path in expect:
            rules.check_document_path(path)
        firestore = self._firestore
        # Every document the commit must read (checks, creates, merges) is read inside the
        # transaction, so Firestore aborts and retries it if any of them changes meanwhile.
        reads = list(dict.fromkeys([*expect, *(w.path for w in writes if w.op in ("create", "merge"))]))

        @firestore.transactional
        def run(transaction):
            refs = [self._client.document(p) for p in reads]
            current = {p: None for p in reads}
            if refs:
                for snap in self._client.get_all(refs, transaction=transaction):
                    if snap.exists:
                        current[snap.reference.path] = _plain(snap.to_dict())
            for path, check in expect.items():
                reason = check(current[path])
                if reason:
                    raise PreconditionFailedError(f"{path}: {reason}; nothing was written")
            for w in writes:
                ref = self._client.document(w.path)
                if w.op == "delete":
                    transaction.delete(ref)
                elif w.op == "set":
                    transaction.set(ref, w.data)
                elif w.op == "create":
                    if current[w.path] is not None:
                        raise AlreadyExistsError(f"{w.path}: document already exists (create-only write refused)")
                    transaction.create(ref, w.data)
                else:
                    if current[w.path] is None:
                        raise NotFoundError(f"{w.path}: cannot merge into a document that does not exist")
                    merged = {**current[w.path], **w.data}
                    rules.check_document(w.path, merged)
                    transaction.set(ref, merged)

        first = writes[0].path if writes else "(empty commit)"
        self._call("commit", first, lambda: run(self._client.transaction(max_attempts=10)))

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:
            pass
