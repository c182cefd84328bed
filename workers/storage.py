"""Settings -> stores: which store options apply and which URIs may be purged."""

from __future__ import annotations

from purge.stores import StoreOptions
from workers.connections import ConnectionsFile
from workers.settings import Settings


def store_options(settings: Settings) -> StoreOptions:
    return StoreOptions(
        azure_connection_string=settings.azure_storage_connection_string,
        azure_account_url=settings.azure_account_url,
        azure_credential=settings.azure_credential,
        s3_server_side_encryption=settings.s3_server_side_encryption or None,
    )


def purge_allow_list(settings: Settings, connections: ConnectionsFile | None) -> list[str]:
    """What may be purged: the configured staging roots, and SLUICE_PURGE_ALLOW."""
    allowed = [settings.resolved_staging_uri, *settings.purge_allow]
    if connections is not None:
        allowed += [c.staging for c in connections.connections.values() if c.staging]
    return allowed
