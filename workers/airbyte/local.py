"""Local backend: a real Airbyte protocol source run as a subprocess, staged, loaded into DuckDB.

Records stream from the connector's stdout into gzip batch files under the run's staging prefix
(the raw protocol lines are written as they came: no re-serialisation, never the whole stream in
memory). When a STATE message arrives and enough records are pending, the pending batches and the
states are committed to the destination in one transaction, so a crash never loads a batch twice
and never records a state whose records are missing.
"""

from __future__ import annotations

import contextlib
import contextvars
import gzip
import queue
import re
import threading
import time
from array import array
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import quote

import duckdb
import structlog
from airbyte_protocol.models import AirbyteMessage, Type
from pydantic import BaseModel, Field

from purge.stores import StagingStore
from workers.airbyte.connector import (
    MAX_RECORD_BYTES,
    Connector,
    ConnectorError,
    ConnectorExitError,
    ConnectorProtocolError,
    configured_catalog,
    log_message,
    message_problem,
    protocol_json,
    record_problem,
    record_stream_problem,
    trace_failure,
)
from workers.airbyte.destination import DuckDBDestination, StreamTable, duckdb_type, state_key
from workers.connections import Connection, StreamConfig
from workers.errors import SluiceError
from workers.runlog import RunLog
from workflows.models import StreamOutcome, SyncOutcome

log = structlog.get_logger(__name__)

_HEARTBEAT_EVERY_SECONDS = 5.0


class CatalogCache(Protocol):
    def cached_catalog(
        self, connection_id: str, fingerprint: str
    ) -> tuple[dict[str, Any], dict[str, Any] | None] | None: ...

    def cache_catalog(
        self,
        connection_id: str,
        fingerprint: str,
        catalog: dict[str, Any],
        spec: dict[str, Any] | None,
    ) -> None: ...


class SyncConfigError(SluiceError):
    """The connection asks for something the source does not offer; retrying cannot help."""

    kind = "InvalidConnection"


class SyncProgress(BaseModel):
    """Heartbeat details of run_sync: what is committed so far, so a retry resumes the counts."""

    attempt: int = 0
    records: dict[str, int] = Field(default_factory=dict)
    bytes_staged: int = 0
    batches: int = 0
    states: int = 0


@dataclass
class _Batch:
    key: str
    records: int = 0
    size: int = 0
    # The connector's stdout line of each record, in order: a record DuckDB refuses is
    # reported by its line.
    lines: array[int] = field(default_factory=lambda: array("Q"))


class _BatchWriter:
    """One open gzip batch file in the staging store."""

    def __init__(self, store: StagingStore, key: str) -> None:
        self.batch = _Batch(key)
        self._stack = contextlib.ExitStack()
        try:
            self._raw: BinaryIO = self._stack.enter_context(store.open_write(key))
            self._gz = self._stack.enter_context(
                gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=1)
            )
        except BaseException as exc:
            self._fail(exc)
            raise

    def write(self, line: bytes, number: int) -> None:
        self._gz.write(line if line.endswith(b"\n") else line + b"\n")
        self.batch.lines.append(number)
        self.batch.records += 1

    def close(self) -> _Batch:
        try:
            self._gz.close()
            self.batch.size = self._raw.tell()
        except BaseException as exc:
            self._fail(exc)
            raise
        self._stack.close()
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


