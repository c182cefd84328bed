"""Runs at hand: what `sluice runs`, `sluice runs show`, `sluice logs` and `sluice cancel` look up,
and how they print it.

The metadata store says how each run ended (its record, receipts and retained logs) and which
runs are still going (the connection locks). Temporal adds what only it knows: the sweeps, which
are not in the runs table, and each run's phases and attempts, read from its history. Only event
types, activity names, times, attempts and failure types are read there: payloads and failure
messages are encrypted, and the run's error is in its record, scrubbed already. Temporal being
unreachable never hides what the metadata store knows: the listing says so and goes on.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from temporalio.api.enums.v1 import EventType, TimeoutType
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from purge.stores import parse_store_uri
from workers.client import connect, ui_link
from workers.metadata import MetadataStore
from workers.purging import Purger
from workers.retained_logs import log_key
from workers.settings import Settings
from workflows import search_attributes
from workflows.models import ActivityName

SWEEP_WORKFLOW = "RetentionSweepWorkflow"
_KIND_OF_WORKFLOW = {
    "SyncConnectionWorkflow": "sync",
    "ReplayFailedSyncWorkflow": "replay",
    SWEEP_WORKFLOW: "sweep",
}
_STATUS_OF_EXECUTION = {
    WorkflowExecutionStatus.RUNNING: "running",
    WorkflowExecutionStatus.COMPLETED: "succeeded",
    WorkflowExecutionStatus.FAILED: "failed",
    WorkflowExecutionStatus.CANCELED: "cancelled",
    WorkflowExecutionStatus.TERMINATED: "terminated",
    WorkflowExecutionStatus.CONTINUED_AS_NEW: "succeeded",
    WorkflowExecutionStatus.TIMED_OUT: "timed_out",
}
# The visibility query's name of each status (`ExecutionStatus = 'Failed'`).
_EXECUTION_STATUS_QUERY = {
    "running": "Running",
    "succeeded": "Completed",
    "failed": "Failed",
    "cancelled": "Canceled",
    "timed_out": "TimedOut",
    "terminated": "Terminated",
}
_PHASE_OF_ACTIVITY = {
    ActivityName.PLAN_RUN: "plan",
    ActivityName.RUN_SYNC: "sync",
    ActivityName.PLAN_REPLAY: "plan replay",
    ActivityName.REPLAY_STAGED: "replay staged",
    ActivityName.AIRBYTE_START_JOB: "sync",
    ActivityName.AIRBYTE_WAIT_JOB: "sync",
    ActivityName.AIRBYTE_CANCEL_JOB: "sync",
    ActivityName.RETAIN_METADATA: "retain metadata",
    ActivityName.AIRBYTE_RETAIN_METADATA: "retain metadata",
    ActivityName.PURGE_STAGING: "purge",
    ActivityName.RECORD_RUN: "receipt",
    ActivityName.RELEASE_CONNECTION: "release",
    ActivityName.SWEEP_RETAINED_LOGS: "sweep logs",
    ActivityName.SWEEP_FAILED_STAGING: "sweep staging",
}
# What a client call to an unreachable or unwilling Temporal raises: TemporalUnreachableError
# (and any other failure to connect) is a RuntimeError, a bad address a ValueError.
_TEMPORAL_ERRORS = (RuntimeError, ValueError, RPCError)
# What a Temporal run id can be (a UUID), checked before it goes into a visibility query.
_RUN_ID = re.compile(r"[0-9A-Za-z-]{1,64}")


class RunLookupError(LookupError):
    """The run, or its log, is not there: an unknown run id, no log retained, no such attempt.
    The message names what is missing."""


class NothingRunningError(LookupError):
    """`sluice cancel` found no running run of the connection (or with the run id)."""


def _temporal_problem(settings: Settings, error: BaseException) -> str:
    if isinstance(error, RPCError):
        return f"Temporal at {settings.temporal_address}: {error.message}"
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _iso(stamp: datetime | None) -> str | None:
    return stamp.astimezone(UTC).isoformat() if stamp else None


def _when(stamp: datetime | None) -> str:
    return stamp.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if stamp else "-"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _span(start: datetime | None, end: datetime | None) -> str:
    """`2026-11-30 10:13:50 -> 10:13:52`: the end's date only when it differs."""
    if start is None or end is None:
        return f"{_when(start)} -> {_when(end) if end else '...':<8}"
    same_day = start.astimezone(UTC).date() == end.astimezone(UTC).date()
    return (
        f"{_when(start)} -> {end.astimezone(UTC):%H:%M:%S}"
        if same_day
        else (f"{_when(start)} -> {_when(end)}")
    )


