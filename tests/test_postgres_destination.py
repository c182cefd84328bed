"""What only the PostgreSQL destination does: its naming rules, its connection settings and the
password the scrubber must know, each failure it names (unreachable, login refused, a missing
privilege, a table changed by hand), a worker killed between COPY and COMMIT, and one real sync
through the workflow into PostgreSQL. What every destination does is in
tests/test_destination_contract.py."""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from temporalio.client import Client

from purge.scrub import LogScrubber, RedactionKind
from tests.conftest import REPO, protocol_connector
from tests.support.postgres import POSTGRES
from workers.cli import start_sync
from workers.connections import (
    Connection,
    DestinationConfig,
    MissingSecretError,
    SourceConfig,
    StreamConfig,
    secret_values,
)
from workers.destinations import open_destination
from workers.destinations.base import StreamTable
from workers.destinations.postgres import (
    DestinationConfigError,
    DestinationLoginError,
    DestinationPermissionError,
    DestinationTableChangedError,
    DestinationUnreachableError,
    PostgresDestination,
    pg_name,
    postgres_type,
)
from workers.settings import Settings
from workflows.models import SyncRequest

SCHEMA = {"id": {"type": "integer"}, "name": {"type": "string"}}


def records(path: Path, rows: list[dict[str, Any]], stream: str = "people") -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as out:
        for data in rows:
            message = {"stream": stream, "data": data, "emitted_at": 1_700_000_000_000}
            out.write(json.dumps({"type": "RECORD", "record": message}) + "\n")
    return path


def people(
    destination: PostgresDestination, schema: dict[str, Any] = SCHEMA, **changes: Any
) -> StreamTable:
    fields: dict[str, Any] = {
        "name": "people",
        "namespace": None,
        "columns": destination.columns(schema),
        "mode": "append",
        "replace": False,
        "run_suffix": "r1",
        **changes,
    }
    return StreamTable(**fields)


STATE = {
    "type": "STREAM",
    "stream": {"stream_descriptor": {"name": "people"}, "stream_state": {"updated_at": "x"}},
}


@pytest.fixture
def connection_id() -> str:
    return f"pg-{uuid.uuid4().hex[:8]}"


def admin(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True)


def scalar(dsn: str, query: str) -> Any:
    with admin(dsn) as db:
        row = db.execute(query).fetchone()
        return row[0] if row else None


# -- names and types ----------------------------------------------------------------------------


def test_names_that_fit_are_kept_as_they_are() -> None:
    for name in ["users", "select", "Id", 'a "quoted" name', "per%cent", "x" * 63, "é" * 31]:
        assert pg_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["x" * 64, "é" * 32, "a" * 53 + "€" * 5, "", "with\x00nul", "long " * 40],
    ids=["64 bytes", "multibyte", "cut inside a character", "empty", "NUL", "very long"],
)
def test_names_postgres_cannot_hold_are_cut_and_hashed(name: str) -> None:
    held = pg_name(name)
    assert 0 < len(held.encode()) <= 63 and "\x00" not in held
    head, digest = held.rsplit("_", 1)
    assert len(digest) == 8 and int(digest, 16) >= 0
    assert name.replace("\x00", "").startswith(head)
    assert pg_name(name) == held  # deterministic
    assert pg_name(name + "!") != held  # a name that differs anywhere stays apart


def test_types_follow_the_json_schema_as_duckdb_types_do() -> None:
    assert postgres_type({"type": "integer"}) == "bigint"
    assert postgres_type({"type": ["null", "number"]}) == "double precision"
    assert postgres_type({"type": "boolean"}) == "boolean"
    assert postgres_type({"type": "string"}) == "text"
    assert postgres_type({"type": "string", "format": "date"}) == "date"
    assert postgres_type({"type": "string", "format": "date-time"}) == "timestamp with time zone"
    assert (
        postgres_type(
            {"type": "string", "format": "date-time", "airbyte_type": "timestamp_without_timezone"}
        )
        == "timestamp without time zone"
    )
    for nested in [{"type": "object"}, {"type": "array"}, {"type": ["string", "integer"]}, {}]:
        assert postgres_type(nested) in ("jsonb", "text")
    assert postgres_type({"type": ["string", "integer"]}) == "jsonb"


