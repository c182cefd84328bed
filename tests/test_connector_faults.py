"""A connector that misbehaves, and a disk that fills, end with one clear classified error.

Each case runs real pieces (a connector script as a subprocess, the staging store, DuckDB) and
checks what a user would: the error's kind and message (the stream and the stdout line, never a
record value), whether it is retried, that what was committed stays consistent with the
committed state, and that nothing is left behind: the warehouse opens in another process (no
lock kept), no run-scoped table, no thread of the attempt still alive.
"""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import duckdb
import pytest
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError

from purge.stores import LocalStagingStore
from tests.support.connections import items_connection, protocol_connector, write_connections
from workers.cli import start_sync
from workers.connections import Connection, ConnectionsFile, SourceConfig
from workers.connectors.errors import (
    ConnectorError,
    ConnectorNotFoundError,
    ConnectorProtocolError,
    ConnectorStalledError,
)
from workers.connectors.executors import ConnectorInstaller
from workers.connectors.process import Connector
from workers.connectors.protocol import MAX_RECORD_BYTES
from workers.destinations import open_destination
from workers.localsync.engine import LocalSync
from workers.runlog import RunLog
from workers.settings import Settings
from workflows.models import ActivityName, SyncRequest

SECRET_VALUE = "card-4111-1111-1111-1111"
PREFIX = "items/run-1/"


# -- connectors -------------------------------------------------------------------------------


def script(tmp_path: Path, name: str, source: str) -> Path:
    """A connector written out as a Python script."""
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(source))
    path.chmod(0o755)
    return path


def committed_then(tmp_path: Path, name: str, after: str) -> Path:
    """Records 1-2 and a state covering them (one commit at batch_records=2), then `after`."""
    first = 'record(1, "2024-01-01T00:00:00Z")\n'
    first += 'record(2, "2024-01-02T00:00:00Z")\n'
    first += 'state("2024-01-02T00:00:00Z")\n'
    return protocol_connector(tmp_path, name, first + textwrap.dedent(after))


def raw_lines(*lines: bytes) -> str:
    """Read-body code that writes these exact bytes to stdout, one line each."""
    return "".join(
        f"sys.stdout.buffer.write({line!r} + b'\\n'); sys.stdout.flush()\n" for line in lines
    )


def compact(message: dict[str, Any]) -> bytes:
    """A message as the Python CDK prints it (no spaces: the fast path's shape)."""
    return json.dumps(message, separators=(",", ":")).encode()


# -- running ----------------------------------------------------------------------------------


