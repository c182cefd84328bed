"""`sluice audit`: look for data in everything Sluice retains, and say where it is.

The promise (only configuration metadata and scrubbed logs are kept, staging is purged) is kept
run by run; the audit checks it after the fact. It gathers what must never be retained (the
committed cursor values of each connection, read from its destination's state, and a sample of
record values read back from the destination) and looks for them, in every spelling the log
scrubber knows (`purge/scrub/spellings.py`), in:

- the metadata store: the text of every row of every table;
- the retained logs, in every log store that holds one;
- the Temporal histories of Sluice's workflows on its task queue, every payload decoded with the
  codec (failure messages and stack traces are payloads too) and every plain string;
- the staging roots: any object that does not belong to a running run is a finding, whatever
  it holds.

A hit names its place (table, column and row; log URI and line; workflow, run and event; staging
prefix) and its kind, never the value. What could not be scanned is said, and an audit that
could not scan everything is never clean.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import psycopg
from google.protobuf import json_format
from psycopg import sql
from sqlalchemy import MetaData as ReflectedMetaData
from sqlalchemy import select
from temporalio.api.common.v1 import Payload
from temporalio.client import Client

from purge.scrub import MIN_FREE_TEXT_LENGTH, LogScrubber, RedactionKind, state_leaf_values
from purge.scrub.spans import _Span
from purge.stores import StagingStore, parse_store_uri
from workers.client import connect
from workers.codec import EncryptionCodec
from workers.connections import AirbyteConnection, Connection, ConnectionsFile
from workers.destinations import DestinationOptions, open_destination
from workers.destinations.base import Destination
from workers.destinations.duckdb import DuckDBDestination
from workers.destinations.postgres import PostgresDestination, pg_name
from workers.metadata import MetadataStore, retained_logs, runs
from workers.metadata import connections as connection_rows
from workers.purging import Purger
from workers.retained_logs import log_key
from workers.settings import Settings

MIN_RECORD_VALUE_LENGTH = 6
"""Record values shorter than this are not looked for: `Smith`, `42`, `true` say nothing about
a record and would be found in every log (cursor values follow the scrubber's own floor,
`MIN_FREE_TEXT_LENGTH`)."""

DEFAULT_SAMPLE_ROWS = 20
"""Rows read back from each stream's table for record values."""

WORKFLOW_TYPES = ("SyncConnectionWorkflow", "ReplayFailedSyncWorkflow", "RetentionSweepWorkflow")

# Lines handed to the finder at once: its block search runs over the whole batch.
_BATCH_LINES = 4096


class HitKind(StrEnum):
    CURSOR_VALUE = "cursor value"
    RECORD_VALUE = "record value"
    LEFTOVER_STAGING = "leftover staging"


class Place(StrEnum):
    METADATA = "metadata store"
    LOGS = "retained logs"
    TEMPORAL = "Temporal histories"
    STAGING = "staging"
    DESTINATION = "destination"


@dataclass(frozen=True)
class Hit:
    """Where something was found: never what."""

    place: Place
    kind: HitKind
    location: dict[str, Any]
    """Table/column/row, log URI and lines, workflow/run/event, staging prefix and objects."""
    connection_id: str | None = None
    """Whose value it is (a leftover staging object: whose prefix, when known)."""

    def describe(self) -> str:
        whose = f" of {self.connection_id!r}" if self.connection_id else ""
        where = ", ".join(f"{key} {value}" for key, value in self.location.items())
        return f"{self.kind}{whose} in {self.place}: {where}"

    def as_json(self) -> dict[str, Any]:
        return {
            "place": str(self.place),
            "kind": str(self.kind),
            "connection": self.connection_id,
            "location": self.location,
        }


@dataclass(frozen=True)
class Unscanned:
    """Something that could not be scanned, and why (never "clean" while one exists)."""

    place: Place
    what: str
    reason: str

    def describe(self) -> str:
        return f"{self.place}: {self.what}: {self.reason}"