# -- settings and secrets -----------------------------------------------------------------------


def pg_connection(connection_id: str, variable: str, schema: str | None = None) -> Connection:
    destination = DestinationConfig.model_validate(
        {"type": "postgres", "dsn_env": variable, **({"schema": schema} if schema else {})}
    )
    return Connection(
        id=connection_id,
        source=SourceConfig(command=["source-x"]),
        destination=destination,
        streams=[StreamConfig(name="people")],
    )


def test_a_postgres_connection_opens_its_schema_named_after_it_or_as_configured(
    postgres_dsn: str,
    connection_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLUICE_TEST_DSN", postgres_dsn)
    with open_destination(pg_connection(connection_id, "SLUICE_TEST_DSN")) as destination:
        assert isinstance(destination, PostgresDestination)
        assert destination.name == "PostgreSQL" and destination.schema == connection_id
    own = pg_connection(connection_id, "SLUICE_TEST_DSN", schema="Raw Data")
    with open_destination(own) as destination:
        assert isinstance(destination, PostgresDestination) and destination.schema == "Raw Data"
    schemas = {connection_id, "Raw Data"}
    with admin(postgres_dsn) as db:
        tables = db.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema = ANY(%s) ORDER BY 1, 2",
            [list(schemas)],
        ).fetchall()
    assert tables == [
        ("Raw Data", "_sluice_commits"),
        ("Raw Data", "_sluice_run_counts"),
        ("Raw Data", "_sluice_state"),
        (connection_id, "_sluice_commits"),
        (connection_id, "_sluice_run_counts"),
        (connection_id, "_sluice_state"),
    ]


def test_a_dsn_missing_from_the_environment_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLUICE_TEST_NO_DSN", raising=False)
    with pytest.raises(MissingSecretError) as missing:
        open_destination(pg_connection("shop", "SLUICE_TEST_NO_DSN"))
    assert str(missing.value) == (
        "connection 'shop': destination.dsn_env: environment variable SLUICE_TEST_NO_DSN is not set"
    )
    assert not missing.value.retryable


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        (
            "postgresql://loader:p%40ss%2Fw0rd-42@db.internal:5432/dw",
            ["p@ss/w0rd-42", "p%40ss%2Fw0rd-42"],
        ),
        ("host=db.internal user=loader password='it\\'s a secret' dbname=dw", ["it's a secret"]),
        ("host=db.internal user=loader dbname=dw", ["from-PGPASSWORD-1"]),
        (
            "host=db.internal user=loader password='unclosed",
            ["host=db.internal user=loader password='unclosed"],
        ),
    ],
    ids=["url", "key=value", "PGPASSWORD", "unparsable"],
)
def test_the_destination_password_is_a_secret_the_scrubber_knows(
    dsn: str, expected: list[str]
) -> None:
    environ = {"SHOP_DSN": dsn, "PGPASSWORD": "from-PGPASSWORD-1"}
    secrets = secret_values(pg_connection("shop", "SHOP_DSN"), {}, environ)
    assert secrets == expected
    scrubber = LogScrubber(cursor_values=(), secrets=secrets)
    for value in expected:
        assert scrubber.scrub_line(f"auth {value} ok\n") == (
            f"auth {RedactionKind.SECRET.marker} ok\n"
        )
    duckdb = Connection(
        id="shop",
        source=SourceConfig(command=["source-x"]),
        destination=DestinationConfig(path=Path("w.duckdb")),
        streams=[StreamConfig(name="people")],
    )
    assert secret_values(duckdb, {}, environ) == []


