"""The PostgreSQL destination.

One schema per connection (``[connections.destination] schema``, by default the connection's
id) holds one table per stream and the connection's committed state. A stream's table has the
stream's columns, typed from its JSON schema (nested values as ``jsonb``), plus
``_airbyte_raw_id`` (``uuid``) and ``_airbyte_extracted_at`` (``timestamptz``): the DuckDB
destination's tables, column for column, with PostgreSQL's types.

Loading. Each stream's staged batch files (gzip, one raw RECORD line each) are streamed with
``COPY`` into a temporary scratch table of lines, inside the commit's transaction; one
``INSERT ... SELECT`` then parses the lines (``jsonb``) and casts every value to its column's
type, in the server, so records never pass through Python a second time. A value of another
type than its column (an API that sends "n/a" for a number) becomes NULL for that row only: the
batch is first loaded with plain casts and, when one of them fails, loaded again (from a
savepoint) with casts that turn a value they cannot read into NULL. A line that is not JSON, or
whose ``emitted_at`` is no number, is refused (RecordsRefusedError), as DuckDB refuses it.

Transactions. A commit loads its batches, swaps in the run-scoped tables of replaced streams,
adds the run's counts, forgets a reset's states and upserts the STATE messages that cover the
batches, in one transaction: the state never runs ahead of its rows, nor behind them after a
crash (a worker killed between ``COPY`` and ``COMMIT`` leaves neither: PostgreSQL rolls back a
transaction whose client is gone, and the scratch tables are temporary).

Modes, as in the DuckDB destination: ``append`` keeps every record; ``overwrite`` (and a reset)
loads into a run-scoped table that replaces the live one in the run's final commit (``DROP`` and
``RENAME``: grants on the old table go with it, and a view that depends on it stops the swap
with DestinationTableChangedError); ``append_dedup`` keeps one row per primary key, the latest
cursor winning (NULLs last), then the latest ``_airbyte_extracted_at``, then the record loaded
last; records whose key has a NULL part are all kept. An append_dedup table gets an index on its
primary key (PostgreSQL names it), so that a commit reads only the rows of its batch's keys.

Names. Every identifier is quoted, so reserved words (``select``, ``user``) and odd characters
(quotes, dots, spaces, ``%``) are names like any other, and case is kept: ``Id`` and ``id`` are
two columns (DuckDB, whose names ignore case, keeps the first). A name PostgreSQL cannot hold as
it is (more than 63 bytes in UTF-8, empty, or with a NUL character) becomes its first 54 bytes
(cut on a character boundary, NULs removed), ``_`` and the first 8 hex digits of the SHA-256 of
the whole name (:func:`pg_name`): deterministic, at most 63 bytes, and two names that differ
anywhere stay apart. The rule applies to the schema, to tables and to columns. A stream's table
is named after the stream, or ``<namespace>.<name>`` (one identifier) when it has a namespace,
so that every table of a connection is in its schema; a run-scoped table is ``<that>__sluice_
<run>``, shortened by the same rule. A property whose column would be another's (after the
rule) or a metadata column's is not loaded, the first one kept; two streams of a run whose
tables would be one, or a stream whose table would be one of Sluice's own (``_sluice_state``,
``_sluice_run_counts``, ``_sluice_commits``), are refused (InvalidConnection).

Values. Text is read as PostgreSQL's ``jsonb`` reads it: a ``\\u0000`` in a string is dropped
(PostgreSQL text cannot hold NUL), and a string with a lone UTF-16 surrogate is refused. Casts
are PostgreSQL's own (``'yes'`` is true, ``3.7`` in an integer column is 4, a date-time without
an offset is UTC); dates and timestamps must start with a digit (``now`` and ``today`` are
NULL). A column whose type was changed since it was created is loaded with its current type when
that is one Sluice loads (text, varchar, bigint, double precision, boolean, date, timestamp,
timestamptz, json, jsonb).

Errors (each names the connection and the table or schema, never a value; what PostgreSQL said
goes into the run's log, but for a constraint's text, which quotes the row):
DestinationUnreachableError (retryable: the server cannot be reached, or the connection was
lost; what was not committed was rolled back), DestinationLoginError (the login was refused;
libpq tells it by the server's message only, so a server whose messages are not in English has
it reported as unreachable), DestinationPermissionError (a privilege is missing),
DestinationTableChangedError (a table was changed by hand: a column dropped, its type changed,
the table dropped, a constraint or a dependent view added), DestinationConfigError (no such
database, a database that is not UTF8, streams whose tables collide, a primary key that is not a
column).

The connection needs PostgreSQL 13 or newer (``gen_random_uuid``), a UTF8 database, CONNECT and
TEMPORARY on it, and CREATE on it unless the schema exists (then USAGE and CREATE on the schema).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import structlog
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from workers.connectors.protocol import state_key
from workers.destinations.base import DestinationError, RecordsRefusedError, StreamTable

log = structlog.get_logger(__name__)

STATE_TABLE = "_sluice_state"
COUNTS_TABLE = "_sluice_run_counts"
COMMITS_TABLE = "_sluice_commits"
INTERNAL_TABLES = (STATE_TABLE, COUNTS_TABLE, COMMITS_TABLE)
META_COLUMNS = {"_airbyte_raw_id": "uuid", "_airbyte_extracted_at": "timestamp with time zone"}
MAX_IDENTIFIER_BYTES = 63  # NAMEDATALEN - 1
_HASHED_HEAD_BYTES = MAX_IDENTIFIER_BYTES - 9  # room for "_" and 8 hex digits
_CONNECT_TIMEOUT_SECONDS = 10
_COPY_CHUNK = 1 << 20


# -- errors -------------------------------------------------------------------------------------


class DestinationUnreachableError(DestinationError):
    """PostgreSQL cannot be reached, or the connection to it was lost. Retryable: nothing that
    was not committed was kept, and the next attempt starts from the committed state."""

    kind = "DestinationUnreachable"
    retryable = True


class DestinationLoginError(DestinationError):
    """PostgreSQL refused the login (a wrong password, an unknown user, pg_hba)."""

    kind = "DestinationLoginRefused"


class DestinationPermissionError(DestinationError):
    """The destination's user lacks a privilege the load needs."""

    kind = "DestinationPermissionDenied"


