"""What only the local staging store has: directories, symlinks, a root behind a symlink,
serial deletes in small calls; the purge pipeline's failure handling on a real store; and
open_store. What every store promises is in tests/test_staging_store_contract.py."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

import purge.pipeline as purge_module
from purge.pipeline import StoreContractError, purge_prefix
from purge.receipts import PurgeReceipt
from purge.stores import (
    DeleteResult,
    StoredObject,
    UnsafePrefixError,
    UnsupportedStoreError,
    open_store,
)
from purge.stores.local import LocalStagingStore
from purge.targets import parse_target

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def write(store: LocalStagingStore, key: str, data: bytes = b"x") -> None:
    with store.open_write(key) as handle:
        handle.write(data)


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir())


def dirs_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_dir())


@pytest.fixture
def store(tmp_path: Path) -> LocalStagingStore:
    return LocalStagingStore(tmp_path / "staging")


# --- writes -------------------------------------------------------------------------------


def test_a_failed_write_leaves_no_directory_behind(store: LocalStagingStore) -> None:
    """The directories a write made for its key go when the write fails (that it stores no
    object is a contract test)."""
    with pytest.raises(RuntimeError, match="connector died"), store.open_write("runs/r1/a") as h:
        h.write(b"partial")
        raise RuntimeError("connector died")
    assert dirs_under(store.root) == []


def test_local_path_is_the_file_itself(store: LocalStagingStore) -> None:
    write(store, "runs/r1/a", b"bytes")
    with store.local_path("runs/r1/a") as path:
        assert path == store.root / "runs" / "r1" / "a"
        assert path.read_bytes() == b"bytes"


# --- listing ------------------------------------------------------------------------------


def test_listing_has_no_versions(store: LocalStagingStore) -> None:
    write(store, "p/a", b"12345")
    assert list(store.list("p")) == [StoredObject(key="p/a", size=5, version_id=None)]


# --- prefixes -----------------------------------------------------------------------------


def test_prefix_through_a_symlink_is_refused(store: LocalStagingStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"keep")
    (store.root / "runs").mkdir()
    (store.root / "runs" / "conn1").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafePrefixError, match="symlink"):
        purge_prefix(store, "runs/conn1/", receipt_id="r")
    assert (outside / "precious").read_bytes() == b"keep"


# --- a staging root behind a symlink -------------------------------------------------------


def purge_as_the_sync_activity_does(staging_uri: str, staging_prefix: str) -> PurgeReceipt:
    """parse_target with the staging root in the allow-list, open_store, purge_prefix."""
    target = parse_target(staging_uri + staging_prefix, [staging_uri, "s3://bucket/other/"])
    return purge_prefix(open_store(target.store_uri), target.prefix, receipt_id="r")


@pytest.fixture
def linked_root(tmp_path: Path) -> tuple[Path, str]:
    """(the real staging root, its URI through a symlinked directory: /tmp/link -> /tmp/real)."""
    (tmp_path / "real" / "staging").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    return tmp_path / "real" / "staging", (tmp_path / "link" / "staging").as_uri() + "/"


def test_a_staging_root_behind_a_symlink_is_purged(linked_root: tuple[Path, str]) -> None:
    real, staging_uri = linked_root
    writer = open_store(staging_uri)  # the sync stages through the configured, linked root
    for key in ("faker/run-1/users/0.jsonl.gz", "faker/run-1/products/0.jsonl.gz"):
        write(writer, key, b"abc")
    write(writer, "faker/run-10/users/0.jsonl.gz")

    receipt = purge_as_the_sync_activity_does(staging_uri, "faker/run-1/")

    assert receipt.verified_empty and receipt.objects_deleted == 2
    assert receipt.target == real.as_uri() + "/faker/run-1/"
    assert files_under(real) == ["faker/run-10/users/0.jsonl.gz"]
    assert dirs_under(real) == ["faker", "faker/run-10", "faker/run-10/users"]


def test_a_symlink_inside_the_prefix_is_still_refused_and_not_followed(
    linked_root: tuple[Path, str], tmp_path: Path
) -> None:
    real, staging_uri = linked_root
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"keep")

    # The run's own directory is a link: the whole prefix passes through it, refused.
    (real / "faker").mkdir()
    (real / "faker" / "run-1").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafePrefixError, match="symlink"):
        purge_as_the_sync_activity_does(staging_uri, "faker/run-1/")
    with pytest.raises(UnsafePrefixError, match="symlink"):
        purge_as_the_sync_activity_does(staging_uri, "faker/run-1/sub/")
    assert (outside / "precious").read_bytes() == b"keep"

    # A link under the prefix is an object of its own: the link goes, never what it points to.
    write(open_store(staging_uri), "faker/run-2/a")
    (real / "faker" / "run-2" / "to-dir").symlink_to(outside, target_is_directory=True)
    receipt = purge_as_the_sync_activity_does(staging_uri, "faker/run-2/")
    assert receipt.verified_empty and receipt.objects_deleted == 2
    assert (outside / "precious").read_bytes() == b"keep"
    assert not (real / "faker" / "run-2").exists()
    assert (real / "faker" / "run-1").is_symlink()


# --- purge --------------------------------------------------------------------------------


def test_purge_removes_the_directories_under_the_prefix(store: LocalStagingStore) -> None:
    """Local staging has directories: a purge leaves none under its prefix (the receipt and
    the objects are contract tests)."""
    keys = ["staging/faker/run-1/users/0.jsonl", "staging/faker/run-1/users/1.jsonl"]
    keys += ["staging/faker/run-1/products/0.jsonl", "staging/faker/run-1/deep/er/x"]
    for key in keys:
        write(store, key, b"abc")
    write(store, "staging/faker/run-2/users/0.jsonl")

    receipt = purge_prefix(store, "staging/faker/run-1", receipt_id="rcpt-1")

    assert receipt.verified_empty and receipt.objects_deleted == 4
    assert files_under(store.root) == ["staging/faker/run-2/users/0.jsonl"]
    assert dirs_under(store.root) == [
        "staging",
        "staging/faker",
        "staging/faker/run-2",
        "staging/faker/run-2/users",
    ]
    assert receipt.versions_deleted == 0
    assert receipt.store_settings == {"kind": "local", "versioning": "none", "soft_delete": "none"}


def test_purge_leaves_empty_parents_above_the_prefix(store: LocalStagingStore) -> None:
    write(store, "runs/conn1/a")
    purge_prefix(store, "runs/conn1/", receipt_id="r")
    assert dirs_under(store.root) == ["runs"]
    assert store.root.is_dir()


def test_symlinks_are_deleted_as_links_never_followed(
    store: LocalStagingStore, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"keep")
    write(store, "runs/r1/a")
    (store.root / "runs" / "r1" / "to-dir").symlink_to(outside, target_is_directory=True)
    (store.root / "runs" / "r1" / "to-file").symlink_to(outside / "precious")

    receipt = purge_prefix(store, "runs/r1/", receipt_id="r")

    assert receipt.objects_deleted == 3
    assert receipt.verified_empty
    assert (outside / "precious").read_bytes() == b"keep"
    assert not (store.root / "runs" / "r1").exists()


def test_deletes_in_batches_while_listing_lazily(tmp_path: Path) -> None:
    class LazyCheckingStore(LocalStagingStore):
        def __init__(self, root: Path) -> None:
            super().__init__(root)
            self.pulled = 0
            self.pulled_at_delete: list[int] = []

        def list(self, prefix: str) -> Iterator[StoredObject]:
            for obj in super().list(prefix):
                self.pulled += 1
                yield obj

        def delete(self, objects: Sequence[StoredObject]) -> DeleteResult:
            self.pulled_at_delete.append(self.pulled)
            return super().delete(objects)

    store = LazyCheckingStore(tmp_path / "staging")
    for i in range(7):
        write(store, f"runs/r1/{i}")
    progress: list[int] = []

    receipt = purge_prefix(
        store, "runs/r1/", receipt_id="r", batch_size=3, on_progress=progress.append
    )

    assert store.pulled_at_delete == [3, 6, 7]
    assert progress == [3, 6, 7]
    assert receipt.verified_empty


def test_progress_is_reported_every_hundred_local_deletes(store: LocalStagingStore) -> None:
    # A purge activity heartbeats this count; after a worker is killed, the next attempt adds
    # the last heartbeat to its own receipt, so the count may lag by one small batch at most.
    for i in range(250):
        write(store, f"runs/r1/{i // 50}/{i:04d}")
    write(store, "runs/r10/kept")
    progress: list[int] = []
    calls: list[int] = []
    delete = store.delete

    def counting_delete(objects: Sequence[StoredObject]) -> DeleteResult:
        calls.append(len(objects))
        return delete(objects)

    store.delete = counting_delete  # type: ignore[method-assign]

    receipt = purge_prefix(store, "runs/r1/", receipt_id="r", on_progress=progress.append)

    assert receipt.verified_empty and receipt.objects_deleted == 250
    assert progress == [100, 200, 250]  # the default listing batch is 1,000
    assert calls == [100, 100, 50] and receipt.delete_calls == 3
    assert files_under(store.root) == ["runs/r10/kept"]


def test_slow_local_deletes_report_progress_in_smaller_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class SlowDisk(LocalStagingStore):
        def delete(self, objects: Sequence[StoredObject]) -> DeleteResult:
            time.sleep(0.0005 * len(objects))  # 100 objects: 50 ms, over the budget below
            return super().delete(objects)

    monkeypatch.setattr(purge_module, "_SERIAL_CALL_SECONDS", 0.01)
    store = SlowDisk(tmp_path / "staging")
    for i in range(300):
        write(store, f"runs/r1/{i:04d}")
    progress: list[int] = []

    receipt = purge_prefix(store, "runs/r1/", receipt_id="r", on_progress=progress.append)

    assert receipt.verified_empty and receipt.objects_deleted == 300
    assert progress == sorted(progress) and progress[-1] == 300
    steps = [after - before for before, after in zip([0, *progress], progress, strict=False)]
    assert steps[0] == 100 and max(steps[3:]) <= 25  # halved while a call is over budget
    assert len(progress) > 10


def test_failed_deletion_is_reported_and_not_verified(tmp_path: Path) -> None:
    class OneFailsStore(LocalStagingStore):
        def delete(self, objects: Sequence[StoredObject]) -> DeleteResult:
            stuck = [obj for obj in objects if obj.key.endswith("stuck")]
            result = super().delete([obj for obj in objects if obj not in stuck])
            result.failed.extend((obj, "AccessDenied") for obj in stuck)
            return result

    store = OneFailsStore(tmp_path / "staging")
    for key in ["runs/r1/a", "runs/r1/sub/stuck", "runs/r1/z"]:
        write(store, key)

    receipt = purge_prefix(store, "runs/r1/", receipt_id="r")

    assert receipt.failures == ["runs/r1/sub/stuck: AccessDenied"]
    assert receipt.objects_failed == 1
    assert receipt.objects_deleted == 2
    assert receipt.remaining == 1
    assert receipt.verified_empty is False
    assert files_under(store.root) == ["runs/r1/sub/stuck"]


def test_a_reported_failure_blocks_verification_even_if_nothing_remains(tmp_path: Path) -> None:
    class UnsureStore(LocalStagingStore):
        """Deletes everything but reports one outcome as unknown, as a timed-out call would."""

        def delete(self, objects: Sequence[StoredObject]) -> DeleteResult:
            result = super().delete(objects)
            unsure = result.deleted.pop()
            result.failed.append((unsure, "timeout"))
            return result

    store = UnsureStore(tmp_path / "staging")
    write(store, "runs/r1/a")
    receipt = purge_prefix(store, "runs/r1/", receipt_id="r")
    assert receipt.remaining == 0
    assert receipt.failures == ["runs/r1/a: timeout"]
    assert receipt.verified_empty is False


def test_failures_listed_in_the_receipt_are_capped(tmp_path: Path) -> None:
    class NothingDeletes(LocalStagingStore):
        def delete(self, objects: Sequence[StoredObject]) -> DeleteResult:
            return DeleteResult(deleted=[], failed=[(obj, "denied") for obj in objects])

    store = NothingDeletes(tmp_path / "staging")
    for i in range(150):
        write(store, f"runs/r1/{i:03}")
    receipt = purge_prefix(store, "runs/r1/", receipt_id="r", batch_size=40)
    assert len(receipt.failures) == 100
    assert receipt.failures[0] == "runs/r1/000: denied"
    assert receipt.objects_failed == 150
    assert receipt.remaining == 150
    assert not receipt.verified_empty


def test_a_listing_outside_the_prefix_stops_the_purge(tmp_path: Path) -> None:
    class LeakyStore(LocalStagingStore):
        def list(self, prefix: str) -> Iterator[StoredObject]:
            yield StoredObject(key="runs/r10/a", size=1)

    store = LeakyStore(tmp_path / "staging")
    write(store, "runs/r10/a")
    with pytest.raises(StoreContractError, match="outside"):
        purge_prefix(store, "runs/r1/", receipt_id="r")
    assert files_under(store.root) == ["runs/r10/a"]


def test_an_unsorted_listing_stops_the_purge(tmp_path: Path) -> None:
    class UnsortedStore(LocalStagingStore):
        def list(self, prefix: str) -> Iterator[StoredObject]:
            yield from reversed(list(super().list(prefix)))

    store = UnsortedStore(tmp_path / "staging")
    write(store, "runs/r1/a")
    write(store, "runs/r1/b")
    with pytest.raises(StoreContractError, match="order"):
        purge_prefix(store, "runs/r1/", receipt_id="r", batch_size=1)


# --- open_store ---------------------------------------------------------------------------


def test_open_store_parses_file_uris(tmp_path: Path) -> None:
    root = tmp_path / "with space" / "staging"
    store = open_store(root.as_uri() + "/")
    assert isinstance(store, LocalStagingStore)
    assert store.root == root
    assert root.is_dir()
    assert store.uri == root.as_uri() + "/"
    assert open_store(store.uri).uri == store.uri
    via_localhost = open_store(f"file://localhost{root}/")
    assert isinstance(via_localhost, LocalStagingStore)
    assert via_localhost.root == root


@pytest.mark.parametrize("uri", ["file:relative/dir", "file:./dir/", "file://relative/dir"])
def test_open_store_refuses_relative_file_uris(uri: str) -> None:
    with pytest.raises(UnsupportedStoreError, match="relative") as raised:
        open_store(uri)
    assert repr(uri) in str(raised.value)


def test_open_store_maps_cloud_uris_to_their_stores() -> None:
    store = open_store("s3://bucket/staging%20area/")
    assert store.uri == "s3://bucket/staging area/"
    with pytest.raises(UnsupportedStoreError, match="no Azure account"):
        open_store("az://container/staging/")
    with pytest.raises(UnsupportedStoreError, match="no bucket"):
        open_store("s3:///staging/")


@pytest.mark.parametrize(("uri", "scheme"), [("gs://b/x/", "'gs'"), ("/abs/dir/", "no scheme")])
def test_open_store_refuses_unknown_schemes(uri: str, scheme: str) -> None:
    with pytest.raises(UnsupportedStoreError, match=scheme):
        open_store(uri)


def test_root_itself_is_never_removed(store: LocalStagingStore) -> None:
    write(store, "only/a")
    purge_prefix(store, "only/", receipt_id="r")
    assert store.root.is_dir()
    assert os.listdir(store.root) == []