# -- failures, each named -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_unreachable_server_is_retryable_and_named_without_the_password() -> None:
    dsn = f"host=127.0.0.1 port={free_port()} user=loader password=hunter2-Secret dbname=dw"
    with pytest.raises(DestinationUnreachableError) as failed:
        PostgresDestination(dsn, "shop")
    message = str(failed.value)
    assert message.startswith("connection 'shop': PostgreSQL destination (127.0.0.1:")
    assert message.endswith("/dw): unreachable or lost while connecting (OperationalError)")
    assert "hunter2" not in message
    assert failed.value.retryable and failed.value.kind == "DestinationUnreachable"


@pytest.fixture
def refusing_server() -> Iterator[int]:
    """A server that speaks PostgreSQL's protocol just far enough to ask for a password and
    refuse it (the machine's server trusts every login)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    stop = threading.Event()

    def exactly(conn: socket.socket, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = conn.recv(size - len(data))
            if not chunk:
                raise ConnectionError("client went away")
            data += chunk
        return data

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                try:
                    while True:  # SSL and GSS requests are declined; then the startup
                        size = int.from_bytes(exactly(conn, 4), "big")
                        code = int.from_bytes(exactly(conn, size - 4)[:4], "big")
                        if code not in (80877103, 80877104):
                            break
                        conn.sendall(b"N")
                    conn.sendall(b"R" + (8).to_bytes(4, "big") + (3).to_bytes(4, "big"))
                    exactly(conn, 1)
                    exactly(conn, int.from_bytes(exactly(conn, 4), "big") - 4)
                    fields = (
                        b"SFATAL\0VFATAL\0C28P01\0"
                        b'Mpassword authentication failed for user "loader"\0\0'
                    )
                    conn.sendall(b"E" + (len(fields) + 4).to_bytes(4, "big") + fields)
                except (ConnectionError, OSError):
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join()
        listener.close()


def test_a_wrong_password_is_a_refused_login_not_retried(refusing_server: int) -> None:
    dsn = f"postgresql://loader:hunter2-Secret@127.0.0.1:{refusing_server}/dw?sslmode=disable"
    with pytest.raises(DestinationLoginError) as refused:
        PostgresDestination(dsn, "shop")
    assert str(refused.value) == (
        f"connection 'shop': PostgreSQL destination (127.0.0.1:{refusing_server}/dw): the login "
        "of user 'loader' was refused (OperationalError)"
    )
    assert not refused.value.retryable and refused.value.kind == "DestinationLoginRefused"


def test_a_database_that_does_not_exist_is_named() -> None:
    with pytest.raises(DestinationConfigError) as failed:
        PostgresDestination(f"{POSTGRES} dbname=sluice_no_such_db_{uuid.uuid4().hex[:6]}", "shop")
    assert "the database does not exist" in str(failed.value) and not failed.value.retryable


@pytest.fixture
def role(postgres_dsn: str) -> Iterator[str]:
    """A login role of the test's own, with no privileges but CONNECT (dropped afterwards)."""
    name = f"sluice_loader_{uuid.uuid4().hex[:8]}"
    with admin(postgres_dsn) as db:
        db.execute(f'CREATE ROLE "{name}" LOGIN')
    try:
        yield name
    finally:
        with admin(postgres_dsn) as db:
            db.execute(f'DROP OWNED BY "{name}"')
            db.execute(f'DROP ROLE "{name}"')


def as_role(dsn: str, role: str) -> str:
    return dsn.replace("user=postgres", f"user={role}")


def test_a_user_that_cannot_create_the_schema_is_told_so(
    postgres_dsn: str,
    role: str,
    connection_id: str,
) -> None:
    with pytest.raises(DestinationPermissionError) as denied:
        PostgresDestination(as_role(postgres_dsn, role), connection_id)
    assert f'creating schema "{connection_id}"' in str(denied.value)
    assert str(denied.value).startswith(f"connection {connection_id!r}: PostgreSQL destination")
    assert not denied.value.retryable and denied.value.kind == "DestinationPermissionDenied"


