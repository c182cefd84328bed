"""What only the S3 staging store has, against moto's S3 server: versions, delete markers, null
versions, Object Lock, multipart uploads, DeleteObjects batches, per-key errors and throttling.
What every store promises is in tests/test_staging_store_contract.py."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest
from botocore.client import BaseClient

from purge.pipeline import AdaptiveConcurrency, DeleteRetryPolicy, purge_prefix
from purge.stores.base import StoredObject, UnsafeKeyError
from purge.stores.s3 import MAX_KEYS_PER_DELETE, S3StagingStore
from tests.s3_server import (
    DeleteObjectsRecorder,
    KeyErrorsOnce,
    ThrottleFirstDeletes,
    bucket,
    error_response,
    free_port,
    make_client,
    s3_client,
    s3_endpoint,
    seed_objects,
)

__all__ = ["bucket", "s3_client", "s3_endpoint"]  # fixtures, imported for pytest

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
FAST_RETRIES = DeleteRetryPolicy(max_attempts=8, base_delay=0.005, max_delay=0.05)

MakeBucket = Callable[[str], str]


def put(client: BaseClient, bucket_name: str, key: str, body: bytes = b"x") -> None:
    client.put_object(Bucket=bucket_name, Key=key, Body=body)


def all_versions(client: BaseClient, bucket_name: str, prefix: str = "") -> list[tuple[str, str]]:
    """Every (key, version id) S3 holds under the prefix, delete markers included."""
    found = []
    paginator = client.get_paginator("list_object_versions")
    for page in paginator.paginate(Bucket=bucket_name, Prefix=prefix):
        for entry in page.get("Versions", []) + page.get("DeleteMarkers", []):
            found.append((entry["Key"], entry["VersionId"]))
    return sorted(found)


def independent_manifest_sha256(entries: list[tuple[str, str]]) -> str:
    lines = "".join(f"{key}\t{version}\n" for key, version in sorted(entries))
    return hashlib.sha256(lines.encode()).hexdigest()


def stage_versions(client: BaseClient, bucket_name: str, keys: list[str]) -> None:
    """Several versions and delete markers per key: two writes, a delete, a write, a delete."""
    for key in keys:
        put(client, bucket_name, key, b"v1")
        put(client, bucket_name, key, b"v2-longer")
        client.delete_object(Bucket=bucket_name, Key=key)
        put(client, bucket_name, key, b"v3")
        client.delete_object(Bucket=bucket_name, Key=key)


# --- settings, reads and writes -------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "versioning", "object_lock"),
    [
        ("plain", "none", "none"),
        ("versioned", "Enabled", "none"),
        ("suspended", "Suspended", "none"),
        ("object_lock", "Enabled", "enabled"),
    ],
)
def test_settings_report_versioning_and_object_lock(
    s3_client: BaseClient, bucket: MakeBucket, kind: str, versioning: str, object_lock: str
) -> None:
    name = bucket(kind)
    settings = S3StagingStore(name, client=s3_client).settings()
    assert settings == {
        "kind": "s3",
        "bucket": name,
        "versioning": versioning,
        "object_lock": object_lock,
    }


def test_object_lock_default_retention_is_reported(
    s3_client: BaseClient, bucket: MakeBucket
) -> None:
    name = bucket("object_lock")
    s3_client.put_object_lock_configuration(
        Bucket=name,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 3}},
        },
    )
    settings = S3StagingStore(name, client=s3_client).settings()
    assert settings["object_lock_default_retention"] == "GOVERNANCE 3 days"


def test_large_write_goes_through_multipart(s3_client: BaseClient, bucket: MakeBucket) -> None:
    store = S3StagingStore(bucket("plain"), client=s3_client)
    data = bytes(range(256)) * (40 * 1024)  # 10 MiB: past the spool size and multipart limit
    with store.open_write("r/big.bin") as handle:
        handle.write(data)
    with store.local_path("r/big.bin") as path:
        assert path.read_bytes() == data
        assert path.name.endswith(".bin")
    assert not path.exists()


def test_a_key_whose_latest_version_is_a_delete_marker_is_not_found(
    s3_client: BaseClient, bucket: MakeBucket
) -> None:
    store = S3StagingStore(bucket("versioned"), client=s3_client)
    put(s3_client, store.bucket, "r/gone")
    s3_client.delete_object(Bucket=store.bucket, Key="r/gone")  # latest is a delete marker
    assert not store.exists("r/gone")
    with pytest.raises(FileNotFoundError), store.open_read("r/gone"):
        pass
    with pytest.raises(FileNotFoundError), store.local_path("r/gone"):
        pass


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "a/"])
def test_unsafe_keys_are_refused_before_any_call(
    s3_client: BaseClient, bucket: MakeBucket, key: str
) -> None:
    store = S3StagingStore(bucket("plain"), client=s3_client)
    recorder: list[str] = []
    s3_client.meta.events.register("before-send.s3", lambda **kw: recorder.append("sent"))
    with pytest.raises(UnsafeKeyError), store.open_write(key):
        pass
    assert recorder == []


def test_default_client_is_built_from_the_aws_environment(
    s3_endpoint: str, s3_client: BaseClient, bucket: MakeBucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = bucket("plain")
    for variable, value in {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    store = S3StagingStore(name, "base/")
    with store.open_write("r/a") as handle:
        handle.write(b"1")
    assert all_versions(s3_client, name) == [("base/r/a", "null")]
    # Throttles must reach the purge pipeline, so the delete client does not retry them.
    assert store._delete_client.meta.config.retries["total_max_attempts"] == 1
    assert purge_prefix(store, "r/", receipt_id="r").verified_empty
    assert all_versions(s3_client, name) == []


# --- listing --------------------------------------------------------------------------------


def test_listing_yields_every_version_and_marker_in_order(
    s3_client: BaseClient, bucket: MakeBucket
) -> None:
    name = bucket("versioned")
    keys = ["p/b", "p/a-c", "p/a/b", "p/a0"]
    stage_versions(s3_client, name, keys)
    put(s3_client, name, "q/outside")
    store = S3StagingStore(name, client=s3_client)

    listed = list(store.list("p/"))

    pairs = [(obj.key, obj.version_id or "") for obj in listed]
    assert pairs == sorted(pairs) == all_versions(s3_client, name, "p/")
    assert len(listed) == 5 * len(keys)
    markers = {vid for key in keys for vid in _marker_ids(s3_client, name, key)}
    assert {obj.size for obj in listed if obj.version_id in markers} == {0}
    assert {obj.size for obj in listed if obj.version_id not in markers} == {2, 9}


def _marker_ids(client: BaseClient, bucket_name: str, key: str) -> list[str]:
    response = client.list_object_versions(Bucket=bucket_name, Prefix=key)
    return [m["VersionId"] for m in response.get("DeleteMarkers", []) if m["Key"] == key]


def test_listing_gathers_one_keys_versions_across_pages(
    s3_client: BaseClient, bucket: MakeBucket
) -> None:
    name = bucket("versioned")
    # S3 pages hold 1000 entries: the first page ends inside the versions of "p/many".
    seed_objects(name, [f"p/a{i:03d}" for i in range(990)] + ["p/many"] * 30 + ["p/z"] * 2)
    first_page = s3_client.list_object_versions(Bucket=name, Prefix="p/", MaxKeys=1000)
    assert first_page["NextKeyMarker"] == "p/many"
    store = S3StagingStore(name, client=s3_client)
    pairs = [(obj.key, obj.version_id or "") for obj in store.list("p/")]
    assert len(pairs) == len(set(pairs)) == 1022
    assert pairs == sorted(pairs) == all_versions(s3_client, name, "p/")


def test_a_base_prefix_is_normalised(s3_client: BaseClient, bucket: MakeBucket) -> None:
    """That a base confines the store is a contract test; here, that "/tenant//" means
    "tenant/" in the store's URI, its listing and its receipts."""
    name = bucket("plain")
    for key in ["tenant/r/a", "tenant/r/b"]:
        put(s3_client, name, key)
    store = S3StagingStore(name, "/tenant//", client=s3_client)
    assert store.uri == f"s3://{name}/tenant/"
    assert [obj.key for obj in store.list("r")] == ["r/a", "r/b"]
    receipt = purge_prefix(store, "r/", receipt_id="r")
    assert receipt.target == f"s3://{name}/tenant/r/"
    assert receipt.verified_empty and all_versions(s3_client, name) == []


