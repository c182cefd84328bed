"""The one parser of storage URIs: file:///abs/dir/, s3://bucket/prefix/, az://container/prefix/.

Opening a store (`purge.stores.open_store`) and checking a purge target (`purge.targets`) read a
URI the same way, so the store that is purged is always the store that was checked.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from purge.errors import PurgeError

SCHEMES = ("file", "s3", "az")


class UnsupportedStoreError(PurgeError, ValueError):
    """A storage URI this build cannot open (or, as configured, cannot reach); raised at
    start-up, before any data is staged. The message says what to write instead."""

    kind = "UnsupportedStore"


@dataclass(frozen=True)
class StoreURI:
    scheme: str
    """"file", "s3" or "az"."""
    container: str
    """The bucket or container; "" for a local path."""
    path: str
    """Unquoted, without a leading "/" ("" for a bucket's root); for "file", relative to "/"."""

    @property
    def root(self) -> str:
        """The URI of the store's root: file:///, s3://bucket/ or az://container/."""
        return "file:///" if self.scheme == "file" else f"{self.scheme}://{self.container}/"


def parse_store_uri(uri: str) -> StoreURI:
    parts = urllib.parse.urlsplit(uri)
    scheme = parts.scheme.lower()
    if not scheme:
        raise UnsupportedStoreError(
            f"store URI {uri!r} has no scheme; use file:///absolute/dir/, s3:// or az://"
        )
    if scheme not in SCHEMES:
        raise UnsupportedStoreError(
            f"store URI {uri!r} has unsupported scheme {scheme!r}; use file://, s3:// or az://"
        )
    if parts.query or parts.fragment:
        raise UnsupportedStoreError(
            f"store URI {uri!r}: query strings and fragments are not allowed"
        )
    path = urllib.parse.unquote(parts.path)
    if scheme == "file":
        # A relative root would move with the worker's working directory, and the purge would
        # then verify a different directory than the one the sync staged into.
        if parts.netloc not in ("", "localhost"):
            raise UnsupportedStoreError(
                f"file URI {uri!r} names host {parts.netloc!r}: it must be a local absolute "
                "path, file:///absolute/dir/"
            )
        if not path.startswith("/"):
            raise UnsupportedStoreError(
                f"file URI {uri!r} has a relative path; use file:///absolute/dir/"
            )
        return StoreURI("file", "", path.lstrip("/"))
    if not parts.netloc:
        raise UnsupportedStoreError(f"store URI {uri!r} names no bucket or container")
    return StoreURI(scheme, parts.netloc, path.lstrip("/"))