def _counts(counts: dict[str, int] | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted((counts or {}).items()) if v) or "none"


# -- sluice runs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunLine:
    """One run as `sluice runs` lists it."""

    run_id: str
    connection_id: str | None
    """None for a sweep: it works across connections."""
    kind: str
    status: str
    started_at: datetime | None
    duration_seconds: float | None
    """So far, for a run in progress."""
    records: int | None
    purge_verified: bool | None
    """Whether a purge of the run's staging was verified empty; None when none is recorded."""
    workflow_id: str

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "started_at": _iso(self.started_at)}


@dataclass
class RunListing:
    runs: list[RunLine]
    notes: list[str] = field(default_factory=list)
    """What could not be listed, and why (Temporal unreachable), or what looks wrong."""


def _recorded_line(row: dict[str, Any]) -> RunLine:
    return RunLine(
        run_id=row["run_id"],
        connection_id=row["connection_id"],
        kind=row["kind"],
        status=row["status"],
        started_at=row["started_at"],
        duration_seconds=row["duration_seconds"],
        records=row["records"],
        purge_verified=row["purge_verified"],
        workflow_id=row["workflow_id"],
    )


def _running_line(lock: dict[str, Any], now: datetime, kind: str = "sync") -> RunLine:
    taken = lock.get("taken_at")
    return RunLine(
        run_id=lock["run_id"],
        connection_id=lock["connection_id"],
        kind=kind,
        status="running",
        started_at=taken,
        duration_seconds=(now - taken).total_seconds() if taken else None,
        records=None,
        purge_verified=None,
        workflow_id=lock.get("workflow_id") or f"sync-{lock['connection_id']}",
    )


async def list_runs(
    settings: Settings,
    metadata: MetadataStore,
    *,
    connection_id: str | None = None,
    status: str | None = None,
    limit: int = 20,
) -> RunListing:
    """Runs newest first: recorded runs and runs in progress from the metadata store, and,
    unless a connection is asked for, the sweeps from Temporal's visibility."""
    now = datetime.now(UTC)
    listing = RunListing(runs=[])
    locks = metadata.running_runs(connection_id) if status in (None, "running") else []
    if status != "running":
        recorded = metadata.recent_runs(connection_id=connection_id, status=status, limit=limit)
        listing.runs += [_recorded_line(row) for row in recorded]
    want_sweeps = connection_id is None
    client: Client | None = None
    if want_sweeps or locks:
        try:
            client = await connect(settings)
        except _TEMPORAL_ERRORS as exc:
            problem = _temporal_problem(settings, exc)
            if want_sweeps:
                listing.notes.append(f"sweeps not listed: {problem}")
            if locks:
                listing.notes.append(f"runs in progress not checked in Temporal: {problem}")
    for lock in locks:
        kind = "sync"
        if client is not None:
            kind = await _check_running(client, settings, lock, listing.notes)
        listing.runs.append(_running_line(lock, now, kind))
    if want_sweeps and client is not None:
        try:
            listing.runs += await _sweeps(client, status, limit, now)
        except _TEMPORAL_ERRORS as exc:
            listing.notes.append(f"sweeps not listed: {_temporal_problem(settings, exc)}")
    oldest = datetime.min.replace(tzinfo=UTC)
    listing.runs.sort(key=lambda line: line.started_at or oldest, reverse=True)
    del listing.runs[limit:]
    return listing


