"""Activities of SyncConnectionWorkflow, as methods of a class that receives its clients.

They are synchronous (blocking subprocess and DuckDB I/O) and run in the worker's thread pool.
They raise Sluice's own errors (workers/errors.py), which name the connection and what was
wrong and know whether retrying can help; the worker's error interceptor reports them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog
from temporalio import activity
from temporalio.exceptions import CancelledError

from purge.receipts import PurgeReceipt
from purge.scrub import LogScrubber, spec_secret_values, state_leaf_values
from workers.activities.heartbeat import Heartbeater, resume_details
from workers.activities.locks import ConnectionLocks
from workers.connections import (
    AirbyteConnection,
    Connection,
    ConnectionsFile,
    resolve_source_config,
    secret_values,
)
from workers.connectors.executors import ConnectorInstaller
from workers.connectors.process import Connector
from workers.destinations import DestinationOptions, open_destination
from workers.errors import (
    ConnectionBusyError,
    InvalidRequestError,
    SluiceError,
    as_application_error,
)
from workers.localsync.engine import LocalSync
from workers.localsync.results import SyncProgress, SyncResult
from workers.metadata import MetadataStore
from workers.purging import Purger
from workers.retained_logs import LogRetention
from workers.runlog import RunLog
from workers.settings import Settings
from workflows.models import (
    ActivityName,
    PurgeInput,
    RecordRunInput,
    RetainMetadataInput,
    RunPlan,
    RunSyncInput,
    StreamOutcome,
    SyncOutcome,
    SyncRequest,
)

log = structlog.get_logger(__name__)


def _outcome(result: SyncResult) -> SyncOutcome:
    """The engine's result as the Temporal contract says it."""
    return SyncOutcome(
        run_id=result.run_id,
        streams=[
            StreamOutcome(name=s.name, namespace=s.namespace, records=s.records, columns=s.columns)
            for s in result.streams
        ],
        bytes_staged=result.bytes_staged,
        batches=result.batches,
        states_committed=result.states_committed,
        incremental=result.incremental,
    )


def load_connection(settings: Settings, connection_id: str) -> Connection | AirbyteConnection:
    """The connection as the file says now: read on every run, so that edits apply without
    restarting workers."""
    return ConnectionsFile.load(settings.connections_file).get(connection_id)


