"""A staging store in an Azure Blob Storage container, purged with blob batch requests.

What "everything under a prefix" means on Azure: base blobs, their snapshots, and (on accounts
with versioning) every blob version. Each is its own `StoredObject`, told apart by `version_id`:

    None                    a base blob on an account without versioning
    "snapshot:<timestamp>"  a snapshot
    "version:<id>"          a previous version
    "current-version:<id>"  the current version of a blob on a versioned account

The current version is marked because it cannot be removed by its version id alone: deleting
the base blob turns it into a previous version, which is then deleted by id. Soft-deleted blobs
are not listed: no delete can remove them before their retention ends, so listing them would
make every purge on a soft-delete account fail its verification. `list_recoverable` shows them
and `recoverable_until` says until when they stay recoverable, for the receipt.
"""

from __future__ import annotations

import builtins
import contextlib
import itertools
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, cast

from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

if TYPE_CHECKING:
    # Imported where a client is built: the Blob SDK takes a third of a second to import, which
    # every `sluice` command would pay, S3 and local purges included.
    from azure.storage.blob import BlobProperties, BlobServiceClient

from purge.errors import PurgeError
from purge.stores.base import (
    DeleteResult,
    StagingStore,
    StoredObject,
    UnsafeKeyError,
    normalize_prefix,
    validate_key,
)

# A blob batch request takes at most 256 sub-requests; the service rejects larger ones whole.
MAX_BATCH_SUBREQUESTS = 256

# Writes and reads stay in memory up to this size, then spill to a private temporary file, so
# a large staged file never has to fit in memory.
_SPOOL_MAX_BYTES = 8 * 1024 * 1024

_SNAPSHOT = "snapshot:"
_VERSION = "version:"
_CURRENT_VERSION = "current-version:"

# Listing includes, most complete first. Some services reject "versions" (older API versions,
# some emulators): the listing then falls back, and settings() says what was listed.
_LISTING_INCLUDES: tuple[tuple[str, ...], ...] = (("snapshots", "versions"), ("snapshots",))

# Azure container names: 3-63 of lowercase letters, digits and single hyphens; "$root" and
# "$web" are the two special containers.
_CONTAINER_NAME = re.compile(r"^(?:\$root|\$web|[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62})$")

_THROTTLING_STATUSES = frozenset({429, 503})
_TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_THROTTLING_CODES = frozenset({"ServerBusy"})
_TRANSIENT_CODES = frozenset({"ServerBusy", "InternalError", "OperationTimedOut"})


class AzureStoreConfigError(PurgeError, ValueError):
    """The store cannot be built from what it was given (no credentials, bad container name)."""

    kind = "AzureStoreConfig"


class AzureSettingsUnreadableError(PurgeError, RuntimeError):
    """The account's soft-delete setting could not be read, so recoverability is unknown.

    Raised rather than answering "not recoverable", which would let a receipt claim a purge
    that the account may still undo.
    """

    kind = "AzureSettingsUnreadable"
    retryable = True


@dataclass(frozen=True)
class _Outcome:
    status: Literal["deleted", "retry", "failed"]
    reason: str = ""
    throttled: bool = False


_DELETED = _Outcome("deleted")


@dataclass
class _Plan:
    """Which sub-requests one `delete` call sends, and which objects wait on which result."""

    first: list[dict[str, Any]] = field(default_factory=list)
    """Sub-requests of the first round: base blobs, lone snapshots, previous versions."""
    outcome_of: dict[int, int] = field(default_factory=dict)
    """Object index -> index into `first` whose outcome is that object's own."""
    base_of: dict[str, int] = field(default_factory=dict)
    """Blob name -> index into `first` of its base-blob delete (which includes snapshots)."""
    covered_snapshots: list[int] = field(default_factory=list)
    """Snapshots whose base blob is deleted in this call, which deletes them too."""
    current_versions: list[int] = field(default_factory=list)
    """Current versions: their base blob is deleted first, then the version by its id."""


