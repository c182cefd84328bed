"""SyncConnectionWorkflow: sync (scrubbing its logs) -> retain metadata -> purge -> receipt.

Deterministic orchestration only. Purge follows commit: the purge activity is reached only after
the sync committed (local backend) or Airbyte reported the job succeeded (Airbyte backend). A
failed sync keeps its staging (for replay) but still has its logs scrubbed and retained and its
run recorded.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from workflows.models import (
        ActivityName,
        AirbyteJobInput,
        AirbyteJobOutcome,
        AirbyteJobRef,
        PurgeInput,
        PurgeReceipt,
        RecordRunInput,
        RetainMetadataInput,
        RunPlan,
        RunSyncInput,
        ScrubOutcome,
        SyncOutcome,
        SyncRequest,
        SyncSummary,
    )

_QUICK = timedelta(minutes=2)
_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=5,
)


def _failure_message(error: BaseException) -> str:
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
        started_at = workflow.now()
        self._phase = "planning"
        plan: RunPlan = await workflow.execute_activity(
            ActivityName.PLAN_RUN,
            request,
            result_type=RunPlan,
            start_to_close_timeout=_QUICK,
            retry_policy=_RETRY,
        )

        try:
            return await self._run(plan, request, started_at)
        except asyncio.CancelledError:
            # A cancelled run gives its connection back at once, not when the lock expires.
            release = workflow.execute_activity(
                ActivityName.RELEASE_CONNECTION,
                plan,
                start_to_close_timeout=_QUICK,
                retry_policy=_RETRY,
            )
            await asyncio.shield(asyncio.ensure_future(release))
            raise

    async def _run(self, plan: RunPlan, request: SyncRequest, started_at: datetime) -> SyncSummary:
        if plan.backend == "airbyte":
            outcome, failure = await self._sync_airbyte(plan)
        else:
            outcome, failure = await self._sync_local(plan, request)

        receipt: PurgeReceipt | None = None
        if failure is None:
            assert outcome is not None
            self._phase = "retaining metadata"
            await workflow.execute_activity(
                ActivityName.AIRBYTE_RETAIN_METADATA
                if plan.backend == "airbyte"
                else ActivityName.RETAIN_METADATA,
                plan
                if plan.backend == "airbyte"
                else RetainMetadataInput(plan=plan, streams=outcome.streams),
                start_to_close_timeout=_QUICK,
                retry_policy=_RETRY,
            )
            if plan.staging_uri is not None:
                self._phase = "purging staging"
                receipt = await workflow.execute_activity(
                    ActivityName.PURGE_STAGING,
                    PurgeInput(plan=plan),
                    result_type=PurgeReceipt,
                    start_to_close_timeout=timedelta(hours=6),
                    heartbeat_timeout=timedelta(seconds=plan.heartbeat_timeout_seconds),
                    retry_policy=_RETRY,
                )
                if not receipt.verified_empty:
                    failure = "purge verification found objects left under the staging prefix"

        self._phase = "writing receipt"
        finished_at = workflow.now()
        scrub = outcome.scrub if outcome else None
        await workflow.execute_activity(
            ActivityName.RECORD_RUN,
            RecordRunInput(
                plan=plan,
                workflow_id=workflow.info().workflow_id,
                status="failed" if failure else "succeeded",
                started_at=started_at,
                finished_at=finished_at,
                outcome=outcome,
                scrub=scrub,
                receipt=receipt,
                error=failure,
            ),
            start_to_close_timeout=_QUICK,
            retry_policy=_RETRY,
        )
        if failure is not None:
            self._phase = "failed"
            raise ApplicationError(
                f"sync of connection {plan.connection_id!r} failed: {failure}",
                type="SyncFailed",
                non_retryable=True,
            )
        assert outcome is not None
        self._phase = "succeeded"
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
            duration_seconds=(finished_at - started_at).total_seconds(),
        )

    async def _sync_local(
        self, plan: RunPlan, request: SyncRequest
    ) -> tuple[SyncOutcome | None, str | None]:
        self._phase = "syncing"
        try:
            outcome = await workflow.execute_activity(
                ActivityName.RUN_SYNC,
                RunSyncInput(plan=plan, reset=request.reset),
                result_type=SyncOutcome,
                start_to_close_timeout=timedelta(hours=plan.job_timeout_hours),
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
            failed = SyncOutcome(run_id=plan.run_id, streams=[], scrub=scrub) if scrub else None
            return failed, _failure_message(err)
        return outcome, None

    async def _sync_airbyte(self, plan: RunPlan) -> tuple[SyncOutcome | None, str | None]:
        self._phase = "starting Airbyte job"
        try:
            job: AirbyteJobRef = await workflow.execute_activity(
                ActivityName.AIRBYTE_START_JOB,
                plan,
                result_type=AirbyteJobRef,
                start_to_close_timeout=timedelta(minutes=5),
                retry_policy=_RETRY,
            )
        except ActivityError as err:
            return None, _failure_message(err)
        # From here the job id is in the workflow's history: whatever happens to a worker, no
        # second job is started, and the job is never left running behind a cancelled run.
        self._phase = f"waiting for Airbyte job {job.job_id}"
        job_input = AirbyteJobInput(plan=plan, job_id=job.job_id)
        try:
            result: AirbyteJobOutcome = await workflow.execute_activity(
                ActivityName.AIRBYTE_WAIT_JOB,
                job_input,
                result_type=AirbyteJobOutcome,
                start_to_close_timeout=timedelta(hours=plan.job_timeout_hours),
                heartbeat_timeout=timedelta(seconds=plan.heartbeat_timeout_seconds),
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(seconds=2),
                    maximum_interval=timedelta(seconds=30),
                    maximum_attempts=20,
                ),
            )
        except asyncio.CancelledError:
            await self._cancel_job(job_input)
            raise
        except ActivityError as err:
            # Timed out, retries spent, or a non-retryable answer: we stop watching the job, so
            # it must not go on unwatched.
            await self._cancel_job(job_input)
            return None, _failure_message(err)
        if result.status != "succeeded":
            return result.sync, (
                f"Airbyte job {job.job_id} {result.status}: {result.failure or 'no summary'}"
            )
        return result.sync, None

    async def _cancel_job(self, job_input: AirbyteJobInput) -> None:
        """Cancel the Airbyte job, even when this run itself is being cancelled."""
        self._phase = f"cancelling Airbyte job {job_input.job_id}"
        cancel = workflow.execute_activity(
            ActivityName.AIRBYTE_CANCEL_JOB,
            job_input,
            start_to_close_timeout=timedelta(minutes=5),
            retry_policy=_RETRY,
        )
        try:
            # Shielded: a cancellation of this run must not cancel the cancelling.
            await asyncio.shield(asyncio.ensure_future(cancel))
        except ActivityError as err:
            workflow.logger.warning("could not cancel Airbyte job: %s", _failure_message(err))