class SyncActivities:
    def __init__(
        self,
        settings: Settings,
        store: MetadataStore,
        installer: ConnectorInstaller,
        log_retention: LogRetention,
        environ: Mapping[str, str],
        locks: ConnectionLocks,
        purger: Purger,
    ) -> None:
        self.settings = settings
        self.store = store
        self.installer = installer
        self.log_retention = log_retention
        self.environ = environ
        self.locks = locks
        self.purger = purger

    def local_connection(self, connection_id: str) -> Connection:
        """A connection of the local backend."""
        connection = load_connection(self.settings, connection_id)
        if not isinstance(connection, Connection):
            raise SluiceError(
                f"connection {connection_id!r} is not a local connection", kind="InvalidConnection"
            )
        return connection

    @activity.defn(name=ActivityName.PLAN_RUN)
    def plan_run(self, request: SyncRequest) -> RunPlan:
        connection = load_connection(self.settings, request.connection_id)
        info = activity.info()
        workflow_id, run_id = info.workflow_id, info.workflow_run_id
        if workflow_id is None or run_id is None:
            raise SluiceError("plan_run plans a workflow's run; it ran outside a workflow")
        plan = self.plan(connection, request, run_id)
        self.take_connection(plan, workflow_id)
        return plan

    def take_connection(self, plan: RunPlan, workflow_id: str) -> None:
        """Take the connection's lock for the planned run, or refuse: one run at a time."""
        holder = self.locks.acquire(
            plan.connection_id,
            plan.run_id,
            workflow_id=workflow_id,
            # Airbyte stages into one path per connection: never the sweep's to purge.
            staging_target=plan.staging_target if plan.backend == "local" else None,
        )
        if holder is not None:
            raise ConnectionBusyError(
                f"connection {plan.connection_id!r} is already syncing "
                f"(run {holder['run_id']}, workflow {holder.get('workflow_id') or 'unknown'}); "
                "one run of a connection at a time",
            )

    def plan(
        self, connection: Connection | AirbyteConnection, request: SyncRequest, run_id: str
    ) -> RunPlan:
        """The run of a connection: where it stages, which streams, its timings."""
        timing: dict[str, Any] = {
            "heartbeat_timeout_seconds": self.settings.heartbeat_timeout_seconds,
            "job_timeout_hours": self.settings.job_timeout_hours,
            "sync_attempts": self.settings.sync_attempts,
        }
        if isinstance(connection, AirbyteConnection):
            if request.streams or request.reset:
                raise InvalidRequestError(
                    f"connection {connection.id!r} runs in Airbyte: `streams` and `reset` are "
                    "chosen in Airbyte, not here",
                )
            return RunPlan(
                connection_id=connection.id,
                run_id=run_id,
                backend="airbyte",
                airbyte_connection_id=connection.airbyte.connection_id,
                # Airbyte's destination stages into this path itself: the whole path is purged.
                staging_uri=connection.staging,
                staging_prefix="",
                streams=[],
                **timing,
            )
        declared = {s.name for s in connection.streams}
        unknown = sorted(set(request.streams or []) - declared)
        if unknown:
            raise InvalidRequestError(
                f"connection {connection.id!r} declares no streams {unknown} "
                f"(declared: {', '.join(sorted(declared))})",
                kind="UnknownStream",
            )
        return RunPlan(
            connection_id=connection.id,
            run_id=run_id,
            staging_uri=connection.staging or self.settings.resolved_staging_uri,
            staging_prefix=f"{connection.id}/{run_id}/",
            streams=request.streams or [s.name for s in connection.streams],
            reset=request.reset,
            **timing,
        )

    # Cancellation is cooperative (the heartbeat thread stops the connector), never an exception
    # thrown into the middle of a commit or of the cleanup that removes raw data.
    @activity.defn(name=ActivityName.RUN_SYNC, no_thread_cancel_exception=True)
    def run_sync(self, request: RunSyncInput) -> SyncOutcome:
        """Sync, then scrub the attempt's raw log and retain it, on failure too."""
        plan = request.plan
        assert plan.staging_uri is not None, "a local run always stages"
        structlog.contextvars.bind_contextvars(
            connection=plan.connection_id, run_id=plan.run_id, activity="run_sync"
        )
        connection = self.local_connection(plan.connection_id)
        config = resolve_source_config(connection, self.environ)
        previous = resume_details()
        resume = SyncProgress.model_validate(previous) if previous else None
        attempt = activity.info().attempt
        sync: LocalSync | None = None

        def stop_connector() -> None:
            if sync is not None:
                sync.connector.terminate()

        heartbeater = Heartbeater(
            resume,
            on_cancel=stop_connector,
            on_beat=self.locks.renewer(plan.connection_id, plan.run_id),
        )
        failure: SluiceError | None = None
        outcome: SyncOutcome | None = None
        with RunLog() as run_log, heartbeater.running():
            try:
                sync = self._local_sync(connection, config, plan, heartbeater)
                declared = [s.name for s in connection.streams]
                only = None if plan.streams == declared else plan.streams
                result = sync.run(
                    run_log=run_log, attempt=attempt, reset=request.reset, only=only, resume=resume
                )
                outcome = _outcome(result)
            except SluiceError as exc:
                # Classified where it was raised. ConnectorFailed: a connector's own
                # configuration error, or a cancellation, is final; anything else (an upstream
                # 502, a crash, a stall) may pass, and the attempt is retried from the committed
                # state, as Airbyte retries attempts. ConnectorProtocolError: output Sluice
                # cannot take fails the same way again: final, its message naming the stream
                # and stdout line, never a value. ConnectorNotFound, InvalidConnection: final.
                failure = exc
            except Exception as exc:
                # Whatever else went wrong may quote record values (a DuckDB cast error, a
                # parse error): the full text goes into the run's log, which is scrubbed; only
                # its kind goes into Temporal's history.
                run_log.write("sluice", "error", f"run failed: {type(exc).__name__}: {exc}")
                failure = SluiceError(
                    f"{type(exc).__name__} while syncing (the details are in the run's "
                    "retained log)",
                    kind="SyncError",
                    retryable=True,
                )
            finally:
                structlog.contextvars.unbind_contextvars("connection", "run_id", "activity")
                scrubber = self._scrubber(connection, config, sync)
                scrub = self.log_retention.retain(
                    connection_id=plan.connection_id,
                    run_id=plan.run_id,
                    attempt=attempt,
                    read_lines=run_log.read,
                    scrubber=scrubber,
                )
        if activity.is_cancelled():
            raise CancelledError("sync cancelled; its log was scrubbed and retained")
        if failure is not None:
            # The message goes into Temporal's history: scrubbed like the log. The retained
            # log travels in the details, so that the run's record can point at it, and so do
            # the counts of what the run committed before it failed (names and counts only).
            details = scrub.model_dump(mode="json")
            if isinstance(heartbeater.details, SyncProgress):
                details["committed"] = heartbeater.details.model_dump(mode="json")
            raise as_application_error(
                failure,
                context=f"connection {connection.id!r}",
                details=details,
                redact=scrubber.scrub_line,
            )
        assert outcome is not None
        return outcome.model_copy(update={"scrub": scrub})

    def _local_sync(
        self,
        connection: Connection,
        config: dict[str, Any],
        plan: RunPlan,
        heartbeater: Heartbeater,
    ) -> LocalSync:
        """The engine for one attempt, with this worker's connector, destination and store."""
        assert plan.staging_uri is not None
        return LocalSync(
            connection=connection,
            connector=Connector(
                self.installer.argv(connection.source),
                stall_timeout=self.settings.stall_timeout_seconds,
            ),
            config=config,
            destination=lambda: open_destination(
                connection,
                DestinationOptions(duckdb_memory_limit=self.settings.duckdb_memory_limit),
            ),
            store=self.purger.open(plan.staging_uri),
            prefix=plan.staging_prefix,
            run_id=plan.run_id,
            batch_records=self.settings.batch_records,
            heartbeat=heartbeater.update,
            staging_key=self.store.staging_key(plan.run_id, plan.connection_id),
            cancelled=activity.is_cancelled,
            catalog_cache=self.store,
        )

    def _scrubber(
        self, connection: Connection, config: dict[str, Any], sync: LocalSync | None
    ) -> LogScrubber:
        """A scrubber for one attempt: the state before and after it, the connector's secrets."""
        states: list[Any] = (
            [*sync.before_state, *sync.seen_states, *sync.after_state] if sync else []
        )
        cursor_fields = {f for s in connection.streams for f in s.cursor_field}
        if sync is not None:
            cursor_fields |= sync.cursor_fields  # the source's own defaults too
        secrets = secret_values(connection, config)
        if sync is not None and sync.spec is not None:
            secrets += spec_secret_values(sync.spec, config)
        # Stream names, namespaces and key field names are metadata Sluice keeps: never taken
        # for cursor values in free text.
        keep = {s.name for s in connection.streams} | {
            s.namespace for s in connection.streams if s.namespace
        }
        keep |= {field for s in connection.streams for key in s.primary_key for field in key}
        return LogScrubber(
            cursor_values=state_leaf_values(states),
            secrets=secrets,
            cursor_fields=sorted(cursor_fields),
            keep=sorted(keep),
        )

    @activity.defn(name=ActivityName.RETAIN_METADATA)
    def retain_metadata(self, request: RetainMetadataInput) -> None:
        connection = self.local_connection(request.plan.connection_id)
        declared = {(s.namespace, s.name): s for s in connection.streams}
        rows = []
        for outcome in request.streams:
            stream = declared.get((outcome.namespace, outcome.name))
            if stream is None:
                continue  # removed from the file while the run went on
            rows.append(
                {
                    "name": stream.name,
                    "namespace": stream.namespace,
                    "sync_mode": stream.sync_mode,
                    "destination_mode": stream.destination_mode,
                    "cursor_field": stream.cursor_field,
                    "primary_key": stream.primary_key,
                    "columns": outcome.columns,
                }
            )
        self.store.retain_connection(
            connection_id=connection.id,
            name=connection.name or connection.id,
            backend=connection.backend,
            source_type=connection.source.connector_name,
            destination_type=connection.destination.type,
            schedule=connection.schedule,
            stream_rows=rows,
        )

    @activity.defn(name=ActivityName.PURGE_STAGING, no_thread_cancel_exception=True)
    def purge_staging(self, request: PurgeInput) -> PurgeReceipt:
        plan = request.plan
        # A replay purges the failed run it finished too, each run with a receipt of its own.
        run_id = request.of_run or plan.run_id
        receipt_id = f"purge-{run_id}"
        existing = self.store.receipt(receipt_id)
        if existing is not None and existing.verified_empty:
            # A retry after the receipt was written: never a second receipt.
            return existing
        # The plan carries what the purge needs: the run's staging root is a root the
        # connections file named when the run was planned, so a file edited or broken since
        # never stops the purge of data that was already committed.
        assert plan.staging_uri is not None and plan.staging_target is not None
        staging = (
            plan.staging_target
            if request.of_run is None
            else f"{plan.staging_uri}{plan.connection_id}/{request.of_run}/"
        )
        target = self.purger.target(staging, [plan.staging_uri, *self.settings.purge_allow])
        # A retry after a worker died mid-purge lists what is left and deletes it; the counts
        # of the interrupted attempt come from its heartbeats.
        before = int(resume_details() or 0)
        heartbeater = Heartbeater(
            before, on_beat=self.locks.renewer(plan.connection_id, plan.run_id)
        )
        with heartbeater.running():
            receipt = self.purger.purge(
                target,
                receipt_id=receipt_id,
                run_id=run_id,
                deleted_before=before,
                # Reached only after the commit (or a replay finished the run): nothing needs
                # the staging any more, nor its key.
                shred=plan.backend == "local",
                on_progress=heartbeater.update,
            )
        log.info(
            "staging purged",
            run_id=run_id,
            objects=receipt.objects_deleted,
            verified_empty=receipt.verified_empty,
        )
        return receipt

    @activity.defn(name=ActivityName.RELEASE_CONNECTION)
    def release_connection(self, plan: RunPlan) -> None:
        self.store.unlock_connection(plan.connection_id, plan.run_id)

    @activity.defn(name=ActivityName.RECORD_RUN)
    def record_run(self, request: RecordRunInput) -> None:
        """Record how the run ended and give its connection back (in that order: a run is
        never unlocked unrecorded)."""
        plan, outcome, receipt = request.plan, request.outcome, request.receipt
        records = {s.name: s.records for s in outcome.streams} if outcome else {}
        purged = receipt is not None and receipt.verified_empty
        self.store.record_run(
            {
                "run_id": plan.run_id,
                "connection_id": plan.connection_id,
                "workflow_id": request.workflow_id,
                "status": request.status,
                "started_at": request.started_at,
                "finished_at": request.finished_at,
                "duration_seconds": (request.finished_at - request.started_at).total_seconds(),
                "incremental": bool(outcome and outcome.incremental),
                "records": sum(records.values()),
                "records_by_stream": records,
                "bytes_staged": outcome.bytes_staged if outcome else 0,
                "redactions": request.scrub.redactions if request.scrub else {},
                "receipt_id": receipt.receipt_id if receipt else None,
                "error": request.error,
                # Staging that was not purged is left for the sweep. Airbyte stages into one
                # path per connection, not per run: the next successful job's purge covers a
                # failed one's files, and a sweep could hit a live job's.
                "staging_target": None
                if plan.backend == "airbyte" or purged
                else plan.staging_target,
                "committed": request.committed,
                "warnings": request.warnings,
                "kind": plan.kind,
                "reset": plan.reset,
                "replay_of": plan.replay_of,
            }
        )
        if plan.replay_of is not None and request.status == "succeeded":
            self.store.mark_replayed(plan.replay_of, plan.run_id)
        self.store.unlock_connection(plan.connection_id, plan.run_id)

    def all(self) -> list[Any]:
        return [
            self.plan_run,
            self.run_sync,
            self.retain_metadata,
            self.purge_staging,
            self.record_run,
            self.release_connection,
        ]
