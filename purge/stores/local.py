"""A staging store in a local directory: the default on a single machine and in tests."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from purge.stores.base import (
    DeleteResult,
    StagingStore,
    StoredObject,
    UnsafeKeyError,
    UnsafePrefixError,
    normalize_prefix,
    validate_key,
)

# Not available on Windows; there opening a symlink follows it, which the key checks bound.
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class LocalStagingStore(StagingStore):
    """Keys map to files under `root`; directories exist only to hold them.

    Nothing is ever followed through a symlink: a link inside the store is an object of its own
    (listed, deleted as a link), and a key or prefix that passes through a linked directory is
    refused, because it could lead outside the root. The root itself is trusted configuration
    and may be reached through symlinks: only what lies below it is checked (purge targets are
    rooted at their resolved allow-list entry, see `purge.targets.parse_target`).
    """

    delete_batch_size = 100
    """Progress is reported after every 100 unlinks (fewer when they are slow)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.abspath(root))
        self.root.mkdir(parents=True, exist_ok=True)
        uri = self.root.as_uri()
        self.uri = uri if uri.endswith("/") else uri + "/"

    def __repr__(self) -> str:
        return f"LocalStagingStore({str(self.root)!r})"

    def settings(self) -> dict[str, str]:
        return {"kind": "local", "versioning": "none", "soft_delete": "none"}

    @contextlib.contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        path = self._path_for(key)
        created = _make_parents(path.parent)
        try:
            # Same directory as the target, so os.replace is a rename on one filesystem and
            # therefore atomic. mkstemp's mode 0600 is kept: staged data is private.
            fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".sluice-", suffix=".partial")
        except BaseException:
            _remove_empty_dirs(created)
            raise
        try:
            with os.fdopen(fd, "wb") as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            _remove_empty_dirs(created)
            raise

    @contextlib.contextmanager
    def open_read(self, key: str) -> Iterator[BinaryIO]:
        path = self._path_for(key)
        fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW)
        with os.fdopen(fd, "rb") as handle:
            yield handle

    @contextlib.contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        path = self._path_for(key)
        if stat.S_ISLNK(os.lstat(path).st_mode):
            raise UnsafeKeyError(key, "is a symlink, whose target the store does not own")
        yield path

    def exists(self, key: str) -> bool:
        try:
            mode = os.lstat(self._path_for(key)).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return False
        return not stat.S_ISDIR(mode)

    def list(self, prefix: str) -> Iterator[StoredObject]:
        """Yield every non-directory entry under the prefix, in key order, without following links.

        Memory is bounded by the largest single directory, which is read and sorted at once.
        """
        normalized = normalize_prefix(prefix)
        base = self._prefix_dir(normalized, prefix)
        if base is None:
            return
        stack = [_sorted_entries(base, normalized)]
        while stack:
            entry_and_key = next(stack[-1], None)
            if entry_and_key is None:
                stack.pop()
                continue
            entry, key, is_dir = entry_and_key
            if is_dir:
                stack.append(_sorted_entries(Path(entry.path), key + "/"))
                continue
            try:
                size = entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                continue  # deleted since the directory was read
            yield StoredObject(key=key, size=size)

    def delete(self, objects: Sequence[StoredObject]) -> DeleteResult:
        """Unlink each file; a symlink goes, never its target. Directories are left to prune."""
        result = DeleteResult(deleted=[], failed=[])
        for obj in objects:
            if obj.version_id is not None:
                result.failed.append((obj, "the local store has no versions"))
                continue
            try:
                os.unlink(self._path_for(obj.key))
            except (FileNotFoundError, NotADirectoryError):
                result.deleted.append(obj)
            except UnsafeKeyError as exc:
                result.failed.append((obj, exc.reason))
            except OSError as exc:
                result.failed.append((obj, f"{type(exc).__name__}: {exc.strerror}"))
            else:
                result.deleted.append(obj)
        return result

    def prune(self, prefix: str) -> None:
        """Remove directories left empty under the prefix, the prefix's own directory included.

        Nothing above the prefix is removed: a sibling run may be creating its directory there.
        """
        normalized = normalize_prefix(prefix)
        base = self._prefix_dir(normalized, prefix)
        if base is None:
            return
        # Bottom-up, and os.walk does not descend into linked directories; rmdir on a link or a
        # directory that is not empty fails, and that is the intended outcome.
        for dirpath, _dirnames, _filenames in os.walk(base, topdown=False):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)

    def _path_for(self, key: str) -> Path:
        validate_key(key)
        path = self.root.joinpath(*key.split("/"))
        if _first_symlink(self.root, path.parent) is not None:
            raise UnsafeKeyError(key, "passes through a symlinked directory")
        return path

    def _prefix_dir(self, normalized: str, prefix: str) -> Path | None:
        """The directory holding the prefix, or None when nothing can be stored under it."""
        base = self.root.joinpath(*normalized.rstrip("/").split("/"))
        if _first_symlink(self.root, base) is not None:
            raise UnsafePrefixError(prefix, "passes through a symlink inside the store")
        return base if base.is_dir() else None


def _first_symlink(root: Path, path: Path) -> Path | None:
    """The first symlink on the way from root (excluded) down to path (included), if any."""
    current = root
    for part in path.relative_to(root).parts:
        current = current / part
        try:
            if stat.S_ISLNK(os.lstat(current).st_mode):
                return current
        except (FileNotFoundError, NotADirectoryError):
            return None
    return None


def _sorted_entries(
    directory: Path, key_prefix: str
) -> Iterator[tuple[os.DirEntry[str], str, bool]]:
    """Entries of one directory, ordered so that the keys they lead to come out in order.

    A directory sorts as its name plus '/', because every key inside it continues that way:
    'a-c' (0x2d) comes before 'a/b' (0x2f) even though the directory 'a' sorts before 'a-c'.
    """
    try:
        with os.scandir(directory) as scan:
            entries = [(entry, entry.is_dir(follow_symlinks=False)) for entry in scan]
    except (FileNotFoundError, NotADirectoryError):
        return  # removed since its parent was read
    entries.sort(key=lambda item: item[0].name + "/" if item[1] else item[0].name)
    for entry, is_dir in entries:
        yield entry, key_prefix + entry.name, is_dir


def _make_parents(directory: Path) -> list[Path]:
    """Create the missing directories down to `directory`; return those this call created."""
    missing: list[Path] = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    created: list[Path] = []
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            continue  # created concurrently by another writer: not ours to remove
        created.append(path)
    return created


def _remove_empty_dirs(created: list[Path]) -> None:
    for path in reversed(created):
        with contextlib.suppress(OSError):
            path.rmdir()
