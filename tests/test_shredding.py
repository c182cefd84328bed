"""Crypto-shredded staging: a copy of a staged batch that survives its purge (a backup, a disk
snapshot, a bucket version) is unreadable once the run's receipt says its key was destroyed.

The format is checked on its own (a round trip, and every way a sealed file can be altered);
then a real run is copied mid-flight, as a backup would, and the copy is read before and after
the run's purge.
"""

from __future__ import annotations

import gzip
import io
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from tests.support.connections import items_connection, protocol_connector
from tests.support.processes import wait_until
from workers.cli import start_sync
from workers.settings import Settings
from workers.shredding import (
    CHUNK,
    MAGIC,
    SealedFileError,
    SealingWriter,
    new_data_key,
    unseal,
)
from workflows.models import SyncRequest

CURSOR = "2031-07-04T12:34:56.789012Z"  # a value no test data elsewhere carries


def sealed(plain: bytes, key: bytes) -> bytes:
    out = io.BytesIO()
    writer = SealingWriter(out, key)
    writer.write(plain)
    writer.close()
    return out.getvalue()


def opened(data: bytes, key: bytes | None) -> bytes:
    out = io.BytesIO()
    unseal(io.BytesIO(data), out, key, what="the file")
    return out.getvalue()


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17])
def test_what_is_sealed_opens_with_its_key_and_shows_nothing_of_itself(size: int) -> None:
    plain = (CURSOR.encode() * (size // len(CURSOR) + 1))[:size]
    key = new_data_key()
    data = sealed(plain, key)
    assert data.startswith(MAGIC)
    assert opened(data, key) == plain
    if size >= len(CURSOR):
        assert CURSOR.encode() not in data


def test_a_sealed_file_does_not_open_without_its_key_or_once_altered() -> None:
    key = new_data_key()
    data = sealed(b"x" * (2 * CHUNK + 10), key)
    with pytest.raises(SealedFileError, match="key was destroyed"):
        opened(data, None)
    with pytest.raises(SealedFileError, match="wrong key, or the file was altered"):
        opened(data, new_data_key())
    flipped = bytearray(data)
    flipped[len(MAGIC) + 8 + 4 + 100] ^= 1
    with pytest.raises(SealedFileError, match="altered"):
        opened(bytes(flipped), key)
    # Its last chunk cut off: the file ends where a whole-looking chunk ends.
    last_chunk_start = len(MAGIC) + 8 + 2 * (4 + CHUNK + 16)
    with pytest.raises(SealedFileError, match="cut short"):
        opened(data[:last_chunk_start], key)
    with pytest.raises(SealedFileError, match="after its last chunk"):
        opened(data + b"more", key)


def test_a_file_staged_before_sealing_existed_is_read_as_it_is() -> None:
    plain = gzip.compress(b'{"type":"RECORD"}\n')
    assert opened(plain, None) == plain


def gated_connector(tmp_path: Path) -> Path:
    """Records carrying CURSOR, their state, then a wait for the test's `go` file."""
    return protocol_connector(
        tmp_path,
        "gated-source",
        f"""
        import os, time
        for i in range(50):
            record(i, {CURSOR!r})
        state({CURSOR!r})
        for i in range(50, 60):
            record(i, {CURSOR!r})
        open({str(tmp_path / "reading")!r}, "w").close()
        while not os.path.exists({str(tmp_path / "go")!r}):
            time.sleep(0.05)
        """,
    )


@pytest.mark.temporal
async def test_a_backup_of_staging_taken_mid_run_is_unreadable_once_the_receipt_exists(
    tmp_path: Path, make_settings: Callable[..., Settings], run_worker: Any, client: Client
) -> None:
    settings = make_settings(
        items_connection(gated_connector(tmp_path), tmp_path / "w.duckdb"), batch_records=10
    )
    sluice = await run_worker(settings)
    handle = await start_sync(client, settings, SyncRequest(connection_id="items"))
    await wait_until(lambda: (tmp_path / "reading").exists(), timeout=60)
    run_id = (await handle.describe()).run_id
    staging = sluice.staging_root / "items" / run_id
    await wait_until(lambda: any(staging.rglob("*.jsonl.gz")), timeout=30)

    # A backup of the staging while the run goes on.
    backup = tmp_path / "backup"
    shutil.copytree(staging, backup)
    copies = [p for p in backup.rglob("*") if p.is_file()]
    batches = [p for p in copies if p.name.endswith(".jsonl.gz")]
    assert batches and all(p.read_bytes().startswith(MAGIC) for p in copies)
    assert not any(CURSOR.encode() in p.read_bytes() for p in copies)
    # While the run lives, its key opens the copy: it is the staged data itself.
    key = sluice.metadata.existing_staging_key(run_id)
    assert key is not None
    assert CURSOR.encode() in gzip.decompress(opened(batches[0].read_bytes(), key))

    (tmp_path / "go").touch()
    summary = await handle.result()

    assert summary.status == "succeeded" and summary.verified_empty
    receipt = sluice.metadata.get_receipt(summary.receipt_id or "")
    assert receipt is not None and receipt["data_key_destroyed"] is True
    assert sluice.metadata.existing_staging_key(run_id) is None
    # Nothing left anywhere opens the backup now: the only key is gone.
    for copy in copies:
        with pytest.raises(SealedFileError, match="key was destroyed"):
            opened(copy.read_bytes(), sluice.metadata.existing_staging_key(run_id))
    with pytest.raises(KeyError, match="destroyed"):
        sluice.metadata.staging_key(run_id, "items")
