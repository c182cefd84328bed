"""A staging store in an S3 bucket, under a base prefix, through boto3.

"Deleted" is easy to fake on S3, and this store is written so that it is not:

- Listing goes through ListObjectVersions, so every version and every delete marker is seen,
  not only the latest version of each key. Only a bucket that never had versioning is listed
  with ListObjectsV2, which sees the same objects there (each key has one, "null", version and
  no delete marker can exist) and costs less: the status is read at every listing, and since a
  bucket can never go back to "never versioned", a listing that reads it is complete.
- Deleting sends the version id of each version (and "null" for the null version of a bucket
  that has or had versioning), so a delete removes bytes instead of adding a delete marker.
- DeleteObjects answers HTTP 200 even when some keys failed: every entry of its `Errors` list
  is classified, transient ones (SlowDown, InternalError, 5xx) for the purge pipeline to
  retry, the others (Object Lock, legal hold, AccessDenied) reported as failures.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, cast

import boto3
import botocore.session
import botocore.utils
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.exceptions import HTTPClientError as BotoHTTPClientError

from purge.stores.base import (
    DeleteResult,
    StagingStore,
    StoredObject,
    normalize_prefix,
    validate_key,
)

MAX_KEYS_PER_DELETE = 1000
"""S3 DeleteObjects takes at most 1000 keys per request (moto does not enforce it)."""

DELETE_CONCURRENCY = 4
"""DeleteObjects requests the purge pipeline may have in flight at once, at most.

