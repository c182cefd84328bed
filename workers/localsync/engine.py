"""The local sync engine: one attempt of a run, from the connector's ``read`` to the destination.

Records stream from the connector's stdout into gzip batch files under the run's staging prefix
(batches.py). When a STATE message arrives and enough records are pending, the pending batches
that the states cover are committed to the destination together with those states, in one
transaction (commits.py says which), in a commit thread of their own; the final commit takes
everything left and swaps the replaced tables in. The engine knows the destination only as a
``Destination`` (workers/destinations/base.py), opened for each attempt by the factory it is
given.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from airbyte_protocol.models import AirbyteMessage, Type

from purge.stores import StagingStore
from workers.connections import Connection
from workers.connectors.errors import ConnectorError, ConnectorExitError, ConnectorProtocolError
from workers.connectors.process import Connector
from workers.connectors.protocol import (
    STREAM_FIELD,
    is_stream_state_key,
    log_message,
    message_problem,
    protocol_json,
    record_problem,
    record_size,
    record_stream,
    record_stream_problem,
    state_key,
    trace_failure,
)
from workers.destinations.base import Destination, RecordsRefusedError, StreamTable
from workers.localsync.batches import Batch, StreamBatches, first_bad_record
from workers.localsync.commits import CommitPlan, Committer, plan_commit
from workers.localsync.journal import (
    CommitEntry,
    Manifest,
    StagedBatch,
    StreamManifest,
    commit_id,
    write_entry,
    write_manifest,
)
from workers.localsync.planning import (
    CatalogCache,
    StreamPlan,
    discover_catalog,
    input_state,
    plan_streams,
    read_catalog,
    stream_id,
)
from workers.localsync.results import StreamResult, SyncProgress, SyncResult
from workers.runlog import RunLog
from workers.shredding import RunSealing

log = structlog.get_logger(__name__)

_HEARTBEAT_EVERY_SECONDS = 5.0


@dataclass
class _Attempt:
    """What the steps of one attempt share."""

    run_log: RunLog
    destination: Destination
    progress: SyncProgress
    reset: bool
    streams: dict[str, StreamPlan]  # by stream id, in the run's order
    batches: dict[str, StreamBatches]  # by stream id
    committer: Committer
    ran_all: bool  # the run syncs every stream the connection declares
    # States emitted since the last commit, and states held back until the final one, by key.
    pending_states: dict[str, dict[str, Any]] = field(default_factory=dict)
    held_states: dict[str, dict[str, Any]] = field(default_factory=dict)
    # A TRACE error the connector printed: it says why the connector ended.
    trace_error: AirbyteMessage | None = None
    # A last line that fails a check but has no newline may have been cut short by the
    # connector's end: the exit status decides what is reported.
    cut_short: ConnectorProtocolError | None = None
    # Commits journaled so far, and where each stream's staged records stood when the latest
    # pending STATE covering it arrived (StreamBatches.position).
    commits: int = 0
    marks: dict[str, tuple[int, str | None, int]] = field(default_factory=dict)

    def connector_log(self, level: str, text: str) -> None:
        self.run_log.write("connector", level, text)


class LocalSync:
    """One attempt of one run of a connection on the local backend.

    ``destination``: opens the connection's destination, once per attempt (workers.destinations
    .open_destination for the connection's own).
    """

    def __init__(
        self,
        *,
        connection: Connection,
        connector: Connector,
        config: dict[str, Any],
        destination: Callable[[], Destination],
        store: StagingStore,
        prefix: str,
        run_id: str,
        batch_records: int,
        heartbeat: Callable[[SyncProgress], None],
        staging_key: bytes | None = None,
        cancelled: Callable[[], bool] = lambda: False,
        catalog_cache: CatalogCache | None = None,
    ) -> None:
        self.connection = connection
        self.connector = connector
        self.config = config
        self.store = store
        # Everything the run stages is sealed with its key (workers/shredding.py).
        self.staging = RunSealing(store, staging_key)
        self.prefix = prefix
        self.run_id = run_id
        self.batch_records = batch_records
        self._open_destination = destination
        self._heartbeat = heartbeat
        self._cancelled = cancelled
        self._catalog_cache = catalog_cache
        self.before_state: list[dict[str, Any]] = []
        self.spec: dict[str, Any] | None = None
        # Every state the connector emitted this attempt: intermediate cursor values are in
        # its log too, and only the last of them is committed.
        self.seen_states: list[dict[str, Any]] = []
        self.after_state: list[dict[str, Any]] = []
        self.cursor_fields: set[str] = set()

    def run(
        self,
        *,
        run_log: RunLog,
        attempt: int,
        reset: bool,
        only: list[str] | None,
        resume: SyncProgress | None,
    ) -> SyncResult:
        """One attempt. Afterwards, on failure too, `before_state`, `seen_states` and
        `after_state` hold every state whose values the attempt's log may print."""
        progress = SyncProgress(attempt=attempt)
        try:
            with run_log.active(), self._open_destination() as destination:
                try:
                    return self._run(destination, run_log, progress, reset, only, resume)
                finally:
                    # The destination may be what failed (a full disk): its state is then
                    # unknown, and the scrubber keeps the states it has.
                    with contextlib.suppress(Exception):
                        self.after_state = destination.committed_state()
        except ConnectorError as exc:
            run_log.write("sluice", "error", f"run failed: {exc}")
            raise

    def _run(
        self,
        destination: Destination,
        run_log: RunLog,
        progress: SyncProgress,
        reset: bool,
        only: list[str] | None,
        resume: SyncProgress | None,
    ) -> SyncResult:
        streams, state = self._plan(destination, run_log, only, reset)
        if resume:
            progress.bytes_staged, progress.batches = resume.bytes_staged, resume.batches
            progress.states = resume.states
        files: dict[str, Any] = {"config": self.config, "catalog": read_catalog(streams)}
        if state is not None:
            files["state"] = state
        attempt = _Attempt(
            run_log=run_log,
            destination=destination,
            progress=progress,
            reset=reset,
            streams=streams,
            batches=self._batches(streams, progress),
            committer=Committer(),
            ran_all=len(streams) == len(self.connection.streams),
        )
        try:
            destination.prepare([s.table for s in streams.values()], self.run_id)
            # Counts are committed with the records they count: exact across retried attempts.
            progress.records = destination.run_counts(self.run_id)
            log.info("reading", streams=len(streams), incremental=state is not None)
            self._read(attempt, files)
            self._finish(attempt)
        except BaseException as failure:
            self._clean_up(failure, attempt)
            raise
        self._heartbeat(progress)
        log.info(
            "sync committed",
            records=sum(progress.records.values()),
            batches=progress.batches,
            states=progress.states,
        )
        return self._result(attempt, incremental=state is not None)

    # -- planning -------------------------------------------------------------------------------

    def _plan(
        self, destination: Destination, run_log: RunLog, only: list[str] | None, reset: bool
    ) -> tuple[dict[str, StreamPlan], list[dict[str, Any]] | dict[str, Any] | None]:
        """The streams of the attempt, and the state the connector starts from."""
        streams = plan_streams(
            self.connection,
            self._catalog(run_log),
            only,
            reset=reset,
            run_id=self.run_id,
            columns=destination.columns,
        )
        self.cursor_fields = {field for s in streams.values() for field in s.cursor_field}
        committed = destination.committed_state()
        # Kept for the scrubber: connectors print the state they start from.
        self.before_state = committed
        return streams, input_state(committed, streams, reset)

    def _catalog(self, run_log: RunLog) -> dict[str, Any]:
        """The source's catalog: discovered on the first run and after a change of the source's
        command or config; cached in the metadata store otherwise (discover costs a connector
        start-up on every run, as much as a small sync)."""
        source, cache = self.connection.source, self._catalog_cache
        if cache is not None:
            cached = cache.cached_catalog(self.connection.id, source.fingerprint)
            if cached is not None:
                catalog, self.spec = cached
                return catalog
        log.info("discovering streams", connection=self.connection.id)
        catalog, self.spec = discover_catalog(self.connector, self.config, run_log)
        if cache is not None:
            cache.cache_catalog(self.connection.id, source.fingerprint, catalog, self.spec)
        return catalog

    def _batches(
        self, streams: dict[str, StreamPlan], progress: SyncProgress
    ) -> dict[str, StreamBatches]:
        def closed(batch: Batch) -> None:
            progress.bytes_staged += batch.size
            progress.batches += 1

        return {
            sid: StreamBatches(
                self.staging, self.prefix, progress.attempt, sid, self.batch_records, closed
            )
            for sid in streams
        }

    # -- reading --------------------------------------------------------------------------------

    def _read(self, attempt: _Attempt, files: dict[str, Any]) -> None:
        """Drain the connector's ``read``: RECORD lines into their stream's batch files, other
        messages to `_message_line`. Heartbeats every few seconds, and stops at a cancellation.
        A connector that exits non-zero after a TRACE error fails with the TRACE error."""
        run_log = attempt.run_log
        batches = attempt.batches
        last_beat = time.monotonic()
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
                    sid = record_stream(line)
                    if sid is not None:
                        staged = batches.get(sid)
                        if staged is None:
                            run_log.write("sluice", "warn", f"record for unselected stream {sid}")
                        else:
                            staged.write(line, number)
                    else:
                        self._message_line(attempt, line, number)
                    now = time.monotonic()
                    if now - last_beat > _HEARTBEAT_EVERY_SECONDS:
                        last_beat = now
                        self._heartbeat(attempt.progress)
                        if self._cancelled():
                            raise ConnectorError("run cancelled", failure_type="cancelled")
        except ConnectorExitError as exc:
            # A TRACE error says why the connector ended: its message, and its failure
            # type, win over the exit code (the Python CDK exits 1 after one).
            if attempt.trace_error is None:
                raise
            run_log.write("sluice", "error", str(exc))
            raise trace_failure(attempt.trace_error) from None

    def _message_line(self, attempt: _Attempt, line: bytes, number: int) -> None:
        """A line the fast path did not take: a RECORD is staged, a STATE noted (and perhaps
        committed), a LOG or TRACE message logged (a TRACE error kept)."""
        try:
            message = self._message(attempt, line, number)
        except ConnectorProtocolError as exc:
            if line.endswith(b"\n"):
                raise
            attempt.cut_short = exc
            return
        if message is None:
            return  # staged, logged, or held back (cut short)
        if message.type == Type.STATE and message.state is not None:
            self._state(attempt, message)
        else:
            attempt.trace_error = log_message(attempt.connector_log, message) or attempt.trace_error

    def _message(self, attempt: _Attempt, line: bytes, number: int) -> AirbyteMessage | None:
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
                staged = attempt.batches.get(sid)
                if staged is None:
                    attempt.run_log.write("sluice", "warn", f"record for unselected stream {sid}")
                    return None
                problem = problem or record_problem(raw, record_size(line))
                if problem is None:
                    staged.write(line, number)
                    return None
        elif raw is not None and problem is None:
            message, problem = message_problem(raw)
            if message is not None:
                return message
        if problem is not None:
            if sid is None:
                # A line that does not parse: its stream as far as it can be told, named only
                # when it is one of the run's (a name Sluice knows, never a value).
                match = STREAM_FIELD.search(line, 0, 4096)
                named = match.group(1).decode("utf-8", "replace") if match else None
                sid = named if named in attempt.batches else None
            stream_part = f", stream {sid!r}" if sid is not None else ""
            raise ConnectorProtocolError(
                f"connector {self.connector.name} read: stdout line {number}{stream_part}: "
                f"{problem}"
            )
        # Not a protocol message (a library printing JSON): kept as a log line.
        attempt.run_log.write("connector", "stdout", line.decode("utf-8", "replace"))
        return None

    def _state(self, attempt: _Attempt, message: AirbyteMessage) -> None:
        """A STATE message: pending until a commit; committed once enough records wait."""
        assert message.state is not None
        state = message.state.model_dump(mode="json", exclude_none=True)
        state.pop("sourceStats", None)
        state.pop("destinationStats", None)
        key = state_key(state)
        attempt.pending_states[key] = state
        self.seen_states.append(state)
        for sid, plan in attempt.streams.items():
            if key == plan.state_key or not is_stream_state_key(key):
                attempt.marks[sid] = attempt.batches[sid].position()
        pending = sum(b.pending_records for b in attempt.batches.values())
        if pending >= self.batch_records:
            self._commit(attempt, final=False)

    def _finish(self, attempt: _Attempt) -> None:
        """The connector ended well: fail if it was stopped or reported an error, else commit
        what is left and wait for every commit."""
        if self.connector.terminated or self._cancelled():
            # The connector was stopped: its output may just have ended early. Committing
            # now would swap a partial table in for a whole one.
            raise ConnectorError("run cancelled", failure_type="cancelled")
        if attempt.trace_error is not None:
            raise trace_failure(attempt.trace_error)
        if attempt.cut_short is not None:
            raise attempt.cut_short
        self._commit(attempt, final=True)
        attempt.committer.close()

    # -- committing -----------------------------------------------------------------------------

    def _plan_commit(self, attempt: _Attempt, *, final: bool) -> CommitPlan:
        """The commit of the states pending now (commits.plan_commit)."""
        streams = attempt.streams
        return plan_commit(
            attempt.pending_states,
            attempt.held_states,
            {sid: s.state_key for sid, s in streams.items()},
            {sid for sid, s in streams.items() if s.table.replace},
            final=final,
            reset=attempt.reset,
            before=self.before_state,
            ran_all=attempt.ran_all,
        )

    def _commit(self, attempt: _Attempt, *, final: bool) -> None:
        """Hand the batches that the pending states cover, and those states, to the committer
        (commits.plan_commit says which)."""
        streams = attempt.streams
        plan = self._plan_commit(attempt, final=final)
        attempt.pending_states.clear()
        attempt.held_states = plan.held
        batches = {sid: attempt.batches[sid].take() for sid in plan.streams}
        marks = {sid: attempt.marks.pop(sid) for sid in plan.streams if sid in attempt.marks}
        tables = {sid: s.table for sid, s in streams.items()}
        replace = [streams[sid].table for sid in plan.replace]
        attempt.commits += 1
        staged = {
            sid: [StagedBatch(b.key, b.records) for b in taken] for sid, taken in batches.items()
        }
        entry = CommitEntry(
            commit_id=commit_id(self.run_id, attempt.progress.attempt, attempt.commits),
            batches=staged,
            states=plan.states,
            forget=plan.forget,
            replace=plan.replace,
            # The final commit takes every record left, those after the last STATE too (the
            # connector ended well); a replay takes only what a STATE covered.
            covered=_covered(staged, marks) if final else None,
        )
        # Journaled before it is handed over: a commit that then fails can be finished later.
        self._journal(attempt, entry)
        attempt.committer.submit(
            lambda: self._load(
                attempt, batches, tables, plan.states, replace, plan.forget, entry.commit_id
            )
        )

    def _journal(self, attempt: _Attempt, entry: CommitEntry) -> None:
        """Stage a commit's journal entry (and, before the first, the attempt's manifest)."""
        if attempt.commits == 1:
            write_manifest(
                self.staging,
                self.prefix,
                Manifest(
                    run_id=self.run_id,
                    attempt=attempt.progress.attempt,
                    reset=attempt.reset,
                    streams=[
                        StreamManifest(
                            sid=sid,
                            state_key=s.state_key,
                            table=s.table,
                            config=s.config.model_dump(mode="json"),
                        )
                        for sid, s in attempt.streams.items()
                    ],
                ),
            )
        write_entry(self.staging, self.prefix, attempt.progress.attempt, entry)

    def _journal_received(self, attempt: _Attempt) -> None:
        """After a failure: journal the states received but never handed to a commit, with the
        records they cover (up to where each stream stood when its state arrived)."""
        plan = self._plan_commit(attempt, final=False)
        if not plan.states:
            return
        files = {
            sid: [
                StagedBatch(b.key, b.records)
                for b in [*staged.pending, *([staged.abandoned] if staged.abandoned else [])]
            ]
            for sid, staged in attempt.batches.items()
            if sid in plan.streams
        }
        covered = _covered(files, attempt.marks)
        attempt.commits += 1
        entry = CommitEntry(
            commit_id=commit_id(self.run_id, attempt.progress.attempt, attempt.commits),
            batches=covered,
            states=plan.states,
            handed_over=False,
        )
        self._journal(attempt, entry)

    def _load(
        self,
        attempt: _Attempt,
        batches: dict[str, list[Batch]],
        tables: dict[str, StreamTable],
        states: list[dict[str, Any]],
        replace: list[StreamTable],
        forget: list[str],
        commit_id: str,
    ) -> None:
        """One commit, in the commit thread. Records the destination refuses are named by
        their stdout line (DuckDB's own text may quote values: it goes into the run's log)."""
        with contextlib.ExitStack() as stack:
            paths = {
                sid: [stack.enter_context(self.staging.local_path(b.key)) for b in pending]
                for sid, pending in batches.items()
            }
            counts = {sid: sum(b.records for b in pending) for sid, pending in batches.items()}
            try:
                attempt.destination.commit(
                    paths,
                    tables,
                    states,
                    self.run_id,
                    replace=replace,
                    forget=forget,
                    counts=counts,
                    commit_id=commit_id,
                )
            except RecordsRefusedError as refused:
                bad = first_bad_record(batches, paths, f"connector {self.connector.name} read")
                if bad is None:
                    raise refused.cause from None
                attempt.run_log.write(
                    "sluice",
                    "warn",
                    f"{refused.destination} refused a batch: "
                    f"{type(refused.cause).__name__}: {refused.cause}",
                )
                raise bad from None
        progress = attempt.progress
        for sid, count in counts.items():
            progress.records[sid] = progress.records.get(sid, 0) + count
        progress.states += len(states)
        log.info("batch committed", records=sum(counts.values()), states=len(states))
        self._heartbeat(progress)

    # -- the end --------------------------------------------------------------------------------

    def _clean_up(self, failure: BaseException, attempt: _Attempt) -> None:
        """After a failed attempt: close the open batches (kept for replay), let the commits
        already handed over finish (each is whole and consistent) and join the commit thread,
        drop the run-scoped tables. Every step runs even when one before it failed; a step
        that fails is logged and never replaces `failure`."""
        steps: list[tuple[str, Callable[[], None]]] = [
            (f"closing batch {b.writer.batch.key}", b.abandon)
            for b in attempt.batches.values()
            if b.writer is not None
        ]
        steps.append(
            ("journaling the states received for a replay", lambda: self._journal_received(attempt))
        )
        steps.append(("waiting for the commits handed over", attempt.committer.close))
        steps.append(
            (
                "dropping the run-scoped tables",
                lambda: attempt.destination.discard(s.table for s in attempt.streams.values()),
            )
        )
        for what, step in steps:
            try:
                step()
            except BaseException as exc:
                if exc is failure:  # the commit thread's own failure, raised again
                    continue
                attempt.run_log.write(
                    "sluice", "warn", f"cleanup: {what} failed: {type(exc).__name__}: {exc}"
                )

    def _result(self, attempt: _Attempt, *, incremental: bool) -> SyncResult:
        progress = attempt.progress
        return SyncResult(
            run_id=self.run_id,
            streams=[
                StreamResult(
                    name=s.config.name,
                    namespace=s.config.namespace,
                    records=progress.records.get(sid, 0),
                    columns=list(s.table.columns),
                )
                for sid, s in attempt.streams.items()
            ],
            bytes_staged=progress.bytes_staged,
            batches=progress.batches,
            states_committed=progress.states,
            incremental=incremental,
        )


def _covered(
    files: dict[str, list[StagedBatch]], marks: dict[str, tuple[int, str | None, int]]
) -> dict[str, list[StagedBatch]]:
    """Of each stream's staged files (in order), the records a STATE covered: up to where the
    stream stood when its latest state arrived (``marks``; a stream without one: none)."""
    covered: dict[str, list[StagedBatch]] = {}
    for sid, staged in files.items():
        closed, open_key, open_records = marks.get(sid, (0, None, 0))
        covered[sid] = staged[:closed]
        if open_key is not None and open_records:
            whole = any(b.key == open_key and b.records == open_records for b in staged)
            covered[sid].append(StagedBatch(open_key, open_records, whole=whole))
    return covered
