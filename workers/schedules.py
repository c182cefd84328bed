"""Temporal Schedules: one per connection with a `schedule`, and the retention sweep.

Applying is idempotent: a schedule that exists is updated to match the file and the settings; a
connection's schedule whose cron was removed from the file is deleted. A paused schedule stays
paused, with its note (Sluice pauses a connection that keeps failing: workers/notifications.py):
only `resume_schedule` (`sluice schedules resume`) or the Temporal CLI or UI un-pauses one.
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
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.service import RPCError, RPCStatusCode

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

        def replace(current: ScheduleUpdateInput) -> ScheduleUpdate:
            state = current.description.schedule.state
            if state.paused:  # never un-paused behind the back of whoever paused it
                schedule.state = ScheduleState(paused=True, note=state.note)
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


async def paused_schedules(client: Client, schedule_ids: list[str]) -> dict[str, str]:
    """The schedules among `schedule_ids` that are paused, with their notes."""
    paused: dict[str, str] = {}
    for schedule_id in schedule_ids:
        with contextlib.suppress(RPCError):  # deleted meanwhile
            state = (await client.get_schedule_handle(schedule_id).describe()).schedule.state
            if state.paused:
                paused[schedule_id] = state.note or ""
    return paused


class ScheduleNotFoundError(LookupError):
    """The connection has no schedule in Temporal."""


async def resume_schedule(client: Client, connection_id: str) -> bool:
    """Un-pause the connection's schedule; False when it was not paused. Raises
    `ScheduleNotFoundError` when there is no such schedule."""
    schedule_id = f"{SYNC_SCHEDULE_PREFIX}{connection_id}"
    handle = client.get_schedule_handle(schedule_id)
    try:
        state = (await handle.describe()).schedule.state
        if not state.paused:
            return False
        await handle.unpause(note="resumed with sluice schedules resume")
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise ScheduleNotFoundError(
                f"connection {connection_id!r} has no schedule ({schedule_id}): "
                "'sluice schedules apply' creates the schedules of the connections with one"
            ) from None
        raise
    return True