A request of 1000 keys counts as 1000 DELETEs against S3's per-prefix rate (3,500/s), so a few
in flight already reach it; the pipeline's limiter lowers this whenever S3 says SlowDown. More
buys nothing and costs: the pipeline lists up to twice this many batches ahead of the deletes,
and a listing ahead of the deletes walks objects that are about to go (on a moto server, 8
instead of 4 made a 50,000-object purge 7% slower, its server doing 6% more work).
"""

_SPOOL_BYTES = 8 * 1024 * 1024
"""Writes stay in memory up to this size, then spill to an anonymous temporary file."""

_THROTTLE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequestsException",
    }
)
_TRANSIENT_CODES = _THROTTLE_CODES | {
    "InternalError",
    "ServiceUnavailable",
    "RequestTimeout",
    "RequestTimeoutException",
    "OperationAborted",
    "500",
    "503",
}
_ALREADY_GONE_CODES = frozenset({"NoSuchKey", "NoSuchVersion"})
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})

# The version id S3 gives objects written while a bucket had no versioning.
_NULL_VERSION = "null"


class S3StagingStore(StagingStore):
    """Keys are relative to `base_prefix` inside `bucket`; nothing above it is ever addressed.

    With `client=None` the store builds its clients from a default boto3 session, which reads
    the standard AWS settings (AWS_ENDPOINT_URL, AWS_REGION, credentials, profiles). It builds
    two: one for listing, reading and writing, with the retries the AWS configuration asks
    for, and one for DeleteObjects with botocore's retries turned off, so
    that a SlowDown or 503 reaches the purge pipeline, whose adaptive limiter and backoff
    react to it, instead of being retried blindly inside botocore. A client passed in is used
    for everything as it is: give it `retries={"total_max_attempts": 1}` to keep that
    behaviour (botocore's `max_attempts` counts retries, not attempts: 1 still retries once).
    """

    delete_concurrency = DELETE_CONCURRENCY

    def __init__(
        self,
        bucket: str,
        base_prefix: str = "",
        client: BaseClient | None = None,
        *,
        server_side_encryption: str | None = None,
    ) -> None:
        if not bucket or "/" in bucket:
            raise ValueError(f"invalid S3 bucket name {bucket!r}")
        self.bucket = bucket
        # The bucket root is a legitimate base; the purge refuses an empty *purge* prefix.
        self.base_prefix = "" if base_prefix in ("", "/") else normalize_prefix(base_prefix)
        self.uri = f"s3://{bucket}/{self.base_prefix}"
        if client is None:
            core = botocore.session.get_session()
            core.get_component("response_parser_factory").set_parser_defaults(
                timestamp_parser=_parse_timestamp
            )
            session = boto3.session.Session(botocore_session=core)
            self._client: BaseClient = session.client("s3")
            self._delete_client: BaseClient = session.client(
                "s3",
                config=Config(
                    retries={"total_max_attempts": 1, "mode": "standard"},
                    # One connection per request in flight, plus slack, so none waits for one.
                    max_pool_connections=DELETE_CONCURRENCY + 2,
                ),
            )
        else:
            self._client = self._delete_client = client
        self._versioning: str | None = None
        # Requested on every write ("AES256" or "aws:kms"), whatever the bucket's default.
        self._write_args = (
            {"ServerSideEncryption": server_side_encryption} if server_side_encryption else None
        )

    def __repr__(self) -> str:
        return f"S3StagingStore({self.bucket!r}, {self.base_prefix!r})"

    # --- settings ---------------------------------------------------------------------------

    def settings(self) -> dict[str, str]:
        """Versioning and Object Lock decide whether a delete is final, so the receipt has them.

        A setting the credentials may not read is reported as "unknown (Code)" rather than
        failing the purge: the deletes themselves do not need it.
        """
        settings = {"kind": "s3", "bucket": self.bucket, "versioning": self._read_versioning()}
        try:
            lock = self._client.get_object_lock_configuration(Bucket=self.bucket)
        except ClientError as exc:
            code = _error_code(exc)
            if code == "ObjectLockConfigurationNotFoundError":
                settings["object_lock"] = "none"
            else:
                settings["object_lock"] = f"unknown ({code})"
        else:
            configuration = lock.get("ObjectLockConfiguration", {})
            enabled = configuration.get("ObjectLockEnabled") == "Enabled"
            settings["object_lock"] = "enabled" if enabled else "none"
            retention = configuration.get("Rule", {}).get("DefaultRetention")
            if enabled and retention:
                period = (
                    f"{retention['Days']} days"
                    if "Days" in retention
                    else f"{retention.get('Years', '?')} years"
                )
                settings["object_lock_default_retention"] = f"{retention.get('Mode')} {period}"
        return settings

    def _read_versioning(self) -> str:
        """ "Enabled", "Suspended", "none" (never enabled) or "unknown (Code)"."""
        try:
            response = self._client.get_bucket_versioning(Bucket=self.bucket)
        except ClientError as exc:
            status = f"unknown ({_error_code(exc)})"
        except BotoCoreError as exc:
            status = f"unknown ({type(exc).__name__})"
        else:
            status = response.get("Status") or "none"
        self._versioning = status
        return status

    def _bucket_may_be_versioned(self) -> bool:
        """Whether objects without a version id must be deleted as version "null".

        In a bucket that has or had versioning, a delete without a version id adds a delete
        marker (or, when suspended, replaces the null version by one) and the bytes stay.
        """
        status = self._versioning if self._versioning is not None else self._read_versioning()
        return status != "none"

    # --- reads and writes -------------------------------------------------------------------

    @contextlib.contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        """Buffer locally and upload on a clean exit: a PUT is atomic, a failed block uploads
        nothing."""
        full_key = self._full_key(key)
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as buffer:
            yield cast(BinaryIO, buffer)
            buffer.seek(0)
            self._client.upload_fileobj(buffer, self.bucket, full_key, ExtraArgs=self._write_args)

    @contextlib.contextmanager
    def open_read(self, key: str) -> Iterator[BinaryIO]:
        """Stream the object's bytes; a missing object raises FileNotFoundError, as locally."""
        full_key = self._full_key(key)
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=full_key)
        except ClientError as exc:
            raise _not_found_or_same(exc, self.uri + key) from exc
        body = response["Body"]
        try:
            yield cast(BinaryIO, body)
        finally:
            body.close()

    @contextlib.contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        """Download to a private temporary file that is removed on exit.

        The file keeps the key's suffixes (".jsonl.gz"), since loaders pick a format by them.
        """
        full_key = self._full_key(key)
        suffix = "".join(PurePosixPath(key).suffixes)[-64:]
        fd, name = tempfile.mkstemp(prefix="sluice-s3-", suffix=suffix)
        try:
            with os.fdopen(fd, "wb") as handle:
                try:
                    self._client.download_fileobj(self.bucket, full_key, handle)
                except ClientError as exc:
                    raise _not_found_or_same(exc, self.uri + key) from exc
            yield Path(name)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)

    def exists(self, key: str) -> bool:
        """Whether the latest version is an object; a delete marker reads as absent, as on S3."""
        try:
            self._client.head_object(Bucket=self.bucket, Key=self._full_key(key))
        except ClientError as exc:
            if _error_code(exc) in _NOT_FOUND_CODES:
                return False
            raise
        return True

    # --- listing ----------------------------------------------------------------------------

    def list(self, prefix: str) -> Iterator[StoredObject]:
        """Every version and delete marker under the prefix, in (key, version id) order.

        The bucket's versioning status is read first, at every listing (so the deletes that
        follow know whether "null" versions exist, and the verification listing after them
        reads it anew). A bucket that never had versioning ("none") holds one version per key
        and no delete marker, so ListObjectsV2 lists all of it; any other status, unreadable
        included, is listed with ListObjectVersions.
        """
        full_prefix = self.base_prefix + normalize_prefix(prefix)
        if self._read_versioning() == "none":
            yield from self._list_objects(full_prefix)
        else:
            yield from self._list_versions(full_prefix)

    def _pages(self, operation: str, full_prefix: str) -> Iterable[dict[str, Any]]:
        # 1000 is S3's default and maximum page; said explicitly because emulators differ
        # (moto defaults to 100).
        pages: Iterable[dict[str, Any]] = self._client.get_paginator(operation).paginate(
            Bucket=self.bucket, Prefix=full_prefix, PaginationConfig={"PageSize": 1000}
        )
        return pages

    def _relative(self, full_key: str, full_prefix: str) -> str:
        if not full_key.startswith(full_prefix):
            raise RuntimeError(
                f"S3 listed {full_key!r} for prefix {full_prefix!r} in {self.bucket!r}"
            )
        return full_key[len(self.base_prefix) :]

    def _list_objects(self, full_prefix: str) -> Iterator[StoredObject]:
        """A never-versioned bucket: every object, in key (UTF-8 byte) order, as S3 lists it."""
        for page in self._pages("list_objects_v2", full_prefix):
            for entry in page.get("Contents", []):
                yield StoredObject(
                    key=self._relative(entry["Key"], full_prefix), size=int(entry.get("Size", 0))
                )

    def _list_versions(self, full_prefix: str) -> Iterator[StoredObject]:
        """S3 lists keys in UTF-8 byte order (which is code point order), but each key's
        versions newest first, with delete markers in a separate list of the page. Each key's
        entries are gathered, across pages if need be, and sorted before they are yielded, so
        memory is bounded by one page plus the versions of one key."""
        current_key: str | None = None
        versions: dict[str, StoredObject] = {}
        for page in self._pages("list_object_versions", full_prefix):
            for entry in _page_entries(page):
                key = self._relative(entry["Key"], full_prefix)
                if key != current_key:
                    yield from _sorted_versions(versions)
                    versions = {}
                    current_key = key
                version_id = entry.get("VersionId")
                if version_id == _NULL_VERSION:
                    version_id = None
                # A dict, so a version a page boundary repeats is listed once.
                versions[version_id or ""] = StoredObject(
                    key=key, size=int(entry.get("Size", 0)), version_id=version_id
                )
        yield from _sorted_versions(versions)

    def prune(self, prefix: str) -> None:
        """Abort unfinished multipart uploads under the prefix: their parts are staged bytes too.

        A worker killed in the middle of a large upload leaves its parts behind, stored and
        billed until aborted, yet invisible to ListObjectVersions. A failure to
        abort one is raised, not swallowed, since the purge could not then be complete.
        """
        full_prefix = self.base_prefix + normalize_prefix(prefix)
        paginator = self._client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
            for upload in page.get("Uploads", []):
                if not upload["Key"].startswith(full_prefix):
                    continue
                try:
                    self._client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                except ClientError as exc:
                    if _error_code(exc) != "NoSuchUpload":  # finished or aborted meanwhile
                        raise

    def _full_key(self, key: str) -> str:
        """The key in the bucket; only canonical relative keys, so none escapes the base."""
        return self.base_prefix + validate_key(key)

    # --- deleting ---------------------------------------------------------------------------

    def delete(self, objects: Sequence[StoredObject]) -> DeleteResult:
        """Delete these versions with DeleteObjects, 1000 keys per request, and report each one.

        Never raises for a failed request: a throttled or failed request puts its objects in
        `retry` (transient) or `failed` (permanent), so the purge pipeline decides.
        """
        result = DeleteResult(deleted=[], failed=[])
        may_be_versioned = self._bucket_may_be_versioned()
        for start in range(0, len(objects), MAX_KEYS_PER_DELETE):
            chunk = objects[start : start + MAX_KEYS_PER_DELETE]
            self._delete_chunk(chunk, may_be_versioned, result)
        return result

    def _delete_chunk(
        self, chunk: Sequence[StoredObject], may_be_versioned: bool, result: DeleteResult
    ) -> None:
        sent: dict[tuple[str, str | None], StoredObject] = {}
        entries: list[dict[str, str]] = []
        for obj in chunk:
            full_key = self.base_prefix + obj.key
            version_id = obj.version_id or (_NULL_VERSION if may_be_versioned else None)
            entry = {"Key": full_key}
            if version_id is not None:
                entry["VersionId"] = version_id
            entries.append(entry)
            sent[(full_key, version_id)] = obj
        try:
            response = self._delete_client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": entries, "Quiet": False}
            )
        except ClientError as exc:
            _request_failed(chunk, exc, result)
            return
        except (BotoConnectionError, BotoHTTPClientError) as exc:
            # The outcome is unknown (the request may have been applied): retrying is safe,
            # because deleting what is already gone counts as deleted.
            result.retry.extend((obj, f"{type(exc).__name__}: {exc}") for obj in chunk)
            return
        _OutcomeReader(sent, result).read(response)


