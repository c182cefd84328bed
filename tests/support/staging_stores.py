"""Each staging store with a view of its backing service that does not go through the store,
for the contract tests (tests/test_staging_store_contract.py) that every store must pass.

A `StoreUnderTest` writes through the store, and answers what the service really holds by
asking the service itself (the file system, S3's version listing, Azure's blob listing): what a
contract test compares the store's own answers with.
"""

from __future__ import annotations

import contextlib
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from azure.storage.blob import BlobProperties, BlobServiceClient, ContainerClient
from botocore.client import BaseClient

from purge.stores import DeleteResult, LocalStagingStore, StagingStore, StoredObject
from purge.stores.azure import AzureStagingStore
from purge.stores.s3 import S3StagingStore

BASE = "staging/"
"""The base prefix of the remote stores (the local store's root is a directory named so)."""
SIBLING_BASE = "staging-x/"
"""A sibling of the base that shares its first letters: outside the store all the same."""
OUTSIDE = ("", SIBLING_BASE, "other/" + BASE)
"""Where `put_outside` puts a key: with no base, under a sibling of the base, and under a name
that holds the base further in."""


def manifest_sha256(entries: Sequence[tuple[str, str]]) -> str:
    """The receipt's manifest hash, computed here from (key, version tag) pairs."""
    lines = "".join(f"{key}\t{version}\n" for key, version in sorted(entries))
    return hashlib.sha256(lines.encode()).hexdigest()


class StoreUnderTest(ABC):
    kind: str
    store: StagingStore

    def write(self, key: str, data: bytes = b"x") -> None:
        with self.store.open_write(key) as handle:
            handle.write(data)

    @abstractmethod
    def add_version(self, key: str) -> bool:
        """Give an object one more stored version with the same bytes (a noncurrent version on
        S3, a snapshot on Azure), as the service keeps them; False where a store has none."""

    @abstractmethod
    def held(self, prefix: str = "") -> list[tuple[str, str]]:
        """Every (key, version tag) the service holds under the store's base and `prefix`,
        asked of the service directly; the tag as the store's listing names it, "" for none."""

    @abstractmethod
    def put_outside(self, key: str) -> None:
        """Store `key` outside the store, at each of the places OUTSIDE names."""

    @abstractmethod
    def outside(self) -> list[str]:
        """Every name the service holds outside the store's base."""


class LocalUnderTest(StoreUnderTest):
    kind = "local"

    def __init__(self, area: Path) -> None:
        self.area = area
        self.root = area / BASE.rstrip("/")
        self.store = LocalStagingStore(self.root)

    def add_version(self, key: str) -> bool:
        return False

    def held(self, prefix: str = "") -> list[tuple[str, str]]:
        return sorted((name, "") for name in _files_under(self.root) if name.startswith(prefix))

    def put_outside(self, key: str) -> None:
        for place in OUTSIDE:
            path = self.area / (place + key)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"outside")

    def outside(self) -> list[str]:
        return [name for name in _files_under(self.area) if not name.startswith(BASE)]


class S3UnderTest(StoreUnderTest):
    """A store on a versioned bucket, where every write and every delete leaves a version."""

    kind = "s3"

    def __init__(self, bucket_name: str, client: BaseClient) -> None:
        self.bucket_name = bucket_name
        self.client = client
        self.store = S3StagingStore(bucket_name, BASE, client=client)

    def add_version(self, key: str) -> bool:
        body = self.client.get_object(Bucket=self.bucket_name, Key=BASE + key)["Body"].read()
        self.client.put_object(Bucket=self.bucket_name, Key=BASE + key, Body=body)
        return True

    def held(self, prefix: str = "") -> list[tuple[str, str]]:
        return sorted(
            (key[len(BASE) :], "" if version == "null" else version)
            for key, version in self._versions(BASE + prefix)
        )

    def put_outside(self, key: str) -> None:
        for place in OUTSIDE:
            self.client.put_object(Bucket=self.bucket_name, Key=place + key, Body=b"outside")

    def outside(self) -> list[str]:
        return sorted(key for key, _ in self._versions("") if not key.startswith(BASE))

    def _versions(self, prefix: str) -> Iterator[tuple[str, str]]:
        paginator = self.client.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=self.bucket_name, Prefix=prefix):
            for entry in page.get("Versions", []) + page.get("DeleteMarkers", []):
                yield entry["Key"], entry["VersionId"]


class AzureUnderTest(StoreUnderTest):
    """A store on a container of Azurite, which keeps snapshots (and no blob versions)."""

    kind = "azure"

    def __init__(self, container: ContainerClient, service: BlobServiceClient) -> None:
        self.container = container
        self.store = AzureStagingStore(container.container_name, BASE, service=service)

    def add_version(self, key: str) -> bool:
        self.container.get_blob_client(BASE + key).create_snapshot()
        return True

    def held(self, prefix: str = "") -> list[tuple[str, str]]:
        return sorted(
            (blob.name[len(BASE) :], f"snapshot:{blob.snapshot}" if blob.snapshot else "")
            for blob in self._blobs(BASE + prefix)
        )

    def put_outside(self, key: str) -> None:
        for place in OUTSIDE:
            self.container.upload_blob(place + key, b"outside")

    def outside(self) -> list[str]:
        return sorted(blob.name for blob in self._blobs("") if not blob.name.startswith(BASE))

    def _blobs(self, prefix: str) -> Iterator[BlobProperties]:
        yield from self.container.list_blobs(
            name_starts_with=prefix, include=["snapshots", "versions", "deleted"]
        )


class RecordingStore(StagingStore):
    """Another store, unchanged, with every call that could touch data recorded in `calls`
    ("list PREFIX", "delete N", "prune PREFIX", "open_write KEY"...), from any thread."""

    def __init__(self, inner: StagingStore) -> None:
        self.inner = inner
        self.uri = inner.uri
        self.delete_concurrency = inner.delete_concurrency
        self.delete_batch_size = inner.delete_batch_size
        self.calls: list[str] = []

    def verbs(self) -> list[str]:
        return [call.split(" ", 1)[0] for call in self.calls]

    def open_write(self, key: str) -> contextlib.AbstractContextManager[BinaryIO]:
        self.calls.append(f"open_write {key}")
        return self.inner.open_write(key)

    def open_read(self, key: str) -> contextlib.AbstractContextManager[BinaryIO]:
        self.calls.append(f"open_read {key}")
        return self.inner.open_read(key)

    def local_path(self, key: str) -> contextlib.AbstractContextManager[Path]:
        self.calls.append(f"local_path {key}")
        return self.inner.local_path(key)

    def exists(self, key: str) -> bool:
        self.calls.append(f"exists {key}")
        return self.inner.exists(key)

    def list(self, prefix: str) -> Iterator[StoredObject]:
        self.calls.append(f"list {prefix}")
        return self.inner.list(prefix)

    def delete(self, objects: Sequence[StoredObject]) -> DeleteResult:
        self.calls.append(f"delete {len(objects)}")
        return self.inner.delete(objects)

    def prune(self, prefix: str) -> None:
        self.calls.append(f"prune {prefix}")
        self.inner.prune(prefix)

    def recoverable_until(self, deleted_at: datetime) -> datetime | None:
        return self.inner.recoverable_until(deleted_at)

    def settings(self) -> dict[str, str]:
        return self.inner.settings()


def _files_under(root: Path) -> list[str]:
    """Every entry under `root` that is not a directory (files, links), as posix paths."""
    if not root.exists():
        return []
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir())
