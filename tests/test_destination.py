"""The DuckDB destination: append, overwrite and append_dedup as Airbyte users expect them, typed
columns, and state committed with the records it covers; and how a connection's destination is
chosen (open_destination)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, get_args

import duckdb
import pytest

from workers.connections import Connection, DestinationConfig, SourceConfig, StreamConfig
from workers.destinations import DESTINATION_TYPES, open_destination
from workers.destinations.base import RecordsRefusedError, StreamTable, UnknownDestinationError
from workers.destinations.duckdb import DuckDBDestination, duckdb_type

SCHEMA = {
    "id": {"type": "integer"},
    "name": {"type": ["null", "string"]},
    "score": {"type": "number"},
    "updated_at": {"type": "string", "format": "date-time"},
    "tags": {"type": "array"},
    "address": {"type": "object"},
}
COLUMNS = {name: duckdb_type(spec) for name, spec in SCHEMA.items()}


def batch(path: Path, records: list[dict[str, Any]], emitted_at: int = 1_700_000_000_000) -> Path:
    """A staged batch file: raw RECORD lines, as the local backend stages them."""
    with gzip.open(path, "wt") as out:
        for data in records:
            message = {"stream": "people", "data": data, "emitted_at": emitted_at}
            out.write(json.dumps({"type": "RECORD", "record": message}) + "\n")
    return path


def person(id_: int, updated_at: str, **extra: Any) -> dict[str, Any]:
    return {"id": id_, "name": f"p{id_}", "score": 1.5, "updated_at": updated_at, **extra}


def table(mode: str, replace: bool = False, run: str = "r1") -> StreamTable:
    return StreamTable(
        name="people",
        namespace=None,
        columns=COLUMNS,
        mode=mode,
        replace=replace,
        primary_key=["id"] if mode == "append_dedup" else [],
        cursor="updated_at",
        run_suffix=run,
    )


def rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(path), read_only=True) as db:
        return db.execute(sql).fetchall()


@pytest.fixture
def warehouse(tmp_path: Path) -> Path:
    return tmp_path / "w.duckdb"


def test_types_and_meta_columns(tmp_path: Path, warehouse: Path) -> None:
    stream = table("append")
    with DuckDBDestination(warehouse, "c") as destination:
        destination.prepare([stream])
        files = [
            batch(
                tmp_path / "1.gz",
                [person(1, "2024-01-01T00:00:00Z", tags=["a"], address={"city": "Oslo"})],
            )
        ]
        assert destination.commit({"people": files}, {"people": stream}, [], "r1") == 1
    (row,) = rows(
        warehouse,
        "SELECT id, score, updated_at, tags, address, _airbyte_raw_id, "
        "_airbyte_extracted_at FROM people",
    )
    assert row[0] == 1 and row[1] == 1.5
    assert row[2].isoformat().startswith("2024-01-01T00:00:00")
    assert json.loads(row[3]) == ["a"] and json.loads(row[4]) == {"city": "Oslo"}
    assert len(row[5]) == 36 and row[6].year == 2023


def test_a_value_of_the_wrong_type_becomes_null_not_a_failed_load(
    tmp_path: Path, warehouse: Path
) -> None:
    stream = table("append")
    with DuckDBDestination(warehouse, "c") as destination:
        destination.prepare([stream])
        files = [
            batch(
                tmp_path / "1.gz",
                [person(1, "2024-01-01T00:00:00Z", score="n/a"), person(2, "2024-01-02T00:00:00Z")],
            )
        ]
        assert destination.commit({"people": files}, {"people": stream}, [], "r1") == 2
    assert rows(warehouse, "SELECT id, score FROM people ORDER BY id") == [(1, None), (2, 1.5)]


def test_append_keeps_every_record(tmp_path: Path, warehouse: Path) -> None:
    stream = table("append")
    with DuckDBDestination(warehouse, "c") as destination:
        destination.prepare([stream])
        for n in range(2):
            files = [batch(tmp_path / f"{n}.gz", [person(1, f"2024-01-0{n + 1}T00:00:00Z")])]
            destination.commit({"people": files}, {"people": stream}, [], "r1")
    assert rows(warehouse, "SELECT count(*) FROM people") == [(2,)]


def test_append_dedup_keeps_the_latest_cursor_per_key(tmp_path: Path, warehouse: Path) -> None:
    stream = table("append_dedup")
    with DuckDBDestination(warehouse, "c") as destination:
        destination.prepare([stream])
        first = batch(
            tmp_path / "1.gz",
            [person(1, "2024-01-05T00:00:00Z", name="newest"), person(2, "2024-01-01T00:00:00Z")],
        )
        destination.commit({"people": [first]}, {"people": stream}, [], "r1")
        # A later batch with an older cursor for id 1 must not win; id 2 gets a newer one.
        second = batch(
            tmp_path / "2.gz",
            [
                person(1, "2024-01-03T00:00:00Z", name="stale"),
                person(2, "2024-01-09T00:00:00Z", name="updated"),
                person(3, "2024-01-01T00:00:00Z"),
            ],
        )
        destination.commit({"people": [second]}, {"people": stream}, [], "r1")
    assert rows(warehouse, "SELECT id, name FROM people ORDER BY id") == [
        (1, "newest"),
        (2, "updated"),
        (3, "p3"),
    ]


def test_overwrite_replaces_only_when_the_run_completes(tmp_path: Path, warehouse: Path) -> None:
    with DuckDBDestination(warehouse, "c") as destination:
        old = table("overwrite", replace=True, run="r1")
        destination.prepare([old])
        files = [batch(tmp_path / "1.gz", [person(i, "2024-01-01T00:00:00Z") for i in range(3)])]
        destination.commit({"people": files}, {"people": old}, [], "r1", replace=[old])

        new = table("overwrite", replace=True, run="r2")
        destination.prepare([new])
        files = [batch(tmp_path / "2.gz", [person(9, "2024-02-01T00:00:00Z")])]
        destination.commit({"people": files}, {"people": new}, [], "r2")
        # Mid-run: readers still see the previous data.
        assert [r[0] for r in destination._db.execute("SELECT id FROM people").fetchall()] == [
            0,
            1,
            2,
        ]
        destination.commit({}, {"people": new}, [], "r2", replace=[new])
    assert rows(warehouse, "SELECT id FROM people") == [(9,)]


def test_state_is_committed_with_its_records_or_not_at_all(tmp_path: Path, warehouse: Path) -> None:
    stream = table("append")
    state = {
        "type": "STREAM",
        "stream": {
            "stream_descriptor": {"name": "people"},
            "stream_state": {"updated_at": "2024-01-01"},
        },
    }
    broken = tmp_path / "broken.gz"
    broken.write_bytes(b"not gzip at all")
    with DuckDBDestination(warehouse, "c") as destination:
        destination.prepare([stream])
        good = batch(tmp_path / "1.gz", [person(1, "2024-01-01T00:00:00Z")])
        with pytest.raises(duckdb.Error):
            destination.commit({"people": [good, broken]}, {"people": stream}, [state], "r1")
        assert destination.committed_state() == []
        destination.commit({"people": [good]}, {"people": stream}, [state], "r1")
        assert destination.committed_state() == [state]
    assert rows(warehouse, "SELECT count(*) FROM people") == [(1,)]


def test_records_duckdb_cannot_read_are_refused_and_nothing_is_kept(
    tmp_path: Path, warehouse: Path
) -> None:
    stream = table("append")
    state = {"type": "LEGACY", "data": {"people": {"updated_at": "2024-01-01"}}}
    refused = tmp_path / "refused.gz"
    with gzip.open(refused, "wb") as out:  # staged by the fast path: emitted_at is checked later
        out.write(b'{"type":"RECORD","record":{"stream":"people","data":{"id":1},')
        out.write(b'"emitted_at":"soon"}}\n')
    with DuckDBDestination(warehouse, "c") as destination:
        destination.prepare([stream])
        good = batch(tmp_path / "1.gz", [person(1, "2024-01-01T00:00:00Z")])
        with pytest.raises(RecordsRefusedError) as failed:
            destination.commit({"people": [good, refused]}, {"people": stream}, [state], "r1")
        assert str(failed.value) == "DuckDB refused a batch (ConversionException)"
        assert isinstance(failed.value.cause, duckdb.ConversionException)
        assert destination.committed_state() == []
    assert rows(warehouse, "SELECT count(*) FROM people") == [(0,)]


def connection(tmp_path: Path, destination: DestinationConfig) -> Connection:
    return Connection(
        id="shop",
        source=SourceConfig(command=["source-x"]),
        destination=destination,
        streams=[StreamConfig(name="people")],
    )


def test_a_duckdb_connection_opens_the_duckdb_destination(tmp_path: Path) -> None:
    shop = connection(tmp_path, DestinationConfig(type="duckdb", path=tmp_path / "d" / "w.duckdb"))
    with open_destination(shop) as destination:
        assert isinstance(destination, DuckDBDestination)
        assert destination.name == "DuckDB" and destination.committed_state() == []
    assert (tmp_path / "d" / "w.duckdb").exists()


def test_an_unknown_destination_type_is_refused_naming_the_connection(tmp_path: Path) -> None:
    # The connections file refuses it first; a connection built otherwise is refused here.
    other = DestinationConfig.model_construct(type="postgres", path=tmp_path / "w")
    with pytest.raises(UnknownDestinationError) as refused:
        open_destination(
            connection(tmp_path, DestinationConfig(path=tmp_path / "w")).model_copy(
                update={"destination": other}
            )
        )
    assert str(refused.value) == (
        "connection 'shop': destination.type 'postgres' is not a destination Sluice has "
        "(it has: duckdb)"
    )
    assert refused.value.kind == "InvalidConnection" and not refused.value.retryable


def test_the_connections_file_accepts_exactly_the_registered_destination_types() -> None:
    accepted = get_args(DestinationConfig.model_fields["type"].annotation)
    assert set(accepted) == set(DESTINATION_TYPES)