class _OutcomeReader:
    """Maps each `Deleted` and `Errors` entry of a DeleteObjects response back to what was sent.

    Entries are matched by (key, version id). S3 echoes the version id; moto leaves it out of
    `Errors`, so an entry without one applies to every version of that key still unresolved.
    """

    def __init__(self, sent: dict[tuple[str, str | None], StoredObject], result: DeleteResult):
        self._unresolved = dict(sent)
        self._by_key: dict[str, list[tuple[str, str | None]]] = {}
        for ident in sent:
            self._by_key.setdefault(ident[0], []).append(ident)
        self._result = result

    def read(self, response: dict[str, Any]) -> None:
        for entry in response.get("Deleted", []):
            for ident, obj in self._take(entry):
                if entry.get("DeleteMarker") and ident[1] is None:
                    # Sent without a version id, yet S3 added a delete marker: versioning was
                    # turned on since the listing, and the object's bytes are still there.
                    self._result.failed.append(
                        (
                            obj,
                            "S3 added a delete marker instead (versioning was enabled during "
                            "the purge): purge again",
                        )
                    )
                else:
                    self._result.deleted.append(obj)
        for entry in response.get("Errors", []):
            code = str(entry.get("Code", "Unknown"))
            reason = _reason(code, entry.get("Message"))
            for _ident, obj in self._take(entry):
                if code in _ALREADY_GONE_CODES:
                    self._result.deleted.append(obj)
                elif code in _TRANSIENT_CODES:
                    self._result.retry.append((obj, reason))
                    self._result.throttled |= code in _THROTTLE_CODES
                else:
                    self._result.failed.append((obj, reason))
        for obj in self._unresolved.values():
            # Deleting again is harmless, so an object the response forgot is retried.
            self._result.retry.append((obj, "no outcome in the DeleteObjects response"))

    def _take(self, entry: dict[str, Any]) -> list[tuple[tuple[str, str | None], StoredObject]]:
        key = entry.get("Key", "")
        if "VersionId" in entry:
            idents = [(key, entry["VersionId"])]
            if idents[0] not in self._unresolved and (key, None) in self._unresolved:
                idents = [(key, None)]
        else:
            idents = self._by_key.get(key, [])
        return [
            (ident, self._unresolved.pop(ident)) for ident in idents if ident in self._unresolved
        ]


