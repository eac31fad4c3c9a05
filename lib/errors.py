"""The error types every adapter raises, so callers never catch a library's own exceptions.

Each error names what was wrong: the document path and, where there is one, the field.
"""
from __future__ import annotations


class PipelineError(Exception):
    """Base of every error this project raises on purpose."""


# ---- documents ---------------------------------------------------------------------------------
class DocumentError(PipelineError, ValueError):
    """A document failed validation; `path` and `field` say where."""

    def __init__(self, path: str, field: str | None, message: str):
        self.path, self.field, self.message = path, field, message
        where = f"{path}: field '{field}'" if field else path
        super().__init__(f"{where}: {message}")


# ---- bus ---------------------------------------------------------------------------------------
class BusError(PipelineError):
    """The intent bus refused an operation or could not be reached."""


class InvalidPathError(BusError, ValueError):
    """A document path with an odd number of segments, a collection path with an even one, ..."""


class InvalidValueError(BusError, ValueError):
    """A value Firestore would not store (NaN, infinity, an unsupported type, a bad field name)."""


class DocumentTooLargeError(BusError, ValueError):
    """The document exceeds Firestore's 1 MiB (1,048,576 bytes) limit."""


class AlreadyExistsError(BusError):
    """A create-only write found the document already there."""


class NotFoundError(BusError):
    """An update of a document that does not exist."""


class PreconditionFailedError(BusError):
    """An atomic write's precondition did not hold (e.g. the lease was lost); nothing was written."""


class BusUnavailableError(BusError):
    """The bus could not be reached (network, emulator down, file unreadable)."""


# ---- broker ------------------------------------------------------------------------------------
class BrokerError(PipelineError):
    """The broker refused or failed an operation."""


class BrokerConnectionError(BrokerError):
    """The broker connection was refused or dropped."""


class AccountMismatchError(BrokerError):
    """The connected account does not match the trading mode or the configured account."""


class UnknownContractError(BrokerError):
    """The broker does not know the contract."""


class OrderRejectedError(BrokerError):
    """The broker rejected an order (IB error 201 and friends)."""


class BrokerTimeoutError(BrokerError):
    """The broker did not answer in time."""


class SendUncertainError(BrokerConnectionError):
    """The connection dropped after an order was sent and before the broker acknowledged it: the
    order may or may not have reached the broker. `order_id` and `order_ref` name it, so a later
    run can look it up (by orderRef) instead of sending it again."""

    def __init__(self, message: str, order_id: int, order_ref: str):
        self.order_id, self.order_ref = order_id, order_ref
        super().__init__(message)


class PacingViolationError(BrokerError):
    """The broker refused a historical-data request for pacing (IB error 162 "Historical Market Data
    Service error message:Historical data request pacing violation", or more than 50 requests open).
    Retry it after a back-off (`lib.pacing.with_backoff`); the text always says "pacing violation"."""
