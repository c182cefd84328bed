"""One error model: every error Sluice raises on purpose says whether retrying can help and
what it is called, and one function turns it into what Temporal records.

An activity raises the specific error where the problem is found (an unknown connection, a
refused purge target, a connector's protocol error); `as_application_error` is the only place an
error becomes a Temporal `ApplicationError`. Messages of these errors are written so that they
may go into Temporal's history: they name connections, streams, fields, files and lines, never a
record value, cursor value or secret (a connector's own text is scrubbed before it is raised).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from temporalio.exceptions import ApplicationError
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from purge.errors import PurgeError


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
    message = f"{context}: {error}" if context else str(error)
    return ApplicationError(
        redact(message) if redact else message,
        *(() if details is None else (details,)),
        type=error.kind,
        non_retryable=not error.retryable,
    )


class ErrorReporting(Interceptor):
    """Registered on the worker: an activity that raises one of Sluice's (or purge's) errors
    fails with it as an ApplicationError, so no activity converts errors itself."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ReportingActivityInbound(next)


class _ReportingActivityInbound(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        try:
            return await super().execute_activity(input)
        except (SluiceError, PurgeError) as exc:
            raise as_application_error(exc) from None
