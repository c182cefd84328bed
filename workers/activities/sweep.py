"""Activities of RetentionSweepWorkflow: expire retained logs, sweep failed runs' staging."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from temporalio import activity

from purge.targets import TargetRefusedError
from workers.activities.heartbeat import Heartbeater
from workers.activities.locks import ConnectionLocks
from workers.connections import ConnectionsFile, ConnectionsFileError
from workers.metadata import MetadataStore
from workers.purging import Purger
from workers.retained_logs import run_prefix
from workers.settings import Settings
from workflows.models import ActivityName, SweepOutcome, SweepRequest

log = structlog.get_logger(__name__)


class SweepActivities:
    def __init__(
        self,
        settings: Settings,
        store: MetadataStore,
        purger: Purger,
        locks: ConnectionLocks,
    ) -> None:
        self.settings = settings
        self.store = store
        self.purger = purger
        self.locks = locks

    @activity.defn(name=ActivityName.SWEEP_RETAINED_LOGS, no_thread_cancel_exception=True)
    def sweep_retained_logs(self, request: SweepRequest) -> SweepOutcome:
        """Delete retained logs older than the retention period, run by run, with receipts."""
        days = request.log_retention_days or self.settings.log_retention_days
        cutoff = datetime.now(UTC) - timedelta(days=days)
        log_store = self.settings.resolved_log_store
        outcome = SweepOutcome()
        with Heartbeater(0).running() as heartbeater:
            for row in self.store.retained_logs_before(cutoff):
                uri = log_store + run_prefix(row["connection_id"], row["run_id"])
                if self._purge(uri, [log_store], f"sweep-logs-{row['run_id']}", row, outcome):
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
            connections = None  # the recorded targets still must fall under a known root
        allow = self.purger.allow_list(connections)
        with Heartbeater(0).running() as heartbeater:
            for row in self.store.kept_staging_to_sweep(cutoff):
                uri, receipt_id = row["staging_target"], f"sweep-staging-{row['run_id']}"
                # Nothing will replay this staging any more: its key goes with it.
                if self._purge(uri, allow, receipt_id, row, outcome, shred=True):
                    self.store.mark_staging_swept(row["run_id"])
                heartbeater.update(outcome.runs)
        log.info("kept staging swept", runs=outcome.runs, objects=outcome.objects_deleted)
        return outcome

    def _purge(
        self,
        uri: str,
        allow: list[str],
        receipt_id: str,
        row: dict[str, Any],
        outcome: SweepOutcome,
        *,
        shred: bool = False,
    ) -> bool:
        """Purge one run's prefix, keep the receipt, count it; True when verified empty. A run
        that cannot be purged is counted as a failure and the sweep goes on."""
        try:
            target = self.purger.target(uri, allow)
        except TargetRefusedError as exc:
            outcome.failures.append(f"{row['run_id']}: {exc}")
            return False
        receipt = self.purger.purge(
            target, receipt_id=receipt_id, run_id=row["run_id"], shred=shred
        )
        outcome.receipt_ids.append(receipt.receipt_id)
        outcome.objects_deleted += receipt.objects_deleted
        if receipt.verified_empty:
            outcome.runs += 1
        else:
            outcome.failures.append(f"{row['run_id']}: {receipt.remaining} objects left")
        return receipt.verified_empty

    def all(self) -> list[Any]:
        return [self.sweep_retained_logs, self.sweep_failed_staging]
