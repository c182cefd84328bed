"""What a local sync reports: its progress while it runs (heartbeats) and its result."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, Field


class SyncProgress(BaseModel):
    """Heartbeat details of run_sync: what is committed so far, so a retry resumes the counts."""

    attempt: int = 0
    records: dict[str, int] = Field(default_factory=dict)
    bytes_staged: int = 0
    batches: int = 0
    states: int = 0


@dataclass(frozen=True)
class StreamResult:
    name: str
    namespace: str | None
    records: int  # committed by the run, all its attempts
    columns: list[str]


@dataclass(frozen=True)
class SyncResult:
    """A committed sync: counts and names only, never a record or cursor value."""

    run_id: str
    streams: list[StreamResult]
    bytes_staged: int
    batches: int
    states_committed: int
    incremental: bool  # the run started from a committed state
