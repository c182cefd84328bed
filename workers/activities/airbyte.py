"""Activities of SyncConnectionWorkflow for connections that Airbyte runs (backend "airbyte").

The job id is durable before any waiting starts: `airbyte_start_job` returns it to the workflow,
and `airbyte_wait_job` takes it as input, so a worker that dies while waiting is replaced by one
that waits on the same job. Starting is safe to retry: a second create answers 409 while the
first job runs, and we attach to it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import structlog
from temporalio import activity

from purge.scrub import LogScrubber, state_leaf_values
from workers.activities.locks import ConnectionLocks
from workers.activities.sync import load_connection
from workers.airbyte.api import (
    AirbyteApiError,
    AirbyteClient,
    AirbyteConfigError,
    AirbyteServer,
    failure_summary,
    log_lines,
)
from workers.connections import AirbyteConnection
from workers.errors import SluiceError, as_application_error
from workers.metadata import MetadataStore
from workers.retained_logs import LogRetention
from workers.settings import Settings
from workflows.models import (
    ActivityName,
    AirbyteJobInput,
    AirbyteJobOutcome,
    AirbyteJobRef,
    RunPlan,
    StreamOutcome,
    SyncOutcome,
)

log = structlog.get_logger(__name__)


def airbyte_server(settings: Settings) -> AirbyteServer:
    if not settings.airbyte_api_url:
        raise AirbyteConfigError("no Airbyte server configured: set SLUICE_AIRBYTE_API_URL")
    return AirbyteServer.build(
        api_url=settings.airbyte_api_url,
        config_api_url=settings.airbyte_config_api_url,
        bearer_token=settings.airbyte_bearer_token,
        username=settings.airbyte_username,
        password=settings.airbyte_password,
        client_id=settings.airbyte_client_id,
        client_secret=settings.airbyte_client_secret,
        token_url=settings.airbyte_token_url,
        allow_http=settings.airbyte_allow_http,
        timeout_seconds=settings.airbyte_timeout_seconds,
    )


class AirbyteActivities:
    def __init__(
        self,
        settings: Settings,
        store: MetadataStore,
        log_retention: LogRetention,
        environ: Mapping[str, str],
        locks: ConnectionLocks,
        client_factory: Callable[[], AirbyteClient] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.log_retention = log_retention
        self.environ = environ
        self.locks = locks
        self._client_factory = client_factory or (lambda: AirbyteClient(airbyte_server(settings)))

    @contextlib.asynccontextmanager
    async def _client(self, plan: RunPlan) -> AsyncIterator[AirbyteClient]:
        client = self._client_factory()
        try:
            yield client
        except AirbyteApiError as exc:
            raise as_application_error(
                exc,
                context=f"connection {plan.connection_id!r} (Airbyte {plan.airbyte_connection_id})",
            ) from None
        finally:
            await client.aclose()

    def _connection(self, plan: RunPlan) -> AirbyteConnection:
        connection = load_connection(self.settings, plan.connection_id)
        if not isinstance(connection, AirbyteConnection):
            raise SluiceError(
                f"connection {plan.connection_id!r} is not an Airbyte connection",
                kind="InvalidConnection",
            )
        return connection

    @activity.defn(name=ActivityName.AIRBYTE_START_JOB)
    async def airbyte_start_job(self, plan: RunPlan) -> AirbyteJobRef:
        assert plan.airbyte_connection_id is not None
        async with self._client(plan) as client:
            job_id, attached = await client.start_sync(plan.airbyte_connection_id)
        log.info("airbyte job", connection=plan.connection_id, job_id=job_id, attached=attached)
        return AirbyteJobRef(job_id=job_id, attached=attached)

    @activity.defn(name=ActivityName.AIRBYTE_WAIT_JOB)
    async def airbyte_wait_job(self, request: AirbyteJobInput) -> AirbyteJobOutcome:
        """Poll until the job ends, then scrub and retain its logs.

        Heartbeats run on a timer of their own, so that a slow answer or a long poll interval
        never makes a live watcher look dead; a cancelled workflow reaches us through them.
        """
        plan, job_id = request.plan, request.job_id
        assert plan.airbyte_connection_id is not None
        connection = self._connection(plan)
        timeout = activity.info().heartbeat_timeout
        beat = min(5.0, timeout.total_seconds() / 3) if timeout else 5.0
        status = "unknown"
        renew_lock = self.locks.renewer(plan.connection_id, plan.run_id)

        async def heartbeat() -> None:
            while True:
                activity.heartbeat(status)
                await asyncio.to_thread(renew_lock)
                await asyncio.sleep(beat)

        beating = asyncio.create_task(heartbeat())
        try:
            async with self._client(plan) as client:
                # The state as the job starts: its values are what the job's log prints first.
                before = await _optional(client.connection_state(plan.airbyte_connection_id))
                remote = await client.connection(plan.airbyte_connection_id)
                while True:
                    job = await client.job(job_id)
                    status = job.status
                    if job.status in ("succeeded", "failed", "cancelled"):
                        break
                    await asyncio.sleep(self.settings.airbyte_poll_seconds)
                info = await _optional(client.job_info(job_id))
                after = await _optional(client.connection_state(plan.airbyte_connection_id))
        finally:
            beating.cancel()
        scrubber = LogScrubber(
            cursor_values=state_leaf_values([s for s in (before, after) if s is not None]),
            secrets=self._secrets(connection, client),
            **_stream_names(remote),
        )
        scrub = None
        if info is not None and before is not None and after is not None:
            scrub = self.log_retention.retain(
                connection_id=plan.connection_id,
                run_id=plan.run_id,
                attempt=activity.info().attempt,
                read_lines=lambda: log_lines(info),
                scrubber=scrubber,
            )
        else:
            # Without the logs there is nothing to keep; without the state they cannot be
            # scrubbed, and unscrubbed logs are never kept. The job's outcome stands.
            log.warning("airbyte job logs not retained", job_id=job_id, reason="Config API")
        summary = failure_summary(info) if info is not None else None
        return AirbyteJobOutcome(
            job_id=job_id,
            status=job.status,  # type: ignore[arg-type]
            failure=scrubber.scrub_line(summary) if summary else None,
            sync=SyncOutcome(
                run_id=plan.run_id,
                streams=_stream_records(info) if info is not None else [],
                bytes_staged=job.bytes_synced,
                incremental=before is not None and before.get("stateType") not in (None, "not_set"),
                scrub=scrub,
            ),
        )

    def _secrets(self, connection: AirbyteConnection, client: AirbyteClient) -> list[str]:
        values = list(client.server.secrets())
        values += [self.environ[v] for v in connection.secrets.values() if v in self.environ]
        return values

    @activity.defn(name=ActivityName.AIRBYTE_CANCEL_JOB)
    async def airbyte_cancel_job(self, request: AirbyteJobInput) -> None:
        async with self._client(request.plan) as client:
            await client.cancel(request.job_id)
        log.info("airbyte job cancelled", connection=request.plan.connection_id, job=request.job_id)

    @activity.defn(name=ActivityName.AIRBYTE_RETAIN_METADATA)
    async def airbyte_retain_metadata(self, plan: RunPlan) -> None:
        """Streams, columns, sync modes, cursor and key field names, source and destination
        types, from Airbyte. Nothing else."""
        assert plan.airbyte_connection_id is not None
        connection = self._connection(plan)
        async with self._client(plan) as client:
            remote = await client.connection(plan.airbyte_connection_id)
            properties = await client.stream_properties(remote.source_id, remote.destination_id)
            source_type = await client.actor_type("source", remote.source_id)
            destination_type = await client.actor_type("destination", remote.destination_id)
        columns = {
            (p.streamnamespace, p.stream_name): sorted({f[0] for f in p.property_fields or [] if f})
            for p in properties
        }
        rows = []
        for stream in (remote.configurations.streams if remote.configurations else None) or []:
            mode = stream.sync_mode.value if stream.sync_mode is not None else "unknown"
            selected = [f.field_path[0] for f in stream.selected_fields or [] if f.field_path]
            rows.append(
                {
                    "name": stream.name,
                    "namespace": stream.namespace,
                    "sync_mode": mode,
                    "destination_mode": mode,
                    "cursor_field": list(stream.cursor_field or []),
                    "primary_key": [list(k) for k in stream.primary_key or []],
                    "columns": selected or columns.get((stream.namespace, stream.name), []),
                }
            )
        self.store.retain_connection(
            connection_id=connection.id,
            name=connection.name or remote.name,
            backend="airbyte",
            source_type=source_type,
            destination_type=destination_type,
            schedule=connection.schedule,
            stream_rows=rows,
        )

    def all(self) -> list[Any]:
        return [
            self.airbyte_start_job,
            self.airbyte_wait_job,
            self.airbyte_cancel_job,
            self.airbyte_retain_metadata,
        ]


async def _optional(call: Awaitable[dict[str, Any]]) -> dict[str, Any] | None:
    """A Config API answer, or None: the Config API is not a stable contract (and not always
    reachable, e.g. on Airbyte Cloud), so its logs and state must never fail a sync."""
    try:
        return await call
    except AirbyteApiError as exc:
        log.warning("airbyte config api unavailable", error=str(exc))
        return None


def _stream_names(remote: Any) -> dict[str, list[str]]:
    """The connection's cursor field names, and the names Sluice keeps as metadata (streams,
    namespaces, key fields), which the scrubber must never take for cursor values."""
    streams = (remote.configurations.streams if remote.configurations else None) or []
    return {
        "cursor_fields": sorted({f for s in streams for f in s.cursor_field or []}),
        "keep": sorted(
            {s.name for s in streams}
            | {s.namespace for s in streams if s.namespace}
            | {f for s in streams for key in s.primary_key or [] for f in key}
        ),
    }


def _stream_records(info: dict[str, Any]) -> list[StreamOutcome]:
    attempts = info.get("attempts") or []
    if not attempts:
        return []
    stats = attempts[-1].get("attempt", {}).get("streamStats") or []
    return [
        StreamOutcome(
            name=s.get("streamName", "?"),
            namespace=s.get("streamNamespace"),
            records=int((s.get("stats") or {}).get("recordsCommitted") or 0),
        )
        for s in stats
    ]
