"""How a Sluice worker is built: the workflows, the activities and their clients."""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.runtime import Runtime
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
    Worker,
)

from purge.errors import PurgeError
from workers.activities.airbyte import AirbyteActivities
from workers.activities.locks import ConnectionLocks, TemporalWorkflowRuns
from workers.activities.replay import ReplayActivities
from workers.activities.sweep import SweepActivities
from workers.activities.sync import SyncActivities
from workers.connectors.executors import ConnectorInstaller
from workers.errors import SluiceError, as_application_error
from workers.metadata import MetadataStore
from workers.metrics import MetricsReporting, SluiceMetrics
from workers.notifications import NotificationDelivery, NotificationOutbox, RunNotices
from workers.purging import Purger
from workers.retained_logs import LogRetention
from workers.settings import Settings
from workflows.replay import ReplayFailedSyncWorkflow
from workflows.sweep import RetentionSweepWorkflow
from workflows.sync import SyncConnectionWorkflow


class ErrorReporting(Interceptor):
    """Registered on the worker: an activity that raises one of Sluice's (or purge's) errors
    fails with it as an ApplicationError, so no activity converts errors itself."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ReportingActivityInbound(next)


class _ReportingActivityInbound(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        try:
            return await super().execute_activity(input)
        except (SluiceError, PurgeError) as exc:
            raise as_application_error(exc) from None


def build_worker(client: Client, settings: Settings) -> Worker:
    """Called from the event loop the worker will run on: activity threads reach Temporal
    through it."""
    metadata = MetadataStore.from_url(settings.resolved_metadata_url)
    purger = Purger(settings, metadata)
    log_store = purger.open(settings.resolved_log_store)
    locks = ConnectionLocks(
        metadata,
        TemporalWorkflowRuns(client, asyncio.get_running_loop()),
        timedelta(minutes=settings.lock_ttl_minutes),
    )
    activities = SyncActivities(
        settings=settings,
        store=metadata,
        installer=ConnectorInstaller(settings.connectors_dir),
        log_retention=LogRetention(log_store, metadata),
        environ=os.environ,
        locks=locks,
        purger=purger,
    )
    sweep = SweepActivities(settings=settings, store=metadata, purger=purger, locks=locks)
    airbyte = AirbyteActivities(
        settings=settings,
        store=metadata,
        log_retention=LogRetention(log_store, metadata),
        environ=os.environ,
        locks=locks,
    )
    # Notifications of recorded runs go into an outbox in the metadata store; this worker's
    # delivery (any worker's) sends them, and pauses schedules, beside the worker.
    delivery = NotificationDelivery(metadata, client, settings, os.environ)
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=[SyncConnectionWorkflow, ReplayFailedSyncWorkflow, RetentionSweepWorkflow],
        activities=[
            *activities.all(),
            *ReplayActivities(activities).all(),
            *airbyte.all(),
            *sweep.all(),
        ],
        activity_executor=ThreadPoolExecutor(max_workers=settings.max_concurrent_activities),
        max_concurrent_activities=settings.max_concurrent_activities,
        # A cancellation reaches a running activity with the answer to its next heartbeat: the
        # SDK would send one only every 0.8 x the heartbeat timeout (48 s by default), so that
        # `sluice cancel` or a deadline would take that long to stop a connector.
        default_heartbeat_throttle_interval=timedelta(seconds=2),
        max_heartbeat_throttle_interval=timedelta(seconds=2),
        interceptors=[
            ErrorReporting(),
            # Sluice's metrics, on the meter of the runtime the client (and so the worker)
            # runs on: exported with the SDK's own when that runtime serves Prometheus.
            MetricsReporting(SluiceMetrics(_runtime_of(client).metric_meter)),
            NotificationOutbox(RunNotices(settings, metadata), wake=delivery.wake),
        ],
        plugins=[delivery.plugin()],
    )


def _runtime_of(client: Client) -> Runtime:
    return client.service_client.config.runtime or Runtime.default()