def test_a_table_the_user_may_not_write_is_named_and_nothing_is_committed(
    postgres_dsn: str,
    role: str,
    connection_id: str,
    tmp_path: Path,
) -> None:
    # The schema and its tables were made by someone else; the loader may only use them.
    with PostgresDestination(postgres_dsn, connection_id) as owner:
        owner.prepare([people(owner)], "r1")
    with admin(postgres_dsn) as db:
        db.execute(f'GRANT USAGE ON SCHEMA "{connection_id}" TO "{role}"')
        db.execute(f'GRANT ALL ON "{connection_id}"._sluice_state TO "{role}"')
        db.execute(f'GRANT ALL ON "{connection_id}"._sluice_run_counts TO "{role}"')
        db.execute(f'GRANT ALL ON "{connection_id}"._sluice_commits TO "{role}"')
        db.execute(f'GRANT SELECT ON "{connection_id}".people TO "{role}"')
    with PostgresDestination(as_role(postgres_dsn, role), connection_id) as loader:
        stream = people(loader)
        loader.prepare([stream], "r1")
        batch = records(tmp_path / "1.gz", [{"id": 1, "name": "a"}])
        with pytest.raises(DestinationPermissionError) as denied:
            loader.commit({"people": [batch]}, {"people": stream}, [STATE], "r1")
        assert str(denied.value) == (
            f"connection {connection_id!r}: PostgreSQL destination ({loader.server}): "
            f'permission denied loading "{connection_id}"."people"; grant the destination\'s '
            "user the privileges it needs (InsufficientPrivilege, SQLSTATE 42501)"
        )
        assert loader.committed_state() == []


def test_a_column_dropped_by_hand_mid_run_fails_the_commit_naming_it_and_keeps_nothing(
    postgres_dsn: str,
    connection_id: str,
    tmp_path: Path,
) -> None:
    batch = records(tmp_path / "1.gz", [{"id": 1, "name": "a"}])
    with PostgresDestination(postgres_dsn, connection_id) as destination:
        stream = people(destination)
        destination.prepare([stream], "r1")
        with admin(postgres_dsn) as db:
            db.execute(f'ALTER TABLE "{connection_id}".people DROP COLUMN name')
        with pytest.raises(DestinationTableChangedError) as changed:
            destination.commit(
                {"people": [batch]}, {"people": stream}, [STATE], "r1", counts={"people": 1}
            )
        assert str(changed.value) == (
            f'connection {connection_id!r}: PostgreSQL table "{connection_id}"."people": column '
            '"name" is missing (dropped by hand?), which Sluice cannot load (it loads text, '
            "character varying, bigint, double precision, boolean, date, timestamp with time "
            "zone, timestamp without time zone, jsonb, json); the commit was rolled back"
        )
        assert not changed.value.retryable
        assert destination.committed_state() == [] and destination.run_counts("r1") == {}
        # The next attempt's prepare brings the column back, as DuckDB's does.
        destination.prepare([stream], "r1")
        destination.commit({"people": [batch]}, {"people": stream}, [STATE], "r1")
        assert destination.committed_state() == [STATE]
    assert scalar(postgres_dsn, f'SELECT name FROM "{connection_id}".people') == "a"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("ALTER TABLE {t} ALTER COLUMN name TYPE integer USING NULL", 'column "name" is integer'),
        ("DROP TABLE {t}", "does not exist: it was dropped while the run loaded it"),
        ("ALTER TABLE {t} ADD CHECK (id < 0)", "a constraint added by hand refuses its rows"),
    ],
    ids=["type changed", "table dropped", "constraint added"],
)
def test_other_changes_by_hand_fail_the_commit_clearly(
    postgres_dsn: str,
    connection_id: str,
    tmp_path: Path,
    change: str,
    expected: str,
) -> None:
    batch = records(tmp_path / "1.gz", [{"id": 1, "name": "a"}])
    with PostgresDestination(postgres_dsn, connection_id) as destination:
        stream = people(destination)
        destination.prepare([stream], "r1")
        with admin(postgres_dsn) as db:
            db.execute(change.format(t=f'"{connection_id}".people'))
        with pytest.raises(DestinationTableChangedError) as changed:
            destination.commit({"people": [batch]}, {"people": stream}, [STATE], "r1")
        assert expected in str(changed.value)
        assert f'"{connection_id}"."people"' in str(changed.value)
        assert destination.committed_state() == []


