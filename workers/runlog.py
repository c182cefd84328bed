"""The raw technical log of one run attempt, and the structlog set-up that feeds it.

The raw log holds the connector's LOG and TRACE messages, its stderr and the worker's own log lines
for the run. It never rests on disk under a name: it lives in an anonymous temporary file (unlinked
from the start, so the kernel reclaims it even when the worker is killed) until the attempt ends,
when it is scrubbed and only the scrubbed copy is retained.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import logging
import sys
import tempfile
import threading
from collections.abc import Iterator, MutableMapping
from datetime import UTC, datetime
from typing import Any

import structlog

_active: contextvars.ContextVar[RunLog | None] = contextvars.ContextVar(
    "sluice_run_log", default=None
)


class RunLog:
    """Append-only raw log of one run attempt, in an anonymous temporary file."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # TemporaryFile is unlinked at creation on POSIX: no path ever names the raw log.
        raw = tempfile.TemporaryFile(mode="w+b")  # noqa: SIM115 - closed by close()
        self._file = io.TextIOWrapper(raw, encoding="utf-8")
        self.lines = 0

    def write(self, origin: str, level: str, message: str) -> None:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        header = f"{stamp} {origin} {level.upper()} "
        body = message.rstrip("\n").replace("\n", "\n" + " " * len(header))
        with self._lock:
            self._file.write(header + body + "\n")
            self.lines += 1

    def read(self) -> Iterator[str]:
        """The lines written so far, from the start."""
        with self._lock:
            self._file.flush()
            self._file.seek(0)
        yield from self._file

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def active(self) -> Iterator[RunLog]:
        """Tee the worker's own log lines (structlog) into this run log while active."""
        token = _active.set(self)
        try:
            yield self
        finally:
            _active.reset(token)


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


_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
}


def configure_logging(level: str = "INFO") -> None:
    """structlog for the worker: key=value lines on stderr at `level`, and every line from INFO
    up teed into the active run log (the run's log keeps them whatever the console shows)."""
    console_level = logging.getLevelName(level.upper())
    if not isinstance(console_level, int):
        raise ValueError(f"unknown log level {level!r}")

    def below_console_level(
        _logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if _LEVELS.get(method, logging.INFO) < console_level:
            raise structlog.DropEvent
        return event

    logging.basicConfig(stream=sys.stderr, level=console_level, format="%(message)s")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _tee_to_run_log,
            below_console_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        cache_logger_on_first_use=False,
    )
