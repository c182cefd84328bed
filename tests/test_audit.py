"""`sluice audit` over a real run: a clean run audits clean; a cursor or record value planted in
each place Sluice retains things (a metadata-store row, a retained log, a Temporal history, a
staging object left under a finished run's prefix) is found there, named by its place and never
printed; a store that cannot be reached makes the audit say so and exit non-zero."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import insert, update
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError
from temporalio.testing import WorkflowEnvironment

from tests.support.connections import items_connection, protocol_connector
from tests.support.session import REPO
from workers.audit import AuditReport, HitKind, Place, run_audit
from workers.cli import start_sync
from workers.metadata import MetadataStore, retained_logs, runs
from workers.settings import Settings
from workflows.models import SyncRequest
from workflows.sync import SyncConnectionWorkflow

pytestmark = pytest.mark.temporal

SLUICE = str(REPO / ".venv" / "bin" / "sluice")
CURSOR = "2031-05-17T08:09:10Z"
RECORDS = [f"2031-05-1{i}T07:00:0{i}Z" for i in range(1, 4)]
READ = f"""
for i, updated_at in enumerate({RECORDS!r}, start=1):
    record(i, updated_at)
state({CURSOR!r})
emit({{"type": "LOG", "log": {{"level": "INFO", "message": "cursor now at {CURSOR}"}}}})
"""


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


async def sluice_audit(settings: Settings, temporal: WorkflowEnvironment, *args: str) -> Done:
    """`sluice audit` in a subprocess, configured like `settings`, against the suite's Temporal."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLUICE_", "AWS_"))}
    env.update(
        SLUICE_STATE_DIR=str(settings.state_path),
        SLUICE_CONNECTIONS_FILE=str(settings.connections_file),
        SLUICE_CONNECTORS_DIR=str(settings.connectors_dir),
        SLUICE_TASK_QUEUE=settings.task_queue,
        SLUICE_PAYLOAD_KEYS=settings.payload_keys or "",
        SLUICE_TEMPORAL_ADDRESS=temporal.client.service_client.config.target_host,
    )
    env.update({k: v for k, v in os.environ.items() if k.startswith("AWS_")})
    process = await asyncio.create_subprocess_exec(
        SLUICE,
        "audit",
        *args,
        env=env,
        cwd=settings.state_path.parent,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 180)
    assert process.returncode is not None
    return Done(process.returncode, stdout.decode(), stderr.decode())


def spellings(value: str) -> set[str]:
    return {value, json.dumps(value)[1:-1], quote(value, safe=""), repr(value)[1:-1]}


def assert_never_printed(text: str, *values: str) -> None:
    for value in values:
        for form in spellings(value):
            assert form not in text, f"the audit printed a value ({form!r})"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def hits(report: AuditReport, place: Place) -> list[dict[str, Any]]:
    return [h.as_json() for h in report.hits if h.place is place]


