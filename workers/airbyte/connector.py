"""Airbyte protocol connectors run as subprocesses.

A connector from PyPI is installed into its own virtual environment (connectors bring their own
dependency trees, which would clash with ours). Config, catalog and state reach the connector as
files in a private temporary directory that is removed when the command ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from airbyte_protocol.models import AirbyteMessage, ConfiguredAirbyteCatalog, Type

from workers.connections import SourceConfig


class ConnectorError(RuntimeError):
    """The connector could not be run, or it failed; the message is the connector's own."""

    def __init__(self, message: str, *, failure_type: str | None = None) -> None:
        super().__init__(message)
        self.failure_type = failure_type


class ConnectorNotFoundError(ConnectorError):
    pass


class ConnectorInstaller:
    """Installs connectors from PyPI, one virtual environment each, under ``connectors_dir``."""

    def __init__(self, connectors_dir: Path, python: str = sys.executable) -> None:
        self._dir = connectors_dir
        self._python = python

    def venv_for(self, source: SourceConfig) -> Path:
        return self._dir / source.connector_name

    def argv(
        self,
        source: SourceConfig,
        *,
        install: bool = True,
        on_progress: Callable[[str], None] | None = None,
    ) -> list[str]:
        """The command line that runs the connector, installing it first if needed."""
        program = source.command[0]
        if source.package is None:
            resolved = shutil.which(program)
            if resolved is None:
                raise ConnectorNotFoundError(
                    f"connector command {program!r} not found (not on PATH and not a file)"
                )
            return [resolved, *source.command[1:]]
        venv = self.venv_for(source)
        executable = venv / "bin" / program
        if not executable.exists():
            if not install:
                raise ConnectorNotFoundError(f"connector {source.package!r} is not installed")
            self._install(source, venv, on_progress)
            if not executable.exists():
                raise ConnectorNotFoundError(
                    f"package {source.package!r} installed, but it has no command {program!r}"
                )
        return [str(executable), *source.command[1:]]

    def _install(
        self, source: SourceConfig, venv: Path, on_progress: Callable[[str], None] | None
    ) -> None:
        assert source.package is not None
        self._dir.mkdir(parents=True, exist_ok=True)
        # Several workers (or activities) may ask for the same connector at once.
        with open(self._dir / f".{venv.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if (venv / "bin" / source.command[0]).exists():
                return
            if on_progress:
                on_progress(f"installing {source.package} into {venv}")
            steps = [
                [self._python, "-m", "venv", str(venv)],
                [
                    str(venv / "bin" / "python"),
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    source.package,
                ],
            ]
            for step in steps:
                done = subprocess.run(step, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    shutil.rmtree(venv, ignore_errors=True)
                    tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
                    raise ConnectorNotFoundError(
                        f"could not install {source.package!r}: " + " | ".join(tail)
                    )


_PRIVATE_PREFIX = "sluice-connector-"


def remove_orphaned_private_files() -> int:
    """Remove the private files of connector runs whose worker died (SIGKILL, power loss)
    before it could: they hold the connector's config (secrets) and state. Returns how many."""
    removed = 0
    for path in Path(tempfile.gettempdir()).glob(f"{_PRIVATE_PREFIX}*-*"):
        pid_text = path.name.removeprefix(_PRIVATE_PREFIX).split("-", 1)[0]
        if not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _private_files(files: Mapping[str, Any]) -> Iterator[dict[str, Path]]:
    """JSON files readable only by us, removed afterwards (config holds secrets, state values).

    The directory is named after our pid, so that a later run can remove it should this worker
    be killed before it does."""
    remove_orphaned_private_files()
    with tempfile.TemporaryDirectory(prefix=f"{_PRIVATE_PREFIX}{os.getpid()}-") as tmp:
        os.chmod(tmp, 0o700)
        paths = {}
        for name, content in files.items():
            path = Path(tmp) / f"{name}.json"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(content, handle)
            paths[name] = path
        yield paths


class Connector:
    """One Airbyte protocol source: ``spec``, ``check``, ``discover``, ``read``."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self._running: subprocess.Popen[bytes] | None = None
        self.terminated = False

    def terminate(self, grace_seconds: float = 10.0) -> None:
        """Stop the running command (the run was cancelled), and refuse to start another;
        its reader then sees the end. SIGTERM first, SIGKILL if it lingers."""
        self.terminated = True
        process = self._running
        if process is not None and process.poll() is None:
            process.terminate()
            threading.Timer(grace_seconds, _kill_if_running, args=(process,)).start()

    def spec(self) -> dict[str, Any]:
        for message in self._run_collect(["spec"], {}):
            if message.type == Type.SPEC and message.spec is not None:
                return message.spec.connectionSpecification
        raise ConnectorError("connector printed no SPEC message")

    def check(self, config: dict[str, Any]) -> None:
        for message in self._run_collect(["check"], {"config": config}):
            if message.type == Type.CONNECTION_STATUS and message.connectionStatus is not None:
                if message.connectionStatus.status.value != "SUCCEEDED":
                    raise ConnectorError(
                        f"check failed: {message.connectionStatus.message or 'no message'}",
                        failure_type="config_error",
                    )
                return
        raise ConnectorError("connector printed no CONNECTION_STATUS message")

    def discover(self, config: dict[str, Any]) -> dict[str, Any]:
        for message in self._run_collect(["discover"], {"config": config}):
            if message.type == Type.CATALOG and message.catalog is not None:
                return message.catalog.model_dump(mode="json", exclude_none=True)
        raise ConnectorError("connector printed no CATALOG message")

    def _run_collect(self, verb: list[str], files: Mapping[str, Any]) -> list[AirbyteMessage]:
        with self.read_lines(verb, files) as lines:
            return [parse_message(line) for line in lines if _is_message(line)]

    @contextlib.contextmanager
    def read_lines(
        self,
        verb: list[str],
        files: Mapping[str, Any],
        on_stderr: Callable[[str], None] | None = None,
    ) -> Iterator[Iterator[bytes]]:
        """Run ``connector VERB --name file ...`` and yield its stdout lines as bytes.

        Raises ConnectorError when the process exits non-zero (after the lines were consumed),
        with the last stderr lines as the message.
        """
        if self.terminated:
            raise ConnectorError("run cancelled", failure_type="cancelled")
        with _private_files(files) as paths:
            args = [*self.argv, *verb]
            for name, path in paths.items():
                args += [f"--{name}", str(path)]
            try:
                process = subprocess.Popen(
                    args,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    bufsize=1 << 16,
                    preexec_fn=_die_with_parent,
                )
            except (FileNotFoundError, PermissionError) as exc:
                raise ConnectorNotFoundError(
                    f"cannot run connector {self.argv[0]!r}: {exc}"
                ) from None
            self._running = process
            stderr_tail: list[str] = []
            reader = threading.Thread(
                target=_drain_stderr, args=(process, stderr_tail, on_stderr), daemon=True
            )
            reader.start()
            assert process.stdout is not None
            exhausted = False

            def lines() -> Iterator[bytes]:
                nonlocal exhausted
                yield from process.stdout  # type: ignore[misc]
                exhausted = True

            try:
                yield lines()
            finally:
                if not exhausted and process.poll() is None:
                    # The consumer stopped early (error or cancellation): stop the connector.
                    process.terminate()
                process.stdout.close()
                code = process.wait()
                reader.join(timeout=5)
            if code != 0:
                tail = " | ".join(stderr_tail[-5:]) or "no output on stderr"
                raise ConnectorError(
                    f"connector {Path(self.argv[0]).name} {verb[0]} exited with code {code}: {tail}"
                )


def _kill_if_running(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()


def _die_with_parent() -> None:
    """In the child, before exec: be killed when the worker dies, even by SIGKILL, so that no
    connector runs on (and holds data) with nobody reading it. Linux only; elsewhere a no-op."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


_PR_SET_PDEATHSIG = 1
# Looked up once in the parent: nothing may be loaded between fork and exec.
try:
    _prctl = ctypes.CDLL(None).prctl
except (OSError, AttributeError):
    _prctl = None


def _drain_stderr(
    process: subprocess.Popen[bytes], tail: list[str], on_stderr: Callable[[str], None] | None
) -> None:
    assert process.stderr is not None
    for raw in process.stderr:
        line = raw.decode("utf-8", errors="replace").rstrip("\n")
        tail.append(line)
        del tail[:-20]
        if on_stderr:
            on_stderr(line)


def _is_message(line: bytes) -> bool:
    return line.lstrip().startswith(b"{")


def parse_message(line: bytes) -> AirbyteMessage:
    return AirbyteMessage.model_validate_json(line)


def configured_catalog(streams: list[dict[str, Any]]) -> dict[str, Any]:
    """Validate a configured catalog with the protocol models before handing it over."""
    return ConfiguredAirbyteCatalog.model_validate({"streams": streams}).model_dump(
        mode="json", exclude_none=True
    )
