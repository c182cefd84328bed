"""Staging stores, and the one place that maps a storage URI to a store."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from purge.errors import PurgeError
from purge.stores.azure import AzureStagingStore
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
from purge.stores.s3 import S3StagingStore

__all__ = [
    "AzureStagingStore",
    "DeleteResult",
    "LocalStagingStore",
    "S3StagingStore",
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
    s3_server_side_encryption: str | None = None
    """Requested on every S3 write, e.g. "AES256" or "aws:kms"."""


class UnsupportedStoreError(PurgeError, ValueError):
    """A storage URI this build cannot open; raised at start-up, before any data is staged."""

    kind = "UnsupportedStore"


def open_store(uri: str, options: StoreOptions | None = None) -> StagingStore:
    """Open the store a URI names, rooted there: file:///abs/dir/, s3://bucket/prefix/ or
    az://container/prefix/ (the Azure account comes from the options)."""
    options = options or StoreOptions()
    parts = urllib.parse.urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "file":
        return LocalStagingStore(_file_uri_path(uri, parts))
    if scheme in ("s3", "az"):
        if not parts.netloc:
            raise UnsupportedStoreError(f"store URI {uri!r} names no bucket or container")
        base = urllib.parse.unquote(parts.path).lstrip("/")
        if scheme == "s3":
            return S3StagingStore(
                parts.netloc, base, server_side_encryption=options.s3_server_side_encryption
            )
        if not (options.azure_connection_string or options.azure_account_url):
            raise UnsupportedStoreError(
                f"store URI {uri!r}: no Azure account configured; set "
                "AZURE_STORAGE_CONNECTION_STRING or SLUICE_AZURE_ACCOUNT_URL"
            )
        return AzureStagingStore.from_environment(
            parts.netloc,
            base,
            connection_string=options.azure_connection_string,
            account_url=options.azure_account_url,
            credential=options.azure_credential,
        )
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
