"""Notifications: real runs on the dev server tell a local webhook receiver when they fail, when
the connection recovers, when it keeps failing; the schedule of a connection that keeps failing
is paused and stays paused through `sluice schedules apply`; a receiver that hangs or answers
500 neither fails nor delays a run, and its notifications are retried, then given up."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.testing import WorkflowEnvironment

from tests.support.connections import items_connection, protocol_connector
from tests.support.postgres import scratch_database
from tests.support.processes import wait_until, worker_process
from tests.support.session import REPO
from workers.cli import start_sync
from workers.client import ui_link
from workers.connections import ConnectionsFile
from workers.metadata import MetadataStore
from workers.notifications import FailurePolicy
from workers.schedules import SYNC_SCHEDULE_PREFIX, apply_schedules, paused_schedules
from workers.settings import Settings
from workflows.models import SyncRequest

SLUICE = str(REPO / ".venv" / "bin" / "sluice")
UI = "https://temporal.example.com/ui/"
# The connector's cursor: it prints it in its log and in its error. Never in a message.
CURSOR = "2033-03-03T03:03:03Z"


# -- a webhook receiver on a loopback port ---------------------------------------------------


@dataclass
class Receiver:
    """Records every request (path, JSON body, when); answers as `mode` says: `ok` (200),
    `error` (500) or `hang` (never answers, until the test ends)."""

    mode: str = "ok"
    received: list[tuple[str, dict[str, Any], datetime]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    url: str = ""

    def messages(self, path: str = "/") -> list[dict[str, Any]]:
        return [body for at, body, _ in self.received if at == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            state.received.append((self.path, json.loads(body), datetime.now(UTC)))
            if state.mode == "hang":
                state.release.wait(60)
                return
            self.send_response(500 if state.mode == "error" else 200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()


# -- a connection that fails while a flag file exists -----------------------------------------


def flaky_connection(tmp_path: Path, connection_id: str, extra: str = "") -> tuple[str, Path]:
    """A connections file with `connection_id`, whose connector reads one record and its state
    (the cursor `CURSOR`), logs the cursor, then fails with an error quoting it while the flag
    file exists; and the flag."""
    flag = tmp_path / "fail"
    connector = protocol_connector(
        tmp_path,
        "source-flaky",
        f"""
        import os
        record(1, {CURSOR!r})
        state({CURSOR!r})
        emit({{"type": "LOG", "log": {{"level": "INFO", "message": "read up to {CURSOR}"}}}})
        if os.path.exists({str(flag)!r}):
            emit({{"type": "TRACE", "trace": {{"type": "ERROR", "emitted_at": 1700000000000,
                  "error": {{"message": "token expired after {CURSOR}",
                             "failure_type": "config_error"}}}}}})
            sys.exit(1)
        """,
    )
    text = items_connection(connector, tmp_path / "w.duckdb", connection_id=connection_id)
    return text + extra, flag


async def sync(client: Client, settings: Settings, connection_id: str) -> tuple[str, bool]:
    """Run the connection once through the workflow: (its run id, whether it succeeded)."""
    handle = await start_sync(client, settings, SyncRequest(connection_id=connection_id))
    try:
        await handle.result()
    except WorkflowFailureError:
        return handle.result_run_id or "", False
    return handle.result_run_id or "", True


def unique(prefix: str) -> str:
    """Workflow (sync-ID) and schedule ids are shared by the session's dev server."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def settled(store: MetadataStore, run_id: str) -> Callable[[], bool]:
    def done() -> bool:
        rows = store.notifications(run_id=run_id)
        return bool(rows) and all(r["status"] != "pending" for r in rows)

    return done


pytestmark = pytest.mark.temporal


