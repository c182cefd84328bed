"""The metadata store keeps receipts and runs, and a rewrite replaces rather than duplicates."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from purge.receipts import PurgeReceipt
from workers.metadata import MetadataStore


def receipt(objects: int) -> PurgeReceipt:
    return PurgeReceipt(
        receipt_id="purge-run-1",
        target="file:///x/staging/c/run-1/",
        started_at=datetime(2026, 1, 1, tzinfo=UTC),
        finished_at=datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC),
        objects_deleted=objects,
        manifest_sha256="0" * 64,
        verified_empty=True,
    )


POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A database of its own on the machine's PostgreSQL, dropped afterwards."""
    name = f"sluice_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(f"{POSTGRES}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as db:
        db.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{POSTGRES}/{name}"
    finally:
        with admin.connect() as db:
            db.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def metadata_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty database of each kind the metadata store supports: every test below runs
    on both."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'm.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def store(metadata_url: str) -> MetadataStore:
    return MetadataStore.from_url(metadata_url)


def test_receipt_round_trips_and_rewrites_in_place(store: MetadataStore) -> None:
    store.record_receipt(receipt(5), "run-1")
    store.record_receipt(receipt(7), "run-1")
    again = store.receipt("purge-run-1")
    assert again == receipt(7)
    assert store.dump_text().count("purge-run-1") == 1
    assert store.receipt("purge-run-2") is None


def test_connection_metadata_and_runs(store: MetadataStore) -> None:
    stream = {
        "name": "users",
        "namespace": None,
        "sync_mode": "incremental",
        "destination_mode": "append_dedup",
        "cursor_field": ["updated_at"],
        "primary_key": [["id"]],
        "columns": ["id", "updated_at"],
    }
    for _ in range(2):  # a retried activity writes the same rows again
        store.retain_connection(
            connection_id="c1",
            name="C one",
            backend="local",
            source_type="source-faker",
            destination_type="duckdb",
            schedule="0 * * * *",
            stream_rows=[stream],
        )
    assert [r["cursor_field"] for r in store.stream_rows("c1")] == [["updated_at"]]
    started = datetime(2026, 1, 1, tzinfo=UTC)
    store.record_run(
        {
            "run_id": "run-1",
            "connection_id": "c1",
            "workflow_id": "sync-c1",
            "status": "succeeded",
            "started_at": started,
            "finished_at": started,
            "duration_seconds": 0.0,
            "incremental": True,
            "records": 3,
            "records_by_stream": {"users": 3},
            "bytes_staged": 10,
            "redactions": {"cursor": 1},
            "receipt_id": None,
            "error": None,
        }
    )
    run = store.get_run("run-1")
    assert run is not None and run["records_by_stream"] == {"users": 3} and run["incremental"]


def test_a_store_from_an_older_version_gains_the_new_columns(metadata_url: str) -> None:
    engine = create_engine(metadata_url)
    with engine.begin() as db:
        db.execute(text("CREATE TABLE runs (run_id VARCHAR(64) PRIMARY KEY, status VARCHAR(32))"))
        db.execute(text("INSERT INTO runs VALUES ('old-run', 'succeeded')"))
    engine.dispose()
    store = MetadataStore.from_url(metadata_url)
    run = store.get_run("old-run")
    assert run is not None and run["status"] == "succeeded" and run["staging_target"] is None
