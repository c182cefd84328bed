"""One error model: every error Sluice raises on purpose says whether retrying can help and
what it is called, and one function turns it into what Temporal records.

An activity raises the specific error where the problem is found (an unknown connection, a
refused purge target, a connector's protocol error); `as_application_error` is the only place an
error becomes a Temporal `ApplicationError` (the worker's `ErrorReporting` interceptor, in
workers/worker.py, applies it to every activity). Messages of these errors are written so that
they may go into Temporal's history: they name connections, streams, fields, files and lines,
never a record value, cursor value or secret (a connector's own text is scrubbed before it is
raised).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from purge.errors import PurgeError

if TYPE_CHECKING:
    from temporalio.exceptions import ApplicationError


class SluiceError(Exception):
    """The base of Sluice's own errors. ``kind`` and ``retryable`` are class defaults that an
    instance may override."""

    kind: str = "SluiceError"
    retryable: bool = False

    def __init__(self, message: str, *, kind: str | None = None, retryable: bool | None = None):
        super().__init__(message)
        if kind is not None:
            self.kind = kind
        if retryable is not None:
            self.retryable = retryable

    @property
    def message(self) -> str:
        return str(self)


class InvalidRequestError(SluiceError):
    """A run's input cannot be served (an unknown stream, `reset` for an Airbyte connection)."""

    kind = "InvalidRequest"


class ReplayRefusedError(SluiceError):
    """A failed run cannot be replayed: unknown, did not fail, its staging is gone, or its
    connection's streams changed since. The message says what to do instead."""

    kind = "ReplayRefused"


class ConnectionBusyError(SluiceError):
    """Another run of the connection holds its lock."""

    kind = "ConnectionBusy"


ReportedError = SluiceError | PurgeError


def as_application_error(
    error: ReportedError,
    *,
    context: str | None = None,
    details: Any = None,
    redact: Callable[[str], str] | None = None,
) -> ApplicationError:
    """The error as Temporal records it: its kind as the type, retryable or not, its message
    (prefixed by `context`, e.g. the connection; passed through `redact` when it quotes a
    connector's own text), and `details` (metadata only)."""
    # Imported here: the CLI's purge and scrub import these errors and never load the SDK.
    from temporalio.exceptions import ApplicationError

    message = f"{context}: {error}" if context else str(error)
    return ApplicationError(
        redact(message) if redact else message,
        *(() if details is None else (details,)),
        type=error.kind,
        non_retryable=not error.retryable,
    )
