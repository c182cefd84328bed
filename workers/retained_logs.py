"""Retained logs: the scrubbed copy of each run attempt's log, in the log store, tied to its run."""

from __future__ import annotations

import io
from collections.abc import Iterable

from purge.scrub import LogScrubber
from purge.stores import StagingStore
from workers.metadata import MetadataStore
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
        lines: Iterable[str],
        scrubber: LogScrubber,
    ) -> ScrubOutcome:
        """Scrub the raw log into the log store; only the scrubbed text is ever written."""
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
