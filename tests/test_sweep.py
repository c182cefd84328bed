"""The retention sweep, run by its Temporal schedule: old retained logs and old failed runs'
staging are purged with receipts; recent ones stay."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from temporalio.client import Client, WorkflowFailureError

from tests.support.connections import items_connection, protocol_connector
from tests.support.processes import wait_until
from workers.cli import start_sync
from workers.connections import ConnectionsFile
from workers.metadata import retained_logs, runs
from workers.schedules import SWEEP_SCHEDULE_ID, apply_schedules
from workers.settings import Settings
from workflows.models import SweepRequest, SweepSummary, SyncRequest
from workflows.sweep import RetentionSweepWorkflow

pytestmark = pytest.mark.temporal
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)


async def test_schedule_sweeps_old_logs_and_failed_staging(
    tmp_path: Path, make_settings: Callable[..., Settings], run_worker: Any, client: Client
) -> None:
    connector = protocol_connector(
        tmp_path,
        "source-flaky",
        """
        record(1, "2024-01-01T00:00:00Z")
        if "fail" in open(sys.argv[sys.argv.index("--config") + 1]).read():
            sys.exit(1)
        state("2024-01-01T00:00:00Z")
        """,
    )
    settings = make_settings(items_connection(connector, tmp_path / "w.duckdb"), sync_attempts=1)
    sluice = await run_worker(settings)

    ok = await (await start_sync(client, settings, SyncRequest(connection_id="items"))).result()
    # The same connection failing: its staging is kept for replay.
    settings.connections_file.write_text(
        settings.connections_file.read_text().replace(
            "[connections.source]", '[connections.source]\nconfig = { mode = "fail" }'
        )
    )
    with pytest.raises(WorkflowFailureError):
        await (await start_sync(client, settings, SyncRequest(connection_id="items"))).result()
    failed_run = next(r for r in (sluice.staging_root / "items").iterdir())
    assert any(failed_run.rglob("*.jsonl.gz"))
    logs_root = sluice.settings.state_path / "logs" / "items"
    assert {p.name for p in logs_root.iterdir()} == {ok.run_id, failed_run.name}

    # Age the successful run's log and the failed run past their retention.
    metadata = sluice.metadata
    with metadata.engine.begin() as db:
        db.execute(
            update(retained_logs)
            .where(retained_logs.c.run_id == ok.run_id)
            .values(retained_at=LONG_AGO)
        )
        db.execute(
            update(runs).where(runs.c.run_id == failed_run.name).values(finished_at=LONG_AGO)
        )

    assert SWEEP_SCHEDULE_ID in await apply_schedules(
        client, settings, ConnectionsFile.load(settings.connections_file)
    )
    schedule = client.get_schedule_handle(SWEEP_SCHEDULE_ID)
    await schedule.trigger()
    summary = await _latest_sweep_result(client, schedule)

    assert summary.logs.runs == 1 and summary.logs.objects_deleted == 1
    assert summary.failed_staging.runs == 1 and summary.failed_staging.objects_deleted > 0
    assert {p.name for p in logs_root.iterdir()} == {failed_run.name}
    assert not failed_run.exists()
    for receipt_id in summary.logs.receipt_ids + summary.failed_staging.receipt_ids:
        receipt = metadata.get_receipt(receipt_id)
        assert receipt is not None and receipt["verified_empty"]
    # The failed run's staging key went with its staging; the expired log's purge is no
    # staging purge and destroys nothing.
    (staging_receipt_id,) = summary.failed_staging.receipt_ids
    assert metadata.get_receipt(staging_receipt_id)["data_key_destroyed"] is True  # type: ignore[index]
    assert metadata.existing_staging_key(failed_run.name) is None
    for receipt_id in summary.logs.receipt_ids:
        assert metadata.get_receipt(receipt_id)["data_key_destroyed"] is None  # type: ignore[index]
    assert metadata.retained_logs_of(ok.run_id) == []
    assert len(metadata.retained_logs_of(failed_run.name)) == 1
    await schedule.delete()


async def _latest_sweep_result(client: Client, schedule: Any) -> SweepSummary:
    for _ in range(120):
        description = await schedule.describe()
        recent = description.info.recent_actions
        if recent:
            workflow_id = recent[-1].action.workflow_id
            handle = client.get_workflow_handle(workflow_id, result_type=SweepSummary)
            return await handle.result()
        await asyncio.sleep(0.5)
    raise AssertionError("the schedule never started the sweep")


async def test_sweep_finishes_a_terminated_run_and_sweeps_committed_staging_at_once(
    tmp_path: Path, make_settings: Callable[..., Settings], run_worker: Any, client: Client
) -> None:
    connector = protocol_connector(
        tmp_path,
        "source-endless",
        f"""
        import time
        record(1, "2024-01-01T00:00:00Z")
        state("2024-01-01T00:00:00Z")
        record(2, "2024-01-02T00:00:00Z")
        open({str(tmp_path / "reading")!r}, "w").close()
        time.sleep(120)
        """,
    )
    settings = make_settings(
        items_connection(connector, tmp_path / "w.duckdb"),
        heartbeat_timeout_seconds=2,
        batch_records=1,  # every record its own staged batch
    )
    sluice = await run_worker(settings)
    handle = await start_sync(client, settings, SyncRequest(connection_id="items"))
    await wait_until(lambda: (tmp_path / "reading").exists())
    await handle.terminate("operator")
    run_id = handle.result_run_id or ""
    metadata = sluice.metadata
    assert metadata.lock_holder("items") is not None  # nothing in the workflow ran after that

    sweep = await client.execute_workflow(
        RetentionSweepWorkflow.run,
        SweepRequest(),
        id=f"sweep-{run_id}",
        task_queue=settings.task_queue,
    )

    assert sweep.failed_staging.runs_finished == [run_id]
    assert metadata.lock_holder("items") is None
    run = metadata.get_run(run_id)
    assert run is not None and run["status"] == "failed" and "terminated" in run["error"]
    staged = sluice.staging_root / "items" / run_id
    assert run["staging_target"] == staged.as_uri() + "/"
    assert any(staged.rglob("*.jsonl.gz"))  # not committed: kept for replay until its TTL
    # A committed run's kept staging (its purge failed) has nothing to replay: swept at once.
    with metadata.engine.begin() as db:
        db.execute(update(runs).where(runs.c.run_id == run_id).values(committed=True))
    sweep = await client.execute_workflow(
        RetentionSweepWorkflow.run,
        SweepRequest(),
        id=f"sweep-again-{run_id}",
        task_queue=settings.task_queue,
    )
    assert sweep.failed_staging.runs == 1 and not staged.exists()
    assert metadata.get_run(run_id)["staging_swept_at"] is not None