class DestinationTableChangedError(DestinationError):
    """A table the run loads was changed by hand in a way the load cannot follow."""

    kind = "DestinationTableChanged"


class DestinationConfigError(DestinationError):
    """The destination is not one Sluice can load as configured."""

    kind = "InvalidConnection"


# -- names and types ----------------------------------------------------------------------------


def pg_name(name: str) -> str:
    """The identifier PostgreSQL holds for ``name``: the name itself when it fits (1 to 63 bytes
    of UTF-8, no NUL), else its first 54 bytes (whole characters, NULs removed), ``_`` and 8 hex
    digits of its SHA-256."""
    data = name.encode("utf-8", "surrogatepass")
    if 0 < len(data) <= MAX_IDENTIFIER_BYTES and "\x00" not in name:
        return name
    digest = hashlib.sha256(data).hexdigest()[:8]
    head = name.replace("\x00", "").encode("utf-8", "surrogatepass")[:_HASHED_HEAD_BYTES]
    return f"{head.decode('utf-8', 'ignore')}_{digest}"


def postgres_type(schema: dict[str, Any]) -> str:
    """Map one JSON-schema property to a PostgreSQL type, as the DuckDB destination maps it."""
    types = schema.get("type", "string")
    if isinstance(types, list):
        types = [t for t in types if t != "null"]
        if len(types) != 1:
            return "jsonb"
        types = types[0]
    airbyte_type = schema.get("airbyte_type")
    fmt = schema.get("format")
    if types == "string":
        if fmt == "date-time":
            if airbyte_type == "timestamp_without_timezone":
                return "timestamp without time zone"
            return "timestamp with time zone"
        if fmt == "date":
            return "date"
        return "text"
    return {"integer": "bigint", "number": "double precision", "boolean": "boolean"}.get(
        types, "jsonb"
    )


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# How a value's text becomes each type Sluice loads. Plain casts first (`{v}` is the text);
# the same expression in a function that turns a cast error into NULL when a batch holds a
# value its column cannot take. Dates must start with a digit, or PostgreSQL would read `now`.
_DIGIT_FIRST = "CASE WHEN ascii({v}) BETWEEN 48 AND 57 THEN ({v})::{t} END"
_CASTS: dict[str, str] = {
    "bigint": "round(({v})::numeric)::bigint",
    "double precision": "({v})::double precision",
    "boolean": "({v})::boolean",
    "date": _DIGIT_FIRST.replace("{t}", "date"),
    "timestamp with time zone": _DIGIT_FIRST.replace("{t}", "timestamp with time zone"),
    "timestamp without time zone": _DIGIT_FIRST.replace("{t}", "timestamp without time zone"),
}
_LENIENT = {kind: f"pg_temp._sluice_{kind.replace(' ', '_')}" for kind in _CASTS}
_TEXT_TYPES = ("text", "character varying")
_JSON_TYPES = ("jsonb", "json")
LOADED_TYPES = (*_TEXT_TYPES, *_CASTS, *_JSON_TYPES)

# A JSON escape of NUL (not an escaped backslash followed by "u0000"), which jsonb refuses.
_NUL_ESCAPE = r"(?<!\\)((\\\\)*)\\u0000"