async def test_a_failed_run_notifies_each_webhook_once_with_its_record_and_no_cursor(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    run_worker: Any,
    client: Client,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connection_id = unique("notify")
    # The connection's own webhook, besides the global one, named by an environment variable.
    monkeypatch.setenv("ITEMS_TEAM_WEBHOOK", f"{receiver.url}/team")
    connections, flag = flaky_connection(
        tmp_path, connection_id, '[connections.notify]\nwebhook_env = "ITEMS_TEAM_WEBHOOK"\n'
    )
    flag.touch()
    settings = make_settings(
        connections,
        sync_attempts=1,
        notify_webhook_url=f"{receiver.url}/global",
        temporal_ui_url=UI,
    )
    sluice = await run_worker(settings)
    run_id, succeeded = await sync(client, settings, connection_id)
    assert not succeeded

    store = sluice.metadata
    await wait_until(settled(store, run_id))
    await asyncio.sleep(2.5)  # a second send would come with the next polls: none comes
    record = store.get_run(run_id)
    assert record is not None and record["status"] == "failed"
    assert "[REDACTED:cursor]" in record["error"] and CURSOR not in record["error"]
    for path in ("/global", "/team"):
        [message] = receiver.messages(path)
        assert message["event"] == "run_failed"
        assert message["run_id"] == run_id and message["connection_id"] == connection_id
        assert message["workflow_id"] == f"sync-{connection_id}"
        assert message["kind"] == "sync" and message["backend"] == "local"
        assert message["status"] == "failed" and message["failed_phase"] == "sync"
        assert message["error"] == record["error"]  # the scrubbed error, as recorded
        assert message["consecutive_failures"] == 1
        assert message["temporal_ui"] == ui_link(settings, f"sync-{connection_id}", run_id)
        assert message["temporal_ui"].startswith(UI)
        assert run_id in message["text"] and message["temporal_ui"] in message["text"]
        assert record["error"] in message["text"]
        assert CURSOR not in json.dumps(message)
    rows = store.notifications(run_id=run_id)
    assert {(r["event"], r["target"], r["status"], r["attempts"]) for r in rows} == {
        ("run_failed", "SLUICE_NOTIFY_WEBHOOK_URL", "delivered", 1),
        ("run_failed", "ITEMS_TEAM_WEBHOOK", "delivered", 1),
    }
    # The outbox names where a message goes, never the URL (a secret); it holds no cursor.
    dumped = store.dump_text()
    assert receiver.url not in dumped and CURSOR not in dumped


async def test_recovery_repeated_failures_and_a_paused_schedule_that_apply_keeps_paused(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    run_worker: Any,
    client: Client,
    temporal_env: WorkflowEnvironment,
    receiver: Receiver,
) -> None:
    connection_id = unique("streak")
    schedule_id = f"{SYNC_SCHEDULE_PREFIX}{connection_id}"
    # A schedule that would not start anything during the test.
    connections, flag = flaky_connection(tmp_path, connection_id)
    connections = connections.replace(
        f'id = "{connection_id}"', f'id = "{connection_id}"\nschedule = "0 0 1 1 *"'
    )
    settings = make_settings(
        connections,
        sync_attempts=1,
        notify_webhook_url=receiver.url,
        notify_repeated_failures=2,
        pause_after_failures=3,
    )
    sluice = await run_worker(settings)
    store = sluice.metadata
    file = ConnectionsFile.load(settings.connections_file)
    assert schedule_id in await apply_schedules(client, settings, file)
    schedule = client.get_schedule_handle(schedule_id)
    try:
        flag.touch()
        first, _ = await sync(client, settings, connection_id)
        flag.unlink()
        recovered, succeeded = await sync(client, settings, connection_id)
        assert succeeded
        flag.touch()
        runs = [(await sync(client, settings, connection_id))[0] for _ in range(3)]
        for run_id in (first, recovered, *runs):
            await wait_until(settled(store, run_id))
        await wait_until(lambda: len(store.notifications(run_id=runs[-1])) == 3)
        await wait_until(settled(store, runs[-1]))

        events = [(m["event"], m["run_id"], m["consecutive_failures"]) for m in receiver.messages()]
        assert sorted(events) == sorted(
            [
                ("run_failed", first, 1),
                ("connection_recovered", recovered, 1),
                ("run_failed", runs[0], 1),
                ("run_failed", runs[1], 2),
                ("repeated_failures", runs[1], 2),  # N = 2 in a row: once
                ("run_failed", runs[2], 3),
                ("schedule_paused", runs[2], 3),  # M = 3 in a row
            ]
        )
        by_event = {m["event"]: m for m in receiver.messages()}
        assert by_event["connection_recovered"]["status"] == "succeeded"
        assert "recovered" in by_event["connection_recovered"]["text"]
        assert "failed 2 runs in a row" in by_event["repeated_failures"]["text"]
        paused = by_event["schedule_paused"]
        assert paused["schedule_id"] == schedule_id and paused["pause_outcome"] == "paused"
        assert f"sluice schedules resume {connection_id}" in paused["text"]
        assert CURSOR not in json.dumps(receiver.messages())

        state = (await schedule.describe()).schedule.state
        assert state.paused
        assert state.note == paused["pause_note"]
        assert state.note is not None
        assert "3 failed runs in a row" in state.note and runs[2] in state.note

        # `sluice schedules apply` keeps the pause, and its note, and says so.
        env = cli_env(settings, temporal_env)
        applied = await sluice_cli(["schedules", "apply"], env)
        assert applied.returncode == 0, applied.stderr
        assert schedule_id in applied.stdout.split()
        assert f"{schedule_id} kept paused" in applied.stderr
        assert f"sluice schedules resume {connection_id}" in applied.stderr
        state = (await schedule.describe()).schedule.state
        assert state.paused and state.note == paused["pause_note"]
        assert await apply_schedules(client, settings, file)  # the function too
        assert await paused_schedules(client, [schedule_id]) == {schedule_id: state.note}

        resumed = await sluice_cli(["schedules", "resume", connection_id], env)
        assert resumed.returncode == 0, resumed.stderr
        assert not (await schedule.describe()).schedule.state.paused
        unknown = await sluice_cli(["schedules", "resume", "no-such-connection"], env)
        assert unknown.returncode == 2 and "has no schedule" in unknown.stderr
    finally:
        await schedule.delete()


async def test_sluice_worker_delivers_from_its_own_process(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    client: Client,
    temporal_env: WorkflowEnvironment,
    receiver: Receiver,
) -> None:
    """`sluice worker` runs the delivery beside its worker, configured by the environment as
    a deployment is, and stops it with the worker."""
    connection_id = unique("process")
    connections, flag = flaky_connection(
        tmp_path, connection_id, '[connections.notify]\nwebhook_env = "TEAM_WEBHOOK"\n'
    )
    flag.touch()
    settings = make_settings(connections)
    worker = worker_process(
        settings,
        temporal_env,
        tmp_path / "worker.log",
        {
            "SLUICE_SYNC_ATTEMPTS": "1",
            "SLUICE_NOTIFY_WEBHOOK_URL": f"{receiver.url}/global",
            "TEAM_WEBHOOK": f"{receiver.url}/team",
        },
    )
    try:
        run_id, succeeded = await sync(client, settings, connection_id)
        assert not succeeded
        store = MetadataStore.from_url(settings.resolved_metadata_url)
        await wait_until(settled(store, run_id))
        for path in ("/global", "/team"):
            [message] = receiver.messages(path)
            assert message["event"] == "run_failed" and message["run_id"] == run_id
        assert {r["status"] for r in store.notifications(run_id=run_id)} == {"delivered"}
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0, (tmp_path / "worker.log").read_text()


@pytest.mark.parametrize("mode", ["hang", "error"])
async def test_a_receiver_that_hangs_or_fails_neither_fails_nor_delays_runs(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    run_worker: Any,
    client: Client,
    receiver: Receiver,
    mode: str,
) -> None:
    receiver.mode = mode
    connection_id = unique(f"webhook-{mode}")
    connections, flag = flaky_connection(tmp_path, connection_id)
    settings = make_settings(
        connections,
        sync_attempts=1,
        notify_webhook_url=receiver.url,
        notify_timeout_seconds=1,
        notify_retry_seconds=0.3,
        notify_give_up_hours=4 / 3600,  # 4 seconds
    )
    sluice = await run_worker(settings)
    store = sluice.metadata
    flag.touch()
    failed, succeeded = await sync(client, settings, connection_id)
    assert not succeeded
    flag.unlink()
    # The next run starts while the first one's notification is being tried: it succeeds
    # (recovered, itself notified), and takes no longer than the webhook's timeout would add.
    started = asyncio.get_running_loop().time()
    recovered, succeeded = await sync(client, settings, connection_id)
    took = asyncio.get_running_loop().time() - started
    assert succeeded
    record = store.get_run(recovered)
    assert record is not None and record["status"] == "succeeded"

    for run_id in (failed, recovered):
        await wait_until(settled(store, run_id), timeout=30)
        [row] = store.notifications(run_id=run_id)
        assert row["status"] == "given_up" and row["delivered_at"] is None
        assert row["attempts"] >= 2  # retried with backoff before it gave up
        assert row["last_error"] == ("no answer within 1 s" if mode == "hang" else "HTTP 500")
        assert receiver.url not in row["last_error"]
        # Given up within its bound (4 s, and the attempt under way), after the run had ended.
        given_up = row["given_up_at"] - row["created_at"]
        assert timedelta(seconds=2) < given_up < timedelta(seconds=4 + 1 + 2)
        closed = (
            await client.get_workflow_handle(f"sync-{connection_id}", run_id=run_id).describe()
        ).close_time
        assert closed is not None and closed < row["given_up_at"]
        attempts = [at for _, body, at in receiver.received if body["run_id"] == run_id]
        assert len(attempts) == row["attempts"]
        # The run had ended before its first attempt could even time out: nothing waited.
        assert closed < attempts[0] + timedelta(seconds=1)
        assert all(later > earlier for earlier, later in itertools.pairwise(attempts))
    assert took < 30, f"a run took {took:.1f} s"


# -- the outbox and the policy, without a server -----------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def outbox_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    if request.param == "sqlite":
        yield MetadataStore.from_url(f"sqlite:///{tmp_path / 'm.db'}")
        return
    with scratch_database("sluice_notify") as name:
        store = MetadataStore.from_url(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
        try:
            yield store
        finally:
            store.engine.dispose()


def run_row(run_id: str, status: str, finished: datetime) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "connection_id": "c",
        "workflow_id": "sync-c",
        "status": status,
        "started_at": finished - timedelta(minutes=1),
        "finished_at": finished,
        "duration_seconds": 60.0,
        "records_by_stream": {},
        "redactions": {},
    }


def test_each_notification_is_claimed_by_one_worker_and_its_outcome_recorded(
    outbox_store: MetadataStore,
) -> None:
    store = outbox_store
    rows: list[dict[str, Any]] = [
        {
            "id": f"r{i}:run_failed:HOOK",
            "connection_id": "c",
            "run_id": f"r{i}",
            "event": "run_failed",
            "action": "webhook",
            "target": "HOOK",
            "payload": {"text": f"run r{i} failed"},
        }
        for i in range(12)
    ]
    assert store.enqueue_notifications(rows) == 12
    assert store.enqueue_notifications(rows[:3]) == 0  # a retried record_run adds nothing

    lease = timedelta(minutes=1)
    with ThreadPoolExecutor(max_workers=4) as pool:
        claims = list(pool.map(lambda worker: store.claim_notifications(worker, lease, 12), "abcd"))
    claimed = [row["id"] for claim in claims for row in claim]
    assert sorted(claimed) == sorted(r["id"] for r in rows)  # each claimed, by one worker
    assert store.claim_notifications("e", lease) == []  # held while the claims last

    # Twelve rows among four workers: one of them won three at least.
    owner, mine = max(zip("abcd", claims, strict=True), key=lambda claim: len(claim[1]))
    first, second, third = (row["id"] for row in mine[:3])
    assert not store.notification_attempted(first, "not-the-owner", delivered=True)
    assert store.notification_attempted(first, owner, delivered=True)
    past = datetime.now(UTC) - timedelta(seconds=1)
    assert store.notification_attempted(
        second, owner, delivered=False, error="HTTP 500", retry_at=past
    )
    assert store.notification_attempted(third, owner, delivered=False, error="HTTP 500")
    by_id = {r["id"]: r for r in store.notifications(connection_id="c")}
    assert by_id[first]["status"] == "delivered" and by_id[first]["delivered_at"] is not None
    assert by_id[second]["status"] == "pending" and by_id[second]["attempts"] == 1
    assert by_id[third]["status"] == "given_up" and by_id[third]["last_error"] == "HTTP 500"
    assert [r["id"] for r in store.claim_notifications("e", lease)] == [second]  # due again


def test_the_failure_streak_counts_failures_since_the_last_success(
    outbox_store: MetadataStore,
) -> None:
    store = outbox_store
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    statuses = ["failed", "succeeded", "failed", "cancelled", "timed_out", "failed"]
    for i, status in enumerate(statuses):
        store.record_run(run_row(f"r{i}", status, t0 + timedelta(hours=i)))
    at = [t0 + timedelta(hours=i) for i in range(len(statuses))]
    assert store.failure_streak("c", at[5]) == [at[5], at[4], at[2]]  # cancelled: not counted
    assert store.failure_streak("c", at[1]) == [at[0]]  # before the success: what it recovered
    assert store.failure_streak("c", at[0]) == [at[0]]
    assert store.failure_streak("other", at[5]) == []


def test_the_failure_policy_warns_once_and_pauses_every_m_failures_or_after_days() -> None:
    policy = FailurePolicy(repeated_failures=3, pause_after_failures=5, pause_after_failing_days=2)
    now = datetime(2026, 1, 10, tzinfo=UTC)

    def streak(count: int, every: timedelta = timedelta(minutes=1)) -> list[datetime]:
        return [now - every * i for i in range(count)]

    assert [n for n in range(1, 12) if policy.warns(streak(n))] == [3]
    assert [n for n in range(1, 12) if policy.pause_reason(streak(n))] == [5, 10]
    assert policy.pause_reason(streak(5)) == "5 failed runs in a row"
    # Hourly failures for two days: paused at the first failure 48 h into the streak, once.
    hourly = [n for n in range(2, 60) if policy.pause_reason(streak(n, timedelta(hours=1)))]
    assert hourly == [5, 10, 15, 20, 25, 30, 35, 40, 45, 49, 50, 55]
    never = FailurePolicy(repeated_failures=0, pause_after_failures=0, pause_after_failing_days=0)
    assert not any(never.warns(streak(n)) or never.pause_reason(streak(n)) for n in range(1, 40))


# -- the CLI in a subprocess -------------------------------------------------------------------


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


def cli_env(settings: Settings, temporal: WorkflowEnvironment) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env.update(
        SLUICE_STATE_DIR=str(settings.state_path),
        SLUICE_CONNECTIONS_FILE=str(settings.connections_file),
        SLUICE_CONNECTORS_DIR=str(settings.connectors_dir),
        SLUICE_TASK_QUEUE=settings.task_queue,
        SLUICE_PAYLOAD_KEYS=settings.payload_keys or "",
        SLUICE_TEMPORAL_ADDRESS=temporal.client.service_client.config.target_host,
    )
    return env


async def sluice_cli(args: list[str], env: dict[str, str], timeout: float = 120) -> Done:
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