class AzureStagingStore(StagingStore):
    """Keys are blob names relative to `base_prefix` inside one container.

    The `BlobServiceClient` is injected (and thread-safe, as Azure SDK clients are), so the
    purge pipeline may call `delete` from several threads at once, and tests can use Azurite.
    """

    def __init__(
        self, container: str, base_prefix: str = "", *, service: BlobServiceClient
    ) -> None:
        if not _CONTAINER_NAME.match(container):
            raise AzureStoreConfigError(
                f"invalid Azure container name {container!r}: 3-63 lowercase letters, digits "
                "and single hyphens"
            )
        self.container = container
        self.base_prefix = normalize_prefix(base_prefix) if base_prefix.strip("/") else ""
        self.uri = f"az://{container}/{self.base_prefix}"
        self._service = service
        self._container = service.get_container_client(container)
        self._include: tuple[str, ...] = _LISTING_INCLUDES[0]
        self._include_note = ""

    @classmethod
    def from_environment(
        cls,
        container: str,
        base_prefix: str = "",
        *,
        connection_string: str | None = None,
        account_url: str | None = None,
        credential: Any | None = None,
    ) -> AzureStagingStore:
        """Build the store from validated settings: a connection string wins, else URL + credential.

        The caller reads AZURE_STORAGE_CONNECTION_STRING (or the account URL and credential)
        at the edge; nothing here reads the environment. `credential` is whatever
        `BlobServiceClient` takes: a TokenCredential, an account key, a SAS token, or None for
        a URL that carries its own SAS.
        """
        from azure.storage.blob import BlobServiceClient

        if connection_string:
            service = BlobServiceClient.from_connection_string(connection_string)
        elif account_url:
            service = BlobServiceClient(account_url, credential=credential)
        else:
            raise AzureStoreConfigError(
                f"no Azure credentials for az://{container}/: set a connection string "
                "(AZURE_STORAGE_CONNECTION_STRING) or an account URL with a credential"
            )
        return cls(container, base_prefix, service=service)

    def __repr__(self) -> str:
        return f"AzureStagingStore({self.uri!r})"

    # --- objects ------------------------------------------------------------------------

    @contextlib.contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        """Buffer the object, then upload it in one go on a clean exit.

        A block blob upload becomes visible only when it commits, so readers never see half an
        object, and an exception inside the block uploads nothing at all.
        """
        blob = self._container.get_blob_client(self._name(key))
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_MAX_BYTES) as spool:
            yield cast(BinaryIO, spool)
            length = spool.tell()
            spool.seek(0)
            blob.upload_blob(spool, length=length, overwrite=True)

    @contextlib.contextmanager
    def open_read(self, key: str) -> Iterator[BinaryIO]:
        blob = self._container.get_blob_client(self._name(key))
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_MAX_BYTES) as spool:
            blob.download_blob().readinto(spool)
            spool.seek(0)
            yield cast(BinaryIO, spool)

    @contextlib.contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        """A private temporary download, named like the key's last segment so tools that look
        at the extension (.jsonl, .csv) still recognise it, removed on exit."""
        name = self._name(key)
        directory = Path(tempfile.mkdtemp(prefix="sluice-az-"))  # mode 0700: staged data
        try:
            path = directory / key.rsplit("/", 1)[-1]
            with path.open("wb") as handle:
                self._container.get_blob_client(name).download_blob().readinto(handle)
            yield path
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def exists(self, key: str) -> bool:
        return bool(self._container.get_blob_client(self._name(key)).exists())

    # --- listing ------------------------------------------------------------------------

    def list(self, prefix: str) -> Iterator[StoredObject]:
        """Every base blob, snapshot and version under the prefix, in the contract's order.

        The service lists blob names in order with all entries of one name together; the
        entries of one name (its base, snapshots and versions) are sorted here, so memory is
        bounded by the snapshots and versions of a single blob.
        """
        normalized = normalize_prefix(prefix)
        for _name, group in itertools.groupby(
            self._blobs(self.base_prefix + normalized), key=lambda blob: blob.name
        ):
            entries = [self._stored(blob) for blob in group if not blob.deleted]
            entries.sort(key=lambda obj: obj.version_id or "")
            yield from entries

    def list_recoverable(self, prefix: str) -> Iterator[StoredObject]:
        """The soft-deleted blobs, snapshots and versions under the prefix.

        They are what a receipt means by "recoverable until": no delete removes them before the
        account's retention period ends. Same encoding and order as `list`.
        """
        normalized = normalize_prefix(prefix)
        include = ("deleted", *self._include)
        blobs = self._container.list_blobs(
            name_starts_with=self.base_prefix + normalized, include=list(include)
        )
        for _name, group in itertools.groupby(blobs, key=lambda blob: blob.name):
            entries = [self._stored(blob) for blob in group if blob.deleted]
            entries.sort(key=lambda obj: obj.version_id or "")
            yield from entries

    def _blobs(self, name_prefix: str) -> Iterator[BlobProperties]:
        """List with the most complete include the service accepts, falling back on a 400.

        The first page is fetched inside the fallback, so nothing has been yielded yet when the
        service rejects an include.
        """
        includes = _LISTING_INCLUDES[_LISTING_INCLUDES.index(self._include) :]
        for include in includes:
            try:
                pages = self._container.list_blobs(
                    name_starts_with=name_prefix, include=list(include)
                ).by_page()
                first = list(next(pages, []))
            except HttpResponseError as exc:
                if exc.status_code != 400 or include == includes[-1]:
                    raise
                self._include_note = (
                    f"{'+'.join(include)} rejected ({_error_code(exc) or exc.status_code})"
                )
                continue
            self._include = include
            yield from first
            for page in pages:
                yield from page
            return

    def _stored(self, blob: BlobProperties) -> StoredObject:
        key = blob.name[len(self.base_prefix) :]
        size = int(blob.size or 0)
        if blob.snapshot:
            return StoredObject(key=key, size=size, version_id=_SNAPSHOT + blob.snapshot)
        if blob.version_id:
            marker = _CURRENT_VERSION if blob.is_current_version else _VERSION
            return StoredObject(key=key, size=size, version_id=marker + blob.version_id)
        return StoredObject(key=key, size=size)

    # --- deleting -----------------------------------------------------------------------

    def delete(self, objects: Sequence[StoredObject]) -> DeleteResult:
        """Delete these blobs, snapshots and versions with blob batches, checking every answer.

        First round: base blobs (with `delete_snapshots="include"`, which also removes their
        snapshots), snapshots whose base blob is not in this call, and previous versions by id.
        Second round: current versions by id, after their base blob's delete made them previous
        versions, and snapshots whose base blob could not be deleted.
        """
        result = DeleteResult(deleted=[], failed=[])
        outcomes: builtins.list[_Outcome | None] = [None] * len(objects)
        plan = _Plan()
        for index, obj in enumerate(objects):
            refused = _refusal(obj.key)
            if refused is not None:
                outcomes[index] = _Outcome("failed", refused)
                continue
            name = self.base_prefix + obj.key
            version = obj.version_id or ""
            if not version or version.startswith(_CURRENT_VERSION):
                plan.outcome_of[index] = self._base_request(plan, name)
                if version:
                    plan.current_versions.append(index)
            elif version.startswith(_SNAPSHOT):
                plan.covered_snapshots.append(index)
            elif version.startswith(_VERSION):
                plan.outcome_of[index] = len(plan.first)
                plan.first.append({"name": name, "version_id": version[len(_VERSION) :]})
            else:
                outcomes[index] = _Outcome("failed", f"unknown Azure version id {version!r}")
        for index in plan.covered_snapshots:
            name = self.base_prefix + objects[index].key
            if name not in plan.base_of:
                plan.outcome_of[index] = len(plan.first)
                plan.first.append({"name": name, "snapshot": _suffix(objects[index])})

        first = self._send(plan.first)
        for index, request in plan.outcome_of.items():
            outcomes[index] = first[request]

        second: builtins.list[dict[str, Any]] = []
        waiting: builtins.list[int] = []
        for index in plan.current_versions:
            if first[plan.outcome_of[index]].status == "deleted":
                second.append(
                    {
                        "name": self.base_prefix + objects[index].key,
                        "version_id": _suffix(objects[index]),
                    }
                )
                waiting.append(index)
        for index in plan.covered_snapshots:
            name = self.base_prefix + objects[index].key
            if name not in plan.base_of:
                continue
            if first[plan.base_of[name]].status == "deleted":
                outcomes[index] = _DELETED
            else:
                # Whatever kept the base blob (a lease, a policy) may not hold its snapshots:
                # each is tried on its own rather than reported with the base blob's answer.
                second.append({"name": name, "snapshot": _suffix(objects[index])})
                waiting.append(index)
        for index, answer in zip(waiting, self._send(second), strict=True):
            outcomes[index] = answer

        for obj, decided in zip(objects, outcomes, strict=True):
            assert decided is not None  # every object got a decision above
            if decided.status == "deleted":
                result.deleted.append(obj)
            elif decided.status == "retry":
                result.retry.append((obj, decided.reason))
            else:
                result.failed.append((obj, decided.reason))
            result.throttled = result.throttled or decided.throttled
        return result

    def _base_request(self, plan: _Plan, name: str) -> int:
        """One base-blob delete per name however many objects depend on it."""
        if name not in plan.base_of:
            plan.base_of[name] = len(plan.first)
            plan.first.append({"name": name, "delete_snapshots": "include"})
        return plan.base_of[name]

    def _send(self, requests: builtins.list[dict[str, Any]]) -> builtins.list[_Outcome]:
        """Send the sub-requests in batches of at most 256 and return one outcome for each."""
        outcomes: builtins.list[_Outcome] = []
        for start in range(0, len(requests), MAX_BATCH_SUBREQUESTS):
            outcomes.extend(self._send_batch(requests[start : start + MAX_BATCH_SUBREQUESTS]))
        return outcomes

    def _send_batch(self, batch: builtins.list[dict[str, Any]]) -> builtins.list[_Outcome]:
        try:
            # raise_on_any_failure=False: a batch answers 202 even when sub-requests failed, so
            # each sub-response is judged on its own below.
            parts = list(self._container.delete_blobs(*batch, raise_on_any_failure=False))
        except HttpResponseError as exc:
            code = _error_code(exc)
            if exc.status_code == 404 and code == "ContainerNotFound":
                return [_DELETED] * len(batch)  # no container, so none of its blobs either
            outcome = _judge(exc.status_code, code, exc.reason or str(exc.message))
            if outcome.status == "deleted":
                # Any other 404 (or an unexpected 2xx) for the whole batch says nothing about
                # any one blob, so none is counted as gone.
                outcome = _Outcome("failed", f"batch answered HTTP {exc.status_code} {code}")
            return [outcome] * len(batch)
        except (ServiceRequestError, ServiceResponseError) as exc:
            return [_Outcome("retry", f"batch request failed: {exc}")] * len(batch)
        outcomes = [
            _judge(part.status_code, part.headers.get("x-ms-error-code"), part.reason or "")
            for part in parts[: len(batch)]
        ]
        missing = _Outcome("retry", "the batch answer had no sub-response for this blob")
        outcomes.extend([missing] * (len(batch) - len(outcomes)))
        return outcomes

    # --- settings -----------------------------------------------------------------------

    def settings(self) -> dict[str, str]:
        """Soft delete as the account reports it; versioning as far as the Blob API can tell.

        Versioning is an account setting of the management plane, which a Blob API credential
        cannot read: the listing includes versions instead, and every listed version is deleted.
        """
        settings = {
            "kind": "azure",
            "container": self.container,
            "versioning": "not readable through the Blob API; every listed version is deleted",
            "listing": "blobs+"
            + "+".join(self._include)
            + (f" ({self._include_note})" if self._include_note else ""),
        }
        try:
            enabled, days, permanent = self._retention()
        except AzureSettingsUnreadableError as exc:
            settings["soft_delete"] = f"unknown ({exc})"
            return settings
        settings["soft_delete"] = f"enabled ({days} days)" if enabled else "disabled"
        if enabled:
            settings["permanent_delete"] = "allowed" if permanent else "not allowed"
        return settings

    def recoverable_until(self, deleted_at: datetime) -> datetime | None:
        """When blobs soft-deleted at `deleted_at` stop being recoverable; None without soft delete.

        Raises AzureSettingsUnreadableError when the setting cannot be read, rather than
        guessing that the delete was final.
        """
        if deleted_at.tzinfo is None:
            raise ValueError("deleted_at must be timezone-aware")
        enabled, days, _permanent = self._retention()
        return deleted_at + timedelta(days=days) if enabled else None

    def _retention(self) -> tuple[bool, int, bool]:
        try:
            policy = self._service.get_service_properties()["delete_retention_policy"]
        except HttpResponseError as exc:
            detail = f"HTTP {exc.status_code} {_error_code(exc) or ''}".rstrip()
            raise AzureSettingsUnreadableError(f"service properties unreadable: {detail}") from exc
        enabled = bool(getattr(policy, "enabled", False))
        days = int(getattr(policy, "days", 0) or 0)
        return enabled, days, bool(getattr(policy, "allow_permanent_delete", False))

    # --- names --------------------------------------------------------------------------

    def _name(self, key: str) -> str:
        return self.base_prefix + validate_key(key)


