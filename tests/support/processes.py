"""Ports, polling, and `sluice worker` in a process of its own."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from tests.support.session import REPO
from workers.settings import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
