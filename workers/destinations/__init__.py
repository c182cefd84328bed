"""Destinations: where a local connection's records and committed state go.

``base.py`` says what a destination does for the sync engine (the ``Destination`` protocol, the
``StreamTable`` a stream lands in, the errors); each destination is one module (``duckdb.py``),
registered in ``_OPENERS`` below under the ``[connections.destination] type`` that selects it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from workers.connections import Connection
from workers.destinations.base import Destination, UnknownDestinationError


@dataclass(frozen=True)
class DestinationOptions:
    """The worker's settings for destinations; each destination reads its own."""

    duckdb_memory_limit: str = "512MB"


def _duckdb(connection: Connection, options: DestinationOptions) -> Destination:
    from workers.destinations.duckdb import DuckDBDestination

    return DuckDBDestination(
        connection.destination.path, connection.id, options.duckdb_memory_limit
    )


_OPENERS: dict[str, Callable[[Connection, DestinationOptions], Destination]] = {
    "duckdb": _duckdb,
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
