"""Raw logs never rest on disk: the phase is cancelled, or its worker killed, mid-sync, and no
file anywhere holds the raw log; the connector does not outlive its worker; the private files
that held its config are removed."""

from __future__ import annotations

import os
import signal
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import CancelledError
from temporalio.testing import WorkflowEnvironment

from tests.support.connections import items_connection, protocol_connector
from tests.support.processes import wait_until, worker_process
from workers.cli import start_sync
from workers.metadata import MetadataStore
from workers.settings import Settings
from workflows.models import SyncRequest

pytestmark = pytest.mark.temporal


def hanging_connector(tmp_path: Path, marker: str) -> Path:
    """Prints a raw log line with `marker`, records its pid, then hangs silently, unless
    tmp_path/release exists (the run after a kill), when it finishes."""
    return protocol_connector(
        tmp_path,
        "source-hanging",
        f"""
        import os, time
        emit({{"type": "LOG", "log": {{"level": "INFO", "message": "raw line {marker}"}}}})
        print("stderr line {marker}", file=sys.stderr, flush=True)
        if not os.path.exists({str(tmp_path / "release")!r}):
            open({str(tmp_path / "connector.pid")!r}, "w").write(str(os.getpid()))
            time.sleep(120)
        record(1, "2024-01-01T00:00:00Z")
        state("2024-01-01T00:00:00Z")
        """,
    )


def files_holding(marker: str, roots: list[Path], since: float) -> list[Path]:
    """Every regular file under the roots, changed since `since`, whose bytes hold `marker`."""
    needle = marker.encode()
    found: set[Path] = set()
    for root in roots:
        for path in _files(root):
            try:
                if path.stat().st_mtime >= since and needle in path.read_bytes():
                    found.add(path)
            except OSError:
                continue
    return sorted(found)


def _files(root: Path) -> Iterator[Path]:
    for directory, _dirs, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            if path.is_file() and not path.is_symlink():
                yield path


@pytest.fixture
def own_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary directory of the test's own, where this process (its in-process workers) and
    the worker processes it starts put their temporary files, so that the test looks at its own
    files only, never at the machine-wide temporary directory and what others leave there."""
    own = tmp_path / "tmp"
    own.mkdir()
    monkeypatch.setenv("TMPDIR", str(own))  # what a worker process and a connector inherit
    monkeypatch.setattr(tempfile, "tempdir", str(own))  # what gettempdir() answers here
    return own


def orphaned_private_dirs() -> list[Path]:
    """The private directories of connector runs whose worker is dead, in the temporary
    directory (the test's own, with `own_tmpdir`)."""
    return [
        p
        for p in Path(tempfile.gettempdir()).glob("sluice-connector-*-*")
        if not _alive(int(p.name.split("-")[2]))
    ]


def _alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by its parent, does not count)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


async def test_cancelled_mid_sync_leaves_no_raw_log(
    tmp_path: Path,
    own_tmpdir: Path,
    make_settings: Callable[..., Settings],
    run_worker: Any,
    client: Client,
) -> None:
    started = time.time() - 2  # file times are coarser than the clock
    marker = f"RAW-{uuid.uuid4().hex}"
    connector = hanging_connector(tmp_path, marker)
    settings = make_settings(
        items_connection(connector, tmp_path / "w"), heartbeat_timeout_seconds=3
    )
    await run_worker(settings)
    handle = await start_sync(client, settings, SyncRequest(connection_id="items"))
    pid_file = tmp_path / "connector.pid"
    await wait_until(pid_file.exists)
    pid = int(pid_file.read_text())

    await handle.cancel()
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()

    # Cancelled is cancelled: the workflow ends CANCELED and the run is recorded so.
    assert isinstance(failed.value.cause, CancelledError)
    assert (await handle.describe()).status == WorkflowExecutionStatus.CANCELED
    metadata = MetadataStore.from_url(settings.resolved_metadata_url)
    run = metadata.get_run(handle.result_run_id or "")
    assert run is not None and run["status"] == "cancelled"
    assert metadata.lock_holder("items") is None
    await wait_until(lambda: not _alive(pid), timeout=15)  # the connector was stopped
    roots = [tmp_path]  # the test's own directory, its temporary directory included
    retained = list((settings.state_path / "logs").rglob("attempt-*.log"))
    assert len(retained) == 1  # scrubbed and retained as the phase ended
    assert "stderr line" in retained[0].read_text()
    assert files_holding(marker, roots, started) == sorted([*retained, connector])
    assert not list(own_tmpdir.glob(f"sluice-connector-{os.getpid()}-*"))


async def test_worker_killed_mid_sync_leaves_no_raw_log_and_no_connector(
    tmp_path: Path,
    own_tmpdir: Path,
    make_settings: Callable[..., Settings],
    run_worker: Any,
    client: Client,
    temporal_env: WorkflowEnvironment,
) -> None:
    started = time.time() - 2  # file times are coarser than the clock
    marker = f"RAW-{uuid.uuid4().hex}"
    connector = hanging_connector(tmp_path, marker)
    settings = make_settings(
        items_connection(connector, tmp_path / "w"),
        heartbeat_timeout_seconds=3,
    )
    worker = worker_process(
        settings, temporal_env, tmp_path / "worker.log", {"TMPDIR": str(own_tmpdir)}
    )
    try:
        handle = await start_sync(client, settings, SyncRequest(connection_id="items"))
        pid_file = tmp_path / "connector.pid"
        await wait_until(pid_file.exists)
        pid = int(pid_file.read_text())
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()

    await wait_until(lambda: not _alive(pid), timeout=15)  # died with its worker
    roots = [tmp_path]  # the test's own directory, the worker's temporary directory included
    assert files_holding(marker, roots, started) == [connector]
    # The killed worker could not remove its config files, in its (the test's) temporary dir.
    assert orphaned_private_dirs()

    (tmp_path / "release").touch()
    await run_worker(settings)  # takes the sync over after the heartbeat timeout
    summary = await handle.result()

    assert summary.records == {"items": 1}
    assert orphaned_private_dirs() == []
    retained = list((settings.state_path / "logs").rglob("attempt-*.log"))
    assert [p.name for p in retained] == ["attempt-002.log"]  # the killed attempt's raw log died
    assert files_holding(marker, roots, started) == sorted([*retained, connector])
