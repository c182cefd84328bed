"""What only the Azure Blob Storage staging store has, against a real Azurite the suite starts:
snapshots, blob batches, leases, soft delete, construction; what every store promises is in
tests/test_staging_store_contract.py.

Azurite emulates blobs, snapshots, leases and blob batches, but not blob versions or soft
delete: it accepts `include=versions,deleted` and ignores it, and it stores a delete-retention
policy and returns it, yet deletes permanently. So versions and per-sub-request 5xx answers are
tested against a container double that answers what Azure would; the soft-delete report is
tested by setting the retention policy on Azurite itself, which `settings()` reads back.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

import pytest
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobServiceClient, ContainerClient, RetentionPolicy

from purge.pipeline import purge_prefix
from purge.stores.azure import (
    MAX_BATCH_SUBREQUESTS,
    AzureSettingsUnreadableError,
    AzureStagingStore,
    AzureStoreConfigError,
)
from purge.stores.base import StoredObject

pytest_plugins = ["tests.azurite_server"]

BASE = "staging/"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@pytest.fixture
def store(azure_service: BlobServiceClient, azure_container: ContainerClient) -> AzureStagingStore:
    return AzureStagingStore(azure_container.container_name, BASE, service=azure_service)


@pytest.fixture
def batch_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of sub-requests in every blob batch the SDK is asked to send."""
    sizes: list[int] = []
    original = ContainerClient.delete_blobs

    def spy(self: ContainerClient, *blobs: Any, **kwargs: Any) -> Iterator[Any]:
        sizes.append(len(blobs))
        return original(self, *blobs, **kwargs)

    monkeypatch.setattr(ContainerClient, "delete_blobs", spy)
    return sizes


def write(store: AzureStagingStore, key: str, data: bytes = b"x") -> None:
    with store.open_write(key) as handle:
        handle.write(data)


def snapshot(container: ContainerClient, key: str) -> str:
    return str(container.get_blob_client(BASE + key).create_snapshot()["snapshot"])


def everything_under(container: ContainerClient, name_prefix: str) -> list[tuple[str, str]]:
    """What the service holds under a name prefix, asked directly, not through the store."""
    blobs = container.list_blobs(
        name_starts_with=name_prefix, include=["snapshots", "versions", "deleted"]
    )
    return sorted((blob.name, blob.snapshot or blob.version_id or "") for blob in blobs)


def manifest_sha256(entries: list[tuple[str, str]]) -> str:
    lines = "".join(f"{key}\t{version}\n" for key, version in sorted(entries))
    return hashlib.sha256(lines.encode()).hexdigest()


# --- writes and reads ---------------------------------------------------------------------


def test_local_path_is_named_like_the_key_in_a_private_directory(store: AzureStagingStore) -> None:
    """The download and its directory go on exit (that it is removed is a contract test)."""
    write(store, "runs/r1/records.jsonl", b'{"id": 1}\n')
    with store.local_path("runs/r1/records.jsonl") as path:
        assert path.name == "records.jsonl"
        assert path.parent.stat().st_mode & 0o777 == 0o700
    assert not path.parent.exists()


# --- purging ------------------------------------------------------------------------------


def test_blobs_with_snapshots_are_all_gone(
    store: AzureStagingStore, azure_container: ContainerClient
) -> None:
    expected: list[tuple[str, str]] = []
    for i in range(5):
        key = f"runs/r1/part-{i}.jsonl"
        write(store, key, b"x" * (i + 1))
        expected.append((key, ""))
        expected += [(key, "snapshot:" + snapshot(azure_container, key)) for _ in range(2)]

    listed = list(store.list("runs/r1/"))
    assert [(obj.key, obj.version_id or "") for obj in listed] == sorted(expected)

    receipt = purge_prefix(store, "runs/r1/", receipt_id="r1")

    assert receipt.verified_empty
    assert receipt.remaining == 0
    assert receipt.objects_deleted == 15
    assert receipt.versions_deleted == 10  # the snapshots: each carries a version id
    assert receipt.manifest_sha256 == manifest_sha256(expected)
    assert receipt.target == f"az://{azure_container.container_name}/{BASE}runs/r1/"
    assert everything_under(azure_container, BASE + "runs/r1/") == []


