"""The purge receipt: the proof, kept as run metadata, that a run's staged data is gone.

It holds metadata only. Keys appear in `failures`, and that is allowed because keys are our
own staging file names, never record values.
"""

from __future__ import annotations

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


class PurgeReceipt(BaseModel):
    """What one purge of one prefix deleted, and what the listing afterwards found.

    New fields must get defaults, so that receipts already stored still validate.
    """

    model_config = ConfigDict(frozen=True)

    receipt_id: str
    target: str = Field(description='Store URI plus prefix, e.g. "file:///x/staging/faker/run-1/".')
    dry_run: bool = False
    started_at: AwareDatetime
    finished_at: AwareDatetime
    objects_deleted: int = Field(
        default=0, description="Objects and versions deleted; in a dry run, those found."
    )
    versions_deleted: int = Field(
        default=0, description="Of objects_deleted, those that carried a version id."
    )
    bytes_deleted: int = Field(default=0, description="In a dry run, the bytes found.")
    manifest_sha256: str = Field(
        description=(
            'SHA-256 over the manifest: one UTF-8 line "key\\tversion_id\\n" per object '
            "(empty version for unversioned stores), sorted by (key, version_id)."
        )
    )
    remaining: int = Field(
        default=0, description="Objects the verification listing found; in a dry run, all found."
    )
    verified_empty: bool
    data_key_destroyed: bool | None = Field(
        default=None,
        description="The run's staging key was destroyed with this purge, so any copy of its "
        "staged files that survives (a backup, a snapshot, a version) is unreadable; None: the "
        "staging was not sealed by Sluice (an Airbyte destination's own).",
    )
    failures: list[str] = Field(
        default_factory=list,
        description=(
            '"key: reason", or "key (version v): reason", per object that could not be '
            "deleted: the first 100 in key order only."
        ),
    )
    objects_failed: int = Field(
        default=0, description="All objects that could not be deleted, listed or not."
    )
    store_settings: dict[str, str] = Field(default_factory=dict)
    delete_calls: int = Field(
        default=0, description="Batch deletes sent to the store, retries included."
    )
    retries: int = Field(
        default=0,
        description="Objects sent again after a transient failure (throttling, 5xx, timeout).",
    )
    throttles: int = Field(
        default=0, description="Batch deletes the store answered with 'slow down' (SlowDown, 503)."
    )
    objects_deleted_before_resume: int = Field(
        default=0,
        description=(
            "Objects an earlier, interrupted attempt of the same purge had deleted, as of its "
            "last heartbeat (deletes after that are not counted anywhere): included in "
            "objects_deleted, not in the manifest or bytes_deleted. The verification listing, "
            "not the counts, is what proves the prefix empty."
        ),
    )
    recoverable_until: AwareDatetime | None = Field(
        default=None,
        description=(
            "Set when the store keeps deleted objects recoverable (Azure soft delete): until "
            "then the delete can be undone, so the data is not yet gone. None when deletes are "
            "final."
        ),
    )
