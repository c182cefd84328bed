"""Fixtures that start a real Azurite blob service for the tests, on a free loopback port.

Use from a test module with `pytest_plugins = ["tests.azurite_server"]`. The test command
installs Azurite with `npm install --prefix .cache/node azurite@3`; without it the Azure tests
are skipped with that reason, and for no other reason.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient

REPO = Path(__file__).resolve().parent.parent
AZURITE_BLOB = REPO / ".cache" / "node" / "node_modules" / ".bin" / "azurite-blob"

# The well-known development account every Azurite serves; its key is public by design.
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

_START_TIMEOUT_S = 30.0


def azurite_binary() -> Path | None:
    """The repo-local install first (what the test command creates), else one on PATH."""
    if AZURITE_BLOB.exists():
        return AZURITE_BLOB
    found = shutil.which("azurite-blob")
    return Path(found) if found else None


def connection_string(port: int) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT_NAME};"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _supported_flags(binary: Path) -> str:
    """Azurite's help text: optional flags are passed only when this version lists them."""
    try:
        done = subprocess.run(
            [str(binary), "--help"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout + done.stderr


def _wait_until_listening(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"azurite-blob exited with {process.returncode} before listening on {port}:\n"
                + log.read_text(errors="replace")
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"azurite-blob did not listen on {port} within {_START_TIMEOUT_S} s")


@pytest.fixture(scope="session")
def azurite_connection_string(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start Azurite once per session; yield the devstoreaccount1 connection string."""
    binary = azurite_binary()
    if binary is None:
        pytest.skip(
            "azurite-blob is not installed; the test command installs it with "
            "`npm install --prefix .cache/node azurite@3`"
        )
    workspace = tmp_path_factory.mktemp("azurite")
    port = _free_port()
    help_text = _supported_flags(binary)
    argv = [
        str(binary),
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(port),
        "--location",
        str(workspace),
        "--silent",
    ]
    # --loose: accept headers Azurite does not implement instead of failing the request;
    # --skipApiVersionCheck: the SDK may speak a newer API version than this Azurite knows.
    argv += [flag for flag in ("--skipApiVersionCheck", "--loose") if flag in help_text]
    if "--disableTelemetry" in help_text:
        argv.append("--disableTelemetry")
    log = workspace / "azurite.log"
    with log.open("wb") as log_handle:
        process = subprocess.Popen(
            argv, stdout=log_handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        _wait_until_listening(process, port, log)
        yield connection_string(port)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture
def azure_service(azurite_connection_string: str) -> Iterator[BlobServiceClient]:
    with BlobServiceClient.from_connection_string(azurite_connection_string) as service:
        yield service


@pytest.fixture
def azure_container(azure_service: BlobServiceClient) -> Iterator[ContainerClient]:
    """A fresh container per test, so tests never see each other's blobs."""
    container = azure_service.create_container(f"t-{uuid.uuid4().hex[:20]}")
    try:
        yield container
    finally:
        container.delete_container()