@dataclass
class LookedFor:
    """What was looked for, for one connection (counts only)."""

    cursor_values: int = 0
    record_values: int = 0
    rows_sampled: int = 0
    values_skipped: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class AuditReport:
    connections: dict[str, LookedFor] = field(default_factory=dict)
    scanned: Counter[str] = field(default_factory=Counter)
    unscanned: list[Unscanned] = field(default_factory=list)
    hits: list[Hit] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    kept: list[Hit] = field(default_factory=list)
    """Staging a failed run keeps for its replay: sealed with a key that still exists, within
    SLUICE_FAILED_STAGING_TTL_DAYS. Listed, not a finding: the transfer did not complete."""

    @property
    def outcome(self) -> str:
        """`found` (something is retained that must not be), else `incomplete` (something
        could not be scanned), else `clean`."""
        if self.hits:
            return "found"
        return "incomplete" if self.unscanned else "clean"

    def as_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "looked_for": {
                connection: {
                    "cursor_values": looked.cursor_values,
                    "record_values": looked.record_values,
                    "rows_sampled": looked.rows_sampled,
                    "values_skipped": looked.values_skipped,
                    "notes": looked.notes,
                }
                for connection, looked in self.connections.items()
            },
            "scanned": dict(self.scanned),
            "not_scanned": [
                {"place": str(u.place), "what": u.what, "reason": u.reason} for u in self.unscanned
            ],
            "hits": [hit.as_json() for hit in self.hits],
            "kept_for_replay": [hit.as_json() for hit in self.kept],
            "notes": self.notes,
        }


def report_text(report: AuditReport) -> str:
    lines = ["looked for:"]
    for connection, looked in report.connections.items():
        lines.append(
            f"  {connection}: {looked.cursor_values} cursor values, {looked.record_values} "
            f"record values (from {looked.rows_sampled} rows read back; {looked.values_skipped} "
            f"values skipped: shorter than {MIN_RECORD_VALUE_LENGTH} characters, in more than "
            "one sampled row, or a name Sluice keeps)"
        )
        lines.extend(f"    {note}" for note in looked.notes)
    if not report.connections:
        lines.append("  nothing: no connection")
    lines.append("scanned:")
    lines.extend(f"  {what}: {count}" for what, count in sorted(report.scanned.items()))
    if report.notes:
        lines.append("notes:")
        lines.extend(f"  {note}" for note in report.notes)
    if report.unscanned:
        lines.append(f"NOT SCANNED ({len(report.unscanned)}):")
        lines.extend(f"  {u.describe()}" for u in report.unscanned)
    if report.kept:
        lines.append(
            f"kept for replay ({len(report.kept)}; sealed, their keys alive, within the "
            "failed-staging TTL: not findings):"
        )
        lines.extend(f"  {hit.describe()}" for hit in report.kept)
    if report.hits:
        lines.append(f"FOUND ({len(report.hits)}):")
        lines.extend(f"  {hit.describe()}" for hit in report.hits)
    verdict = {
        "clean": "clean: everything was scanned and nothing was found",
        "found": "FOUND: Sluice retains what it must not (places above; values never printed)",
        "incomplete": "INCOMPLETE: nothing found in what could be scanned, but not everything "
        "could be: not clean",
    }[report.outcome]
    lines.append(f"result: {verdict}")
    return "\n".join(lines)


# -- finding values ------------------------------------------------------------------------------


class _HitLine(str):
    """A line that holds a value, as the finder hands it back (its text unchanged)."""


