"""The contracts that cross the Temporal boundary.

Every field is metadata: ids, names, counts, timings, receipts. Never record values, cursor values,
state blobs or secrets (ARCHITECTURE invariant 6). New fields get defaults so that old histories
still decode.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from purge.receipts import PurgeReceipt

RunStatus = Literal["succeeded", "failed", "cancelled", "timed_out"]
"""How a run ended: every run is recorded with exactly one of these."""

__all__ = [
    "PurgeInput",
    "PurgeReceipt",
    "RecordRunInput",
    "ReplayOutcome",
    "ReplayRequest",
    "RetainMetadataInput",
    "RunPlan",
    "RunStatus",
    "RunSyncInput",
    "ScrubOutcome",
    "StreamOutcome",
    "SyncOutcome",
    "SyncRequest",
    "SyncSummary",
]


class ActivityName:
    """Activity names, so that workflows never import activity code."""

    PLAN_RUN = "plan_run"
    RUN_SYNC = "run_sync"
    RETAIN_METADATA = "retain_metadata"
    PURGE_STAGING = "purge_staging"
    RECORD_RUN = "record_run"
    RELEASE_CONNECTION = "release_connection"
    AIRBYTE_START_JOB = "airbyte_start_job"
    AIRBYTE_WAIT_JOB = "airbyte_wait_job"
    AIRBYTE_CANCEL_JOB = "airbyte_cancel_job"
    AIRBYTE_RETAIN_METADATA = "airbyte_retain_metadata"
    PLAN_REPLAY = "plan_replay"
    REPLAY_STAGED = "replay_staged"
    SWEEP_RETAINED_LOGS = "sweep_retained_logs"
    SWEEP_FAILED_STAGING = "sweep_failed_staging"


class SyncRequest(BaseModel):
    """Input of SyncConnectionWorkflow, typed by operators as JSON in the Temporal UI.

    Example: ``{"connection_id": "faker"}`` or ``{"connection_id": "faker", "reset": true}``.
    """

    model_config = ConfigDict(extra="forbid")

    connection_id: str = Field(min_length=1)
    reset: bool = Field(
        default=False,
        description="Sync from scratch: ignore the committed state and replace each stream's "
        "data with what this run reads.",
    )
    streams: list[str] | None = Field(
        default=None, description="Sync only these streams of the connection."
    )


class ReplayRequest(BaseModel):
    """Input of ReplayFailedSyncWorkflow, typed by operators as JSON in the Temporal UI.

    Example: ``{"run_id": "0193..."}`` or ``{"run_id": "0193...", "continue": false}``.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    run_id: str = Field(min_length=1, description="The failed run to finish.")
    continue_: bool = Field(
        default=True,
        alias="continue",
        description="After the replay, sync on from the now-committed state (a normal "
        "incremental sync), so that the connection ends as current as a fresh sync leaves it.",
    )


class RunPlan(BaseModel):
    connection_id: str
    run_id: str
    backend: Literal["local", "airbyte"] = "local"
    airbyte_connection_id: str | None = None
    staging_uri: str | None = Field(
        default=None, description="Root of the run's staging; None: nothing is staged."
    )
    staging_prefix: str = ""
    streams: list[str] = Field(default_factory=list)
    heartbeat_timeout_seconds: float = 60
    job_timeout_hours: float = 24
    sync_attempts: int = 3
    kind: Literal["sync", "replay"] = "sync"
    reset: bool = False
    replay_of: str | None = Field(default=None, description="A replay: the failed run it finishes.")

    @property
    def staging_target(self) -> str | None:
        return None if self.staging_uri is None else self.staging_uri + self.staging_prefix


class RunSyncInput(BaseModel):
    plan: RunPlan
    reset: bool = False


class StreamOutcome(BaseModel):
    name: str
    namespace: str | None = None
    records: int = 0
    columns: list[str] = Field(default_factory=list)


class ScrubOutcome(BaseModel):
    """The retained, scrubbed log of one run attempt."""

    redactions: dict[str, int]
    lines: int
    log_uri: str | None = Field(default=None, description="None: the log could not be retained.")
    retain_error: str | None = Field(
        default=None, description="Why the scrubbed log could not be written (its kind only)."
    )


