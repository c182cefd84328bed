"""Purge one prefix of a staging store, verify it is empty, and return the receipt."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from purge.receipts import PurgeReceipt
from purge.stores.base import StagingStore, StoredObject, normalize_prefix

# Failures are listed in the receipt, which travels through Temporal histories with their
# payload size limit; the total is always counted in objects_failed.
MAX_LISTED_FAILURES = 100


class StoreContractError(RuntimeError):
    """A store listing broke its contract (order, or an object outside the prefix).

    Purging stops rather than continuing, because the manifest hash would be wrong or an
    object outside the run's prefix could be deleted.
    """


def purge_prefix(
    store: StagingStore,
    prefix: str,
    *,
    receipt_id: str,
    dry_run: bool = False,
    batch_size: int = 1000,
    on_progress: Callable[[int], None] | None = None,
) -> PurgeReceipt:
    """Delete every object and version under the prefix, then prove by listing that none is left.

    The listing is consumed lazily in batches and the manifest hashed as it goes, so memory
    stays bounded however many objects a run staged. `on_progress` receives the number of
    objects deleted so far after each batch (an activity heartbeats with it). A dry run lists,
    counts and hashes, deletes nothing and is never verified empty.
    """
    normalized = normalize_prefix(prefix)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    started_at = datetime.now(UTC)
    manifest = hashlib.sha256()
    objects_deleted = versions_deleted = bytes_deleted = objects_failed = 0
    failures: list[str] = []

    listing = _checked(store.list(normalized), normalized)
    while batch := list(itertools.islice(listing, batch_size)):
        for obj in batch:
            manifest.update(manifest_line(obj))
        if dry_run:
            deleted = batch
        else:
            result = store.delete(batch)
            deleted = result.deleted
            objects_failed += len(result.failed)
            room = MAX_LISTED_FAILURES - len(failures)
            failures.extend(f"{obj.key}: {reason}" for obj, reason in result.failed[:room])
        objects_deleted += len(deleted)
        versions_deleted += sum(1 for obj in deleted if obj.version_id is not None)
        bytes_deleted += sum(obj.size for obj in deleted)
        if on_progress is not None:
            on_progress(objects_deleted)

    if dry_run:
        remaining = objects_deleted
    else:
        store.prune(normalized)
        remaining = sum(1 for _ in store.list(normalized))

    return PurgeReceipt(
        receipt_id=receipt_id,
        target=store.uri + normalized,
        dry_run=dry_run,
        started_at=started_at,
        finished_at=datetime.now(UTC),
        objects_deleted=objects_deleted,
        versions_deleted=versions_deleted,
        bytes_deleted=bytes_deleted,
        manifest_sha256=manifest.hexdigest(),
        remaining=remaining,
        verified_empty=not dry_run and remaining == 0 and objects_failed == 0,
        failures=failures,
        objects_failed=objects_failed,
        store_settings=store.settings(),
    )


def manifest_line(obj: StoredObject) -> bytes:
    """One manifest line, "key<TAB>version_id<NEWLINE>", as hashed into the receipt."""
    # surrogateescape keeps file names that are not valid UTF-8 hashable, as their raw bytes.
    return f"{obj.key}\t{obj.version_id or ''}\n".encode("utf-8", "surrogateescape")


def _checked(listing: Iterator[StoredObject], prefix: str) -> Iterator[StoredObject]:
    """Pass the listing through, enforcing the order the running hash relies on and the prefix."""
    previous: tuple[str, str] | None = None
    for obj in listing:
        if not obj.key.startswith(prefix):
            raise StoreContractError(f"listing of {prefix!r} yielded {obj.key!r}, outside it")
        current = (obj.key, obj.version_id or "")
        if previous is not None and current <= previous:
            raise StoreContractError(
                f"listing of {prefix!r} is not in strictly ascending (key, version) order: "
                f"{current!r} came after {previous!r}"
            )
        previous = current
        yield obj