async def _check_running(
    client: Client, settings: Settings, lock: dict[str, Any], notes: list[str]
) -> str:
    """The kind of a run in progress, from its workflow's type; a lock whose workflow no longer
    runs is pointed out (`sluice unlock` gives it back)."""
    workflow_id = lock.get("workflow_id") or f"sync-{lock['connection_id']}"
    try:
        description = await client.get_workflow_handle(
            workflow_id, run_id=lock["run_id"]
        ).describe()
    except _TEMPORAL_ERRORS as exc:
        if isinstance(exc, RPCError) and exc.status == RPCStatusCode.NOT_FOUND:
            notes.append(
                f"run {lock['run_id']} holds the lock of connection {lock['connection_id']!r} "
                f"but Temporal does not know its workflow {workflow_id}: "
                f"sluice unlock {lock['connection_id']}"
            )
        return "sync"
    if description.status != WorkflowExecutionStatus.RUNNING:
        state = _STATUS_OF_EXECUTION.get(description.status, "ended") if description.status else ""
        notes.append(
            f"run {lock['run_id']} holds the lock of connection {lock['connection_id']!r} but its "
            f"workflow {workflow_id} is {state or 'not running'}: "
            f"sluice unlock {lock['connection_id']}"
        )
    return _KIND_OF_WORKFLOW.get(description.workflow_type, "sync")


async def _sweeps(client: Client, status: str | None, limit: int, now: datetime) -> list[RunLine]:
    query = f"WorkflowType = '{SWEEP_WORKFLOW}'"
    if status is not None:
        query += f" AND ExecutionStatus = '{_EXECUTION_STATUS_QUERY[status]}'"
    lines = []
    async for execution in client.list_workflows(query, limit=limit):
        end = execution.close_time or now
        state = _STATUS_OF_EXECUTION.get(execution.status, "unknown") if execution.status else "-"
        lines.append(
            RunLine(
                run_id=execution.run_id,
                connection_id=None,
                kind="sweep",
                status=state,
                started_at=execution.start_time,
                duration_seconds=(end - execution.start_time).total_seconds(),
                records=None,
                purge_verified=None,
                workflow_id=execution.id,
            )
        )
    return lines


def runs_json(listing: RunListing) -> str:
    return json.dumps([line.as_json() for line in listing.runs], indent=2)


def runs_text(listing: RunListing) -> str:
    """A plain table, one run a line: ids whole, so they can be copied into `runs show`."""
    header = (
        "RUN",
        "CONNECTION",
        "KIND",
        "STATUS",
        "STARTED (UTC)",
        "DURATION",
        "RECORDS",
        "PURGE",
    )
    rows = [
        (
            line.run_id,
            line.connection_id or "-",
            line.kind,
            line.status,
            _when(line.started_at),
            _duration(line.duration_seconds),
            "-" if line.records is None else str(line.records),
            {True: "verified", False: "objects left", None: "-"}[line.purge_verified],
        )
        for line in listing.runs
    ]
    if not rows:
        return "no runs"
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


# -- sluice runs show ---------------------------------------------------------------------------


@dataclass
class ActivityAttempts:
    """One activity of a run, as its history tells it."""

    activity: str
    phase: str
    attempts: int
    """Attempts so far: the last attempt's number."""
    scheduled_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    outcome: str
    """completed, failed, timed out, cancelled, running, retrying or scheduled."""
    failure: str | None = None
    """The failure type of the outcome (e.g. SyncFailed, ConnectorFailed, StartToClose)."""
    previous_failure: str | None = None
    """The failure type of the attempt before the last, when it was retried."""

    def as_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "scheduled_at": _iso(self.scheduled_at),
            "started_at": _iso(self.started_at),
            "ended_at": _iso(self.ended_at),
        }


@dataclass
class Phases:
    activities: list[ActivityAttempts]
    workflow_status: str | None = None
    workflow_type: str | None = None
    unavailable: str | None = None
    """Why the phases could not be read (Temporal unreachable, history gone)."""