class ValueFinder(LogScrubber):
    """The scrubber's matching, used to find rather than to redact.

    The values are registered as cursor values (every spelling: escapes, URL-encoding, base64
    cores, number and timestamp renderings) and no cursor field is given, so the only
    cursor-kind spans of a line are the values' own; structural spans (printed state) are of
    another kind and do not count, but they never hide a value either, since the spans are
    looked at before they merge. `purge.scrub` has no public way to find without redacting, so
    this hooks `_spans` (every span of a line, before merging); the rest, the block search that
    skips lines holding nothing included, is the scrubber's as it is.
    """

    def __init__(self, values: Iterable[str], keep: Iterable[str]) -> None:
        super().__init__(cursor_values=values, secrets=(), keep=keep)
        self._in_line = 0

    def _spans(self, content: str) -> list[_Span]:
        spans = super()._spans(content)
        self._in_line += sum(1 for span in spans if span.kind is RedactionKind.CURSOR)
        return spans

    def scrub_line(self, line: str) -> str:
        self._in_line = 0
        super().scrub_line(line)
        return _HitLine(line) if self._in_line else line

    def lines_with_values(self, lines: Iterable[str]) -> Iterator[int]:
        """The index of every line that holds a value (the block search skips the others)."""
        if not self.pattern_count:
            return
        for index, line in enumerate(self.scrub_stream(lines)):
            if isinstance(line, _HitLine):
                yield index

    def holds_value(self, text: str) -> bool:
        return next(self.lines_with_values(text.splitlines(keepends=True)), None) is not None


@dataclass
class _Needles:
    """One connection's values, by kind, each kind with its finder."""

    connection_id: str
    finders: dict[HitKind, ValueFinder]

    def kinds_in(self, text: str) -> list[HitKind]:
        return [kind for kind, finder in self.finders.items() if finder.holds_value(text)]


# -- what to look for ----------------------------------------------------------------------------


def _names_kept(
    connection: Connection | AirbyteConnection, metadata: MetadataStore | None
) -> set[str]:
    """Names Sluice keeps as metadata: never counted as a hit (the scrubber's `keep`)."""
    kept: set[str] = {connection.id}
    if isinstance(connection, Connection):
        for stream in connection.streams:
            kept.add(stream.name)
            kept.update(n for n in (stream.namespace,) if n)
            kept.update(stream.cursor_field)
            kept.update(f for key in stream.primary_key for f in key)
    if metadata is not None:
        for row in metadata.stream_rows(connection.id):
            kept.update(n for n in (row.get("name"), row.get("namespace")) if n)
            kept.update(row.get("columns") or {})
            kept.update(_strings(row.get("cursor_field")))
            kept.update(_strings(row.get("primary_key")))
    return kept


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, Mapping):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list | tuple):
        for item in node:
            yield from _strings(item)


def _record_strings(value: Any) -> Iterator[str]:
    """The strings of one cell: itself, or the string leaves of the JSON document it holds."""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped[:1] in ("{", "["):
            try:
                document = json.loads(stripped)
            except ValueError:
                yield value
                return
            yield from _strings(document)
            return
        yield value
    elif isinstance(value, Mapping | list | tuple):
        yield from _strings(value)


def _sample_rows(
    destination: Destination, connection: Connection, limit: int
) -> Iterator[tuple[list[str], list[tuple[Any, ...]]]]:
    """Up to `limit` rows of each declared stream's table: (column names, rows).

    The Destination protocol reads no records (a sync never needs to), so this reads through the
    destination's own database connection."""
    for stream in connection.streams:
        if isinstance(destination, DuckDBDestination):
            schema = stream.namespace or "main"
            table = ".".join('"' + part.replace('"', '""') + '"' for part in (schema, stream.name))
            exists = destination._db.execute(
                "SELECT count(*) FROM information_schema.tables "
                "WHERE table_schema = ? AND table_name = ?",
                [schema, stream.name],
            ).fetchone()
            if not exists or not exists[0]:
                continue
            cursor = destination._db.execute(f"SELECT * FROM {table} LIMIT ?", [limit])
            columns = [d[0] for d in cursor.description or []]
            yield columns, list(cursor.fetchall())
        elif isinstance(destination, PostgresDestination):
            key = f"{stream.namespace}.{stream.name}" if stream.namespace else stream.name
            with destination._db.cursor() as cur:
                cur.execute(
                    "SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename = %s",
                    [destination.schema, pg_name(key)],
                )
                if cur.fetchone() is None:
                    continue
                cur.execute(
                    sql.SQL("SELECT * FROM {} LIMIT %s").format(
                        sql.Identifier(destination.schema, pg_name(key))
                    ),
                    [limit],
                )
                columns = [d.name for d in cur.description or []]
                yield columns, list(cur.fetchall())