# --- purging --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["plain", "versioned"])
def test_purge_leaves_no_version_and_no_marker(
    s3_client: BaseClient, bucket: MakeBucket, kind: str
) -> None:
    name = bucket(kind)
    keys = [f"runs/conn1/stream{i}/part.jsonl" for i in range(5)]
    if kind == "versioned":
        stage_versions(s3_client, name, keys)
    else:
        for key in keys:
            put(s3_client, name, key, b"v2-longer")
    for sibling in ["runs/conn10/a", "runs/conn1.bak", "runs/conn"]:
        put(s3_client, name, sibling)
    before = all_versions(s3_client, name, "runs/conn1/")
    store = S3StagingStore(name, client=s3_client)

    receipt = purge_prefix(store, "runs/conn1", receipt_id="rcpt")

    assert all_versions(s3_client, name, "runs/conn1/") == []
    assert [k for k, _ in all_versions(s3_client, name)] == [
        "runs/conn",
        "runs/conn1.bak",
        "runs/conn10/a",
    ]
    assert receipt.verified_empty
    assert receipt.remaining == 0
    assert receipt.failures == []
    assert receipt.objects_deleted == len(before) == (25 if kind == "versioned" else 5)
    if kind == "versioned":
        assert receipt.versions_deleted == 25
        assert receipt.bytes_deleted == 5 * (2 + 9 + 2)
        assert receipt.manifest_sha256 == independent_manifest_sha256(before)
    else:
        assert receipt.versions_deleted == 0
        assert receipt.bytes_deleted == 5 * 9
        assert receipt.manifest_sha256 == independent_manifest_sha256([(key, "") for key in keys])
    assert receipt.store_settings["versioning"] == ("Enabled" if kind == "versioned" else "none")
    assert receipt.delete_calls == 1


