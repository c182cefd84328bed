"""Finishing a failed run from its staging, without the connector (ReplayFailedSyncWorkflow).

A failed run's staging holds its batch files and its commit journal (journal.py). The journal
of its last attempt that journaled anything continues the connection's committed state (an
attempt starts from the state committed before it, and a later attempt that journaled nothing
committed nothing). Its entries are committed in order, each batch with the states that cover
it and the entry's id in one transaction, so that each is done exactly once: entries the
destination already notes as done are skipped.

What is not replayed: batch files no STATE covered (the next read repeats them, Airbyte's
at-least-once rule), and streams whose table the run replaced (overwrite): their run-scoped
table went with the failure, and only a whole read can replace a table. Both are counted.
"""

from __future__ import annotations

import contextlib
import gzip
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from workers.connections import Connection
from workers.connectors.protocol import state_key
from workers.destinations.base import Destination
from workers.errors import ReplayRefusedError
from workers.localsync.journal import (
    Manifest,
    StagedBatch,
    journaled_attempts,
    read_entry,
    read_manifest,
)
from workers.shredding import RunSealing

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ReplayResult:
    """What a replay committed: counts and names only."""

    records: dict[str, int]  # by stream id
    commits: int  # journal entries committed now
    already_committed: int  # entries the failed run had committed itself
    states: int
    dropped_batches: int  # staged batch files (or their tails) that no STATE covers
    dropped_streams: list[str]  # replaced (overwrite) streams: left to a whole read
    attempt: int | None  # the failed run's attempt whose journal was replayed


def journal_manifest(store: RunSealing, prefix: str) -> Manifest | None:
    """The manifest of the attempt a replay continues, or None when nothing was journaled."""
    attempt = _replayed_attempt(store, prefix)
    return None if attempt is None else read_manifest(store, prefix, attempt)


def _replayed_attempt(store: RunSealing, prefix: str) -> int | None:
    journaled = [a for a, entries in journaled_attempts(store, prefix).items() if entries]
    return max(journaled) if journaled else None


def changed_streams(manifest: Manifest, connection: Connection) -> list[str]:
    """The failed run's streams whose configuration differs from the connection's today."""
    declared = {(s.namespace, s.name): s for s in connection.streams}
    changed = []
    for stream in manifest.streams:
        config = stream.config
        now = declared.get((config.get("namespace"), config["name"]))
        if now is None or now.model_dump(mode="json") != config:
            changed.append(stream.sid)
    return changed


def replay_staged(
    *,
    store: RunSealing,
    prefix: str,
    failed_run_id: str,
    run_id: str,
    destination: Destination,
    on_commit: Callable[[], None] = lambda: None,
) -> ReplayResult:
    """Commit what the failed run staged and its states covered, in order, exactly once."""
    attempts = journaled_attempts(store, prefix)
    attempt = _replayed_attempt(store, prefix)
    staged_files = {o.key for o in store.store.list(f"{prefix}records/")}
    if attempt is None:
        return ReplayResult({}, 0, 0, 0, len(staged_files), [], None)
    manifest = read_manifest(store, prefix, attempt)
    if manifest.reset:
        raise ReplayRefusedError(
            f"run {failed_run_id} was a reset: its tables are replaced only by a whole read; "
            "start a new sync with reset"
        )
    replaced = {s.sid for s in manifest.streams if s.table.replace}
    replaced_keys = {s.state_key for s in manifest.streams if s.table.replace}
    tables = {s.sid: s.table for s in manifest.streams if s.sid not in replaced}
    destination.prepare(list(tables.values()), run_id)
    done = destination.committed_ids(failed_run_id)
    records: dict[str, int] = {}
    commits = already = states = 0
    covered: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="sluice-replay-") as scratch:
        for key in attempts[attempt]:
            entry = read_entry(store, key)
            batches = {
                sid: taken for sid, taken in entry.replayable.items() if sid in tables and taken
            }
            covered |= {b.key for taken in batches.values() for b in taken if b.whole}
            if entry.commit_id in done:
                already += 1
                continue
            kept_states = [s for s in entry.states if state_key(s) not in replaced_keys]
            if not batches and not kept_states:
                continue
            with contextlib.ExitStack() as stack:
                paths = {
                    sid: [stack.enter_context(_local(store, b, Path(scratch))) for b in taken]
                    for sid, taken in batches.items()
                }
                counts = {sid: sum(b.records for b in taken) for sid, taken in batches.items()}
                destination.commit(
                    paths,
                    tables,
                    kept_states,
                    run_id,
                    counts=counts,
                    commit_id=entry.commit_id,
                )
            commits += 1
            states += len(kept_states)
            for sid, count in counts.items():
                records[sid] = records.get(sid, 0) + count
            log.info("replayed a commit", commit=entry.commit_id, records=sum(counts.values()))
            on_commit()
    return ReplayResult(
        records=records,
        commits=commits,
        already_committed=already,
        states=states,
        dropped_batches=len(staged_files - covered),
        dropped_streams=sorted(replaced),
        attempt=attempt,
    )


@contextlib.contextmanager
def _local(store: RunSealing, batch: StagedBatch, scratch: Path) -> Iterator[Path]:
    """A staged batch as a local file; only its first ``records`` records when the rest of the
    file came after the last STATE that covered it."""
    with store.local_path(batch.key) as path:
        if batch.whole:
            yield path
            return
        cut = scratch / (batch.key.replace("/", "_") + ".part.gz")
        with gzip.open(path, "rb") as whole, gzip.open(cut, "wb", compresslevel=1) as part:
            for number, line in enumerate(whole):
                if number >= batch.records:
                    break
                part.write(line)
        try:
            yield cut
        finally:
            cut.unlink(missing_ok=True)