def test_a_view_on_an_overwritten_table_stops_the_swap_and_nothing_is_committed(
    postgres_dsn: str,
    connection_id: str,
    tmp_path: Path,
) -> None:
    with PostgresDestination(postgres_dsn, connection_id) as destination:
        first = people(destination, mode="overwrite", replace=True)
        destination.prepare([first], "r1")
        batch = records(tmp_path / "1.gz", [{"id": 1, "name": "a"}])
        destination.commit({"people": [batch]}, {"people": first}, [], "r1", replace=[first])
        with admin(postgres_dsn) as db:
            db.execute(f'CREATE VIEW "{connection_id}".v AS SELECT * FROM "{connection_id}".people')
        second = people(destination, mode="overwrite", replace=True, run_suffix="r2")
        destination.prepare([second], "r2")
        batch = records(tmp_path / "2.gz", [{"id": 2, "name": "b"}])
        with pytest.raises(DestinationTableChangedError) as changed:
            destination.commit(
                {"people": [batch]}, {"people": second}, [STATE], "r2", replace=[second]
            )
        assert 'replacing "' in str(changed.value) and "(a view?)" in str(changed.value)
        assert destination.committed_state() == []
    assert scalar(postgres_dsn, f'SELECT id FROM "{connection_id}".v') == 1


def test_a_connection_lost_before_the_commit_is_retryable_and_nothing_is_committed(
    postgres_dsn: str,
    connection_id: str,
    tmp_path: Path,
) -> None:
    batch = records(tmp_path / "1.gz", [{"id": 1, "name": "a"}])
    with PostgresDestination(postgres_dsn, connection_id) as destination:
        stream = people(destination)
        destination.prepare([stream], "r1")
        scalar(postgres_dsn, f"SELECT pg_terminate_backend({destination._db.info.backend_pid})")
        with pytest.raises(DestinationUnreachableError) as lost:
            destination.commit({"people": [batch]}, {"people": stream}, [STATE], "r1")
        assert lost.value.retryable and lost.value.kind == "DestinationUnreachable"
        assert str(lost.value).startswith(f"connection {connection_id!r}: PostgreSQL")
    with PostgresDestination(postgres_dsn, connection_id) as destination:
        assert destination.committed_state() == []


def test_streams_that_would_share_a_table_are_refused(
    postgres_dsn: str,
    connection_id: str,
) -> None:
    with PostgresDestination(postgres_dsn, connection_id) as destination:
        dotted = people(destination, name="shop.orders")
        namespaced = people(destination, name="orders", namespace="shop")
        with pytest.raises(DestinationConfigError) as clash:
            destination.prepare([dotted, namespaced], "r1")
        assert str(clash.value) == (
            f"connection {connection_id!r}: stream 'orders' (namespace 'shop') would load into "
            f'PostgreSQL table "{connection_id}"."shop.orders", which is stream '
            "'shop.orders''s too"
        )
        # A replaced stream's run-scoped table is another stream's table.
        replaced = people(destination, replace=True, run_suffix="r1")
        with pytest.raises(DestinationConfigError, match="which is stream 'people'"):
            destination.prepare([replaced, people(destination, name="people__sluice_r1")], "r1")
        with pytest.raises(DestinationConfigError, match="which is one of Sluice's own"):
            destination.prepare([people(destination, name="_sluice_state")], "r1")
        assert scalar(postgres_dsn, f"SELECT to_regclass('\"{connection_id}\".people')") is None


