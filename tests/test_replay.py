"""Replaying a failed sync from its staged data (ReplayFailedSyncWorkflow), with real parts: a
protocol connector that counts its reads, a worker on the dev server, PostgreSQL as the
destination, local staging.

A run is made to fail on the destination side after the connector delivered its states (the
warehouse refuses writes after the first commit, as during a maintenance window); the replay
then commits what was staged without starting the connector, and syncs on from there. What
is checked is what on-call would check: the rows (each exactly once, as a clean sync of the same
source leaves them), the connector's reads, both staging prefixes, the receipts, the run links.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import pytest_asyncio
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from tests.support.connections import protocol_connector
from tests.support.histories import HISTORY_KEYS, save_history
from tests.support.postgres import POSTGRES, scratch_database
from tests.support.processes import wait_until, worker_process
from workers.cli import start_replay as cli_start_replay
from workers.cli import start_sync
from workers.codec import data_converter, parse_keys
from workers.metadata import MetadataStore
from workers.settings import Settings
from workers.worker import build_worker
from workflows.models import ReplayRequest, SyncRequest, SyncSummary

pytestmark = pytest.mark.temporal

LAST = 55  # the source's records: ids 1..55, a STATE after every tenth


@pytest.fixture
def warehouse(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A PostgreSQL database of the test's own; its DSN in REPLAY_DSN, as a connection names it."""
    with scratch_database("sluice_replay") as name:
        dsn = f"{POSTGRES} dbname={name}"
        monkeypatch.setenv("REPLAY_DSN", dsn)
        yield dsn


def counting_source(tmp_path: Path, *, crash_at: int = 0, gated: bool = False) -> Path:
    """Records 1..LAST after the state it is given, a STATE after every tenth; every `read` is
    counted in `reads`. `crash_at`: exit 3 right after emitting that record (a crash).
    `gated`: on a first read, wait for the test's `go` file after the first STATE (so that the
    test can make the warehouse refuse writes between the first commit and the next)."""
    return protocol_connector(
        tmp_path,
        "counting-source",
        f"""
        import os, time
        with open({str(tmp_path / "reads")!r}, "a") as reads:
            reads.write("read\\n")
        start = 0
        if "--state" in sys.argv:
            with open(sys.argv[sys.argv.index("--state") + 1]) as given:
                for message in json.load(given):
                    start = int(message["stream"]["stream_state"]["updated_at"])
        for i in range(start + 1, {LAST} + 1):
            record(i, f"{{i:04d}}")
            if i == {crash_at}:
                print("upstream API went away: HTTP 502", file=sys.stderr, flush=True)
                sys.exit(3)
            if i % 10 == 0:
                state(f"{{i:04d}}")
                if {gated!r} and start == 0 and i == 10:
                    while not os.path.exists({str(tmp_path / "go")!r}):
                        time.sleep(0.05)
        """,
    )


def connection(command: Path, connection_id: str = "items") -> str:
    return f"""
        [[connections]]
        id = "{connection_id}"
        [connections.source]
        command = ["{command}"]
        [connections.destination]
        type = "postgres"
        dsn_env = "REPLAY_DSN"
        [[connections.streams]]
        name = "items"
        sync_mode = "incremental"
        destination_mode = "append"
    """


def ids(dsn: str, schema: str = "items") -> list[int]:
    with psycopg.connect(dsn) as db:
        rows = db.execute(f'SELECT id FROM "{schema}".items ORDER BY id').fetchall()
    return [int(row[0]) for row in rows]


def committed_cursor(dsn: str, schema: str = "items") -> str:
    with psycopg.connect(dsn) as db:
        row = db.execute(f'SELECT state::text FROM "{schema}"._sluice_state').fetchone()
    assert row is not None
    return str(row[0])


def refuse_writes(dsn: str) -> None:
    """The warehouse refuses every write to the stream's table (a maintenance window)."""
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'the warehouse is read-only for maintenance'; END $$"
        )
        db.execute(
            "CREATE TRIGGER maintenance BEFORE INSERT ON items.items "
            "FOR EACH STATEMENT EXECUTE FUNCTION refuse()"
        )