def test_snapshots_apart_from_their_base_blob_are_still_all_gone(
    store: AzureStagingStore, azure_container: ContainerClient
) -> None:
    """batch_size=1 puts each snapshot in a delete call of its own, after its base blob's."""
    for key in ("runs/r1/a", "runs/r1/b"):
        write(store, key)
        snapshot(azure_container, key)
        snapshot(azure_container, key)

    receipt = purge_prefix(store, "runs/r1/", receipt_id="r1", batch_size=1)

    assert receipt.verified_empty, receipt.failures
    assert receipt.objects_deleted == 6
    assert everything_under(azure_container, BASE) == []


def test_many_blobs_go_in_batches_of_at_most_256(
    store: AzureStagingStore, azure_container: ContainerClient, batch_sizes: list[int]
) -> None:
    keys = [f"runs/big/part-{i:05d}" for i in range(600)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda key: azure_container.upload_blob(BASE + key, b"x"), keys))
    snapshot(azure_container, keys[0])

    receipt = purge_prefix(store, "runs/big/", receipt_id="r1")

    assert receipt.verified_empty
    assert receipt.objects_deleted == 601
    assert receipt.bytes_deleted == 601
    assert everything_under(azure_container, BASE) == []
    assert batch_sizes, "no blob batch was sent"
    assert max(batch_sizes) <= MAX_BATCH_SUBREQUESTS
    # 600 base-blob deletes; the snapshot goes with its base blob, without a sub-request.
    assert sum(batch_sizes) == 600
    assert len(batch_sizes) >= 3


def test_leased_blob_is_reported_and_everything_else_is_deleted(
    store: AzureStagingStore, azure_container: ContainerClient
) -> None:
    for i in range(4):
        write(store, f"runs/r1/part-{i}")
    lease = azure_container.get_blob_client(BASE + "runs/r1/part-2").acquire_lease()

    receipt = purge_prefix(store, "runs/r1/", receipt_id="r1")

    assert not receipt.verified_empty
    assert receipt.objects_failed == 1
    assert receipt.objects_deleted == 3
    assert receipt.remaining == 1
    [failure] = receipt.failures
    assert failure.startswith("runs/r1/part-2: HTTP 412 LeaseIdMissing")
    assert everything_under(azure_container, BASE) == [(BASE + "runs/r1/part-2", "")]

    lease.break_lease(lease_break_period=0)
    again = purge_prefix(store, "runs/r1/", receipt_id="r1-retry")
    assert again.verified_empty
    assert again.objects_deleted == 1
    assert everything_under(azure_container, BASE) == []


def test_non_canonical_listed_names_are_deleted_but_dot_segments_refused(
    store: AzureStagingStore, azure_container: ContainerClient, batch_sizes: list[int]
) -> None:
    # Tools create "directory" marker blobs and double slashes; a purge must remove them too.
    for name in ("runs/r1/dir/", "runs/r1/a//b"):
        azure_container.upload_blob(BASE + name, b"x")
    receipt = purge_prefix(store, "runs/r1/", receipt_id="r1")
    assert receipt.verified_empty
    assert receipt.objects_deleted == 2

    # A '..' could be collapsed by URL normalisation into a blob outside the prefix.
    result = store.delete([StoredObject("runs/r1/../../elsewhere", 1)])
    assert result.deleted == []
    assert "'..'" in result.failed[0][1]
    assert sum(batch_sizes) == 2  # the refused name never reached the service


# --- soft delete, read from the service properties ----------------------------------------


@pytest.fixture
def retention(azure_service: BlobServiceClient) -> Iterator[Callable[[RetentionPolicy], None]]:
    """Set the account's delete-retention policy on Azurite, and switch it off afterwards."""

    def set_policy(policy: RetentionPolicy) -> None:
        azure_service.set_service_properties(delete_retention_policy=policy)

    try:
        yield set_policy
    finally:
        set_policy(RetentionPolicy(enabled=False))