# -- values PostgreSQL reads its own way ----------------------------------------------------------


def test_nul_characters_are_dropped_and_an_escaped_backslash_is_kept(
    postgres_dsn: str,
    connection_id: str,
    tmp_path: Path,
) -> None:
    batch = records(
        tmp_path / "1.gz",
        [{"id": 1, "name": "a\u0000b"}, {"id": 2, "name": "c\\u0000d"}, {"id": 3, "name": "\\"}],
    )
    with PostgresDestination(postgres_dsn, connection_id) as destination:
        stream = people(destination)
        destination.prepare([stream], "r1")
        assert destination.commit({"people": [batch]}, {"people": stream}, [], "r1") == 3
    with admin(postgres_dsn) as db:
        rows = db.execute(f'SELECT name FROM "{connection_id}".people ORDER BY id').fetchall()
    assert rows == [("ab",), ("c\\u0000d",), ("\\",)]


def test_a_column_keeps_its_type_when_the_source_changes_its_own(
    postgres_dsn: str,
    connection_id: str,
    tmp_path: Path,
) -> None:
    with PostgresDestination(postgres_dsn, connection_id) as destination:
        destination.prepare([people(destination)], "r1")
        # The source now says `id` is a string: the column stays bigint, and what is no
        # number is NULL.
        stream = people(destination, {"id": {"type": "string"}, "name": {"type": "string"}})
        destination.prepare([stream], "r2")
        batch = records(tmp_path / "1.gz", [{"id": "12", "name": "a"}, {"id": "x", "name": "b"}])
        destination.commit({"people": [batch]}, {"people": stream}, [], "r2")
    with admin(postgres_dsn) as db:
        rows = db.execute(f'SELECT id, name FROM "{connection_id}".people ORDER BY name')
        assert rows.fetchall() == [(12, "a"), (None, "b")]


def test_a_database_that_is_not_utf8_is_refused(postgres_dsn: str) -> None:
    name = f"sluice_ascii_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{POSTGRES} dbname=postgres", autocommit=True) as db:
        db.execute(
            f"CREATE DATABASE {name} ENCODING 'SQL_ASCII' TEMPLATE template0 "
            "LC_COLLATE 'C' LC_CTYPE 'C'"
        )
    try:
        with pytest.raises(DestinationConfigError, match="encoding is SQL_ASCII, not UTF8"):
            PostgresDestination(f"{POSTGRES} dbname={name}", "shop")
    finally:
        with psycopg.connect(f"{POSTGRES} dbname=postgres", autocommit=True) as db:
            db.execute(f"DROP DATABASE {name} WITH (FORCE)")


# -- a worker killed between COPY and COMMIT -------------------------------------------------------

KILLED = """
import json, os, signal, sys
from pathlib import Path
from workers.destinations.base import StreamTable
from workers.destinations.postgres import PostgresDestination

dsn, connection_id, point, batch = sys.argv[1:5]
destination = PostgresDestination(dsn, connection_id)
stream = StreamTable(name="people", namespace=None, mode="append", replace=False,
                     columns=destination.columns({"id": {"type": "integer"}}))

def die(cursor):
    cursor.execute('SELECT count(*) FROM "' + connection_id + '".people')
    print(json.dumps({"pid": destination._db.info.backend_pid,
                      "rows_in_its_transaction": cursor.fetchone()[0]}), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

if point == "after COPY":
    copy = PostgresDestination._copy
    def copy_then_die(self, cursor, *args):
        copy(self, cursor, *args)
        cursor.execute("SELECT count(*) FROM pg_temp._sluice_batch_0")
        print(json.dumps({"copied": cursor.fetchone()[0]}), flush=True)
        die(cursor)
    PostgresDestination._copy = copy_then_die
else:
    write_state = PostgresDestination._write_state
    def write_then_die(self, cursor, *args):
        write_state(self, cursor, *args)
        die(cursor)
    PostgresDestination._write_state = write_then_die
state = {"type": "STREAM", "stream": {"stream_descriptor": {"name": "people"},
         "stream_state": {"id": 1000}}}
destination.commit({"people": [Path(batch)]}, {"people": stream}, [state], "r1",
                   counts={"people": 1000})
print("committed", flush=True)
"""