@dataclass
class RunDetails:
    run_id: str
    connection_id: str | None
    """None for a sweep."""
    workflow_id: str
    kind: str
    status: str
    record: dict[str, Any] | None
    """The run's row; None while it runs."""
    started_at: datetime | None
    receipts: list[dict[str, Any]]
    logs: list[dict[str, Any]]
    phases: Phases
    ui_link: str
    replay_command: str | None
    """For a failed run that was not replayed and whose staging is still there."""

    def as_json(self) -> dict[str, Any]:
        record = self.record or {}
        return {
            "run_id": self.run_id,
            "connection_id": self.connection_id,
            "workflow_id": self.workflow_id,
            "kind": self.kind,
            "status": self.status,
            "started_at": _iso(self.started_at),
            "finished_at": _iso(record.get("finished_at")),
            "duration_seconds": record.get("duration_seconds"),
            "reset": record.get("reset"),
            "incremental": record.get("incremental"),
            "error": record.get("error"),
            "warnings": record.get("warnings") or [],
            "records": record.get("records"),
            "records_by_stream": record.get("records_by_stream") or {},
            "bytes_staged": record.get("bytes_staged"),
            "redactions": record.get("redactions") or {},
            "committed": record.get("committed"),
            "staging_target": record.get("staging_target"),
            "staging_swept_at": _iso(record.get("staging_swept_at")),
            "receipts": [_json_row(r) for r in self.receipts],
            "logs": [_json_row(r) for r in self.logs],
            "phases": [a.as_json() for a in self.phases.activities],
            "phases_unavailable": self.phases.unavailable,
            "replay_of": record.get("replay_of"),
            "replayed_by": record.get("replayed_by"),
            "replay_command": self.replay_command,
            "temporal_ui": self.ui_link,
        }


def _json_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: _iso(v) if isinstance(v, datetime) else v for k, v in row.items()}


def _replay_command(record: dict[str, Any] | None) -> str | None:
    if record is None or record["status"] != "failed" or record.get("replayed_by"):
        return None
    if record.get("committed") or not record.get("staging_target"):
        return None  # nothing of it is left to replay
    if record.get("staging_swept_at") is not None:
        return None
    return f"sluice replay {record['run_id']}"


async def run_details(settings: Settings, metadata: MetadataStore, run_id: str) -> RunDetails:
    """Everything known of one run: from the metadata store (its record, or its lock while it
    runs) and its Temporal history; a run the store does not know (a sweep, a run refused
    before it was planned) from Temporal alone. RunLookupError when neither knows it."""
    record = metadata.get_run(run_id)
    lock = None if record is not None else metadata.lock_of_run(run_id)
    source = record or lock
    if source is None:
        return await _details_from_temporal(settings, run_id)
    connection_id = source["connection_id"]
    workflow_id = source.get("workflow_id") or f"sync-{connection_id}"
    phases = await _phases(settings, workflow_id, run_id)
    return RunDetails(
        run_id=run_id,
        connection_id=connection_id,
        workflow_id=workflow_id,
        kind=(record or {}).get("kind")
        or _KIND_OF_WORKFLOW.get(phases.workflow_type or "", "sync"),
        status=record["status"] if record else "running",
        record=record,
        started_at=record["started_at"] if record else source.get("taken_at"),
        receipts=metadata.receipts_of_run(run_id),
        logs=metadata.retained_logs_of(run_id),
        phases=phases,
        ui_link=ui_link(settings, workflow_id, run_id),
        replay_command=_replay_command(record),
    )


async def _details_from_temporal(settings: Settings, run_id: str) -> RunDetails:
    unknown = (
        f"unknown run {run_id!r}: the metadata store (SLUICE_METADATA_URL) has no record of it "
        "and no run in progress with that id"
    )
    if not _RUN_ID.fullmatch(run_id):
        raise RunLookupError(f"{unknown}; `sluice runs` lists the runs")
    try:
        client = await connect(settings)
        found = [e async for e in client.list_workflows(f"RunId = '{run_id}'", limit=1)]
    except _TEMPORAL_ERRORS as exc:
        raise RunLookupError(
            f"{unknown}, and Temporal could not be asked ({_temporal_problem(settings, exc)})"
        ) from None
    if not found:
        raise RunLookupError(f"{unknown}, nor has Temporal; `sluice runs` lists the runs")
    execution = found[0]
    status = execution.status
    connection = execution.typed_search_attributes.get(search_attributes.CONNECTION)
    return RunDetails(
        run_id=run_id,
        connection_id=connection,
        workflow_id=execution.id,
        kind=_KIND_OF_WORKFLOW.get(execution.workflow_type, execution.workflow_type),
        status=_STATUS_OF_EXECUTION.get(status, "unknown") if status else "unknown",
        record=None,
        started_at=execution.start_time,
        receipts=[],
        logs=[],
        phases=await _phases(settings, execution.id, run_id),
        ui_link=ui_link(settings, execution.id, run_id),
        replay_command=None,
    )