class Attempt:
    """One attempt of LocalSync on real parts, and what a user checks afterwards."""

    def __init__(
        self,
        tmp_path: Path,
        command: Path,
        *,
        mode: str = "append",
        batch_records: int = 2,
        stall_timeout: float | None = None,
        store: LocalStagingStore | None = None,
        warehouse: Path | None = None,
    ) -> None:
        self.warehouse = warehouse or tmp_path / "warehouse.duckdb"
        path = write_connections(
            tmp_path / "connections.toml", items_connection(command, self.warehouse, mode=mode)
        )
        connection = ConnectionsFile.load(path).get("items")
        assert isinstance(connection, Connection)
        self.store = store or LocalStagingStore(tmp_path / "staging")
        self.sync = LocalSync(
            connection=connection,
            connector=Connector([str(command)], stall_timeout=stall_timeout, stop_grace=2),
            config={},
            destination=lambda: open_destination(connection),
            store=self.store,
            prefix=PREFIX,
            run_id="run-1",
            batch_records=batch_records,
            heartbeat=lambda _progress: None,
        )
        self.log: list[str] = []
        self.threads_before = set(threading.enumerate())

    def run(self) -> Any:
        with RunLog() as run_log:
            try:
                return self.sync.run(
                    run_log=run_log, attempt=1, reset=False, only=None, resume=None
                )
            finally:
                self.log = list(run_log.read())

    def fails(self, kind: type[BaseException] = ConnectorError) -> Any:
        with pytest.raises(kind) as failed:
            self.run()
        return failed.value

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        with duckdb.connect(str(self.warehouse), read_only=True) as db:
            return db.execute(sql).fetchall()

    def committed(self) -> tuple[list[int], list[Any]]:
        """The ids loaded and the stream states committed."""
        ids = sorted(r[0] for r in self.rows("SELECT id FROM items"))
        states = [
            json.loads(r[0])["stream"]["stream_state"]
            for r in self.rows("SELECT state FROM _sluice_state")
        ]
        return ids, states

    def assert_released(self) -> None:
        """No lock on the warehouse, no run-scoped table, no thread of the attempt alive."""
        opened = subprocess.run(
            [
                sys.executable,
                "-c",
                "import duckdb, sys; duckdb.connect(sys.argv[1]).close()",
                str(self.warehouse),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert opened.returncode == 0, opened.stderr  # a lock left would fail here
        tables = [r[0] for r in self.rows("SELECT table_name FROM information_schema.tables")]
        assert not [t for t in tables if "__sluice_" in t], tables
        deadline = time.monotonic() + 5
        while set(threading.enumerate()) - self.threads_before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert set(threading.enumerate()) - self.threads_before == set()


def assert_names_line(error: BaseException, line: int, stream: str | None = "items") -> None:
    message = str(error)
    assert f"stdout line {line}" in message, message
    if stream is not None:
        assert f"stream {stream!r}" in message, message
    assert SECRET_VALUE not in message, message


# -- records Sluice cannot take ---------------------------------------------------------------

RECORD = {"stream": "items", "emitted_at": 1_700_000_000_000}
BAD_RECORDS = {
    "no data": (compact({"type": "RECORD", "record": RECORD}), "RECORD has no data"),
    "string data": (
        compact({"type": "RECORD", "record": {**RECORD, "data": SECRET_VALUE}}),
        "RECORD data is a string, not an object",
    ),
    "array data (spaced)": (
        json.dumps({"type": "RECORD", "record": {**RECORD, "data": [SECRET_VALUE]}}).encode(),
        "RECORD data is an array, not an object",
    ),
    "null data": (
        compact({"type": "RECORD", "record": {**RECORD, "data": None}}),
        "RECORD data is null, not an object",
    ),
    "invalid UTF-8 (compact)": (
        b'{"type":"RECORD","record":{"stream":"items","data":{"id":3,"name":"'
        + SECRET_VALUE.encode()
        + b'\xff\xfe"},"emitted_at":1700000000000}}',
        "RECORD message is not valid UTF-8",
    ),
    "invalid UTF-8 (spaced)": (
        b'{"type": "RECORD", "record": {"stream": "items", "data": {"name": "\xc3\x28'
        + SECRET_VALUE.encode()
        + b'"}, "emitted_at": 1}}',
        "RECORD message is not valid UTF-8",
    ),
    "cut JSON": (
        b'{"type": "RECORD", "record": {"stream": "items", "data": {"id": 3, "name": "'
        + SECRET_VALUE.encode(),
        "RECORD message is not valid JSON",
    ),
    "emitted_at not a number": (
        json.dumps(
            {"type": "RECORD", "record": {**RECORD, "data": {"id": 3}, "emitted_at": "soon"}}
        ).encode(),
        "RECORD emitted_at is a string, not a number",
    ),
}


@pytest.mark.parametrize("case", list(BAD_RECORDS))
def test_a_record_sluice_cannot_load_fails_for_good_naming_stream_and_line(
    tmp_path: Path, case: str
) -> None:
    line, problem = BAD_RECORDS[case]
    connector = committed_then(
        tmp_path, "source-bad-record", raw_lines(line) + 'record(9, "2024-01-09T00:00:00Z")\n'
    )
    attempt = Attempt(tmp_path, connector)
    error = attempt.fails(ConnectorProtocolError)
    assert problem in str(error)
    assert_names_line(error, 4)
    assert not error.retryable and error.kind == "ConnectorProtocolError"
    # Exactly what the committed state covers; nothing after the bad line was loaded.
    assert attempt.committed() == ([1, 2], [{"updated_at": "2024-01-02T00:00:00Z"}])
    attempt.assert_released()


@pytest.mark.parametrize(
    "line",
    [
        compact({"type": "RECORD"}),
        compact({"type": "RECORD", "record": {"data": {"id": 1}, "emitted_at": 1}}),
        json.dumps({"type": "RECORD", "record": SECRET_VALUE}).encode(),
    ],
    ids=["no record", "no stream", "record not an object"],
)
def test_a_record_without_record_or_stream_is_a_protocol_error(tmp_path: Path, line: bytes) -> None:
    """Today's bare KeyError: now the line and what was missing, for good."""
    connector = committed_then(tmp_path, "source-no-stream", raw_lines(line))
    attempt = Attempt(tmp_path, connector)
    error = attempt.fails(ConnectorProtocolError)
    assert_names_line(error, 4, stream=None)
    assert "RECORD" in str(error) and not error.retryable
    assert attempt.committed() == ([1, 2], [{"updated_at": "2024-01-02T00:00:00Z"}])
    attempt.assert_released()


def test_an_oversized_record_is_refused_before_duckdb(tmp_path: Path) -> None:
    size = MAX_RECORD_BYTES + 1024
    connector = committed_then(
        tmp_path,
        "source-huge",
        f"""
        big = {{"type": "RECORD", "record": {{"stream": "items",
               "data": {{"id": 3, "blob": "x" * {size}}}, "emitted_at": 1700000000000}}}}
        sys.stdout.write(json.dumps(big, separators=(",", ":")) + "\\n")
        sys.stdout.flush()
        """,
    )
    attempt = Attempt(tmp_path, connector)
    error = attempt.fails(ConnectorProtocolError)
    assert "over the limit of 16777216 bytes" in str(error)
    assert_names_line(error, 4)
    assert attempt.committed() == ([1, 2], [{"updated_at": "2024-01-02T00:00:00Z"}])
    attempt.assert_released()


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (
            b'{"type":"RECORD","record":{"stream":"items","data":{"id":3,,"name":"'
            + SECRET_VALUE.encode()
            + b'"},"emitted_at":1700000000000}}',
            "RECORD message is not valid JSON",
        ),
        (
            b'{"type":"RECORD","record":{"stream":"items","data":{"id":3},"emitted_at":"'
            + SECRET_VALUE.encode()
            + b'"}}',
            "RECORD emitted_at is a string, not a number",
        ),
    ],
    ids=["malformed inside", "emitted_at a string"],
)
def test_a_fast_path_record_duckdb_refuses_is_named_at_the_commit(
    tmp_path: Path, line: bytes, problem: str
) -> None:
    """RECORD lines in the CDK's shape are staged without a parse; what only a parse finds,
    DuckDB finds at the commit, and the batch is then checked to name the line."""
    connector = committed_then(
        tmp_path,
        "source-subtle",
        'record(3, "2024-01-03T00:00:00Z")\n'
        + raw_lines(line)
        + 'state("2024-01-04T00:00:00Z")\n'
        + 'record(5, "2024-01-05T00:00:00Z")\n',
    )
    attempt = Attempt(tmp_path, connector)
    error = attempt.fails(ConnectorProtocolError)
    assert problem in str(error)
    assert_names_line(error, 5)
    assert attempt.committed() == ([1, 2], [{"updated_at": "2024-01-02T00:00:00Z"}])
    assert any("DuckDB refused a batch" in line for line in attempt.log)
    attempt.assert_released()


