"""Purge targets: a URI split into the store that holds it and the prefix to purge, checked
against the allow-list before any call is made (ARCHITECTURE invariant 3)."""

from __future__ import annotations

import posixpath
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass

from purge.stores.base import UnsafePrefixError, normalize_prefix


class TargetRefusedError(ValueError):
    """A purge target that is unsafe or outside the allow-list; nothing was called."""


@dataclass(frozen=True)
class PurgeTarget:
    store_uri: str
    """The root of the store: file:/// , s3://bucket/ or az://container/."""
    prefix: str
    """Normalised, relative to the store root, ending in "/"."""

    @property
    def uri(self) -> str:
        return self.store_uri + self.prefix


def _canonical(uri: str) -> tuple[str, str]:
    """(store root URI, normalised prefix) for a file, s3 or az URI."""
    parts = urllib.parse.urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise TargetRefusedError(f"{uri!r}: a file URI must name a local absolute path")
        path = urllib.parse.unquote(parts.path)
        if not path.startswith("/"):
            raise TargetRefusedError(f"{uri!r}: a file URI must name an absolute path")
        root, rest = "file:///", path.lstrip("/")
    elif scheme in ("s3", "az"):
        if not parts.netloc:
            raise TargetRefusedError(f"{uri!r}: names no bucket or container")
        root, rest = f"{scheme}://{parts.netloc}/", urllib.parse.unquote(parts.path).lstrip("/")
    else:
        raise TargetRefusedError(f"{uri!r}: unsupported scheme; use file://, s3:// or az://")
    if parts.query or parts.fragment:
        raise TargetRefusedError(f"{uri!r}: query strings and fragments are not allowed")
    try:
        prefix = normalize_prefix(rest)
    except UnsafePrefixError as exc:
        raise TargetRefusedError(f"{uri!r}: {exc}") from None
    return root, prefix


def _within(prefix: str, allowed: str) -> bool:
    # Both end in "/", so "runs/conn1/" never matches "runs/conn10/".
    return prefix.startswith(allowed)


def parse_target(uri: str, allow: Iterable[str]) -> PurgeTarget:
    """Parse and check a purge target. Refused: no scheme or bucket, empty or root prefix, '..',
    and anything not under one of the allowed URI prefixes."""
    root, prefix = _canonical(uri)
    allowed = []
    for entry in allow:
        allowed_root, allowed_prefix = _canonical_allow(entry)
        allowed.append(allowed_root + allowed_prefix)
        if allowed_root == root and _within(prefix, allowed_prefix):
            return PurgeTarget(root, prefix)
    raise TargetRefusedError(
        f"{uri!r} is outside the purge allow-list (SLUICE_PURGE_ALLOW): "
        + (", ".join(allowed) if allowed else "the list is empty")
    )


def _canonical_allow(entry: str) -> tuple[str, str]:
    # An allow-list entry may be a whole bucket ("s3://bucket/"), which as a purge target would
    # be refused for its empty prefix.
    parts = urllib.parse.urlsplit(entry)
    path = urllib.parse.unquote(parts.path)
    if parts.scheme.lower() in ("s3", "az") and parts.netloc and path.strip("/") == "":
        return f"{parts.scheme.lower()}://{parts.netloc}/", ""
    root, prefix = _canonical(entry)
    return root, posixpath.join(prefix, "")
