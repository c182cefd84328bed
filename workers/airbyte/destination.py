"""DuckDB destination of the local backend.

One table per stream: the stream's columns from its JSON schema (nested values as JSON) plus
``_airbyte_raw_id`` and ``_airbyte_extracted_at``. Staged batch files are loaded by DuckDB itself
(``read_json`` over the gzip files), so records never pass through Python a second time.

Incremental state lives with the data: each commit loads batches and upserts the STATE messages
that cover them in one transaction. Overwrite streams load into a run-scoped table that replaces
the live one, together with its state, only when the run completes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

STATE_TABLE = "_sluice_state"
META_COLUMNS = {"_airbyte_raw_id": "VARCHAR", "_airbyte_extracted_at": "TIMESTAMPTZ"}


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def duckdb_type(schema: dict[str, Any]) -> str:
    """Map one JSON-schema property to a DuckDB type, the way Airbyte destinations type columns."""
    types = schema.get("type", "string")
    if isinstance(types, list):
        types = [t for t in types if t != "null"]
        if len(types) != 1:
            return "JSON"
        types = types[0]
    airbyte_type = schema.get("airbyte_type")
    fmt = schema.get("format")
    if types == "string":
        if fmt == "date-time":
            return "TIMESTAMP" if airbyte_type == "timestamp_without_timezone" else "TIMESTAMPTZ"
        if fmt == "date":
            return "DATE"
        return "VARCHAR"
    return {"integer": "BIGINT", "number": "DOUBLE", "boolean": "BOOLEAN"}.get(types, "JSON")


@dataclass
class StreamTable:
    """How one stream lands in the destination."""

    name: str
    namespace: str | None
    columns: dict[str, str]
    mode: str  # append | overwrite | append_dedup
    replace: bool  # load into a run-scoped table that replaces the live one at the end
    primary_key: list[str] = field(default_factory=list)
    cursor: str | None = None
    run_suffix: str = ""

    @property
    def schema(self) -> str:
        return self.namespace or "main"

    @property
    def table(self) -> str:
        return f"{_ident(self.schema)}.{_ident(self.name)}"

    @property
    def load_table(self) -> str:
        if not self.replace:
            return self.table
        return f"{_ident(self.schema)}.{_ident(self.name + '__sluice_' + self.run_suffix)}"


def state_key(message: dict[str, Any]) -> str:
    """Where a STATE message is kept: one row per stream, or one for GLOBAL / LEGACY state."""
    kind = message.get("type") or "LEGACY"
    if kind == "STREAM":
        descriptor = message["stream"]["stream_descriptor"]
        return f"stream:{descriptor.get('namespace') or ''}:{descriptor['name']}"
    return kind.lower()


class DuckDBDestination:
    def __init__(self, path: Path, connection_id: str, memory_limit: str = "512MB") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.connection_id = connection_id
        # DuckDB's default (80% of RAM) lets one load hold gigabytes in its buffer pool.
        self._db = duckdb.connect(str(path), config={"memory_limit": memory_limit})
        self._db.execute(
            f"CREATE TABLE IF NOT EXISTS {STATE_TABLE} (connection_id VARCHAR, state_key VARCHAR, "
            "state JSON, run_id VARCHAR, committed_at TIMESTAMPTZ DEFAULT now(), "
            "PRIMARY KEY (connection_id, state_key))"
        )

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> DuckDBDestination:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def committed_state(self) -> list[dict[str, Any]]:
        rows = self._db.execute(
            f"SELECT state FROM {STATE_TABLE} WHERE connection_id = ? ORDER BY state_key",
            [self.connection_id],
        ).fetchall()
        return [json.loads(row[0]) for row in rows]

    def prepare(self, streams: Sequence[StreamTable]) -> None:
        """Create schemas, tables and new columns; start each replacing stream's table afresh."""
        for stream in streams:
            self._db.execute(f"CREATE SCHEMA IF NOT EXISTS {_ident(stream.schema)}")
            columns = {**stream.columns, **META_COLUMNS}
            if stream.replace:
                self._db.execute(f"DROP TABLE IF EXISTS {stream.load_table}")
            ddl = ", ".join(f"{_ident(c)} {t}" for c, t in columns.items())
            self._db.execute(f"CREATE TABLE IF NOT EXISTS {stream.load_table} ({ddl})")
            existing = {
                row[0]
                for row in self._db.execute(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_schema = ? AND table_name = ?",
                    [stream.schema, stream.load_table.rsplit(".", 1)[1].strip('"')],
                ).fetchall()
            }
            for column, kind in columns.items():
                if column not in existing:
                    self._db.execute(
                        f"ALTER TABLE {stream.load_table} ADD COLUMN {_ident(column)} {kind}"
                    )

    def commit(
        self,
        batches: dict[str, list[Path]],
        streams: dict[str, StreamTable],
        states: Iterable[dict[str, Any]],
        run_id: str,
        replace: Sequence[StreamTable] = (),
    ) -> int:
        """Load staged batches and upsert the states that cover them, in one transaction.

        ``replace``: streams whose run-scoped table now replaces the live one (end of run).
        Returns the number of rows loaded.
        """
        loaded = 0
        self._db.execute("BEGIN TRANSACTION")
        try:
            for key, files in batches.items():
                if files:
                    loaded += self._load(streams[key], files)
            for stream in replace:
                self._db.execute(f"DROP TABLE IF EXISTS {stream.table}")
                self._db.execute(f"ALTER TABLE {stream.load_table} RENAME TO {_ident(stream.name)}")
            for state in states:
                self._db.execute(
                    f"INSERT OR REPLACE INTO {STATE_TABLE} "
                    "(connection_id, state_key, state, run_id, committed_at) "
                    "VALUES (?, ?, ?, ?, now())",
                    [self.connection_id, state_key(state), json.dumps(state), run_id],
                )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return loaded

    def forget_state(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._db.execute(
                f"DELETE FROM {STATE_TABLE} WHERE connection_id = ? AND state_key = ?",
                [self.connection_id, key],
            )

    def discard(self, streams: Iterable[StreamTable]) -> None:
        """Drop the run-scoped tables of a run that will not complete."""
        for stream in streams:
            if stream.replace:
                self._db.execute(f"DROP TABLE IF EXISTS {stream.load_table}")

    def _load(self, stream: StreamTable, files: list[Path]) -> int:
        selects = []
        for column, kind in stream.columns.items():
            path = _literal('$.data."' + column.replace('"', '\\"') + '"')
            if kind == "JSON":
                selects.append(f"json_extract(record, {path})")
            else:
                selects.append(f"TRY_CAST(json_extract_string(record, {path}) AS {kind})")
        selects.append("CAST(uuid() AS VARCHAR)")
        selects.append(
            "to_timestamp(CAST(json_extract(record, '$.emitted_at') AS DOUBLE) / 1000.0)"
        )
        targets = ", ".join(_ident(c) for c in [*stream.columns, *META_COLUMNS])
        sources = "[" + ", ".join(_literal(str(f)) for f in files) + "]"
        self._db.execute(
            "CREATE OR REPLACE TEMP TABLE _sluice_batch AS SELECT "
            + ", ".join(
                f"{expr} AS {_ident(col)}"
                for expr, col in zip(selects, [*stream.columns, *META_COLUMNS], strict=True)
            )
            + f" FROM read_json({sources}, format = 'newline_delimited', "
            "columns = {'record': 'JSON'}, compression = 'gzip')"
        )
        self._db.execute(
            f"INSERT INTO {stream.load_table} ({targets}) SELECT {targets} FROM _sluice_batch"
        )
        count = self._db.execute("SELECT count(*) FROM _sluice_batch").fetchone()
        if stream.mode == "append_dedup" and stream.primary_key:
            self._dedup(stream)
        self._db.execute("DROP TABLE _sluice_batch")
        return int(count[0]) if count else 0

    def _dedup(self, stream: StreamTable) -> None:
        """Keep one row per primary key: the latest cursor wins, then the latest extracted."""
        keys = ", ".join(_ident(k) for k in stream.primary_key)
        order = [f"{_ident(stream.cursor)} DESC NULLS LAST"] if stream.cursor else []
        order += ["_airbyte_extracted_at DESC", "rowid DESC"]
        self._db.execute(
            f"DELETE FROM {stream.load_table} WHERE rowid IN (SELECT rowid FROM ("
            f"SELECT rowid, row_number() OVER (PARTITION BY {keys} ORDER BY {', '.join(order)}) "
            f"AS rn FROM {stream.load_table} WHERE ({keys}) IN (SELECT {keys} FROM _sluice_batch)"
            ") WHERE rn > 1)"
        )