class SyncOutcome(BaseModel):
    run_id: str
    streams: list[StreamOutcome]
    bytes_staged: int = 0
    batches: int = 0
    states_committed: int = 0
    incremental: bool = Field(default=False, description="The run started from a committed state.")
    scrub: ScrubOutcome | None = Field(
        default=None, description="The attempt's scrubbed log, retained."
    )


class RetainMetadataInput(BaseModel):
    plan: RunPlan
    streams: list[StreamOutcome]


class PurgeInput(BaseModel):
    plan: RunPlan
    of_run: str | None = Field(
        default=None,
        description="Purge this (failed) run's staging under the plan's staging root, with a "
        "receipt of its own, instead of the plan's run's: a replay purges the run it finished.",
    )


class ReplayOutcome(BaseModel):
    """What a replay committed from the failed run's staging, without the connector."""

    records: dict[str, int] = Field(default_factory=dict, description="By stream.")
    commits: int = 0
    already_committed: int = Field(default=0, description="Commits the failed run had done.")
    states: int = 0
    dropped_batches: int = Field(
        default=0, description="Staged batch files (or their tails) no STATE covered."
    )
    dropped_streams: list[str] = Field(
        default_factory=list, description="Replaced (overwrite) streams, left to the next read."
    )


class RecordRunInput(BaseModel):
    plan: RunPlan
    workflow_id: str
    status: RunStatus
    started_at: datetime
    finished_at: datetime
    outcome: SyncOutcome | None = None
    scrub: ScrubOutcome | None = None
    receipt: PurgeReceipt | None = None
    error: str | None = Field(default=None, description="Scrubbed failure message.")
    committed: bool = Field(
        default=False, description="The sync committed: kept staging holds nothing to replay."
    )
    warnings: list[str] = Field(
        default_factory=list, description="What went wrong after the commit without undoing it."
    )


class SyncSummary(BaseModel):
    """What a run tells its caller: counts and ids, no record or cursor values."""

    connection_id: str
    run_id: str
    status: RunStatus
    records: dict[str, int]
    bytes_staged: int
    incremental: bool
    redactions: dict[str, int]
    objects_purged: int
    receipt_id: str | None
    verified_empty: bool
    log_uri: str | None
    duration_seconds: float
    warnings: list[str] = Field(default_factory=list)
    kind: Literal["sync", "replay"] = "sync"
    replay_of: str | None = None
    replay: ReplayOutcome | None = Field(
        default=None, description="A replay: what it committed from the failed run's staging."
    )
    replayed_receipt_id: str | None = Field(
        default=None, description="A replay: the receipt of the failed run's staging purge."
    )


class SweepRequest(BaseModel):
    """Input of RetentionSweepWorkflow; empty means the worker's settings decide."""

    model_config = ConfigDict(extra="forbid")

    log_retention_days: float | None = Field(default=None, gt=0)
    failed_staging_ttl_days: float | None = Field(default=None, gt=0)


class SweepOutcome(BaseModel):
    runs: int = 0
    objects_deleted: int = 0
    receipt_ids: list[str] = Field(default_factory=list)
    failures: list[str] = Field(default_factory=list, description="run id: why it was kept")
    runs_finished: list[str] = Field(
        default_factory=list,
        description="Runs whose workflow ended without recording them, recorded by the sweep.",
    )


class SweepSummary(BaseModel):
    logs: SweepOutcome
    failed_staging: SweepOutcome


class AirbyteJobRef(BaseModel):
    job_id: int
    attached: bool = Field(default=False, description="A sync was already running: joined it.")


class AirbyteJobInput(BaseModel):
    plan: RunPlan
    job_id: int


class AirbyteJobOutcome(BaseModel):
    job_id: int
    status: Literal["succeeded", "failed", "cancelled"]
    failure: str | None = Field(default=None, description="Airbyte's failure summary, scrubbed.")
    sync: SyncOutcome
