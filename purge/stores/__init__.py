"""Staging stores, and the one place that maps a storage URI to a store.

The S3 and Azure stores (`purge.stores.s3`, `purge.stores.azure`) are imported when a URI names
one: their SDKs take a tenth of a second each to import, which `sluice purge` of another store
need not pay."""

from __future__ import annotations

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
from purge.stores.uri import StoreURI, UnsupportedStoreError, parse_store_uri

__all__ = [
    "DeleteResult",
    "LocalStagingStore",
    "StagingStore",
    "StoreOptions",
    "StoreURI",
    "StoredObject",
    "UnsafeKeyError",
    "UnsafePrefixError",
    "UnsupportedStoreError",
    "normalize_prefix",
    "open_store",
    "parse_store_uri",
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


def open_store(uri: str, options: StoreOptions | None = None) -> StagingStore:
    """Open the store a URI names, rooted there: file:///abs/dir/, s3://bucket/prefix/ or
    az://container/prefix/ (the Azure account comes from the options)."""
    options = options or StoreOptions()
    parsed = parse_store_uri(uri)
    if parsed.scheme == "file":
        return LocalStagingStore(Path("/" + parsed.path))
    if parsed.scheme == "s3":
        from purge.stores.s3 import S3StagingStore

        return S3StagingStore(
            parsed.container,
            parsed.path,
            server_side_encryption=options.s3_server_side_encryption,
        )
    if not (options.azure_connection_string or options.azure_account_url):
        raise UnsupportedStoreError(
            f"store URI {uri!r}: no Azure account configured; set "
            "AZURE_STORAGE_CONNECTION_STRING or SLUICE_AZURE_ACCOUNT_URL"
        )
    from purge.stores.azure import AzureStagingStore

    return AzureStagingStore.from_environment(
        parsed.container,
        parsed.path,
        connection_string=options.azure_connection_string,
        account_url=options.azure_account_url,
        credential=options.azure_credential,
    )
