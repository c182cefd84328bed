"""Purge targets: a URI split into the store that holds it and the prefix to purge, checked
against the allow-list before any call is made (ARCHITECTURE invariant 3)."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from purge.errors import PurgeError
from purge.stores.base import UnsafePrefixError, normalize_prefix
from purge.stores.uri import UnsupportedStoreError, parse_store_uri


class TargetRefusedError(PurgeError, ValueError):
    """A purge target that is unsafe or outside the allow-list; nothing was called."""

    kind = "PurgeRefused"


@dataclass(frozen=True)
class PurgeTarget:
    store_uri: str
    """The root of the store: s3://bucket/ or az://container/; for a local target, the allow-list
    entry (staging root) it falls under, symlinks resolved, e.g. file:///var/lib/sluice/staging/
    (its parent when the target is that entry itself)."""
    prefix: str
    """Normalised, relative to the store root, ending in "/"."""

    @property
    def uri(self) -> str:
        return self.store_uri + self.prefix


def _canonical(uri: str) -> tuple[str, str]:
    """(store root URI, normalised prefix) for a file, s3 or az URI."""
    try:
        parsed = parse_store_uri(uri)
        return parsed.root, normalize_prefix(parsed.path)
    except (UnsupportedStoreError, UnsafePrefixError) as exc:
        raise TargetRefusedError(f"{uri!r}: {exc}") from None


def _within(prefix: str, allowed: str) -> bool:
    # Both end in "/", so "runs/conn1/" never matches "runs/conn10/".
    return prefix.startswith(allowed)


def parse_target(uri: str, allow: Iterable[str]) -> PurgeTarget:
    """Parse and check a purge target. Refused: no scheme or bucket, empty or root prefix, '..',
    and anything not under one of the allowed URI prefixes.

    Matching is on the paths as written, on a '/' boundary. A local target is then rooted at the
    (longest) allow-list entry it falls under, with that entry's symlinks resolved: a staging
    root configured through a symlink (``/tmp/link/staging/`` with ``/tmp/link -> /tmp/real``)
    is trusted configuration, while a symlink in the rest of the path, inside what is purged, is
    refused by the local store and never followed.
    """
    root, prefix = _canonical(uri)
    allowed = []
    matched: str | None = None
    for entry in allow:
        allowed_root, allowed_prefix = _canonical_allow(entry)
        allowed.append(allowed_root + allowed_prefix)
        if allowed_root == root and _within(prefix, allowed_prefix):
            if root != "file:///":
                return PurgeTarget(root, prefix)
            if matched is None or len(allowed_prefix) > len(matched):
                matched = allowed_prefix
    if matched is not None:
        return _local_target(uri, prefix, matched)
    raise TargetRefusedError(
        f"{uri!r} is outside the purge allow-list (SLUICE_PURGE_ALLOW): "
        + (", ".join(allowed) if allowed else "the list is empty")
    )


def _local_target(uri: str, prefix: str, allowed_prefix: str) -> PurgeTarget:
    """Root a local target at its allow-list entry, resolved; the rest of the path is the prefix.

    When the target is the entry itself, the store is rooted at the resolved entry's parent and
    the prefix is the entry's own (resolved, so symlink-free) name: a prefix is never empty.
    """
    base = Path(os.path.realpath("/" + allowed_prefix))
    if base == base.parent:
        # A staging root linked to "/" would make the whole filesystem purgeable.
        raise TargetRefusedError(f"{uri!r}: its allow-list entry resolves to the filesystem root")
    rest = prefix[len(allowed_prefix) :]
    if not rest:
        base, rest = base.parent, base.name + "/"
    store_uri = base.as_uri()
    return PurgeTarget(store_uri if store_uri.endswith("/") else store_uri + "/", rest)


def _canonical_allow(entry: str) -> tuple[str, str]:
    # An allow-list entry may be a whole bucket ("s3://bucket/"), which as a purge target would
    # be refused for its empty prefix.
    try:
        parsed = parse_store_uri(entry)
    except UnsupportedStoreError as exc:
        raise TargetRefusedError(f"allow-list entry {entry!r}: {exc}") from None
    if parsed.scheme != "file" and parsed.path.strip("/") == "":
        return parsed.root, ""
    root, prefix = _canonical(entry)
    return root, posixpath.join(prefix, "")