class PostgresDestination:
    """A schema in a PostgreSQL database (``[connections.destination] dsn_env`` names the
    environment variable with the DSN); it holds the committed state too."""

    name = "PostgreSQL"

    def __init__(
        self,
        dsn: str,
        connection_id: str,
        schema: str | None = None,
        *,
        connect_timeout: int = _CONNECT_TIMEOUT_SECONDS,
    ) -> None:
        self.connection_id = connection_id
        self.schema = pg_name(schema or connection_id)
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.Error:
            # libpq's message may quote the DSN, password and all.
            raise DestinationConfigError(
                f"connection {connection_id!r}: the PostgreSQL destination's DSN is not a "
                "valid connection string"
            ) from None
        self.server = _server(params)
        self.user = str(params.get("user") or "")
        extra: dict[str, Any] = {}
        if "connect_timeout" not in params:
            extra["connect_timeout"] = connect_timeout
        if "application_name" not in params:
            extra["application_name"] = "sluice"
        try:
            self._db = psycopg.connect(dsn, autocommit=True, **extra)
        except psycopg.Error as exc:
            raise self._error(exc, "connecting", None) from exc
        try:
            self._set_up()
        except BaseException:
            _cleanup_step("closing the PostgreSQL destination", self._db.close)
            raise

    # -- the connection -------------------------------------------------------------------------

    def _set_up(self) -> None:
        """The session (UTC, the lenient casts as temporary functions), the schema and the
        state tables, created only when missing (so that a user with privileges on an existing
        schema only needs no more)."""
        with self._errors("setting up", None):
            encoding = self._db.info.parameter_status("server_encoding")
            if encoding != "UTF8":
                raise DestinationConfigError(
                    f"connection {self.connection_id!r}: PostgreSQL destination "
                    f"({self.server}): the database's encoding is {encoding}, not UTF8"
                )
            with self._db.cursor() as cur:
                cur.execute("SET TIME ZONE 'UTC'")
                cur.execute("SET standard_conforming_strings = on")
                cur.execute("SET DateStyle = 'ISO, YMD'")
                for kind, function in _LENIENT.items():
                    cur.execute(
                        f"CREATE OR REPLACE FUNCTION {function}(v text) RETURNS {kind} "
                        "LANGUAGE plpgsql STABLE AS $f$ BEGIN RETURN "
                        + _CASTS[kind].replace("{v}", "v")
                        + "; EXCEPTION WHEN data_exception THEN RETURN NULL; END $f$"
                    )
        with (
            self._errors("creating", self._schema_name()),
            self._db.transaction(),
            self._db.cursor() as cur,
        ):
            # Workers opening connections that share a schema create it once.
            cur.execute("SELECT pg_advisory_xact_lock(%s)", [_lock_key(self.schema)])
            cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [self.schema])
            if cur.fetchone() is None:
                cur.execute(f"CREATE SCHEMA {_ident(self.schema)}")
            if not self._exists(cur, STATE_TABLE):
                cur.execute(
                    f"CREATE TABLE {self._table(STATE_TABLE)} (connection_id text NOT NULL, "
                    "state_key text NOT NULL, state json NOT NULL, run_id text, "
                    "committed_at timestamptz NOT NULL DEFAULT now(), "
                    "PRIMARY KEY (connection_id, state_key))"
                )
            if not self._exists(cur, COUNTS_TABLE):
                cur.execute(
                    f"CREATE TABLE {self._table(COUNTS_TABLE)} (run_id text NOT NULL, "
                    "stream text NOT NULL, records bigint NOT NULL, "
                    "PRIMARY KEY (run_id, stream))"
                )
            if not self._exists(cur, COMMITS_TABLE):
                cur.execute(
                    f"CREATE TABLE {self._table(COMMITS_TABLE)} (commit_id text PRIMARY KEY, "
                    "committed_at timestamptz NOT NULL DEFAULT now())"
                )

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> PostgresDestination:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            self.close()
        else:
            _cleanup_step("closing the PostgreSQL destination", self.close)

    # -- what the engine asks -------------------------------------------------------------------

    def columns(self, properties: Mapping[str, Any]) -> dict[str, str]:
        """Columns from a stream's JSON schema. Names are kept as they are (case included);
        a property whose column name (pg_name) is taken by an earlier one or by a metadata
        column is left out."""
        columns: dict[str, str] = {}
        taken = set(META_COLUMNS)
        for name, schema in properties.items():
            column = pg_name(name)
            if column not in taken:
                taken.add(column)
                columns[name] = postgres_type(schema if isinstance(schema, dict) else {})
        return columns

    def committed_state(self) -> list[dict[str, Any]]:
        with self._errors("reading", self._table_name(STATE_TABLE)), self._db.cursor() as cur:
            cur.execute(
                sql.SQL(
                    "SELECT state::text FROM {} WHERE connection_id = %s "
                    'ORDER BY state_key COLLATE "C"'
                ).format(sql.Identifier(self.schema, STATE_TABLE)),
                [self.connection_id],
            )
            return [json.loads(row[0]) for row in cur.fetchall()]

    def run_counts(self, run_id: str) -> dict[str, int]:
        """Records committed so far by a run (all its attempts), per stream key."""
        with self._errors("reading", self._table_name(COUNTS_TABLE)), self._db.cursor() as cur:
            cur.execute(
                sql.SQL("SELECT stream, records FROM {} WHERE run_id = %s").format(
                    sql.Identifier(self.schema, COUNTS_TABLE)
                ),
                [run_id],
            )
            return {str(stream): int(records) for stream, records in cur.fetchall()}

    def committed_ids(self, run_id: str) -> set[str]:
        """The ids of the commits of a run's journal that are done."""
        with self._errors("reading", self._table_name(COMMITS_TABLE)), self._db.cursor() as cur:
            cur.execute(
                sql.SQL("SELECT commit_id FROM {} WHERE starts_with(commit_id, %s)").format(
                    sql.Identifier(self.schema, COMMITS_TABLE)
                ),
                [run_id + "/"],
            )
            return {str(row[0]) for row in cur.fetchall()}

    def prepare(self, streams: Sequence[StreamTable], run_id: str = "") -> None:
        """Create the tables and their new columns (a column dropped by hand comes back, as in
        DuckDB); start each replacing stream's run-scoped table afresh, and its count."""
        self._check_names(streams)
        for stream in streams:
            table = self._load_name(stream)
            with (
                self._errors("preparing", self._table_name(table)),
                self._db.transaction(),
                self._db.cursor() as cur,
            ):
                if stream.replace:
                    cur.execute(
                        sql.SQL("DELETE FROM {} WHERE run_id = %s AND stream = %s").format(
                            sql.Identifier(self.schema, COUNTS_TABLE)
                        ),
                        [run_id, stream.key],
                    )
                    cur.execute(f"DROP TABLE IF EXISTS {self._table(table)}")
                wanted = {c: kind for _, c, kind in _stream_columns(stream)}
                wanted.update(META_COLUMNS)
                existing = self._column_types(cur, table)
                if existing is None:
                    ddl = ", ".join(f"{_ident(c)} {kind}" for c, kind in wanted.items())
                    cur.execute(f"CREATE TABLE {self._table(table)} ({ddl})")
                else:
                    for column, kind in wanted.items():
                        if column not in existing:
                            cur.execute(
                                f"ALTER TABLE {self._table(table)} "
                                f"ADD COLUMN {_ident(column)} {kind}"
                            )
                if stream.mode == "append_dedup" and stream.primary_key:
                    self._index_key(cur, table, self._key_columns(stream))

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
        journal entry this commit carries out, noted in the same transaction. Returns the
        number of rows loaded. Raises RecordsRefusedError when records of a batch cannot be
        read (nothing of the commit is kept).
        """
        loaded = 0
        doing, table = "committing to", self._table_name(STATE_TABLE)
        with (
            self._errors_of(lambda: (doing, table)),
            self._db.transaction(),
            self._db.cursor() as cur,
        ):
            for index, (key, files) in enumerate(batches.items()):
                if files:
                    stream = streams[key]
                    doing, table = "loading", self._table_name(self._load_name(stream))
                    loaded += self._load(cur, stream, files, index)
            for stream in replace:
                doing, table = "replacing", self._table_name(self._live_name(stream))
                cur.execute(f"DROP TABLE IF EXISTS {self._table(self._live_name(stream))}")
                cur.execute(
                    f"ALTER TABLE {self._table(self._load_name(stream))} "
                    f"RENAME TO {_ident(self._live_name(stream))}"
                )
            doing, table = "committing to", self._table_name(COUNTS_TABLE)
            for key, count in (counts or {}).items():
                cur.execute(
                    sql.SQL(
                        "INSERT INTO {} AS c (run_id, stream, records) VALUES (%s, %s, %s) "
                        "ON CONFLICT (run_id, stream) "
                        "DO UPDATE SET records = c.records + excluded.records"
                    ).format(sql.Identifier(self.schema, COUNTS_TABLE)),
                    [run_id, key, count],
                )
            table = self._table_name(STATE_TABLE)
            for key in forget:
                cur.execute(
                    sql.SQL("DELETE FROM {} WHERE connection_id = %s AND state_key = %s").format(
                        sql.Identifier(self.schema, STATE_TABLE)
                    ),
                    [self.connection_id, key],
                )
            for state in states:
                self._write_state(cur, state, run_id)
            if commit_id is not None:
                table = self._table_name(COMMITS_TABLE)
                cur.execute(
                    sql.SQL("INSERT INTO {} (commit_id) VALUES (%s)").format(
                        sql.Identifier(self.schema, COMMITS_TABLE)
                    ),
                    [commit_id],
                )
        return loaded

    def discard(self, streams: Iterable[StreamTable]) -> None:
        """Drop the run-scoped tables of a run that will not complete: each one is tried, and
        the first failure is raised once all were."""
        first: Exception | None = None
        for stream in streams:
            if stream.replace:
                table = self._load_name(stream)
                try:
                    with self._errors("dropping", self._table_name(table)):
                        self._db.execute(f"DROP TABLE IF EXISTS {self._table(table)}")
                except Exception as exc:
                    first = first or exc
        if first is not None:
            raise first

    # -- loading --------------------------------------------------------------------------------

    def _write_state(self, cur: psycopg.Cursor[Any], state: dict[str, Any], run_id: str) -> None:
        cur.execute(
            sql.SQL(
                "INSERT INTO {} (connection_id, state_key, state, run_id, committed_at) "
                "VALUES (%s, %s, %s::json, %s, now()) ON CONFLICT (connection_id, state_key) "
                "DO UPDATE SET state = excluded.state, run_id = excluded.run_id, "
                "committed_at = excluded.committed_at"
            ).format(sql.Identifier(self.schema, STATE_TABLE)),
            [self.connection_id, state_key(state), json.dumps(state), run_id],
        )

    def _load(
        self, cur: psycopg.Cursor[Any], stream: StreamTable, files: list[Path], index: int
    ) -> int:
        """COPY one stream's batch files into a scratch table, then insert (and for
        append_dedup, merge) its rows into the stream's table. Returns the records loaded."""
        table = self._load_name(stream)
        columns = self._typed_columns(cur, stream, table)
        dedup = stream.mode == "append_dedup" and bool(stream.primary_key)
        scratch = f"pg_temp._sluice_batch_{index}"
        order = " n bigint GENERATED ALWAYS AS IDENTITY," if dedup else ""
        cur.execute(f"CREATE TEMP TABLE _sluice_batch_{index} ({order} line text) ON COMMIT DROP")
        try:
            nul = self._copy(cur, scratch, files)
        except psycopg.DataError as exc:  # not UTF-8, a line COPY cannot split
            raise RecordsRefusedError(self.name, exc) from exc
        target = self._table(table)
        names = ", ".join(_ident(c) for c in [*(c for _, c, _ in columns), *META_COLUMNS])
        if not dedup:
            return self._lenient(
                cur,
                lambda lenient: (
                    f"INSERT INTO {target} ({names}) "
                    + _select(columns, scratch, lenient=lenient, nul=nul)
                ),
            )
        typed = f"pg_temp._sluice_typed_{index}"
        helper = _unused("_sluice_row", {c for _, c, _ in columns})
        loaded = self._lenient(
            cur,
            lambda lenient: (
                f"CREATE TEMP TABLE _sluice_typed_{index} ON COMMIT DROP AS "
                + _select(columns, scratch, f"b.n AS {_ident(helper)}", lenient=lenient, nul=nul)
            ),
        )
        self._merge(cur, stream, target, typed, helper, columns)
        return loaded

    def _copy(self, cur: psycopg.Cursor[Any], scratch: str, files: list[Path]) -> bool:
        """Stream the files' lines into the scratch table. CSV with a delimiter and a quote
        that JSON text never holds raw (\\x02, \\x01) takes each line as it is; a carriage
        return, which JSON only allows as whitespace between tokens, is removed. Returns
        whether a line may hold a ``\\u0000`` escape (which jsonb refuses)."""
        nul = False
        with cur.copy(
            f"COPY {scratch} (line) FROM STDIN (FORMAT csv, DELIMITER E'\\x02', QUOTE E'\\x01')"
        ) as copy:
            for path in files:
                with gzip.open(path, "rb") as staged:
                    last = b"\n"
                    while chunk := staged.read(_COPY_CHUNK):
                        nul = nul or b"\\u0000" in last[-5:] + chunk
                        copy.write(chunk.replace(b"\r", b""))
                        last = chunk
                    if not last.endswith(b"\n"):
                        copy.write(b"\n")
        return nul

    def _lenient(self, cur: psycopg.Cursor[Any], statement: Callable[[bool], str]) -> int:
        """Run a load statement with plain casts; should a value not cast, run it again (from a
        savepoint) with the casts that make such a value NULL. A line that still fails (not
        JSON, an ``emitted_at`` that is no number) refuses the batch. Returns the rows."""
        try:
            with self._db.transaction():
                cur.execute(statement(False))
            return cur.rowcount
        except psycopg.DataError:
            pass
        try:
            cur.execute(statement(True))
        except psycopg.DataError as exc:
            raise RecordsRefusedError(self.name, exc) from exc
        return cur.rowcount

    def _merge(
        self,
        cur: psycopg.Cursor[Any],
        stream: StreamTable,
        target: str,
        typed: str,
        helper: str,
        columns: list[tuple[str, str, str]],
    ) -> None:
        """append_dedup: insert the batch's latest record per key (every record whose key has
        a NULL part), then keep one row per key of the batch: the latest cursor (NULLs last),
        then the latest extracted, then the batch's row over an older one."""
        keys = [_ident(k) for k in self._key_columns(stream)]
        present = {c for _, c, _ in columns}
        cursor = pg_name(stream.cursor) if stream.cursor else None
        order = [f"{_ident(cursor)} DESC NULLS LAST"] if cursor in present else []
        key_list = ", ".join(keys)
        names = ", ".join(_ident(c) for c in [*(c for _, c, _ in columns), *META_COLUMNS])
        rank = _unused("_sluice_rank", present | {helper})
        latest = ", ".join([*order, "_airbyte_extracted_at DESC", f"{_ident(helper)} DESC"])
        no_key = " OR ".join(f"{k} IS NULL" for k in keys)
        cur.execute(
            f"INSERT INTO {target} ({names}) SELECT {names} FROM (SELECT {names}, row_number() "
            f"OVER (PARTITION BY {key_list} ORDER BY {latest}) AS {_ident(rank)} FROM {typed}) "
            f"AS s WHERE {_ident(rank)} = 1 OR {no_key}"
        )
        # The batch's rows are told from older ones by their raw ids (a join, which spills to
        # disk when it must, never a per-row subquery).
        old = ", ".join(f"o.{k}" for k in keys)
        newest = ", ".join(
            [
                *(f"o.{o}" for o in order),
                "o._airbyte_extracted_at DESC",
                "(n._airbyte_raw_id IS NOT NULL) DESC",
                "o.ctid DESC",
            ]
        )
        cur.execute(
            f"DELETE FROM {target} AS t USING (SELECT o.ctid AS c, row_number() OVER "
            f"(PARTITION BY {old} ORDER BY {newest}) AS rn FROM {target} AS o "
            f"LEFT JOIN {typed} AS n ON n._airbyte_raw_id = o._airbyte_raw_id "
            f"WHERE ({old}) IN (SELECT {key_list} FROM {typed})) AS d "
            "WHERE t.ctid = d.c AND d.rn > 1"
        )

    def _key_columns(self, stream: StreamTable) -> list[str]:
        """The columns of an append_dedup stream's primary key: each must be a column."""
        present = {column for _, column, _ in _stream_columns(stream)}
        missing = [k for k in stream.primary_key if pg_name(k) not in present]
        if missing:
            raise DestinationConfigError(
                f"connection {self.connection_id!r}: {_described(stream)}: primary key "
                f"{missing} is not a column of the stream's schema, so append_dedup cannot keep "
                "one row per key"
            )
        return [pg_name(k) for k in stream.primary_key]

    def _index_key(self, cur: psycopg.Cursor[Any], table: str, keys: list[str]) -> None:
        """An index on an append_dedup table's primary key (unless one is there), so that a
        commit finds the rows of its batch's keys without reading the whole table."""
        cur.execute(
            "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s AND i.indexprs IS NULL "
            "AND i.indpred IS NULL AND ARRAY(SELECT a.attname::text "
            "FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(num, ord) "
            "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.num "
            "ORDER BY k.ord) = %s::text[]",
            [self.schema, table, keys],
        )
        if cur.fetchone() is None:
            columns = ", ".join(_ident(k) for k in keys)
            cur.execute(f"CREATE INDEX ON {self._table(table)} ({columns})")

    def _typed_columns(
        self, cur: psycopg.Cursor[Any], stream: StreamTable, table: str
    ) -> list[tuple[str, str, str]]:
        """(property, column, the column's type in the table now) of a stream's columns: a
        column dropped, or changed to a type Sluice does not load, since `prepare` is a table
        changed by hand."""
        existing = self._column_types(cur, table)
        if existing is None:
            raise DestinationTableChangedError(
                f"connection {self.connection_id!r}: PostgreSQL table {self._table_name(table)} "
                "does not exist: it was dropped while the run loaded it; the commit was rolled "
                "back"
            )
        typed = []
        for prop, column, _declared in _stream_columns(stream):
            kind = existing.get(column)
            if kind is None or kind not in LOADED_TYPES:
                what = "is missing (dropped by hand?)" if kind is None else f"is {kind}"
                raise DestinationTableChangedError(
                    f"connection {self.connection_id!r}: PostgreSQL table "
                    f"{self._table_name(table)}: column {_ident(column)} {what}, which Sluice "
                    f"cannot load (it loads {', '.join(LOADED_TYPES)}); the commit was rolled "
                    "back"
                )
            typed.append((prop, column, kind))
        for column in META_COLUMNS:
            if column not in existing:
                raise DestinationTableChangedError(
                    f"connection {self.connection_id!r}: PostgreSQL table "
                    f"{self._table_name(table)}: column {_ident(column)} is missing (dropped by "
                    "hand?); the commit was rolled back"
                )
        return typed

    # -- names ----------------------------------------------------------------------------------

    def _live_name(self, stream: StreamTable) -> str:
        return pg_name(stream.key)

    def _load_name(self, stream: StreamTable) -> str:
        if not stream.replace:
            return self._live_name(stream)
        return pg_name(f"{stream.key}__sluice_{stream.run_suffix}")

    def _table(self, table: str) -> str:
        """The table's qualified name, for SQL."""
        return f"{_ident(self.schema)}.{_ident(table)}"

    def _table_name(self, table: str) -> str:
        """The table's name in messages (the same text)."""
        return self._table(table)

    def _schema_name(self) -> str:
        return f"schema {_ident(self.schema)}"

    def _check_names(self, streams: Sequence[StreamTable]) -> None:
        """Two streams whose tables would be one, or a stream whose table would be one of
        Sluice's own, are refused."""
        seen: dict[str, StreamTable] = {}
        for stream in streams:
            for table in {self._live_name(stream), self._load_name(stream)}:
                other = seen.setdefault(table, stream)
                if table in INTERNAL_TABLES:
                    clash = "one of Sluice's own"
                elif (other.namespace, other.name) != (stream.namespace, stream.name):
                    clash = f"{_described(other)}'s too"
                else:
                    continue
                raise DestinationConfigError(
                    f"connection {self.connection_id!r}: {_described(stream)} would load into "
                    f"PostgreSQL table {self._table_name(table)}, which is {clash}"
                )

    def _exists(self, cur: psycopg.Cursor[Any], table: str) -> bool:
        cur.execute("SELECT to_regclass(%s)", [self._table(table)])
        row = cur.fetchone()
        return row is not None and row[0] is not None

    def _column_types(self, cur: psycopg.Cursor[Any], table: str) -> dict[str, str] | None:
        """The table's columns and their types (format_type), or None when it does not exist."""
        cur.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 "
            "AND NOT a.attisdropped WHERE n.nspname = %s AND c.relname = %s "
            "AND c.relkind IN ('r', 'p')",
            [self.schema, table],
        )
        rows = cur.fetchall()
        if not rows:
            return None
        return {str(name): str(kind) for name, kind in rows if name is not None}

    # -- errors ---------------------------------------------------------------------------------

    @contextmanager
    def _errors(self, doing: str, subject: str | None) -> Iterator[None]:
        with self._errors_of(lambda: (doing, subject)):
            yield

    @contextmanager
    def _errors_of(self, where: Callable[[], tuple[str, str | None]]) -> Iterator[None]:
        """Turn a driver error into the destination error that says what went wrong, naming
        the connection and ``where()``: (what was being done, the table or schema)."""
        try:
            yield
        except psycopg.Error as exc:
            doing, subject = where()
            raise self._error(exc, doing, subject) from exc

    def _error(self, exc: psycopg.Error, doing: str, subject: str | None) -> Exception:
        """The error to raise for a driver error: one of the destination's own when it is one
        of the failures they name (what PostgreSQL said is logged, into the run's log: its
        text, unless it may quote values, as a constraint's does), else the driver's own (the
        activity reports its kind only, and keeps its text in the run's log)."""
        state = exc.sqlstate or (_connect_failure(exc) if doing == "connecting" else "")
        mapped = self._mapped(exc, state, doing, subject)
        if mapped is not exc:
            detail: dict[str, Any] = {"sqlstate": exc.sqlstate}
            if state.startswith("23"):
                detail["constraint"] = exc.diag.constraint_name
            else:
                detail["error"] = f"{type(exc).__name__}: {exc}"
            log.warning(
                f"PostgreSQL destination: {doing} {subject or self.server} failed", **detail
            )
        return mapped

    def _mapped(self, exc: psycopg.Error, state: str, doing: str, subject: str | None) -> Exception:
        where = f"connection {self.connection_id!r}: PostgreSQL destination ({self.server})"
        what = f" {subject}" if subject else ""
        cause = f"{type(exc).__name__}{', SQLSTATE ' + exc.sqlstate if exc.sqlstate else ''}"
        broken = getattr(self, "_db", None) is not None and self._db.broken
        if state.startswith("28"):
            return DestinationLoginError(
                f"{where}: the login of user {self.user or '(default)'!r} was refused ({cause})"
            )
        if state == "3D000":
            return DestinationConfigError(f"{where}: the database does not exist ({cause})")
        if state == "42501":
            return DestinationPermissionError(
                f"{where}: permission denied {doing}{what}; grant the destination's user the "
                f"privileges it needs ({cause})"
            )
        if state in _TABLE_CHANGED or state.startswith("23"):
            why = _TABLE_CHANGED.get(state, "a constraint added by hand refuses its rows")
            return DestinationTableChangedError(
                f"{where}: {doing}{what}: {why}; the commit was rolled back ({cause})"
            )
        if (
            broken
            or state.startswith(("08", "57P"))
            or (isinstance(exc, psycopg.OperationalError) and not state)
        ):
            kept = "" if doing == "connecting" else "; what was not committed was rolled back"
            return DestinationUnreachableError(
                f"{where}: unreachable or lost while {doing}{what}{kept} ({cause})"
            )
        return exc


