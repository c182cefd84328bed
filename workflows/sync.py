"""SyncConnectionWorkflow: sync -> scrub logs -> retain metadata -> purge -> receipt.

Deterministic orchestration only. Purge follows commit: the purge activity is reached only after
``run_sync`` returned, i.e. after the destination committed every batch. A failed sync keeps its
staging (for replay) but still has its logs scrubbed and retained and its run recorded.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from workflows.models import (
        ActivityName,
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

        self._phase = "syncing"
        outcome: SyncOutcome | None = None
        failure: str | None = None
        scrub: ScrubOutcome | None = None
        try:
            outcome = await workflow.execute_activity(
                ActivityName.RUN_SYNC,
                RunSyncInput(plan=plan, reset=request.reset),
                result_type=SyncOutcome,
                start_to_close_timeout=timedelta(hours=24),
                heartbeat_timeout=timedelta(seconds=60),
                retry_policy=RetryPolicy(initial_interval=timedelta(seconds=5), maximum_attempts=3),
            )
            scrub = outcome.scrub
        except ActivityError as err:
            failure = _failure_message(err)
            scrub = _scrub_of_failure(err)

        receipt: PurgeReceipt | None = None
        if outcome is not None:
            self._phase = "retaining metadata"
            await workflow.execute_activity(
                ActivityName.RETAIN_METADATA,
                RetainMetadataInput(plan=plan, streams=outcome.streams),
                start_to_close_timeout=_QUICK,
                retry_policy=_RETRY,
            )
            self._phase = "purging staging"
            receipt = await workflow.execute_activity(
                ActivityName.PURGE_STAGING,
                PurgeInput(plan=plan),
                result_type=PurgeReceipt,
                start_to_close_timeout=timedelta(hours=6),
                heartbeat_timeout=timedelta(seconds=60),
                retry_policy=_RETRY,
            )

        self._phase = "writing receipt"
        finished_at = workflow.now()
        status = (
            "succeeded" if outcome is not None and receipt and receipt.verified_empty else "failed"
        )
        if outcome is not None and failure is None and status == "failed":
            failure = "purge verification found objects left under the staging prefix"
        await workflow.execute_activity(
            ActivityName.RECORD_RUN,
            RecordRunInput(
                plan=plan,
                workflow_id=workflow.info().workflow_id,
                status=status,
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
        self._phase = status
        if failure is not None:
            raise ApplicationError(
                f"sync of connection {plan.connection_id!r} failed: {failure}",
                type="SyncFailed",
                non_retryable=True,
            )
        assert outcome is not None and receipt is not None
        return SyncSummary(
            connection_id=plan.connection_id,
            run_id=plan.run_id,
            status="succeeded",
            records={s.name: s.records for s in outcome.streams},
            bytes_staged=outcome.bytes_staged,
            incremental=outcome.incremental,
            redactions=scrub.redactions if scrub else {},
            objects_purged=receipt.objects_deleted,
            receipt_id=receipt.receipt_id,
            verified_empty=receipt.verified_empty,
            log_uri=scrub.log_uri if scrub else None,
            duration_seconds=(finished_at - started_at).total_seconds(),
        )