async def _phases(settings: Settings, workflow_id: str, run_id: str) -> Phases:
    try:
        client = await connect(settings)
        handle = client.get_workflow_handle(workflow_id, run_id=run_id)
        events = [event async for event in handle.fetch_history_events()]
        phases = activities_of_history(events)
        if phases.workflow_status == "running":
            await _add_pending(handle, phases)
        return phases
    except _TEMPORAL_ERRORS as exc:
        if isinstance(exc, RPCError) and exc.status == RPCStatusCode.NOT_FOUND:
            reason = (
                f"Temporal no longer has workflow {workflow_id} run {run_id} "
                "(past the namespace's retention, or another cluster)"
            )
        else:
            reason = _temporal_problem(settings, exc)
        return Phases(activities=[], unavailable=reason)


def _failure_type(failure: Failure) -> str:
    """The type of a failure, never its message (encrypted, and possibly a value)."""
    if failure.HasField("application_failure_info"):
        return failure.application_failure_info.type or "ApplicationError"
    if failure.HasField("timeout_failure_info"):
        kind = TimeoutType.Name(failure.timeout_failure_info.timeout_type)
        return "timeout " + kind.removeprefix("TIMEOUT_TYPE_").lower().replace("_", "-")
    if failure.HasField("canceled_failure_info"):
        return "cancelled"
    if failure.HasField("terminated_failure_info"):
        return "terminated"
    if failure.HasField("server_failure_info"):
        return "server error"
    if failure.HasField("cause"):
        return _failure_type(failure.cause)
    return "failure"


def _stamp(event: HistoryEvent) -> datetime:
    return event.event_time.ToDatetime(tzinfo=UTC)


_WORKFLOW_ENDS = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED: "succeeded",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED: "failed",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED: "cancelled",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED: "terminated",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT: "timed_out",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW: "continued as new",
}


def activities_of_history(events: Iterable[HistoryEvent]) -> Phases:
    """The activities of a workflow run, in the order they were scheduled, with their
    attempts, times and outcomes. Temporal writes an activity's started event only once its
    last attempt ends, with that attempt's number and the previous attempt's failure."""
    by_scheduled: dict[int, ActivityAttempts] = {}
    status = "running"
    workflow_type = None
    for event in events:
        kind = event.event_type
        if kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            workflow_type = event.workflow_execution_started_event_attributes.workflow_type.name
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            name = event.activity_task_scheduled_event_attributes.activity_type.name
            by_scheduled[event.event_id] = ActivityAttempts(
                activity=name,
                phase=_PHASE_OF_ACTIVITY.get(name, name),
                attempts=0,
                scheduled_at=_stamp(event),
                started_at=None,
                ended_at=None,
                outcome="scheduled",
            )
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            started = event.activity_task_started_event_attributes
            activity = by_scheduled.get(started.scheduled_event_id)
            if activity is not None:
                activity.attempts = started.attempt
                activity.started_at = _stamp(event)
                activity.outcome = "running"
                if started.HasField("last_failure"):
                    activity.previous_failure = _failure_type(started.last_failure)
        elif kind in _ACTIVITY_ENDS:
            outcome, attributes = _ACTIVITY_ENDS[kind]
            ended = getattr(event, attributes)
            activity = by_scheduled.get(ended.scheduled_event_id)
            if activity is not None:
                activity.outcome = outcome
                activity.ended_at = _stamp(event)
                if hasattr(ended, "failure") and ended.HasField("failure"):
                    activity.failure = _failure_type(ended.failure)
        elif kind in _WORKFLOW_ENDS:
            status = _WORKFLOW_ENDS[kind]
    return Phases(
        activities=list(by_scheduled.values()), workflow_status=status, workflow_type=workflow_type
    )


