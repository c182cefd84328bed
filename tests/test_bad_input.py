"""Bad input ends with a clear error that names what was wrong, and never costs data."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from tests.support.connections import items_connection, protocol_connector, wait_for_file
from tests.support.processes import wait_until
from tests.support.session import REPO
from workers.cli import start_sync
from workers.connections import ConnectionsFile, ConnectionsFileError
from workers.settings import Settings
from workers.shredding import unseal
from workflows.models import SyncRequest, SyncSummary
from workflows.sync import SyncConnectionWorkflow

pytestmark = pytest.mark.temporal


async def failure_of(client: Client, settings: Settings, request: SyncRequest) -> ApplicationError:
    handle = await start_sync(client, settings, request)
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError)
    return cause


async def test_unknown_connection_fails_at_once(
    tmp_path: Path, make_settings: Callable[..., Settings], run_worker: Any, client: Client
) -> None:
    settings = make_settings(items_connection("/bin/true", tmp_path / "w.duckdb"))
    await run_worker(settings)
    handle = await start_sync(client, settings, SyncRequest(connection_id="nope"))
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    error = failed.value.cause.cause  # the workflow's failure is the activity's
    assert isinstance(error, ApplicationError)
    assert error.type == "UnknownConnection" and error.non_retryable
    assert "'nope'" in error.message and "items" in error.message
    history = await handle.fetch_history()
    attempts = [e for e in history.events if e.HasField("activity_task_started_event_attributes")]
    assert [e.activity_task_started_event_attributes.attempt for e in attempts] == [1]


def test_malformed_connections_file_names_file_connection_and_field(tmp_path: Path) -> None:
    path = tmp_path / "connections.toml"
    path.write_text(
        '[[connections]]\nid = "shop"\n[connections.source]\ncommand = ["x"]\n'
        '[connections.destination]\npath = "w.duckdb"\n'
        '[[connections.streams]]\nname = "orders"\nsync_mode = "sometimes"\n'
    )
    with pytest.raises(ConnectionsFileError) as error:
        ConnectionsFile.load(path)
    message = str(error.value)
    assert str(path) in message and "'shop'" in message and "streams[0].sync_mode" in message

    path.write_text("[[connections]\nid = 1")
    with pytest.raises(ConnectionsFileError, match="not valid TOML"):
        ConnectionsFile.load(path)


def test_cli_reports_a_bad_file_and_exits_non_zero(tmp_path: Path) -> None:
    path = tmp_path / "connections.toml"
    path.write_text('[[connections]]\nid = "shop"\nbackend = "cloud"\n')
    done = subprocess.run(
        [str(REPO / ".venv" / "bin" / "sluice"), "sync", "shop"],
        env={"SLUICE_CONNECTIONS_FILE": str(path), "SLUICE_STATE_DIR": str(tmp_path), "PATH": ""},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "'shop'" in done.stderr and "backend" in done.stderr and "'airbyte'" in done.stderr


async def test_connector_command_that_does_not_exist(
    tmp_path: Path, make_settings: Callable[..., Settings], run_worker: Any, client: Client
) -> None:
    settings = make_settings(items_connection("/nonexistent/source-x", tmp_path / "w.duckdb"))
    await run_worker(settings)
    error = await failure_of(client, settings, SyncRequest(connection_id="items"))
    assert error.type == "SyncFailed"
    assert "/nonexistent/source-x" in error.message and "not found" in error.message


async def test_connector_exiting_non_zero_mid_stream_keeps_staging_and_loads_only_committed(
    tmp_path: Path, make_settings: Callable[..., Settings], run_worker: Any, client: Client
) -> None:
    connector = protocol_connector(
        tmp_path,
        "source-crashing",
        """
        for i in range(1, 4):
            record(i, f"2024-01-0{i}T00:00:00Z")
        state("2024-01-03T00:00:00Z")
        for i in range(4, 7):
            record(i, f"2024-02-0{i}T00:00:00Z")
        print("upstream API went away: HTTP 502", file=sys.stderr, flush=True)
        sys.exit(3)
        """,
    )
    warehouse = tmp_path / "w.duckdb"
    # One attempt: this connector ignores the state it is given, so a retry would re-emit.
    settings = make_settings(
        items_connection(connector, warehouse), batch_records=2, sync_attempts=1
    )
    sluice = await run_worker(settings)
    error = await failure_of(client, settings, SyncRequest(connection_id="items"))
    assert "exited with code 3" in error.message and "HTTP 502" in error.message

    # Loaded: exactly the records the committed state covers; the rest was never half-loaded.
    with duckdb.connect(str(warehouse), read_only=True) as db:
        ids = sorted(r[0] for r in db.execute("SELECT id FROM items").fetchall())
        states = [
            json.loads(r[0]) for r in db.execute("SELECT state FROM _sluice_state").fetchall()
        ]
    assert ids == [1, 2, 3]
    assert [s["stream"]["stream_state"] for s in states] == [{"updated_at": "2024-01-03T00:00:00Z"}]

    # The failed run's staging is still there, for replay: every record, including uncommitted.
    run_dirs = list((sluice.staging_root / "items").iterdir())
    assert len(run_dirs) == 1
    staged = list(run_dirs[0].rglob("*.jsonl.gz"))
    assert staged

    # Sealed with the run's key, which lives as long as the staging is kept for replay.
    key = sluice.metadata.existing_staging_key(run_dirs[0].name)
    assert key is not None
    staged_ids = []
    for path in staged:
        plain = io.BytesIO()
        with path.open("rb") as sealed:
            unseal(sealed, plain, key, what=str(path))
        lines = gzip.decompress(plain.getvalue()).decode().splitlines()
        staged_ids += [json.loads(line)["record"]["data"]["id"] for line in lines]
    staged_ids.sort()
    assert staged_ids == [1, 2, 3, 4, 5, 6]

    # The run is recorded as failed, with its scrubbed log retained.
    run = sluice.metadata.get_run(run_dirs[0].name)
    assert run is not None and run["status"] == "failed" and "HTTP 502" in run["error"]
    assert run["receipt_id"] is None
    log = next((sluice.settings.state_path / "logs" / "items").rglob("*.log")).read_text()
    assert "HTTP 502" in log and "2024-01-03T00:00:00Z" not in log


async def test_trace_error_fails_the_run_with_the_connectors_message(
    tmp_path: Path, make_settings: Callable[..., Settings], run_worker: Any, client: Client
) -> None:
    connector = protocol_connector(
        tmp_path,
        "source-misconfigured",
        """
        emit({"type": "TRACE", "trace": {"type": "ERROR", "emitted_at": 1700000000000,
              "error": {"message": "API key rejected", "failure_type": "config_error"}}})
        """,
    )
    warehouse = tmp_path / "w.duckdb"
    settings = make_settings(items_connection(connector, warehouse))
    await run_worker(settings)
    error = await failure_of(client, settings, SyncRequest(connection_id="items"))
    assert "config_error" in error.message and "API key rejected" in error.message


async def test_a_failed_attempt_is_retried_from_the_committed_state(
    tmp_path: Path, make_settings: Callable[..., Settings], run_worker: Any, client: Client
) -> None:
    """The first attempt commits 1-2 and dies; the second is given that state and goes on."""
    connector = protocol_connector(
        tmp_path,
        "source-flaky",
        f"""
        import os
        args = sys.argv
        given = json.load(open(args[args.index("--state") + 1])) if "--state" in args else []
        start = 3 if given else 1
        for i in range(start, start + 2):
            record(i, f"2024-01-0{{i}}T00:00:00Z")
        state(f"2024-01-0{{start + 1}}T00:00:00Z")
        marker = {str(tmp_path / "failed-once")!r}
        if not os.path.exists(marker):
            open(marker, "w").close()
            print("connection reset by peer", file=sys.stderr, flush=True)
            sys.exit(1)
        """,
    )
    warehouse = tmp_path / "w.duckdb"
    settings = make_settings(items_connection(connector, warehouse), batch_records=1)
    await run_worker(settings)

    summary = await (
        await start_sync(client, settings, SyncRequest(connection_id="items"))
    ).result()

    with duckdb.connect(str(warehouse), read_only=True) as db:
        ids = sorted(r[0] for r in db.execute("SELECT id FROM items").fetchall())
    assert ids == [1, 2, 3, 4]  # nothing loaded twice
    assert summary.records == {"items": 4}
    assert summary.log_uri is not None and summary.log_uri.endswith("attempt-002.log")


async def test_one_run_of_a_connection_at_a_time(
    tmp_path: Path, make_settings: Callable[..., Settings], run_worker: Any, client: Client
) -> None:
    # The first run's connector says it is reading, then waits for the test's word: the second
    # run starts while the first is provably still running, however slow the machine.
    reading, release = tmp_path / "reading", tmp_path / "release"
    connector = protocol_connector(
        tmp_path,
        "source-gated",
        f"open({str(reading)!r}, 'w').close()\n"
        + wait_for_file(release)
        + 'record(1, "2024-01-01")\n',
    )
    settings = make_settings(items_connection(connector, tmp_path / "w.duckdb"))
    await run_worker(settings)
    first = await start_sync(client, settings, SyncRequest(connection_id="items"))
    # The first run holds the connection from before its connector starts.
    await wait_until(reading.exists, timeout=120)
    assert await first.query(SyncConnectionWorkflow.phase) == "syncing"
    # A second run that is not the first's workflow id (a schedule's, a replay's).
    second = await client.start_workflow(
        SyncConnectionWorkflow.run,
        SyncRequest(connection_id="items"),
        id="sync-items-by-hand",
        task_queue=settings.task_queue,
        result_type=SyncSummary,
    )
    with pytest.raises(WorkflowFailureError) as failed:
        await second.result()
    error = failed.value.cause.cause
    assert isinstance(error, ApplicationError) and error.type == "ConnectionBusy"
    assert first.result_run_id in error.message
    assert not release.exists()  # the first run was still reading all along

    release.touch()
    assert (await first.result()).records == {"items": 1}
    # Once the first run ended, the connection is free again.
    third = await start_sync(client, settings, SyncRequest(connection_id="items"))
    assert (await third.result()).status == "succeeded"
