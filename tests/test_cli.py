"""The CLI speaks plainly: one exit code per outcome, whatever the command; one line per error,
printed literally; the root cause of a failed run; the UI link; `sluice unlock`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    TerminatedError,
    TimeoutError,
    TimeoutType,
)
from temporalio.testing import WorkflowEnvironment

from tests.support.connections import items_connection, protocol_connector
from tests.support.session import REPO
from workers import cli
from workers.client import ui_link
from workers.metadata import MetadataStore
from workers.settings import Settings
from workflows.models import SyncRequest
from workflows.sync import SyncConnectionWorkflow

SLUICE = str(REPO / ".venv" / "bin" / "sluice")


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when the socket is


def plain_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """An environment of the test's own: no SLUICE_ setting of the caller leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env.update(
        SLUICE_STATE_DIR=str(tmp_path / "state"),
        SLUICE_CONNECTIONS_FILE=str(tmp_path / "connections.toml"),
    )
    env.update(extra)
    return env


def settings_env(settings: Settings, temporal: WorkflowEnvironment, **extra: str) -> dict[str, str]:
    """The environment that configures the CLI like `settings`, against the suite's Temporal."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env.update(
        SLUICE_STATE_DIR=str(settings.state_path),
        SLUICE_CONNECTIONS_FILE=str(settings.connections_file),
        SLUICE_CONNECTORS_DIR=str(settings.connectors_dir),
        SLUICE_TASK_QUEUE=settings.task_queue,
        SLUICE_PAYLOAD_KEYS=settings.payload_keys or "",
        SLUICE_TEMPORAL_ADDRESS=temporal.client.service_client.config.target_host,
    )
    env.update(extra)
    return env


def sluice(args: list[str], env: dict[str, str], timeout: float = 120) -> Done:
    done = subprocess.run(
        [SLUICE, *args],
        env=env,
        cwd=Path(env["SLUICE_STATE_DIR"]).parent,  # not the repository: no .env of its own
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )
    return Done(done.returncode, done.stdout, done.stderr)


async def sluice_async(args: list[str], env: dict[str, str], timeout: float = 120) -> Done:
    """The CLI in a subprocess without blocking the event loop (which runs the test's worker)."""
    process = await asyncio.create_subprocess_exec(
        SLUICE,
        *args,
        env=env,
        cwd=Path(env["SLUICE_STATE_DIR"]).parent,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return Done(process.returncode, stdout.decode(), stderr.decode())


def assert_one_line(done: Done) -> None:
    assert "Traceback" not in done.stderr, done.stderr
    assert len(done.lines) == 1, done.stderr


def unique(prefix: str) -> str:
    """A connection id of this test alone: workflow ids (sync-ID) are shared by the session."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# -- without services ----------------------------------------------------------------------------


def test_unreachable_temporal_is_one_line_exit_5_and_quick(tmp_path: Path) -> None:
    (tmp_path / "connections.toml").write_text(items_connection("/bin/true", tmp_path / "w.duckdb"))
    address = f"127.0.0.1:{closed_port()}"
    env = plain_env(tmp_path, SLUICE_TEMPORAL_ADDRESS=address)
    for args in (["sync", "items"], ["schedules", "apply"]):
        started = time.monotonic()
        done = sluice(args, env, timeout=60)
        assert time.monotonic() - started < 30
        assert done.returncode == cli.EXIT_UNREACHABLE, done.stderr
        assert_one_line(done)
        assert (
            f"sluice: cannot reach Temporal at {address} (SLUICE_TEMPORAL_ADDRESS): "
            "connection refused; start it with 'sluice server'"
        ) in done.stderr


def test_bad_metadata_url_is_one_line_and_deletes_nothing(tmp_path: Path) -> None:
    staging = tmp_path / "state" / "staging"
    (staging / "run1").mkdir(parents=True)
    (staging / "run1" / "a.gz").write_bytes(b"data")
    target = staging.as_uri() + "/run1/"

    unreachable = f"postgresql+psycopg://nobody:hunter2@127.0.0.1:{closed_port()}/x"
    done = sluice(["purge", target, "--yes"], plain_env(tmp_path, SLUICE_METADATA_URL=unreachable))
    assert done.returncode == cli.EXIT_UNREACHABLE, done.stderr
    assert_one_line(done)
    assert "metadata store" in done.stderr and "SLUICE_METADATA_URL" in done.stderr
    assert "hunter2" not in done.stderr  # the password is never printed
    assert (staging / "run1" / "a.gz").exists()  # no receipt could be kept: nothing deleted

    for malformed in ("not a url", "nosuchdb://x/y"):
        done = sluice(
            ["purge", target, "--yes"], plain_env(tmp_path, SLUICE_METADATA_URL=malformed)
        )
        assert done.returncode == cli.EXIT_REFUSED, done.stderr
        assert_one_line(done)
        assert "SLUICE_METADATA_URL" in done.stderr
    assert (staging / "run1" / "a.gz").exists()


def test_purge_uri_with_brackets_is_printed_literally(tmp_path: Path) -> None:
    outside = sluice(["purge", "file:///data/[x]/", "--yes"], plain_env(tmp_path))
    assert outside.returncode == cli.EXIT_REFUSED, outside.stderr
    assert_one_line(outside)
    assert "'file:///data/[x]/' is outside the purge allow-list" in outside.stderr

    allowed = tmp_path / "state" / "staging"
    (allowed / "[x]").mkdir(parents=True)
    (allowed / "[x]" / "b.gz").write_bytes(b"data")
    target = allowed.as_uri() + "/[x]/"
    unconfirmed = sluice(["purge", target], plain_env(tmp_path))
    assert unconfirmed.returncode == cli.EXIT_REFUSED
    assert f"purging {target} deletes every object" in unconfirmed.stderr

    dry = sluice(["purge", target, "--dry-run"], plain_env(tmp_path))
    assert dry.returncode == 0, dry.stderr
    assert f'"target": "{target}"' in dry.stdout
    assert (allowed / "[x]" / "b.gz").exists()

    done = sluice(["purge", target, "--yes"], plain_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert not (allowed / "[x]" / "b.gz").exists()


def test_purge_starts_without_temporal(tmp_path: Path) -> None:
    """`sluice purge` is benchmarked against s5cmd: it loads neither Temporal's SDK nor the
    worker, whether it purges or is refused."""
    (tmp_path / "state" / "staging" / "run1").mkdir(parents=True)
    target = (tmp_path / "state" / "staging").as_uri() + "/run1/"
    check = """
import sys
from workers.cli import main
codes = [main(["purge", sys.argv[1], "--yes"]), main(["purge", "file:///etc/", "--yes"])]
sdk = ("temporalio", "workflows", "workers.worker", "workers.client", "workers.runs_report")
print(codes, sorted(m for m in sys.modules if m.startswith(sdk)))
"""
    done = subprocess.run(
        [str(REPO / ".venv" / "bin" / "python"), "-c", check, target],
        env=plain_env(tmp_path),
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"[0, {cli.EXIT_REFUSED}] []", done.stdout


def test_message_with_double_brackets_is_printed_literally(tmp_path: Path) -> None:
    (tmp_path / "connections.toml").write_text("# nothing declared yet\n")
    done = sluice(["sync", "items"], plain_env(tmp_path))
    assert done.returncode == cli.EXIT_REFUSED
    assert_one_line(done)
    assert f"sluice: {tmp_path / 'connections.toml'}: no [[connections]] declared" in done.stderr


def test_symlinked_purge_prefix_is_refused_in_one_line(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere" / "inner"
    elsewhere.mkdir(parents=True)
    (elsewhere / "keep.gz").write_bytes(b"data")
    staging = tmp_path / "state" / "staging"
    staging.mkdir(parents=True)
    (staging / "link").symlink_to(tmp_path / "elsewhere")
    for extra in (["--yes"], ["--dry-run"]):
        done = sluice(["purge", staging.as_uri() + "/link/inner/", *extra], plain_env(tmp_path))
        assert done.returncode == cli.EXIT_REFUSED, done.stderr
        assert_one_line(done)
        assert "unsafe prefix 'link/inner/': passes through a symlink" in done.stderr
    assert (elsewhere / "keep.gz").exists()


def test_bad_arguments_and_settings_exit_2_without_printing_values(tmp_path: Path) -> None:
    (tmp_path / "connections.toml").write_text(items_connection("/bin/true", tmp_path / "w.duckdb"))
    assert sluice([], plain_env(tmp_path)).returncode == cli.EXIT_REFUSED
    assert sluice(["sync"], plain_env(tmp_path)).returncode == cli.EXIT_REFUSED
    assert sluice(["purge"], plain_env(tmp_path)).returncode == cli.EXIT_REFUSED

    bad = sluice(["sync", "items"], plain_env(tmp_path, SLUICE_BATCH_RECORDS="many-0xSECRET"))
    assert bad.returncode == cli.EXIT_REFUSED
    assert_one_line(bad)
    assert "invalid setting SLUICE_BATCH_RECORDS" in bad.stderr
    assert "0xSECRET" not in bad.stderr

    keys = sluice(["sync", "items"], plain_env(tmp_path, SLUICE_PAYLOAD_KEYS="k1:not-base64!"))
    assert keys.returncode == cli.EXIT_REFUSED
    assert_one_line(keys)
    assert "payload key 'k1': not base64" in keys.stderr

    unknown = sluice(["sync", "nope"], plain_env(tmp_path))
    assert unknown.returncode == cli.EXIT_REFUSED
    assert "unknown connection 'nope'" in unknown.stderr


def test_unexpected_error_is_one_line_naming_its_type_unless_debug(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = cli.report_error(ValueError("a record value"), None, debug=False)
    err = capsys.readouterr().err
    assert code == cli.EXIT_FAILED
    assert err.strip().splitlines() == [
        "sluice: unexpected ValueError (SLUICE_LOG_LEVEL=DEBUG prints its traceback)"
    ]
    try:
        raise ValueError("boom")
    except ValueError as exc:
        cli.report_error(exc, None, debug=True)
    err = capsys.readouterr().err
    assert "Traceback" in err and "sluice: unexpected ValueError" in err


def _activity_error(cause: BaseException) -> ActivityError:
    error = ActivityError(
        "Activity task failed",
        scheduled_event_id=5,
        started_event_id=6,
        identity="w",
        activity_type="plan_run",
        activity_id="1",
        retry_state=None,
    )
    error.__cause__ = cause
    return error


def test_failures_are_told_by_their_root_cause() -> None:
    busy = WorkflowFailureError(
        cause=_activity_error(
            ApplicationError("connection 'faker' is already syncing", type="ConnectionBusy")
        )
    )
    assert cli.describe_failure(busy) == ("ConnectionBusy: connection 'faker' is already syncing")
    assert cli.failure_outcome(busy) == (cli.EXIT_REFUSED, "refused")

    failed = WorkflowFailureError(cause=ApplicationError("sync failed: x", type="SyncFailed"))
    assert cli.failure_outcome(failed) == (cli.EXIT_FAILED, "failed")

    cancelled = WorkflowFailureError(cause=CancelledError("Workflow cancelled"))
    assert cli.failure_outcome(cancelled) == (cli.EXIT_CANCELLED, "cancelled")
    assert cli.describe_failure(cancelled) == "CancelledError: Workflow cancelled"

    terminated = WorkflowFailureError(cause=TerminatedError("by an operator"))
    assert cli.failure_outcome(terminated) == (cli.EXIT_CANCELLED, "terminated")

    timed_out = WorkflowFailureError(
        cause=TimeoutError(
            "Workflow timed out", type=TimeoutType.START_TO_CLOSE, last_heartbeat_details=[]
        )
    )
    assert cli.failure_outcome(timed_out) == (cli.EXIT_TIMED_OUT, "timed out")
    activity_timeout = WorkflowFailureError(
        cause=_activity_error(
            TimeoutError("activity timeout", type=TimeoutType.HEARTBEAT, last_heartbeat_details=[])
        )
    )
    assert cli.failure_outcome(activity_timeout) == (cli.EXIT_TIMED_OUT, "timed out")


def test_ui_link_uses_the_configured_ui(tmp_path: Path) -> None:
    settings = Settings(
        state_dir=tmp_path, temporal_ui_url="https://temporal.example.com/ui/", task_queue="q"
    )
    assert ui_link(settings) == "https://temporal.example.com/ui/namespaces/default/workflows"
    assert ui_link(settings, "sync-a b", "r1") == (
        "https://temporal.example.com/ui/namespaces/default/workflows/sync-a%20b/r1"
    )
    assert ui_link(Settings(state_dir=tmp_path), "sync-x") == (
        "http://localhost:8233/namespaces/default/workflows/sync-x"
    )


# -- against the suite's Temporal dev server -----------------------------------------------------


@pytest.mark.temporal
async def test_sync_wait_prints_the_root_cause_and_its_exit_code(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    run_worker: Any,
    temporal_env: WorkflowEnvironment,
) -> None:
    busy_id, missing_id = unique("busy"), unique("missing")
    settings = make_settings(
        items_connection("/bin/true", tmp_path / "w.duckdb", connection_id=busy_id)
        + items_connection("/nonexistent/source-x", tmp_path / "w.duckdb", connection_id=missing_id)
    )
    sluice_worker = await run_worker(settings)
    env = settings_env(settings, temporal_env)

    sluice_worker.metadata.lock_connection(busy_id, "earlier-run", timedelta(hours=1))
    busy = await sluice_async(["sync", busy_id, "--wait"], env)
    assert busy.returncode == cli.EXIT_REFUSED, busy.stderr
    assert "Activity task failed" not in busy.stderr and "Traceback" not in busy.stderr
    assert f"sync refused: ConnectionBusy: connection '{busy_id}' is already syncing" in (
        busy.stderr
    )
    assert "earlier-run" in busy.stderr
    sluice_worker.metadata.force_unlock(busy_id, "earlier-run")

    stream = await sluice_async(["sync", busy_id, "--wait", "--stream", "nope"], env)
    assert stream.returncode == cli.EXIT_REFUSED, stream.stderr
    assert (
        f"sync refused: UnknownStream: connection '{busy_id}' declares no streams ['nope']"
        in stream.stderr
    )

    failed = await sluice_async(["sync", missing_id, "--wait"], env)
    assert failed.returncode == cli.EXIT_FAILED, failed.stderr
    assert "sync failed: SyncFailed: " in failed.stderr
    assert "/nonexistent/source-x" in failed.stderr and "not found" in failed.stderr


@pytest.mark.temporal
async def test_sync_wait_exits_3_when_the_run_is_cancelled_or_terminated(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    run_worker: Any,
    client: Client,
    temporal_env: WorkflowEnvironment,
) -> None:
    slow = protocol_connector(tmp_path, "slow-source", "import time\ntime.sleep(120)\n")
    connection_id = unique("slow")
    settings = make_settings(
        items_connection(str(slow), tmp_path / "w.duckdb", connection_id=connection_id)
    )
    await run_worker(settings)
    env = settings_env(settings, temporal_env)
    handle = client.get_workflow_handle(f"sync-{connection_id}")

    async def when_syncing() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with_phase = None
            with contextlib.suppress(Exception):
                with_phase = await handle.query(SyncConnectionWorkflow.phase)
            if with_phase == "syncing":
                return
            await asyncio.sleep(0.2)
        raise AssertionError("the sync never started")

    waiting = asyncio.ensure_future(sluice_async(["sync", connection_id, "--wait"], env))
    await when_syncing()
    await asyncio.sleep(1)  # the connector is in `read`
    await handle.cancel()
    cancelled = await waiting
    assert cancelled.returncode == cli.EXIT_CANCELLED, cancelled.stderr
    assert "cancelled" in cancelled.stderr and "Traceback" not in cancelled.stderr

    # No worker on this queue: the run stays pending until it is terminated.
    idle = settings_env(settings, temporal_env, SLUICE_TASK_QUEUE=f"idle-{uuid.uuid4().hex}")
    waiting = asyncio.ensure_future(sluice_async(["sync", connection_id, "--wait"], idle))
    deadline = time.monotonic() + 30
    while (await handle.describe()).status.name != "RUNNING":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    await handle.terminate("stopped by the test")
    terminated = await waiting
    assert terminated.returncode == cli.EXIT_CANCELLED, terminated.stderr
    assert "sync terminated: TerminatedError: " in terminated.stderr


@pytest.mark.temporal
async def test_printed_links_use_the_configured_ui(
    make_settings: Callable[..., Settings], client: Client, temporal_env: WorkflowEnvironment
) -> None:
    connection_id = unique("link")
    settings = make_settings(
        items_connection("/bin/true", Path("w.duckdb"), connection_id=connection_id)
    )
    # No worker polls this queue: the run stays pending, which is all a link needs.
    env = settings_env(
        settings, temporal_env, SLUICE_TEMPORAL_UI_URL="https://temporal.example.com/ui/"
    )
    started = await sluice_async(["sync", connection_id], env)
    assert started.returncode == 0, started.stderr
    workflow_id = f"sync-{connection_id}"
    assert started.stdout.strip() == workflow_id
    handle = client.get_workflow_handle(workflow_id)
    run_id = (await handle.describe()).run_id
    assert (
        f"started {workflow_id}: https://temporal.example.com/ui/namespaces/default/workflows/"
        f"{workflow_id}/{run_id}"
    ) in started.stderr

    again = await sluice_async(["sync", connection_id], env)
    assert again.returncode == cli.EXIT_REFUSED
    assert_one_line(again)
    assert f"connection '{connection_id}' is already syncing as workflow {workflow_id}" in (
        again.stderr
    )
    assert f"https://temporal.example.com/ui/namespaces/default/workflows/{workflow_id}" in (
        again.stderr
    )
    await handle.terminate("test over")


@pytest.mark.temporal
async def test_unlock_refuses_while_the_run_goes_on_and_releases_a_stale_lock(
    make_settings: Callable[..., Settings], client: Client, temporal_env: WorkflowEnvironment
) -> None:
    connection_id = unique("locked")
    settings = make_settings(
        items_connection("/bin/true", Path("w.duckdb"), connection_id=connection_id)
    )
    store = MetadataStore.from_url(settings.resolved_metadata_url)
    env = settings_env(settings, temporal_env)

    free = await sluice_async(["unlock", connection_id], env)
    assert free.returncode == 0, free.stderr
    assert f"connection '{connection_id}' is not locked" in free.stderr

    # A run whose workflow is still running (pending: no worker polls this queue).
    workflow_id = f"sync-{connection_id}"
    handle = await client.start_workflow(
        SyncConnectionWorkflow.run,
        SyncRequest(connection_id=connection_id),
        id=workflow_id,
        task_queue=settings.task_queue,
    )
    run_id = handle.result_run_id
    assert run_id is not None
    hour = timedelta(hours=1)
    staging = "file:///var/lib/sluice/staging/x/"
    assert (
        store.lock_connection(
            connection_id, run_id, hour, workflow_id=workflow_id, staging_target=staging
        )
        is None
    )
    refused = await sluice_async(["unlock", connection_id], env)
    assert refused.returncode == cli.EXIT_REFUSED, refused.stderr
    assert_one_line(refused)
    assert f"locked by run {run_id} of workflow {workflow_id}" in refused.stderr
    assert "still running" in refused.stderr
    assert store.lock_holder(connection_id) is not None

    # Temporal unreachable: nothing can be checked, so nothing is released.
    dark = settings_env(
        settings, temporal_env, SLUICE_TEMPORAL_ADDRESS=f"127.0.0.1:{closed_port()}"
    )
    unreachable = await sluice_async(["unlock", connection_id], dark)
    assert unreachable.returncode == cli.EXIT_UNREACHABLE, unreachable.stderr
    assert store.lock_holder(connection_id) is not None

    # The run's workflow ended without giving the lock back: the lock is stale.
    await handle.terminate("worker gone for good")
    released = await sluice_async(["unlock", connection_id], env)
    assert released.returncode == 0, released.stderr
    assert (
        f"released the lock of connection '{connection_id}': run {run_id} of workflow "
        f"{workflow_id} is terminated"
    ) in released.stderr
    assert store.lock_holder(connection_id) is None
    # Finished as the sweep finishes an abandoned run: recorded, its staging left to the sweep.
    record = store.get_run(run_id)
    assert record is not None
    assert record["status"] == "failed" and record["staging_target"] == staging

    # A lock of an older version names no workflow; its run never existed in Temporal.
    assert store.lock_connection(connection_id, "older-run", hour) is None
    old = await sluice_async(["unlock", connection_id], env)
    assert old.returncode == 0, old.stderr
    assert "run older-run of workflow" in old.stderr and "unknown to Temporal" in old.stderr
    assert store.lock_holder(connection_id) is None

    # ... but when its run is the running sync-CONNECTION, it is not released.
    handle = await client.start_workflow(
        SyncConnectionWorkflow.run,
        SyncRequest(connection_id=connection_id),
        id=workflow_id,
        task_queue=settings.task_queue,
    )
    assert handle.result_run_id is not None
    assert store.lock_connection(connection_id, handle.result_run_id, hour) is None
    running = await sluice_async(["unlock", connection_id], env)
    assert running.returncode == cli.EXIT_REFUSED, running.stderr
    assert store.lock_holder(connection_id) is not None
    await handle.terminate("test over")