_ACTIVITY_ENDS = {
    EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: (
        "completed",
        "activity_task_completed_event_attributes",
    ),
    EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED: ("failed", "activity_task_failed_event_attributes"),
    EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT: (
        "timed out",
        "activity_task_timed_out_event_attributes",
    ),
    EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED: (
        "cancelled",
        "activity_task_canceled_event_attributes",
    ),
}


async def _add_pending(handle: WorkflowHandle[Any, Any], phases: Phases) -> None:
    """A running activity's attempt so far is only in the workflow's description."""
    description = await handle.describe()
    pending = list(description.raw_description.pending_activities)
    waiting = [a for a in phases.activities if a.outcome in ("scheduled", "running")]
    for activity, info in zip(waiting, pending, strict=False):
        activity.attempts = max(activity.attempts, info.attempt)
        if info.HasField("last_started_time"):
            activity.started_at = info.last_started_time.ToDatetime(tzinfo=UTC)
        if info.HasField("last_failure"):
            activity.previous_failure = _failure_type(info.last_failure)
            if activity.outcome == "scheduled":
                activity.outcome = "retrying"


def details_text(details: RunDetails) -> str:
    """`sluice runs show`, for a person: one fact a line, values never passed through markup."""
    record = details.record or {}
    lines = [
        f"run:          {details.run_id}",
        f"connection:   {details.connection_id or '- (every connection)'}",
        f"kind:         {details.kind}" + (" (reset)" if record.get("reset") else ""),
        f"status:       {details.status}",
        f"started:      {_when(details.started_at)} UTC",
    ]
    if record:
        lines += [
            f"finished:     {_when(record.get('finished_at'))} UTC "
            f"({_duration(record.get('duration_seconds'))})",
            f"mode:         {'incremental' if record.get('incremental') else 'full'}",
        ]
    lines += [f"workflow:     {details.workflow_id}", f"Temporal UI:  {details.ui_link}"]
    if record.get("error"):
        lines.append(f"error:        {record['error']}")
    for warning in record.get("warnings") or []:
        lines.append(f"warning:      {warning}")
    if record:
        by_stream = record.get("records_by_stream") or {}
        streams = f"{len(by_stream)} stream{'' if len(by_stream) == 1 else 's'}"
        lines.append(f"records:      {record.get('records', 0)} ({streams})")
        lines += [f"  {stream}: {count}" for stream, count in sorted(by_stream.items())]
        lines.append(f"bytes staged: {record.get('bytes_staged', 0)}")
        lines.append(f"redactions:   {_counts(record.get('redactions'))}")
    lines.append("phases:")
    if details.phases.unavailable:
        lines.append(f"  not available: {details.phases.unavailable}")
    elif not details.phases.activities:
        lines.append("  none yet")
    for activity in details.phases.activities:
        attempts = f"{activity.attempts} attempt{'s' if activity.attempts != 1 else ''}"
        outcome = activity.outcome + (f" ({activity.failure})" if activity.failure else "")
        if activity.previous_failure and activity.attempts > 1:
            outcome += f"; attempt {activity.attempts - 1} failed ({activity.previous_failure})"
        lines.append(
            f"  {activity.phase:<16} {activity.activity:<24} {attempts:<11} "
            f"{_span(activity.started_at or activity.scheduled_at, activity.ended_at)}  {outcome}"
        )
    lines.append("receipts:" if details.receipts else "receipts:     none")
    for receipt in details.receipts:
        verdict = (
            "verified empty"
            if receipt["verified_empty"]
            else (
                f"NOT verified: {receipt['remaining']} objects left, "
                f"{receipt['objects_failed']} could not be deleted"
            )
        )
        dry = " (dry run)" if receipt.get("dry_run") else ""
        lines.append(
            f"  {receipt['receipt_id']}{dry}: {receipt['target']}: "
            f"{receipt['objects_deleted']} objects, {receipt['bytes_deleted']} bytes, {verdict}, "
            f"manifest sha256 {receipt['manifest_sha256']}, {_when(receipt['finished_at'])} UTC"
        )
        if receipt.get("recoverable_until"):
            lines.append(f"    recoverable until {_when(receipt['recoverable_until'])} UTC")
    if record.get("staging_target") and not record.get("staging_swept_at"):
        lines.append(f"staging kept: {record['staging_target']}")
    lines.append("logs:" if details.logs else "logs:         none retained")
    for log in details.logs:
        lines.append(
            f"  attempt {log['attempt']}: {log['uri']} ({log['lines']} lines; "
            f"redactions {_counts(log['redactions'])})"
        )
    if record.get("replay_of"):
        lines.append(f"replay of:    {record['replay_of']}")
    if record.get("replayed_by"):
        lines.append(f"replayed by:  {record['replayed_by']}")
    if details.replay_command:
        lines.append(f"replay with:  {details.replay_command}")
    elif record.get("status") == "failed" and not record.get("replayed_by"):
        lines.append(f"replay:       {_why_not_replayable(record)}")
    return "\n".join(lines)


