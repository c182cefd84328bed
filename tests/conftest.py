"""Fixtures that start the real parts: the Temporal dev server, a worker, the faker connector."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from tests.support.connections import items_connection, protocol_connector, write_connections
from tests.support.histories import HISTORIES_DIR, HISTORY_KEYS, save_history
from tests.support.postgres import POSTGRES, scratch_database
from tests.support.processes import free_port, wait_until, worker_process
from tests.support.session import CONNECTORS_DIR, PAYLOAD_KEYS, REPO
from workers.codec import data_converter, parse_keys
from workers.connections import SourceConfig
from workers.connectors.executors import ConnectorInstaller
from workers.devserver import search_attribute_args, temporal_cli
from workers.metadata import MetadataStore
from workers.runlog import configure_logging
from workers.settings import Settings
from workers.worker import build_worker

# The helpers live in tests/support/; these names stay importable from here for the modules
# that take them from tests.conftest.
__all__ = [
    "CONNECTORS_DIR",
    "FAKER",
    "HISTORIES_DIR",
    "HISTORY_KEYS",
    "PAYLOAD_KEYS",
    "REPO",
    "Sluice",
    "free_port",
    "items_connection",
    "protocol_connector",
    "save_history",
    "wait_until",
    "worker_process",
    "write_connections",
]

configure_logging("WARNING")
FAKER = SourceConfig(package="airbyte-source-faker==7.2.1", command=["source-faker"])


@pytest.fixture(scope="session")
def faker_command() -> str:
    """The real source-faker from PyPI, in its own virtual environment."""
    return ConnectorInstaller(CONNECTORS_DIR).argv(FAKER)[0]


@pytest_asyncio.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        data_converter=data_converter(parse_keys(PAYLOAD_KEYS)),
        dev_server_existing_path=temporal_cli(),
        port=free_port(),
        ui=False,
        dev_server_log_level="error",
        dev_server_extra_args=search_attribute_args(),
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture(scope="module")
def postgres_dsn() -> Iterator[str]:
    """A database of the test module's own on the machine's PostgreSQL, dropped afterwards."""
    with scratch_database("sluice_dest") as name:
        yield f"{POSTGRES} dbname={name}"


@pytest.fixture
def client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client


@dataclass
class Sluice:
    """A worker of our own, on its own task queue, with a state dir and connections file."""

    settings: Settings
    client: Client

    @property
    def metadata(self) -> MetadataStore:
        return MetadataStore.from_url(self.settings.resolved_metadata_url)

    @property
    def staging_root(self) -> Path:
        return self.settings.state_path / "staging"


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def make(connections: str, **overrides: Any) -> Settings:
        connections_file = write_connections(tmp_path / "connections.toml", connections)
        return Settings(
            state_dir=tmp_path / "state",
            connections_file=connections_file,
            task_queue=f"test-{uuid.uuid4().hex[:8]}",
            connectors_dir_override=CONNECTORS_DIR,
            payload_keys=PAYLOAD_KEYS,
            **overrides,
        )

    return make


@pytest_asyncio.fixture
async def run_worker(client: Client) -> AsyncIterator[Callable[[Settings], Any]]:
    workers = []

    async def start(settings: Settings) -> Sluice:
        worker = build_worker(client, settings)
        await worker.__aenter__()
        workers.append(worker)
        return Sluice(settings, client)

    yield start
    for worker in reversed(workers):
        await worker.__aexit__(None, None, None)
