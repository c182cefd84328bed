"""Staging stores, and the one place that maps a storage URI to a store."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from purge.stores.base import (
    DeleteResult,
    StagingStore,
    StoredObject,
    UnsafeKeyError,
    UnsafePrefixError,
    normalize_prefix,
    validate_key,
)
from purge.stores.local import LocalStagingStore

__all__ = [
    "DeleteResult",
    "LocalStagingStore",
    "StagingStore",
    "StoreOptions",
    "StoredObject",
    "UnsafeKeyError",
    "UnsafePrefixError",
    "UnsupportedStoreError",
    "normalize_prefix",
    "open_store",
    "validate_key",
]


@dataclass(frozen=True)
class StoreOptions:
    """How to reach the stores that need more than their URI (credentials come from the
    standard AWS settings for S3)."""

    azure_connection_string: str | None = None
    azure_account_url: str | None = None
    azure_credential: Any = None


class UnsupportedStoreError(ValueError):
    """A storage URI this build cannot open; raised at start-up, before any data is staged."""


def open_store(uri: str, options: StoreOptions | None = None) -> StagingStore:
    """Open the store a URI names: file:///abs/dir/ today; s3:// and az:// are planned."""
    parts = urllib.parse.urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "file":
        return LocalStagingStore(_file_uri_path(uri, parts))
    if scheme in ("s3", "az"):
        raise UnsupportedStoreError(f"{scheme}:// staging stores are not supported yet: {uri!r}")
    if not scheme:
        raise UnsupportedStoreError(
            f"store URI {uri!r} has no scheme; use file:///absolute/dir/, s3:// or az://"
        )
    raise UnsupportedStoreError(
        f"store URI {uri!r} has unsupported scheme {scheme!r}; use file://, s3:// or az://"
    )


def _file_uri_path(uri: str, parts: urllib.parse.SplitResult) -> Path:
    # A relative root would move with the worker's working directory, and the purge would then
    # verify a different directory than the one the sync staged into.
    if parts.netloc not in ("", "localhost"):
        raise UnsupportedStoreError(
            f"file URI {uri!r} names host {parts.netloc!r}: it must be a local absolute path, "
            "file:///absolute/dir/ (a relative path is not accepted)"
        )
    path = urllib.parse.unquote(parts.path)
    if not path.startswith("/"):
        raise UnsupportedStoreError(
            f"file URI {uri!r} has a relative path; use file:///absolute/dir/"
        )
    return Path(path)