def _record_values(
    samples: Iterable[tuple[list[str], list[tuple[Any, ...]]]],
    kept: set[str],
    looked: LookedFor,
) -> set[str]:
    """Record values worth looking for: long enough, and each in one sampled row only (a value
    many rows share names a category, not a record)."""
    values: set[str] = set()
    for columns, rows in samples:
        looked.rows_sampled += len(rows)
        for index, column in enumerate(columns):
            if column.startswith(("_airbyte_", "_sluice")):
                continue  # what the loader adds: ids and times of its own, not the source's
            seen: Counter[str] = Counter()
            for row in rows:
                seen.update(set(_record_strings(row[index])))
            for value, rows_holding in seen.items():
                if len(value) < MIN_RECORD_VALUE_LENGTH or rows_holding > 1 or value in kept:
                    looked.values_skipped += 1
                else:
                    values.add(value)
    return values


def _short_problem(error: BaseException) -> str:
    """One line about an error; the kind alone when its text may quote data (a driver's)."""
    if isinstance(error, psycopg.Error):
        return type(error).__name__
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


async def _needles(
    settings: Settings,
    connection: Connection | AirbyteConnection,
    metadata: MetadataStore | None,
    sample_rows: int,
    report: AuditReport,
    connection_ids: set[str],
) -> _Needles:
    looked = report.connections.setdefault(connection.id, LookedFor())
    kept = _names_kept(connection, metadata) | connection_ids
    cursor_values: set[str] = set()
    record_values: set[str] = set()
    if isinstance(connection, AirbyteConnection):
        looked.notes.append(
            "record values not sampled: Airbyte's destination is Airbyte's to read, not Sluice's"
        )
        # The Airbyte SDK costs most of the CLI's start-up: imported only when needed.
        from workers.activities.airbyte import airbyte_server
        from workers.airbyte.api import AirbyteClient

        try:
            client = AirbyteClient(airbyte_server(settings))
            try:
                state = await client.connection_state(connection.airbyte.connection_id)
            finally:
                await client.aclose()
            cursor_values = state_leaf_values([state])
        except Exception as exc:
            report.unscanned.append(
                Unscanned(
                    Place.DESTINATION,
                    f"connection {connection.id!r}: its state in Airbyte",
                    _short_problem(exc),
                )
            )
    else:
        path = connection.destination.path
        if connection.destination.type == "duckdb" and path is not None and not path.exists():
            looked.notes.append(f"its destination {path} does not exist yet: nothing to look for")
        else:
            try:
                options = DestinationOptions(duckdb_memory_limit=settings.duckdb_memory_limit)
                with open_destination(connection, options) as destination:
                    cursor_values = state_leaf_values(destination.committed_state())
                    samples = list(_sample_rows(destination, connection, sample_rows))
                for columns, _rows in samples:
                    kept.update(columns)
                record_values = _record_values(samples, kept, looked) - cursor_values
            except Exception as exc:
                report.unscanned.append(
                    Unscanned(
                        Place.DESTINATION,
                        f"connection {connection.id!r}: its destination would not open or read",
                        _short_problem(exc),
                    )
                )
    finders = {
        HitKind.CURSOR_VALUE: ValueFinder(cursor_values, kept),
        HitKind.RECORD_VALUE: ValueFinder(record_values, kept),
    }
    looked.cursor_values = len({v for v in cursor_values if v not in kept})
    looked.record_values = len(record_values)
    short = sum(1 for v in cursor_values if len(v) < MIN_FREE_TEXT_LENGTH and v not in kept)
    if short:
        looked.notes.append(
            f"{short} of its cursor values are shorter than {MIN_FREE_TEXT_LENGTH} characters: "
            "not looked for (the scrubber's floor: they would match every number)"
        )
    return _Needles(connection.id, finders)