def _why_not_replayable(record: dict[str, Any]) -> str:
    sync = f"`sluice sync {record['connection_id']}` reads the source again"
    if record.get("committed"):
        return "nothing to replay: the run committed (its purge failed); the sweep purges it"
    if record.get("staging_swept_at") is not None:
        swept = _when(record["staging_swept_at"])
        return f"not possible: its staging was swept at {swept} UTC; {sync}"
    return f"not possible: it kept no staging; {sync}"


# -- sluice logs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetainedLog:
    run_id: str
    connection_id: str
    attempt: int
    uri: str
    attempts: list[int]
    """Every attempt of the run with a retained log."""


def find_log(
    settings: Settings, metadata: MetadataStore, run_id: str, attempt: int | None
) -> RetainedLog:
    """The retained log of a run's attempt (the last one by default); RunLookupError naming
    what is missing: the run, any log of it, or that attempt's."""
    logs = metadata.retained_logs_of(run_id)
    if not logs:
        record = metadata.get_run(run_id)
        if record is None:
            if metadata.lock_of_run(run_id) is not None:
                raise RunLookupError(
                    f"run {run_id} is still running: its log is retained when its attempt ends"
                )
            raise RunLookupError(
                f"unknown run {run_id!r}: the metadata store (SLUICE_METADATA_URL) has no record "
                "of it; `sluice runs` lists the runs"
            )
        raise RunLookupError(f"run {run_id} has no retained log: {_why_no_log(settings, record)}")
    attempts = [int(log["attempt"]) for log in logs]
    chosen = (
        logs[-1]
        if attempt is None
        else next((log for log in logs if log["attempt"] == attempt), None)
    )
    if chosen is None:
        raise RunLookupError(
            f"run {run_id} has no retained log of attempt {attempt} "
            f"(attempts with a log: {', '.join(map(str, attempts))})"
        )
    return RetainedLog(
        run_id, str(chosen["connection_id"]), int(chosen["attempt"]), str(chosen["uri"]), attempts
    )


def _why_no_log(settings: Settings, record: dict[str, Any]) -> str:
    not_retained = [w for w in record.get("warnings") or [] if w.startswith("log not retained")]
    if not_retained:
        return not_retained[0]
    finished: datetime | None = record.get("finished_at")
    if finished is not None:
        age_days = (datetime.now(UTC) - finished).total_seconds() / 86400
        if age_days > settings.log_retention_days:
            return (
                f"it ended {age_days:.0f} days ago and logs are swept after "
                f"SLUICE_LOG_RETENTION_DAYS ({settings.log_retention_days:g} days)"
            )
    return "none was recorded (the run may have ended before its connector started)"


