"""The DuckDB destination.

One table per stream: the stream's columns from its JSON schema (nested values as JSON) plus
``_airbyte_raw_id`` and ``_airbyte_extracted_at``. Staged batch files are loaded by DuckDB itself
(``read_json`` over the gzip files), so records never pass through Python a second time.

Incremental state lives with the data: each commit loads batches and upserts the STATE messages
that cover them in one transaction. Overwrite streams load into a run-scoped table that replaces
the live one, together with its state, only when the run completes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import structlog

from workers.connectors.protocol import state_key
from workers.destinations.base import RecordsRefusedError, StreamTable

log = structlog.get_logger(__name__)

STATE_TABLE = "_sluice_state"
COUNTS_TABLE = "_sluice_run_counts"
COMMITS_TABLE = "_sluice_commits"
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


def _schema(stream: StreamTable) -> str:
    return stream.namespace or "main"


def _table(stream: StreamTable) -> str:
    return f"{_ident(_schema(stream))}.{_ident(stream.name)}"


def _load_table(stream: StreamTable) -> str:
    return f"{_ident(_schema(stream))}.{_ident(stream.load_table_name)}"


class DuckDBDestination:
    """A DuckDB file (``[connections.destination] path``); it holds the committed state too."""

    name = "DuckDB"

    def __init__(self, path: Path, connection_id: str, memory_limit: str = "512MB") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.connection_id = connection_id
        # DuckDB's default (80% of RAM) lets one load hold gigabytes in its buffer pool.
        self._db = duckdb.connect(str(path), config={"memory_limit": memory_limit})
        try:
            self._db.execute(
                f"CREATE TABLE IF NOT EXISTS {STATE_TABLE} (connection_id VARCHAR, "
                "state_key VARCHAR, state JSON, run_id VARCHAR, "
                "committed_at TIMESTAMPTZ DEFAULT now(), PRIMARY KEY (connection_id, state_key))"
            )
            self._db.execute(
                f"CREATE TABLE IF NOT EXISTS {COUNTS_TABLE} (run_id VARCHAR, stream VARCHAR, "
                "records BIGINT, PRIMARY KEY (run_id, stream))"
            )
            self._db.execute(
                f"CREATE TABLE IF NOT EXISTS {COMMITS_TABLE} (commit_id VARCHAR PRIMARY KEY, "
                "committed_at TIMESTAMPTZ DEFAULT now())"
            )
        except BaseException:
            _cleanup_step("closing the DuckDB destination", self._db.close)
            raise

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> DuckDBDestination:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            self.close()
        else:
            # The file lock goes with the connection: it is always closed, and a failure to
            # close never replaces the error that ended the run.
            _cleanup_step("closing the DuckDB destination", self.close)

    def columns(self, properties: Mapping[str, Any]) -> dict[str, str]:
        """Columns from a stream's JSON schema. DuckDB names are case-insensitive: of two
        properties that differ only in case, the first one is kept."""
        columns: dict[str, str] = {}
        seen: set[str] = set()
        for name, schema in properties.items():
            if name.lower() not in seen:
                seen.add(name.lower())
                columns[name] = duckdb_type(schema if isinstance(schema, dict) else {})
        return columns

    def committed_state(self) -> list[dict[str, Any]]:
        rows = self._db.execute(
            f"SELECT state FROM {STATE_TABLE} WHERE connection_id = ? ORDER BY state_key",
            [self.connection_id],
        ).fetchall()
        return [json.loads(row[0]) for row in rows]

    def run_counts(self, run_id: str) -> dict[str, int]:
        """Records committed so far by a run (all its attempts), per stream key."""
        rows = self._db.execute(
            f"SELECT stream, records FROM {COUNTS_TABLE} WHERE run_id = ?", [run_id]
        ).fetchall()
        return {str(stream): int(records) for stream, records in rows}

    def committed_ids(self, run_id: str) -> set[str]:
        """The ids of the commits of a run's journal that are done."""
        rows = self._db.execute(
            f"SELECT commit_id FROM {COMMITS_TABLE} WHERE starts_with(commit_id, ?)",
            [run_id + "/"],
        ).fetchall()
        return {str(row[0]) for row in rows}

    def prepare(self, streams: Sequence[StreamTable], run_id: str = "") -> None:
        """Create schemas, tables and new columns; start each replacing stream's table afresh
        (and its count: an earlier attempt's rows of it are gone)."""
        for stream in streams:
            if stream.replace:
                self._db.execute(
                    f"DELETE FROM {COUNTS_TABLE} WHERE run_id = ? AND stream = ?",
                    [run_id, stream.key],
                )
            self._db.execute(f"CREATE SCHEMA IF NOT EXISTS {_ident(_schema(stream))}")
            columns = {**stream.columns, **META_COLUMNS}
            if stream.replace:
                self._db.execute(f"DROP TABLE IF EXISTS {_load_table(stream)}")
            ddl = ", ".join(f"{_ident(c)} {t}" for c, t in columns.items())
            self._db.execute(f"CREATE TABLE IF NOT EXISTS {_load_table(stream)} ({ddl})")
            existing = {
                row[0].lower()
                for row in self._db.execute(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_schema = ? AND table_name = ?",
                    [_schema(stream), stream.load_table_name],
                ).fetchall()
            }
            for column, kind in columns.items():
                # DuckDB identifiers are case-insensitive: "Id" and "id" are one column.
                if column.lower() not in existing:
                    existing.add(column.lower())
                    self._db.execute(
                        f"ALTER TABLE {_load_table(stream)} ADD COLUMN {_ident(column)} {kind}"
                    )

    def commit(
        self,
        batches: dict[str, list[Path]],
        streams: dict[str, StreamTable],
        states: Iterable[dict[str, Any]],
        run_id: str,
        replace: Sequence[StreamTable] = (),
        forget: Iterable[str] = (),
        counts: dict[str, int] | None = None,
        commit_id: str | None = None,
    ) -> int:
        """Load staged batches and upsert the states that cover them, in one transaction.

        ``replace``: streams whose run-scoped table now replaces the live one (end of run);
        ``forget``: state keys a reset drops, in the same transaction; ``commit_id``: the
        journal entry this commit carries out, noted in the same transaction.
        Returns the number of rows loaded. Raises RecordsRefusedError when DuckDB cannot read
        records of a batch (nothing of the commit is kept).
        """
        # Batches are parsed into temporary tables first, outside the transaction: a typed
        # parse that fails must be retried leniently, and a failed statement would abort it.
        staged: list[tuple[StreamTable, str]] = []
        try:
            for index, (key, files) in enumerate(batches.items()):
                if files:
                    staged.append((streams[key], self._stage(streams[key], files, index)))
            return self._commit_staged(staged, run_id, states, replace, forget, counts, commit_id)
        except (duckdb.InvalidInputException, duckdb.ConversionException) as exc:
            raise RecordsRefusedError(self.name, exc) from exc
        finally:
            # Scratch tables of this commit go, whatever happened (they are temporary: a
            # connection that cannot drop them loses them when it closes).
            for _stream, batch in staged:
                _cleanup_step(
                    "dropping a staged batch",
                    lambda batch=batch: self._db.execute(f"DROP TABLE IF EXISTS {batch}"),
                    quiet=True,
                )

    def _commit_staged(
        self,
        staged: list[tuple[StreamTable, str]],
        run_id: str,
        states: Iterable[dict[str, Any]],
        replace: Sequence[StreamTable],
        forget: Iterable[str],
        counts: dict[str, int] | None,
        commit_id: str | None,
    ) -> int:
        loaded = 0
        self._db.execute("BEGIN TRANSACTION")
        try:
            for stream, batch in staged:
                loaded += self._load(stream, batch)
            for stream in replace:
                self._db.execute(f"DROP TABLE IF EXISTS {_table(stream)}")
                self._db.execute(
                    f"ALTER TABLE {_load_table(stream)} RENAME TO {_ident(stream.name)}"
                )
            for key, count in (counts or {}).items():
                self._db.execute(
                    f"INSERT INTO {COUNTS_TABLE} VALUES (?, ?, ?) ON CONFLICT (run_id, stream) "
                    "DO UPDATE SET records = records + excluded.records",
                    [run_id, key, count],
                )
            for key in forget:
                self._db.execute(
                    f"DELETE FROM {STATE_TABLE} WHERE connection_id = ? AND state_key = ?",
                    [self.connection_id, key],
                )
            for state in states:
                self._db.execute(
                    f"INSERT OR REPLACE INTO {STATE_TABLE} "
                    "(connection_id, state_key, state, run_id, committed_at) "
                    "VALUES (?, ?, ?, ?, now())",
                    [self.connection_id, state_key(state), json.dumps(state), run_id],
                )
            if commit_id is not None:
                self._db.execute(f"INSERT INTO {COMMITS_TABLE} (commit_id) VALUES (?)", [commit_id])
            self._db.execute("COMMIT")
        except BaseException:
            # A failed COMMIT (a full disk) has already ended the transaction, and ROLLBACK
            # then fails with "no transaction is active": the error that matters is the first.
            _cleanup_step("rolling back the failed commit", lambda: self._db.execute("ROLLBACK"))
            raise
        return loaded

    def discard(self, streams: Iterable[StreamTable]) -> None:
        """Drop the run-scoped tables of a run that will not complete: each one is tried, and
        the first failure is raised once all were."""
        first: duckdb.Error | None = None
        for stream in streams:
            if stream.replace:
                try:
                    self._db.execute(f"DROP TABLE IF EXISTS {_load_table(stream)}")
                except duckdb.Error as exc:
                    first = first or exc
        if first is not None:
            raise first

    def _stage(self, stream: StreamTable, files: list[Path], index: int) -> str:
        """Parse staged batch files into a temporary table of the stream's columns.

        DuckDB parses straight into the typed columns, which is several times faster than
        extracting each column from JSON. A value of another type than the schema says (an API
        that sends "n/a" for a number) fails that parse; the batch is then parsed leniently,
        the value becoming NULL, as Airbyte destinations do.
        """
        table = f"_sluice_batch_{index}"
        sources = "[" + ", ".join(_literal(str(f)) for f in files) + "]"
        names = [*stream.columns, *META_COLUMNS]
        extracted_at = "to_timestamp({} / 1000.0)"
        typed_struct = ", ".join(f"{_ident(c)} {t}" for c, t in stream.columns.items())
        typed = [f"record.data.{_ident(c)}" for c in stream.columns]
        record_type = f"STRUCT(data STRUCT({typed_struct}), emitted_at DOUBLE)"
        lenient = []
        for column, kind in stream.columns.items():
            path = _literal('$.data."' + column.replace('"', '\\"') + '"')
            if kind == "JSON":
                lenient.append(f"json_extract(record, {path})")
            else:
                lenient.append(f"TRY_CAST(json_extract_string(record, {path}) AS {kind})")
        attempts = [
            (typed, record_type, extracted_at.format("record.emitted_at")),
            (
                lenient,
                "JSON",
                extracted_at.format("CAST(json_extract(record, '$.emitted_at') AS DOUBLE)"),
            ),
        ]
        for number, (columns, column_type, stamp) in enumerate(attempts):
            exprs = [*columns, "CAST(uuid() AS VARCHAR)", stamp]
            try:
                self._db.execute(
                    f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT "
                    + ", ".join(f"{e} AS {_ident(n)}" for e, n in zip(exprs, names, strict=True))
                    + f" FROM read_json({sources}, format = 'newline_delimited', "
                    f"columns = {{'record': {_literal(column_type)}}}, compression = 'gzip')"
                )
                break
            except (duckdb.InvalidInputException, duckdb.ConversionException):
                if number == len(attempts) - 1:
                    raise
        return table

    def _load(self, stream: StreamTable, batch: str) -> int:
        targets = ", ".join(_ident(c) for c in [*stream.columns, *META_COLUMNS])
        self._db.execute(
            f"INSERT INTO {_load_table(stream)} ({targets}) SELECT {targets} FROM {batch}"
        )
        count = self._db.execute(f"SELECT count(*) FROM {batch}").fetchone()
        if stream.mode == "append_dedup" and stream.primary_key:
            self._dedup(stream, batch)
        return int(count[0]) if count else 0

    def _dedup(self, stream: StreamTable, batch: str) -> None:
        """Keep one row per primary key: the latest cursor wins, then the latest extracted."""
        keys = ", ".join(_ident(k) for k in stream.primary_key)
        order = [f"{_ident(stream.cursor)} DESC NULLS LAST"] if stream.cursor else []
        order += ["_airbyte_extracted_at DESC", "rowid DESC"]
        self._db.execute(
            f"DELETE FROM {_load_table(stream)} WHERE rowid IN (SELECT rowid FROM ("
            f"SELECT rowid, row_number() OVER (PARTITION BY {keys} ORDER BY {', '.join(order)}) "
            f"AS rn FROM {_load_table(stream)} WHERE ({keys}) IN (SELECT {keys} FROM {batch})"
            ") WHERE rn > 1)"
        )


def _cleanup_step(what: str, step: Any, *, quiet: bool = False) -> None:
    """Run one cleanup step; a failure is logged (into the run's log, when one is active)
    and swallowed: it must never replace the error being handled."""
    try:
        step()
    except Exception as exc:
        if not quiet:
            log.warning(f"cleanup: {what} failed", error=f"{type(exc).__name__}: {exc}")
