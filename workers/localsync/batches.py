"""Batch files: a run's RECORD lines, staged as they came into gzip files in the staging store.

Each stream of an attempt writes one batch file at a time, under
``<prefix>records/attempt-NNN/<stream>/NNNNNN.jsonl.gz``; a file is closed once it holds
``batch_records`` records (or when a commit takes the stream's records) and waits, pending, for
the commit that loads it. The raw protocol lines are written as they came: no re-serialisation,
never the whole stream in memory. A failed attempt's files stay, for replay.
"""

from __future__ import annotations

import contextlib
import gzip
import io
from array import array
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, cast
from urllib.parse import quote

import structlog

from workers.connectors.errors import ConnectorProtocolError
from workers.connectors.protocol import (
    protocol_json,
    record_problem,
    record_size,
    record_stream_problem,
)
from workers.shredding import PlainWriter, RunSealing, SealingWriter

log = structlog.get_logger(__name__)

_GZIP_BLOCK = 128 * 1024


@dataclass
class Batch:
    key: str
    records: int = 0
    size: int = 0
    # The connector's stdout line of each record, in order: a record the destination
    # refuses is reported by its line.
    lines: array[int] = field(default_factory=lambda: array("Q"))


class BatchWriter:
    """One open gzip batch file in the staging store."""

    def __init__(self, staging: RunSealing, key: str) -> None:
        self.batch = Batch(key)
        self._stack = contextlib.ExitStack()
        try:
            self._raw: SealingWriter | PlainWriter = self._stack.enter_context(
                staging.open_write(key)
            )
            gz = self._stack.enter_context(
                gzip.GzipFile(fileobj=cast(BinaryIO, self._raw), mode="wb", compresslevel=1)
            )
            # Lines reach gzip in blocks: one compress call per record line costs more than
            # compressing it (Python 3.11's GzipFile does not buffer its writes).
            self._gz = self._stack.enter_context(io.BufferedWriter(gz, _GZIP_BLOCK))
        except BaseException as exc:
            self._fail(exc)
            raise

    def write(self, line: bytes, number: int) -> None:
        self._gz.write(line if line.endswith(b"\n") else line + b"\n")
        self.batch.lines.append(number)
        self.batch.records += 1

    def close(self) -> Batch:
        try:
            self._gz.close()
            self._stack.close()  # the last sealed chunk, and the object completed
        except BaseException as exc:
            self._fail(exc)
            raise
        self.batch.size = self._raw.bytes_written
        return self.batch

    def abandon(self) -> None:
        """Keep what was written, for replay (the run failed); should that fail too (a full
        disk), the store removes the partial object and the error is raised."""
        self._stack.close()

    def _fail(self, exc: BaseException) -> None:
        """Close the object as failed (the store removes the partial one); the caller raises
        `exc`, which a failure of this cleanup must not replace."""
        try:
            self._stack.__exit__(type(exc), exc, exc.__traceback__)
        except BaseException as cleanup:
            if cleanup is not exc:
                log.warning(
                    "closing a failed batch failed too",
                    key=self.batch.key,
                    error=f"{type(cleanup).__name__}: {cleanup}",
                )


class StreamBatches:
    """One stream's batch files in an attempt: the one being written, and the closed ones
    waiting for a commit (``pending``). ``on_closed`` is told of each batch closed."""

    def __init__(
        self,
        staging: RunSealing,
        prefix: str,
        attempt: int,
        sid: str,
        batch_records: int,
        on_closed: Callable[[Batch], None],
    ) -> None:
        self._staging = staging
        self._keys = f"{prefix}records/attempt-{attempt:03d}/{quote(sid, safe='')}/"
        self._batch_records = batch_records
        self._on_closed = on_closed
        self.writer: BatchWriter | None = None
        self.pending: list[Batch] = []
        self.abandoned: Batch | None = None  # the batch being written when the attempt failed
        self._number = 0

    def write(self, line: bytes, number: int) -> None:
        """Stage one RECORD line (``number``: its stdout line)."""
        if self.writer is None:
            self._number += 1
            self.writer = BatchWriter(self._staging, f"{self._keys}{self._number:06d}.jsonl.gz")
        self.writer.write(line, number)
        if self.writer.batch.records >= self._batch_records:
            self.close()

    def close(self) -> None:
        """Close the batch being written, if any: it joins the pending ones."""
        if self.writer is not None:
            batch = self.writer.close()
            self.writer = None
            self.pending.append(batch)
            self._on_closed(batch)

    def position(self) -> tuple[int, str | None, int]:
        """Where the stream's staged records end now: the closed pending batches, and the key
        and record count of the one being written (a STATE covers exactly these)."""
        writer = self.writer
        if writer is None:
            return len(self.pending), None, 0
        return len(self.pending), writer.batch.key, writer.batch.records

    @property
    def pending_records(self) -> int:
        """Records staged and not yet handed to a commit (the open batch's too)."""
        return sum(b.records for b in self.pending) + (
            self.writer.batch.records if self.writer else 0
        )

    def take(self) -> list[Batch]:
        """Every staged record, for a commit: the open batch is closed, and the pending ones
        are handed over."""
        self.close()
        taken, self.pending = self.pending, []
        return taken

    def abandon(self) -> None:
        """The attempt failed: keep the open batch as written, for replay."""
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.abandon()
            self.abandoned = writer.batch


def first_bad_record(
    batches: Mapping[str, list[Batch]], paths: Mapping[str, list[Path]], where: str
) -> ConnectorProtocolError | None:
    """The first staged record of these batches (at ``paths``, by stream id) that fails the
    full check, if any, as the error that names its stdout line and stream."""
    for sid, pending in batches.items():
        for batch, path in zip(pending, paths[sid], strict=True):
            with gzip.open(path, "rb") as staged:
                for index, line in enumerate(staged):
                    raw, problem = protocol_json(line)
                    if problem is None and raw is not None:
                        problem = record_stream_problem(raw)[2] or record_problem(
                            raw, record_size(line)
                        )
                    elif problem is None:
                        problem = "not a RECORD message"
                    if problem is not None:
                        number = batch.lines[index] if index < len(batch.lines) else "?"
                        return ConnectorProtocolError(
                            f"{where}: stdout line {number}, stream {sid!r}: {problem}"
                        )
    return None
