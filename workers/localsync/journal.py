"""The commit journal: what a run stages next to its batch files so that a later commit can
finish it without the connector (a replay of a failed run).

Under ``<prefix>journal/attempt-NNN/`` each attempt writes:

- ``manifest.json``: the attempt's streams as they land (tables, columns, modes, the stream
  configuration they were planned from, each stream's state key), and whether it was a reset;
- ``NNNNNN.json``, one per commit, in order, written before the commit is handed to the
  destination: the batch files it loads (by stream, with the number of records of each file
  that belong to it: a STATE can arrive while a file is still being written), the STATE
  messages it commits, and its ``commit_id``. The destination notes that id in the commit's own
  transaction (``Destination.committed_ids``), so a replay knows which entries are done.
- When an attempt fails with states received but not yet committed, a last entry for them.

Every file is sealed with the run's staging key (workers/shredding.py), as its batches are.

States are staged like the records they cover (both are purged together). Batch files that no
entry names are records no STATE covers: a replay drops them, as Airbyte's at-least-once rule
says the next read repeats them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from workers.destinations.base import StreamTable
from workers.shredding import RunSealing

MANIFEST = "manifest.json"


def journal_prefix(prefix: str, attempt: int) -> str:
    return f"{prefix}journal/attempt-{attempt:03d}/"


def commit_id(run_id: str, attempt: int, number: int) -> str:
    """A commit's id: unique across runs, and starting with its run's id."""
    return f"{run_id}/attempt-{attempt:03d}/{number:06d}"


@dataclass(frozen=True)
class StagedBatch:
    key: str
    records: int  # the file's first `records` records belong to the commit
    whole: bool = True  # False: the file holds more records, which no STATE covered


@dataclass(frozen=True)
class StreamManifest:
    sid: str
    state_key: str
    table: StreamTable
    config: dict[str, Any]  # the stream's configuration when the run planned it


@dataclass(frozen=True)
class Manifest:
    run_id: str
    attempt: int
    reset: bool
    streams: list[StreamManifest]


@dataclass(frozen=True)
class CommitEntry:
    commit_id: str
    batches: dict[str, list[StagedBatch]]  # by stream id
    states: list[dict[str, Any]]
    forget: list[str] = field(default_factory=list)
    replace: list[str] = field(default_factory=list)  # stream ids
    handed_over: bool = True  # False: states received when the attempt failed, never handed over
    # Of `batches`, the records the entry's STATEs cover, when not all of them (the final
    # commit's records after the last STATE): what a replay commits.
    covered: dict[str, list[StagedBatch]] | None = None

    @property
    def replayable(self) -> dict[str, list[StagedBatch]]:
        return self.batches if self.covered is None else self.covered


def _write_json(staging: RunSealing, key: str, value: Any) -> None:
    with staging.open_write(key) as out:
        out.write(json.dumps(value, separators=(",", ":")).encode())


def _read_json(staging: RunSealing, key: str) -> Any:
    return json.loads(staging.read_bytes(key))


def write_manifest(store: RunSealing, prefix: str, manifest: Manifest) -> None:
    _write_json(store, journal_prefix(prefix, manifest.attempt) + MANIFEST, asdict(manifest))


def write_entry(store: RunSealing, prefix: str, attempt: int, entry: CommitEntry) -> None:
    number = entry.commit_id.rsplit("/", 1)[1]
    _write_json(store, f"{journal_prefix(prefix, attempt)}{number}.json", asdict(entry))


def journaled_attempts(staging: RunSealing, prefix: str) -> dict[int, list[str]]:
    """Each attempt that wrote a journal, with the keys of its entries in order."""
    attempts: dict[int, list[str]] = {}
    root = f"{prefix}journal/"
    for stored in staging.store.list(root):
        attempt_part, _, name = stored.key.removeprefix(root).partition("/")
        if not attempt_part.startswith("attempt-"):
            continue
        entries = attempts.setdefault(int(attempt_part.removeprefix("attempt-")), [])
        if name != MANIFEST:
            entries.append(stored.key)
    return {attempt: sorted(keys) for attempt, keys in sorted(attempts.items())}


def read_manifest(store: RunSealing, prefix: str, attempt: int) -> Manifest:
    raw = _read_json(store, journal_prefix(prefix, attempt) + MANIFEST)
    return Manifest(
        run_id=raw["run_id"],
        attempt=raw["attempt"],
        reset=raw["reset"],
        streams=[
            StreamManifest(
                sid=s["sid"],
                state_key=s["state_key"],
                table=StreamTable(**s["table"]),
                config=s["config"],
            )
            for s in raw["streams"]
        ],
    )


def read_entry(store: RunSealing, key: str) -> CommitEntry:
    raw = _read_json(store, key)
    return CommitEntry(
        commit_id=raw["commit_id"],
        batches={
            sid: [StagedBatch(**b) for b in batches] for sid, batches in raw["batches"].items()
        },
        states=raw["states"],
        forget=raw["forget"],
        replace=raw["replace"],
        handed_over=raw["handed_over"],
        covered=None
        if raw.get("covered") is None
        else {sid: [StagedBatch(**b) for b in taken] for sid, taken in raw["covered"].items()},
    )
