"""What a destination is to the sync engine: the tables of a run, the committed state, commits.

A destination keeps the streams' records and the connection's committed STATE together: each
commit loads staged batches and upserts the states that cover them in one transaction, so a
crash never loads a batch twice and never records a state whose records are missing. A stream
that is replaced (overwrite, or a reset) loads into a run-scoped table that replaces the live
one, with its state, in the run's final commit.

Errors: a destination raises the errors below for what it finds itself. A failure of the
database underneath (a full disk, a lost connection) is raised as the driver raised it: its
text may quote record values, so the activity reports only its kind and keeps the text in the
run's scrubbed log.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from workers.errors import SluiceError


class DestinationError(SluiceError):
    """A destination cannot do what the run asks of it."""

    kind = "DestinationError"


class UnknownDestinationError(DestinationError):
    """A connection names a destination type that no destination is registered for."""

    kind = "InvalidConnection"


class RecordsRefusedError(DestinationError):
    """The destination could not read records of the batches it was given: something only a
    full parse finds (broken JSON inside a record, an ``emitted_at`` that is no number), as the
    sync engine stages RECORD lines in the Python CDK's shape without parsing them. Nothing of
    the commit was kept. The engine then checks the batches in full, to name the record's line.

    ``cause`` is the destination's own error: its text may quote record values, so it goes into
    the run's log, never into this message.
    """

    kind = "RecordsRefused"

    def __init__(self, destination: str, cause: BaseException) -> None:
        super().__init__(f"{destination} refused a batch ({type(cause).__name__})")
        self.destination = destination
        self.cause = cause


@dataclass
class StreamTable:
    """How one stream lands in the destination."""

    name: str
    namespace: str | None
    columns: dict[str, str]  # column -> the destination's type (Destination.columns)
    mode: str  # append | overwrite | append_dedup
    replace: bool  # load into a run-scoped table that replaces the live one at the end
    primary_key: list[str] = field(default_factory=list)
    cursor: str | None = None
    run_suffix: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}.{self.name}" if self.namespace else self.name

    @property
    def load_table_name(self) -> str:
        """The table this run loads into: the live one, or the run-scoped one it replaces."""
        return self.name + "__sluice_" + self.run_suffix if self.replace else self.name


class Destination(Protocol):
    """One connection's destination, open for one attempt of a run (a context manager that
    closes it; a failure to close never replaces the error that ended the attempt)."""

    name: str
    """How the run's log names it (``DuckDB``)."""

    def columns(self, properties: Mapping[str, Any]) -> dict[str, str]:
        """A stream's columns, from its JSON schema's properties: name -> the destination's
        type (names the destination cannot tell apart are merged, the first one kept)."""
        ...

    def committed_state(self) -> list[dict[str, Any]]:
        """The connection's committed STATE messages."""
        ...

    def run_counts(self, run_id: str) -> dict[str, int]:
        """Records committed so far by a run (all its attempts), per stream key."""
        ...

    def committed_ids(self, run_id: str) -> set[str]:
        """The commits of a run's journal (``<run id>/...``) that are done: a replay skips
        them."""
        ...

    def prepare(self, streams: Sequence[StreamTable], run_id: str = "") -> None:
        """Create the run's tables and their new columns; start each replacing stream's
        run-scoped table afresh (and its count)."""
        ...

    def commit(
        self,
        batches: dict[str, list[Path]],
        streams: dict[str, StreamTable],
        states: Iterable[dict[str, Any]],
        run_id: str,
        replace: Sequence[StreamTable] = (),
        forget: Iterable[str] = (),
        counts: dict[str, int] | None = None,
        commit_id: str | None = None,
    ) -> int:
        """Load the staged batch files (gzip, one RECORD line each) of each stream and upsert
        ``states``, in one transaction; ``replace``: streams whose run-scoped table now swaps in
        for the live one (the run's end); ``forget``: state keys a reset drops; ``counts``:
        records per stream key, added to the run's counts; ``commit_id``: the entry of the
        run's commit journal (in staging) that this commit carries out, noted with it, so that
        a replay of a failed run knows which are done. Returns the rows loaded. Raises
        RecordsRefusedError when records of a batch cannot be read."""
        ...

    def discard(self, streams: Iterable[StreamTable]) -> None:
        """Drop the run-scoped tables of a run that will not complete: each one is tried, and
        the first failure is raised once all were."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Destination: ...

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None: ...