# -- the places ----------------------------------------------------------------------------------


def _cell_text(value: Any) -> str | None:
    """A cell's text: strings and JSON documents. Times, numbers and flags are Sluice's own
    (when a run started, how many records): not text, and not scanned."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, ensure_ascii=False, default=str)
    return None


def _scan_metadata(
    metadata: MetadataStore, needles: Sequence[_Needles], report: AuditReport
) -> None:
    reflected = ReflectedMetaData()
    reflected.reflect(bind=metadata.engine)  # every table, those of other modules too
    with metadata.engine.connect() as db:
        for table in reflected.sorted_tables:
            report.scanned["metadata store tables"] += 1
            key_columns = [c.name for c in table.primary_key.columns]
            for number, row in enumerate(db.execute(select(table)).mappings(), start=1):
                report.scanned["metadata store rows"] += 1
                row_id = (
                    ", ".join(f"{k}={row[k]}" for k in key_columns)
                    if key_columns
                    else f"row {number}"
                )
                for column, value in row.items():
                    text = _cell_text(value)
                    if not text:
                        continue
                    for needle in needles:
                        for kind in needle.kinds_in(text):
                            report.hits.append(
                                Hit(
                                    Place.METADATA,
                                    kind,
                                    {"table": table.name, "column": column, "row": row_id},
                                    needle.connection_id,
                                )
                            )


def _list_root(store_uri: str, purger: Purger, first_segments: Iterable[str]) -> Iterator[str]:
    """Every key under a store root (keys relative to it).

    A store lists under a prefix, never its whole root (that is how a purge is kept inside one):
    a local root is listed directory by directory, a remote root with a path from its parent,
    a bucket's root prefix by prefix of the names given."""
    parsed = parse_store_uri(store_uri)
    path = parsed.path.strip("/")
    if parsed.scheme == "file":
        root = Path("/" + path)
        if not root.is_dir():
            return
        store = purger.open(store_uri)
        with os.scandir(root) as entries:
            names = sorted((entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries)
        for name, is_dir in names:
            if is_dir:
                yield from (obj.key for obj in store.list(name + "/"))
            else:
                yield name
        return
    if path:
        parent, _, last = path.rpartition("/")
        store = purger.open(parsed.root + (parent + "/" if parent else ""))
        for obj in store.list(last + "/"):
            yield obj.key.removeprefix(last + "/")
        return
    store = purger.open(store_uri)
    for segment in sorted(set(first_segments)):
        yield from (obj.key for obj in store.list(segment + "/"))


def _store_for(purger: Purger, root: str) -> StagingStore | None:
    """The store of a root, None for a local root that does not exist (opening would make it)."""
    parsed = parse_store_uri(root)
    if parsed.scheme == "file" and not Path("/" + parsed.path).is_dir():
        return None
    return purger.open(root)


def _scan_text_lines(
    lines: Iterable[str], needles: Sequence[_Needles]
) -> tuple[int, dict[tuple[str, HitKind], list[int]]]:
    """(lines read, line numbers holding a value by (connection, kind)), in batches."""
    found: dict[tuple[str, HitKind], list[int]] = {}
    total = 0
    batch: list[str] = []

    def scan(batch: list[str], offset: int) -> None:
        for needle in needles:
            for kind, finder in needle.finders.items():
                for index in finder.lines_with_values(batch):
                    found.setdefault((needle.connection_id, kind), []).append(offset + index + 1)

    for line in lines:
        batch.append(line)
        if len(batch) >= _BATCH_LINES:
            scan(batch, total)
            total += len(batch)
            batch = []
    if batch:
        scan(batch, total)
        total += len(batch)
    return total, found


def _scan_logs(
    settings: Settings,
    metadata: MetadataStore,
    needles: Sequence[_Needles],
    connection_ids: set[str],
    report: AuditReport,
) -> None:
    """Every retained log the metadata store records, and every other object in the log stores
    (a log the store holds but no longer records is still retained)."""
    purger = Purger(settings)
    with metadata.engine.connect() as db:
        recorded = [dict(r) for r in db.execute(select(retained_logs)).mappings()]
    logs: dict[tuple[str, str], bool] = {}  # (root, key) -> recorded
    roots = {settings.resolved_log_store}
    for row in recorded:
        key = log_key(str(row["connection_id"]), str(row["run_id"]), int(row["attempt"]))
        uri = str(row["uri"])
        if not uri.endswith(key):
            report.notes.append(f"retained log {uri} does not end in its key {key}; not read")
            continue
        root = uri.removesuffix(key)
        roots.add(root)
        logs[(root, key)] = True
    unreachable: set[str] = set()
    for root in sorted(roots):
        try:
            for key in _list_root(
                root, purger, connection_ids | {r["connection_id"] for r in recorded}
            ):
                logs.setdefault((root, key), False)
        except Exception as exc:
            unreachable.add(root)
            report.unscanned.append(Unscanned(Place.LOGS, f"log store {root}", _short_problem(exc)))
    for (root, key), is_recorded in sorted(logs.items()):
        if root in unreachable:
            continue
        uri = root + key
        try:
            store = _store_for(purger, root)
            if store is None or not store.exists(key):
                report.notes.append(f"retained log {uri} is recorded but not in its store")
                continue
            with store.open_read(key) as raw:
                text = io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape")
                count, found = _scan_text_lines(text, needles)
        except Exception as exc:
            report.unscanned.append(
                Unscanned(Place.LOGS, f"retained log {uri}", _short_problem(exc))
            )
            continue
        report.scanned["retained logs"] += 1
        report.scanned["retained log lines"] += count
        if not is_recorded:
            report.notes.append(f"{uri} is in a log store but not recorded as a retained log")
        for (connection_id, kind), numbers in sorted(found.items()):
            location: dict[str, Any] = {"log": uri, "lines": numbers[:20]}
            if len(numbers) > 20:
                location["lines_in_all"] = len(numbers)
            report.hits.append(Hit(Place.LOGS, kind, location, connection_id))


async def _event_texts(event: Any, codec: EncryptionCodec) -> list[str]:
    """The text of one history event: every payload decoded (inputs, results, failures' encoded
    messages and stack traces, memos, headers) and every plain string (a failure's message
    when it was not encoded, a termination's reason)."""
    texts: list[str] = []

    async def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("data"), str) and isinstance(node.get("metadata"), dict):
                payload = json_format.ParseDict(node, Payload())
                (plain,) = await codec.decode([payload])
                texts.append(plain.data.decode("utf-8", "replace"))
                return
            for value in node.values():
                await walk(value)
        elif isinstance(node, list):
            for item in node:
                await walk(item)
        elif isinstance(node, str):
            texts.append(node)

    await walk(json_format.MessageToDict(event))
    return texts