@pytest.mark.parametrize("point", ["after COPY", "before COMMIT"])
def test_a_worker_killed_between_copy_and_commit_leaves_no_rows_and_no_state(
    postgres_dsn: str,
    connection_id: str,
    tmp_path: Path,
    point: str,
) -> None:
    batch = records(tmp_path / "1.gz", [{"id": n} for n in range(1000)])
    with PostgresDestination(postgres_dsn, connection_id) as destination:
        stream = people(destination, {"id": {"type": "integer"}})
        destination.prepare([stream], "r1")
    killed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILLED), postgres_dsn, connection_id, point, batch],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    told = [json.loads(line) for line in killed.stdout.splitlines()]
    if point == "after COPY":
        assert told[0] == {"copied": 1000}
    assert told[-1]["rows_in_its_transaction"] == (0 if point == "after COPY" else 1000)
    # PostgreSQL ends the session whose client is gone, rolling its transaction back.
    pid = told[-1]["pid"]
    deadline = time.monotonic() + 30
    while scalar(postgres_dsn, f"SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"):
        assert time.monotonic() < deadline, "the killed worker's session lingers"
        time.sleep(0.05)
    with PostgresDestination(postgres_dsn, connection_id) as destination:
        assert destination.committed_state() == []
        assert destination.run_counts("r1") == {}
        assert scalar(postgres_dsn, f'SELECT count(*) FROM "{connection_id}".people') == 0
        # Nothing of it lingers either: the next attempt commits the same batch.
        destination.prepare([stream], "r1")
        assert destination.commit({"people": [batch]}, {"people": stream}, [STATE], "r1") == 1000
        assert destination.committed_state() == [STATE]


# -- one real sync through the workflow ---------------------------------------------------------


def incremental_connector(tmp_path: Path) -> Path:
    """Three records a run, from where the committed state says the last run ended; it prints
    the destination's DSN to stderr, as a careless connector might print its environment."""
    return protocol_connector(
        tmp_path,
        "counting-source",
        """
        import os
        print("env: " + os.environ.get("SLUICE_TEST_PG_DSN", "?"), file=sys.stderr, flush=True)
        start = 0
        if "--state" in sys.argv:
            with open(sys.argv[sys.argv.index("--state") + 1]) as given:
                start = int(json.load(given)[0]["stream"]["stream_state"]["updated_at"][-1])
        for i in range(start, start + 3):
            record(i, f"2024-01-0{i + 1}")
        state(f"2024-01-0{start + 3}")
        """,
    )


