"""The intent bus interface: a document store with Firestore's semantics."""
from __future__ import annotations

import abc
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

from lib.errors import InvalidValueError, NotFoundError

#: Returned by a `transact` function to delete the document.
DELETE = object()

WRITE_OPS = ("create", "set", "merge", "delete")


class Write(NamedTuple):
    """One write of an atomic `Bus.commit`.

    `create` fails if the document exists; `set` creates or replaces; `merge` merges top-level
    fields into an existing document (fails if it is missing); `delete` removes it if present.
    """

    op: str
    path: str
    data: dict | None = None


#: A precondition of `Bus.commit`: gets the current document (or None) and returns None when it
#: holds, or the reason it does not.
Check = Callable[[dict | None], "str | None"]


class Bus(abc.ABC):
    """Documents addressed by Firestore paths (`collection/doc[/collection/doc...]`).

    Every write validates the path, the values and the 1 MiB size first and raises the errors in
    `lib.errors`; nothing is half-written. Reads return plain dicts (timestamps as aware UTC
    datetimes) or None for a missing document.
    """

    url: str

    @abc.abstractmethod
    def get(self, path: str) -> dict | None:
        """The document at `path`, or None if it does not exist."""

    @abc.abstractmethod
    def get_many(self, paths: Iterable[str]) -> dict[str, dict | None]:
        """Several documents in one round trip; missing ones map to None."""

    @abc.abstractmethod
    def set(self, path: str, data: dict) -> None:
        """Create or replace the document."""

    @abc.abstractmethod
    def create(self, path: str, data: dict) -> None:
        """Create the document; raise AlreadyExistsError if it exists (nothing is changed)."""

    @abc.abstractmethod
    def delete(self, path: str) -> None:
        """Delete the document if it exists (its subcollections are untouched, as in Firestore)."""

    @abc.abstractmethod
    def list(self, collection: str) -> dict[str, dict]:
        """The documents of a collection, id → data, ordered by id."""

    def page(self, collection: str, *, order_by: str, limit: int, descending: bool = True,
             after: Any = None, before: Any = None) -> list[tuple[str, dict]]:
        """At most `limit` documents of a collection as (id, data), ordered by the top-level field
        `order_by` (a timestamp or a string), keeping those with `after` < value < `before` (either
        bound optional; pass the last value seen as the next page's bound). On Firestore this is one
        query on the field's automatic single-field index, so a page never reads a whole collection.
        Documents without the field are left out, as Firestore does. This default lists the
        collection; the backends override it with a real query."""
        _check_page(collection, order_by, limit)
        rows = [(i, d) for i, d in self.list(collection).items() if d.get(order_by) is not None]
        rows = [(i, d) for i, d in rows if (after is None or d[order_by] > after)
                and (before is None or d[order_by] < before)]
        rows.sort(key=lambda r: (r[1][order_by], r[0]), reverse=descending)
        return rows[:limit]

    @abc.abstractmethod
    def transact(self, path: str, fn: Callable[[dict | None], Any]) -> dict | None:
        """Read-modify-write one document atomically.

        `fn(current)` gets the document (or None) and returns the new document, `DELETE`, or None
        to leave it unchanged; it may run more than once, so it must not have side effects.
        Returns the document as it stands after the transaction. Good enough for a lease.
        """

    @abc.abstractmethod
    def commit(self, writes: Sequence[Write], expect: Mapping[str, Check] | None = None) -> None:
        """Apply every write, or none of them, in one transaction.

        `expect` maps document paths to checks run inside the same transaction on the current
        documents (a fencing token, say); a check that returns a reason aborts the commit with
        PreconditionFailedError. A `create` of an existing document raises AlreadyExistsError and
        a `merge` of a missing one NotFoundError — in every case nothing is written. Checks may
        run more than once (Firestore retries contended transactions), so they must be pure.
        At most 500 writes (Firestore's limit for one transaction).
        """

    def update(self, path: str, fields: dict) -> dict:
        """Merge top-level `fields` into an existing document; raise NotFoundError if it is missing."""
        for key in fields:
            if not isinstance(key, str) or "." in key:
                raise InvalidValueError(f"{path}: update field names are top-level names without dots, got {key!r}")

        def merge(current):
            if current is None:
                raise NotFoundError(f"{path}: cannot update a document that does not exist")
            return {**current, **fields}

        return self.transact(path, merge)

    def close(self) -> None:
        """Release connections. Idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def check_writes(writes: Sequence[Write]) -> list[Write]:
    """Validate every write before anything is sent: op, path, values, size, field names."""
    from lib.bus import rules
    writes = [Write(*w) for w in writes]
    if len(writes) > 500:
        raise InvalidValueError(f"an atomic commit holds at most 500 writes, got {len(writes)}")
    seen = set()
    for w in writes:
        if w.op not in WRITE_OPS:
            raise InvalidValueError(f"{w.path}: unknown write op {w.op!r}; expected one of {WRITE_OPS}")
        if w.path in seen:
            raise InvalidValueError(f"{w.path}: written twice in one commit")
        seen.add(w.path)
        if w.op == "delete":
            rules.check_document_path(w.path)
            continue
        if not isinstance(w.data, dict):
            raise InvalidValueError(f"{w.path}: a {w.op} needs a document (dict), got {type(w.data).__name__}")
        if w.op == "merge":
            for key in w.data:
                if not isinstance(key, str) or "." in key:
                    raise InvalidValueError(f"{w.path}: merge field names are top-level names without dots, got {key!r}")
            rules.check_document_path(w.path)
        else:
            rules.check_document(w.path, w.data)
    return writes


def _check_page(collection: str, order_by: str, limit: int) -> None:
    from lib.bus import rules
    rules.check_collection_path(collection)
    if not isinstance(order_by, str) or not order_by or "." in order_by:
        raise InvalidValueError(f"{collection}: order_by is a top-level field name, got {order_by!r}")
    if not isinstance(limit, int) or limit < 1:
        raise InvalidValueError(f"{collection}: a page holds at least one document, got limit={limit!r}")
