"""The Airbyte backend through the real Temporal dev server, against the Airbyte API emulator
(whose every answer is validated against the real specs and parsed by the real SDK)."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.testing import WorkflowEnvironment

from tests.airbyte_emulator import (
    AirbyteEmulator,
    EmulatedStream,
    stream_state,
)
from tests.airbyte_emulator import airbyte_emulator_fixture as airbyte_emulator_fixture
from tests.support.processes import wait_until, worker_process
from workers.cli import start_replay, start_sync
from workers.settings import Settings
from workflows.models import ReplayRequest, SyncRequest, SyncSummary

pytestmark = pytest.mark.temporal

BEFORE = "2024-05-01T10:00:00.123456Z"
AFTER = "2024-06-02T11:30:00.654321Z"
CLIENT_SECRET = "cs-9f8e7d6c5b4a-very-secret"


def connection_file(airbyte_id: str, staging: str | None) -> str:
    staging_line = f'staging = "{staging}"' if staging else ""
    return f"""
        [[connections]]
        id = "shop"
        name = "Shop to Snowflake"
        backend = "airbyte"
        {staging_line}
        [connections.airbyte]
        connection_id = "{airbyte_id}"
    """


def airbyte_settings(
    make_settings: Callable[..., Settings],
    emu: AirbyteEmulator,
    airbyte_id: str,
    staging: str | None,
    **overrides: Any,
) -> Settings:
    client_id, secret = emu.require_client_credentials(client_secret=CLIENT_SECRET)
    return make_settings(
        connection_file(airbyte_id, staging),
        airbyte_api_url=emu.public_url,
        airbyte_token_url=emu.token_url,
        airbyte_client_id=client_id,
        airbyte_client_secret=secret,
        airbyte_poll_seconds=0.2,
        **overrides,
    )


def staged_files(root: Path) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    for name in ("part-0001.csv.gz", "part-0002.csv.gz"):
        (root / name).write_bytes(b"staged by the destination")
    return sorted(root.iterdir())


def add_shop(emu: AirbyteEmulator) -> str:
    connection = emu.add_connection(
        streams=[
            EmulatedStream(
                "orders",
                cursor_field=["updated_at"],
                primary_key=[["id"]],
                columns=["id", "updated_at", "total"],
            )
        ],
        state=stream_state({"orders": {"updated_at": BEFORE}}),
    )
    return connection.connection_id


async def test_happy_path_scrubs_logs_retains_metadata_and_purges_staging(
    tmp_path: Path,
    airbyte_emulator: AirbyteEmulator,
    make_settings: Callable[..., Settings],
    run_worker: Any,
    client: Client,
) -> None:
    emu = airbyte_emulator
    airbyte_id = add_shop(emu)
    staging = tmp_path / "destination-staging" / "shop"
    staged_files(staging)
    settings = airbyte_settings(make_settings, emu, airbyte_id, staging.as_uri() + "/")
    emu.script_job(
        polls_until_done=3,
        rows_synced=42,
        bytes_synced=4200,
        attempt_logs=[
            [
                f"source > Setting state of orders stream to {{'updated_at': '{BEFORE}'}}",
                f"destination > committed orders up to updated_at={AFTER}",
                f"replication > using client secret {CLIENT_SECRET}",
            ]
        ],
        log_format="structured",
        state_after=stream_state({"orders": {"updated_at": AFTER}}),
    )
    # Transient trouble on the way: retried, not failed.
    emu.fail_next(r"/api/public/v1/jobs/\d+", 503, count=2, method="GET")
    emu.fail_next(r"/api/public/v1/jobs/\d+", 429, retry_after=0.5, method="GET")
    sluice = await run_worker(settings)

    summary: SyncSummary = await (
        await start_sync(client, settings, SyncRequest(connection_id="shop"))
    ).result()

    assert len(emu.requests_to("POST", "/api/public/v1/jobs")) == 1
    assert summary.incremental and summary.verified_empty and summary.objects_purged == 2
    assert not staging.exists()
    log_text = Path(summary.log_uri.removeprefix("file://")).read_text()  # type: ignore[union-attr]
    assert BEFORE not in log_text and AFTER not in log_text and CLIENT_SECRET not in log_text
    assert "Setting state of orders stream to [REDACTED:state]" in log_text
    assert "[REDACTED:secret]" in log_text
    streams = sluice.metadata.stream_rows("shop")
    assert [(s["name"], s["cursor_field"], s["primary_key"]) for s in streams] == [
        ("orders", ["updated_at"], [["id"]])
    ]
    assert set(streams[0]["columns"]) == {"id", "updated_at", "total"}
    assert BEFORE not in sluice.metadata.dump_text()


async def test_409_attaches_to_the_running_job(
    airbyte_emulator: AirbyteEmulator,
    make_settings: Callable[..., Settings],
    run_worker: Any,
    client: Client,
) -> None:
    emu = airbyte_emulator
    airbyte_id = add_shop(emu)
    running = emu.conflict_on_create(airbyte_id, polls_until_done=2)
    settings = airbyte_settings(make_settings, emu, airbyte_id, None)
    await run_worker(settings)

    summary = await (await start_sync(client, settings, SyncRequest(connection_id="shop"))).result()

    assert summary.status == "succeeded"
    assert [job.job_id for job in emu.jobs] == [running.job_id]  # exactly one job
    assert len(emu.requests_to("POST", "/api/public/v1/jobs")) == 1  # the 409


async def test_failed_job_fails_the_run_and_keeps_staging(
    tmp_path: Path,
    airbyte_emulator: AirbyteEmulator,
    make_settings: Callable[..., Settings],
    run_worker: Any,
    client: Client,
) -> None:
    emu = airbyte_emulator
    airbyte_id = add_shop(emu)
    staging = tmp_path / "destination-staging" / "shop"
    files = staged_files(staging)
    settings = airbyte_settings(make_settings, emu, airbyte_id, staging.as_uri() + "/")
    emu.script_job(outcome="failed", failure_summary=f"cursor {BEFORE} rejected by destination")
    sluice = await run_worker(settings)

    handle = await start_sync(client, settings, SyncRequest(connection_id="shop"))
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    message = str(failed.value.cause)
    assert "failed" in message and "rejected by destination" in message
    assert BEFORE not in message  # the failure summary is scrubbed too
    assert sorted(staging.iterdir()) == files
    run = sluice.metadata.get_run(handle.result_run_id or "")
    assert run is not None and run["status"] == "failed"


async def test_a_failed_job_is_replayed_as_a_new_job_that_purges_the_staging(
    tmp_path: Path,
    airbyte_emulator: AirbyteEmulator,
    make_settings: Callable[..., Settings],
    run_worker: Any,
    client: Client,
) -> None:
    emu = airbyte_emulator
    airbyte_id = add_shop(emu)
    staging = tmp_path / "destination-staging" / "shop"
    staged_files(staging)
    settings = airbyte_settings(make_settings, emu, airbyte_id, staging.as_uri() + "/")
    emu.script_job(outcome="failed", failure_summary="destination unreachable")
    sluice = await run_worker(settings)
    handle = await start_sync(client, settings, SyncRequest(connection_id="shop"))
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    failed = handle.result_run_id or ""

    emu.script_job(rows_synced=7, state_after=stream_state({"orders": {"updated_at": AFTER}}))
    request = ReplayRequest.model_validate({"run_id": failed})
    summary = await (await start_replay(client, settings, request)).result()

    # Airbyte resumes from its own committed state: the replay is a new job.
    assert [job.status for job in emu.jobs] == ["failed", "succeeded"]
    assert summary.status == "succeeded" and summary.kind == "replay"
    assert summary.replay_of == failed and summary.verified_empty
    assert [p for p in staging.rglob("*") if p.is_file()] == []  # the staging path, purged
    assert sluice.metadata.get_run(failed)["replayed_by"] == summary.run_id
    assert sluice.metadata.get_run(summary.run_id)["replay_of"] == failed


async def test_unknown_airbyte_connection_fails_at_once(
    airbyte_emulator: AirbyteEmulator,
    make_settings: Callable[..., Settings],
    run_worker: Any,
    client: Client,
) -> None:
    settings = airbyte_settings(
        make_settings, airbyte_emulator, "6c1d2f3e-0000-4000-8000-000000000000", None
    )
    sluice = await run_worker(settings)
    handle = await start_sync(client, settings, SyncRequest(connection_id="shop"))
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    error = failed.value.cause
    assert isinstance(error, ApplicationError) and error.type == "SyncFailed"
    assert "'shop'" in error.message and "404" in error.message
    # Not retried (one request), and the failed run is recorded.
    assert len(airbyte_emulator.requests_to("POST", "/api/public/v1/jobs")) == 1
    run = sluice.metadata.get_run(handle.result_run_id or "")
    assert run is not None and run["status"] == "failed" and "404" in run["error"]


async def test_cancelling_the_workflow_cancels_the_airbyte_job(
    airbyte_emulator: AirbyteEmulator,
    make_settings: Callable[..., Settings],
    run_worker: Any,
    client: Client,
) -> None:
    emu = airbyte_emulator
    airbyte_id = add_shop(emu)
    emu.script_job(polls_until_done=10_000)  # runs until cancelled
    settings = airbyte_settings(make_settings, emu, airbyte_id, None)
    sluice = await run_worker(settings)
    handle = await start_sync(client, settings, SyncRequest(connection_id="shop"))
    await wait_until(lambda: len(emu.requests_to("GET", r"/api/public/v1/jobs/\d+")) >= 2)

    await handle.cancel()
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    job = emu.jobs[0]
    assert len(emu.requests_to("DELETE", rf"/api/public/v1/jobs/{job.job_id}")) == 1
    assert job.status == "cancelled"
    assert isinstance(failed.value.cause, CancelledError)
    assert (await handle.describe()).status == WorkflowExecutionStatus.CANCELED
    run = sluice.metadata.get_run(handle.result_run_id or "")
    assert run is not None and run["status"] == "cancelled"
    assert sluice.metadata.lock_holder("shop") is None


async def test_worker_killed_while_waiting_never_starts_a_second_job(
    tmp_path: Path,
    airbyte_emulator: AirbyteEmulator,
    make_settings: Callable[..., Settings],
    run_worker: Any,
    client: Client,
    temporal_env: WorkflowEnvironment,
) -> None:
    emu = airbyte_emulator
    airbyte_id = add_shop(emu)
    emu.script_job(polls_until_done=10_000)
    settings = airbyte_settings(make_settings, emu, airbyte_id, None, heartbeat_timeout_seconds=3)
    worker = worker_process(
        settings,
        temporal_env,
        tmp_path / "worker.log",
        {
            "SLUICE_AIRBYTE_API_URL": settings.airbyte_api_url or "",
            "SLUICE_AIRBYTE_TOKEN_URL": settings.airbyte_token_url or "",
            "SLUICE_AIRBYTE_CLIENT_ID": settings.airbyte_client_id or "",
            "SLUICE_AIRBYTE_CLIENT_SECRET": settings.airbyte_client_secret or "",
            "SLUICE_AIRBYTE_POLL_SECONDS": str(settings.airbyte_poll_seconds),
        },
    )
    try:
        handle: WorkflowHandle[Any, SyncSummary] = await start_sync(
            client, settings, SyncRequest(connection_id="shop")
        )
        await wait_until(lambda: len(emu.requests_to("GET", r"/api/public/v1/jobs/\d+")) >= 3)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    polls_before = len(emu.requests_to("GET", r"/api/public/v1/jobs/\d+"))

    await run_worker(settings)  # a new worker picks the wait up after the heartbeat timeout
    await wait_until(
        lambda: len(emu.requests_to("GET", r"/api/public/v1/jobs/\d+")) > polls_before + 2,
        timeout=60,
    )
    emu.finish_job(emu.jobs[0].job_id)
    summary = await handle.result()

    assert summary.status == "succeeded"
    assert len(emu.jobs) == 1
    assert len(emu.requests_to("POST", "/api/public/v1/jobs")) == 1


async def test_config_api_unavailable_keeps_the_job_and_retains_no_unscrubbed_log(
    airbyte_emulator: AirbyteEmulator,
    make_settings: Callable[..., Settings],
    run_worker: Any,
    client: Client,
) -> None:
    emu = airbyte_emulator
    airbyte_id = add_shop(emu)
    emu.script_job(polls_until_done=2, attempt_logs=[[f"cursor now {AFTER}"]])
    # No state: the logs could not be scrubbed of cursor values, so they are not kept.
    emu.fail_next(r"/api/v1/state/get", 404, count=10)
    settings = airbyte_settings(make_settings, emu, airbyte_id, None)
    sluice = await run_worker(settings)

    summary = await (await start_sync(client, settings, SyncRequest(connection_id="shop"))).result()

    assert summary.status == "succeeded" and summary.log_uri is None
    assert not emu.requests_to("DELETE", r"/api/public/v1/jobs/\d+")
    assert not list((sluice.settings.state_path / "logs").rglob("*.log"))


async def test_a_404_on_the_source_lookup_after_success_is_a_warning_not_a_failure(
    tmp_path: Path,
    airbyte_emulator: AirbyteEmulator,
    make_settings: Callable[..., Settings],
    run_worker: Any,
    client: Client,
) -> None:
    emu = airbyte_emulator
    airbyte_id = add_shop(emu)
    staging = tmp_path / "destination-staging" / "shop"
    staged_files(staging)
    settings = airbyte_settings(make_settings, emu, airbyte_id, staging.as_uri() + "/")
    emu.script_job(polls_until_done=1, rows_synced=5)
    # The job succeeds; then the source is gone (deleted in Airbyte meanwhile).
    emu.fail_next(r"/api/public/v1/sources/.+", 404, count=100, method="GET")
    sluice = await run_worker(settings)

    handle = await start_sync(client, settings, SyncRequest(connection_id="shop"))
    summary: SyncSummary = await handle.result()

    assert summary.status == "succeeded"
    assert len(summary.warnings) == 1 and "metadata not retained" in summary.warnings[0]
    assert "404" in summary.warnings[0] or "not found" in summary.warnings[0].lower()
    assert summary.verified_empty and not staging.exists()  # the commit was not undone
    run = sluice.metadata.get_run(summary.run_id)
    assert run is not None and run["status"] == "succeeded"
    assert sluice.metadata.lock_holder("shop") is None
    assert len(emu.requests_to("POST", "/api/public/v1/jobs")) == 1