def _request_failed(chunk: Sequence[StoredObject], exc: ClientError, result: DeleteResult) -> None:
    """A whole DeleteObjects request failed: retry all of it, or report all of it."""
    code = _error_code(exc)
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    reason = _reason(code, exc.response.get("Error", {}).get("Message"))
    if code in _TRANSIENT_CODES or status >= 500 or status == 429:
        result.retry.extend((obj, reason) for obj in chunk)
        result.throttled |= code in _THROTTLE_CODES or status in (429, 503)
    else:
        result.failed.extend((obj, reason) for obj in chunk)


def _parse_timestamp(value: Any) -> datetime:
    """S3's ISO 8601 timestamps ("2026-11-30T07:39:02.000Z") without dateutil.

    botocore parses the LastModified of every listed object with dateutil, a quarter of the
    client's CPU in a purge; `datetime.fromisoformat` reads the same text in a fiftieth of the
    time, to the same instant. Anything else (an HTTP date in a header) goes to botocore.
    """
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is not None:
                return parsed
    timestamp: datetime = botocore.utils.parse_timestamp(value)
    return timestamp


def _reason(code: str, message: str | None) -> str:
    return f"{code}: {message}" if message else code


def _error_code(exc: ClientError) -> str:
    """The S3 error code; an error without a body (HEAD) has only its HTTP status."""
    code = exc.response.get("Error", {}).get("Code")
    if code:
        return str(code)
    return str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "Unknown"))


def _not_found_or_same(exc: ClientError, uri: str) -> Exception:
    if _error_code(exc) in _NOT_FOUND_CODES:
        return FileNotFoundError(f"no object at {uri}")
    error: Exception = exc
    return error


def _page_entries(page: dict[str, Any]) -> Iterable[dict[str, Any]]:
    """A page's versions and delete markers as one stream in key order (each list is)."""
    return heapq.merge(
        page.get("Versions", []), page.get("DeleteMarkers", []), key=lambda entry: entry["Key"]
    )


def _sorted_versions(versions: dict[str, StoredObject]) -> Iterator[StoredObject]:
    for version in sorted(versions):
        yield versions[version]
