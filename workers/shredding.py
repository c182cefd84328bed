"""Crypto-shredded staging: every file a run stages is sealed (AES-256-GCM) with a data key of
that run's own, and destroying the key makes every copy unreadable, wherever it survives.

Deleting files cannot reach a disk snapshot, a backup or a bucket version the purge could not
delete; destroying the only key can. The key lives in the metadata store (a key is not data, and
the store never holds data), is created by the run's first attempt, read by its other attempts
and by a replay, and destroyed once nothing needs it: when the run's staging is purged after its
commit, when a replay finished it, or when the sweep purges what a failed run kept. The purge
receipt says so (``data_key_destroyed``).

A sealed file is ``SLUICE-SEALED-1\\n`` followed by chunks of at most 1 MiB of plaintext, each
``len (4 bytes, big-endian) || AES-GCM(ciphertext || tag)``. Chunk ``i`` is sealed with the
nonce ``prefix (8 random bytes) || i (4 bytes)``, and authenticated with ``i`` and whether it
is the last chunk, so chunks cannot be reordered, dropped or cut off unnoticed. Files staged
before sealing existed have no header and are read as they are.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from purge.stores import StagingStore
from workers.errors import SluiceError

MAGIC = b"SLUICE-SEALED-1\n"
CHUNK = 1 << 20
_NONCE_PREFIX = 8
_TAG = 16


class SealedFileError(SluiceError):
    """A sealed staged file cannot be opened: its key was destroyed, or it was tampered with."""

    kind = "SealedStaging"


class SealingWriter:
    """A write-only file that seals what it is given into `raw` (which it does not close)."""

    def __init__(self, raw: BinaryIO, key: bytes) -> None:
        self._raw = raw
        self._aead = AESGCM(key)
        self._prefix = secrets.token_bytes(_NONCE_PREFIX)
        self._buffer = bytearray()
        self._index = 0
        self._closed = False
        self.bytes_written = 0
        self._put(MAGIC + self._prefix)

    def _put(self, data: bytes) -> None:
        self._raw.write(data)
        self.bytes_written += len(data)

    def write(self, data: bytes) -> int:
        self._buffer += data
        while len(self._buffer) > CHUNK:
            self._seal(bytes(self._buffer[:CHUNK]), last=False)
            del self._buffer[:CHUNK]
        return len(data)

    def flush(self) -> None:
        """Nothing to do: a chunk is sealed only once whole (GzipFile calls this on close)."""

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._seal(bytes(self._buffer), last=True)
            self._buffer.clear()

    @property
    def closed(self) -> bool:
        return self._closed

    def _seal(self, plain: bytes, *, last: bool) -> None:
        nonce = self._prefix + struct.pack(">I", self._index)
        sealed = self._aead.encrypt(nonce, plain, _aad(self._index, last))
        self._put(struct.pack(">I", len(sealed)) + sealed)
        self._index += 1


def _aad(index: int, last: bool) -> bytes:
    return struct.pack(">IB", index, 1 if last else 0)


def unseal(source: BinaryIO, out: BinaryIO, key: bytes | None, *, what: str) -> None:
    """Write the plaintext of a sealed file to `out`; a file without the header (staged before
    sealing existed) is copied as it is. `what` names the file in errors."""
    head = source.read(len(MAGIC))
    if head != MAGIC:
        out.write(head)
        while chunk := source.read(CHUNK):
            out.write(chunk)
        return
    if key is None:
        raise SealedFileError(f"{what} is sealed and its run's staging key was destroyed")
    aead = AESGCM(key)
    prefix = source.read(_NONCE_PREFIX)
    index = 0
    while True:
        size_bytes = source.read(4)
        if len(size_bytes) < 4:
            raise SealedFileError(f"{what} is cut short (no last chunk)")
        (size,) = struct.unpack(">I", size_bytes)
        sealed = source.read(size)
        nonce = prefix + struct.pack(">I", index)
        for last in (False, True):
            try:
                plain = aead.decrypt(nonce, sealed, _aad(index, last))
            except InvalidTag:
                continue
            out.write(plain)
            if last:
                if source.read(1):
                    raise SealedFileError(f"{what} has data after its last chunk")
                return
            break
        else:
            raise SealedFileError(
                f"{what} cannot be opened: a wrong key, or the file was altered (chunk {index})"
            )
        index += 1


class PlainWriter:
    """What a run without a staging key writes through: the object as it is (tests of the
    engine alone, and files staged before sealing existed)."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.bytes_written = 0
        self.closed = False

    def write(self, data: bytes) -> int:
        self._raw.write(data)
        self.bytes_written += len(data)
        return len(data)

    def flush(self) -> None:
        """Nothing buffered here."""

    def close(self) -> None:
        self.closed = True


class RunSealing:
    """The staging of one run: objects written sealed with the run's key, read unsealed.
    `key` None: the run stages plainly (and a sealed file cannot be read: its key is gone)."""

    def __init__(self, store: StagingStore, key: bytes | None) -> None:
        self.store = store
        self.key = key

    @contextlib.contextmanager
    def open_write(self, key: str) -> Iterator[SealingWriter | PlainWriter]:
        """An object at `key`, sealed when the run has a key; on error the store removes the
        partial object."""
        with self.store.open_write(key) as raw:
            writer = SealingWriter(raw, self.key) if self.key else PlainWriter(raw)
            yield writer
            writer.close()

    def read_bytes(self, key: str) -> bytes:
        """A small staged object (a journal entry), unsealed in memory."""
        with self.store.open_read(key) as raw, tempfile.SpooledTemporaryFile() as out:
            unseal(raw, out, self.key, what=f"staged file {key}")  # type: ignore[arg-type]
            out.seek(0)
            return out.read()

    @contextlib.contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        """A staged object as a local file for a database to load: unsealed into a private
        temporary file, removed as soon as the caller is done with it (a plain run's object
        as the store gives it)."""
        with self.store.local_path(key) as staged:
            if self.key is None:
                yield staged
                return
            handle, name = tempfile.mkstemp(prefix="sluice-unsealed-", suffix=".gz")
            path = Path(name)
            try:
                with os.fdopen(handle, "wb") as out, staged.open("rb") as source:
                    unseal(source, out, self.key, what=f"staged file {key}")
                yield path
            finally:
                path.unlink(missing_ok=True)


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)
