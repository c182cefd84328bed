"""Syncs whose staging (and retained logs) live in S3 or Azure Blob Storage, end to end through
the workflow, on moto's S3 server and Azurite; and a worker killed mid-purge, then resumed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import BlobServiceClient
from botocore.client import BaseClient
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from tests.s3_server import DUMMY_CREDENTIALS, REGION, bucket, s3_client, s3_endpoint, seed_objects
from tests.support.connections import items_connection, protocol_connector, wait_for_file
from tests.support.processes import wait_until, worker_process
from tests.support.relay import HoldingRelay, is_delete_objects
from tests.support.session import REPO
from workers.cli import start_sync
from workers.metadata import MetadataStore
from workers.settings import Settings
from workflows.models import SyncRequest, SyncSummary

pytestmark = pytest.mark.temporal
pytest_plugins = ["tests.azurite_server"]
__all__ = ["bucket", "s3_client", "s3_endpoint"]  # fixtures, imported to be found

READ = """
for i in range(1, 6):
    record(i, f"2024-03-0{i}T00:00:00Z")
state("2024-03-05T00:00:00Z")
"""


@pytest.fixture
def aws_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The standard AWS settings, as a deployment sets them, pointed at moto's server."""
    env = {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": DUMMY_CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": DUMMY_CREDENTIALS["aws_secret_access_key"],
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    yield env


def all_versions(client: BaseClient, bucket_name: str, prefix: str) -> list[str]:
    """The key of every version and delete marker under the prefix, every page of them."""
    keys = []
    for page in client.get_paginator("list_object_versions").paginate(
        Bucket=bucket_name, Prefix=prefix
    ):
        keys += [v["Key"] for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
    return keys


async def test_sync_with_staging_and_logs_on_s3(
    tmp_path: Path,
    aws_env: dict[str, str],
    bucket: Callable[[str], str],
    s3_client: BaseClient,
    make_settings: Callable[..., Settings],
    run_worker: Any,
    client: Client,
) -> None:
    name = bucket("versioned")
    connector = protocol_connector(tmp_path, "source-items", READ)
    body = items_connection(connector, tmp_path / "w.duckdb").replace(
        "[connections.source]", f'staging = "s3://{name}/staging/"\n[connections.source]'
    )
    settings = make_settings(
        body,
        log_store=f"s3://{name}/logs/",
        purge_allow=[f"s3://{name}/staging/"],
        batch_records=2,
    )
    await run_worker(settings)

    summary = await (
        await start_sync(client, settings, SyncRequest(connection_id="items"))
    ).result()

    assert summary.records == {"items": 5} and summary.verified_empty
    assert summary.objects_purged >= 3  # three batch files, every version of each
    assert all_versions(s3_client, name, "staging/") == []
    logs = all_versions(s3_client, name, "logs/")
    assert logs == [f"logs/items/{summary.run_id}/attempt-001.log"]
    head = s3_client.head_object(Bucket=name, Key=logs[0])
    assert head["ServerSideEncryption"] == "AES256"
    text = s3_client.get_object(Bucket=name, Key=logs[0])["Body"].read().decode()
    assert "2024-03-05T00:00:00Z" not in text and "sync committed" in text


async def test_sync_with_staging_on_azure(
    tmp_path: Path,
    azurite_connection_string: str,
    azure_service: BlobServiceClient,
    make_settings: Callable[..., Settings],
    run_worker: Any,
    client: Client,
) -> None:
    container = azure_service.create_container("staging-e2e")
    connector = protocol_connector(tmp_path, "source-items", READ)
    body = items_connection(connector, tmp_path / "w.duckdb").replace(
        "[connections.source]", 'staging = "az://staging-e2e/runs/"\n[connections.source]'
    )
    settings = make_settings(
        body, azure_storage_connection_string=azurite_connection_string, batch_records=2
    )
    await run_worker(settings)
    try:
        summary = await (
            await start_sync(client, settings, SyncRequest(connection_id="items"))
        ).result()
        assert summary.records == {"items": 5} and summary.verified_empty
        # Three batch files, and beside them the commit journal: its manifest and two commits.
        assert summary.objects_purged == 6
        assert list(container.list_blobs(name_starts_with="runs/", include=["snapshots"])) == []
    finally:
        container.delete_container()


async def test_worker_killed_mid_purge_resumes_and_finishes(
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
    release = tmp_path / "release"
    # The connector waits for the test to seed the run's staging before it reads.
    connector = protocol_connector(tmp_path, "source-items", wait_for_file(release) + READ)
    body = items_connection(connector, tmp_path / "w.duckdb").replace(
        "[connections.source]", f'staging = "s3://{name}/staging/"\n[connections.source]'
    )
    settings = make_settings(body, heartbeat_timeout_seconds=3)
    # The worker to be killed reaches S3 through a relay that lets its first DeleteObjects
    # through and holds the others: its purge provably stops at one delete call, whatever the
    # machine's speed, and nothing it sent after that reaches the bucket.
    with HoldingRelay(aws_env["AWS_ENDPOINT_URL"], hold=is_delete_objects, allow=1) as relay:
        worker_env = {**aws_env, "AWS_ENDPOINT_URL": relay.url}
        worker = worker_process(settings, temporal_env, tmp_path / "worker.log", worker_env)
        try:
            handle = await start_sync(client, settings, SyncRequest(connection_id="items"))
            run_id = handle.result_run_id
            # The run's staging, larger than one delete call, seeded before the sync reads.
            extra = seed_objects(
                name, (f"staging/items/{run_id}/extra/{i:06d}" for i in range(20_000))
            )
            release.touch()
            # The killed attempt reported its progress: the resumed one must count it.
            progress = await _wait_for_purge_progress(client, handle, timeout=120)
            await wait_until(lambda: relay.held > 0, timeout=120)
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait()
    remaining = len(all_versions(s3_client, name, f"staging/items/{run_id}/extra/"))
    assert 0 < remaining < extra  # the purge started and did not finish
    assert progress == extra - remaining  # its heartbeat counted what its one call deleted

    await run_worker(settings)
    summary: SyncSummary = await handle.result()

    assert summary.verified_empty
    assert all_versions(s3_client, name, "staging/") == []
    receipt = MetadataStore.from_url(settings.resolved_metadata_url).receipt(
        summary.receipt_id or ""
    )
    assert receipt is not None and receipt.objects_deleted_before_resume == progress
    # Counted from the interrupted attempt's last heartbeat, plus what the retry deleted.
    assert extra < summary.objects_purged <= extra + 10


async def _purge_progress(client: Client, handle: WorkflowHandle[Any, Any]) -> int:
    """Objects deleted so far, from the purge activity's last heartbeat (0 before it)."""
    description = await handle.describe()
    for pending in description.raw_description.pending_activities:
        if pending.activity_type.name == "purge_staging" and pending.heartbeat_details.payloads:
            # Heartbeat details are payloads like any other: encrypted with the session's key,
            # which the test's own client decodes.
            (deleted,) = await client.data_converter.decode(pending.heartbeat_details.payloads)
            return int(deleted)
    return 0


async def _wait_for_purge_progress(
    client: Client, handle: WorkflowHandle[Any, Any], timeout: float
) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (deleted := await _purge_progress(client, handle)) == 0:
        if loop.time() > deadline:
            raise AssertionError("the purge never reported progress")
        await asyncio.sleep(0.05)
    return deleted


def test_cli_purge_on_s3_reports_a_legal_hold_and_exits_non_zero(
    tmp_path: Path,
    aws_env: dict[str, str],
    bucket: Callable[[str], str],
    s3_client: BaseClient,
) -> None:
    name = bucket("object_lock")
    for key in ("runs/r1/a", "runs/r1/b", "runs/r1/held", "runs/r10/keep"):
        s3_client.put_object(Bucket=name, Key=key, Body=b"staged")
    s3_client.put_object_legal_hold(Bucket=name, Key="runs/r1/held", LegalHold={"Status": "ON"})
    env = {
        **os.environ,
        **aws_env,
        "SLUICE_STATE_DIR": str(tmp_path / "state"),
        "SLUICE_CONNECTIONS_FILE": str(tmp_path / "none.toml"),
        "SLUICE_PURGE_ALLOW": f"s3://{name}/runs/",
    }
    done = subprocess.run(
        [str(REPO / ".venv" / "bin" / "sluice"), "purge", f"s3://{name}/runs/r1/", "--yes"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    receipt = json.loads(done.stdout)
    assert not receipt["verified_empty"] and receipt["objects_failed"] == 1
    assert any("runs/r1/held" in f and "AccessDenied" in f for f in receipt["failures"])
    assert receipt["store_settings"]["object_lock"] == "enabled"
    assert sorted(all_versions(s3_client, name, "runs/")) == ["runs/r1/held", "runs/r10/keep"]
