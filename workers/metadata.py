"""The metadata store: the only thing Sluice retains about a connection.

Configuration metadata (streams, columns, sync modes, cursor *field names*, primary keys), run
outcomes, purge receipts and where each run's scrubbed log is retained. Never a record value,
cursor value, state blob or secret. SQLAlchemy Core, so that SQLite (default) and PostgreSQL both
work. Every write is an upsert keyed by its natural id, so a retried activity writes nothing twice.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection as DBConnection
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from purge.receipts import PurgeReceipt
from workers.shredding import new_data_key

metadata = MetaData()

connections = Table(
    "connections",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("name", String(256), nullable=False),
    Column("backend", String(32), nullable=False),
    Column("source_type", String(128), nullable=False),
    Column("destination_type", String(128), nullable=False),
    Column("schedule", String(128)),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

streams = Table(
    "streams",
    metadata,
    Column("connection_id", String(128), primary_key=True),
    Column("namespace", String(256), primary_key=True),
    Column("name", String(256), primary_key=True),
    Column("sync_mode", String(32), nullable=False),
    Column("destination_mode", String(32), nullable=False),
    Column("cursor_field", JSON, nullable=False),
    Column("primary_key", JSON, nullable=False),
    Column("columns", JSON, nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("connection_id", String(128), nullable=False, index=True),
    Column("workflow_id", String(256), nullable=False),
    Column("status", String(32), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=False),
    Column("duration_seconds", Float, nullable=False),
    Column("incremental", Boolean, nullable=False, default=False),
    Column("records", Integer, nullable=False, default=0),
    Column("records_by_stream", JSON, nullable=False),
    Column("bytes_staged", Integer, nullable=False, default=0),
    Column("redactions", JSON, nullable=False),
    Column("receipt_id", String(128)),
    Column("error", Text),
    Column("staging_target", Text),
    Column("staging_swept_at", DateTime(timezone=True)),
    # The run's data reached the destination: its kept staging has nothing left to replay and
    # is swept at once, not after the failed-staging TTL.
    Column("committed", Boolean),
    Column("warnings", JSON),
    # sync | replay (NULL in rows written before replays existed: a sync)
    Column("kind", String(16)),
    Column("reset", Boolean),
    Column("replay_of", String(64)),  # a replay: the failed run it finished
    Column("replayed_by", String(64)),  # a failed run: the replay that finished it
)

purge_receipts = Table(
    "purge_receipts",
    metadata,
    Column("receipt_id", String(128), primary_key=True),
    Column("run_id", String(64), index=True),
    Column("target", Text, nullable=False),
    Column("dry_run", Boolean, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=False),
    Column("objects_deleted", Integer, nullable=False),
    Column("versions_deleted", Integer, nullable=False),
    Column("bytes_deleted", Integer, nullable=False),
    Column("manifest_sha256", String(64), nullable=False),
    Column("remaining", Integer, nullable=False),
    Column("objects_failed", Integer, nullable=False, default=0),
    Column("delete_calls", Integer, nullable=False, default=0),
    Column("objects_deleted_before_resume", Integer, nullable=False, default=0),
    Column("retries", Integer, nullable=False, default=0),
    Column("throttles", Integer, nullable=False, default=0),
    Column("recoverable_until", DateTime(timezone=True)),
    Column("verified_empty", Boolean, nullable=False),
    Column("data_key_destroyed", Boolean),
    Column("failures", JSON, nullable=False),
    Column("store_settings", JSON, nullable=False),
)

retained_logs = Table(
    "retained_logs",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("connection_id", String(128), nullable=False, index=True),
    Column("uri", Text, nullable=False),
    Column("lines", Integer, nullable=False),
    Column("redactions", JSON, nullable=False),
    Column("retained_at", DateTime(timezone=True), nullable=False),
)

connection_locks = Table(
    "connection_locks",
    metadata,
    Column("connection_id", String(128), primary_key=True),
    Column("run_id", String(64), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    # What is needed to finish the run's record if its workflow ends without doing so
    # (terminated, or its worker gone for good): see `finish_abandoned_run`.
    Column("workflow_id", String(256)),
    Column("staging_target", Text),
    Column("taken_at", DateTime(timezone=True)),
)

# Each run's staging key (workers/shredding.py): a key is not data. Destroyed (set NULL, with
# the time) once nothing needs the run's staging: every copy of it is then unreadable.
staging_keys = Table(
    "staging_keys",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("connection_id", String(128), nullable=False),
    Column("data_key", String(64)),  # base64 of 32 bytes; NULL once destroyed
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("destroyed_at", DateTime(timezone=True)),
)

catalogs = Table(
    "catalogs",
    metadata,
    Column("connection_id", String(128), primary_key=True),
    Column("source_fingerprint", String(64), nullable=False),
    Column("catalog", JSON, nullable=False),
    Column("spec", JSON),
    Column("discovered_at", DateTime(timezone=True), nullable=False),
)


# Any fixed number: the advisory lock that serialises creating the schema across workers.
_SCHEMA_LOCK = 7_311_431_001


def _now() -> datetime:
    return datetime.now(UTC)


def _utc_stamp(stamp: datetime) -> datetime:
    # SQLite hands timestamps back without their zone; they were written in UTC.
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp


def _destroyed(run_id: str) -> bytes:
    raise KeyError(f"the staging key of run {run_id} was destroyed")


def _utc(row: dict[str, Any]) -> dict[str, Any]:
    return {k: _utc_stamp(v) if isinstance(v, datetime) else v for k, v in row.items()}


class MetadataStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        with engine.begin() as db:
            if db.dialect.name == "postgresql":
                # The workers of a fleet start together against one store: one creates or
                # upgrades the schema while the others wait for it (CREATE TABLE IF NOT EXISTS
                # alone races on PostgreSQL's catalog).
                db.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
            metadata.create_all(db)
            self._add_missing_columns(db)

    @staticmethod
    def _add_missing_columns(db: DBConnection) -> None:
        """Columns added since a store was created are added to it (nullable: old rows have
        no value), so an upgraded worker runs against the store an older one left."""
        inspector = inspect(db)
        for table in metadata.sorted_tables:
            present = {c["name"] for c in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name not in present:
                    kind = column.type.compile(dialect=db.dialect)
                    db.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))

    @classmethod
    def from_url(cls, url: str) -> MetadataStore:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return cls(create_engine(url, future=True))

    @staticmethod
    def _upsert(
        db: DBConnection, table: Table, key: Mapping[str, Any], row: Mapping[str, Any]
    ) -> None:
        # Delete-then-insert in one transaction: portable across SQLite and PostgreSQL.
        condition = [table.c[name] == value for name, value in key.items()]
        db.execute(delete(table).where(*condition))
        db.execute(insert(table).values({**key, **row}))

    def retain_connection(
        self,
        *,
        connection_id: str,
        name: str,
        backend: str,
        source_type: str,
        destination_type: str,
        schedule: str | None,
        stream_rows: Sequence[Mapping[str, Any]],
    ) -> None:
        """Replace the connection's metadata with what this run saw."""
        with self.engine.begin() as db:
            self._upsert(
                db,
                connections,
                {"id": connection_id},
                {
                    "name": name,
                    "backend": backend,
                    "source_type": source_type,
                    "destination_type": destination_type,
                    "schedule": schedule,
                    "updated_at": _now(),
                },
            )
            for row in stream_rows:
                self._upsert(
                    db,
                    streams,
                    {
                        "connection_id": connection_id,
                        "namespace": row.get("namespace") or "",
                        "name": row["name"],
                    },
                    {k: v for k, v in row.items() if k not in {"namespace", "name"}},
                )

    def record_run(self, row: Mapping[str, Any]) -> None:
        with self.engine.begin() as db:
            self._upsert(
                db, runs, {"run_id": row["run_id"]}, {k: v for k, v in row.items() if k != "run_id"}
            )

    def staging_key(self, run_id: str, connection_id: str) -> bytes:
        """The run's staging key, created by its first attempt (every attempt and a replay of
        the run read the same one). Raises KeyError when it was destroyed."""
        with self.engine.begin() as db:
            row = db.execute(
                select(staging_keys.c.data_key).where(staging_keys.c.run_id == run_id)
            ).first()
            if row is None:
                key = new_data_key()
                try:
                    db.execute(
                        insert(staging_keys).values(
                            run_id=run_id,
                            connection_id=connection_id,
                            data_key=base64.b64encode(key).decode(),
                            created_at=_now(),
                        )
                    )
                    return key
                except IntegrityError:
                    return self.existing_staging_key(run_id) or _destroyed(run_id)
        return base64.b64decode(row[0]) if row[0] is not None else _destroyed(run_id)

    def existing_staging_key(self, run_id: str) -> bytes | None:
        """The run's staging key if it exists and was not destroyed (never creates one)."""
        with self.engine.connect() as db:
            row = db.execute(
                select(staging_keys.c.data_key).where(staging_keys.c.run_id == run_id)
            ).first()
        return base64.b64decode(row[0]) if row and row[0] is not None else None

    def destroy_staging_key(self, run_id: str) -> bool:
        """Destroy the run's staging key; True when the run has no key left (destroyed now or
        before), False when it never had one (its staging was not sealed by Sluice)."""
        with self.engine.begin() as db:
            found = db.execute(
                update(staging_keys)
                .where(staging_keys.c.run_id == run_id)
                .values(
                    data_key=None, destroyed_at=func.coalesce(staging_keys.c.destroyed_at, _now())
                )
            )
            return found.rowcount > 0

    def mark_replayed(self, run_id: str, replay_run_id: str) -> None:
        """A failed run was finished by a replay: its staging is purged with the replay's."""
        with self.engine.begin() as db:
            db.execute(
                update(runs)
                .where(runs.c.run_id == run_id)
                .values(replayed_by=replay_run_id, staging_swept_at=_now())
            )

    def record_receipt(self, receipt: PurgeReceipt, run_id: str | None) -> None:
        row = receipt.model_dump()
        row["run_id"] = run_id
        with self.engine.begin() as db:
            self._upsert(
                db,
                purge_receipts,
                {"receipt_id": receipt.receipt_id},
                {k: v for k, v in row.items() if k != "receipt_id" and k in purge_receipts.c},
            )

    def record_retained_log(
        self,
        *,
        run_id: str,
        attempt: int,
        connection_id: str,
        uri: str,
        lines: int,
        redactions: dict[str, int],
    ) -> None:
        with self.engine.begin() as db:
            self._upsert(
                db,
                retained_logs,
                {"run_id": run_id, "attempt": attempt},
                {
                    "connection_id": connection_id,
                    "uri": uri,
                    "lines": lines,
                    "redactions": redactions,
                    "retained_at": _now(),
                },
            )

    def cached_catalog(
        self, connection_id: str, fingerprint: str
    ) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
        """The source's discovered catalog (stream and column names, types) and its spec (the
        config schema, which says which fields are secrets), if still valid."""
        with self.engine.connect() as db:
            row = db.execute(
                select(catalogs.c.catalog, catalogs.c.spec).where(
                    catalogs.c.connection_id == connection_id,
                    catalogs.c.source_fingerprint == fingerprint,
                )
            ).first()
            return (dict(row[0]), dict(row[1]) if row[1] else None) if row else None

    def cache_catalog(
        self,
        connection_id: str,
        fingerprint: str,
        catalog: dict[str, Any],
        spec: dict[str, Any] | None,
    ) -> None:
        with self.engine.begin() as db:
            self._upsert(
                db,
                catalogs,
                {"connection_id": connection_id},
                {
                    "source_fingerprint": fingerprint,
                    "catalog": catalog,
                    "spec": spec,
                    "discovered_at": _now(),
                },
            )

    def retained_logs_before(self, cutoff: datetime) -> list[dict[str, Any]]:
        """Retained logs older than the cutoff, one row per run (its attempts together)."""
        with self.engine.connect() as db:
            rows = db.execute(
                select(retained_logs.c.run_id, retained_logs.c.connection_id)
                .where(retained_logs.c.retained_at < cutoff)
                .group_by(retained_logs.c.run_id, retained_logs.c.connection_id)
            ).mappings()
            return [dict(r) for r in rows]

    def retained_logs_of(self, run_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as db:
            rows = db.execute(
                select(retained_logs)
                .where(retained_logs.c.run_id == run_id)
                .order_by(retained_logs.c.attempt)
            ).mappings()
            return [dict(r) for r in rows]

    def forget_retained_logs(self, run_id: str) -> None:
        with self.engine.begin() as db:
            db.execute(delete(retained_logs).where(retained_logs.c.run_id == run_id))

    def kept_staging_to_sweep(self, cutoff: datetime) -> list[dict[str, Any]]:
        """Staging that ended runs kept: a committed run's at once (nothing in it is left to
        replay), an uncommitted run's once it has outlived its TTL (the cutoff)."""
        with self.engine.connect() as db:
            rows = db.execute(
                select(runs.c.run_id, runs.c.connection_id, runs.c.staging_target).where(
                    runs.c.status != "succeeded",
                    runs.c.staging_target.is_not(None),
                    runs.c.staging_swept_at.is_(None),
                    (runs.c.committed.is_(True)) | (runs.c.finished_at < cutoff),
                )
            ).mappings()
            return [dict(r) for r in rows]

    def mark_staging_swept(self, run_id: str) -> None:
        with self.engine.begin() as db:
            db.execute(update(runs).where(runs.c.run_id == run_id).values(staging_swept_at=_now()))

    def lock_connection(
        self,
        connection_id: str,
        run_id: str,
        ttl: timedelta,
        *,
        workflow_id: str | None = None,
        staging_target: str | None = None,
    ) -> dict[str, Any] | None:
        """Take the connection for this run: one run of a connection at a time, across every
        worker. Returns None when taken (or already held by this run), else the holder's lock
        row. A held lock is never taken over here: whether its run is over is Temporal's to
        say (workers/activities/locks.py)."""
        now = _now()
        row = {
            "connection_id": connection_id,
            "run_id": run_id,
            "expires_at": now + ttl,
            "workflow_id": workflow_id,
            "staging_target": staging_target,
            "taken_at": now,
        }
        try:
            with self.engine.begin() as db:
                db.execute(insert(connection_locks).values(row))
            return None
        except IntegrityError:
            pass
        with self.engine.begin() as db:
            taken = db.execute(
                update(connection_locks)
                .where(
                    connection_locks.c.connection_id == connection_id,
                    connection_locks.c.run_id == run_id,
                )
                .values(expires_at=row["expires_at"])
            ).rowcount
            if taken:
                return None
        holder = self.lock_holder(connection_id)
        return holder or {"run_id": "another run", "workflow_id": None}

    def renew_lock(self, connection_id: str, run_id: str, ttl: timedelta) -> bool:
        """Push the lock's expiry out; False when this run no longer holds it."""
        with self.engine.begin() as db:
            return bool(
                db.execute(
                    update(connection_locks)
                    .where(
                        connection_locks.c.connection_id == connection_id,
                        connection_locks.c.run_id == run_id,
                    )
                    .values(expires_at=_now() + ttl)
                ).rowcount
            )

    def lock_holder(self, connection_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as db:
            row = (
                db.execute(
                    select(connection_locks).where(
                        connection_locks.c.connection_id == connection_id
                    )
                )
                .mappings()
                .first()
            )
        return _utc(dict(row)) if row else None

    def locks(self) -> list[dict[str, Any]]:
        with self.engine.connect() as db:
            rows = db.execute(select(connection_locks)).mappings()
            return [_utc(dict(r)) for r in rows]

    def unlock_connection(self, connection_id: str, run_id: str) -> None:
        self.force_unlock(connection_id, run_id)

    def force_unlock(self, connection_id: str, run_id: str) -> bool:
        """Give the connection back if `run_id` still holds it; True when a lock was removed."""
        with self.engine.begin() as db:
            return bool(
                db.execute(
                    delete(connection_locks).where(
                        connection_locks.c.connection_id == connection_id,
                        connection_locks.c.run_id == run_id,
                    )
                ).rowcount
            )

    def finish_abandoned_run(self, lock: Mapping[str, Any], status: str, error: str) -> bool:
        """Record the run of a lock whose workflow ended without recording it (terminated, or
        gone), with its staging kept for the sweep, and give the connection back. A run that
        recorded itself keeps its record. True when a run row was written."""
        now = _now()
        started = lock.get("taken_at") or now
        with self.engine.begin() as db:
            exists = db.execute(
                select(runs.c.run_id).where(runs.c.run_id == lock["run_id"])
            ).first()
            if exists is None:
                db.execute(
                    insert(runs).values(
                        run_id=lock["run_id"],
                        connection_id=lock["connection_id"],
                        workflow_id=lock.get("workflow_id") or "",
                        status=status,
                        started_at=started,
                        finished_at=now,
                        duration_seconds=(now - _utc_stamp(started)).total_seconds(),
                        incremental=False,
                        records=0,
                        records_by_stream={},
                        bytes_staged=0,
                        redactions={},
                        error=error,
                        staging_target=lock.get("staging_target"),
                        committed=False,
                        warnings=["recorded by the sweep: the run's workflow ended without it"],
                    )
                )
            db.execute(
                delete(connection_locks).where(
                    connection_locks.c.connection_id == lock["connection_id"],
                    connection_locks.c.run_id == lock["run_id"],
                )
            )
        return exists is None

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        """One run's record (timestamps in UTC), or None."""
        with self.engine.connect() as db:
            row = db.execute(select(runs).where(runs.c.run_id == run_id)).mappings().first()
            return _utc(dict(row)) if row else None

    def get_receipt(self, receipt_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as db:
            row = (
                db.execute(select(purge_receipts).where(purge_receipts.c.receipt_id == receipt_id))
                .mappings()
                .first()
            )
            return dict(row) if row else None

    def receipt(self, receipt_id: str) -> PurgeReceipt | None:
        row = self.get_receipt(receipt_id)
        if row is None:
            return None
        for stamp in ("started_at", "finished_at", "recoverable_until"):
            # SQLite hands timestamps back without their zone; they were written in UTC.
            if row[stamp] is not None and row[stamp].tzinfo is None:
                row[stamp] = row[stamp].replace(tzinfo=UTC)
        return PurgeReceipt.model_validate(row)

    def stream_rows(self, connection_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as db:
            rows = db.execute(
                select(streams).where(streams.c.connection_id == connection_id)
            ).mappings()
            return [dict(r) for r in rows]

    def dump_text(self) -> str:
        """Every row of every table as text; tests search it for values that must not be there."""
        parts = []
        with self.engine.connect() as db:
            for table in metadata.sorted_tables:
                for row in db.execute(select(table)).mappings():
                    parts.append(f"{table.name}: {dict(row)!r}")
        return "\n".join(parts)

    # -- runs at hand: `sluice runs`, `sluice runs show`, `sluice logs`, `sluice cancel` --------

    def recent_runs(
        self,
        *,
        connection_id: str | None = None,
        status: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Recorded runs, newest first. Each row has `kind` (NULL in rows written before
        replays existed reads `sync`) and `purge_verified`: True when a purge of the run's
        staging (its own, a sweep's or a replay's) was verified empty, False when purges of it
        left objects, None when none is recorded (kept for replay, or nothing staged)."""
        query = select(runs).order_by(runs.c.started_at.desc(), runs.c.run_id.desc())
        if connection_id is not None:
            query = query.where(runs.c.connection_id == connection_id)
        if status is not None:
            query = query.where(runs.c.status == status)
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as db:
            rows = [_utc(dict(r)) for r in db.execute(query).mappings()]
            verified = self._staging_purges_verified(db, rows)
        for row in rows:
            row["kind"] = row.get("kind") or "sync"
            row["purge_verified"] = verified.get(row["run_id"])
        return rows

    @staticmethod
    def _staging_purges_verified(
        db: DBConnection, rows: Sequence[Mapping[str, Any]]
    ) -> dict[str, bool]:
        run_ids = [r["run_id"] for r in rows]
        own = [r["receipt_id"] for r in rows if r.get("receipt_id")]
        if not run_ids:
            return {}
        receipts = db.execute(
            select(
                purge_receipts.c.receipt_id,
                purge_receipts.c.run_id,
                purge_receipts.c.verified_empty,
            ).where(
                (purge_receipts.c.run_id.in_(run_ids) | purge_receipts.c.receipt_id.in_(own))
                # The sweep's receipts of a run's retained logs (`sweep-logs-<run>`, see
                # workers/activities/sweep.py) are not purges of its staging.
                & purge_receipts.c.receipt_id.not_like("sweep-logs-%")
                & purge_receipts.c.dry_run.is_(False)
            )
        ).mappings()
        by_receipt = {r["receipt_id"]: r["run_id"] for r in rows if r.get("receipt_id")}
        verified: dict[str, bool] = {}
        for receipt in receipts:
            run_id = receipt["run_id"] or by_receipt.get(receipt["receipt_id"])
            if run_id is not None:
                verified[run_id] = verified.get(run_id, False) or bool(receipt["verified_empty"])
        return verified

    def running_runs(self, connection_id: str | None = None) -> list[dict[str, Any]]:
        """Runs still in progress, newest first: the lock rows whose run has not recorded
        itself yet (`run_id`, `connection_id`, `workflow_id`, `taken_at`, ...)."""
        query = (
            select(connection_locks)
            .where(~connection_locks.c.run_id.in_(select(runs.c.run_id)))
            .order_by(connection_locks.c.taken_at.desc())
        )
        if connection_id is not None:
            query = query.where(connection_locks.c.connection_id == connection_id)
        with self.engine.connect() as db:
            return [_utc(dict(r)) for r in db.execute(query).mappings()]

    def lock_of_run(self, run_id: str) -> dict[str, Any] | None:
        """The lock a run holds, or None (the run is over, or unknown)."""
        with self.engine.connect() as db:
            row = (
                db.execute(select(connection_locks).where(connection_locks.c.run_id == run_id))
                .mappings()
                .first()
            )
        return _utc(dict(row)) if row else None

    def receipts_of_run(self, run_id: str) -> list[dict[str, Any]]:
        """Every purge receipt recorded for a run, oldest first: its own purge, the sweep's of
        its kept staging and of its retained logs, a replay's of its staging."""
        record = self.get_run(run_id)
        condition = purge_receipts.c.run_id == run_id
        if record is not None and record.get("receipt_id"):
            condition = condition | (purge_receipts.c.receipt_id == record["receipt_id"])
        with self.engine.connect() as db:
            rows = db.execute(
                select(purge_receipts)
                .where(condition)
                .order_by(purge_receipts.c.started_at, purge_receipts.c.receipt_id)
            ).mappings()
            return [_utc(dict(r)) for r in rows]

    # -- notifications: the outbox (workers/notifications.py) -----------------------------------

    def failure_streak(self, connection_id: str, until: datetime) -> list[datetime]:
        """When each of the connection's failed runs (`failed`, `timed_out`; syncs and
        replays) finished, newest first, among those finished by `until` and after its last
        success before `until`. Cancelled runs neither break a streak nor count in it."""
        until = until.astimezone(UTC)
        with self.engine.connect() as db:
            last_success = db.execute(
                select(func.max(runs.c.finished_at)).where(
                    runs.c.connection_id == connection_id,
                    runs.c.status == "succeeded",
                    runs.c.finished_at < until,
                )
            ).scalar()
            query = (
                select(runs.c.finished_at)
                .where(
                    runs.c.connection_id == connection_id,
                    runs.c.status.in_(("failed", "timed_out")),
                    runs.c.finished_at <= until,
                )
                .order_by(runs.c.finished_at.desc())
            )
            if last_success is not None:
                query = query.where(runs.c.finished_at > last_success)
            return [_utc_stamp(stamp) for stamp in db.execute(query).scalars()]

    def enqueue_notifications(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Add notifications to the outbox, each keyed by its `id` (run, event, target): one
        already there is left as it is, so a retried activity sends nothing twice. Returns how
        many were added."""
        added = 0
        now = _now()
        for row in rows:
            try:
                with self.engine.begin() as db:
                    db.execute(
                        insert(notification_outbox).values(
                            {
                                "status": "pending",
                                "attempts": 0,
                                "created_at": now,
                                "next_attempt_at": now,
                                **row,
                            }
                        )
                    )
                added += 1
            except IntegrityError:
                continue
        return added

    def claim_notifications(
        self, worker_id: str, lease: timedelta, limit: int = 20
    ) -> list[dict[str, Any]]:
        """Pending notifications that are due, each claimed for `lease` by this worker: a
        conditional update that only one worker of a fleet wins (SQLite and PostgreSQL alike).
        A claim whose worker died lapses, and the notification is claimed again."""
        now = _now()
        free = notification_outbox.c.claimed_until.is_(None) | (
            notification_outbox.c.claimed_until < now
        )
        with self.engine.connect() as db:
            due = list(
                db.execute(
                    select(notification_outbox.c.id)
                    .where(
                        notification_outbox.c.status == "pending",
                        notification_outbox.c.next_attempt_at <= now,
                        free,
                    )
                    .order_by(notification_outbox.c.next_attempt_at)
                    .limit(limit)
                ).scalars()
            )
        claimed: list[dict[str, Any]] = []
        for notification_id in due:
            with self.engine.begin() as db:
                won = db.execute(
                    update(notification_outbox)
                    .where(
                        notification_outbox.c.id == notification_id,
                        notification_outbox.c.status == "pending",
                        free,
                    )
                    .values(claimed_by=worker_id, claimed_until=now + lease)
                ).rowcount
                if won:
                    row = (
                        db.execute(
                            select(notification_outbox).where(
                                notification_outbox.c.id == notification_id
                            )
                        )
                        .mappings()
                        .one()
                    )
                    claimed.append(_utc(dict(row)))
        return claimed

    def notification_attempted(
        self,
        notification_id: str,
        worker_id: str,
        *,
        delivered: bool,
        error: str | None = None,
        retry_at: datetime | None = None,
    ) -> bool:
        """Record one delivery attempt of a notification this worker claimed: delivered, to
        be retried at `retry_at`, or (neither) given up. False when the claim was lost."""
        now = _now()
        values: dict[str, Any] = {
            "attempts": notification_outbox.c.attempts + 1,
            "last_attempt_at": now,
            "last_error": error,
            "claimed_by": None,
            "claimed_until": None,
        }
        if delivered:
            values.update(status="delivered", delivered_at=now)
        elif retry_at is not None:
            values.update(next_attempt_at=retry_at)
        else:
            values.update(status="given_up", given_up_at=now)
        with self.engine.begin() as db:
            return bool(
                db.execute(
                    update(notification_outbox)
                    .where(
                        notification_outbox.c.id == notification_id,
                        notification_outbox.c.claimed_by == worker_id,
                        notification_outbox.c.status == "pending",
                    )
                    .values(values)
                ).rowcount
            )

    def notifications(
        self, *, connection_id: str | None = None, run_id: str | None = None
    ) -> list[dict[str, Any]]:
        """The outbox, oldest first."""
        query = select(notification_outbox).order_by(
            notification_outbox.c.created_at, notification_outbox.c.id
        )
        if connection_id is not None:
            query = query.where(notification_outbox.c.connection_id == connection_id)
        if run_id is not None:
            query = query.where(notification_outbox.c.run_id == run_id)
        with self.engine.connect() as db:
            return [_utc(dict(r)) for r in db.execute(query).mappings()]


# What a recorded run is to tell, waiting to be delivered (workers/notifications.py): a webhook
# message (`target`: the environment variable holding its URL, never the URL itself) or the
# pause of a connection's schedule (`target`: the schedule id). Its payload holds only what the
# run's record holds (ids, status, the scrubbed error), never a data or cursor value.
notification_outbox = Table(
    "notification_outbox",
    metadata,
    Column("id", String(512), primary_key=True),  # run id, event and target
    Column("connection_id", String(128), nullable=False, index=True),
    Column("run_id", String(64), nullable=False),
    Column("event", String(32), nullable=False),
    Column("action", String(16), nullable=False),  # webhook | pause_schedule
    Column("target", String(256), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("status", String(16), nullable=False, index=True),  # pending|delivered|given_up
    Column("attempts", Integer, nullable=False, default=0),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("claimed_by", String(128)),
    Column("claimed_until", DateTime(timezone=True)),
    Column("last_attempt_at", DateTime(timezone=True)),
    Column("last_error", Text),
    Column("delivered_at", DateTime(timezone=True)),
    Column("given_up_at", DateTime(timezone=True)),
)
