"""The errors of running a connector, classified once, where they are raised.

A ConnectorError knows whether another attempt may go differently (``retryable``) and how
Temporal is told (``kind``). A TRACE error's message and failure type win over the exit code
that follows it (protocol.trace_failure); output Sluice cannot take is a ConnectorProtocolError
(final, naming the stdout line and stream, never a value); a command silent for longer than its
stall timeout is stopped and fails as stalled (retried).
"""

from __future__ import annotations

from workers.errors import SluiceError


class ConnectorError(SluiceError):
    """The connector could not be run, or it failed; the message is the connector's own.

    ``retryable``: whether another attempt may go differently. A connector's own configuration
    error and a cancellation are final; anything else (an upstream 502, a crash, a stall) may
    pass, and the attempt is retried from the committed state, as Airbyte retries attempts.
    """

    retryable = True
    kind = "ConnectorFailed"

    def __init__(
        self, message: str, *, failure_type: str | None = None, retryable: bool | None = None
    ) -> None:
        if retryable is None:
            retryable = type(self).retryable and failure_type not in _FINAL_FAILURE_TYPES
        super().__init__(message, retryable=retryable)
        self.failure_type = failure_type


_FINAL_FAILURE_TYPES = frozenset({"config_error", "cancelled"})


class ConnectorNotFoundError(ConnectorError):
    """The connector command is missing, not executable, or could not be installed."""

    retryable = False
    kind = "ConnectorNotFound"


class ConnectorProtocolError(ConnectorError):
    """The connector printed something Sluice cannot take (a RECORD without its stream or an
    object ``data``, invalid UTF-8, a malformed protocol message, a bad catalog, a record over
    the size limit). The same output fails the same way again: never retried.

    The message names the command, the stdout line and the stream, and what was wrong; never a
    value of the record (it goes into Temporal's history).
    """

    retryable = False
    kind = "ConnectorProtocolError"

    def __init__(self, message: str) -> None:
        super().__init__(message, failure_type="protocol_error")


class ConnectorExitError(ConnectorError):
    """The connector ended badly by itself: a non-zero exit. A TRACE error it printed before
    says more, and wins over this."""


class ConnectorStalledError(ConnectorExitError):
    """The connector printed nothing for longer than the stall timeout and was stopped."""
