"""Temporal Schedules: one per connection with a `schedule`, and the retention sweep.

Applying is idempotent: a schedule that exists is updated to match the file and the settings; a
connection's schedule whose cron was removed from the file is deleted.
"""

from __future__ import annotations

import contextlib

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.service import RPCError

from workers.connections import ConnectionsFile
from workers.run_metadata import RunMetadata
from workers.settings import Settings
from workflows.models import SweepRequest, SyncRequest
from workflows.sweep import RetentionSweepWorkflow
from workflows.sync import SyncConnectionWorkflow

SWEEP_SCHEDULE_ID = "sluice-retention-sweep"
SYNC_SCHEDULE_PREFIX = "sluice-sync-"


def sweep_schedule(settings: Settings) -> Schedule:
    metadata = RunMetadata.for_run("sweep", started_by=f"schedule {SWEEP_SCHEDULE_ID}")
    return Schedule(
        action=ScheduleActionStartWorkflow(
            RetentionSweepWorkflow.run,
            SweepRequest(),
            id="retention-sweep",
            task_queue=settings.task_queue,
            static_summary=metadata.static_summary,
            static_details=metadata.static_details,
        ),
        spec=ScheduleSpec(cron_expressions=[settings.sweep_schedule]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


def sync_schedule(settings: Settings, connection_id: str, cron: str) -> Schedule:
    metadata = RunMetadata.for_run(
        "sync", connection_id, started_by=f"schedule {SYNC_SCHEDULE_PREFIX}{connection_id}"
    )
    return Schedule(
        action=ScheduleActionStartWorkflow(
            SyncConnectionWorkflow.run,
            SyncRequest(connection_id=connection_id),
            id=f"sync-{connection_id}",
            task_queue=settings.task_queue,
            static_summary=metadata.static_summary,
            static_details=metadata.static_details,
        ),
        spec=ScheduleSpec(cron_expressions=[cron]),
        # One sync of a connection at a time; a run that is still going skips the next tick.
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


async def _upsert(client: Client, schedule_id: str, schedule: Schedule) -> None:
    try:
        await client.create_schedule(schedule_id, schedule)
    except ScheduleAlreadyRunningError:

        def replace(_: ScheduleUpdateInput) -> ScheduleUpdate:
            return ScheduleUpdate(schedule=schedule)

        await client.get_schedule_handle(schedule_id).update(replace)


async def apply_schedules(
    client: Client, settings: Settings, connections: ConnectionsFile
) -> list[str]:
    """Create or update every schedule; returns their ids."""
    applied = [SWEEP_SCHEDULE_ID]
    await _upsert(client, SWEEP_SCHEDULE_ID, sweep_schedule(settings))
    wanted = {
        f"{SYNC_SCHEDULE_PREFIX}{c.id}": c
        for c in connections.connections.values()
        if c.schedule is not None
    }
    for schedule_id, connection in wanted.items():
        assert connection.schedule is not None
        await _upsert(
            client, schedule_id, sync_schedule(settings, connection.id, connection.schedule)
        )
        applied.append(schedule_id)
    async for listed in await client.list_schedules():
        if listed.id.startswith(SYNC_SCHEDULE_PREFIX) and listed.id not in wanted:
            with contextlib.suppress(RPCError):  # deleted meanwhile
                await client.get_schedule_handle(listed.id).delete()
    return applied