def copy_log(settings: Settings, log: RetainedLog, out: BinaryIO) -> None:
    """Copy the retained log's bytes from whichever store holds it (local, S3, Azure: the store
    is the one its URI names, with the configured credentials) to `out`."""
    key = log_key(log.connection_id, log.run_id, log.attempt)
    if not log.uri.endswith(key):
        raise RunLookupError(
            f"the log of run {log.run_id} attempt {log.attempt} is recorded at {log.uri}, "
            f"which does not end in its key {key}"
        )
    root = log.uri.removesuffix(key)
    missing = RunLookupError(
        f"the log of run {log.run_id} attempt {log.attempt} is recorded at {log.uri}, "
        "but its store holds no such object (removed outside Sluice?)"
    )
    parsed = parse_store_uri(root)
    if parsed.scheme == "file" and not Path("/" + parsed.path).is_dir():
        raise missing  # opening a local store would create its root
    store = Purger(settings).open(root)
    if not store.exists(key):
        raise missing
    with store.open_read(key) as stream:
        shutil.copyfileobj(stream, out, 1 << 20)


# -- sluice cancel ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cancellation:
    run_id: str
    connection_id: str
    workflow_id: str
    ui_link: str


async def cancel_run(
    settings: Settings, metadata: MetadataStore, target: str
) -> tuple[Cancellation, WorkflowHandle[Any, Any]]:
    """Request the cancellation of the running run of a connection (`target` a connection id)
    or of the run `target`; NothingRunningError when none runs."""
    lock = metadata.lock_holder(target) or metadata.lock_of_run(target)
    client = await connect(settings, wait_seconds=3)
    if lock is None:
        # Not locked yet: a sync still planning (or waiting for a worker to plan it), started
        # by the CLI under the workflow id it gives every sync of the connection.
        return await _cancel_unplanned(settings, client, metadata, target)
    connection_id, run_id = str(lock["connection_id"]), str(lock["run_id"])
    # Locks taken by older versions name no workflow: the CLI's own id is the one to try.
    workflow_id = lock.get("workflow_id") or f"sync-{connection_id}"
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    status = await _status(handle)
    if status != WorkflowExecutionStatus.RUNNING:
        state = _STATUS_OF_EXECUTION.get(status, "ended") if status else "unknown to Temporal"
        raise NothingRunningError(
            f"nothing to cancel: run {run_id} of connection {connection_id!r} holds its lock, "
            f"but its workflow {workflow_id} is {state}; `sluice unlock {connection_id}` "
            "gives the lock back"
        )
    await handle.cancel()
    link = ui_link(settings, workflow_id, run_id)
    return Cancellation(run_id, connection_id, workflow_id, link), handle


async def _status(handle: WorkflowHandle[Any, Any]) -> WorkflowExecutionStatus | None:
    """The workflow's status; None when Temporal does not know it."""
    try:
        return (await handle.describe()).status
    except RPCError as exc:
        if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
            return None
        raise


async def _cancel_unplanned(
    settings: Settings, client: Client, metadata: MetadataStore, connection_id: str
) -> tuple[Cancellation, WorkflowHandle[Any, Any]]:
    workflow_id = f"sync-{connection_id}"
    latest = client.get_workflow_handle(workflow_id)
    if await _status(latest) != WorkflowExecutionStatus.RUNNING:
        raise NothingRunningError(_nothing_running(metadata, connection_id))
    run_id = (await latest.describe()).run_id
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    await handle.cancel()
    link = ui_link(settings, workflow_id, run_id)
    return Cancellation(run_id, connection_id, workflow_id, link), handle


def _nothing_running(metadata: MetadataStore, target: str) -> str:
    record = metadata.get_run(target)
    if record is not None:
        return (
            f"nothing to cancel: run {target} of connection {record['connection_id']!r} is not "
            f"running (it ended {record['status']} at {_when(record['finished_at'])} UTC)"
        )
    return f"nothing to cancel: no run of connection {target!r} is running, and no run has that id"


async def wait_until_recorded(
    handle: WorkflowHandle[Any, Any], metadata: MetadataStore, run_id: str
) -> str:
    """Wait for the cancelled run's workflow to end; how the run was recorded (or, for a run
    that ended without recording itself, how Temporal ended it)."""
    with contextlib.suppress(Exception):  # a cancelled run ends in an error; its record says how
        await handle.result()
    record = metadata.get_run(run_id)
    if record is not None:
        return str(record["status"])
    status = (await handle.describe()).status
    return _STATUS_OF_EXECUTION.get(status, "ended") if status else "ended"
