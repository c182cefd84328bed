"""The one purge service. The sync's purge, the retention sweep and `sluice purge` all go through
it, so a target is always checked against the allow-list before any call (ARCHITECTURE
invariant 3), stores are opened one way, and every receipt is recorded."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from purge.pipeline import purge_prefix
from purge.receipts import PurgeReceipt
from purge.stores import LocalStagingStore, StagingStore, StoreOptions, open_store
from purge.targets import PurgeTarget, parse_target
from workers.connections import ConnectionsFile
from workers.metadata import MetadataStore
from workers.settings import Settings


def store_options(settings: Settings) -> StoreOptions:
    return StoreOptions(
        azure_connection_string=settings.azure_storage_connection_string,
        azure_account_url=settings.azure_account_url,
        azure_credential=settings.azure_credential,
        s3_server_side_encryption=settings.s3_server_side_encryption or None,
    )


class Purger:
    def __init__(self, settings: Settings, metadata: MetadataStore | None = None) -> None:
        self.settings = settings
        self.metadata = metadata
        self.options = store_options(settings)
        self._remote: dict[str, StagingStore] = {}
        self._remote_lock = threading.Lock()

    def open(self, uri: str) -> StagingStore:
        """The store a URI names (staging, retained logs), with the settings' credentials.

        An S3 or Azure store is opened once per URI and kept, as the retained-log store is:
        its clients are thread-safe, and building them (parsing the service model, a new
        connection pool) cost a tenth of a 5,000-object purge. A local store holds nothing
        costly and is opened anew (opening creates its root).
        """
        with self._remote_lock:
            store = self._remote.get(uri)
            if store is None:
                store = open_store(uri, self.options)
                if not isinstance(store, LocalStagingStore):
                    self._remote[uri] = store
        return store

    def allow_list(self, connections: ConnectionsFile | None, *roots: str) -> list[str]:
        """What may be purged: `roots`, the default staging root, SLUICE_PURGE_ALLOW and every
        staging root the connections file names (when it could be read)."""
        allowed = [*roots, self.settings.resolved_staging_uri, *self.settings.purge_allow]
        if connections is not None:
            allowed += [c.staging for c in connections.connections.values() if c.staging]
        return allowed

    def target(self, uri: str, allow: Iterable[str]) -> PurgeTarget:
        """The checked target; refused (TargetRefusedError) before any call is made."""
        return parse_target(uri, allow)

    def purge(
        self,
        target: PurgeTarget,
        *,
        receipt_id: str,
        run_id: str | None = None,
        dry_run: bool = False,
        deleted_before: int = 0,
        on_progress: Callable[[int], None] | None = None,
        shred: bool = False,
    ) -> PurgeReceipt:
        """Delete everything under the target, verify by listing, and record the receipt.

        `deleted_before`: objects an interrupted attempt deleted (from its heartbeats); the
        receipt counts them too, so a resumed purge's receipt covers every deletion.
        `shred`: the target is the staging of run `run_id`, which nothing needs any more:
        its staging key is destroyed too (even when objects were left: they are unreadable
        from now on), and the receipt says so."""
        receipt = purge_prefix(
            self.open(target.store_uri),
            target.prefix,
            receipt_id=receipt_id,
            dry_run=dry_run,
            on_progress=None
            if on_progress is None
            else (lambda deleted: on_progress(deleted_before + deleted)),
        )
        if deleted_before:
            receipt = receipt.model_copy(
                update={
                    "objects_deleted": receipt.objects_deleted + deleted_before,
                    "objects_deleted_before_resume": deleted_before,
                }
            )
        if shred and run_id is not None and self.metadata is not None and not dry_run:
            destroyed = self.metadata.destroy_staging_key(run_id)
            receipt = receipt.model_copy(update={"data_key_destroyed": destroyed or None})
        if self.metadata is not None and not dry_run:
            self.metadata.record_receipt(receipt, run_id)
        return receipt
