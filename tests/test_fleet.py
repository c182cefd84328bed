"""A fleet: three worker processes that share nothing but Temporal, S3 and PostgreSQL.

Each worker is a host of its own: its own state directory and connectors directory, nothing on a
shared disk (the connector's program is installed software, the same on every host, as it is in
one container image). Staging and retained logs are on S3 (moto's server), the metadata store
and the destination on PostgreSQL. Nine connections are started at once and one worker is
SIGKILLed while it syncs: every run still ends succeeded, exactly once, with nothing left behind.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from botocore.client import BaseClient
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from tests.s3_server import DUMMY_CREDENTIALS, REGION, bucket, s3_client, s3_endpoint
from tests.support.postgres import scratch_database
from tests.support.processes import wait_until, worker_process
from workers.cli import start_sync
from workers.metadata import MetadataStore
from workers.settings import Settings
from workflows.models import SyncRequest, SyncSummary

pytestmark = pytest.mark.temporal
__all__ = ["bucket", "s3_client", "s3_endpoint"]  # fixtures

CONNECTIONS = 9
WORKERS = 3


@pytest.fixture
def fleet_database() -> Iterator[str]:
    """A database of this test's own on the machine's PostgreSQL: metadata and destination."""
    with scratch_database("sluice_fleet") as name:
        yield name


def fleet_connections(faker: str, counts: list[int]) -> str:
    blocks = []
    for index, count in enumerate(counts):
        blocks.append(
            f"""
            [[connections]]
            id = "shop{index}"
            [connections.source]
            command = ["{faker}"]
            config = {{ count = {count}, seed = {index + 1}, records_per_slice = 50 }}
            [connections.destination]
            type = "postgres"
            dsn_env = "FLEET_DSN"
            [[connections.streams]]
            name = "users"
            sync_mode = "incremental"
            destination_mode = "append_dedup"
            cursor_field = "updated_at"
            primary_key = "id"
            [[connections.streams]]
            name = "products"
            sync_mode = "full_refresh"
            destination_mode = "overwrite"
            """
        )
    return "".join(blocks)


def count_rows(dsn: str, schema: str, table: str) -> int:
    with psycopg.connect(dsn) as db:
        row = db.execute(f'SELECT count(*) FROM "{schema}"."{table}"').fetchone()
    assert row is not None
    return int(row[0])


def distinct_ids(dsn: str, schema: str) -> int:
    with psycopg.connect(dsn) as db:
        row = db.execute(f'SELECT count(DISTINCT id) FROM "{schema}"."users"').fetchone()
    assert row is not None
    return int(row[0])


def s3_leftovers(client: BaseClient, bucket_name: str, prefix: str) -> int:
    left = 0
    for page in client.get_paginator("list_object_versions").paginate(
        Bucket=bucket_name, Prefix=prefix
    ):
        left += len(page.get("Versions", [])) + len(page.get("DeleteMarkers", []))
    return left


async def test_a_fleet_of_three_workers_survives_losing_one(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    client: Client,
    temporal_env: WorkflowEnvironment,
    faker_command: str,
    s3_endpoint: str,
    s3_client: BaseClient,
    bucket: Callable[..., str],
    fleet_database: str,
) -> None:
    name = bucket("versioned")
    dsn = f"postgresql://postgres@127.0.0.1:5432/{fleet_database}"
    counts = [120 + 40 * i for i in range(CONNECTIONS)]
    settings = make_settings(
        fleet_connections(faker_command, counts),
        heartbeat_timeout_seconds=4,
        batch_records=50,
    )
    env = {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_REGION": REGION,
        "AWS_ACCESS_KEY_ID": DUMMY_CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": DUMMY_CREDENTIALS["aws_secret_access_key"],
        "SLUICE_STAGING_URI": f"s3://{name}/staging/",
        "SLUICE_LOG_STORE": f"s3://{name}/logs/",
        "SLUICE_METADATA_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{fleet_database}",
        "SLUICE_MAX_CONCURRENT_ACTIVITIES": "4",
        "FLEET_DSN": dsn,
    }
    workers: list[subprocess.Popen[bytes]] = []
    try:
        for number in range(WORKERS):
            host = tmp_path / f"host{number}"
            host.mkdir()
            # A host of its own: state and connectors directories nobody else sees.
            host_settings = Settings(
                state_dir=host / "state",
                connectors_dir_override=host / "connectors",
                connections_file=settings.connections_file,
                task_queue=settings.task_queue,
                payload_keys=settings.payload_keys,
                heartbeat_timeout_seconds=settings.heartbeat_timeout_seconds,
            )
            workers.append(
                worker_process(host_settings, temporal_env, host / "worker.log", extra_env=env)
            )
        handles: list[WorkflowHandle[Any, SyncSummary]] = await asyncio.gather(
            *(
                start_sync(client, settings, SyncRequest(connection_id=f"shop{index}"))
                for index in range(CONNECTIONS)
            )
        )

        # Kill the first worker once it is running a sync (a connector of its own is alive).
        victim = workers[0]
        await wait_until(lambda: _has_child(victim.pid), timeout=120)
        victim.send_signal(signal.SIGKILL)
        victim.wait()

        summaries = await asyncio.wait_for(
            asyncio.gather(*(handle.result() for handle in handles)), timeout=600
        )
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()

    metadata = MetadataStore.from_url(env["SLUICE_METADATA_URL"])
    for index, (count, summary) in enumerate(zip(counts, summaries, strict=True)):
        schema = f"shop{index}"
        assert summary.status == "succeeded"
        assert summary.verified_empty and summary.receipt_id == f"purge-{summary.run_id}"
        # Every user exactly once (append_dedup), however often a batch was retried.
        assert count_rows(dsn, schema, "users") == count == distinct_ids(dsn, schema)
        assert count_rows(dsn, schema, "products") == summary.records["products"] > 0
        run = metadata.get_run(summary.run_id)
        assert run is not None and run["status"] == "succeeded"
        receipt = metadata.get_receipt(summary.receipt_id or "")
        assert receipt is not None and receipt["verified_empty"]
        assert s3_leftovers(s3_client, name, f"staging/{schema}/{summary.run_id}/") == 0
        assert metadata.lock_holder(schema) is None
    # One run per connection: none ran twice, none was left locked.
    assert len({s.run_id for s in summaries}) == CONNECTIONS
    # The killed worker's sync was taken over by another worker: a second attempt ran.
    attempts = [
        event.activity_task_started_event_attributes.attempt
        for handle in handles
        for event in (await handle.fetch_history()).events
        if event.HasField("activity_task_started_event_attributes")
    ]
    assert max(attempts) >= 2
    assert s3_leftovers(s3_client, name, "staging/") == 0


def _has_child(pid: int) -> bool:
    """Whether the process has a child: a worker's connector subprocess."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[1]) == pid:  # the parent pid, after the state field
            return True
    return False