# libpq reports a refused connection by its text only (no SQLSTATE): the server's messages, in
# English (lc_messages), of the failures that retrying cannot mend. Any other failure to
# connect is taken for an unreachable server, and retried.
_CONNECT_FAILURES = (
    (re.compile(r"password authentication failed|authentication failed for user"), "28P01"),
    (re.compile(r'no pg_hba\.conf entry|role "[^"]*" does not exist'), "28000"),
    (re.compile(r'database "[^"]*" does not exist'), "3D000"),
)


def _connect_failure(exc: psycopg.Error) -> str:
    """The SQLSTATE of a refused connection, as far as its text tells (see above)."""
    text = str(exc)
    for pattern, state in _CONNECT_FAILURES:
        if pattern.search(text):
            return state
    pgconn = getattr(exc, "pgconn", None)
    if pgconn is not None and pgconn.needs_password:
        return "28P01"
    return ""


_TABLE_CHANGED = {
    "42703": "a column it loads is missing (dropped by hand?)",
    "42P01": "a table it loads does not exist (dropped by hand?)",
    "42804": "a column's type was changed by hand",
    "2BP01": "other objects (a view?) depend on the table, so it cannot be replaced",
    "42P07": "another relation (a view, an index?) has its name",
}


def _select(
    columns: list[tuple[str, str, str]], scratch: str, *extra: str, lenient: bool, nul: bool
) -> str:
    """SELECT the typed values of the scratch table's lines: with plain casts, or ``lenient``
    ones that make a value they cannot read NULL; ``nul``: lines may hold ``\\u0000`` escapes,
    which are removed."""
    defs: list[str] = []
    exprs: list[str] = []
    for prop, column, kind in columns:
        json_value = kind in _JSON_TYPES
        if column == prop:  # read by jsonb_to_record, all at once
            defs.append(f"{_ident(prop)} {'jsonb' if json_value else 'text'}")
            value = f"x.{_ident(prop)}"
        elif json_value:  # a name jsonb_to_record cannot hold: read by key
            value = f"NULLIF(j.r->'record'->'data'->{_literal(_key(prop))}, 'null'::jsonb)"
        else:
            value = f"(j.r->'record'->'data'->>{_literal(_key(prop))})"
        if kind in _CASTS:
            template = f"{_LENIENT[kind]}({{v}})" if lenient else _CASTS[kind]
            value = template.replace("{v}", value)
        exprs.append(f"({value})::{kind} AS {_ident(column)}")
    exprs.append("gen_random_uuid() AS _airbyte_raw_id")
    exprs.append(
        "to_timestamp((j.r->'record'->>'emitted_at')::double precision / 1000) "
        "AS _airbyte_extracted_at"
    )
    exprs.extend(extra)
    line = "b.line"
    if nul:
        line = (
            "CASE WHEN strpos(b.line, '\\u0000') > 0 THEN "
            f"regexp_replace(b.line, {_literal(_NUL_ESCAPE)}, '\\1', 'g') ELSE b.line END"
        )
    source = f"FROM {scratch} AS b CROSS JOIN LATERAL (SELECT ({line})::jsonb AS r OFFSET 0) AS j"
    if defs:
        source += (
            " LEFT JOIN LATERAL jsonb_to_record(j.r->'record'->'data') "
            f"AS x({', '.join(defs)}) ON true"
        )
    return f"SELECT {', '.join(exprs)} {source} WHERE b.line IS NOT NULL"


