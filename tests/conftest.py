"""Fixtures that start the real parts: the Temporal dev server, a worker, the faker connector."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from workers.airbyte.connector import ConnectorInstaller
from workers.codec import data_converter, new_key_spec, parse_keys
from workers.connections import SourceConfig
from workers.devserver import temporal_cli
from workers.runlog import configure_logging
from workers.settings import Settings
from workers.store.metadata import MetadataStore
from workers.worker import build_worker

REPO = Path(__file__).resolve().parent.parent
configure_logging("WARNING")
CONNECTORS_DIR = Path(
    # Shared across test sessions: installing a connector takes half a minute.
    REPO / ".cache" / "connectors"
)
# The payload key of this test session: the test client and every worker it starts share it.
PAYLOAD_KEYS = new_key_spec("test")
# The fixed payload key of the histories in tests/histories/ (a test key, not a secret): they are
# replayed by tests/test_histories.py, so a change that breaks runs in flight fails a test.
HISTORY_KEYS = "history:5Gg2DNOi8OTRSmr2nuwYYB6SQNcDjUbaJnXWANR/pEA="
HISTORIES_DIR = REPO / "tests" / "histories"
FAKER = SourceConfig(package="airbyte-source-faker==7.2.1", command=["source-faker"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
    )
    try:
        yield env
    finally:
        await env.shutdown()


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


def write_connections(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


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


def protocol_connector(tmp_path: Path, name: str, read_body: str) -> Path:
    """A small Airbyte protocol source written in Python, for failure cases real sources
    cannot be made to produce on demand. `read_body` prints the messages of `read`."""
    script = tmp_path / name
    script.write_text(
        f"#!{sys.executable}\n"
        + textwrap.dedent(
            """
            import json, sys
            def emit(message):
                print(json.dumps(message), flush=True)
            SCHEMA = {"type": "object", "properties": {
                "id": {"type": "integer"}, "updated_at": {"type": "string"}}}
            verb = sys.argv[1]
            if verb == "spec":
                emit({"type": "SPEC", "spec": {"connectionSpecification": {}}})
            elif verb == "check":
                emit({"type": "CONNECTION_STATUS", "connectionStatus": {"status": "SUCCEEDED"}})
            elif verb == "discover":
                emit({"type": "CATALOG", "catalog": {"streams": [{"name": "items",
                    "json_schema": SCHEMA, "supported_sync_modes": ["full_refresh", "incremental"],
                    "source_defined_cursor": True, "default_cursor_field": ["updated_at"],
                    "source_defined_primary_key": [["id"]]}]}})
            elif verb == "read":
                def record(i, updated_at):
                    emit({"type": "RECORD", "record": {"stream": "items",
                          "data": {"id": i, "updated_at": updated_at},
                          "emitted_at": 1700000000000}})
                def state(updated_at):
                    emit({"type": "STATE", "state": {"type": "STREAM", "stream": {
                          "stream_descriptor": {"name": "items"},
                          "stream_state": {"updated_at": updated_at}}}})
            """
        )
        + textwrap.indent(textwrap.dedent(read_body), "    ")
    )
    script.chmod(0o755)
    return script


async def save_history(handle: Any, name: str) -> None:
    """Keep the history of a finished run as tests/histories/NAME.json, when the suite is run
    with SLUICE_RECORD_HISTORIES=1 (see tests/histories/README.md)."""
    if os.environ.get("SLUICE_RECORD_HISTORIES") != "1":
        return
    history = await handle.fetch_history()
    HISTORIES_DIR.mkdir(exist_ok=True)
    (HISTORIES_DIR / f"{name}.json").write_text(history.to_json(), encoding="utf-8")


async def wait_until(condition: Callable[[], bool], timeout: float = 30) -> None:
    """Poll `condition` until it holds; fail the test after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.1)


def worker_process(
    settings: Settings,
    temporal_env: WorkflowEnvironment,
    log: Path,
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """`sluice worker` in a process of its own (so that a test can SIGKILL it), configured
    like `settings` through the environment, as a deployment configures it."""
    env = {
        **os.environ,
        **(extra_env or {}),
        "SLUICE_STATE_DIR": str(settings.state_path),
        "SLUICE_CONNECTIONS_FILE": str(settings.connections_file),
        "SLUICE_CONNECTORS_DIR": str(settings.connectors_dir),
        "SLUICE_TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
        "SLUICE_TASK_QUEUE": settings.task_queue,
        "SLUICE_HEARTBEAT_TIMEOUT_SECONDS": str(settings.heartbeat_timeout_seconds),
        "SLUICE_PAYLOAD_KEYS": settings.payload_keys or "",
    }
    with open(log, "wb") as output:  # the child keeps its own descriptor
        return subprocess.Popen(
            [str(REPO / ".venv" / "bin" / "sluice"), "worker"],
            env=env,
            stdout=output,
            stderr=output,
        )
