"""ReplayFailedSyncWorkflow: finish a failed run from its staged data, without reading the
source again, then sync on from the committed state.

A failed run keeps its staging: its batch files and its commit journal (which batches each
STATE covers, which commits were handed to the destination). The replay plans (refusing, with
the reason and what to do instead, a run that is unknown, did not fail, was already replayed,
was a reset, whose staging is gone, or whose connection's streams changed since), takes the
connection's lock like any run, commits the failed run's covered batches that were not
committed, each with its state and exactly once, and drops what no STATE covers (the next read
repeats it). Then, unless told not to, it runs a normal incremental sync from the state it just
committed, so the connection ends as current as a fresh sync would leave it. On success it purges
its own staging and the failed run's, each with a verified receipt, and is recorded as a run of
kind ``replay`` whose ``replay_of`` names the failed run (which then shows ``replayed_by``).

An Airbyte-backend replay is a new job (or the running one, attached): Airbyte resumes from its
own committed state, and the successful job's purge covers the connection's staging path.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from workflows import search_attributes
    from workflows.models import (
        ActivityName,
        ReplayOutcome,
        ReplayRequest,
        RunPlan,
        SyncOutcome,
        SyncSummary,
    )
    from workflows.sync import (
        RETRY,
        RunEnd,
        SyncConnectionWorkflow,
        remaining,
    )


@workflow.defn(name="ReplayFailedSyncWorkflow", failure_exception_types=[ValidationError])
class ReplayFailedSyncWorkflow(SyncConnectionWorkflow):
    def __init__(self) -> None:
        super().__init__()
        self._continue = True

    @workflow.query
    def phase(self) -> str:
        """The phase the run is in, for progress displays."""
        return self._phase

    @workflow.run
    async def run(self, request: ReplayRequest) -> SyncSummary:  # type: ignore[override]
        self._continue = request.continue_
        self._mark(search_attributes.RUN_KIND, "replay")
        return await self._execute(ActivityName.PLAN_REPLAY, request, reset=False)

    async def _sync_local(
        self, plan: RunPlan, reset: bool, deadline: datetime, end: RunEnd
    ) -> SyncOutcome:
        self._set_phase(f"replaying the staged commits of run {plan.replay_of}")
        replay: ReplayOutcome = await workflow.execute_activity(
            ActivityName.REPLAY_STAGED,
            plan,
            result_type=ReplayOutcome,
            schedule_to_close_timeout=remaining(deadline),
            heartbeat_timeout=timedelta(seconds=plan.heartbeat_timeout_seconds),
            # Each staged commit is done once (the destination notes it): a retry after a lost
            # worker or a warehouse hiccup carries on where the last one stopped.
            retry_policy=RETRY,
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )
        end.replay = replay
        if not self._continue:
            # Nothing was read: the connection's metadata stays as the last sync left it.
            return SyncOutcome(run_id=plan.run_id, streams=[], states_committed=replay.states)
        outcome = await super()._sync_local(plan, reset, deadline, end)
        return _with_replayed(outcome, replay)

    async def _after_purge(self, plan: RunPlan, end: RunEnd) -> None:
        if plan.backend != "local" or plan.replay_of is None:
            return  # Airbyte stages per connection: the run's own purge covered it
        self._set_phase(f"purging the staging of run {plan.replay_of}")
        await self._purge(plan, end, of_run=plan.replay_of)


def _with_replayed(outcome: SyncOutcome, replay: ReplayOutcome) -> SyncOutcome:
    """The continuing sync's outcome, its states counting the replayed ones too (its records
    already do: the destination counts a run's records across its commits)."""
    return outcome.model_copy(update={"states_committed": outcome.states_committed + replay.states})
