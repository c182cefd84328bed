"""What every staging store promises, tested once and run on each: the local store (a temporary
directory), S3 (a versioned bucket on moto's server) and Azure Blob Storage (a container on
Azurite). Writes are atomic, keys and prefixes are checked, listings are complete, sorted and
confined to their prefix and base, and a purge deletes every object and version under its
prefix, nothing else, with a receipt that says so.

What only one store has (S3 versions, delete markers and Object Lock, Azure snapshots, leases
and soft delete, local symlinks and directories) is tested in that store's own file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from azure.core.exceptions import ResourceNotFoundError

from purge.pipeline import purge_prefix
from purge.stores import UnsafeKeyError, UnsafePrefixError, normalize_prefix
from tests.s3_server import bucket, s3_client, s3_endpoint
from tests.support.staging_stores import (
    AzureUnderTest,
    LocalUnderTest,
    RecordingStore,
    S3UnderTest,
    StoreUnderTest,
    manifest_sha256,
)

pytest_plugins = ["tests.azurite_server"]
__all__ = ["bucket", "s3_client", "s3_endpoint"]  # fixtures, imported for pytest

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def store_under_test(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> StoreUnderTest:
    if kind == "local":
        return LocalUnderTest(tmp_path / "area")
    if kind == "s3":
        make_bucket = request.getfixturevalue("bucket")
        return S3UnderTest(make_bucket("versioned"), request.getfixturevalue("s3_client"))
    return AzureUnderTest(
        request.getfixturevalue("azure_container"), request.getfixturevalue("azure_service")
    )


@pytest.fixture(params=["local", "s3", "azure"])
def staging(request: pytest.FixtureRequest, tmp_path: Path) -> StoreUnderTest:
    """Each store in turn, new and empty."""
    return store_under_test(request.param, request, tmp_path)


@pytest.fixture(params=["s3", "azure"])
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> StoreUnderTest:
    """Each store that lives in a remote service, new and empty."""
    return store_under_test(request.param, request, tmp_path)


# --- writes and reads -------------------------------------------------------------------------


def test_write_is_invisible_until_the_block_exits(staging: StoreUnderTest) -> None:
    store = staging.store
    with store.open_write("runs/r1/a.jsonl") as handle:
        handle.write(b"half")
        assert not store.exists("runs/r1/a.jsonl")
        assert "runs/r1/a.jsonl" not in [obj.key for obj in store.list("runs/r1/")]
        handle.write(b" and whole")
    assert store.exists("runs/r1/a.jsonl")
    with store.open_read("runs/r1/a.jsonl") as handle:
        assert handle.read() == b"half and whole"
    # One object, in one piece: no partial file, upload or second version left behind.
    assert [key for key, _ in staging.held()] == ["runs/r1/a.jsonl"]


def test_exception_in_write_stores_nothing(staging: StoreUnderTest) -> None:
    with (
        pytest.raises(RuntimeError, match="connector died"),
        staging.store.open_write("runs/r1/a") as handle,
    ):
        handle.write(b"partial")
        raise RuntimeError("connector died")
    assert staging.held() == []
    assert not staging.store.exists("runs/r1/a")


def test_failed_overwrite_keeps_the_previous_object(staging: StoreUnderTest) -> None:
    staging.write("runs/r1/a", b"old")
    with pytest.raises(RuntimeError), staging.store.open_write("runs/r1/a") as handle:
        handle.write(b"new")
        raise RuntimeError
    with staging.store.open_read("runs/r1/a") as handle:
        assert handle.read() == b"old"
    assert [key for key, _ in staging.held()] == ["runs/r1/a"]


@pytest.mark.parametrize(
    "key", ["", "/etc/passwd", "a/../b", "../x", "a//b", "a/./b", "a/", "a\\b"]
)
def test_unsafe_keys_are_refused(staging: StoreUnderTest, key: str) -> None:
    with pytest.raises(UnsafeKeyError), staging.store.open_write(key):
        pass
    assert staging.held() == []


def test_local_path_holds_the_objects_bytes_under_its_extension(staging: StoreUnderTest) -> None:
    staging.write("runs/r1/records.jsonl", b'{"id": 1}\n')
    with staging.store.local_path("runs/r1/records.jsonl") as path:
        assert path.name.endswith(".jsonl")  # loaders pick a format by it
        assert path.read_bytes() == b'{"id": 1}\n'


def test_a_remote_stores_local_path_is_a_download_removed_on_exit(remote: StoreUnderTest) -> None:
    remote.write("runs/r1/records.jsonl", b'{"id": 1}\n')
    with remote.store.local_path("runs/r1/records.jsonl") as path:
        assert path.read_bytes() == b'{"id": 1}\n'
    assert not path.exists()  # no copy of staged data outlives the block
    assert [key for key, _ in remote.held()] == ["runs/r1/records.jsonl"]


def test_missing_objects_do_not_exist(staging: StoreUnderTest) -> None:
    staging.write("runs/r1/there")
    assert staging.store.exists("runs/r1/there")
    assert not staging.store.exists("runs/r1/never")
    assert not staging.store.exists("runs/r1")  # a prefix is not an object


@pytest.mark.parametrize(
    "kind",
    [
        "local",
        "s3",
        pytest.param(
            "azure",
            marks=pytest.mark.xfail(
                raises=ResourceNotFoundError,
                strict=True,
                reason="the Azure store lets the SDK's ResourceNotFoundError through",
            ),
        ),
    ],
)
def test_reading_a_missing_object_raises_file_not_found(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    store = store_under_test(kind, request, tmp_path).store
    with pytest.raises(FileNotFoundError), store.open_read("runs/r1/never"):
        pass
    with pytest.raises(FileNotFoundError), store.local_path("runs/r1/never"):
        pass


# --- listing ----------------------------------------------------------------------------------


def test_listing_is_sorted_by_key_and_version_across_directories(staging: StoreUnderTest) -> None:
    # The "directory" a sorts before the object a-c, but its keys ("a/b") sort after it.
    for key in ["p/b", "p/a-c", "p/a/b", "p/a0", "p/a/a/z"]:
        staging.write(key)
    staging.add_version("p/a-c")
    staging.add_version("p/b")
    staging.write("q/outside")

    listed = [(obj.key, obj.version_id or "") for obj in staging.store.list("p/")]

    assert listed == sorted(listed) == staging.held("p/")  # every version, nothing else
    assert list(dict.fromkeys(key for key, _ in listed)) == [
        "p/a-c",
        "p/a/a/z",
        "p/a/b",
        "p/a0",
        "p/b",
    ]


def test_listing_reports_sizes_and_takes_a_prefix_without_its_slash(
    staging: StoreUnderTest,
) -> None:
    staging.write("p/a", b"12345")
    assert [(obj.key, obj.size) for obj in staging.store.list("p")] == [("p/a", 5)]


def test_listing_respects_the_prefix_boundary(staging: StoreUnderTest) -> None:
    for key in ["runs/conn1/a", "runs/conn10/a", "runs/conn1.bak", "runs/conn1-x/a"]:
        staging.write(key)
    assert [obj.key for obj in staging.store.list("runs/conn1/")] == ["runs/conn1/a"]


def test_an_object_named_like_the_prefix_is_not_under_it(staging: StoreUnderTest) -> None:
    staging.write("runs/conn1")
    assert list(staging.store.list("runs/conn1/")) == []
    assert purge_prefix(staging.store, "runs/conn1/", receipt_id="r").verified_empty
    assert [key for key, _ in staging.held()] == ["runs/conn1"]


def test_a_store_is_confined_to_its_base(staging: StoreUnderTest) -> None:
    """The same relative names outside the store's base (with no base, under a sibling of it,
    under a name that holds it further in) are neither listed nor purged."""
    staging.put_outside("runs/conn1/a")
    outside = staging.outside()
    assert len(outside) == 3
    staging.write("runs/conn1/a")

    assert [obj.key for obj in staging.store.list("runs/")] == ["runs/conn1/a"]
    receipt = purge_prefix(staging.store, "runs/conn1/", receipt_id="r")

    assert receipt.verified_empty and receipt.objects_deleted == 1
    assert staging.held() == []
    assert staging.outside() == outside


# --- prefixes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "normalized"),
    [
        ("runs/conn1", "runs/conn1/"),
        ("/runs/conn1/", "runs/conn1/"),
        ("runs//conn1///", "runs/conn1/"),
        ("./runs/./conn1", "runs/conn1/"),
    ],
)
def test_prefixes_are_normalized(prefix: str, normalized: str) -> None:
    assert normalize_prefix(prefix) == normalized


@pytest.mark.parametrize("prefix", ["", "/", "//", ".", "./", "a/../b", "../x", "a\\b", "a\x00b"])
def test_unsafe_prefixes_are_refused_before_any_call(staging: StoreUnderTest, prefix: str) -> None:
    staging.write("a/b/data")
    staging.write("x")
    before = staging.held()
    store = RecordingStore(staging.store)
    with pytest.raises(UnsafePrefixError) as raised:
        purge_prefix(store, prefix, receipt_id="r")
    assert repr(prefix) in str(raised.value)
    assert store.calls == []
    assert staging.held() == before


# --- purge ------------------------------------------------------------------------------------


def test_purge_removes_every_object_and_version_under_the_prefix(staging: StoreUnderTest) -> None:
    keys = ["staging/faker/run-1/users/0.jsonl", "staging/faker/run-1/users/1.jsonl"]
    keys += ["staging/faker/run-1/products/0.jsonl", "staging/faker/run-1/deep/er/x"]
    for key in keys:
        staging.write(key, b"abc")
    versioned = staging.add_version(keys[0])
    staging.write("staging/faker/run-2/users/0.jsonl")
    before = staging.held("staging/faker/run-1/")
    assert len(before) == len(keys) + versioned

    receipt = purge_prefix(staging.store, "staging/faker/run-1", receipt_id="rcpt-1")

    assert [key for key, _ in staging.held()] == ["staging/faker/run-2/users/0.jsonl"]
    assert receipt.receipt_id == "rcpt-1"
    assert receipt.target == staging.store.uri + "staging/faker/run-1/"
    assert receipt.objects_deleted == len(before)
    assert receipt.versions_deleted == sum(1 for _, version in before if version)
    assert receipt.bytes_deleted == 3 * len(before)
    assert receipt.manifest_sha256 == manifest_sha256(before)
    assert receipt.remaining == 0
    assert receipt.verified_empty is True
    assert receipt.failures == []
    assert receipt.dry_run is False
    assert receipt.started_at <= receipt.finished_at
    assert receipt.store_settings == staging.store.settings()


def test_siblings_of_the_prefix_survive(staging: StoreUnderTest) -> None:
    for key in ["runs/conn1/a", "runs/conn1/sub/b"]:
        staging.write(key)
    siblings = ["runs/conn", "runs/conn1-x/a", "runs/conn1.bak", "runs/conn1.jsonl"]
    siblings += ["runs/conn10/a"]
    for key in siblings:
        staging.write(key)
    staging.add_version("runs/conn10/a")
    kept = staging.held("runs/conn10/")

    receipt = purge_prefix(staging.store, "runs/conn1", receipt_id="r")

    assert receipt.verified_empty
    assert receipt.objects_deleted == 2
    assert sorted({key for key, _ in staging.held()}) == sorted(siblings)
    assert staging.held("runs/conn10/") == kept  # its versions too


@pytest.mark.parametrize(
    "tail",
    [
        "with space/a b.jsonl",
        "with space.jsonl",
        "unicodé/日本語/ü.jsonl",
        "ünïcødé/日本語.jsonl",
        "unicode/日本語/ßü🙂",
        "plus+sign/a+b",
        "plus+sign.jsonl",
        "pct%20/100%.csv",
        "percent%20not-a-space.jsonl",
        "percent%2Fnot-a-slash",
        "percent%",
        "question?and#hash",
        "amp&lt;",
        "tilde~star*",
        "mixed +%&=?#;.jsonl",
    ],
)
def test_awkward_keys_round_trip_and_are_purged(staging: StoreUnderTest, tail: str) -> None:
    key = "runs/r1/" + tail
    staging.write(key, key.encode())
    staging.add_version(key)
    staging.write("runs/r1-sibling/x")
    assert staging.store.exists(key)
    with staging.store.open_read(key) as handle:
        assert handle.read() == key.encode()
    assert {obj.key for obj in staging.store.list("runs/r1/")} == {key}
    before = staging.held("runs/r1/")

    receipt = purge_prefix(staging.store, "runs/r1/", receipt_id="r")

    assert receipt.verified_empty, receipt.failures
    assert receipt.objects_deleted == len(before)
    assert receipt.manifest_sha256 == manifest_sha256(before)
    assert [k for k, _ in staging.held()] == ["runs/r1-sibling/x"]


@pytest.mark.parametrize(
    "tail",
    [
        "é" * 440 + ".jsonl",  # 886 bytes of UTF-8, near S3's 1024-byte key limit
        "long-segment-" * 30 + ".jsonl",  # one segment longer than a file name may be
    ],
)
def test_long_keys_round_trip_and_are_purged(remote: StoreUnderTest, tail: str) -> None:
    key = "runs/r1/" + tail
    remote.write(key, b"long")
    with remote.store.open_read(key) as handle:
        assert handle.read() == b"long"
    receipt = purge_prefix(remote.store, "runs/r1/", receipt_id="r")
    assert receipt.verified_empty and receipt.objects_deleted == 1
    assert remote.held() == []


def test_dry_run_deletes_nothing_and_reports_counts(staging: StoreUnderTest) -> None:
    for key in ["runs/r1/a", "runs/r1/b/c", "runs/r1/d"]:
        staging.write(key, b"12")
    staging.add_version("runs/r1/a")
    before = staging.held()
    store = RecordingStore(staging.store)
    progress: list[int] = []

    receipt = purge_prefix(
        store, "runs/r1/", receipt_id="r", dry_run=True, batch_size=2, on_progress=progress.append
    )

    count = len(before)
    assert staging.held() == before
    assert "delete" not in store.verbs() and "prune" not in store.verbs()
    assert receipt.dry_run is True
    assert receipt.objects_deleted == receipt.remaining == count
    assert receipt.bytes_deleted == 2 * count
    assert receipt.verified_empty is False
    assert receipt.manifest_sha256 == manifest_sha256(before)
    assert progress == [min(n, count) for n in range(2, count + 2, 2)]  # after every batch


def test_manifest_hash_matches_an_independent_computation(staging: StoreUnderTest) -> None:
    for key in ["m/z", "m/a-c", "m/a/b", "m/a/a/z", "m/A", "m/é", "m/a b", "m/0"]:
        staging.write(key)
    staging.add_version("m/z")
    before = staging.held()
    receipt = purge_prefix(staging.store, "m/", receipt_id="r", batch_size=3)
    assert receipt.manifest_sha256 == manifest_sha256(before)
    assert receipt.manifest_sha256 != manifest_sha256(before[1:])


def test_an_empty_prefix_gives_a_verified_receipt_of_nothing(staging: StoreUnderTest) -> None:
    staging.write("runs/other/a")
    store = RecordingStore(staging.store)

    receipt = purge_prefix(store, "runs/never-staged/", receipt_id="r")

    assert receipt.verified_empty
    assert (receipt.objects_deleted, receipt.bytes_deleted, receipt.remaining) == (0, 0, 0)
    assert receipt.manifest_sha256 == EMPTY_SHA256
    assert "delete" not in store.verbs()
    again = purge_prefix(store, "runs/other/", receipt_id="r2")
    assert again.verified_empty and again.objects_deleted == 1


def test_purging_twice_is_harmless(staging: StoreUnderTest) -> None:
    staging.write("runs/r1/a")
    staging.add_version("runs/r1/a")
    first = purge_prefix(staging.store, "runs/r1/", receipt_id="r")
    assert first.verified_empty and first.objects_deleted >= 1
    again = purge_prefix(staging.store, "runs/r1/", receipt_id="r")
    assert again.objects_deleted == 0
    assert again.verified_empty
    assert staging.held() == []


def test_receipt_round_trips_through_json(staging: StoreUnderTest) -> None:
    staging.write("runs/r1/a")
    receipt = purge_prefix(staging.store, "runs/r1/", receipt_id="r")
    assert type(receipt).model_validate_json(receipt.model_dump_json()) == receipt