def test_null_versions_of_a_suspended_bucket_really_go(
    s3_client: BaseClient, bucket: MakeBucket
) -> None:
    name = bucket("plain")
    put(s3_client, name, "r/before-versioning")  # the null version, from unversioned days
    s3_client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    put(s3_client, name, "r/before-versioning", b"v2")
    put(s3_client, name, "r/versioned")
    s3_client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Suspended"})
    put(s3_client, name, "r/while-suspended")  # a null version again
    assert ("r/while-suspended", "null") in all_versions(s3_client, name)
    store = S3StagingStore(name, client=s3_client)

    receipt = purge_prefix(store, "r/", receipt_id="r")

    # Without VersionId "null", the suspended bucket would have swapped them for markers.
    assert all_versions(s3_client, name) == []
    assert receipt.verified_empty
    assert receipt.objects_deleted == 4
    assert receipt.versions_deleted == 2  # the "null" versions count as unversioned


def test_keys_only_other_tools_make_are_purged_with_every_version(
    s3_client: BaseClient, bucket: MakeBucket
) -> None:
    """A folder marker and a double slash are keys the store never writes (awkward keys it does
    write are contract tests), but other tools do, and a purge must remove them."""
    name = bucket("versioned")
    prefix = "runs/odd keys/"
    tails = ["folder-marker/", "double//slash"]
    for tail in tails:
        put(s3_client, name, prefix + tail)
        put(s3_client, name, prefix + tail, b"second version")
    put(s3_client, name, "runs/odd keys-sibling/x")
    store = S3StagingStore(name, client=s3_client)

    receipt = purge_prefix(store, prefix, receipt_id="r")

    assert all_versions(s3_client, name, prefix) == []
    assert [k for k, _ in all_versions(s3_client, name)] == ["runs/odd keys-sibling/x"]
    assert receipt.objects_deleted == 2 * len(tails)
    assert receipt.verified_empty


