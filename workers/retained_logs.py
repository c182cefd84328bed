"""Retained logs: the scrubbed copy of each run attempt's log, in the log store, tied to its run."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable

import structlog

from purge.scrub import LogScrubber
from purge.stores import StagingStore
from workers.metadata import MetadataStore
from workflows.models import ScrubOutcome

log = structlog.get_logger(__name__)

# Pauses between the tries of writing a retained log (the last one before giving up).
_RETAIN_PAUSES = (0.5, 2.0, 0.0)


def log_key(connection_id: str, run_id: str, attempt: int) -> str:
    return f"{connection_id}/{run_id}/attempt-{attempt:03d}.log"


def run_prefix(connection_id: str, run_id: str) -> str:
    return f"{connection_id}/{run_id}/"


class LogRetention:
    def __init__(self, store: StagingStore, metadata: MetadataStore) -> None:
        self.store = store
        self.metadata = metadata

    def retain(
        self,
        *,
        connection_id: str,
        run_id: str,
        attempt: int,
        read_lines: Callable[[], Iterable[str]],
        scrubber: LogScrubber,
    ) -> ScrubOutcome:
        """Scrub the raw log into the log store; only the scrubbed text is ever written.

        A failed write is tried again a few times, reading the raw log afresh each time
        (`read_lines`); a log that still cannot be written is reported in the outcome
        (`retain_error`, its kind only) and never fails the run that produced it: what the run
        committed stands, and the raw log is never kept instead."""
        error: Exception | None = None
        for pause in _RETAIN_PAUSES:
            try:
                return self._write(connection_id, run_id, attempt, read_lines(), scrubber)
            except Exception as exc:
                error = exc
                log.warning("retained log not written", attempt=attempt, error=type(exc).__name__)
                time.sleep(pause)
        assert error is not None
        # Only the kind: the text of a storage error may quote a path or a line.
        return ScrubOutcome(
            redactions=scrubber.counts,
            lines=0,
            retain_error=f"{type(error).__name__} writing the scrubbed log (after "
            f"{len(_RETAIN_PAUSES)} tries)",
        )

    def _write(
        self,
        connection_id: str,
        run_id: str,
        attempt: int,
        lines: Iterable[str],
        scrubber: LogScrubber,
    ) -> ScrubOutcome:
        key = log_key(connection_id, run_id, attempt)
        count = 0
        with self.store.open_write(key) as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8", write_through=True)
            for piece in scrubber.scrub_chunks(lines):
                text.write(piece)
                count += piece.count("\n")
            text.flush()
            text.detach()
        uri = self.store.uri + key
        self.metadata.record_retained_log(
            run_id=run_id,
            attempt=attempt,
            connection_id=connection_id,
            uri=uri,
            lines=count,
            redactions=scrubber.counts,
        )
        return ScrubOutcome(redactions=scrubber.counts, lines=count, log_uri=uri)