def test_soft_delete_is_reported_with_its_recovery_deadline(
    store: AzureStagingStore, retention: Callable[[RetentionPolicy], None]
) -> None:
    retention(RetentionPolicy(enabled=True, days=7))
    deleted_at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

    assert store.settings()["soft_delete"] == "enabled (7 days)"
    assert store.recoverable_until(deleted_at) == deleted_at + timedelta(days=7)

    write(store, "runs/r1/a")
    receipt = purge_prefix(store, "runs/r1/", receipt_id="r1")
    assert receipt.store_settings["soft_delete"] == "enabled (7 days)"
    assert receipt.store_settings["kind"] == "azure"
    # Azurite deletes permanently whatever the policy says, so nothing is recoverable here.
    assert list(store.list_recoverable("runs/r1/")) == []

    retention(RetentionPolicy(enabled=False))
    assert store.settings()["soft_delete"] == "disabled"
    assert store.recoverable_until(deleted_at) is None
    with pytest.raises(ValueError, match="timezone"):
        store.recoverable_until(datetime(2026, 1, 2))


def test_unreadable_soft_delete_setting_is_unknown_never_off(
    azure_service: BlobServiceClient, azure_container: ContainerClient
) -> None:
    @dataclass
    class PropertiesForbidden:
        """The real service, except that service properties answer 403, as they do for a
        SAS or a role without account-level read."""

        real: BlobServiceClient

        def get_container_client(self, name: str) -> ContainerClient:
            return self.real.get_container_client(name)

        def get_service_properties(self) -> dict[str, Any]:
            raise _http_error(403, "AuthorizationPermissionMismatch")

    service = cast(BlobServiceClient, PropertiesForbidden(azure_service))
    store = AzureStagingStore(azure_container.container_name, BASE, service=service)

    assert store.settings()["soft_delete"] == (
        "unknown (service properties unreadable: HTTP 403 AuthorizationPermissionMismatch)"
    )
    with pytest.raises(AzureSettingsUnreadableError):
        store.recoverable_until(datetime.now(UTC))


# --- construction -------------------------------------------------------------------------


def test_from_environment_prefers_the_connection_string(
    azurite_connection_string: str, azure_container: ContainerClient
) -> None:
    store = AzureStagingStore.from_environment(
        azure_container.container_name,
        "staging",
        connection_string=azurite_connection_string,
        account_url="http://127.0.0.1:9/unused",
    )
    assert store.uri == f"az://{azure_container.container_name}/staging/"
    write(store, "runs/r1/a")
    assert store.exists("runs/r1/a")


def test_from_environment_with_account_url_and_credential(
    azurite_connection_string: str, azure_container: ContainerClient
) -> None:
    parts = dict(part.split("=", 1) for part in azurite_connection_string.split(";") if part)
    store = AzureStagingStore.from_environment(
        azure_container.container_name,
        BASE,
        account_url=parts["BlobEndpoint"],
        credential=AzureNamedKeyCredential(parts["AccountName"], parts["AccountKey"]),
    )
    write(store, "runs/r1/a")
    assert [obj.key for obj in store.list("runs/")] == ["runs/r1/a"]


def test_construction_refuses_missing_credentials_and_bad_names(
    azure_service: BlobServiceClient,
) -> None:
    with pytest.raises(AzureStoreConfigError, match="connection string"):
        AzureStagingStore.from_environment("staging", connection_string=None, account_url=None)
    with pytest.raises(AzureStoreConfigError, match="container name"):
        AzureStagingStore("Not_A_Container", service=azure_service)
    assert AzureStagingStore("staging", "", service=azure_service).uri == "az://staging/"


def test_listing_falls_back_when_the_service_rejects_versions(
    store: AzureStagingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(store, "runs/r1/a")
    original = ContainerClient.list_blobs

    def rejecting(self: ContainerClient, *args: Any, **kwargs: Any) -> Any:
        if "versions" in (kwargs.get("include") or []):
            raise _http_error(400, "InvalidQueryParameterValue")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ContainerClient, "list_blobs", rejecting)

    assert [obj.key for obj in store.list("runs/r1/")] == ["runs/r1/a"]
    assert store.settings()["listing"] == (
        "blobs+snapshots (snapshots+versions rejected (InvalidQueryParameterValue))"
    )


# --- what Azurite cannot answer: versions, and 5xx sub-responses --------------------------