def _suffix(obj: StoredObject) -> str:
    """The service's snapshot timestamp or version id, without our marker."""
    return (obj.version_id or "").split(":", 1)[1]


def _refusal(key: str) -> str | None:
    """Why a listed name must not be sent in a delete, or None.

    Listed names are deleted even when they are not canonical keys (a "dir/" marker blob, a
    "//"), so verification can come out empty. But a "." or ".." segment can be collapsed by
    URL normalisation on the way, so the delete would reach a different blob, maybe outside the
    prefix: those are refused.
    """
    try:
        validate_key(key)
    except UnsafeKeyError as exc:
        segments = key.split("/")
        if "." in segments or ".." in segments or "\x00" in key or "\\" in key:
            return exc.reason
    return None


def _error_code(exc: HttpResponseError) -> str | None:
    code = getattr(exc, "error_code", None)
    if code:
        return str(code)
    # The SDK types the response's common part only; every transport's response has headers.
    headers = getattr(exc.response, "headers", None)
    return headers.get("x-ms-error-code") if headers is not None else None


def _judge(status: int | None, code: str | None, reason: str) -> _Outcome:
    """Classify one answer: gone (2xx, 404), worth retrying (5xx, throttling) or final."""
    if status is not None and (200 <= status < 300 or status == 404):
        return _DELETED
    detail = f"HTTP {status} {code or ''}".rstrip() + (f": {reason}" if reason else "")
    throttled = status in _THROTTLING_STATUSES or code in _THROTTLING_CODES
    if status is None or status in _TRANSIENT_STATUSES or code in _TRANSIENT_CODES:
        return _Outcome("retry", detail, throttled=throttled)
    # 403 (permission), 409 (immutability policy, legal hold), 412 (lease) and the rest: a
    # retry gets the same answer, so the object is reported, never counted as deleted.
    return _Outcome("failed", detail)