def test_a_legal_hold_is_reported_and_everything_else_goes(
    s3_client: BaseClient, bucket: MakeBucket
) -> None:
    name = bucket("object_lock")
    keys = [f"runs/r1/{i}" for i in range(6)]
    for key in keys:
        put(s3_client, name, key)
        put(s3_client, name, key, b"v2")
    held_version = s3_client.put_object(Bucket=name, Key="runs/r1/held", Body=b"h")["VersionId"]
    s3_client.put_object_legal_hold(Bucket=name, Key="runs/r1/held", LegalHold={"Status": "ON"})
    store = S3StagingStore(name, client=s3_client)

    receipt = purge_prefix(store, "runs/r1/", receipt_id="r")

    assert all_versions(s3_client, name) == [("runs/r1/held", held_version)]
    assert receipt.verified_empty is False
    assert receipt.remaining == 1
    assert receipt.objects_failed == 1
    assert receipt.objects_deleted == 12
    assert receipt.retries == 0
    (failure,) = receipt.failures
    assert failure.startswith(f"runs/r1/held (version {held_version}): AccessDenied")
    assert "object lock" in failure
    assert receipt.store_settings["object_lock"] == "enabled"


def test_unfinished_multipart_uploads_are_aborted(
    s3_client: BaseClient, bucket: MakeBucket
) -> None:
    name = bucket("versioned")
    put(s3_client, name, "runs/m/done")
    for key in ["runs/m/crashed-upload", "runs/m10/other-upload"]:
        upload = s3_client.create_multipart_upload(Bucket=name, Key=key)
        s3_client.upload_part(
            Bucket=name, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"part"
        )
    store = S3StagingStore(name, client=s3_client)

    receipt = purge_prefix(store, "runs/m/", receipt_id="r")

    assert receipt.verified_empty
    uploads = s3_client.list_multipart_uploads(Bucket=name).get("Uploads", [])
    assert [upload["Key"] for upload in uploads] == ["runs/m10/other-upload"]


def test_ten_thousand_objects_in_requests_of_at_most_1000_keys(
    s3_client: BaseClient, bucket: MakeBucket
) -> None:
    name = bucket("plain")
    keys = [f"runs/big/{i:05d}.jsonl" for i in range(10_000)]
    seed_objects(name, [*keys, "runs/big0/keep"])
    recorder = DeleteObjectsRecorder().attach(s3_client)
    store = S3StagingStore(name, client=s3_client)
    progress: list[int] = []

    receipt = purge_prefix(store, "runs/big/", receipt_id="r", on_progress=progress.append)

    assert receipt.verified_empty
    assert receipt.objects_deleted == 10_000
    assert receipt.manifest_sha256 == independent_manifest_sha256([(k, "") for k in keys])
    assert recorder.requests == 10
    assert max(recorder.key_counts) <= MAX_KEYS_PER_DELETE
    assert sum(recorder.key_counts) == 10_000
    assert max(recorder.in_flight_at_send) <= store.delete_concurrency
    assert progress == sorted(progress) and progress[-1] == 10_000
    assert [k for k, _ in all_versions(s3_client, name)] == ["runs/big0/keep"]


def test_the_store_splits_a_large_delete_itself(s3_client: BaseClient, bucket: MakeBucket) -> None:
    name = bucket("versioned")
    seed_objects(name, [f"r/{i:04d}" for i in range(2001)])
    recorder = DeleteObjectsRecorder().attach(s3_client)
    store = S3StagingStore(name, client=s3_client)

    result = store.delete(list(store.list("r/")))

    assert recorder.key_counts == [1000, 1000, 1]
    assert len(result.deleted) == 2001
    assert result.failed == result.retry == []
    assert all_versions(s3_client, name) == []


def test_throttled_requests_lower_concurrency_and_are_retried(
    s3_client: BaseClient, bucket: MakeBucket
) -> None:
    name = bucket("versioned")
    seed_objects(name, [f"runs/t/{i:04d}" for i in range(3000)])
    throttle = ThrottleFirstDeletes(4).attach(s3_client)
    recorder = DeleteObjectsRecorder().attach(s3_client)
    limiter = AdaptiveConcurrency(8)
    store = S3StagingStore(name, client=s3_client)

    receipt = purge_prefix(
        store,
        "runs/t/",
        receipt_id="r",
        batch_size=200,
        retry_policy=FAST_RETRIES,
        limiter=limiter,
    )

    assert throttle.throttled == 4
    assert receipt.verified_empty
    assert receipt.objects_deleted == 3000
    assert receipt.throttles == 4
    assert receipt.retries == 4 * 200
    assert receipt.delete_calls == 15 + 4
    assert limiter.throttles == 4
    assert limiter.lowest <= 4  # halved at least once: fewer requests in flight
    assert limiter.history[0] == 8
    assert max(recorder.in_flight_at_send) <= 8
    assert all_versions(s3_client, name) == []


