"""Activities of RetentionSweepWorkflow: expire retained logs, sweep failed runs' staging."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from temporalio import activity

from purge.purge import purge_prefix
from purge.stores import StagingStore, open_store
from purge.targets import TargetRefusedError, parse_target
from workers.activities.heartbeat import Heartbeater
from workers.activities.locks import ConnectionLocks
from workers.connections import ConnectionsFile, ConnectionsFileError
from workers.retained_logs import run_prefix
from workers.settings import Settings
from workers.storage import purge_allow_list, store_options
from workers.store.metadata import MetadataStore
from workflows.models import ActivityName, SweepOutcome, SweepRequest

log = structlog.get_logger(__name__)


class SweepActivities:
    def __init__(
        self,
        settings: Settings,
        store: MetadataStore,
        log_store: StagingStore,
        locks: ConnectionLocks,
    ) -> None:
        self.settings = settings
        self.store = store
        self.log_store = log_store
        self.locks = locks

    @activity.defn(name=ActivityName.SWEEP_RETAINED_LOGS, no_thread_cancel_exception=True)
    def sweep_retained_logs(self, request: SweepRequest) -> SweepOutcome:
        """Delete retained logs older than the retention period, run by run, with receipts."""
        days = request.log_retention_days or self.settings.log_retention_days
        cutoff = datetime.now(UTC) - timedelta(days=days)
        outcome = SweepOutcome()
        with Heartbeater(0).running() as heartbeater:
            for row in self.store.retained_logs_before(cutoff):
                if self._purge(
                    self.log_store,
                    run_prefix(row["connection_id"], row["run_id"]),
                    f"sweep-logs-{row['run_id']}",
                    row["run_id"],
                    outcome,
                ):
                    self.store.forget_retained_logs(row["run_id"])
                heartbeater.update(outcome.runs)
        log.info("retained logs swept", runs=outcome.runs, objects=outcome.objects_deleted)
        return outcome

    @activity.defn(name=ActivityName.SWEEP_FAILED_STAGING, no_thread_cancel_exception=True)
    def sweep_failed_staging(self, request: SweepRequest) -> SweepOutcome:
        """Finish the runs whose workflow ended without recording them (their staging is then
        kept like a failed run's), then purge the staging that ended runs kept: a committed
        run's at once, an uncommitted run's once it outlived its TTL."""
        outcome = SweepOutcome()
        for abandoned in self.locks.finish_abandoned():
            log.warning(
                "abandoned run finished",
                connection=abandoned.connection_id,
                run_id=abandoned.run_id,
                reason=abandoned.reason,
            )
            outcome.runs_finished.append(abandoned.run_id)
        days = request.failed_staging_ttl_days or self.settings.failed_staging_ttl_days
        cutoff = datetime.now(UTC) - timedelta(days=days)
        try:
            connections: ConnectionsFile | None = ConnectionsFile.load(
                self.settings.connections_file
            )
        except ConnectionsFileError:
            connections = None
        allow = purge_allow_list(self.settings, connections)
        with Heartbeater(0).running() as heartbeater:
            for row in self.store.kept_staging_to_sweep(cutoff):
                self._sweep_run(row, allow, outcome)
                heartbeater.update(outcome.runs)
        log.info("kept staging swept", runs=outcome.runs, objects=outcome.objects_deleted)
        return outcome

    def _sweep_run(self, row: dict[str, Any], allow: list[str], outcome: SweepOutcome) -> None:
        try:
            target = parse_target(row["staging_target"], allow)
        except TargetRefusedError as exc:
            outcome.failures.append(f"{row['run_id']}: {exc}")
            return
        if self._purge(
            open_store(target.store_uri, store_options(self.settings)),
            target.prefix,
            f"sweep-staging-{row['run_id']}",
            row["run_id"],
            outcome,
        ):
            self.store.mark_staging_swept(row["run_id"])

    def _purge(
        self, store: StagingStore, prefix: str, receipt_id: str, run_id: str, outcome: SweepOutcome
    ) -> bool:
        """Purge one run's prefix, keep the receipt, count it; True when verified empty."""
        receipt = purge_prefix(store, prefix, receipt_id=receipt_id)
        self.store.record_receipt(receipt, run_id)
        outcome.receipt_ids.append(receipt.receipt_id)
        outcome.objects_deleted += receipt.objects_deleted
        if receipt.verified_empty:
            outcome.runs += 1
        else:
            outcome.failures.append(f"{run_id}: {receipt.remaining} objects left")
        return receipt.verified_empty

    def all(self) -> list[Any]:
        return [self.sweep_retained_logs, self.sweep_failed_staging]
