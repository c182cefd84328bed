"""Replaying a failed run vs a fresh sync of the same data (issue: on-call replays).

One run, one Temporal dev server, one in-process worker, one PostgreSQL database, the bench's
source-faker config (count 20,000: 40,100 records over users, purchases, products):

1. **fresh sync**: connection ``fresh`` synced from scratch (the connector reads everything);
2. **failed run**: connection ``replayed`` synced while its warehouse refuses to commit (a
   trigger on its state table), so that the run stages all 40,100 records and their states,
   then fails at its commit;
3. **replay**: the trigger dropped, ``ReplayFailedSyncWorkflow`` commits the staged records
   without the connector, then syncs on from the committed state (the connector starts once more
   and reads nothing new), and purges both stagings.

Both the fresh sync and the replay are timed from start to result (wall) through their
workflows; the worker runs with batches of 1,000,000 records, so that the failed run stages
everything before its one commit (the fresh sync runs with the same setting). Prints the
table and the ratio; the expectation is that the replay takes less than half the fresh sync.

    .venv/bin/python bench/bench_replay.py [--count 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import psycopg  # noqa: E402
from bench_sync import (  # noqa: E402
    FAKER_CONFIG,
    bench_database,
    find_faker,
    temporal_dev_server,
)
from temporalio.client import Client, WorkflowFailureError  # noqa: E402

from workers.cli import start_replay, start_sync  # noqa: E402
from workers.client import ensure_search_attributes  # noqa: E402
from workers.codec import data_converter, new_key_spec, parse_keys  # noqa: E402
from workers.settings import Settings  # noqa: E402
from workers.worker import build_worker  # noqa: E402
from workflows.models import ReplayRequest, SyncRequest, SyncSummary  # noqa: E402

ADMIN_DSN = os.environ.get("SLUICE_BENCH_PG_DSN", "host=127.0.0.1 port=5432 user=postgres")
DSN_ENV = "BENCH_REPLAY_DSN"


def connections(faker: str, count: int) -> str:
    config = ", ".join(
        f"{key} = {json.dumps(value)}" for key, value in {**FAKER_CONFIG, "count": count}.items()
    )
    body = ""
    for connection_id in ("fresh", "replayed", "replayed-only"):
        body += f"""
[[connections]]
id = "{connection_id}"
[connections.source]
command = ["{faker}"]
config = {{ {config} }}
[connections.destination]
type = "postgres"
dsn_env = "{DSN_ENV}"
"""
        for stream in ("users", "purchases", "products"):
            body += f"""