def allow_writes(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute("DROP TRIGGER maintenance ON items.items")


def reads(tmp_path: Path) -> int:
    path = tmp_path / "reads"
    return len(path.read_text().splitlines()) if path.exists() else 0


def staged(settings: Settings, run_id: str) -> list[Path]:
    prefix = settings.state_path / "staging" / "items" / run_id
    return [p for p in prefix.rglob("*") if p.is_file()] if prefix.exists() else []


async def start_replay(
    client: Client, settings: Settings, run_id: str, *, continue_: bool = True
) -> WorkflowHandle[Any, SyncSummary]:
    """As `sluice replay` starts one."""
    request = ReplayRequest.model_validate({"run_id": run_id, "continue": continue_})
    return await cli_start_replay(client, settings, request)


async def failed_run(client: Client, settings: Settings) -> str:
    """Start a sync of `items` and return its run id once it failed."""
    handle = await start_sync(client, settings, SyncRequest(connection_id="items"))
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    description = await handle.describe()
    return description.run_id


@pytest_asyncio.fixture
async def history_client(client: Client) -> Client:
    """A client (and so its workers) with the fixed key of recorded histories, so that this
    test's replay can be kept as one (SLUICE_RECORD_HISTORIES=1, tests/histories/README.md)."""
    return await Client.connect(
        client.service_client.config.target_host,
        namespace=client.namespace,
        data_converter=data_converter(parse_keys(HISTORY_KEYS)),
    )


async def test_a_run_failed_at_the_destination_is_replayed_without_reading_the_source_again(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    history_client: Client,
    warehouse: str,
) -> None:
    client = history_client
    settings = make_settings(
        connection(counting_source(tmp_path, gated=True)), batch_records=10, sync_attempts=1
    )
    async with build_worker(client, settings):
        await _replayed_without_reading_the_source_again(tmp_path, settings, client, warehouse)


async def _replayed_without_reading_the_source_again(
    tmp_path: Path, settings: Settings, client: Client, warehouse: str
) -> None:
    handle = await start_sync(client, settings, SyncRequest(connection_id="items"))
    await wait_until(lambda: len(ids_or_none(warehouse)) == 10, timeout=120)
    refuse_writes(warehouse)
    (tmp_path / "go").touch()
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    failed = (await handle.describe()).run_id
    store = MetadataStore.from_url(settings.resolved_metadata_url)
    assert store.get_run(failed)["status"] == "failed"
    assert ids(warehouse) == list(range(1, 11))  # the first commit only
    # The failed run's record counts what it committed before it failed.
    failed_row = store.get_run(failed)
    assert failed_row["records"] == 10 and failed_row["records_by_stream"] == {"items": 10}
    assert reads(tmp_path) == 1
    assert staged(settings, failed)  # kept for the replay

    allow_writes(warehouse)
    replay = await start_replay(client, settings, failed)
    summary = await replay.result()
    await save_history(replay, "replay-local-succeeded")

    # The replay committed the staged commits the failure stopped, without the connector:
    # the only other read is the sync that continues from the replayed state.
    assert summary.status == "succeeded" and summary.kind == "replay"
    assert summary.replay_of == failed
    assert summary.replay is not None
    assert summary.replay.already_committed == 1 and summary.replay.commits >= 1
    assert summary.replay.records["items"] >= 10
    assert reads(tmp_path) == 2
    assert summary.records == {"items": LAST - 10}
    # Each record exactly once, as a clean sync of the same source leaves them.
    assert ids(warehouse) == list(range(1, LAST + 1))
    assert '"0050"' in committed_cursor(warehouse)  # the last STATE (51..55 have none)
    # Both stagings purged, each with its own verified receipt.
    assert staged(settings, failed) == [] and staged(settings, summary.run_id) == []
    assert summary.verified_empty and summary.receipt_id == f"purge-{summary.run_id}"
    assert summary.replayed_receipt_id == f"purge-{failed}"
    for run_id in (failed, summary.run_id):
        receipt = store.get_receipt(f"purge-{run_id}")
        assert receipt is not None and receipt["verified_empty"] and receipt["run_id"] == run_id
        # Each run's staging key is destroyed with its staging.
        assert receipt["data_key_destroyed"] is True
        assert store.existing_staging_key(run_id) is None
    # The runs point at each other.
    replay_row, failed_row = store.get_run(summary.run_id), store.get_run(failed)
    assert replay_row["kind"] == "replay" and replay_row["replay_of"] == failed
    assert failed_row["replayed_by"] == summary.run_id
    assert store.lock_holder("items") is None

    # A second replay of the same run is refused, naming it.
    second = await start_replay(client, settings, failed)
    with pytest.raises(WorkflowFailureError) as refused:
        await second.result()
    assert _refusal(refused.value) == (
        f"run {failed} of connection 'items' was already replayed by run {summary.run_id}"
    )


def ids_or_none(dsn: str) -> list[int]:
    try:
        return ids(dsn)
    except psycopg.errors.UndefinedTable:
        return []


def _refusal(error: WorkflowFailureError) -> str:
    cause = error.cause
    while cause is not None and not (
        isinstance(cause, ApplicationError) and cause.type == "ReplayRefused"
    ):
        cause = cause.cause
    assert isinstance(cause, ApplicationError), f"not refused: {error.cause!r}"
    return cause.message


async def test_a_crashed_run_replays_what_its_states_covered_and_drops_the_rest(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    run_worker: Any,
    client: Client,
    warehouse: str,
) -> None:
    """The connector crashes after its STATE at 20 and five more records, before anything was
    committed (batches of 1,000): the replay commits 1..20 with that state, from the middle of a
    staged file, and drops the five no STATE covers; without `continue` nothing is read."""
    source = counting_source(tmp_path, crash_at=25)
    settings = make_settings(connection(source), batch_records=1000, sync_attempts=1)
    await run_worker(settings)
    failed = await failed_run(client, settings)
    assert ids_or_none(warehouse) == []

    summary = await (await start_replay(client, settings, failed, continue_=False)).result()

    assert summary.replay is not None
    assert summary.replay.records == {"items": 20} and summary.replay.states == 1
    assert summary.replay.dropped_batches == 1  # the tail of the file: 21..25
    assert reads(tmp_path) == 1
    assert ids(warehouse) == list(range(1, 21))
    assert '"0020"' in committed_cursor(warehouse)
    assert staged(settings, failed) == [] and summary.replayed_receipt_id == f"purge-{failed}"


async def test_replays_that_cannot_be_done_are_refused_with_what_to_do_instead(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    run_worker: Any,
    client: Client,
    warehouse: str,
) -> None:
    source = counting_source(tmp_path, crash_at=25)
    settings = make_settings(connection(source), batch_records=1000, sync_attempts=1)
    await run_worker(settings)
    store = MetadataStore.from_url(settings.resolved_metadata_url)

    async def refusal(run_id: str) -> str:
        handle = await start_replay(client, settings, run_id)
        with pytest.raises(WorkflowFailureError) as refused:
            await handle.result()
        return _refusal(refused.value)

    assert await refusal("no-such-run") == (
        "no run 'no-such-run' is recorded (`sluice runs --status failed` lists the failed runs)"
    )
    failed = await failed_run(client, settings)

    # The connection's streams changed since the run: its staging no longer fits them.
    changed = connection(source).replace('"append"', '"append_dedup"')
    settings.connections_file.write_text(changed, encoding="utf-8")
    assert await refusal(failed) == (
        f"run {failed} of connection 'items': the connection's streams changed since it ran "
        "(items); start a normal sync: sluice sync items"
    )
    settings.connections_file.write_text(connection(source), encoding="utf-8")

    # Its staging was swept.
    with store.engine.begin() as db:
        db.exec_driver_sql(
            "UPDATE runs SET staging_swept_at = CURRENT_TIMESTAMP WHERE run_id = ?", (failed,)
        )
    assert await refusal(failed) == (
        f"run {failed} of connection 'items': its staging was already purged; start a normal "
        "sync: sluice sync items"
    )

    # A run that did not fail.
    (tmp_path / "reads").unlink()
    settings.connections_file.write_text(connection(counting_source(tmp_path)), encoding="utf-8")
    done = await (await start_sync(client, settings, SyncRequest(connection_id="items"))).result()
    assert await refusal(done.run_id) == (
        f"run {done.run_id} of connection 'items' succeeded: only a failed run is replayed"
    )
    assert store.lock_holder("items") is None


def slow_writes(dsn: str, seconds: float) -> None:
    """Every write to the stream's table takes `seconds` (a busy warehouse)."""
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute(
            "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN PERFORM pg_sleep({seconds}); RETURN NULL; END $$"
        )
        db.execute(
            "CREATE TRIGGER busy BEFORE INSERT ON items.items "
            "FOR EACH STATEMENT EXECUTE FUNCTION slow()"
        )


def done_commits(dsn: str, run_id: str) -> int:
    with psycopg.connect(dsn) as db:
        row = db.execute(
            "SELECT count(*) FROM items._sluice_commits WHERE starts_with(commit_id, %s)",
            [run_id + "/"],
        ).fetchone()
    return int(row[0]) if row else 0


async def test_a_worker_killed_in_the_middle_of_a_replay_leaves_every_row_exactly_once(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    client: Client,
    temporal_env: WorkflowEnvironment,
    warehouse: str,
) -> None:
    settings = make_settings(
        connection(counting_source(tmp_path, gated=True)),
        batch_records=10,
        sync_attempts=1,
        heartbeat_timeout_seconds=4,
    )
    env = {"REPLAY_DSN": warehouse, "SLUICE_BATCH_RECORDS": "10", "SLUICE_SYNC_ATTEMPTS": "1"}
    workers = [worker_process(settings, temporal_env, tmp_path / "worker-1.log", env)]
    try:
        handle = await start_sync(client, settings, SyncRequest(connection_id="items"))
        await wait_until(lambda: len(ids_or_none(warehouse)) == 10, timeout=120)
        refuse_writes(warehouse)
        (tmp_path / "go").touch()
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        failed = (await handle.describe()).run_id
        assert done_commits(warehouse, failed) == 1
        allow_writes(warehouse)
        slow_writes(warehouse, 2)

        replay = await start_replay(client, settings, failed)
        # Kill the worker once the replay committed one staged commit and is in the next.
        await wait_until(lambda: done_commits(warehouse, failed) == 2, timeout=120)
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait()
        workers.append(worker_process(settings, temporal_env, tmp_path / "worker-2.log", env))
        summary = await asyncio.wait_for(replay.result(), timeout=300)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                worker.wait(timeout=30)

    assert summary.status == "succeeded" and summary.replay_of == failed
    assert ids(warehouse) == list(range(1, LAST + 1))
    assert reads(tmp_path) == 2  # the failed run's read, and the sync that continued
    assert staged(settings, failed) == [] and staged(settings, summary.run_id) == []
