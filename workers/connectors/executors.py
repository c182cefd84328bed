"""How a connector's command line is obtained: the executors.

An executor turns a connection's ``[connections.source]`` into the command line that runs the
connector (``argv``); the Connector (process.py) appends the verb and the ``--config`` /
``--catalog`` / ``--state`` files. Today there are two:

- ``PyPIPackage``: ``source.package`` is installed from PyPI into a virtual environment of its
  own (connectors bring their own dependency trees, which would clash with ours), and
  ``command[0]`` is looked up in it;
- ``CommandOnPath``: without a package, ``command[0]`` is a command on PATH (or a file path).

``ConnectorInstaller.executor_for`` chooses between them: that choice is where a new executor
(a container image, say) is registered, next to its class here.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from workers.connections import SourceConfig
from workers.connectors.errors import ConnectorNotFoundError

Progress = Callable[[str], None]
"""Where an executor reports a slow step (an install), as text."""


class Executor(Protocol):
    """One way to run connectors."""

    def argv(
        self, source: SourceConfig, *, install: bool = True, on_progress: Progress | None = None
    ) -> list[str]:
        """The command line that runs the connector (the verb and files are added to it),
        preparing the connector first when it needs it and ``install`` allows it. Raises
        ConnectorNotFoundError when there is no such connector or it cannot be run."""
        ...


class CommandOnPath:
    """``command[0]`` as it is: a command on PATH, or a path to an executable file."""

    def argv(
        self, source: SourceConfig, *, install: bool = True, on_progress: Progress | None = None
    ) -> list[str]:
        program = source.command[0]
        resolved = shutil.which(program)
        if resolved is None and os.sep in program and Path(program).is_file():
            raise ConnectorNotFoundError(
                f"connector command {program!r} is not executable (add its execute bit)"
            )
        if resolved is None:
            raise ConnectorNotFoundError(
                f"connector command {program!r} not found (not on PATH and not a file)"
            )
        return [resolved, *source.command[1:]]


class PyPIPackage:
    """``source.package`` installed from PyPI, one virtual environment each, under
    ``connectors_dir``; ``command[0]`` is the package's command in it."""

    def __init__(self, connectors_dir: Path, python: str = sys.executable) -> None:
        self._dir = connectors_dir
        self._python = python

    def venv_for(self, source: SourceConfig) -> Path:
        return self._dir / source.connector_name

    def argv(
        self, source: SourceConfig, *, install: bool = True, on_progress: Progress | None = None
    ) -> list[str]:
        assert source.package is not None
        program = source.command[0]
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

    def _install(self, source: SourceConfig, venv: Path, on_progress: Progress | None) -> None:
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


class ConnectorInstaller:
    """A worker's executors, and which one runs a source: its ``package`` installed from PyPI,
    else its command from PATH. A new executor is registered in ``executor_for``."""

    def __init__(self, connectors_dir: Path, python: str = sys.executable) -> None:
        self.packages = PyPIPackage(connectors_dir, python)
        self.commands = CommandOnPath()

    def executor_for(self, source: SourceConfig) -> Executor:
        if source.package is not None:
            return self.packages
        return self.commands

    def argv(
        self, source: SourceConfig, *, install: bool = True, on_progress: Progress | None = None
    ) -> list[str]:
        """The command line that runs the connector, installing it first if needed."""
        return self.executor_for(source).argv(source, install=install, on_progress=on_progress)