@dataclass
class _Paged:
    """What list_blobs returns: iterable, and page by page."""

    items: list[SimpleNamespace]

    def __iter__(self) -> Iterator[SimpleNamespace]:
        return iter(self.items)

    def by_page(self) -> Iterator[Iterator[SimpleNamespace]]:
        return iter([iter(self.items)])


@dataclass
class ContainerDouble:
    """Answers list_blobs from `blobs` and delete_blobs per blob from `answer`, and records
    every batch, for the answers Azurite never gives."""

    blobs: list[SimpleNamespace] = field(default_factory=list)
    answer: Callable[[dict[str, Any]], tuple[int, str | None]] = lambda _blob: (202, None)
    batches: list[list[dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def list_blobs(self, name_starts_with: str, include: list[str]) -> Any:
        return _Paged([blob for blob in self.blobs if blob.name.startswith(name_starts_with)])

    def delete_blobs(self, *blobs: dict[str, Any], raise_on_any_failure: bool) -> Iterator[Any]:
        assert raise_on_any_failure is False
        with self.lock:
            self.batches.append(list(blobs))
        parts = []
        for blob in blobs:
            status, code = self.answer(blob)
            headers = {"x-ms-error-code": code} if code else {}
            parts.append(SimpleNamespace(status_code=status, headers=headers, reason="why"))
        return iter(parts)


def double_store(container: ContainerDouble) -> AzureStagingStore:
    service = SimpleNamespace(get_container_client=lambda _name: container)
    return AzureStagingStore("staging", BASE, service=cast(BlobServiceClient, service))


def blob(name: str, size: int = 1, **kwargs: Any) -> SimpleNamespace:
    fields = {"snapshot": None, "version_id": None, "is_current_version": None, "deleted": None}
    return SimpleNamespace(name=BASE + name, size=size, **(fields | kwargs))


def test_versions_snapshots_and_soft_deleted_entries_are_listed_as_azure_has_them() -> None:
    container = ContainerDouble(
        blobs=[
            blob("runs/r1/a", version_id="2026-01-03T00:00:00.0000000Z", is_current_version=True),
            blob("runs/r1/a", version_id="2026-01-01T00:00:00.0000000Z"),
            blob("runs/r1/a", snapshot="2026-01-02T00:00:00.0000000Z"),
            blob("runs/r1/a", version_id="2026-01-02T00:00:00.0000000Z"),
            blob("runs/r1/b", deleted=True),
            blob("runs/r1/c"),
        ]
    )
    store = double_store(container)

    assert [(obj.key, obj.version_id) for obj in store.list("runs/r1/")] == [
        ("runs/r1/a", "current-version:2026-01-03T00:00:00.0000000Z"),
        ("runs/r1/a", "snapshot:2026-01-02T00:00:00.0000000Z"),
        ("runs/r1/a", "version:2026-01-01T00:00:00.0000000Z"),
        ("runs/r1/a", "version:2026-01-02T00:00:00.0000000Z"),
        ("runs/r1/c", None),
    ]
    assert [obj.key for obj in store.list_recoverable("runs/r1/")] == ["runs/r1/b"]


def test_current_version_goes_after_its_base_blob_and_versions_by_id() -> None:
    container = ContainerDouble()
    store = double_store(container)
    objects = [
        StoredObject("runs/r1/a", 1, "current-version:v3"),
        StoredObject("runs/r1/a", 1, "snapshot:s1"),
        StoredObject("runs/r1/a", 1, "version:v1"),
        StoredObject("runs/r1/b", 1),
        StoredObject("runs/r1/lone", 1, "snapshot:s2"),
    ]

    result = store.delete(objects)

    assert result.deleted == objects
    assert container.batches == [
        [
            {"name": BASE + "runs/r1/a", "delete_snapshots": "include"},
            {"name": BASE + "runs/r1/a", "version_id": "v1"},
            {"name": BASE + "runs/r1/b", "delete_snapshots": "include"},
            {"name": BASE + "runs/r1/lone", "snapshot": "s2"},
        ],
        [{"name": BASE + "runs/r1/a", "version_id": "v3"}],
    ]


def test_a_failed_base_blob_keeps_its_current_version_and_snapshots_are_tried_alone() -> None:
    def answer(sub: dict[str, Any]) -> tuple[int, str | None]:
        return (412, "LeaseIdMissing") if "delete_snapshots" in sub else (202, None)

    container = ContainerDouble(answer=answer)
    store = double_store(container)
    current = StoredObject("runs/r1/a", 1, "current-version:v3")
    snap = StoredObject("runs/r1/a", 1, "snapshot:s1")

    result = store.delete([current, snap])

    assert result.failed == [(current, "HTTP 412 LeaseIdMissing: why")]
    assert result.deleted == [snap]
    assert container.batches[1] == [{"name": BASE + "runs/r1/a", "snapshot": "s1"}]


def test_every_sub_response_is_judged_on_its_own() -> None:
    answers = {
        "ok": (202, None),
        "gone": (404, "BlobNotFound"),
        "busy": (503, "ServerBusy"),
        "internal": (500, "InternalError"),
        "forbidden": (403, "AuthorizationPermissionMismatch"),
        "immutable": (409, "BlobImmutableDueToPolicy"),
        "held": (409, "BlobImmutableDueToLegalHold"),
        "leased": (412, "LeaseIdMissing"),
    }
    container = ContainerDouble(answer=lambda sub: answers[sub["name"].rsplit("/", 1)[1]])
    store = double_store(container)
    objects = {name: StoredObject(f"runs/r1/{name}", 1) for name in answers}

    result = store.delete(list(objects.values()))

    assert [obj.key.rsplit("/", 1)[1] for obj in result.deleted] == ["ok", "gone"]
    assert {obj.key.rsplit("/", 1)[1]: reason for obj, reason in result.retry} == {
        "busy": "HTTP 503 ServerBusy: why",
        "internal": "HTTP 500 InternalError: why",
    }
    assert {obj.key.rsplit("/", 1)[1]: reason for obj, reason in result.failed} == {
        "forbidden": "HTTP 403 AuthorizationPermissionMismatch: why",
        "immutable": "HTTP 409 BlobImmutableDueToPolicy: why",
        "held": "HTTP 409 BlobImmutableDueToLegalHold: why",
        "leased": "HTTP 412 LeaseIdMissing: why",
    }
    assert result.throttled


def test_a_short_or_failed_batch_answer_is_retried_never_counted() -> None:
    @dataclass
    class Short(ContainerDouble):
        def delete_blobs(self, *blobs: dict[str, Any], raise_on_any_failure: bool) -> Any:
            return list(super().delete_blobs(*blobs, raise_on_any_failure=False))[:1]

    objects = [StoredObject(f"runs/r1/{i}", 1) for i in range(3)]
    short = double_store(Short()).delete(objects)
    assert short.deleted == objects[:1]
    assert [obj for obj, _reason in short.retry] == objects[1:]
    assert not short.throttled

    @dataclass
    class Busy(ContainerDouble):
        def delete_blobs(self, *blobs: dict[str, Any], raise_on_any_failure: bool) -> Any:
            raise _http_error(503, "ServerBusy")

    busy = double_store(Busy()).delete(objects)
    assert busy.deleted == []
    assert [obj for obj, _reason in busy.retry] == objects
    assert busy.throttled

    @dataclass
    class NotFound(ContainerDouble):
        def delete_blobs(self, *blobs: dict[str, Any], raise_on_any_failure: bool) -> Any:
            raise _http_error(404, "ResourceNotFound")

    lost = double_store(NotFound()).delete(objects)
    assert lost.deleted == []
    assert [obj for obj, _reason in lost.failed] == objects


def test_a_big_delete_call_is_split_into_batches_of_256() -> None:
    container = ContainerDouble()
    objects = [StoredObject(f"runs/r1/{i:04d}", 1) for i in range(1000)]

    result = double_store(container).delete(objects)

    assert len(result.deleted) == 1000
    assert [len(batch) for batch in container.batches] == [256, 256, 256, 232]


def _http_error(status: int, code: str) -> HttpResponseError:
    error = HttpResponseError(message=f"{status} {code}")
    error.status_code = status
    error.error_code = code
    error.reason = code
    return error
