"""The interface every staging store implements, and the key and prefix rules they share.

Prefix rules live here, not in each store, so that "nothing outside the run's prefix is
touched" is decided in one place before any store is called.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from purge.errors import PurgeError


@dataclass(frozen=True)
class StoredObject:
    """One object, or one version of an object, as a listing found it."""

    key: str
    """Posix key relative to the store root, without a leading "/"."""
    size: int
    version_id: str | None = None
    """None for unversioned stores (local)."""


@dataclass
class DeleteResult:
    """What a batch delete did, object by object, so partial failure is never hidden."""

    deleted: list[StoredObject]
    failed: list[tuple[StoredObject, str]]
    """Each object that could not be deleted and never will be by retrying (Object Lock, legal
    hold, AccessDenied), with the reason."""
    retry: list[tuple[StoredObject, str]] = field(default_factory=list)
    """Each object whose delete failed transiently (throttling, 5xx, InternalError), with the
    reason: the purge pipeline retries these with backoff, and reports them as failed once its
    attempts are spent."""
    throttled: bool = False
    """The service asked us to slow down (S3 SlowDown / 503, Azure 503 ServerBusy): the purge
    pipeline lowers its concurrency."""


class UnsafePrefixError(PurgeError, ValueError):
    """A prefix that could reach outside one run's staging area."""

    kind = "UnsafePrefix"

    def __init__(self, prefix: str, reason: str) -> None:
        super().__init__(f"unsafe prefix {prefix!r}: {reason}")
        self.prefix = prefix
        self.reason = reason


class UnsafeKeyError(PurgeError, ValueError):
    """A key that is not a plain relative path, so it could name something outside the store."""

    kind = "UnsafeKey"

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"unsafe key {key!r}: {reason}")
        self.key = key
        self.reason = reason


def _refuse_unsafe_characters(value: str) -> str | None:
    if "\x00" in value:
        return "contains NUL"
    if "\\" in value:
        # A backslash is a separator on Windows and in some tools, so it could hide a '..'.
        return "contains a backslash"
    return None


def normalize_prefix(prefix: str) -> str:
    """Return the prefix as 'a/b/': posix, no leading slash, one trailing slash, no '//' or '.'.

    The trailing slash is what makes matching happen on a '/' boundary, so that 'runs/conn1/'
    never matches 'runs/conn10/'. An empty or root prefix would purge the whole store and a
    '..' segment could climb out of it, so both are refused rather than repaired.
    """
    if not prefix:
        raise UnsafePrefixError(prefix, "empty prefix would match the whole store")
    reason = _refuse_unsafe_characters(prefix)
    if reason is not None:
        raise UnsafePrefixError(prefix, reason)
    segments = prefix.split("/")
    if ".." in segments:
        raise UnsafePrefixError(prefix, "contains a '..' segment")
    kept = [segment for segment in segments if segment not in ("", ".")]
    if not kept:
        raise UnsafePrefixError(prefix, "resolves to the store root")
    return "/".join(kept) + "/"


def validate_key(key: str) -> str:
    """Return the key unchanged if it is canonical, refuse it otherwise.

    Keys are refused rather than normalised so that one object has exactly one key: the key a
    listing yields is the key a delete receives.
    """
    if not key:
        raise UnsafeKeyError(key, "empty key")
    reason = _refuse_unsafe_characters(key)
    if reason is not None:
        raise UnsafeKeyError(key, reason)
    if key.startswith("/"):
        raise UnsafeKeyError(key, "absolute key")
    if key.endswith("/"):
        raise UnsafeKeyError(key, "ends with '/', which names a prefix, not an object")
    for segment in key.split("/"):
        if segment == "..":
            raise UnsafeKeyError(key, "contains a '..' segment")
        if segment in ("", "."):
            raise UnsafeKeyError(key, "contains an empty or '.' segment")
    return key


class StagingStore(ABC):
    """Where a run's staged data lives until the destination has committed it.

    Listing contract: `list` yields objects in ascending order of `(key, version_id or "")`,
    comparing strings by code point (which is also UTF-8 byte order, as S3 lists). Purge keeps
    a running hash of the manifest and relies on this order to hash it without holding the
    whole listing in memory.
    """

    uri: str
    """The store root as a URI, ending in "/"."""

    delete_concurrency: int = 1
    """How many `delete` calls the purge pipeline may run at once, at most.

    Remote stores raise it, since each call mostly waits on the network; their `delete` must
    then be safe to call from several threads. At 1 the purge deletes in the calling thread,
    in lockstep with the listing, which is all a local disk needs.
    """

    delete_batch_size: int | None = None
    """The most objects the purge hands one `delete` call when it deletes serially, or None for
    the whole listed batch (S3 and Azure take 1,000 at once, split as their APIs require).

    The purge reports progress after every call, and an activity heartbeats that count: a store
    whose calls are slow per object (the local disk unlinks one file at a time) sets a small
    size, and the purge also halves it while a call takes longer than half a second, so that a
    worker killed mid-purge lost at most one small batch of its count.
    """

    @abstractmethod
    def open_write(self, key: str) -> contextlib.AbstractContextManager[BinaryIO]:
        """Write an object atomically.

        Readers never see a half-written object, and an exception inside the with-block leaves
        nothing behind, so a crashed write can never be mistaken for staged data.
        """

    @abstractmethod
    def open_read(self, key: str) -> contextlib.AbstractContextManager[BinaryIO]:
        """Read an object's bytes."""

    @abstractmethod
    def local_path(self, key: str) -> contextlib.AbstractContextManager[Path]:
        """A local file holding the object's bytes, for tools that only take a path.

        The local store yields the file itself; remote stores yield a temporary download that
        is removed on exit, so no copy of staged data outlives the with-block.
        """

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under exactly this key."""

    @abstractmethod
    def list(self, prefix: str) -> Iterator[StoredObject]:
        """Every object, and for versioned stores every version, under the normalised prefix.

        Lazy and in the order described on the class, so a purge of millions of objects runs
        in bounded memory.
        """

    @abstractmethod
    def delete(self, objects: Sequence[StoredObject]) -> DeleteResult:
        """Delete exactly these objects (versions), reporting each one's outcome.

        An object that is already gone counts as deleted, so a retried purge converges.
        """

    def prune(self, prefix: str) -> None:  # noqa: B027 - a deliberate no-op default
        """Remove what is left holding no objects under the prefix, the prefix itself included.

        Object stores have no directories, so by default there is nothing to prune. It takes
        the prefix, rather than being part of `delete`, so that it can never reach above it.
        """

    def recoverable_until(self, deleted_at: datetime) -> datetime | None:
        """Until when objects deleted at `deleted_at` can still be recovered (soft delete), or
        None when a delete is final. The receipt says so instead of claiming a purge."""
        del deleted_at
        return None

    @abstractmethod
    def settings(self) -> dict[str, str]:
        """The store settings that decide what "deleted" means (versioning, soft delete).

        They go into the purge receipt, so a reader can tell whether a delete was final.
        """