async def _scan_temporal(
    settings: Settings, client: Client, needles: Sequence[_Needles], report: AuditReport
) -> None:
    codec = EncryptionCodec(settings.payload_key_list())
    types = " OR ".join(f"WorkflowType = '{name}'" for name in WORKFLOW_TYPES)
    query = f"({types}) AND TaskQueue = '{settings.task_queue}'"
    async for execution in client.list_workflows(query):
        what = f"workflow {execution.id} run {execution.run_id}"
        try:
            history = await client.get_workflow_handle(
                execution.id, run_id=execution.run_id
            ).fetch_history()
            events = 0
            for event in history.events:
                events += 1
                texts = await _event_texts(event, codec)
                text = "\n".join(texts)
                for needle in needles:
                    for kind in needle.kinds_in(text):
                        report.hits.append(
                            Hit(
                                Place.TEMPORAL,
                                kind,
                                {
                                    "workflow": execution.id,
                                    "run": execution.run_id,
                                    "event": event.event_id,
                                },
                                needle.connection_id,
                            )
                        )
        except Exception as exc:
            report.unscanned.append(Unscanned(Place.TEMPORAL, what, _short_problem(exc)))
            continue
        report.scanned["Temporal histories"] += 1
        report.scanned["Temporal history events"] += events


@dataclass(frozen=True)
class _StagingRoot:
    uri: str
    airbyte_connection: str | None = None
    """An Airbyte connection's staging: the whole path is that connection's."""


