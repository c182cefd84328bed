"""Destinations: where a local connection's records and committed state go.

``base.py`` says what a destination does for the sync engine (the ``Destination`` protocol, the
``StreamTable`` a stream lands in, the errors); each destination is one module (``duckdb.py``,
``postgres.py``), registered in ``_OPENERS`` below under the ``[connections.destination] type``
that selects it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from workers.connections import Connection, MissingSecretError
from workers.destinations.base import Destination, UnknownDestinationError


@dataclass(frozen=True)
class DestinationOptions:
    """The worker's settings for destinations; each destination reads its own."""

    duckdb_memory_limit: str = "512MB"


def _duckdb(connection: Connection, options: DestinationOptions) -> Destination:
    from workers.destinations.duckdb import DuckDBDestination

    path = connection.destination.path
    assert path is not None, "the connections file requires a duckdb destination's path"
    return DuckDBDestination(path, connection.id, options.duckdb_memory_limit)


def _postgres(connection: Connection, options: DestinationOptions) -> Destination:
    """The DSN comes from the worker's environment (``dsn_env``), never from the file; the
    scrubber gets its password through ``connections.secret_values``."""
    from workers.destinations.postgres import PostgresDestination

    variable = connection.destination.dsn_env
    dsn = os.environ.get(variable) if variable else None
    if not dsn:
        raise MissingSecretError(
            f"connection {connection.id!r}: destination.dsn_env: environment variable "
            f"{variable} is not set"
        )
    return PostgresDestination(dsn, connection.id, connection.destination.db_schema)


_OPENERS: dict[str, Callable[[Connection, DestinationOptions], Destination]] = {
    "duckdb": _duckdb,
    "postgres": _postgres,
}
DESTINATION_TYPES = tuple(_OPENERS)


def open_destination(
    connection: Connection, options: DestinationOptions = DestinationOptions()
) -> Destination:
    """Open the connection's destination, chosen by ``[connections.destination] type``.

    The connections file only lets through the types registered here (workers/connections.py
    lists them too); a connection built otherwise with another type is refused, naming it.
    """
    kind = connection.destination.type
    opener = _OPENERS.get(kind)
    if opener is None:
        raise UnknownDestinationError(
            f"connection {connection.id!r}: destination.type {kind!r} is not a destination "
            f"Sluice has (it has: {', '.join(DESTINATION_TYPES)})"
        )
    return opener(connection, options)
