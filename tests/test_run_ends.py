"""How runs end, made to happen with real parts: a protocol connector, a worker, DuckDB, the store.

Each test brings about one of the ordinary events that used to leave a connection locked or its
staging orphaned, then checks what the operator would: the rows, the run's record, the lock, the
staging prefix, the message.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from tests.support.connections import items_connection, protocol_connector
from tests.support.processes import wait_until
from workers.cli import start_sync
from workers.metadata import MetadataStore
from workers.settings import Settings
from workflows.models import SyncRequest

pytestmark = pytest.mark.temporal


def gated_connector(tmp_path: Path) -> Path:
    """Three records and their state, then it waits for the test's `go` file."""
    return protocol_connector(
        tmp_path,
        "gated-source",
        f"""
        import os, time
        for i in range(3):
            record(i, f"2024-01-0{{i + 1}}")
        state("2024-01-03")
        open({str(tmp_path / "reading")!r}, "w").close()
        while not os.path.exists({str(tmp_path / "go")!r}):
            time.sleep(0.05)
        """,
    )


def rows(warehouse: Path) -> int:
    with duckdb.connect(str(warehouse), read_only=True) as db:
        return int(db.execute("SELECT count(*) FROM main.items").fetchone()[0])  # type: ignore[index]


def staged_files(settings: Settings, run_id: str) -> list[Path]:
    prefix = settings.state_path / "staging" / "items" / run_id
    return [p for p in prefix.rglob("*") if p.is_file()] if prefix.exists() else []


async def test_a_connections_file_broken_mid_run_does_not_stop_the_purge(
    tmp_path: Path, make_settings: Callable[..., Settings], run_worker: Any, client: Client
) -> None:
    warehouse = tmp_path / "w.duckdb"
    settings = make_settings(items_connection(gated_connector(tmp_path), warehouse))
    await run_worker(settings)
    handle = await start_sync(client, settings, SyncRequest(connection_id="items"))
    await wait_until(lambda: (tmp_path / "reading").exists())
    settings.connections_file.write_text("[[connections]\nid = ", encoding="utf-8")
    (tmp_path / "go").touch()

    summary = await handle.result()

    assert summary.status == "succeeded" and summary.records == {"items": 3}
    assert summary.verified_empty and summary.objects_purged > 0
    assert len(summary.warnings) == 1 and "metadata not retained" in summary.warnings[0]
    assert "connections" in summary.warnings[0]
    assert rows(warehouse) == 3
    assert staged_files(settings, summary.run_id) == []
    store = MetadataStore.from_url(settings.resolved_metadata_url)
    assert store.get_run(summary.run_id)["status"] == "succeeded"
    assert store.lock_holder("items") is None


async def test_a_log_store_that_cannot_be_written_is_reported_and_the_run_succeeds(
    tmp_path: Path, make_settings: Callable[..., Settings], run_worker: Any, client: Client
) -> None:
    warehouse = tmp_path / "w.duckdb"
    logs = tmp_path / "logs"
    settings = make_settings(
        items_connection(gated_connector(tmp_path), warehouse), log_store=logs.as_uri() + "/"
    )
    (tmp_path / "go").touch()
    await run_worker(settings)
    # The log store breaks while the worker runs: a file where its directory was.
    logs.rmdir()
    logs.write_text("not a directory")

    summary = await (
        await start_sync(client, settings, SyncRequest(connection_id="items"))
    ).result()

    assert summary.status == "succeeded" and summary.records == {"items": 3}
    assert summary.log_uri is None
    assert summary.warnings == [
        "log not retained: NotADirectoryError writing the scrubbed log (after 3 tries)"
    ]
    assert summary.verified_empty and rows(warehouse) == 3
    assert staged_files(settings, summary.run_id) == []
    store = MetadataStore.from_url(settings.resolved_metadata_url)
    assert store.get_run(summary.run_id)["warnings"] == summary.warnings
    assert store.lock_holder("items") is None


async def test_a_staging_root_reached_through_a_symlink_is_purged(
    tmp_path: Path, make_settings: Callable[..., Settings], run_worker: Any, client: Client
) -> None:
    real = tmp_path / "real-staging"
    real.mkdir()
    link = tmp_path / "staging-link"
    link.symlink_to(real)
    warehouse = tmp_path / "w.duckdb"
    settings = make_settings(
        items_connection(gated_connector(tmp_path), warehouse), staging_uri=link.as_uri() + "/"
    )
    (tmp_path / "go").touch()
    await run_worker(settings)

    summary = await (
        await start_sync(client, settings, SyncRequest(connection_id="items"))
    ).result()

    assert summary.status == "succeeded" and summary.verified_empty
    assert summary.objects_purged > 0
    assert [p for p in real.rglob("*") if p.is_file()] == []
    assert rows(warehouse) == 3


async def test_a_sync_past_its_deadline_stops_the_connector_and_ends_timed_out(
    tmp_path: Path, make_settings: Callable[..., Settings], run_worker: Any, client: Client
) -> None:
    pid_file = tmp_path / "connector.pid"
    command = protocol_connector(
        tmp_path,
        "hanging-source",
        f"""
        import os, time
        record(1, "2024-01-01")
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
        time.sleep(300)
        """,
    )
    warehouse = tmp_path / "w.duckdb"
    settings = make_settings(
        items_connection(command, warehouse),
        job_timeout_hours=4 / 3600,
        heartbeat_timeout_seconds=2,
    )
    await run_worker(settings)
    started = time.monotonic()
    handle = await start_sync(client, settings, SyncRequest(connection_id="items"))

    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()

    cause = failed.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "SyncTimedOut"
    assert "deadline" in cause.message
    pid = int(pid_file.read_text())
    await wait_until(lambda: not _alive(pid), timeout=60)
    assert time.monotonic() - started < 120  # not the connector's 300 s
    store = MetadataStore.from_url(settings.resolved_metadata_url)
    run = store.get_run(handle.result_run_id or "")
    assert run is not None and run["status"] == "timed_out"
    assert run["staging_target"] is not None  # kept, for the sweep
    assert store.lock_holder("items") is None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes: it runs nothing.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