class _Committer:
    """Commits to the destination in a thread of its own, in order, so that the connector's
    output keeps being drained (and the connector keeps running) while a batch loads.

    At most `depth` commits wait; the reader blocks beyond that, which bounds the staged data
    that is written but not yet loaded. The first failure stops further commits and is raised
    to the reader at its next submit, or at `close`.
    """

    def __init__(self, depth: int = 2) -> None:
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        context = contextvars.copy_context()  # the run log and log bindings follow the work
        self._thread = threading.Thread(target=context.run, args=(self._work,), daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            if self._error is None:
                try:
                    job()
                except BaseException as exc:
                    self._error = exc

    def submit(self, job: Callable[[], None]) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(job)

    def close(self) -> None:
        """Wait for every submitted commit; raise the first failure."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


@dataclass
class _StreamRun:
    config: StreamConfig
    table: StreamTable
    cursor_field: list[str]
    primary_key: list[list[str]]
    writer: _BatchWriter | None = None
    pending: list[_Batch] = field(default_factory=list)
    batch_number: int = 0


_RECORD_PREFIX = b'{"type":"RECORD","record":{"stream":"'
_DATA_AFTER_STREAM = b'","data":{'
_MAX_RECORD_LINE = MAX_RECORD_BYTES + 1  # with its newline
_STREAM_FIELD = re.compile(rb'"stream"\s*:\s*"([^"\\]{1,256})"')


def _record_stream(line: bytes) -> str | None:
    """The stream of a RECORD line as the Python CDK prints it, without parsing the record.

    Records are most of the traffic, and parsing each one only to route it costs as much CPU as
    a good share of the connector's own work. So only cheap checks run here: the exact CDK
    shape up to an object ``data``, a whole line (ending in ``}`` and a newline), the size
    limit, and valid UTF-8 (decoded only when the line is not ASCII). Anything else (other key
    order, escapes in the name, a namespace, a line that fails a check) returns None and is
    parsed and checked in full; what only a parse could find, DuckDB finds at the commit, and
    the batch is then checked in full to name the line.
    """
    if not line.startswith(_RECORD_PREFIX):
        return None
    end = line.find(b'"', len(_RECORD_PREFIX))
    if (
        end < 0
        or not line.startswith(_DATA_AFTER_STREAM, end)
        or not line.endswith(b"}\n")
        or len(line) > _MAX_RECORD_LINE
    ):
        return None
    name = line[len(_RECORD_PREFIX) : end]
    if b"\\" in name or b'"namespace"' in line:
        return None
    if not line.isascii():
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return name.decode("utf-8")


def _record_size(line: bytes) -> int:
    return len(line) - (1 if line.endswith(b"\n") else 0)


def _columns(properties: dict[str, Any]) -> dict[str, str]:
    """Columns from a stream's JSON schema. DuckDB names are case-insensitive: of two
    properties that differ only in case, the first one is kept."""
    columns: dict[str, str] = {}
    seen: set[str] = set()
    for name, schema in properties.items():
        if name.lower() not in seen:
            seen.add(name.lower())
            columns[name] = duckdb_type(schema if isinstance(schema, dict) else {})
    return columns


def stream_id(name: str, namespace: str | None) -> str:
    return f"{namespace}.{name}" if namespace else name


class LocalSync:
    """One attempt of one run of a connection on the local backend."""

    def __init__(
        self,
        *,
        connection: Connection,
        connector: Connector,
        config: dict[str, Any],
        store: StagingStore,
        prefix: str,
        run_id: str,
        batch_records: int,
        heartbeat: Callable[[SyncProgress], None],
        cancelled: Callable[[], bool] = lambda: False,
        catalog_cache: CatalogCache | None = None,
        duckdb_memory_limit: str = "512MB",
    ) -> None:
        self.connection = connection
        self.connector = connector
        self.config = config
        self.store = store
        self.prefix = prefix
        self.run_id = run_id
        self.batch_records = batch_records
        self._heartbeat = heartbeat
        self._cancelled = cancelled
        self._catalog_cache = catalog_cache
        self._duckdb_memory_limit = duckdb_memory_limit
        self.before_state: list[dict[str, Any]] = []
        self.spec: dict[str, Any] | None = None
        # Every state the connector emitted this attempt: intermediate cursor values are in
        # its log too, and only the last of them is committed.
        self.seen_states: list[dict[str, Any]] = []
        self.after_state: list[dict[str, Any]] = []
        self.cursor_fields: set[str] = set()
        self._reset = False
        self._run_log: RunLog | None = None
        self._declared_streams: list[str] = [s.name for s in connection.streams]

    def _catalog(self, run_log: RunLog) -> dict[str, Any]:
        """The source's catalog: discovered on the first run and after a change of the source's
        command or config; cached in the metadata store otherwise (discover costs a connector
        start-up on every run, as much as a small sync)."""
        source = self.connection.source
        if self._catalog_cache is not None:
            cached = self._catalog_cache.cached_catalog(self.connection.id, source.fingerprint)
            if cached is not None:
                catalog, self.spec = cached
                return catalog
        log.info("discovering streams", connection=self.connection.id)

        def connector_log(level: str, text: str) -> None:
            run_log.write("connector", level, text)

        # Two connector start-ups; side by side they cost one.
        with ThreadPoolExecutor(max_workers=1) as pool:
            spec = pool.submit(self.connector.spec, connector_log)
            catalog = self.connector.discover(self.config, connector_log)
            self.spec = spec.result()
        if self._catalog_cache is not None:
            self._catalog_cache.cache_catalog(
                self.connection.id, source.fingerprint, catalog, self.spec
            )
        return catalog

    # -- planning ---------------------------------------------------------------------------

    def _plan_streams(
        self, catalog: dict[str, Any], only: list[str] | None, reset: bool
    ) -> dict[str, _StreamRun]:
        offered = {stream_id(s["name"], s.get("namespace")): s for s in catalog["streams"]}
        wanted = [s for s in self.connection.streams if only is None or s.name in only]
        if only is not None:
            unknown = sorted(set(only) - {s.name for s in self.connection.streams})
            if unknown:
                raise SyncConfigError(
                    f"connection {self.connection.id!r}: streams {unknown} are not declared"
                )
        plans: dict[str, _StreamRun] = {}
        for index, stream in enumerate(wanted):
            where = f"streams[{index}] ({stream.name})"
            sid = stream_id(stream.name, stream.namespace)
            source_stream = offered.get(sid)
            if source_stream is None:
                offers = ", ".join(sorted(offered))
                raise SyncConfigError(
                    f"{where}: the source offers no such stream (offers: {offers})"
                )
            if stream.sync_mode not in source_stream.get("supported_sync_modes", ["full_refresh"]):
                raise SyncConfigError(f"{where}: the source does not support {stream.sync_mode}")
            cursor = stream.cursor_field or source_stream.get("default_cursor_field") or []
            key = stream.primary_key or source_stream.get("source_defined_primary_key") or []
            if stream.sync_mode == "incremental" and not cursor:
                raise SyncConfigError(f"{where}: incremental needs a cursor_field")
            if stream.destination_mode == "append_dedup" and not key:
                raise SyncConfigError(f"{where}: append_dedup needs a primary_key")
            if any(len(path) != 1 for path in key) or len(cursor) > 1:
                raise SyncConfigError(f"{where}: nested cursor or key fields are not supported")
            properties = source_stream.get("json_schema", {}).get("properties", {})
            table = StreamTable(
                name=stream.name,
                namespace=stream.namespace,
                columns=_columns(properties),
                mode=stream.destination_mode,
                replace=reset or stream.destination_mode == "overwrite",
                primary_key=[path[0] for path in key],
                cursor=cursor[0] if cursor else None,
                run_suffix=self.run_id.replace("-", "")[:12],
            )
            plans[sid] = _StreamRun(stream, table, cursor, key)
        return plans

    def _input_state(
        self, committed: list[dict[str, Any]], streams: dict[str, _StreamRun], reset: bool
    ) -> list[dict[str, Any]] | dict[str, Any] | None:
        if reset:
            return None
        incremental = {sid for sid, s in streams.items() if s.config.sync_mode == "incremental"}
        if not incremental:
            return None
        messages = []
        legacy = None
        for message in committed:
            kind = message.get("type")
            if kind == "STREAM":
                descriptor = message["stream"]["stream_descriptor"]
                if stream_id(descriptor["name"], descriptor.get("namespace")) in incremental:
                    messages.append(message)
            elif kind == "GLOBAL":
                messages.append(message)
            elif kind in (None, "LEGACY"):
                legacy = message
        if messages:
            # A connector that moved from LEGACY to per-stream state resumes from the latter.
            return messages
        # Legacy connectors take the bare state blob.
        return (legacy.get("data") or {}) if legacy is not None else None

    # -- the run ----------------------------------------------------------------------------

    def run(
        self,
        *,
        run_log: RunLog,
        attempt: int,
        reset: bool,
        only: list[str] | None,
        resume: SyncProgress | None,
    ) -> SyncOutcome:
        """One attempt. Afterwards, on failure too, `before_state`, `seen_states` and
        `after_state` hold every state whose values the attempt's log may print."""
        progress = SyncProgress(attempt=attempt)
        try:
            with (
                run_log.active(),
                DuckDBDestination(
                    self.connection.destination.path,
                    self.connection.id,
                    self._duckdb_memory_limit,
                ) as destination,
            ):
                try:
                    return self._run(destination, run_log, progress, reset, only, resume)
                finally:
                    with contextlib.suppress(duckdb.Error):
                        self.after_state = destination.committed_state()
        except ConnectorError as exc:
            run_log.write("sluice", "error", f"run failed: {exc}")
            raise

    def _run(
        self,
        destination: DuckDBDestination,
        run_log: RunLog,
        progress: SyncProgress,
        reset: bool,
        only: list[str] | None,
        resume: SyncProgress | None,
    ) -> SyncOutcome:
        self._reset = reset
        self._run_log = run_log
        streams = self._plan_streams(self._catalog(run_log), only, reset)
        self.cursor_fields = {field for s in streams.values() for field in s.cursor_field}
        committed = destination.committed_state()
        # Kept for the scrubber: connectors print the state they start from.
        self.before_state = committed
        input_state = self._input_state(committed, streams, reset)
        if resume:
            progress.bytes_staged, progress.batches = resume.bytes_staged, resume.batches
            progress.states = resume.states
        catalog = configured_catalog(
            [
                {
                    "stream": {
                        "name": s.config.name,
                        "namespace": s.config.namespace,
                        "json_schema": {},
                        "supported_sync_modes": [s.config.sync_mode],
                    },
                    "sync_mode": s.config.sync_mode,
                    "destination_sync_mode": "overwrite" if s.table.replace else "append",
                    "cursor_field": s.cursor_field or None,
                    "primary_key": s.primary_key or None,
                }
                for s in streams.values()
            ]
        )
        files: dict[str, Any] = {"config": self.config, "catalog": catalog}
        if input_state is not None:
            files["state"] = input_state

        held_states: dict[str, dict[str, Any]] = {}
        pending_states: dict[str, dict[str, Any]] = {}
        trace_error: AirbyteMessage | None = None
        # A last line that fails a check but has no newline may have been cut short by the
        # connector's end: the exit status decides what is reported.
        cut_short: ConnectorProtocolError | None = None
        where = f"connector {self.connector.name} read"

        def connector_log(level: str, text: str) -> None:
            run_log.write("connector", level, text)

        last_beat = time.monotonic()
        committer = _Committer()
        try:
            destination.prepare([s.table for s in streams.values()], self.run_id)
            # Counts are committed with the records they count: exact across retried attempts.
            progress.records = destination.run_counts(self.run_id)
            log.info("reading", streams=len(streams), incremental=input_state is not None)
            try:
                with self.connector.read_lines(
                    ["read"],
                    files,
                    on_stderr=lambda line: run_log.write("connector", "stderr", line),
                ) as lines:
                    for number, line in enumerate(lines, 1):
                        if not line.lstrip().startswith(b"{"):
                            run_log.write("connector", "stdout", line.decode("utf-8", "replace"))
                            continue
                        sid = _record_stream(line)
                        if sid is not None:
                            stream = streams.get(sid)
                            if stream is None:
                                run_log.write(
                                    "sluice", "warn", f"record for unselected stream {sid}"
                                )
                            else:
                                self._write_record(stream, sid, line, number, progress)
                        else:
                            try:
                                message = self._message(
                                    line, number, streams, progress, where, run_log
                                )
                            except ConnectorProtocolError as exc:
                                if line.endswith(b"\n"):
                                    raise
                                cut_short = exc
                                message = None
                            if message is None:
                                pass  # staged, logged, or held back (cut short)
                            elif message.type == Type.STATE and message.state is not None:
                                state = message.state.model_dump(mode="json", exclude_none=True)
                                state.pop("sourceStats", None)
                                state.pop("destinationStats", None)
                                pending_states[state_key(state)] = state
                                self.seen_states.append(state)
                                pending = sum(self._pending_records(streams).values())
                                if pending >= self.batch_records:
                                    self._commit(
                                        committer,
                                        destination,
                                        streams,
                                        pending_states,
                                        held_states,
                                        progress,
                                        final=False,
                                    )
                            else:
                                trace_error = log_message(connector_log, message) or trace_error
                        now = time.monotonic()
                        if now - last_beat > _HEARTBEAT_EVERY_SECONDS:
                            last_beat = now
                            self._heartbeat(progress)
                            if self._cancelled():
                                raise ConnectorError("run cancelled", failure_type="cancelled")
            except ConnectorExitError as exc:
                # A TRACE error says why the connector ended: its message, and its failure
                # type, win over the exit code (the Python CDK exits 1 after one).
                if trace_error is None:
                    raise
                run_log.write("sluice", "error", str(exc))
                raise trace_failure(trace_error) from None
            if self.connector.terminated or self._cancelled():
                # The connector was stopped: its output may just have ended early. Committing
                # now would swap a partial table in for a whole one.
                raise ConnectorError("run cancelled", failure_type="cancelled")
            if trace_error is not None:
                raise trace_failure(trace_error)
            if cut_short is not None:
                raise cut_short
            self._commit(
                committer, destination, streams, pending_states, held_states, progress, final=True
            )
            committer.close()
        except BaseException as failure:
            self._clean_up(failure, run_log, streams, committer, destination)
            raise
        self._heartbeat(progress)
        log.info(
            "sync committed",
            records=sum(progress.records.values()),
            batches=progress.batches,
            states=progress.states,
        )
        return SyncOutcome(
            run_id=self.run_id,
            streams=[
                StreamOutcome(
                    name=s.config.name,
                    namespace=s.config.namespace,
                    records=progress.records.get(sid, 0),
                    columns=list(s.table.columns),
                )
                for sid, s in streams.items()
            ],
            bytes_staged=progress.bytes_staged,
            batches=progress.batches,
            states_committed=progress.states,
            incremental=input_state is not None,
        )

    def _message(
        self,
        line: bytes,
        number: int,
        streams: dict[str, _StreamRun],
        progress: SyncProgress,
        where: str,
        run_log: RunLog,
    ) -> AirbyteMessage | None:
        """A line the fast path did not take, parsed and checked in full. A RECORD is staged
        here; another protocol message is returned; a line that is not a protocol message is
        logged. Raises ConnectorProtocolError naming the line (and the stream) for a protocol
        message that cannot be taken."""
        raw, problem = protocol_json(line)
        sid = None
        if raw is not None and raw.get("type") == "RECORD":
            name, namespace, stream_problem = record_stream_problem(raw)
            problem = problem or stream_problem
            if name is not None:
                sid = stream_id(name, namespace)
                stream = streams.get(sid)
                if stream is None:
                    run_log.write("sluice", "warn", f"record for unselected stream {sid}")
                    return None
                problem = problem or record_problem(raw, _record_size(line))
                if problem is None:
                    self._write_record(stream, sid, line, number, progress)
                    return None
        elif raw is not None and problem is None:
            message, problem = message_problem(raw)
            if message is not None:
                return message
        if problem is not None:
            if sid is None:
                # A line that does not parse: its stream as far as it can be told, named only
                # when it is one of the run's (a name Sluice knows, never a value).
                match = _STREAM_FIELD.search(line, 0, 4096)
                named = match.group(1).decode("utf-8", "replace") if match else None
                sid = named if named in streams else None
            stream_part = f", stream {sid!r}" if sid is not None else ""
            raise ConnectorProtocolError(f"{where}: stdout line {number}{stream_part}: {problem}")
        # Not a protocol message (a library printing JSON): kept as a log line.
        run_log.write("connector", "stdout", line.decode("utf-8", "replace"))
        return None

    def _write_record(
        self, stream: _StreamRun, sid: str, line: bytes, number: int, progress: SyncProgress
    ) -> None:
        if stream.writer is None:
            stream.batch_number += 1
            key = (
                f"{self.prefix}records/attempt-{progress.attempt:03d}/"
                f"{quote(sid, safe='')}/{stream.batch_number:06d}.jsonl.gz"
            )
            stream.writer = _BatchWriter(self.store, key)
        stream.writer.write(line, number)
        if stream.writer.batch.records >= self.batch_records:
            self._rotate(stream, progress)

    def _clean_up(
        self,
        failure: BaseException,
        run_log: RunLog,
        streams: dict[str, _StreamRun],
        committer: _Committer,
        destination: DuckDBDestination,
    ) -> None:
        """After a failed attempt: close the open batches (kept for replay), let the commits
        already handed over finish (each is whole and consistent) and join the commit thread,
        drop the run-scoped tables. Every step runs even when one before it failed; a step
        that fails is logged and never replaces `failure`."""
        steps: list[tuple[str, Callable[[], None]]] = [
            (f"closing batch {s.writer.batch.key}", s.writer.abandon)
            for s in streams.values()
            if s.writer is not None
        ]
        steps.append(("waiting for the commits handed over", committer.close))
        steps.append(
            (
                "dropping the run-scoped tables",
                lambda: destination.discard(s.table for s in streams.values()),
            )
        )
        for what, step in steps:
            try:
                step()
            except BaseException as exc:
                if exc is failure:  # the commit thread's own failure, raised again
                    continue
                run_log.write(
                    "sluice", "warn", f"cleanup: {what} failed: {type(exc).__name__}: {exc}"
                )
        for stream in streams.values():
            stream.writer = None

    def _rotate(self, stream: _StreamRun, progress: SyncProgress) -> None:
        if stream.writer is not None:
            batch = stream.writer.close()
            stream.writer = None
            stream.pending.append(batch)
            progress.bytes_staged += batch.size
            progress.batches += 1

    @staticmethod
    def _pending_records(streams: dict[str, _StreamRun]) -> dict[str, int]:
        return {
            sid: sum(b.records for b in s.pending) + (s.writer.batch.records if s.writer else 0)
            for sid, s in streams.items()
        }

    def _commit(
        self,
        committer: _Committer,
        destination: DuckDBDestination,
        streams: dict[str, _StreamRun],
        pending_states: dict[str, dict[str, Any]],
        held_states: dict[str, dict[str, Any]],
        progress: SyncProgress,
        *,
        final: bool,
    ) -> None:
        """Hand the batches that the pending states cover, and those states, to the committer.

        A STREAM state covers its own stream's records only: another stream's pending records
        wait for a state of theirs, or a crash would load them without one and the next run
        would load them again. GLOBAL and LEGACY states cover every stream. The final commit
        takes everything left, with the states held back for replaced tables.
        """
        keys = {
            sid: f"stream:{s.config.namespace or ''}:{s.config.name}" for sid, s in streams.items()
        }
        covers_all = final or any(not k.startswith("stream:") for k in pending_states)
        covered = [sid for sid in streams if covers_all or keys[sid] in pending_states]
        for sid in covered:
            self._rotate(streams[sid], progress)
        to_commit = []
        for key, state in pending_states.items():
            # A replaced stream's state is committed with its table, when the run completes;
            # when every stream is replaced (reset), so is any GLOBAL or LEGACY state.
            if key in {keys[sid] for sid, s in streams.items() if s.table.replace} or (
                not key.startswith("stream:") and all(s.table.replace for s in streams.values())
            ):
                held_states[key] = state
            else:
                to_commit.append(state)
        forget: list[str] = []
        if final:
            to_commit += list(held_states.values())
            if self._reset:
                # A reset replaces the state of the streams it ran, and GLOBAL / LEGACY state
                # only when it ran them all; other streams keep theirs.
                ran_all = len(streams) == len(self._declared_streams)
                emitted = set(held_states) | {state_key(s) for s in to_commit}
                forget = [
                    key
                    for key in (state_key(m) for m in self.before_state)
                    if key not in emitted
                    and (key in keys.values() or (ran_all and not key.startswith("stream:")))
                ]
        pending_states.clear()
        batches = {sid: list(streams[sid].pending) for sid in covered}
        for sid in covered:
            streams[sid].pending.clear()
        tables = {sid: s.table for sid, s in streams.items()}
        replace = [s.table for s in streams.values() if s.table.replace] if final else []

        def commit() -> None:
            with contextlib.ExitStack() as stack:
                paths = {
                    sid: [stack.enter_context(self.store.local_path(b.key)) for b in pending]
                    for sid, pending in batches.items()
                }
                counts = {sid: sum(b.records for b in pending) for sid, pending in batches.items()}
                try:
                    destination.commit(
                        paths,
                        tables,
                        to_commit,
                        self.run_id,
                        replace=replace,
                        forget=forget,
                        counts=counts,
                    )
                except (duckdb.InvalidInputException, duckdb.ConversionException) as exc:
                    # A record the fast path let through that DuckDB cannot read: find it,
                    # and name its line. DuckDB's own text (it may quote the record) stays in
                    # the run's log.
                    bad = self._bad_record(batches, paths)
                    if bad is None:
                        raise
                    if self._run_log is not None:  # not the console: the text may quote values
                        self._run_log.write(
                            "sluice", "warn", f"DuckDB refused a batch: {type(exc).__name__}: {exc}"
                        )
                    raise bad from None
            for sid, count in counts.items():
                progress.records[sid] = progress.records.get(sid, 0) + count
            progress.states += len(to_commit)
            log.info("batch committed", records=sum(counts.values()), states=len(to_commit))
            self._heartbeat(progress)

        committer.submit(commit)

    def _bad_record(
        self, batches: dict[str, list[_Batch]], paths: dict[str, list[Path]]
    ) -> ConnectorProtocolError | None:
        """The first staged record of these batches that fails the full check, if any."""
        where = f"connector {self.connector.name} read"
        for sid, pending in batches.items():
            for batch, path in zip(pending, paths[sid], strict=True):
                with gzip.open(path, "rb") as staged:
                    for index, line in enumerate(staged):
                        raw, problem = protocol_json(line)
                        if problem is None and raw is not None:
                            problem = record_stream_problem(raw)[2] or record_problem(
                                raw, _record_size(line)
                            )
                        elif problem is None:
                            problem = "not a RECORD message"
                        if problem is not None:
                            number = batch.lines[index] if index < len(batch.lines) else "?"
                            return ConnectorProtocolError(
                                f"{where}: stdout line {number}, stream {sid!r}: {problem}"
                            )
        return None
