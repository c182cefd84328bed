"""The raw technical log of one run, and the structlog set-up that feeds it.

The raw log holds the connector's LOG and TRACE messages, its stderr and the worker's own log lines
for the run. It is written compressed under the run's staging prefix, so it rests only where staged
data rests and is purged with it; only its scrubbed copy is retained.
"""

from __future__ import annotations

import contextlib
import contextvars
import gzip
import io
import logging
import sys
import threading
from collections.abc import Iterator, MutableMapping
from datetime import UTC, datetime
from typing import Any, BinaryIO

import structlog

from purge.stores import StagingStore

RAW_LOG_DIR = "logs/"

_active: contextvars.ContextVar[RunLog | None] = contextvars.ContextVar(
    "sluice_run_log", default=None
)


class RunLog:
    """Append-only raw log of one run attempt, in the staging store."""

    def __init__(self, store: StagingStore, key: str) -> None:
        self.key = key
        self._lock = threading.Lock()
        self._stack = contextlib.ExitStack()
        raw: BinaryIO = self._stack.enter_context(store.open_write(key))
        gz = self._stack.enter_context(gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1))
        self._text = self._stack.enter_context(io.TextIOWrapper(gz, encoding="utf-8"))
        self.lines = 0

    def write(self, origin: str, level: str, message: str) -> None:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        header = f"{stamp} {origin} {level.upper()} "
        body = message.rstrip("\n").replace("\n", "\n" + " " * len(header))
        with self._lock:
            self._text.write(header + body + "\n")
            self.lines += 1

    def close(self) -> None:
        with self._lock:
            self._stack.close()

    @contextlib.contextmanager
    def active(self) -> Iterator[RunLog]:
        """Tee the worker's own log lines (structlog) into this run log while active."""
        token = _active.set(self)
        try:
            yield self
        finally:
            _active.reset(token)


def read_raw_logs(store: StagingStore, prefix: str) -> Iterator[str]:
    """Every raw log line of a run, attempts in order, lazily."""
    for obj in store.list(prefix + RAW_LOG_DIR):
        with store.open_read(obj.key) as raw, gzip.GzipFile(fileobj=raw, mode="rb") as gz:
            yield from io.TextIOWrapper(gz, encoding="utf-8")


def _tee_to_run_log(
    _logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    run_log = _active.get()
    if run_log is not None:
        fields = " ".join(
            f"{k}={v}" for k, v in event.items() if k not in {"event", "timestamp", "level"}
        )
        run_log.write("sluice", method, f"{event.get('event', '')} {fields}".rstrip())
    return event


def configure_logging(level: str = "INFO") -> None:
    """structlog for the worker: key=value lines on stderr, teed into the active run log.

    Temporal's own context (workflow id, run id, activity type) is bound by the activity code.
    """
    logging.basicConfig(stream=sys.stderr, level=level, format="%(message)s")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _tee_to_run_log,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        cache_logger_on_first_use=False,
    )