async def test_a_clean_run_audits_clean_and_each_planted_value_is_found_in_its_place(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    run_worker: Any,
    client: Client,
    temporal_env: WorkflowEnvironment,
) -> None:
    connection_id = f"audit-{uuid.uuid4().hex[:8]}"
    settings = make_settings(
        items_connection(
            protocol_connector(tmp_path, "source-audit", READ),
            tmp_path / "w.duckdb",
            connection_id=connection_id,
        )
    )
    await run_worker(settings)
    summary = await (
        await start_sync(client, settings, SyncRequest(connection_id=connection_id))
    ).result()
    assert summary.status == "succeeded" and summary.log_uri
    run_id = summary.run_id

    # A clean run audits clean: every place scanned, nothing found.
    clean = await run_audit(settings, client=client)
    assert clean.outcome == "clean", clean.as_json()
    looked = clean.connections[connection_id]
    assert looked.cursor_values == 1  # the committed state's one leaf
    assert looked.record_values == len(RECORDS) and looked.rows_sampled == len(RECORDS)
    assert clean.scanned["metadata store rows"] > 0
    assert clean.scanned["retained logs"] == 1 and clean.scanned["retained log lines"] > 0
    assert clean.scanned["Temporal histories"] == 1
    assert clean.scanned["staging roots"] == 1
    done = await sluice_audit(settings, temporal_env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "result: clean" in done.stdout

    metadata = MetadataStore.from_url(settings.resolved_metadata_url)

    # A metadata-store row: the run's warnings carry the cursor value (as a Python repr would).
    with metadata.engine.begin() as db:
        db.execute(
            update(runs)
            .where(runs.c.run_id == run_id)
            .values(warnings=[f"cursor was {CURSOR!r}"], error=f"bad row {RECORDS[1]}")
        )
    found = await run_audit(settings, client=client)
    assert found.outcome == "found"
    located = {(h["kind"], h["location"]["column"]) for h in hits(found, Place.METADATA)}
    assert located == {(HitKind.CURSOR_VALUE, "warnings"), (HitKind.RECORD_VALUE, "error")}
    assert all(h["location"]["table"] == "runs" for h in hits(found, Place.METADATA))
    assert all(h["location"]["row"] == f"run_id={run_id}" for h in hits(found, Place.METADATA))
    assert {h.place for h in found.hits} == {Place.METADATA}
    with metadata.engine.begin() as db:
        db.execute(update(runs).where(runs.c.run_id == run_id).values(warnings=[], error=None))

    # A retained log: a line with the cursor URL-encoded, another with it in epoch milliseconds.
    log = Path(summary.log_uri.removeprefix("file://"))
    scrubbed = log.read_text()
    assert "[REDACTED:cursor]" in scrubbed
    lines = scrubbed.count("\n")
    millis = int(datetime.fromisoformat(CURSOR).timestamp() * 1000)
    log.write_text(
        scrubbed + f"GET /items?since={quote(CURSOR, safe='')}\nnext page after {millis}\n"
    )
    found = await run_audit(settings, client=client)
    (hit,) = hits(found, Place.LOGS)
    assert hit["kind"] == HitKind.CURSOR_VALUE and hit["connection"] == connection_id
    assert hit["location"] == {"log": summary.log_uri, "lines": [lines + 1, lines + 2]}
    log.write_text(scrubbed)

    # A staging object left under the finished run's prefix, and one under no run at all.
    staging = settings.state_path / "staging" / connection_id
    (staging / run_id).mkdir(parents=True)
    (staging / run_id / "batch-0001.jsonl.gz").write_bytes(b"not even gzip")
    (staging / "stray").mkdir()
    (staging / "stray" / "orphan" / "file").parent.mkdir()
    (staging / "stray" / "orphan" / "file").write_bytes(b"?")
    found = await run_audit(settings, client=client)
    located = {
        (h["location"]["prefix"], h["location"]["objects"], h["location"]["run"])
        for h in hits(found, Place.STAGING)
    }
    root = settings.resolved_staging_uri
    assert located == {
        (f"{root}{connection_id}/{run_id}/", 1, f"{run_id} (succeeded)"),
        (f"{root}{connection_id}/stray/", 1, "not a run Sluice knows"),
    }
    assert all(h["kind"] == HitKind.LEFTOVER_STAGING for h in hits(found, Place.STAGING))
    one = await run_audit(settings, client=client, connection_id=connection_id)
    assert hits(one, Place.STAGING) == hits(found, Place.STAGING)

    # Everything at once, through the CLI: exit 1, each place named, no value printed.
    with metadata.engine.begin() as db:
        db.execute(update(runs).where(runs.c.run_id == run_id).values(error=f"at {CURSOR}"))
    done = await sluice_audit(settings, temporal_env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FOUND (3):" in done.stdout
    assert f"cursor value of {connection_id!r} in metadata store: table runs" in done.stdout
    assert f"leftover staging of {connection_id!r} in staging: prefix {root}" in done.stdout
    assert_never_printed(done.stdout + done.stderr, CURSOR, *RECORDS)
    as_json = await sluice_audit(settings, temporal_env, "--json")
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert report["outcome"] == "found" and len(report["hits"]) == 3
    assert_never_printed(as_json.stdout, CURSOR, *RECORDS)
    with metadata.engine.begin() as db:
        db.execute(update(runs).where(runs.c.run_id == run_id).values(error=None))
    for leftover in (staging / run_id / "batch-0001.jsonl.gz", staging / "stray/orphan/file"):
        leftover.unlink()

    # A Temporal history: a run started for a "connection" named like the cursor value. Its
    # input carries the value, and so does its failure (the unknown connection, named): both
    # encrypted, so only decoding with the codec finds them.
    handle = await client.start_workflow(
        SyncConnectionWorkflow.run,
        SyncRequest(connection_id=CURSOR),
        id=f"audit-{uuid.uuid4().hex[:8]}",  # not sync-<connection>: ids are plain text
        task_queue=settings.task_queue,
    )
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    history = (await handle.fetch_history()).to_json()
    assert CURSOR not in history  # encrypted: a plain search sees nothing
    found = await run_audit(settings, client=client)
    in_history = hits(found, Place.TEMPORAL)
    assert {h["kind"] for h in in_history} == {HitKind.CURSOR_VALUE}
    assert {h["location"]["workflow"] for h in in_history} == {handle.id}
    events = {h["location"]["event"] for h in in_history}
    kinds = {e.event_id: e.event_type for e in (await handle.fetch_history()).events}
    assert kinds[1] == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED and 1 in events  # input
    failures = {
        EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED,
    }
    assert {kinds[e] for e in events} & failures  # a failure's encoded message
    assert_never_printed(json.dumps(found.as_json()), CURSOR, *RECORDS)


async def test_a_store_that_cannot_be_reached_is_said_and_the_audit_is_not_clean(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    run_worker: Any,
    client: Client,
    temporal_env: WorkflowEnvironment,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connection_id = f"audit-{uuid.uuid4().hex[:8]}"
    settings = make_settings(
        items_connection(
            protocol_connector(tmp_path, "source-audit", READ),
            tmp_path / "w.duckdb",
            connection_id=connection_id,
        )
    )
    await run_worker(settings)
    summary = await (
        await start_sync(client, settings, SyncRequest(connection_id=connection_id))
    ).result()
    # A log retained on an S3 endpoint nobody listens on.
    for name, value in {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed_port()}",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "audit",
        "AWS_SECRET_ACCESS_KEY": "audit",
        "AWS_MAX_ATTEMPTS": "1",
    }.items():
        monkeypatch.setenv(name, value)
    metadata = MetadataStore.from_url(settings.resolved_metadata_url)
    uri = f"s3://nobody-listens/logs/{connection_id}/{summary.run_id}/attempt-002.log"
    with metadata.engine.begin() as db:
        db.execute(
            insert(retained_logs).values(
                run_id=summary.run_id,
                attempt=2,
                connection_id=connection_id,
                uri=uri,
                lines=1,
                redactions={},
                retained_at=datetime.now(UTC),
            )
        )

    report = await run_audit(settings, client=client)
    assert report.outcome == "incomplete" and not report.hits
    (unscanned,) = report.unscanned
    assert unscanned.place is Place.LOGS and "s3://nobody-listens/logs/" in unscanned.what
    assert report.scanned["retained logs"] == 1  # the local one still was

    done = await sluice_audit(settings, temporal_env)
    assert done.returncode == 5, done.stdout + done.stderr
    assert "NOT SCANNED (1):" in done.stdout and "s3://nobody-listens/logs/" in done.stdout
    assert "result: INCOMPLETE" in done.stdout and "result: clean" not in done.stdout


def faker_connections(command: str, warehouse: Path, connection_id: str) -> str:
    return f"""
        [[connections]]
        id = "{connection_id}"
        [connections.source]
        command = ["{command}"]
        config = {{ count = 200, seed = 11, records_per_slice = 50, parallelism = 1 }}
        [connections.destination]
        path = "{warehouse}"
        [[connections.streams]]
        name = "users"
        sync_mode = "incremental"
        destination_mode = "append_dedup"
        [[connections.streams]]
        name = "purchases"
        sync_mode = "incremental"
        destination_mode = "append"
        [[connections.streams]]
        name = "products"
        sync_mode = "full_refresh"
        destination_mode = "overwrite"
    """


@pytest.mark.connector
async def test_source_faker_synced_twice_audits_clean_and_a_leaked_record_value_is_found(
    tmp_path: Path,
    faker_command: str,
    make_settings: Callable[..., Settings],
    run_worker: Any,
    client: Client,
) -> None:
    connection_id = f"faker-{uuid.uuid4().hex[:8]}"
    warehouse = tmp_path / "warehouse.duckdb"
    settings = make_settings(faker_connections(faker_command, warehouse, connection_id))
    await run_worker(settings)
    summaries = []
    for _ in range(2):  # a full sync, then an incremental one from the committed state
        handle = await start_sync(client, settings, SyncRequest(connection_id=connection_id))
        summaries.append(await handle.result())
    assert all(s.status == "succeeded" for s in summaries)

    clean = await run_audit(settings, client=client, connection_id=connection_id)
    looked = clean.connections[connection_id]
    assert clean.outcome == "clean", clean.as_json()
    assert looked.cursor_values >= 2 and looked.record_values > 20
    assert looked.rows_sampled == 60  # 20 rows of each of the three streams
    assert clean.scanned["retained logs"] == 2 and clean.scanned["Temporal histories"] == 2

    # A record value read back from the warehouse, printed into a retained log by a careless
    # connector (and so not scrubbed: the scrubber only knows state and secrets).
    import duckdb

    with duckdb.connect(str(warehouse), read_only=True) as db:
        row = db.execute("SELECT email FROM main.users ORDER BY id LIMIT 1").fetchone()
    assert row is not None
    email = str(row[0])
    log = Path((summaries[1].log_uri or "").removeprefix("file://"))
    log.write_text(log.read_text() + json.dumps({"message": f"bad address {email}"}) + "\n")
    found = await run_audit(settings, client=client, connection_id=connection_id)
    (hit,) = found.hits
    assert hit.place is Place.LOGS and hit.kind is HitKind.RECORD_VALUE
    assert hit.location["log"] == summaries[1].log_uri
    assert_never_printed(json.dumps(found.as_json()), email)


async def test_a_destination_that_will_not_open_is_said_and_the_audit_is_not_clean(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    client: Client,
    temporal_env: WorkflowEnvironment,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connection_id = f"audit-{uuid.uuid4().hex[:8]}"
    variable = f"AUDIT_DSN_{uuid.uuid4().hex[:8].upper()}"
    settings = make_settings(
        f"""
        [[connections]]
        id = "{connection_id}"
        [connections.source]
        command = ["true"]
        [connections.destination]
        type = "postgres"
        dsn_env = "{variable}"
        [[connections.streams]]
        name = "items"
        sync_mode = "incremental"
        destination_mode = "append"
        """
    )
    monkeypatch.setenv(variable, f"host=127.0.0.1 port={closed_port()} user=nobody dbname=x")

    report = await run_audit(settings, client=client)

    assert report.outcome == "incomplete" and not report.hits
    (unscanned,) = report.unscanned
    assert unscanned.place is Place.DESTINATION and repr(connection_id) in unscanned.what
    assert "Unreachable" in unscanned.reason  # the destination's own error, by kind


async def test_a_postgres_destination_is_read_back_and_its_values_found(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    run_worker: Any,
    client: Client,
    postgres_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connection_id = f"audit-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("AUDIT_PG_DSN", postgres_dsn)
    settings = make_settings(
        f"""
        [[connections]]
        id = "{connection_id}"
        [connections.source]
        command = ["{protocol_connector(tmp_path, "source-audit", READ)}"]
        [connections.destination]
        type = "postgres"
        dsn_env = "AUDIT_PG_DSN"
        [[connections.streams]]
        name = "items"
        sync_mode = "incremental"
        destination_mode = "append"
        """
    )
    await run_worker(settings)
    summary = await (
        await start_sync(client, settings, SyncRequest(connection_id=connection_id))
    ).result()
    assert summary.status == "succeeded"

    clean = await run_audit(settings, client=client, connection_id=connection_id)
    assert clean.outcome == "clean", clean.as_json()
    looked = clean.connections[connection_id]
    assert looked.cursor_values == 1 and looked.record_values == len(RECORDS)

    metadata = MetadataStore.from_url(settings.resolved_metadata_url)
    with metadata.engine.begin() as db:
        db.execute(
            update(runs).where(runs.c.run_id == summary.run_id).values(error=f"row {RECORDS[2]}")
        )
    found = await run_audit(settings, client=client, connection_id=connection_id)
    assert [(h.place, h.kind) for h in found.hits] == [(Place.METADATA, HitKind.RECORD_VALUE)]


async def test_a_failed_runs_staging_kept_for_replay_is_listed_not_found_until_its_ttl(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    run_worker: Any,
    client: Client,
) -> None:
    """A failed run keeps its (sealed) staging for a replay: the audit lists it as kept and
    stays clean; once the run is older than the failed-staging TTL (the sweep is late), the
    same staging is a finding."""
    connection_id = f"audit-{uuid.uuid4().hex[:8]}"
    failing = READ + '\nprint("upstream API went away", file=sys.stderr, flush=True)\nsys.exit(3)'
    settings = make_settings(
        items_connection(
            protocol_connector(tmp_path, "source-failing", failing),
            tmp_path / "w.duckdb",
            connection_id=connection_id,
        ),
        sync_attempts=1,
        batch_records=1000,
    )
    await run_worker(settings)
    handle = await start_sync(client, settings, SyncRequest(connection_id=connection_id))
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    run_id = (await handle.describe()).run_id

    kept = await run_audit(settings, client=client, connection_id=connection_id)
    assert kept.outcome == "clean", [h.describe() for h in kept.hits]
    assert [h.location["run"] for h in kept.kept] == [f"{run_id} (failed)"]

    metadata = MetadataStore.from_url(settings.resolved_metadata_url)
    with metadata.engine.begin() as db:
        db.execute(
            update(runs)
            .where(runs.c.run_id == run_id)
            .values(finished_at=datetime(2020, 1, 1, tzinfo=UTC))
        )
    late = await run_audit(settings, client=client, connection_id=connection_id)
    assert late.outcome == "found" and late.kept == []
    assert [h["location"]["run"] for h in hits(late, Place.STAGING)] == [f"{run_id} (failed)"]
