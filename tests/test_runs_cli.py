"""Runs at hand, as on-call uses them: `sluice runs`, `sluice runs show`, `sluice logs` and
`sluice cancel`, over real runs of the workflow on the suite's Temporal dev server."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import ContainerClient
from botocore.client import BaseClient
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError
from temporalio.testing import WorkflowEnvironment

from purge.receipts import PurgeReceipt
from tests.s3_server import DUMMY_CREDENTIALS, REGION, bucket, s3_client, s3_endpoint
from tests.support.connections import items_connection, protocol_connector
from tests.support.postgres import scratch_database
from tests.support.processes import wait_until
from tests.support.session import REPO
from workers import cli, runs_report
from workers.cli import start_replay, start_sync
from workers.metadata import MetadataStore
from workers.settings import Settings
from workflows.models import ReplayRequest, SweepRequest, SyncRequest
from workflows.sweep import RetentionSweepWorkflow

pytest_plugins = ["tests.azurite_server"]
__all__ = ["bucket", "s3_client", "s3_endpoint"]  # fixtures, imported to be found

SLUICE = str(REPO / ".venv" / "bin" / "sluice")
UI = "https://temporal.example.com/ui/"

# Cursor values the connectors print in their logs: never in what `sluice logs` prints.
CURSOR = "2031-07-13T10:20:30Z"
FAILED_CURSOR = "2032-01-02T00:00:00Z"

GOOD_READ = f"""
for i in range(1, 4):
    record(i, f"2031-07-1{{i}}T10:20:30Z")
state({CURSOR!r})
emit({{"type": "LOG", "log": {{"level": "INFO", "message": "cursor now at {CURSOR}"}}}})
"""

FAILING_READ = f"""
for i in range(1, 3):
    record(i, f"2032-01-0{{i}}T00:00:00Z")
state({FAILED_CURSOR!r})
emit({{"type": "LOG", "log": {{"level": "INFO", "message": "read up to {FAILED_CURSOR}"}}}})
emit({{"type": "TRACE", "trace": {{"type": "ERROR", "emitted_at": 1700000000000,
      "error": {{"message": "API key rejected", "failure_type": "config_error"}}}}}})
sys.exit(1)
"""


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


def cli_env(settings: Settings, temporal: WorkflowEnvironment, **extra: str) -> dict[str, str]:
    """The environment that configures the CLI like `settings`, against the suite's Temporal."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env.update(
        SLUICE_STATE_DIR=str(settings.state_path),
        SLUICE_CONNECTIONS_FILE=str(settings.connections_file),
        SLUICE_CONNECTORS_DIR=str(settings.connectors_dir),
        SLUICE_TASK_QUEUE=settings.task_queue,
        SLUICE_PAYLOAD_KEYS=settings.payload_keys or "",
        SLUICE_TEMPORAL_ADDRESS=temporal.client.service_client.config.target_host,
        SLUICE_TEMPORAL_UI_URL=UI,
    )
    env.update(extra)
    return env


