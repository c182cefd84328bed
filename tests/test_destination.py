"""How a connection's destination is chosen (open_destination, the connections file's
``[connections.destination]``), and what only the DuckDB destination does. What every
destination does is in tests/test_destination_contract.py, run on each."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import get_args

import duckdb
import pytest

from workers.connections import (
    Connection,
    ConnectionsFile,
    ConnectionsFileError,
    DestinationConfig,
    SourceConfig,
    StreamConfig,
)
from workers.destinations import DESTINATION_TYPES, open_destination
from workers.destinations.base import RecordsRefusedError, StreamTable, UnknownDestinationError
from workers.destinations.duckdb import DuckDBDestination, duckdb_type


def test_duckdb_refuses_records_it_cannot_read_with_its_conversion_error(tmp_path: Path) -> None:
    stream = StreamTable(
        name="people",
        namespace=None,
        columns={"id": duckdb_type({"type": "integer"})},
        mode="append",
        replace=False,
    )
    refused = tmp_path / "refused.gz"
    with gzip.open(refused, "wb") as out:  # staged by the fast path: emitted_at is checked later
        out.write(b'{"type":"RECORD","record":{"stream":"people","data":{"id":1},')
        out.write(b'"emitted_at":"soon"}}\n')
    with DuckDBDestination(tmp_path / "w.duckdb", "c") as destination:
        destination.prepare([stream])
        with pytest.raises(RecordsRefusedError) as failed:
            destination.commit({"people": [refused]}, {"people": stream}, [], "r1")
        assert str(failed.value) == "DuckDB refused a batch (ConversionException)"
        assert isinstance(failed.value.cause, duckdb.ConversionException)


def connection(destination: DestinationConfig) -> Connection:
    return Connection(
        id="shop",
        source=SourceConfig(command=["source-x"]),
        destination=destination,
        streams=[StreamConfig(name="people")],
    )


def test_a_duckdb_connection_opens_the_duckdb_destination(tmp_path: Path) -> None:
    shop = connection(DestinationConfig(type="duckdb", path=tmp_path / "d" / "w.duckdb"))
    with open_destination(shop) as destination:
        assert isinstance(destination, DuckDBDestination)
        assert destination.name == "DuckDB" and destination.committed_state() == []
    assert (tmp_path / "d" / "w.duckdb").exists()


def test_an_unknown_destination_type_is_refused_naming_the_connection(tmp_path: Path) -> None:
    # The connections file refuses it first; a connection built otherwise is refused here.
    other = DestinationConfig.model_construct(type="snowflake", path=tmp_path / "w")
    with pytest.raises(UnknownDestinationError) as refused:
        open_destination(
            connection(DestinationConfig(path=tmp_path / "w")).model_copy(
                update={"destination": other}
            )
        )
    assert str(refused.value) == (
        "connection 'shop': destination.type 'snowflake' is not a destination Sluice has "
        "(it has: duckdb, postgres)"
    )
    assert refused.value.kind == "InvalidConnection" and not refused.value.retryable


def test_the_connections_file_accepts_exactly_the_registered_destination_types() -> None:
    accepted = get_args(DestinationConfig.model_fields["type"].annotation)
    assert set(accepted) == set(DESTINATION_TYPES)


CONNECTION = """
[[connections]]
id = "shop"
[connections.source]
command = ["source-x"]
[connections.destination]
{destination}
[[connections.streams]]
name = "people"
"""


@pytest.mark.parametrize(
    ("destination", "problem"),
    [
        ('type = "duckdb"', "path: a duckdb destination needs it"),
        ('type = "postgres"', "dsn_env: a postgres destination needs it"),
        ('type = "postgres"\ndsn_env = "X"\npath = "w.duckdb"', "path: not a setting of a "),
        ('path = "w.duckdb"\nschema = "s"', "schema: not a setting of a duckdb destination"),
        ('path = "w.duckdb"\ndsn_env = "X"', "dsn_env: not a setting of a duckdb destination"),
        ('type = "postgres"\ndsn_env = ""', "dsn_env: String should have at least 1 character"),
    ],
)
def test_each_destination_type_takes_its_own_settings(
    tmp_path: Path, destination: str, problem: str
) -> None:
    path = tmp_path / "connections.toml"
    path.write_text(CONNECTION.format(destination=destination), encoding="utf-8")
    with pytest.raises(ConnectionsFileError) as refused:
        ConnectionsFile.load(path)
    assert "connection 'shop': destination" in str(refused.value)
    assert problem in str(refused.value)


def test_a_postgres_destination_in_the_connections_file(tmp_path: Path) -> None:
    path = tmp_path / "connections.toml"
    path.write_text(
        CONNECTION.format(destination='type = "postgres"\ndsn_env = "SHOP_DSN"\nschema = "raw"'),
        encoding="utf-8",
    )
    shop = ConnectionsFile.load(path).get("shop")
    assert isinstance(shop, Connection)
    assert shop.destination == DestinationConfig(type="postgres", dsn_env="SHOP_DSN", schema="raw")
    assert shop.destination.db_schema == "raw" and shop.destination.path is None