def test_a_malformed_protocol_message_is_refused_without_its_values(tmp_path: Path) -> None:
    bad_state = {"type": "STATE", "state": {"type": "STREAM", "stream": SECRET_VALUE}}
    connector = committed_then(tmp_path, "source-bad-state", f"emit({bad_state!r})\n")
    attempt = Attempt(tmp_path, connector)
    error = attempt.fails(ConnectorProtocolError)
    assert "malformed STATE message" in str(error) and "state.stream" in str(error)
    assert_names_line(error, 4, stream=None)
    assert attempt.committed() == ([1, 2], [{"updated_at": "2024-01-02T00:00:00Z"}])
    attempt.assert_released()


def test_lines_that_are_not_protocol_messages_are_logged_not_fatal(tmp_path: Path) -> None:
    connector = protocol_connector(
        tmp_path,
        "source-chatty",
        """
        print("plain text from a library", flush=True)
        print('{"event": "json of a library"}', flush=True)
        print('{not json at all', flush=True)
        print('{"type": "request", "url": "/items"}', flush=True)
        emit({"type": "LOG", "log": {"level": "LOUD", "message": "a malformed log"}})
        record(1, "2024-01-01T00:00:00Z")
        state("2024-01-01T00:00:00Z")
        """,
    )
    attempt = Attempt(tmp_path, connector)
    outcome = attempt.run()
    assert outcome.streams[0].records == 1
    log = "\n".join(attempt.log)
    for text in ("plain text from a library", "json of a library", "{not json at all"):
        assert text in log
    assert '"type": "request"' in log and "a malformed log" in log
    attempt.assert_released()