def _staging_roots(
    settings: Settings,
    connections: Sequence[Connection | AirbyteConnection],
    recorded_targets: Iterable[tuple[str, str, str]],
) -> list[_StagingRoot]:
    local = {settings.resolved_staging_uri}
    airbyte: dict[str, str] = {}
    for connection in connections:
        if isinstance(connection, AirbyteConnection):
            if connection.staging:
                airbyte[connection.staging] = connection.id
        elif connection.staging:
            local.add(connection.staging)
    for connection_id, run_id, target in recorded_targets:
        suffix = f"{connection_id}/{run_id}/"
        if target.endswith(suffix):
            local.add(target.removesuffix(suffix))
    local -= set(airbyte)
    return [_StagingRoot(uri) for uri in sorted(local)] + [
        _StagingRoot(uri, connection_id) for uri, connection_id in sorted(airbyte.items())
    ]


def _scan_staging(
    settings: Settings,
    metadata: MetadataStore,
    connections: Sequence[Connection | AirbyteConnection],
    only: str | None,
    report: AuditReport,
) -> None:
    purger = Purger(settings)
    with metadata.engine.connect() as db:
        recorded = {
            str(r["run_id"]): dict(r)
            for r in db.execute(
                select(
                    runs.c.run_id,
                    runs.c.connection_id,
                    runs.c.status,
                    runs.c.staging_target,
                    runs.c.committed,
                    runs.c.staging_swept_at,
                    runs.c.finished_at,
                )
            ).mappings()
        }
    running = metadata.running_runs()
    running_runs = {str(r["run_id"]) for r in running}
    running_connections = {str(r["connection_id"]) for r in running}
    targets = [
        (str(r["connection_id"]), run_id, str(r["staging_target"]))
        for run_id, r in recorded.items()
        if r.get("staging_target")
    ]
    known = {c.id for c in connections} | {str(r["connection_id"]) for r in recorded.values()}
    for root in _staging_roots(settings, connections, targets):
        if only is not None and root.airbyte_connection not in (None, only):
            continue
        report.scanned["staging roots"] += 1
        leftovers: dict[str, int] = Counter()
        try:
            keys = (
                _list_root(root.uri, purger, known)
                if only is None or root.airbyte_connection
                else (only + "/" + key for key in _list_root(root.uri + only + "/", purger, ()))
            )
            for key in keys:
                report.scanned["staging objects"] += 1
                if root.airbyte_connection is not None:
                    if root.airbyte_connection in running_connections:
                        report.scanned["staging objects of running runs"] += 1
                        continue
                    leftovers[""] += 1
                    continue
                parts = key.split("/")
                if len(parts) >= 3 and parts[1] in running_runs:
                    report.scanned["staging objects of running runs"] += 1
                    continue
                prefix = "/".join(parts[:2]) + "/" if len(parts) >= 3 else key
                leftovers[prefix] += 1
        except Exception as exc:
            report.unscanned.append(Unscanned(Place.STAGING, root.uri, _short_problem(exc)))
            continue
        for prefix, count in sorted(leftovers.items()):
            parts = prefix.split("/")
            run = recorded.get(parts[1]) if len(parts) >= 3 else None
            location: dict[str, Any] = {"prefix": root.uri + prefix, "objects": count}
            if root.airbyte_connection is None:
                location["run"] = (
                    f"{parts[1]} ({run['status']})" if run else "not a run Sluice knows"
                )
            connection_id = root.airbyte_connection or (parts[0] if len(parts) >= 3 else None)
            hit = Hit(Place.STAGING, HitKind.LEFTOVER_STAGING, location, connection_id)
            if run is not None and _kept_for_replay(run, parts[1], settings, metadata):
                report.kept.append(hit)
            else:
                report.hits.append(hit)


