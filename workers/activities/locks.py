"""One run of a connection at a time, and no lock outliving its run.

The lock lives in the metadata store and names the run's workflow. A lock is *abandoned* when
Temporal says that workflow is no longer running (terminated, or ended without recording its
run): the next run of the connection, or the sweep, records the abandoned run with its staging
kept for the sweep and gives the connection back. A lock is never taken from a workflow that is
still running, however long it has been silent, so a connection never runs twice at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from workers.metadata import MetadataStore

log = structlog.get_logger(__name__)


class WorkflowRuns(Protocol):
    """Which state a workflow run is in; None when Temporal does not know it."""

    def status(self, workflow_id: str, run_id: str) -> WorkflowExecutionStatus | None: ...


class TemporalWorkflowRuns:
    """Asks Temporal from an activity thread, through the worker's own client and loop."""

    def __init__(self, client: Client, loop: asyncio.AbstractEventLoop) -> None:
        self._client = client
        self._loop = loop

    def status(self, workflow_id: str, run_id: str) -> WorkflowExecutionStatus | None:
        future = asyncio.run_coroutine_threadsafe(self._status(workflow_id, run_id), self._loop)
        return future.result(timeout=60)

    async def _status(self, workflow_id: str, run_id: str) -> WorkflowExecutionStatus | None:
        try:
            described = await self._client.get_workflow_handle(
                workflow_id, run_id=run_id
            ).describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return None
            raise
        return described.status


# What a run whose workflow ended without recording it is recorded as.
_ABANDONED_AS: dict[WorkflowExecutionStatus | None, tuple[str, str]] = {
    None: ("failed", "its workflow is unknown to Temporal"),
    WorkflowExecutionStatus.TERMINATED: ("failed", "its workflow was terminated"),
    WorkflowExecutionStatus.CANCELED: ("cancelled", "its workflow was cancelled"),
    WorkflowExecutionStatus.TIMED_OUT: ("timed_out", "its workflow timed out"),
    WorkflowExecutionStatus.FAILED: ("failed", "its workflow failed before recording the run"),
    WorkflowExecutionStatus.COMPLETED: ("failed", "its workflow ended without recording it"),
    WorkflowExecutionStatus.CONTINUED_AS_NEW: ("failed", "its workflow continued as new"),
}


@dataclass(frozen=True)
class AbandonedRun:
    connection_id: str
    run_id: str
    status: str
    reason: str


class ConnectionLocks:
    def __init__(
        self,
        store: MetadataStore,
        runs: WorkflowRuns | None,
        ttl: timedelta,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._runs = runs
        self.ttl = ttl
        self._now = now

    def acquire(
        self, connection_id: str, run_id: str, workflow_id: str, staging_target: str | None
    ) -> dict[str, Any] | None:
        """Take the connection for this run; None when taken, else the lock of the live run
        that holds it. An abandoned holder is finished first."""
        for _ in range(3):
            holder = self._store.lock_connection(
                connection_id,
                run_id,
                self.ttl,
                workflow_id=workflow_id,
                staging_target=staging_target,
            )
            if holder is None:
                return None
            if self.finish_if_abandoned(holder) is None:
                return holder
        return holder

    def renewer(self, connection_id: str, run_id: str) -> Callable[[], None]:
        """A callable for a heartbeat loop: renews the lock a few times per TTL, and never
        raises (a store that is briefly away must not stop the heartbeats)."""
        last = self._now() - self.ttl

        def renew() -> None:
            nonlocal last
            if self._now() - last < self.ttl / 4:
                return
            try:
                self._store.renew_lock(connection_id, run_id, self.ttl)
                last = self._now()
            except Exception as exc:
                log.warning("connection lock not renewed", error=type(exc).__name__)

        return renew

    def finish_if_abandoned(self, lock: dict[str, Any]) -> AbandonedRun | None:
        """Record and release the lock's run if its workflow no longer runs."""
        if lock.get("workflow_id") and self._runs is not None:
            status = self._runs.status(lock["workflow_id"], lock["run_id"])
            if status == WorkflowExecutionStatus.RUNNING:
                return None
        elif lock.get("expires_at") is None or lock["expires_at"] > self._now():
            # A lock of an older version names no workflow: it is abandoned once it expired.
            return None
        else:
            status = None
        run_status, reason = _ABANDONED_AS.get(status, ("failed", "its workflow ended"))
        self._store.finish_abandoned_run(
            lock, run_status, f"the run did not record its end: {reason}"
        )
        return AbandonedRun(lock["connection_id"], lock["run_id"], run_status, reason)

    def finish_abandoned(self) -> list[AbandonedRun]:
        """Every abandoned lock, finished: what the sweep does."""
        finished = []
        for lock in self._store.locks():
            abandoned = self.finish_if_abandoned(lock)
            if abandoned is not None:
                finished.append(abandoned)
        return finished