def test_a_last_line_cut_short_by_a_crash_reports_the_crash(tmp_path: Path) -> None:
    """A connector killed mid-write leaves half a line: the exit, not the line, is the story
    (and the attempt is retried)."""
    connector = committed_then(
        tmp_path,
        "source-crash-mid-line",
        """
        sys.stdout.write('{"type": "RECORD", "record": {"stream": "items", "data": {"id": 3')
        sys.stdout.flush()
        print("killed by the OOM killer", file=sys.stderr, flush=True)
        sys.exit(137)
        """,
    )
    attempt = Attempt(tmp_path, connector)
    error = attempt.fails(ConnectorError)
    assert not isinstance(error, ConnectorProtocolError)
    assert "exited with code 137" in str(error) and "OOM" in str(error)
    assert error.retryable
    attempt.assert_released()


# -- discover and spec ------------------------------------------------------------------------

DISCOVER_STUB = """
import json, sys
def emit(message):
    print(json.dumps(message), flush=True)
verb = sys.argv[1]
if verb == "spec":
    emit({"type": "SPEC", "spec": {"connectionSpecification": {}}})
    sys.exit(0)
"""


@pytest.mark.parametrize(
    ("catalog", "problem"),
    [
        (
            {"streams": [{"name": "items", "supported_sync_modes": ["full_refresh"]}]},
            "malformed CATALOG message: catalog.streams.0.json_schema: Field required",
        ),
        (
            {
                "streams": [
                    {
                        "name": "items",
                        "json_schema": {"properties": ["id"]},
                        "supported_sync_modes": ["full_refresh"],
                    }
                ]
            },
            "bad catalog: streams[0] (items): json_schema.properties is an array",
        ),
    ],
    ids=["missing schema", "properties not an object"],
)
def test_a_bad_catalog_from_discover_is_final(
    tmp_path: Path, catalog: dict[str, Any], problem: str
) -> None:
    connector = script(
        tmp_path,
        "source-bad-catalog",
        DISCOVER_STUB + f"emit({{'type': 'CATALOG', 'catalog': {catalog!r}}})\n",
    )
    attempt = Attempt(tmp_path, connector)
    error = attempt.fails(ConnectorProtocolError)
    assert problem in str(error) and "discover" in str(error)
    assert not error.retryable
    attempt.assert_released()


def test_a_trace_error_in_discover_is_logged_and_is_the_failure(tmp_path: Path) -> None:
    connector = script(
        tmp_path,
        "source-discover-trace",
        DISCOVER_STUB
        + """
emit({"type": "LOG", "log": {"level": "INFO", "message": "discovering the API"}})
emit({"type": "TRACE", "trace": {"type": "ERROR", "emitted_at": 1, "error": {
      "message": "API answered 503", "internal_message": "upstream busy",
      "failure_type": "transient_error"}}})
print("Traceback: giving up", file=sys.stderr, flush=True)
sys.exit(1)
""",
    )
    attempt = Attempt(tmp_path, connector)
    error = attempt.fails(ConnectorError)
    assert str(error) == "connector reported an error (transient_error): API answered 503"
    assert error.failure_type == "transient_error" and error.retryable
    log = "\n".join(attempt.log)
    assert "TRACE ERROR (transient_error): API answered 503" in log
    assert "internal: upstream busy" in log and "discovering the API" in log
    assert "Traceback: giving up" in log  # discover's stderr is in the log too
    assert "exited with code 1" in log  # noted, not reported
    attempt.assert_released()


def test_a_command_that_is_not_executable_is_final(tmp_path: Path) -> None:
    connector = protocol_connector(tmp_path, "source-no-x", "pass\n")
    connector.chmod(0o644)
    with pytest.raises(ConnectorNotFoundError, match="is not executable") as found:
        ConnectorInstaller(tmp_path / "venvs").argv(SourceConfig(command=[str(connector)]))
    assert not found.value.retryable
    # Run as it is (a connector installed without its execute bit): refused just as clearly.
    attempt = Attempt(tmp_path, connector)
    error = attempt.fails(ConnectorNotFoundError)
    assert "is not executable" in str(error) and not error.retryable
    attempt.assert_released()


