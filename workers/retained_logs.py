"""Retained logs: the scrubbed copy of each run attempt's log, in the log store, tied to its run."""

from __future__ import annotations

import io

from purge.scrub import LogScrubber
from purge.stores import StagingStore
from workers.runlog import RunLog
from workers.store.metadata import MetadataStore
from workflows.models import ScrubOutcome


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
        run_log: RunLog,
        scrubber: LogScrubber,
    ) -> ScrubOutcome:
        """Scrub the raw log into the log store; only the scrubbed text is ever written."""
        key = log_key(connection_id, run_id, attempt)
        lines = 0
        with self.store.open_write(key) as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8", write_through=True)
            for piece in scrubber.scrub_stream(run_log.read()):
                text.write(piece)
                lines += piece.count("\n")
            text.flush()
            text.detach()
        uri = self.store.uri + key
        self.metadata.record_retained_log(
            run_id=run_id,
            attempt=attempt,
            connection_id=connection_id,
            uri=uri,
            lines=lines,
            redactions=scrubber.counts,
        )
        return ScrubOutcome(redactions=scrubber.counts, lines=lines, log_uri=uri)