def test_per_key_transient_errors_are_retried_to_success(
    s3_client: BaseClient, bucket: MakeBucket
) -> None:
    name = bucket("versioned")
    keys = [f"runs/e/{i:03d}" for i in range(300)]
    seed_objects(name, keys)

    def code_for(key: str) -> str | None:
        number = int(key.rsplit("/", 1)[1])
        return {0: "InternalError", 1: "SlowDown"}.get(number % 10)

    errors = KeyErrorsOnce(code_for, times=2).attach(s3_client)
    limiter = AdaptiveConcurrency(4)
    store = S3StagingStore(name, client=s3_client)

    receipt = purge_prefix(
        store,
        "runs/e/",
        receipt_id="r",
        batch_size=50,
        retry_policy=FAST_RETRIES,
        limiter=limiter,
    )

    assert errors.injected == 2 * 60
    assert receipt.retries == 2 * 60
    assert receipt.verified_empty
    assert receipt.objects_deleted == 300
    assert receipt.failures == []
    assert limiter.throttles >= 1  # per-key SlowDown counts as throttling
    assert all_versions(s3_client, name) == []


def test_transient_errors_that_never_end_are_reported_after_the_last_attempt(
    s3_client: BaseClient, bucket: MakeBucket
) -> None:
    name = bucket("plain")
    seed_objects(name, ["runs/s/a", "runs/s/stuck", "runs/s/z"])
    KeyErrorsOnce(lambda key: "InternalError" if key.endswith("stuck") else None, 99).attach(
        s3_client
    )
    store = S3StagingStore(name, client=s3_client)
    policy = DeleteRetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.01)

    receipt = purge_prefix(store, "runs/s/", receipt_id="r", retry_policy=policy)

    assert receipt.failures == ["runs/s/stuck: gave up after 3 attempts: InternalError: injected"]
    assert receipt.retries == 2
    assert receipt.objects_deleted == 2
    assert receipt.remaining == 1
    assert not receipt.verified_empty


def test_request_level_failures_are_classified(s3_client: BaseClient, s3_endpoint: str) -> None:
    objects = [StoredObject("r/a", 1), StoredObject("r/b", 1, "v1")]
    missing = S3StagingStore("sluice-no-such-bucket", client=s3_client)
    result = missing.delete(objects)
    assert [reason.split(":")[0] for _, reason in result.failed] == ["NoSuchBucket"] * 2
    assert result.deleted == result.retry == []

    for status, code, throttled in [(500, "InternalError", False), (503, "SlowDown", True)]:
        answering = make_client(s3_endpoint)
        answering.meta.events.register(
            "before-send.s3.DeleteObjects",
            lambda request, status=status, code=code, **_: error_response(
                request, status, code, "injected"
            ),
        )
        result = S3StagingStore("any-bucket", client=answering).delete(objects)
        assert [reason for _, reason in result.retry] == [f"{code}: injected"] * 2
        assert result.throttled is throttled
        assert result.deleted == result.failed == []

    unreachable = make_client(f"http://127.0.0.1:{free_port()}", connect_timeout=0.5)
    result = S3StagingStore("any", client=unreachable).delete(objects)
    assert result.failed == [] and len(result.retry) == 2
    assert "EndpointConnectionError" in result.retry[0][1]


def test_already_gone_counts_as_deleted(s3_client: BaseClient, bucket: MakeBucket) -> None:
    name = bucket("versioned")
    seed_objects(name, ["r/a", "r/b"])

    def as_already_gone(parsed: dict[str, Any], **_: Any) -> None:
        # moto reports success for versions that do not exist; S3 may answer NoSuchVersion.
        parsed["Errors"] = [
            {**entry, "Code": "NoSuchVersion", "Message": "gone"} for entry in parsed["Deleted"]
        ]
        parsed["Deleted"] = []

    s3_client.meta.events.register("after-call.s3.DeleteObjects", as_already_gone)
    store = S3StagingStore(name, client=s3_client)
    result = store.delete(list(store.list("r/")))
    assert [obj.key for obj in result.deleted] == ["r/a", "r/b"]
    assert result.failed == result.retry == []