def _kept_for_replay(
    run: Mapping[str, Any], run_id: str, settings: Settings, metadata: MetadataStore
) -> bool:
    """Whether a run's staging is kept on purpose: it did not commit (so a replay may finish
    it), the sweep's TTL has not passed, and it is sealed with a key that still exists."""
    if run["status"] == "succeeded" or run.get("committed") or run.get("staging_swept_at"):
        return False
    finished = run.get("finished_at")
    if finished is None:
        return False
    finished = finished.replace(tzinfo=UTC) if finished.tzinfo is None else finished
    if finished < datetime.now(UTC) - timedelta(days=settings.failed_staging_ttl_days):
        return False
    return metadata.existing_staging_key(run_id) is not None


# -- the audit -----------------------------------------------------------------------------------


async def run_audit(
    settings: Settings,
    *,
    connection_id: str | None = None,
    client: Client | None = None,
    sample_rows: int = DEFAULT_SAMPLE_ROWS,
) -> AuditReport:
    """Audit everything Sluice retains for the values of every connection (or of one).

    `client`: a Temporal client (the settings' is connected to otherwise). Errors of a place are
    reported in `unscanned`, never raised, except a connections file that cannot be read or an
    unknown connection (nothing could be audited then: raised as the connections file raises).
    """
    report = AuditReport()
    for counted in (
        "metadata store rows",
        "retained logs",
        "Temporal histories",
        "staging roots",
        "staging objects",
    ):
        report.scanned[counted] = 0  # said even when there was nothing
    connections_file = ConnectionsFile.load(settings.connections_file)
    connection_ids = set(connections_file.connections)
    connections = (
        [connections_file.get(connection_id)]
        if connection_id is not None
        else list(connections_file.connections.values())
    )
    metadata: MetadataStore | None
    try:
        metadata = MetadataStore.from_url(settings.resolved_metadata_url)
    except Exception as exc:
        metadata = None
        for place in (Place.METADATA, Place.LOGS, Place.STAGING):
            report.unscanned.append(
                Unscanned(place, "the metadata store", f"cannot be used: {_short_problem(exc)}")
            )
    if metadata is not None and connection_id is None:
        with metadata.engine.connect() as db:
            retained = {str(r[0]) for r in db.execute(select(connection_rows.c.id))}
        if retained - connection_ids:
            report.notes.append(
                "connections the metadata store knows but the connections file no longer "
                f"declares: {', '.join(sorted(retained - connection_ids))}; their destinations "
                "are unknown, so their values are not looked for"
            )
    needles = [
        await _needles(settings, connection, metadata, sample_rows, report, connection_ids)
        for connection in connections
    ]
    if metadata is not None:
        for scan, place in (
            (lambda: _scan_metadata(metadata, needles, report), Place.METADATA),
            (
                lambda: _scan_logs(settings, metadata, needles, connection_ids, report),
                Place.LOGS,
            ),
            (
                lambda: _scan_staging(settings, metadata, connections, connection_id, report),
                Place.STAGING,
            ),
        ):
            try:
                scan()
            except Exception as exc:
                report.unscanned.append(Unscanned(place, "everything", _short_problem(exc)))
    try:
        if client is None:
            client = await connect(settings, wait_seconds=3)
        await _scan_temporal(settings, client, needles, report)
    except Exception as exc:
        report.unscanned.append(
            Unscanned(
                Place.TEMPORAL, f"Temporal at {settings.temporal_address}", _short_problem(exc)
            )
        )
    return report