def _stream_columns(stream: StreamTable) -> list[tuple[str, str, str]]:
    """(property, column, declared type) of a stream's columns, as `columns` keeps them."""
    seen = set(META_COLUMNS)
    columns = []
    for prop, kind in stream.columns.items():
        column = pg_name(prop)
        if column not in seen:
            seen.add(column)
            columns.append((prop, column, kind))
    return columns


def _described(stream: StreamTable) -> str:
    namespace = f" (namespace {stream.namespace!r})" if stream.namespace else ""
    return f"stream {stream.name!r}{namespace}"


def _key(prop: str) -> str:
    """A property's key in the parsed record (jsonb drops NUL, as the line's text did)."""
    return prop.replace("\x00", "")


def _unused(name: str, taken: set[str]) -> str:
    while name in taken:
        name += "_"
    return name


def _lock_key(schema: str) -> int:
    return int.from_bytes(
        hashlib.sha256(f"sluice:{schema}".encode()).digest()[:8], "big", signed=True
    )


def _server(params: Mapping[str, Any]) -> str:
    """Where the DSN points, for messages: host, port and database, never the password."""
    host = str(params.get("host") or params.get("hostaddr") or "local socket")
    port = params.get("port")
    database = params.get("dbname") or params.get("user") or ""
    return f"{host}{':' + str(port) if port else ''}/{database}"


def _cleanup_step(what: str, step: Any) -> None:
    """Run one cleanup step; a failure is logged (into the run's log, when one is active)
    and swallowed: it must never replace the error being handled."""
    try:
        step()
    except Exception as exc:
        log.warning(f"cleanup: {what} failed", error=f"{type(exc).__name__}: {exc}")
