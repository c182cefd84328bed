"""SyncConnectionWorkflow: sync (scrubbing its logs) -> retain metadata -> purge -> receipt.

Deterministic orchestration only. Purge follows commit: the purge activity is reached only after
the sync committed (local backend) or Airbyte reported the job succeeded (Airbyte backend).

Every run that got past its plan ends in one recorded state (succeeded, failed, cancelled,
timed_out), whatever happens: the record is written, and the connection's lock given back, from
a scope that a cancellation cannot interrupt; staging that was not purged is recorded for the
sweep. What follows a commit (metadata, purge) never undoes it: it runs to completion even when
the run is cancelled meanwhile, and metadata that cannot be looked up is only a warning.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    TimeoutError,
    TimeoutType,
    is_cancelled_exception,
)
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from workflows import search_attributes
    from workflows.models import (
        ActivityName,
        AirbyteJobInput,
        AirbyteJobOutcome,
        AirbyteJobRef,
        PurgeInput,
        PurgeReceipt,
        RecordRunInput,
        ReplayOutcome,
        RetainMetadataInput,
        RunPlan,
        RunStatus,
        RunSyncInput,
        ScrubOutcome,
        StreamOutcome,
        SyncOutcome,
        SyncRequest,
        SyncSummary,
    )

_QUICK = timedelta(minutes=2)
RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=5,
)
# Recording the run is what gives the connection back: it keeps trying for a good while (a
# metadata store restarting). If it never succeeds, the sweep finishes the run from its lock.
_RECORD_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    maximum_attempts=20,
)

T = TypeVar("T")

# Runs recorded before the search attributes existed replay without setting them.
_SEARCH_ATTRIBUTES_PATCH = "search-attributes"


class RunFailed(Exception):
    """The run failed for a reason this workflow decided (not an activity's own failure)."""


@dataclass
class RunEnd:
    """How the run is ending, gathered as it goes; recorded once, at the end."""

    started_at: datetime
    status: RunStatus = "succeeded"
    error: str | None = None
    outcome: SyncOutcome | None = None
    receipt: PurgeReceipt | None = None
    committed: bool = False
    warnings: list[str] = field(default_factory=list)
    cancel_requested: bool = False
    replay: ReplayOutcome | None = None  # a replay: what it committed from staging
    replayed_receipt: PurgeReceipt | None = None  # a replay: the failed run's purge


def failure_message(error: BaseException) -> str:
    cause = error.cause if isinstance(error, ActivityError) and error.cause else error
    return str(getattr(cause, "message", None) or cause)


def _scrub_of_failure(error: ActivityError) -> ScrubOutcome | None:
    """The failed attempt's retained log, carried in the activity failure's details."""
    cause = error.cause
    if isinstance(cause, ApplicationError) and cause.details:
        detail = cause.details[0]
        if isinstance(detail, dict):
            return ScrubOutcome.model_validate(detail)
    return None


def _committed_before_failure(error: ActivityError, run_id: str) -> SyncOutcome:
    """What a failed sync committed before it failed (records per stream, bytes staged), from
    the counts its failure carries; nothing when it carries none (an older worker)."""
    cause = error.cause
    detail = cause.details[0] if isinstance(cause, ApplicationError) and cause.details else None
    committed = detail.get("committed") if isinstance(detail, dict) else None
    if not isinstance(committed, dict):
        return SyncOutcome(run_id=run_id, streams=[])
    records = committed.get("records") or {}
    return SyncOutcome(
        run_id=run_id,
        streams=[StreamOutcome(name=str(sid), records=int(n)) for sid, n in records.items()],
        bytes_staged=int(committed.get("bytes_staged") or 0),
        batches=int(committed.get("batches") or 0),
        states_committed=int(committed.get("states") or 0),
    )


def _passed_deadline(error: BaseException) -> bool:
    return (
        isinstance(error, ActivityError)
        and isinstance(error.cause, TimeoutError)
        and error.cause.type == TimeoutType.SCHEDULE_TO_CLOSE
    )


@workflow.defn(name="SyncConnectionWorkflow", failure_exception_types=[ValidationError])
class SyncConnectionWorkflow:
    def __init__(self) -> None:
        self._phase = "starting"

    @workflow.query
    def phase(self) -> str:
        """The phase the run is in, for progress displays."""
        return self._phase

    @workflow.run
    async def run(self, request: SyncRequest) -> SyncSummary:
        self._mark(search_attributes.CONNECTION, request.connection_id)
        self._mark(search_attributes.RUN_KIND, "sync")
        return await self._execute(ActivityName.PLAN_RUN, request, reset=request.reset)

    def _set_phase(self, phase: str) -> None:
        self._phase = phase
        workflow.set_current_details(f"Phase: {phase}")

    def _mark(self, key: SearchAttributeKey[str], value: str) -> None:
        """Set one of Sluice's search attributes (workflows/search_attributes.py)."""
        if workflow.patched(_SEARCH_ATTRIBUTES_PATCH):
            workflow.upsert_search_attributes([key.value_set(value)])

    async def _execute(self, plan_activity: str, plan_input: object, *, reset: bool) -> SyncSummary:
        """Plan (taking the connection's lock), run, and record the run once, whatever
        happens after the plan."""
        end = RunEnd(started_at=workflow.now())
        self._set_phase("planning")
        # Before the plan holds the lock there is nothing to record or give back; a plan
        # cancelled after taking the lock leaves it to the next run or the sweep, which see
        # that this workflow is no longer running.
        try:
            plan: RunPlan = await workflow.execute_activity(
                plan_activity,
                plan_input,
                result_type=RunPlan,
                start_to_close_timeout=_QUICK,
                retry_policy=RETRY,
            )
        except ActivityError:
            self._mark(search_attributes.RUN_STATUS, "refused")
            raise
        self._mark(search_attributes.CONNECTION, plan.connection_id)
        self._mark(search_attributes.BACKEND, plan.backend)
        try:
            await self._run(plan, reset, end)
        except (
            RunFailed,
            ActivityError,
            ApplicationError,
            CancelledError,
            asyncio.CancelledError,
        ) as err:
            self._end_with(end, plan, err)
        if end.cancel_requested and end.status != "cancelled":
            # Cancelled while what follows the commit ran to completion.
            end.status = "cancelled"
        await self._record(plan, end)
        self._mark(search_attributes.RUN_STATUS, end.status)
        return self._summary(plan, end)

    def _end_with(self, end: RunEnd, plan: RunPlan, error: BaseException) -> None:
        if isinstance(error, RunFailed):
            end.status, end.error = "failed", str(error)
        elif is_cancelled_exception(error):
            end.status, end.error = "cancelled", "the run was cancelled"
        elif _passed_deadline(error):
            end.status = "timed_out"
            end.error = f"the sync passed its deadline of {plan.job_timeout_hours:g} h"
        else:
            end.status, end.error = "failed", failure_message(error)

    async def _run(self, plan: RunPlan, reset: bool, end: RunEnd) -> None:
        # The deadline bounds the sync across all its attempts, not each attempt.
        deadline = end.started_at + timedelta(hours=plan.job_timeout_hours)
        if plan.backend == "airbyte":
            end.outcome = await self._sync_airbyte(plan, deadline, end)
        else:
            end.outcome = await self._sync_local(plan, reset, deadline, end)
        end.committed = True

        self._set_phase("retaining metadata")
        try:
            await self._to_completion(
                workflow.execute_activity(
                    ActivityName.AIRBYTE_RETAIN_METADATA
                    if plan.backend == "airbyte"
                    else ActivityName.RETAIN_METADATA,
                    plan
                    if plan.backend == "airbyte"
                    else RetainMetadataInput(plan=plan, streams=end.outcome.streams),
                    start_to_close_timeout=_QUICK,
                    retry_policy=RETRY,
                ),
                end,
            )
        except ActivityError as err:
            end.warnings.append(f"metadata not retained: {failure_message(err)}")

        if plan.staging_uri is None:
            return
        self._set_phase("purging staging")
        await self._purge(plan, end)
        await self._after_purge(plan, end)

    async def _purge(self, plan: RunPlan, end: RunEnd, of_run: str | None = None) -> None:
        """Purge the run's staging (`of_run`: a failed run's, which this run finished) to
        completion, its receipt kept in `end`; fail the run unless it is verified empty."""
        failed = "purge failed" if of_run is None else f"purge of run {of_run}'s staging failed"
        try:
            receipt: PurgeReceipt = await self._to_completion(
                workflow.execute_activity(
                    ActivityName.PURGE_STAGING,
                    PurgeInput(plan=plan, of_run=of_run),
                    result_type=PurgeReceipt,
                    start_to_close_timeout=timedelta(hours=6),
                    heartbeat_timeout=timedelta(seconds=plan.heartbeat_timeout_seconds),
                    retry_policy=RETRY,
                ),
                end,
            )
        except ActivityError as err:
            raise RunFailed(f"{failed}: {failure_message(err)}") from None
        if of_run is None:
            end.receipt = receipt
        else:
            end.replayed_receipt = receipt
        if not receipt.verified_empty:
            where = "the staging prefix" if of_run is None else f"run {of_run}'s staging"
            raise RunFailed(f"purge verification found objects left under {where}")

    async def _after_purge(self, plan: RunPlan, end: RunEnd) -> None:
        """What a run purges besides its own staging (a replay: the failed run's)."""

    async def _to_completion(self, operation: Awaitable[T], end: RunEnd) -> T:
        """Await an activity that a cancellation of the run must not interrupt; the
        cancellation is noted, and the run ends cancelled once the activity is done."""
        task = asyncio.ensure_future(operation)
        while True:
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:
                if task.cancelled():
                    raise
                end.cancel_requested = True

    async def _record(self, plan: RunPlan, end: RunEnd) -> None:
        self._set_phase("writing receipt")
        scrub = end.outcome.scrub if end.outcome else None
        if scrub is not None and scrub.retain_error:
            end.warnings.append(f"log not retained: {scrub.retain_error}")
        kept = end.receipt is None or not end.receipt.verified_empty
        await self._to_completion(
            workflow.execute_activity(
                ActivityName.RECORD_RUN,
                RecordRunInput(
                    plan=plan,
                    workflow_id=workflow.info().workflow_id,
                    status=end.status,
                    started_at=end.started_at,
                    finished_at=workflow.now(),
                    outcome=end.outcome,
                    scrub=scrub,
                    receipt=end.receipt,
                    error=end.error,
                    committed=end.committed and kept,
                    warnings=end.warnings,
                ),
                start_to_close_timeout=_QUICK,
                retry_policy=_RECORD_RETRY,
            ),
            end,
        )
        self._set_phase(end.status)

    def _summary(self, plan: RunPlan, end: RunEnd) -> SyncSummary:
        if end.status == "cancelled":
            # Raised only now, so that the workflow ends CANCELED after it was recorded.
            raise CancelledError(f"sync of connection {plan.connection_id!r} cancelled")
        if end.status == "timed_out":
            raise ApplicationError(
                f"sync of connection {plan.connection_id!r} timed out: {end.error}",
                type="SyncTimedOut",
                non_retryable=True,
            )
        if end.status == "failed":
            raise ApplicationError(
                f"sync of connection {plan.connection_id!r} failed: {end.error}",
                type="SyncFailed",
                non_retryable=True,
            )
        outcome, receipt = end.outcome, end.receipt
        assert outcome is not None
        scrub = outcome.scrub
        return SyncSummary(
            connection_id=plan.connection_id,
            run_id=plan.run_id,
            status="succeeded",
            records={s.name: s.records for s in outcome.streams},
            bytes_staged=outcome.bytes_staged,
            incremental=outcome.incremental,
            redactions=scrub.redactions if scrub else {},
            objects_purged=receipt.objects_deleted if receipt else 0,
            receipt_id=receipt.receipt_id if receipt else None,
            verified_empty=receipt.verified_empty if receipt else True,
            log_uri=scrub.log_uri if scrub else None,
            duration_seconds=(workflow.now() - end.started_at).total_seconds(),
            warnings=end.warnings,
            kind=plan.kind,
            replay_of=plan.replay_of,
            replay=end.replay,
            replayed_receipt_id=end.replayed_receipt.receipt_id if end.replayed_receipt else None,
        )

    async def _sync_local(
        self, plan: RunPlan, reset: bool, deadline: datetime, end: RunEnd
    ) -> SyncOutcome:
        self._set_phase("syncing")
        try:
            outcome: SyncOutcome = await workflow.execute_activity(
                ActivityName.RUN_SYNC,
                RunSyncInput(plan=plan, reset=reset),
                result_type=SyncOutcome,
                schedule_to_close_timeout=remaining(deadline),
                heartbeat_timeout=timedelta(seconds=plan.heartbeat_timeout_seconds),
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(seconds=5), maximum_attempts=plan.sync_attempts
                ),
                # A cancelled run ends once the sync stopped its connector and retained its
                # scrubbed log, not before.
                cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            )
        except ActivityError as err:
            scrub = _scrub_of_failure(err)
            if scrub is not None:
                end.outcome = _committed_before_failure(err, plan.run_id).model_copy(
                    update={"scrub": scrub}
                )
            raise
        return outcome

    async def _sync_airbyte(self, plan: RunPlan, deadline: datetime, end: RunEnd) -> SyncOutcome:
        self._set_phase("starting Airbyte job")
        job: AirbyteJobRef = await workflow.execute_activity(
            ActivityName.AIRBYTE_START_JOB,
            plan,
            result_type=AirbyteJobRef,
            start_to_close_timeout=timedelta(minutes=5),
            retry_policy=RETRY,
        )
        # From here the job id is in the workflow's history: whatever happens to a worker, no
        # second job is started, and the job is never left running behind a cancelled run.
        self._set_phase(f"waiting for Airbyte job {job.job_id}")
        job_input = AirbyteJobInput(plan=plan, job_id=job.job_id)
        try:
            result: AirbyteJobOutcome = await workflow.execute_activity(
                ActivityName.AIRBYTE_WAIT_JOB,
                job_input,
                result_type=AirbyteJobOutcome,
                schedule_to_close_timeout=remaining(deadline),
                heartbeat_timeout=timedelta(seconds=plan.heartbeat_timeout_seconds),
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(seconds=2),
                    maximum_interval=timedelta(seconds=30),
                    maximum_attempts=20,
                ),
            )
        except (ActivityError, asyncio.CancelledError):
            # Cancelled, past the deadline, retries spent, or a non-retryable answer: we stop
            # watching the job, so it must not go on unwatched.
            await self._cancel_job(job_input, end)
            raise
        if result.status != "succeeded":
            end.outcome = result.sync
            raise RunFailed(
                f"Airbyte job {job.job_id} {result.status}: {result.failure or 'no summary'}"
            )
        return result.sync

    async def _cancel_job(self, job_input: AirbyteJobInput, end: RunEnd) -> None:
        """Cancel the Airbyte job, even when this run itself is being cancelled."""
        self._set_phase(f"cancelling Airbyte job {job_input.job_id}")
        try:
            await self._to_completion(
                workflow.execute_activity(
                    ActivityName.AIRBYTE_CANCEL_JOB,
                    job_input,
                    start_to_close_timeout=timedelta(minutes=5),
                    retry_policy=RETRY,
                ),
                end,
            )
        except ActivityError as err:
            end.warnings.append(f"could not cancel Airbyte job: {failure_message(err)}")
            workflow.logger.warning("could not cancel Airbyte job: %s", failure_message(err))


def remaining(deadline: datetime) -> timedelta:
    return max(deadline - workflow.now(), timedelta(seconds=1))