# -- TRACE errors and exit codes --------------------------------------------------------------


def test_a_trace_config_error_then_exit_1_reports_the_trace_and_is_final(tmp_path: Path) -> None:
    connector = committed_then(
        tmp_path,
        "source-config-error",
        """
        emit({"type": "TRACE", "trace": {"type": "ERROR", "emitted_at": 1700000000000,
              "error": {"message": "API key rejected", "failure_type": "config_error"}}})
        sys.exit(1)
        """,
    )
    attempt = Attempt(tmp_path, connector)
    error = attempt.fails(ConnectorError)
    assert str(error) == "connector reported an error (config_error): API key rejected"
    assert error.failure_type == "config_error" and not error.retryable
    assert any("TRACE ERROR (config_error): API key rejected" in line for line in attempt.log)
    assert attempt.committed() == ([1, 2], [{"updated_at": "2024-01-02T00:00:00Z"}])
    attempt.assert_released()


# -- stalls -----------------------------------------------------------------------------------


def test_a_silent_connector_is_stopped_as_stalled(tmp_path: Path) -> None:
    connector = protocol_connector(
        tmp_path,
        "source-stalling",
        f"""
        import os, time
        record(1, "2024-01-01T00:00:00Z")
        open({str(tmp_path / "pid")!r}, "w").write(str(os.getpid()))
        time.sleep(60)
        """,
    )
    attempt = Attempt(tmp_path, connector, mode="overwrite", stall_timeout=1)
    started = time.monotonic()
    error = attempt.fails(ConnectorStalledError)
    assert time.monotonic() - started < 20  # not the minute it meant to sleep
    assert (
        str(error) == "connector source-stalling read printed nothing for 1 s: stopped as stalled"
    )
    assert error.failure_type == "stalled" and error.retryable
    pid = int((tmp_path / "pid").read_text())
    assert not Path(f"/proc/{pid}").exists()  # stopped and reaped
    assert attempt.rows("SELECT count(*) FROM _sluice_state") == [(0,)]
    attempt.assert_released()


def test_stderr_output_keeps_a_connector_from_counting_as_stalled(tmp_path: Path) -> None:
    connector = protocol_connector(
        tmp_path,
        "source-slow-but-talking",
        """
        import time
        for _ in range(12):
            print("still waiting for the API", file=sys.stderr, flush=True)
            time.sleep(0.25)
        record(1, "2024-01-01T00:00:00Z")
        state("2024-01-01T00:00:00Z")
        """,
    )
    attempt = Attempt(tmp_path, connector, stall_timeout=1)
    assert attempt.run().streams[0].records == 1
    attempt.assert_released()


# -- a full disk ------------------------------------------------------------------------------


class FullDiskStore(LocalStagingStore):
    """The local staging store on a disk with `room` bytes left: writes beyond it fail with
    ENOSPC, as the kernel's would."""

    def __init__(self, root: Path, room: int) -> None:
        super().__init__(root)
        self.room = room

    @contextlib.contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        with super().open_write(key) as handle:
            yield _Filling(handle, self)  # type: ignore[misc]


class _Filling:
    def __init__(self, handle: BinaryIO, store: FullDiskStore) -> None:
        self._handle = handle
        self._store = store

    def write(self, data: bytes) -> int:
        if len(data) > self._store.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self._store.room -= len(data)
        return self._handle.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


def test_a_full_staging_disk_during_cleanup_never_masks_the_error_or_leaks(
    tmp_path: Path,
) -> None:
    """The connector crashes; closing its open batch then fails on a full disk. The crash is
    what is reported; the commit thread is joined, the run-scoped table dropped, DuckDB
    closed."""
    connector = protocol_connector(
        tmp_path,
        "source-crash-full-disk",
        """
        for i in range(1, 6):
            record(i, f"2024-01-0{i}T00:00:00Z")
        print("upstream API went away: HTTP 502", file=sys.stderr, flush=True)
        sys.exit(3)
        """,
    )
    store = FullDiskStore(tmp_path / "staging", room=20)  # the gzip header fits
    attempt = Attempt(tmp_path, connector, mode="overwrite", batch_records=100, store=store)
    error = attempt.fails(ConnectorError)
    assert "exited with code 3" in str(error) and "HTTP 502" in str(error)
    assert error.retryable
    assert any("cleanup: closing batch" in line and "ENOSPC" not in line for line in attempt.log)
    assert any("No space left on device" in line for line in attempt.log)
    assert not [p for p in store.root.rglob("*") if p.is_file()]  # no partial batch left
    attempt.assert_released()


