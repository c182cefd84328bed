"""Activities of ReplayFailedSyncWorkflow: plan the replay of a failed run (every refusal is
decided here, before anything is locked or written), and commit what the failed run staged.

The rest of a replay (the sync that continues from the committed state, metadata, purges, the
record) is SyncConnectionWorkflow's own activities.
"""

from __future__ import annotations

from typing import Any

import structlog
from temporalio import activity

from workers.activities.heartbeat import Heartbeater
from workers.activities.sync import SyncActivities, load_connection
from workers.connections import Connection
from workers.destinations import DestinationOptions, open_destination
from workers.errors import ReplayRefusedError, SluiceError
from workers.localsync.replay import changed_streams, journal_manifest, replay_staged
from workers.shredding import RunSealing
from workflows.models import ActivityName, ReplayOutcome, ReplayRequest, RunPlan, SyncRequest

log = structlog.get_logger(__name__)


def failed_staging_prefix(plan: RunPlan) -> str:
    """Where the failed run that a replay finishes staged, under the plan's staging root."""
    return f"{plan.connection_id}/{plan.replay_of}/"


class ReplayActivities:
    def __init__(self, sync: SyncActivities) -> None:
        self.sync = sync

    @activity.defn(name=ActivityName.PLAN_REPLAY)
    def plan_replay(self, request: ReplayRequest) -> RunPlan:
        info = activity.info()
        if info.workflow_id is None or info.workflow_run_id is None:
            raise SluiceError("plan_replay plans a workflow's run; it ran outside a workflow")
        plan = self.plan(request, info.workflow_run_id)
        self.sync.take_connection(plan, info.workflow_id)
        return plan

    def plan(self, request: ReplayRequest, run_id: str) -> RunPlan:
        """The replay's run, or ReplayRefusedError saying why the failed run cannot be
        replayed and what to do instead."""
        failed_id = request.run_id
        failed = self.sync.store.get_run(failed_id)
        if failed is None:
            raise ReplayRefusedError(
                f"no run {failed_id!r} is recorded (`sluice runs --status failed` lists the "
                "failed runs)"
            )
        connection_id = failed["connection_id"]
        if failed["status"] != "failed":
            raise ReplayRefusedError(
                f"run {failed_id} of connection {connection_id!r} {failed['status']}: only a "
                "failed run is replayed"
            )
        if failed.get("replayed_by"):
            raise ReplayRefusedError(
                f"run {failed_id} of connection {connection_id!r} was already replayed by run "
                f"{failed['replayed_by']}"
            )
        if failed.get("reset"):
            raise ReplayRefusedError(
                f"run {failed_id} of connection {connection_id!r} was a reset: its tables are "
                f"replaced only by a whole read; start a new one: sluice sync {connection_id} "
                "--reset"
            )
        connection = load_connection(self.sync.settings, connection_id)
        plan = self.sync.plan(connection, SyncRequest(connection_id=connection_id), run_id)
        plan = plan.model_copy(update={"kind": "replay", "replay_of": failed_id})
        if isinstance(connection, Connection):
            plan = self._local_plan(plan, failed, connection)
        return plan

    def _local_plan(
        self, plan: RunPlan, failed: dict[str, object], connection: Connection
    ) -> RunPlan:
        failed_id, connection_id = plan.replay_of, plan.connection_id
        if failed.get("staging_swept_at") is not None or not failed.get("staging_target"):
            raise ReplayRefusedError(
                f"run {failed_id} of connection {connection_id!r}: its staging was already "
                f"purged; start a normal sync: sluice sync {connection_id}"
            )
        assert plan.staging_uri is not None
        if failed["staging_target"] != plan.staging_uri + failed_staging_prefix(plan):
            raise ReplayRefusedError(
                f"run {failed_id} of connection {connection_id!r} staged under "
                f"{failed['staging_target']}, and the connection stages under "
                f"{plan.staging_uri} now; start a normal sync: sluice sync {connection_id}"
            )
        staging = RunSealing(
            self.sync.purger.open(plan.staging_uri),
            self.sync.store.existing_staging_key(failed_id or ""),
        )
        manifest = journal_manifest(staging, failed_staging_prefix(plan))
        if manifest is None:
            return plan  # nothing was committed by a state: the sync that follows does it all
        changed = changed_streams(manifest, connection)
        if changed:
            raise ReplayRefusedError(
                f"run {failed_id} of connection {connection_id!r}: the connection's streams "
                f"changed since it ran ({', '.join(changed)}); start a normal sync: "
                f"sluice sync {connection_id}"
            )
        names = list(dict.fromkeys(str(s.config["name"]) for s in manifest.streams))
        return plan.model_copy(update={"streams": names})

    @activity.defn(name=ActivityName.REPLAY_STAGED, no_thread_cancel_exception=True)
    def replay_staged(self, plan: RunPlan) -> ReplayOutcome:
        """Commit the failed run's staged batches that its states cover, in order, exactly
        once, without the connector."""
        assert plan.staging_uri is not None and plan.replay_of is not None
        connection = self.sync.local_connection(plan.connection_id)
        # The failed run's staging is sealed with its key, which exists until it is purged.
        staging = RunSealing(
            self.sync.purger.open(plan.staging_uri),
            self.sync.store.existing_staging_key(plan.replay_of),
        )
        heartbeater = Heartbeater(
            0, on_beat=self.sync.locks.renewer(plan.connection_id, plan.run_id)
        )
        commits = 0

        def committed() -> None:
            nonlocal commits
            commits += 1
            heartbeater.update(commits)

        options = DestinationOptions(duckdb_memory_limit=self.sync.settings.duckdb_memory_limit)
        with heartbeater.running():
            try:
                with open_destination(connection, options) as destination:
                    result = replay_staged(
                        store=staging,
                        prefix=failed_staging_prefix(plan),
                        failed_run_id=plan.replay_of,
                        run_id=plan.run_id,
                        destination=destination,
                        on_commit=committed,
                    )
            except SluiceError:
                raise
            except Exception as exc:
                # A database's own text may quote record values: its kind only.
                raise SluiceError(
                    f"{type(exc).__name__} while replaying run {plan.replay_of} into the "
                    f"destination of connection {plan.connection_id!r}",
                    kind="ReplayFailed",
                    retryable=True,
                ) from None
        log.info(
            "replayed a failed run",
            run_id=plan.run_id,
            replay_of=plan.replay_of,
            commits=result.commits,
            already_committed=result.already_committed,
            dropped_batches=result.dropped_batches,
        )
        return ReplayOutcome(
            records=result.records,
            commits=result.commits,
            already_committed=result.already_committed,
            states=result.states,
            dropped_batches=result.dropped_batches,
            dropped_streams=result.dropped_streams,
        )

    def all(self) -> list[Any]:
        return [self.plan_replay, self.replay_staged]
