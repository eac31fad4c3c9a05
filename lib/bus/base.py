"""The intent bus interface: a document store with Firestore's semantics."""
from __future__ import annotations

import abc
from typing import Any, Callable, Iterable

from lib.errors import InvalidValueError, NotFoundError

#: Returned by a `transact` function to delete the document.
DELETE = object()


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

    @abc.abstractmethod
    def transact(self, path: str, fn: Callable[[dict | None], Any]) -> dict | None:
        """Read-modify-write one document atomically.

        `fn(current)` gets the document (or None) and returns the new document, `DELETE`, or None
        to leave it unchanged; it may run more than once, so it must not have side effects.
        Returns the document as it stands after the transaction. Good enough for a lease.
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
