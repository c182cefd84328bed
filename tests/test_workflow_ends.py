"""How a run ends, whatever happens after its plan: SyncConnectionWorkflow with stand-in activities.

The plan and the record are the real activities (a real metadata store, a real lock); the sync,
metadata, purge and Airbyte activities are stand-ins registered under the real names, told to
succeed, fail, fail retryably, hang past the deadline, or wait to be cancelled. Each test then
checks what an operator would: the workflow's end, the run's recorded status, the lock, whether
staging was purged or left recorded for the sweep.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.worker import Worker

from purge.receipts import PurgeReceipt
from tests.conftest import HISTORY_KEYS, save_history
from workers.activities.locks import ConnectionLocks, TemporalWorkflowRuns
from workers.activities.sync import SyncActivities
from workers.codec import data_converter, parse_keys
from workers.connectors.executors import ConnectorInstaller
from workers.metadata import MetadataStore, connection_locks
from workers.purging import Purger
from workers.retained_logs import LogRetention
from workers.settings import Settings
from workers.worker import ErrorReporting
from workflows.models import (
    ActivityName,
    AirbyteJobInput,
    AirbyteJobOutcome,
    AirbyteJobRef,
    PurgeInput,
    RetainMetadataInput,
    RunPlan,
    RunSyncInput,
    StreamOutcome,
    SweepOutcome,
    SweepRequest,
    SyncOutcome,
    SyncRequest,
)
from workflows.sweep import RetentionSweepWorkflow
from workflows.sync import SyncConnectionWorkflow

pytestmark = pytest.mark.temporal

CONNECTIONS = """
[[connections]]
id = "shop"
[connections.source]
command = ["/bin/true"]
[connections.destination]
type = "duckdb"
path = "warehouse.duckdb"
[[connections.streams]]
name = "items"

