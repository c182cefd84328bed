"""What the faster purge changed must not cost completeness, against moto's S3 server.

A bucket that never had versioning is listed with ListObjectsV2 (cheaper than ListObjectVersions,
and the same objects there); any other status, unreadable included, still lists every version
and delete marker. The verification listing reads the status again, so versioning turned on in
the middle of a purge is caught, not hidden. Listing timestamps are parsed without dateutil, to
the same instant. The purge service keeps the remote stores it opened, and purges with them
again. None of these tests measures time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import botocore.utils
import pytest
from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from botocore.client import BaseClient

from purge.pipeline import purge_prefix
from purge.stores.s3 import S3StagingStore, _parse_timestamp
from tests.s3_server import (
    DUMMY_CREDENTIALS,
    REGION,
    bucket,
    error_response,
    make_client,
    s3_client,
    s3_endpoint,
    seed_objects,
)
from workers.purging import Purger
from workers.settings import Settings

__all__ = ["bucket", "s3_client", "s3_endpoint"]  # fixtures, imported for pytest

MakeBucket = Callable[[str], str]


def all_versions(client: BaseClient, bucket_name: str, prefix: str = "") -> list[tuple[str, str]]:
    """Every (key, version id) S3 holds under the prefix, delete markers included."""
    found = []
    for page in client.get_paginator("list_object_versions").paginate(
        Bucket=bucket_name, Prefix=prefix
    ):
        for entry in page.get("Versions", []) + page.get("DeleteMarkers", []):
            found.append((entry["Key"], entry["VersionId"]))
    return sorted(found)


def manifest_sha256(entries: list[tuple[str, str]]) -> str:
    lines = "".join(f"{key}\t{version}\n" for key, version in sorted(entries))
    return hashlib.sha256(lines.encode()).hexdigest()


class Operations:
    """The S3 operations a client sends until `stop`."""

    def __init__(self, client: BaseClient) -> None:
        self.sent: list[str] = []
        self._recording = True
        client.meta.events.register("before-call.s3", self._record)

    def _record(self, model: Any, **_: Any) -> None:
        if self._recording:
            self.sent.append(model.name)

    def stop(self) -> None:
        self._recording = False

    def count(self, name: str) -> int:
        return self.sent.count(name)


def test_a_never_versioned_bucket_is_purged_through_list_objects_v2(
    s3_client: BaseClient, bucket: MakeBucket
) -> None:
    name = bucket("plain")
    keys = [f"runs/c1/run-1/part-{i:05d}" for i in range(2_500)]  # three pages
    seed_objects(name, [*keys, "runs/c1/run-10/sibling", "runs/c1/run-1.bak"])
    operations = Operations(s3_client)
    store = S3StagingStore(name, client=s3_client)

    receipt = purge_prefix(store, "runs/c1/run-1/", receipt_id="r")
    operations.stop()

    assert receipt.verified_empty and receipt.remaining == 0
    assert receipt.objects_deleted == 2_500 and receipt.versions_deleted == 0
    # The same manifest as a listing of versions gives: each key with its one, "null", version.
    assert receipt.manifest_sha256 == manifest_sha256([(key, "") for key in keys])
    assert all_versions(s3_client, name) == [
        ("runs/c1/run-1.bak", "null"),
        ("runs/c1/run-10/sibling", "null"),
    ]
    assert operations.count("ListObjectVersions") == 0
    assert operations.count("ListObjectsV2") == 3 + 1  # the purge's pages, then verification
    assert operations.count("DeleteObjects") == receipt.delete_calls == 3


@pytest.mark.parametrize("kind", ["versioned", "suspended"])
def test_a_bucket_that_has_or_had_versioning_has_every_version_deleted(
    s3_client: BaseClient, bucket: MakeBucket, kind: str
) -> None:
    name = bucket("plain")
    s3_client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    for body in (b"v1", b"v2"):
        s3_client.put_object(Bucket=name, Key="r/twice", Body=body)
    if kind == "versioned":
        s3_client.delete_object(Bucket=name, Key="r/twice")  # a delete marker on top
    else:
        # (No marker here: moto fails to delete one from a suspended bucket.)
        s3_client.put_bucket_versioning(
            Bucket=name, VersioningConfiguration={"Status": "Suspended"}
        )
    s3_client.put_object(Bucket=name, Key="r/latest", Body=b"x")  # "null" when suspended
    before = all_versions(s3_client, name, "r/")
    assert len(before) == (4 if kind == "versioned" else 3)
    operations = Operations(s3_client)
    store = S3StagingStore(name, client=s3_client)

    receipt = purge_prefix(store, "r/", receipt_id="r")
    operations.stop()

    assert all_versions(s3_client, name) == []
    assert receipt.verified_empty
    assert receipt.objects_deleted == len(before)
    assert receipt.manifest_sha256 == manifest_sha256(
        [(key, "" if version == "null" else version) for key, version in before]
    )
    assert operations.count("ListObjectsV2") == 0
    assert operations.count("ListObjectVersions") == 2  # the purge, then verification
    assert receipt.store_settings["versioning"] == kind.replace("versioned", "enabled").title()


def test_unreadable_versioning_lists_every_version(
    s3_client: BaseClient, bucket: MakeBucket
) -> None:
    """Credentials that may not read the versioning status get the complete listing."""
    name = bucket("versioned")
    for body in (b"1", b"22"):
        s3_client.put_object(Bucket=name, Key="r/k", Body=body)

    def deny(request: AWSPreparedRequest, **_: Any) -> AWSResponse:
        return error_response(request, 403, "AccessDenied", "Access Denied")

    s3_client.meta.events.register("before-send.s3.GetBucketVersioning", deny)
    operations = Operations(s3_client)
    store = S3StagingStore(name, client=s3_client)

    receipt = purge_prefix(store, "r/", receipt_id="r")
    operations.stop()

    assert all_versions(s3_client, name) == []
    assert receipt.verified_empty and receipt.objects_deleted == 2
    assert operations.count("ListObjectsV2") == 0
    assert receipt.store_settings["versioning"] == "unknown (AccessDenied)"


def test_versioning_turned_on_during_the_purge_is_caught(
    s3_client: BaseClient, s3_endpoint: str, bucket: MakeBucket
) -> None:
    """Listed as never versioned, deleted without version ids after versioning came on: S3
    keeps the bytes under delete markers. The deletes say so, and the verification, which
    reads the status again, lists the versions left: never a receipt that claims a purge."""
    name = bucket("plain")
    keys = [f"r/{i}" for i in range(5)]
    seed_objects(name, keys)
    admin = make_client(s3_endpoint)
    turned_on: list[bool] = []

    def enable_versioning_once(**_: Any) -> None:
        if not turned_on:
            turned_on.append(True)
            admin.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})

    s3_client.meta.events.register("before-call.s3.DeleteObjects", enable_versioning_once)
    store = S3StagingStore(name, client=s3_client)

    receipt = purge_prefix(store, "r/", receipt_id="r")

    assert turned_on
    left = all_versions(s3_client, name)
    assert len(left) == 2 * len(keys)  # each object's bytes, as version "null", and a marker
    assert not receipt.verified_empty
    assert receipt.remaining == len(left)
    assert receipt.objects_failed == len(keys)
    assert all("delete marker" in failure for failure in receipt.failures)


def test_the_default_client_parses_listing_timestamps_to_the_same_instant(
    s3_endpoint: str, s3_client: BaseClient, bucket: MakeBucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = bucket("plain")
    s3_client.put_object(Bucket=name, Key="r/a", Body=b"1")
    for variable, value in {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": DUMMY_CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": DUMMY_CREDENTIALS["aws_secret_access_key"],
        "AWS_REGION": REGION,
    }.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    store = S3StagingStore(name)

    ours = store._client.list_objects_v2(Bucket=name)["Contents"][0]["LastModified"]
    botocores = s3_client.list_objects_v2(Bucket=name)["Contents"][0]["LastModified"]
    assert isinstance(ours, datetime) and ours.tzinfo is not None
    assert ours == botocores
    head = store._client.head_object(Bucket=name, Key="r/a")["LastModified"]  # an HTTP date
    assert head == s3_client.head_object(Bucket=name, Key="r/a")["LastModified"]


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-30T07:39:02.000Z",
        "2026-11-30T07:39:02Z",
        "2026-11-30T07:39:02.123456+02:00",
        "Mon, 30 Nov 2026 07:39:02 GMT",
        "1700000000",
    ],
)
def test_timestamps_parse_as_botocore_parses_them(text: str) -> None:
    assert _parse_timestamp(text) == botocore.utils.parse_timestamp(text)


def test_the_purger_keeps_remote_stores_and_purges_with_them_again(
    s3_endpoint: str,
    s3_client: BaseClient,
    bucket: MakeBucket,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    for variable, value in {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": DUMMY_CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": DUMMY_CREDENTIALS["aws_secret_access_key"],
        "AWS_REGION": REGION,
    }.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    name = bucket("plain")
    root = f"s3://{name}/staging/"
    purger = Purger(Settings(state_dir=tmp_path / "state"))

    assert purger.open(root) is purger.open(root)
    local = (tmp_path / "local").as_uri() + "/"
    assert purger.open(local) is not purger.open(local)  # a local store is opened anew
    for run in ("run-1", "run-2"):
        seed_objects(name, [f"staging/{run}/part-{i}" for i in range(3)])
        receipt = purger.purge(purger.target(f"{root}{run}/", [root]), receipt_id=run)
        assert receipt.verified_empty and receipt.objects_deleted == 3
    assert all_versions(s3_client, name) == []
