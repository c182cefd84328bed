"""RetentionSweepWorkflow: expires retained logs and purges the staging failed runs kept.

Run by a Temporal schedule (`sluice schedules apply`); each deletion leaves a receipt.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from workflows.models import ActivityName, SweepOutcome, SweepRequest, SweepSummary

_RETRY = RetryPolicy(initial_interval=timedelta(seconds=5), maximum_attempts=5)


@workflow.defn(name="RetentionSweepWorkflow", failure_exception_types=[ValidationError])
class RetentionSweepWorkflow:
    @workflow.run
    async def run(self, request: SweepRequest) -> SweepSummary:
        logs = await workflow.execute_activity(
            ActivityName.SWEEP_RETAINED_LOGS,
            request,
            result_type=SweepOutcome,
            start_to_close_timeout=timedelta(hours=6),
            heartbeat_timeout=timedelta(seconds=60),
            retry_policy=_RETRY,
        )
        staging = await workflow.execute_activity(
            ActivityName.SWEEP_FAILED_STAGING,
            request,
            result_type=SweepOutcome,
            start_to_close_timeout=timedelta(hours=6),
            heartbeat_timeout=timedelta(seconds=60),
            retry_policy=_RETRY,
        )
        return SweepSummary(logs=logs, failed_staging=staging)