[[connections.streams]]
name = "{stream}"
sync_mode = "incremental"
destination_mode = "append_dedup"
"""
    return body


def refuse_commits(dsn: str, schema: str) -> None:
    """The connection's warehouse refuses every state write: each commit fails, after the run
    staged what it read."""
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute(f'CREATE SCHEMA "{schema}"')
        db.execute(
            f'CREATE TABLE "{schema}"._sluice_state (connection_id text NOT NULL, '
            "state_key text NOT NULL, state json NOT NULL, run_id text, "
            "committed_at timestamptz NOT NULL DEFAULT now(), "
            "PRIMARY KEY (connection_id, state_key))"
        )
        db.execute(
            "CREATE OR REPLACE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'the warehouse is read-only for maintenance'; END $$"
        )
        db.execute(
            f'CREATE TRIGGER maintenance BEFORE INSERT OR UPDATE ON "{schema}"._sluice_state '
            "FOR EACH STATEMENT EXECUTE FUNCTION refuse()"
        )


def allow_commits(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute(f'DROP TRIGGER maintenance ON "{schema}"._sluice_state')


def rows(dsn: str, schema: str) -> dict[str, int]:
    with psycopg.connect(dsn) as db:
        return {
            stream: int(db.execute(f'SELECT count(*) FROM "{schema}"."{stream}"').fetchone()[0])  # type: ignore[index]
            for stream in ("users", "purchases", "products")
        }


async def bench(count: int, workdir: Path) -> int:
    faker = find_faker()
    with bench_database(ADMIN_DSN) as dsn, temporal_dev_server(workdir) as server:
        os.environ[DSN_ENV] = dsn
        refuse_commits(dsn, "replayed")
        refuse_commits(dsn, "replayed-only")
        (workdir / "connections.toml").write_text(connections(faker, count), encoding="utf-8")
        keys = new_key_spec("bench")
        settings = Settings(
            state_dir=workdir / "state",
            connections_file=workdir / "connections.toml",
            task_queue=f"bench-replay-{uuid.uuid4().hex[:6]}",
            payload_keys=keys,
            batch_records=1_000_000,
            sync_attempts=1,
        )
        client = await Client.connect(
            server.address, data_converter=data_converter(parse_keys(keys))
        )
        await ensure_search_attributes(client, "default")
        async with build_worker(client, settings):
            # A warm-up run, so that neither measured run pays for the first discover.
            await (await start_sync(client, settings, SyncRequest(connection_id="fresh"))).result()
            with psycopg.connect(dsn, autocommit=True) as db:
                db.execute('DROP SCHEMA "fresh" CASCADE')

            started = time.monotonic()
            handle = await start_sync(client, settings, SyncRequest(connection_id="fresh"))
            fresh = await handle.result()
            fresh_seconds = time.monotonic() - started

            replay, replay_seconds = await failed_then_replayed(
                client, settings, dsn, "replayed", continue_=True
            )
            only, only_seconds = await failed_then_replayed(
                client, settings, dsn, "replayed-only", continue_=False
            )

        fresh_rows = rows(dsn, "fresh")
        replayed_rows, only_rows = rows(dsn, "replayed"), rows(dsn, "replayed-only")
    records = sum(fresh.records.values())
    ratio = replay_seconds / fresh_seconds
    print()
    print(
        f"source-faker count={count}: {records:,} records; PostgreSQL destination; "
        f"{os.cpu_count()} cores, shared with whatever else runs"
    )
    print()
    print("| run | wall (s) | records/s | connector reads |")
    print("| --- | ---: | ---: | --- |")
    print(f"| fresh sync | {fresh_seconds:.2f} | {records / fresh_seconds:,.0f} | everything |")
    assert replay.replay is not None
    print(
        f"| replay of the failed run | {replay_seconds:.2f} | {records / replay_seconds:,.0f} | "
        f"nothing for the {sum(replay.replay.records.values()):,} replayed records; one "
        "continuing read from the committed state |"
    )
    print(
        f"| replay, `--no-continue` | {only_seconds:.2f} | {records / only_seconds:,.0f} | none |"
    )
    print()
    print(f"replay / fresh sync: {ratio:.2f} (expectation: below 0.50)")
    print(f"replay without the continuing read / fresh sync: {only_seconds / fresh_seconds:.2f}")
    same = fresh_rows == replayed_rows == only_rows
    print(
        f"rows per stream: fresh {fresh_rows}, replayed {replayed_rows}, replayed without "
        f"continuing {only_rows} ({'the same' if same else 'DIFFERENT'})"
    )
    print(
        f"replay: {replay.replay.commits} staged commit(s) committed, "
        f"{replay.replay.dropped_batches} batch file(s) dropped; receipts "
        f"{replay.receipt_id} and {replay.replayed_receipt_id}"
    )
    assert only.replay is not None
    print(
        f"replay without continuing: {only.replay.commits} staged commit(s) committed, "
        f"{sum(only.replay.records.values()):,} records, receipts {only.receipt_id} and "
        f"{only.replayed_receipt_id}"
    )
    return 0 if same else 1


async def failed_then_replayed(
    client: Client, settings: Settings, dsn: str, connection_id: str, *, continue_: bool
) -> tuple[SyncSummary, float]:
    """A run of the connection that fails at its commit (untimed), then its replay (timed)."""
    handle = await start_sync(client, settings, SyncRequest(connection_id=connection_id))
    try:
        await handle.result()
        raise SystemExit("the run meant to fail succeeded")
    except WorkflowFailureError:
        pass
    failed = (await handle.describe()).run_id
    allow_commits(dsn, connection_id)
    started = time.monotonic()
    replay = await start_replay(
        client, settings, ReplayRequest.model_validate({"run_id": failed, "continue": continue_})
    )
    summary = await replay.result()
    return summary, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=FAKER_CONFIG["count"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sluice-bench-replay-") as workdir:
        return asyncio.run(bench(args.count, Path(workdir)))


if __name__ == "__main__":
    sys.exit(main())