async def sluice(args: list[str], env: dict[str, str], timeout: float = 120) -> Done:
    """The CLI in a subprocess, without blocking the event loop that runs the test's worker."""
    process = await asyncio.create_subprocess_exec(
        SLUICE,
        *args,
        env=env,
        cwd=Path(env["SLUICE_STATE_DIR"]).parent,  # not the repository: no .env of its own
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return Done(process.returncode, stdout.decode(), stderr.decode())


async def runs_json(args: list[str], env: dict[str, str]) -> list[dict[str, Any]]:
    done = await sluice(["runs", "--json", *args], env)
    assert done.returncode == 0, done.stderr
    listed: list[dict[str, Any]] = json.loads(done.stdout)
    return listed


def unique(prefix: str) -> str:
    """A connection id of this test alone: workflow ids (sync-ID) are shared by the session."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def run_to_end(client: Client, settings: Settings, connection_id: str) -> str:
    """Sync the connection through the workflow; the run id, whether it succeeded or not."""
    handle = await start_sync(client, settings, SyncRequest(connection_id=connection_id))
    try:
        summary = await handle.result()
    except WorkflowFailureError:
        assert handle.result_run_id is not None
        return handle.result_run_id
    return summary.run_id


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    if request.param == "sqlite":
        yield MetadataStore.from_url(f"sqlite:///{tmp_path / 'm.db'}")
        return
    with scratch_database("sluice_runs") as name:
        metadata = MetadataStore.from_url(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
        yield metadata
        metadata.engine.dispose()


def receipt(receipt_id: str, verified: bool) -> PurgeReceipt:
    now = datetime.now(UTC)
    return PurgeReceipt(
        receipt_id=receipt_id,
        target="file:///staging/c/",
        dry_run=False,
        started_at=now,
        finished_at=now,
        objects_deleted=1,
        versions_deleted=0,
        bytes_deleted=1,
        manifest_sha256="0" * 64,
        remaining=0 if verified else 1,
        verified_empty=verified,
        failures=[],
        store_settings={},
    )


def test_the_store_lists_runs_newest_first_with_their_purges(store: MetadataStore) -> None:
    now = datetime.now(UTC)
    row = {
        "connection_id": "c",
        "workflow_id": "sync-c",
        "finished_at": now,
        "duration_seconds": 1.0,
        "incremental": False,
        "records": 1,
        "records_by_stream": {"items": 1},
        "bytes_staged": 0,
        "redactions": {},
        "error": None,
        "committed": False,
        "warnings": [],
    }
    # An old row (kind NULL), a failed run whose logs were swept, a replay whose sweep of its
    # staging left objects, a run in progress, and a run recorded but not yet unlocked.
    store.record_run(
        {
            **row,
            "run_id": "r1",
            "status": "succeeded",
            "receipt_id": "purge-r1",
            "started_at": now - timedelta(hours=3),
        }
    )
    store.record_run(
        {
            **row,
            "run_id": "r2",
            "status": "failed",
            "receipt_id": None,
            "started_at": now - timedelta(hours=2),
            "kind": "sync",
        }
    )
    store.record_run(
        {
            **row,
            "run_id": "r3",
            "status": "failed",
            "receipt_id": None,
            "started_at": now - timedelta(hours=1),
            "kind": "replay",
            "connection_id": "d",
        }
    )
    store.record_receipt(receipt("purge-r1", True), "r1")
    store.record_receipt(receipt("sweep-logs-r2", True), "r2")
    store.record_receipt(receipt("sweep-staging-r3", False), "r3")
    store.lock_connection("c", "r4", timedelta(minutes=5), workflow_id="sync-c")
    store.lock_connection("d", "r3", timedelta(minutes=5), workflow_id="replay-d")

    listed = store.recent_runs()
    assert [(r["run_id"], r["kind"], r["purge_verified"]) for r in listed] == [
        ("r3", "replay", False),
        ("r2", "sync", None),  # the sweep of its logs is no purge of its staging
        ("r1", "sync", True),
    ]
    assert [r["run_id"] for r in store.recent_runs(status="failed", limit=1)] == ["r3"]
    assert [r["run_id"] for r in store.recent_runs(connection_id="c")] == ["r2", "r1"]
    assert [r["run_id"] for r in store.running_runs()] == ["r4"]
    assert store.running_runs("d") == []
    lock = store.lock_of_run("r4")
    assert lock is not None and lock["connection_id"] == "c"
    assert store.lock_of_run("r1") is None
    assert [r["receipt_id"] for r in store.receipts_of_run("r2")] == ["sweep-logs-r2"]
    assert [r["receipt_id"] for r in store.receipts_of_run("r1")] == ["purge-r1"]
    assert store.receipts_of_run("nope") == []


def test_runs_show_says_why_a_failed_run_cannot_be_replayed() -> None:
    now = datetime.now(UTC)
    record = {
        "run_id": "r1",
        "connection_id": "shop",
        "status": "failed",
        "started_at": now,
        "finished_at": now,
        "staging_target": "file:///staging/shop/r1/",
        "staging_swept_at": None,
        "committed": False,
        "replayed_by": None,
    }

    def shown(**changes: Any) -> str:
        changed = {**record, **changes}
        return runs_report.details_text(
            runs_report.RunDetails(
                run_id="r1",
                connection_id="shop",
                workflow_id="sync-shop",
                kind="sync",
                status="failed",
                record=changed,
                started_at=now,
                receipts=[],
                logs=[],
                phases=runs_report.Phases(activities=[], unavailable="Temporal unreachable"),
                ui_link="https://temporal.example.com/ui/namespaces/default/workflows/sync-shop/r1",
                replay_command=runs_report._replay_command(changed),
            )
        )

    assert "replay with:  sluice replay r1" in shown()
    swept = shown(staging_swept_at=now)
    assert "replay with:" not in swept
    assert "replay:       not possible: its staging was swept at " in swept
    assert "`sluice sync shop` reads the source again" in swept
    assert "replay:       nothing to replay: the run committed" in shown(committed=True)
    assert "replay" not in shown(replayed_by="r2").replace("replayed by", "")
    assert "phases:\n  not available: Temporal unreachable" in shown()


@pytest.mark.temporal
async def test_runs_show_and_logs_of_real_runs(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    run_worker: Any,
    client: Client,
    temporal_env: WorkflowEnvironment,
) -> None:
    good, failing = unique("good"), unique("failing")
    settings = make_settings(
        items_connection(
            protocol_connector(tmp_path, "source-good", GOOD_READ),
            tmp_path / "good.duckdb",
            connection_id=good,
        )
        + items_connection(
            protocol_connector(tmp_path, "source-failing", FAILING_READ),
            tmp_path / "failing.duckdb",
            connection_id=failing,
        )
    )
    await run_worker(settings)
    env = cli_env(settings, temporal_env)
    store = MetadataStore.from_url(settings.resolved_metadata_url)

    first = await run_to_end(client, settings, good)
    failed = await run_to_end(client, settings, failing)
    second = await run_to_end(client, settings, good)
    assert [store.get_run(r)["status"] for r in (first, failed, second)] == [  # type: ignore[index]
        "succeeded",
        "failed",
        "succeeded",
    ]

    # Every run, newest first, with what a user checks at a glance.
    listed = [r for r in await runs_json([], env) if r["kind"] != "sweep"]
    assert [r["run_id"] for r in listed] == [second, failed, first]
    assert [r["connection_id"] for r in listed] == [good, failing, good]
    assert [r["status"] for r in listed] == ["succeeded", "failed", "succeeded"]
    assert [r["kind"] for r in listed] == ["sync", "sync", "sync"]
    assert [r["records"] for r in listed[::2]] == [3, 3]
    assert [r["purge_verified"] for r in listed] == [True, None, True]  # the failed run's kept
    assert all(r["duration_seconds"] > 0 for r in listed)

    failed_only = [r for r in await runs_json(["--status", "failed"], env) if r["kind"] != "sweep"]
    assert [r["run_id"] for r in failed_only] == [failed]
    of_good = await runs_json(["--connection", good], env)
    assert [r["run_id"] for r in of_good] == [second, first]
    assert [r["run_id"] for r in await runs_json(["--connection", good, "--limit", "1"], env)] == [
        second
    ]
    table = await sluice(["runs", "--connection", good], env)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split() == [
        "RUN",
        "CONNECTION",
        "KIND",
        "STATUS",
        "STARTED",
        "(UTC)",
        "DURATION",
        "RECORDS",
        "PURGE",
    ]
    assert table.stdout.splitlines()[1].split()[:4] == [second, good, "sync", "succeeded"]

    # A sweep is listed from Temporal's visibility, never under a connection.
    sweep = await client.start_workflow(
        RetentionSweepWorkflow.run,
        SweepRequest(),
        id=f"sweep-{uuid.uuid4().hex[:8]}",
        task_queue=settings.task_queue,
    )
    await sweep.result()
    deadline = time.monotonic() + 20
    while True:
        sweeps = [r for r in await runs_json(["--limit", "50"], env) if r["kind"] == "sweep"]
        mine = [r for r in sweeps if r["run_id"] == sweep.result_run_id]
        if mine or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert mine and mine[0]["status"] == "succeeded" and mine[0]["connection_id"] is None
    assert mine[0]["workflow_id"] == sweep.id
    assert all(r["kind"] != "sweep" for r in await runs_json(["--connection", good], env))
    shown = await sluice(["runs", "show", sweep.result_run_id or ""], env)
    assert shown.returncode == 0, shown.stderr
    assert "kind:         sweep" in shown.stdout and "status:       succeeded" in shown.stdout
    assert " sweep_retained_logs " in shown.stdout and " sweep_failed_staging " in shown.stdout
    assert f"{UI}namespaces/default/workflows/{sweep.id}/{sweep.result_run_id}" in shown.stdout

    # Temporal unreachable: what the metadata store knows is still listed, and the gap said.
    dark = cli_env(settings, temporal_env, SLUICE_TEMPORAL_ADDRESS=f"127.0.0.1:{closed_port()}")
    done = await sluice(["runs", "--json"], dark)
    assert done.returncode == 0, done.stderr
    assert [r["run_id"] for r in json.loads(done.stdout)] == [second, failed, first]
    assert "sweeps not listed: cannot reach Temporal at 127.0.0.1:" in done.stderr

    # The failed run: its error, its scrubbed log, the command that replays it, the UI link.
    record = store.get_run(failed)
    assert record is not None and record["error"]
    [failed_log] = store.retained_logs_of(failed)
    shown = await sluice(["runs", "show", failed], env)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert f"error:        {record['error']}" in text
    assert "API key rejected" in text
    assert f"attempt 1: {failed_log['uri']}" in text
    assert f"Temporal UI:  {UI}namespaces/default/workflows/sync-{failing}/{failed}" in text
    assert f"replay with:  sluice replay {failed}" in text
    assert f"staging kept: {record['staging_target']}" in text
    assert "receipts:     none" in text
    sync_line = next(line for line in text.splitlines() if " run_sync " in line)
    assert "failed" in sync_line and "1 attempt " in sync_line
    assert "localhost:8233" not in text

    # A succeeded run: counts, redactions, phases in order, the verified receipt, its log.
    details = json.loads((await sluice(["runs", "show", first, "--json"], env)).stdout)
    assert details["status"] == "succeeded" and details["records_by_stream"] == {"items": 3}
    assert details["redactions"].get("cursor", 0) >= 1
    assert [p["activity"] for p in details["phases"]] == [
        "plan_run",
        "run_sync",
        "retain_metadata",
        "purge_staging",
        "record_run",
    ]
    assert all(p["outcome"] == "completed" and p["attempts"] == 1 for p in details["phases"])
    [receipt] = details["receipts"]
    assert receipt["receipt_id"] == f"purge-{first}" and receipt["verified_empty"]
    [log] = details["logs"]
    assert details["temporal_ui"] == f"{UI}namespaces/default/workflows/sync-{good}/{first}"
    assert details["replay_command"] is None
    shown = await sluice(["runs", "show", first], env)
    assert f"purge-{first}: " in shown.stdout and "verified empty" in shown.stdout
    assert f"attempt 1: {log['uri']}" in shown.stdout

    # `sluice logs`: the scrubbed log, as retained, with no cursor value in it.
    for run_id, cursor in ((first, CURSOR), (failed, FAILED_CURSOR)):
        printed = await sluice(["logs", run_id], env)
        assert printed.returncode == 0, printed.stderr
        [retained] = store.retained_logs_of(run_id)
        assert printed.stdout == Path(retained["uri"].removeprefix("file://")).read_text()
        assert "[REDACTED:cursor]" in printed.stdout
        for form in (cursor, cursor.replace("T", " ").removesuffix("Z")):
            assert form not in printed.stdout
        assert retained["uri"] in printed.stderr
    assert "API key rejected" in (await sluice(["logs", failed, "--attempt", "1"], env)).stdout

    # What is missing is named, and refused (exit 2).
    no_attempt = await sluice(["logs", first, "--attempt", "2"], env)
    assert no_attempt.returncode == cli.EXIT_REFUSED
    assert f"run {first} has no retained log of attempt 2 (attempts with a log: 1)" in (
        no_attempt.stderr
    )
    for args in (["logs", "no-such-run"], ["runs", "show", "no-such-run"]):
        unknown = await sluice(args, env)
        assert unknown.returncode == cli.EXIT_REFUSED, unknown.stderr
        assert "unknown run 'no-such-run'" in unknown.stderr
        assert "Traceback" not in unknown.stderr
    Path(log["uri"].removeprefix("file://")).unlink()
    gone = await sluice(["logs", first], env)
    assert gone.returncode == cli.EXIT_REFUSED
    assert f"is recorded at {log['uri']}, but its store holds no such object" in gone.stderr

    # Replayed: both runs link to each other; the failed run's staging is purged and verified.
    replay = await start_replay(
        client, settings, ReplayRequest.model_validate({"run_id": failed, "continue": False})
    )
    replayed = await replay.result()
    assert replayed.status == "succeeded"
    listed = [r for r in await runs_json([], env) if r["kind"] != "sweep"]
    assert [(r["run_id"], r["kind"]) for r in listed[:2]] == [
        (replayed.run_id, "replay"),
        (second, "sync"),
    ]
    assert next(r for r in listed if r["run_id"] == failed)["purge_verified"] is True
    shown = await sluice(["runs", "show", failed], env)
    assert f"replayed by:  {replayed.run_id}" in shown.stdout
    assert "replay with:" not in shown.stdout and f"purge-{failed}: " in shown.stdout
    shown = await sluice(["runs", "show", replayed.run_id], env)
    assert f"replay of:    {failed}" in shown.stdout and "kind:         replay" in shown.stdout
    assert f"{UI}namespaces/default/workflows/replay-{failed}/{replayed.run_id}" in shown.stdout


@pytest.fixture
def aws_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    env = {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": DUMMY_CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": DUMMY_CREDENTIALS["aws_secret_access_key"],
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    yield env


@pytest.mark.temporal
async def test_logs_are_read_from_the_store_that_holds_them(
    tmp_path: Path,
    aws_env: dict[str, str],
    bucket: Callable[[str], str],
    s3_client: BaseClient,
    make_settings: Callable[..., Settings],
    run_worker: Any,
    client: Client,
    temporal_env: WorkflowEnvironment,
) -> None:
    name = bucket("plain")
    connection_id = unique("s3logs")
    settings = make_settings(
        items_connection(
            protocol_connector(tmp_path, "source-good", GOOD_READ),
            tmp_path / "w.duckdb",
            connection_id=connection_id,
        ),
        log_store=f"s3://{name}/logs/",
    )
    await run_worker(settings)
    run_id = await run_to_end(client, settings, connection_id)
    key = f"logs/{connection_id}/{run_id}/attempt-001.log"
    in_s3 = s3_client.get_object(Bucket=name, Key=key)["Body"].read().decode()

    # The CLI's own log store is elsewhere now: the log is read where it was retained.
    env = cli_env(settings, temporal_env, SLUICE_LOG_STORE=(tmp_path / "other").as_uri() + "/")
    printed = await sluice(["logs", run_id], env)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == in_s3 and "[REDACTED:cursor]" in printed.stdout
    assert CURSOR not in printed.stdout
    assert f"s3://{name}/{key}" in printed.stderr


@pytest.mark.temporal
async def test_logs_are_read_from_azure_blob_storage(
    tmp_path: Path,
    azurite_connection_string: str,
    azure_container: ContainerClient,
    make_settings: Callable[..., Settings],
    run_worker: Any,
    client: Client,
    temporal_env: WorkflowEnvironment,
) -> None:
    connection_id = unique("azlogs")
    settings = make_settings(
        items_connection(
            protocol_connector(tmp_path, "source-good", GOOD_READ),
            tmp_path / "w.duckdb",
            connection_id=connection_id,
        ),
        log_store=f"az://{azure_container.container_name}/logs/",
        azure_storage_connection_string=azurite_connection_string,
    )
    await run_worker(settings)
    run_id = await run_to_end(client, settings, connection_id)
    blob = f"logs/{connection_id}/{run_id}/attempt-001.log"
    in_azure = azure_container.download_blob(blob).readall().decode()

    env = cli_env(settings, temporal_env, AZURE_STORAGE_CONNECTION_STRING=azurite_connection_string)
    printed = await sluice(["logs", run_id], env)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == in_azure and "[REDACTED:cursor]" in printed.stdout
    assert CURSOR not in printed.stdout


def slow_connector(tmp_path: Path) -> Path:
    """A record and its state, then it says it is reading and waits (for a cancellation)."""
    return protocol_connector(
        tmp_path,
        "source-slow",
        f"""
        import time
        record(1, "2031-07-11T10:20:30Z")
        state("2031-07-11T10:20:30Z")
        open({str(tmp_path / "reading")!r}, "w").close()
        time.sleep(300)
        """,
    )


@pytest.mark.temporal
async def test_cancel_ends_a_running_sync_cancelled_and_gives_the_connection_back(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    run_worker: Any,
    client: Client,
    temporal_env: WorkflowEnvironment,
) -> None:
    connection_id = unique("slow")
    settings = make_settings(
        items_connection(
            slow_connector(tmp_path), tmp_path / "w.duckdb", connection_id=connection_id
        ),
        # A cancellation reaches an activity with its next heartbeat, which the SDK sends at
        # most every 0.8 heartbeat timeouts (48 s at the default 60 s).
        heartbeat_timeout_seconds=5,
    )
    await run_worker(settings)
    env = cli_env(settings, temporal_env)
    store = MetadataStore.from_url(settings.resolved_metadata_url)

    # By connection, waiting for the end.
    handle = await start_sync(client, settings, SyncRequest(connection_id=connection_id))
    await wait_until(lambda: (tmp_path / "reading").exists(), timeout=60)
    run_id = handle.result_run_id
    assert run_id is not None
    [running] = await runs_json(["--connection", connection_id], env)
    assert running["run_id"] == run_id and running["status"] == "running"
    assert running["kind"] == "sync" and running["workflow_id"] == f"sync-{connection_id}"
    shown = await sluice(["runs", "show", run_id], env)
    assert shown.returncode == 0, shown.stderr
    assert "status:       running" in shown.stdout and " run_sync " in shown.stdout

    done = await sluice(["cancel", connection_id, "--wait"], env)
    assert done.returncode == 0, done.stderr
    assert f"cancellation requested: run {run_id} of connection '{connection_id}'" in done.stderr
    assert f"{UI}namespaces/default/workflows/sync-{connection_id}/{run_id}" in done.stderr
    assert f"run {run_id} ended cancelled" in done.stderr
    record = store.get_run(run_id)
    assert record is not None and record["status"] == "cancelled"
    assert store.lock_holder(connection_id) is None
    [listed] = await runs_json(["--connection", connection_id], env)
    assert listed["run_id"] == run_id and listed["status"] == "cancelled"
    assert (await sluice(["logs", run_id], env)).returncode == 0  # its log was retained

    # Nothing running any more: said so, refused (exit 2).
    for target in (connection_id, run_id, "no-such-connection"):
        nothing = await sluice(["cancel", target], env)
        assert nothing.returncode == cli.EXIT_REFUSED, nothing.stderr
        assert "nothing to cancel" in nothing.stderr and "Traceback" not in nothing.stderr
    assert f"run {run_id} of connection '{connection_id}' is not running (it ended cancelled" in (
        (await sluice(["cancel", run_id], env)).stderr
    )

    # By run id, without waiting: the run ends cancelled all the same.
    (tmp_path / "reading").unlink()
    handle = await start_sync(client, settings, SyncRequest(connection_id=connection_id))
    await wait_until(lambda: (tmp_path / "reading").exists(), timeout=60)
    second = handle.result_run_id
    assert second is not None
    done = await sluice(["cancel", second], env)
    assert done.returncode == 0, done.stderr
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    record = store.get_run(second)
    assert record is not None and record["status"] == "cancelled"
    assert store.lock_holder(connection_id) is None

    # Not planned yet (no worker polls its queue): the CLI's sync-CONNECTION is cancelled.
    idle = settings.model_copy(update={"task_queue": f"idle-{uuid.uuid4().hex[:8]}"})
    pending = await start_sync(client, idle, SyncRequest(connection_id=connection_id))
    done = await sluice(["cancel", connection_id], env)
    assert done.returncode == 0, done.stderr
    assert f"cancellation requested: run {pending.result_run_id} of connection" in done.stderr
    history = await pending.fetch_history()
    assert any(
        e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED
        for e in history.events
    )
    await pending.terminate("test over")