[[connections]]
id = "shop-cloud"
backend = "airbyte"
[connections.airbyte]
connection_id = "9f7c3f0e-5b7a-4c1e-8f7e-2c1a8d3b6e10"
"""

# How a stand-in behaves when called.
OK, FAIL, FAIL_RETRYABLE, HANG, AWAIT_CANCEL, SLOW = (
    "ok",
    "fail",
    "fail-retryable",
    "hang",
    "await-cancel",
    "slow",
)


@dataclass
class StandIns:
    """The activities after the plan, each doing what the test says."""

    behaviour: dict[str, str] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    entered: dict[str, asyncio.Event] = field(default_factory=dict)
    cancelled: list[str] = field(default_factory=list)

    def event(self, name: str) -> asyncio.Event:
        return self.entered.setdefault(name, asyncio.Event())

    async def _act(self, name: str) -> None:
        self.calls.append(name)
        self.event(name).set()
        how = self.behaviour.get(name, OK)
        if how == FAIL:
            raise ApplicationError(f"{name} refused", type="StandInFailure", non_retryable=True)
        if how == FAIL_RETRYABLE:
            raise ApplicationError(f"{name} failed, try again", type="StandInFailure")
        if how == SLOW:
            # Long enough for a cancellation to arrive while it runs; it is not interrupted.
            for _ in range(20):
                activity.heartbeat()
                await asyncio.sleep(0.1)
        if how in (HANG, AWAIT_CANCEL):
            try:
                while True:
                    activity.heartbeat()
                    await asyncio.sleep(0.2)
            except asyncio.CancelledError:
                self.cancelled.append(name)
                raise

    @activity.defn(name=ActivityName.RUN_SYNC)
    async def run_sync(self, request: RunSyncInput) -> SyncOutcome:
        await self._act(ActivityName.RUN_SYNC)
        return SyncOutcome(
            run_id=request.plan.run_id,
            streams=[StreamOutcome(name="items", records=3, columns=["id"])],
            states_committed=1,
        )

    @activity.defn(name=ActivityName.RETAIN_METADATA)
    async def retain_metadata(self, request: RetainMetadataInput) -> None:
        await self._act(ActivityName.RETAIN_METADATA)

    @activity.defn(name=ActivityName.PURGE_STAGING)
    async def purge_staging(self, request: PurgeInput) -> PurgeReceipt:
        await self._act(ActivityName.PURGE_STAGING)
        now = datetime.now(UTC)
        return PurgeReceipt(
            receipt_id=f"purge-{request.plan.run_id}",
            target=request.plan.staging_target or "",
            dry_run=False,
            started_at=now,
            finished_at=now,
            objects_deleted=2,
            versions_deleted=0,
            bytes_deleted=10,
            manifest_sha256="0" * 64,
            remaining=0,
            verified_empty=True,
        )

    @activity.defn(name=ActivityName.AIRBYTE_START_JOB)
    async def airbyte_start_job(self, plan: RunPlan) -> AirbyteJobRef:
        await self._act(ActivityName.AIRBYTE_START_JOB)
        return AirbyteJobRef(job_id=7)

    @activity.defn(name=ActivityName.AIRBYTE_WAIT_JOB)
    async def airbyte_wait_job(self, request: AirbyteJobInput) -> AirbyteJobOutcome:
        await self._act(ActivityName.AIRBYTE_WAIT_JOB)
        return AirbyteJobOutcome(
            job_id=request.job_id,
            status="succeeded",
            sync=SyncOutcome(run_id=request.plan.run_id, streams=[]),
        )

    @activity.defn(name=ActivityName.AIRBYTE_CANCEL_JOB)
    async def airbyte_cancel_job(self, request: AirbyteJobInput) -> None:
        await self._act(ActivityName.AIRBYTE_CANCEL_JOB)

    @activity.defn(name=ActivityName.AIRBYTE_RETAIN_METADATA)
    async def airbyte_retain_metadata(self, plan: RunPlan) -> None:
        await self._act(ActivityName.AIRBYTE_RETAIN_METADATA)

    @activity.defn(name=ActivityName.SWEEP_RETAINED_LOGS)
    async def sweep_retained_logs(self, request: SweepRequest) -> SweepOutcome:
        await self._act(ActivityName.SWEEP_RETAINED_LOGS)
        return SweepOutcome(runs=1, objects_deleted=1)

    @activity.defn(name=ActivityName.SWEEP_FAILED_STAGING)
    async def sweep_failed_staging(self, request: SweepRequest) -> SweepOutcome:
        await self._act(ActivityName.SWEEP_FAILED_STAGING)
        return SweepOutcome(runs=2, objects_deleted=5, runs_finished=["r-terminated"])

    def all(self) -> list[Any]:
        return [
            self.sweep_retained_logs,
            self.sweep_failed_staging,
            self.run_sync,
            self.retain_metadata,
            self.purge_staging,
            self.airbyte_start_job,
            self.airbyte_wait_job,
            self.airbyte_cancel_job,
            self.airbyte_retain_metadata,
        ]


@dataclass
class Harness:
    client: Client
    settings: Settings
    store: MetadataStore
    locks: ConnectionLocks
    stand_ins: StandIns

    async def start(self, connection_id: str = "shop") -> Any:
        return await self.client.start_workflow(
            SyncConnectionWorkflow.run,
            SyncRequest(connection_id=connection_id),
            id=f"sync-{connection_id}-{uuid.uuid4().hex[:8]}",
            task_queue=self.settings.task_queue,
        )

    def run_row(self, handle: Any) -> dict[str, Any] | None:
        return self.store.get_run(handle.result_run_id)


@pytest_asyncio.fixture
async def harness(
    client: Client, tmp_path: Path, make_settings: Callable[..., Settings]
) -> AsyncIterator[Callable[..., Any]]:
    workers: list[Worker] = []
    # Payloads encrypted with the fixed key of recorded histories, so that a history saved
    # from these runs (SLUICE_RECORD_HISTORIES=1) replays later.
    client = await Client.connect(
        client.service_client.config.target_host,
        namespace=client.namespace,
        data_converter=data_converter(parse_keys(HISTORY_KEYS)),
    )

    async def start(**overrides: Any) -> Harness:
        settings = make_settings(
            CONNECTIONS,
            heartbeat_timeout_seconds=overrides.pop("heartbeat_timeout_seconds", 5),
            **overrides,
        )
        store = MetadataStore.from_url(settings.resolved_metadata_url)
        locks = ConnectionLocks(
            store, TemporalWorkflowRuns(client, asyncio.get_running_loop()), timedelta(minutes=10)
        )
        purger = Purger(settings, store)
        real = SyncActivities(
            settings=settings,
            store=store,
            installer=ConnectorInstaller(tmp_path / "connectors"),
            log_retention=LogRetention(purger.open(settings.resolved_log_store), store),
            environ={},
            locks=locks,
            purger=purger,
        )
        stand_ins = StandIns()
        worker = Worker(
            client,
            task_queue=settings.task_queue,
            workflows=[SyncConnectionWorkflow, RetentionSweepWorkflow],
            activities=[real.plan_run, real.record_run, real.release_connection, *stand_ins.all()],
            activity_executor=ThreadPoolExecutor(max_workers=4),
            interceptors=[ErrorReporting()],
        )
        await worker.__aenter__()
        workers.append(worker)
        return Harness(client, settings, store, locks, stand_ins)

    yield start
    for worker in workers:
        await worker.__aexit__(None, None, None)


async def _ended(handle: Any) -> BaseException | None:
    try:
        await handle.result()
    except WorkflowFailureError as err:
        return err.cause
    return None


def _assert_lock_free(h: Harness, connection_id: str = "shop") -> None:
    assert h.store.lock_holder(connection_id) is None


# --- failing, at each phase after the plan ---------------------------------------------------


async def test_sync_failing_keeps_staging_for_the_sweep_and_frees_the_lock(harness: Any) -> None:
    h = await harness()
    h.stand_ins.behaviour[ActivityName.RUN_SYNC] = FAIL
    handle = await h.start()
    cause = await _ended(handle)
    assert isinstance(cause, ApplicationError) and cause.type == "SyncFailed"
    assert "run_sync refused" in cause.message
    row = h.run_row(handle)
    assert row is not None and row["status"] == "failed"
    assert "run_sync refused" in row["error"]
    assert row["staging_target"].endswith(f"/shop/{handle.result_run_id}/")
    assert row["committed"] is False
    assert ActivityName.PURGE_STAGING not in h.stand_ins.calls  # purge never precedes commit
    _assert_lock_free(h)
    await save_history(handle, "sync-local-failed")


async def test_metadata_that_cannot_be_retained_is_a_warning_not_a_failure(harness: Any) -> None:
    h = await harness()
    h.stand_ins.behaviour[ActivityName.RETAIN_METADATA] = FAIL
    handle = await h.start()
    summary = await handle.result()
    assert summary.status == "succeeded"
    assert summary.warnings == ["metadata not retained: retain_metadata refused"]
    assert summary.verified_empty and summary.objects_purged == 2
    row = h.run_row(handle)
    assert row["status"] == "succeeded" and row["staging_target"] is None
    assert row["warnings"] == summary.warnings
    _assert_lock_free(h)
    await save_history(handle, "sync-local-succeeded-with-warning")


async def test_purge_failing_after_commit_is_recorded_for_the_sweep(harness: Any) -> None:
    h = await harness()
    h.stand_ins.behaviour[ActivityName.PURGE_STAGING] = FAIL
    handle = await h.start()
    cause = await _ended(handle)
    assert isinstance(cause, ApplicationError) and "purge failed" in cause.message
    row = h.run_row(handle)
    assert row["status"] == "failed"
    # Committed: the sweep purges it at once instead of keeping it for a replay.
    assert row["committed"] is True and row["staging_target"] is not None
    _assert_lock_free(h)


async def test_sync_exhausting_its_attempts_fails_the_run(harness: Any) -> None:
    h = await harness(sync_attempts=2)
    h.stand_ins.behaviour[ActivityName.RUN_SYNC] = FAIL_RETRYABLE
    handle = await h.start()
    cause = await _ended(handle)
    assert isinstance(cause, ApplicationError) and cause.type == "SyncFailed"
    assert h.stand_ins.calls.count(ActivityName.RUN_SYNC) == 2
    assert h.run_row(handle)["status"] == "failed"
    _assert_lock_free(h)


# --- deadlines -----------------------------------------------------------------------------


async def test_a_sync_past_its_deadline_ends_timed_out(harness: Any) -> None:
    h = await harness(job_timeout_hours=3 / 3600, heartbeat_timeout_seconds=2)
    h.stand_ins.behaviour[ActivityName.RUN_SYNC] = HANG
    handle = await h.start()
    cause = await _ended(handle)
    assert isinstance(cause, ApplicationError) and cause.type == "SyncTimedOut"
    row = h.run_row(handle)
    assert row["status"] == "timed_out" and "deadline" in row["error"]
    assert row["staging_target"] is not None
    _assert_lock_free(h)


async def test_an_airbyte_job_past_its_deadline_is_cancelled_once(harness: Any) -> None:
    h = await harness(job_timeout_hours=3 / 3600, heartbeat_timeout_seconds=2)
    h.stand_ins.behaviour[ActivityName.AIRBYTE_WAIT_JOB] = HANG
    handle = await h.start("shop-cloud")
    cause = await _ended(handle)
    assert isinstance(cause, ApplicationError) and cause.type == "SyncTimedOut"
    assert h.stand_ins.calls.count(ActivityName.AIRBYTE_CANCEL_JOB) == 1
    assert h.run_row(handle)["status"] == "timed_out"
    _assert_lock_free(h, "shop-cloud")
    await save_history(handle, "sync-airbyte-timed-out")


# --- cancelled, at each phase -------------------------------------------------------------


async def _cancel_when_entered(h: Harness, handle: Any, name: str) -> None:
    await asyncio.wait_for(h.stand_ins.event(name).wait(), timeout=30)
    await handle.cancel()


async def test_cancel_during_the_sync_ends_cancelled_and_keeps_staging(harness: Any) -> None:
    h = await harness()
    h.stand_ins.behaviour[ActivityName.RUN_SYNC] = AWAIT_CANCEL
    handle = await h.start()
    await _cancel_when_entered(h, handle, ActivityName.RUN_SYNC)
    cause = await _ended(handle)
    assert isinstance(cause, CancelledError)
    assert (await handle.describe()).status == WorkflowExecutionStatus.CANCELED
    assert h.stand_ins.cancelled == [ActivityName.RUN_SYNC]
    row = h.run_row(handle)
    assert row["status"] == "cancelled" and row["staging_target"] is not None
    assert ActivityName.PURGE_STAGING not in h.stand_ins.calls
    _assert_lock_free(h)


@pytest.mark.parametrize("phase", [ActivityName.RETAIN_METADATA, ActivityName.PURGE_STAGING])
async def test_cancel_after_the_commit_still_purges_then_ends_cancelled(
    harness: Any, phase: str
) -> None:
    h = await harness()
    h.stand_ins.behaviour[phase] = SLOW
    handle = await h.start()
    await _cancel_when_entered(h, handle, phase)
    cause = await _ended(handle)
    assert isinstance(cause, CancelledError)
    assert (await handle.describe()).status == WorkflowExecutionStatus.CANCELED
    assert h.stand_ins.cancelled == []  # what follows the commit is not interrupted
    assert h.stand_ins.calls.count(ActivityName.PURGE_STAGING) == 1
    row = h.run_row(handle)
    assert row["status"] == "cancelled"
    assert row["receipt_id"] == f"purge-{handle.result_run_id}"
    assert row["staging_target"] is None  # purged: nothing left for the sweep
    _assert_lock_free(h)
    await save_history(handle, f"sync-local-cancelled-at-{phase}")


async def test_cancel_while_waiting_for_an_airbyte_job_cancels_the_job(harness: Any) -> None:
    h = await harness()
    h.stand_ins.behaviour[ActivityName.AIRBYTE_WAIT_JOB] = AWAIT_CANCEL
    handle = await h.start("shop-cloud")
    await _cancel_when_entered(h, handle, ActivityName.AIRBYTE_WAIT_JOB)
    cause = await _ended(handle)
    assert isinstance(cause, CancelledError)
    assert h.stand_ins.calls.count(ActivityName.AIRBYTE_CANCEL_JOB) == 1
    assert h.run_row(handle)["status"] == "cancelled"
    _assert_lock_free(h, "shop-cloud")
    await save_history(handle, "sync-airbyte-cancelled")


async def test_airbyte_metadata_lookup_failing_after_success_is_a_warning(harness: Any) -> None:
    h = await harness()
    h.stand_ins.behaviour[ActivityName.AIRBYTE_RETAIN_METADATA] = FAIL
    handle = await h.start("shop-cloud")
    summary = await handle.result()
    assert summary.status == "succeeded"
    assert summary.warnings == ["metadata not retained: airbyte_retain_metadata refused"]
    assert h.run_row(handle)["status"] == "succeeded"
    _assert_lock_free(h, "shop-cloud")
    await save_history(handle, "sync-airbyte-succeeded-with-warning")


# --- terminated: nothing in the workflow runs; the next run or the sweep finishes it --------


async def test_a_terminated_run_is_finished_by_the_sweep(harness: Any) -> None:
    h = await harness()
    h.stand_ins.behaviour[ActivityName.RUN_SYNC] = HANG
    handle = await h.start()
    await asyncio.wait_for(h.stand_ins.event(ActivityName.RUN_SYNC).wait(), timeout=30)
    await handle.terminate("operator")
    holder = h.store.lock_holder("shop")
    assert holder is not None and holder["workflow_id"] == handle.id

    finished = await asyncio.to_thread(h.locks.finish_abandoned)

    assert [f.run_id for f in finished] == [handle.result_run_id]
    row = h.run_row(handle)
    assert row["status"] == "failed" and "terminated" in row["error"]
    assert row["staging_target"].endswith(f"/shop/{handle.result_run_id}/")
    _assert_lock_free(h)


async def test_the_next_run_finishes_a_terminated_run_and_takes_the_connection(
    harness: Any,
) -> None:
    h = await harness()
    h.stand_ins.behaviour[ActivityName.RUN_SYNC] = HANG
    first = await h.start()
    await asyncio.wait_for(h.stand_ins.event(ActivityName.RUN_SYNC).wait(), timeout=30)
    await first.terminate("operator")
    h.stand_ins.behaviour[ActivityName.RUN_SYNC] = OK

    summary = await (await h.start()).result()

    assert summary.status == "succeeded"
    assert h.run_row(first)["status"] == "failed"
    _assert_lock_free(h)


async def test_a_live_run_keeps_its_connection(harness: Any) -> None:
    h = await harness()
    h.stand_ins.behaviour[ActivityName.RUN_SYNC] = AWAIT_CANCEL
    first = await h.start()
    await asyncio.wait_for(h.stand_ins.event(ActivityName.RUN_SYNC).wait(), timeout=30)
    # However stale its lock looks, a running workflow is never taken over.
    with h.store.engine.begin() as db:
        db.execute(
            connection_locks.update().values(expires_at=datetime.now(UTC) - timedelta(days=1))
        )
    assert await asyncio.to_thread(h.locks.finish_abandoned) == []
    second = await h.start()
    cause = await _ended(second)
    assert cause is not None and "already syncing" in str(cause.cause or cause)
    await first.cancel()
    await _ended(first)
    _assert_lock_free(h)


async def test_the_sweep_runs_its_two_phases(harness: Any) -> None:
    h = await harness()
    handle = await h.client.start_workflow(
        RetentionSweepWorkflow.run,
        SweepRequest(),
        id=f"sweep-{uuid.uuid4().hex[:8]}",
        task_queue=h.settings.task_queue,
    )
    summary = await handle.result()
    assert summary.logs.runs == 1 and summary.failed_staging.runs_finished == ["r-terminated"]
    assert h.stand_ins.calls == [
        ActivityName.SWEEP_RETAINED_LOGS,
        ActivityName.SWEEP_FAILED_STAGING,
    ]
    await save_history(handle, "sweep")
