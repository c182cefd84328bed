"""Connections files and small Airbyte protocol sources written in Python, for the tests."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path


def write_connections(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def items_connection(
    command: Path | str, warehouse: Path, *, connection_id: str = "items", mode: str = "append"
) -> str:
    """A connections file with one connection (`connection_id`, default "items"): the source
    `command`, one stream "items" (incremental; full refresh for `mode` "overwrite") loaded
    into the DuckDB file `warehouse` with destination mode `mode`."""
    sync_mode = "full_refresh" if mode == "overwrite" else "incremental"
    return f"""
        [[connections]]
        id = "{connection_id}"
        [connections.source]
        command = ["{command}"]
        [connections.destination]
        path = "{warehouse}"
        [[connections.streams]]
        name = "items"
        sync_mode = "{sync_mode}"
        destination_mode = "{mode}"
    """


def protocol_connector(tmp_path: Path, name: str, read_body: str) -> Path:
    """A small Airbyte protocol source written in Python, for failure cases real sources
    cannot be made to produce on demand. `read_body` prints the messages of `read`."""
    script = tmp_path / name
    script.write_text(
        f"#!{sys.executable}\n"
        + textwrap.dedent(
            """
            import json, sys
            def emit(message):
                print(json.dumps(message), flush=True)
            SCHEMA = {"type": "object", "properties": {
                "id": {"type": "integer"}, "updated_at": {"type": "string"}}}
            verb = sys.argv[1]
            if verb == "spec":
                emit({"type": "SPEC", "spec": {"connectionSpecification": {}}})
            elif verb == "check":
                emit({"type": "CONNECTION_STATUS", "connectionStatus": {"status": "SUCCEEDED"}})
            elif verb == "discover":
                emit({"type": "CATALOG", "catalog": {"streams": [{"name": "items",
                    "json_schema": SCHEMA, "supported_sync_modes": ["full_refresh", "incremental"],
                    "source_defined_cursor": True, "default_cursor_field": ["updated_at"],
                    "source_defined_primary_key": [["id"]]}]}})
            elif verb == "read":
                def record(i, updated_at):
                    emit({"type": "RECORD", "record": {"stream": "items",
                          "data": {"id": i, "updated_at": updated_at},
                          "emitted_at": 1700000000000}})
                def state(updated_at):
                    emit({"type": "STATE", "state": {"type": "STREAM", "stream": {
                          "stream_descriptor": {"name": "items"},
                          "stream_state": {"updated_at": updated_at}}}})
            """
        )
        + textwrap.indent(textwrap.dedent(read_body), "    ")
    )
    script.chmod(0o755)
    return script


def wait_for_file(path: Path, poll: float = 0.05, timeout: float = 300) -> str:
    """Source code for a protocol connector's `read_body`: block until `path` exists (the test
    creates it when it is ready), failing loudly rather than hanging after `timeout` seconds."""
    return textwrap.dedent(
        f"""
        import os, time
        _deadline = time.monotonic() + {timeout!r}
        while not os.path.exists({str(path)!r}):
            if time.monotonic() > _deadline:
                sys.exit("the test never created " + {str(path)!r})
            time.sleep({poll!r})
        """
    )