@pytest.mark.temporal
async def test_a_sync_through_the_workflow_loads_postgres_and_purges_its_staging(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    run_worker: Any,
    client: Client,
    postgres_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    password = f"pw-{uuid.uuid4().hex[:12]}"  # the server trusts the login: libpq never sends it
    monkeypatch.setenv("SLUICE_TEST_PG_DSN", f"{postgres_dsn} password={password}")
    settings = make_settings(
        f"""
        [[connections]]
        id = "items"
        [connections.source]
        command = ["{incremental_connector(tmp_path)}"]
        [connections.destination]
        type = "postgres"
        dsn_env = "SLUICE_TEST_PG_DSN"
        schema = "e2e items"
        [[connections.streams]]
        name = "items"
        sync_mode = "incremental"
        destination_mode = "append_dedup"
        """
    )
    await run_worker(settings)
    summaries = []
    for _ in range(2):
        handle = await start_sync(client, settings, SyncRequest(connection_id="items"))
        summaries.append(await handle.result())
    for summary in summaries:
        assert summary.status == "succeeded" and summary.records == {"items": 3}
        assert summary.verified_empty and summary.objects_purged > 0 and summary.receipt_id
        staged = settings.state_path / "staging" / "items" / summary.run_id
        assert not staged.exists() or not any(p.is_file() for p in staged.rglob("*"))
    assert [s.incremental for s in summaries] == [False, True]
    with admin(postgres_dsn) as db:
        rows = db.execute('SELECT id, updated_at FROM "e2e items".items ORDER BY id').fetchall()
        state = db.execute('SELECT state FROM "e2e items"._sluice_state').fetchall()
        counts = db.execute('SELECT run_id, records FROM "e2e items"._sluice_run_counts')
        assert sorted(counts.fetchall()) == sorted((s.run_id, 3) for s in summaries)
    assert rows == [(i, f"2024-01-0{i + 1}") for i in range(6)]
    assert [s[0]["stream"]["stream_state"] for s in state] == [{"updated_at": "2024-01-06"}]
    logs = [Path(s.log_uri.removeprefix("file://")).read_text() for s in summaries if s.log_uri]
    assert len(logs) == 2 and all(f"password={RedactionKind.SECRET.marker}" in log for log in logs)
    assert not any(password in log for log in logs)


def key_indexes(dsn: str, schema: str) -> list[tuple[str, str]]:
    with admin(dsn) as db:
        return list(
            db.execute(
                "SELECT tablename, indexdef FROM pg_indexes WHERE schemaname = %s "
                "AND tablename NOT LIKE '\\_sluice\\_%%' ORDER BY 1",
                [schema],
            ).fetchall()
        )


def test_an_append_dedup_table_has_one_index_on_its_primary_key(
    postgres_dsn: str,
    connection_id: str,
    tmp_path: Path,
) -> None:
    with PostgresDestination(postgres_dsn, connection_id) as destination:
        dedup = people(destination, mode="append_dedup", primary_key=["id"], cursor="name")
        destination.prepare([dedup], "r1")
        destination.prepare([dedup], "r2")
        [(table, index)] = key_indexes(postgres_dsn, connection_id)
        assert table == "people" and index.endswith(" USING btree (id)")
        # A reset: the run-scoped table has its own, which the swap brings along.
        reset = people(
            destination, mode="append_dedup", primary_key=["id"], replace=True, run_suffix="r3"
        )
        destination.prepare([reset], "r3")
        batch = records(tmp_path / "1.gz", [{"id": 1, "name": "a"}])
        destination.commit({"people": [batch]}, {"people": reset}, [], "r3", replace=[reset])
        destination.prepare([dedup], "r4")
        [(table, index)] = key_indexes(postgres_dsn, connection_id)
        assert table == "people" and index.endswith(" USING btree (id)")
        appended = people(destination, name="pets")
        destination.prepare([appended], "r4")
        assert [t for t, _ in key_indexes(postgres_dsn, connection_id)] == ["people"]


def test_a_primary_key_that_is_not_a_column_is_refused_before_anything_loads(
    postgres_dsn: str,
    connection_id: str,
) -> None:
    with PostgresDestination(postgres_dsn, connection_id) as destination:
        stream = people(destination, mode="append_dedup", primary_key=["uid"])
        with pytest.raises(DestinationConfigError) as refused:
            destination.prepare([stream], "r1")
        assert str(refused.value) == (
            f"connection {connection_id!r}: stream 'people': primary key ['uid'] is not a "
            "column of the stream's schema, so append_dedup cannot keep one row per key"
        )