def test_a_full_staging_disk_at_a_batch_fails_the_attempt_and_leaks_nothing(
    tmp_path: Path,
) -> None:
    connector = committed_then(
        tmp_path,
        "source-many",
        """
        for i in range(3, 40):
            record(i, f"2024-02-01T00:00:{i:02d}Z")
            if i % 2:
                state(f"2024-02-01T00:00:{i:02d}Z")
        """,
    )
    # Room for the first commits, their batches and their journal entries.
    store = FullDiskStore(tmp_path / "staging", room=1200)
    attempt = Attempt(tmp_path, connector, store=store)
    error = attempt.fails(OSError)
    assert error.errno == errno.ENOSPC
    # Whole commits only, each with the state that covers it.
    ids, states = attempt.committed()
    assert ids == list(range(1, ids[-1] + 1))
    last = ids[-1]
    expected = "2024-01-02T00:00:00Z" if last == 2 else f"2024-02-01T00:00:{last:02d}Z"
    assert states == [{"updated_at": expected}]
    attempt.assert_released()


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (needs root; skipped where it cannot be mounted)."""
    mount = tmp_path / "tiny-disk"
    mount.mkdir()
    if not shutil.which("mount"):
        pytest.skip("no mount command")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("mode", ["append", "overwrite"])
def test_duckdb_disk_full_reports_the_io_error_not_the_rollback(
    tmp_path: Path, tiny_disk: Path, mode: str
) -> None:
    connector = committed_then(
        tmp_path,
        "source-fills-warehouse",
        """
        import os
        for i in range(3, 400):
            emit({"type": "RECORD", "record": {"stream": "items", "data": {"id": i,
                  "updated_at": os.urandom(4000).hex()}, "emitted_at": 1700000000000}})
        state("2024-03-01T00:00:00Z")
        """,
    )
    attempt = Attempt(tmp_path, connector, mode=mode, warehouse=tiny_disk / "warehouse.duckdb")
    error = attempt.fails(duckdb.Error)
    assert "No space left on device" in str(error)
    assert "cannot rollback" not in str(error)
    if mode == "append":
        assert attempt.committed() == ([1, 2], [{"updated_at": "2024-01-02T00:00:00Z"}])
    else:  # the live table and its state are replaced only when the run completes
        assert attempt.rows("SELECT count(*) FROM _sluice_state") == [(0,)]
    attempt.assert_released()


# -- through Temporal: the kind, the message, the retries ------------------------------------


def items_settings(
    make_settings: Callable[..., Settings], command: Path, warehouse: Path, **overrides: Any
) -> Settings:
    return make_settings(items_connection(command, warehouse), **overrides)


async def run_sync_failure(
    client: Client, settings: Settings, connection_id: str = "items"
) -> tuple[ApplicationError, Any, int]:
    """The workflow's failure, the run_sync activity's last failure (its type and
    non_retryable, from the history) and how many attempts it took."""
    handle: WorkflowHandle[Any, Any] = await start_sync(
        client, settings, SyncRequest(connection_id=connection_id)
    )
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError)
    history = await handle.fetch_history()
    scheduled = {
        e.event_id
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
        and e.activity_task_scheduled_event_attributes.activity_type.name == ActivityName.RUN_SYNC
    }
    attempts = [
        e.activity_task_started_event_attributes.attempt
        for e in history.events
        if e.HasField("activity_task_started_event_attributes")
        and e.activity_task_started_event_attributes.scheduled_event_id in scheduled
    ]
    failures = [
        e.activity_task_failed_event_attributes.failure.application_failure_info
        for e in history.events
        if e.HasField("activity_task_failed_event_attributes")
        and e.activity_task_failed_event_attributes.scheduled_event_id in scheduled
    ]
    assert len(failures) == 1 and len(attempts) == 1
    return cause, failures[0], attempts[0]


@pytest.mark.temporal
async def test_protocol_error_reaches_temporal_as_final_without_values(
    tmp_path: Path, make_settings: Callable[..., Settings], run_worker: Any, client: Client
) -> None:
    line, _problem = BAD_RECORDS["string data"]
    connector = committed_then(tmp_path, "source-bad-data", raw_lines(line))
    settings = items_settings(
        make_settings, connector, tmp_path / "w.duckdb", batch_records=2, sync_attempts=3
    )
    await run_worker(settings)
    error, activity_failure, attempt = await run_sync_failure(client, settings)
    assert activity_failure.type == "ConnectorProtocolError" and activity_failure.non_retryable
    assert attempt == 1  # never retried
    assert "stdout line 4, stream 'items': RECORD data is a string, not an object" in error.message
    assert SECRET_VALUE not in error.message


@pytest.mark.temporal
async def test_trace_config_error_then_exit_1_is_not_retried(
    tmp_path: Path, make_settings: Callable[..., Settings], run_worker: Any, client: Client
) -> None:
    connector = protocol_connector(
        tmp_path,
        "source-key-rejected",
        """
        emit({"type": "TRACE", "trace": {"type": "ERROR", "emitted_at": 1700000000000,
              "error": {"message": "API key rejected", "failure_type": "config_error"}}})
        sys.exit(1)
        """,
    )
    settings = items_settings(make_settings, connector, tmp_path / "w.duckdb", sync_attempts=3)
    await run_worker(settings)
    error, activity_failure, attempt = await run_sync_failure(client, settings)
    assert activity_failure.type == "ConnectorFailed" and activity_failure.non_retryable
    assert attempt == 1
    assert "connector reported an error (config_error): API key rejected" in error.message
    assert "exited with code" not in error.message


@pytest.mark.temporal
@pytest.mark.connector
async def test_real_faker_with_a_bad_config_reports_its_trace_once(
    tmp_path: Path,
    faker_command: str,
    make_settings: Callable[..., Settings],
    run_worker: Any,
    client: Client,
) -> None:
    """source-faker with count="many": its discover prints a TRACE config_error and exits 1."""
    settings = make_settings(
        f"""
        [[connections]]
        id = "faker-bad"
        [connections.source]
        command = ["{faker_command}"]
        config = {{ count = "many" }}
        [connections.destination]
        path = "{tmp_path / "w.duckdb"}"
        [[connections.streams]]
        name = "products"
        sync_mode = "full_refresh"
        destination_mode = "overwrite"
        """,
        sync_attempts=3,
    )
    await run_worker(settings)
    error, activity_failure, attempt = await run_sync_failure(client, settings, "faker-bad")
    assert activity_failure.type == "ConnectorFailed" and activity_failure.non_retryable
    assert attempt == 1
    assert (
        "connector reported an error (config_error): Config validation error: "
        "'many' is not of type 'integer'" in error.message
    )
    assert "no output on stderr" not in error.message
    log = next((settings.state_path / "logs" / "faker-bad").rglob("attempt-*.log")).read_text()
    assert "TRACE ERROR (config_error): Config validation error" in log


@pytest.mark.temporal
async def test_a_stalled_connector_is_stopped_and_retried(
    tmp_path: Path, make_settings: Callable[..., Settings], run_worker: Any, client: Client
) -> None:
    connector = protocol_connector(
        tmp_path,
        "source-asleep",
        """
        import time
        record(1, "2024-01-01T00:00:00Z")
        time.sleep(60)
        """,
    )
    settings = items_settings(
        make_settings,
        connector,
        tmp_path / "w.duckdb",
        sync_attempts=2,
        stall_timeout_seconds=1,
    )
    await run_worker(settings)
    started = time.monotonic()
    error, activity_failure, attempt = await run_sync_failure(client, settings)
    assert time.monotonic() - started < 45  # two short attempts, not two minutes
    assert activity_failure.type == "ConnectorFailed" and not activity_failure.non_retryable
    assert attempt == 2  # retried, as Airbyte retries a stalled attempt
    assert "printed nothing for 1 s: stopped as stalled" in error.message
