"""Planning one attempt: the source's catalog, the streams the run syncs, the state it starts from.

Nothing here reads records: planning checks the connection against what the source offers
(an unknown stream, a sync mode it does not support, a missing cursor or key fail the run as
InvalidConnection) and describes each stream's table for the destination.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from workers.connections import Connection, StreamConfig
from workers.connectors.process import Connector
from workers.connectors.protocol import configured_catalog, stream_state_key
from workers.destinations.base import StreamTable
from workers.errors import SluiceError
from workers.runlog import RunLog


class CatalogCache(Protocol):
    def cached_catalog(
        self, connection_id: str, fingerprint: str
    ) -> tuple[dict[str, Any], dict[str, Any] | None] | None: ...

    def cache_catalog(
        self,
        connection_id: str,
        fingerprint: str,
        catalog: dict[str, Any],
        spec: dict[str, Any] | None,
    ) -> None: ...


class SyncConfigError(SluiceError):
    """The connection asks for something the source does not offer; retrying cannot help."""

    kind = "InvalidConnection"


def stream_id(name: str, namespace: str | None) -> str:
    return f"{namespace}.{name}" if namespace else name


@dataclass(frozen=True)
class StreamPlan:
    """One stream of the run: as declared, as it lands in the destination, and the cursor and
    key it is read with (the connection's, else the source's defaults)."""

    config: StreamConfig
    table: StreamTable
    cursor_field: list[str]
    primary_key: list[list[str]]

    @property
    def state_key(self) -> str:
        """The key of this stream's own STATE."""
        return stream_state_key(self.config.name, self.config.namespace)


def discover_catalog(
    connector: Connector, config: dict[str, Any], run_log: RunLog
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The source's catalog and spec, from the connector (``discover`` and ``spec``; their logs
    go into the run's log)."""

    def connector_log(level: str, text: str) -> None:
        run_log.write("connector", level, text)

    # Two connector start-ups; side by side they cost one.
    with ThreadPoolExecutor(max_workers=1) as pool:
        spec = pool.submit(connector.spec, connector_log)
        catalog = connector.discover(config, connector_log)
        return catalog, spec.result()


def plan_streams(
    connection: Connection,
    catalog: dict[str, Any],
    only: list[str] | None,
    *,
    reset: bool,
    run_id: str,
    columns: Callable[[Mapping[str, Any]], dict[str, str]],
) -> dict[str, StreamPlan]:
    """The streams of the run (the connection's, or ``only`` those), by stream id, checked
    against the source's catalog. ``columns``: the destination's columns of a JSON schema."""
    offered = {stream_id(s["name"], s.get("namespace")): s for s in catalog["streams"]}
    wanted = [s for s in connection.streams if only is None or s.name in only]
    if only is not None:
        unknown = sorted(set(only) - {s.name for s in connection.streams})
        if unknown:
            raise SyncConfigError(
                f"connection {connection.id!r}: streams {unknown} are not declared"
            )
    plans: dict[str, StreamPlan] = {}
    for index, stream in enumerate(wanted):
        where = f"streams[{index}] ({stream.name})"
        sid = stream_id(stream.name, stream.namespace)
        source_stream = offered.get(sid)
        if source_stream is None:
            offers = ", ".join(sorted(offered))
            raise SyncConfigError(f"{where}: the source offers no such stream (offers: {offers})")
        if stream.sync_mode not in source_stream.get("supported_sync_modes", ["full_refresh"]):
            raise SyncConfigError(f"{where}: the source does not support {stream.sync_mode}")
        cursor = stream.cursor_field or source_stream.get("default_cursor_field") or []
        key = stream.primary_key or source_stream.get("source_defined_primary_key") or []
        if stream.sync_mode == "incremental" and not cursor:
            raise SyncConfigError(f"{where}: incremental needs a cursor_field")
        if stream.destination_mode == "append_dedup" and not key:
            raise SyncConfigError(f"{where}: append_dedup needs a primary_key")
        if any(len(path) != 1 for path in key) or len(cursor) > 1:
            raise SyncConfigError(f"{where}: nested cursor or key fields are not supported")
        properties = source_stream.get("json_schema", {}).get("properties", {})
        table = StreamTable(
            name=stream.name,
            namespace=stream.namespace,
            columns=columns(properties),
            mode=stream.destination_mode,
            replace=reset or stream.destination_mode == "overwrite",
            primary_key=[path[0] for path in key],
            cursor=cursor[0] if cursor else None,
            run_suffix=run_id.replace("-", "")[:12],
        )
        plans[sid] = StreamPlan(stream, table, cursor, key)
    return plans


def input_state(
    committed: list[dict[str, Any]], streams: Mapping[str, StreamPlan], reset: bool
) -> list[dict[str, Any]] | dict[str, Any] | None:
    """The state the connector starts from: the committed state of the run's incremental
    streams (and GLOBAL state), none after a reset or without an incremental stream."""
    if reset:
        return None
    incremental = {sid for sid, s in streams.items() if s.config.sync_mode == "incremental"}
    if not incremental:
        return None
    messages = []
    legacy = None
    for message in committed:
        kind = message.get("type")
        if kind == "STREAM":
            descriptor = message["stream"]["stream_descriptor"]
            if stream_id(descriptor["name"], descriptor.get("namespace")) in incremental:
                messages.append(message)
        elif kind == "GLOBAL":
            messages.append(message)
        elif kind in (None, "LEGACY"):
            legacy = message
    if messages:
        # A connector that moved from LEGACY to per-stream state resumes from the latter.
        return messages
    # Legacy connectors take the bare state blob.
    return (legacy.get("data") or {}) if legacy is not None else None


def read_catalog(streams: Mapping[str, StreamPlan]) -> dict[str, Any]:
    """The configured catalog handed to ``read``."""
    return configured_catalog(
        [
            {
                "stream": {
                    "name": s.config.name,
                    "namespace": s.config.namespace,
                    "json_schema": {},
                    "supported_sync_modes": [s.config.sync_mode],
                },
                "sync_mode": s.config.sync_mode,
                "destination_sync_mode": "overwrite" if s.table.replace else "append",
                "cursor_field": s.cursor_field or None,
                "primary_key": s.primary_key or None,
            }
            for s in streams.values()
        ]
    )
