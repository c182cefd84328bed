"""An Airbyte protocol connector run as a subprocess: ``spec``, ``check``, ``discover``, ``read``.

Config, catalog and state reach the connector as files in a private temporary directory that is
removed when the command ends (and by the next run should the worker be killed first). A
watcher thread stops a command that stays silent for longer than its stall timeout; a connector
dies with its worker (PDEATHSIG). How the command line is obtained is executors.py's business.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import fcntl
import functools
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from airbyte_protocol.models import AirbyteMessage, Type

from workers.connectors.errors import (
    ConnectorError,
    ConnectorExitError,
    ConnectorNotFoundError,
    ConnectorProtocolError,
    ConnectorStalledError,
)
from workers.connectors.protocol import (
    LogSink,
    check_catalog,
    is_message,
    log_message,
    message_problem,
    protocol_json,
    trace_failure,
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
    """One Airbyte protocol source: ``spec``, ``check``, ``discover``, ``read``.

    ``stall_timeout``: a command that prints nothing, on stdout or stderr, for this many seconds
    is stopped and fails as stalled (None: never). ``stop_grace``: how long a command that is
    being stopped has between SIGTERM and SIGKILL.
    """

    def __init__(
        self, argv: list[str], *, stall_timeout: float | None = None, stop_grace: float = 10.0
    ) -> None:
        self.argv = argv
        self.stall_timeout = stall_timeout
        self.stop_grace = stop_grace
        self._running: set[_Watch] = set()
        self._lock = threading.Lock()
        self.terminated = False

    @property
    def name(self) -> str:
        return Path(self.argv[0]).name

    def terminate(self, grace_seconds: float | None = None) -> None:
        """Stop the running commands (the run was cancelled), and refuse to start another;
        their readers then see the end. SIGTERM first, SIGKILL if one lingers."""
        self.terminated = True
        with self._lock:
            running = list(self._running)
        for watch in running:
            watch.stop(grace_seconds)

    def spec(self, log: LogSink | None = None) -> dict[str, Any]:
        for message in self._run_collect(["spec"], {}, log):
            if message.type == Type.SPEC and message.spec is not None:
                return message.spec.connectionSpecification
        raise ConnectorProtocolError(f"connector {self.name} spec printed no SPEC message")

    def check(self, config: dict[str, Any], log: LogSink | None = None) -> None:
        for message in self._run_collect(["check"], {"config": config}, log):
            if message.type == Type.CONNECTION_STATUS and message.connectionStatus is not None:
                if message.connectionStatus.status.value != "SUCCEEDED":
                    raise ConnectorError(
                        f"check failed: {message.connectionStatus.message or 'no message'}",
                        failure_type="config_error",
                    )
                return
        raise ConnectorProtocolError(
            f"connector {self.name} check printed no CONNECTION_STATUS message"
        )

    def discover(self, config: dict[str, Any], log: LogSink | None = None) -> dict[str, Any]:
        for message in self._run_collect(["discover"], {"config": config}, log):
            if message.type == Type.CATALOG and message.catalog is not None:
                catalog = message.catalog.model_dump(mode="json", exclude_none=True)
                check_catalog(catalog, f"connector {self.name} discover")
                return catalog
        raise ConnectorProtocolError(f"connector {self.name} discover printed no CATALOG message")

    def _run_collect(
        self, verb: list[str], files: Mapping[str, Any], log: LogSink | None
    ) -> list[AirbyteMessage]:
        """Run a command whose output is a few messages; LOG and TRACE messages and stderr go
        to `log`. A TRACE error fails the command with its message, whatever the exit code."""
        write: LogSink = log or (lambda _level, _text: None)
        where = f"connector {self.name} {verb[0]}"
        messages: list[AirbyteMessage] = []
        trace_error: AirbyteMessage | None = None
        cut_short: ConnectorProtocolError | None = None
        try:
            with self.read_lines(
                verb, files, on_stderr=lambda line: write("stderr", line)
            ) as lines:
                for number, line in enumerate(lines, 1):
                    raw, problem = protocol_json(line) if is_message(line) else (None, None)
                    message = None
                    if raw is not None and problem is None:
                        message, problem = message_problem(raw)
                    if problem is not None:
                        error = ConnectorProtocolError(f"{where}: stdout line {number}: {problem}")
                        if line.endswith(b"\n"):
                            raise error
                        # The last line, cut short: the exit status may tell why.
                        cut_short = error
                        continue
                    if message is None:
                        write("stdout", line.decode("utf-8", "replace").rstrip("\n"))
                        continue
                    trace_error = log_message(write, message) or trace_error
                    messages.append(message)
        except ConnectorExitError as exc:
            if trace_error is None:
                raise
            write("error", str(exc))
            raise trace_failure(trace_error) from None
        if trace_error is not None:
            raise trace_failure(trace_error)
        if cut_short is not None:
            raise cut_short
        return messages

    @contextlib.contextmanager
    def read_lines(
        self,
        verb: list[str],
        files: Mapping[str, Any],
        on_stderr: Callable[[str], None] | None = None,
    ) -> Iterator[Iterator[bytes]]:
        """Run ``connector VERB --name file ...`` and yield its stdout lines as bytes.

        Raises, after the lines were consumed: ConnectorExitError when the process exits
        non-zero, with the last stderr lines as the message; ConnectorStalledError when it
        printed nothing for `stall_timeout` seconds (it is then stopped); ConnectorError
        ("cancelled") when it was terminated. When the consumer stops early (an error), the
        process is stopped and the consumer's error stands.
        """
        if self.terminated:
            raise ConnectorError("run cancelled", failure_type="cancelled")
        with _private_files(files) as paths:
            args = [*self.argv, *verb]
            for name, path in paths.items():
                args += [f"--{name}", str(path)]
            launcher = _launcher(self.argv[0])
            try:
                process = subprocess.Popen(
                    [*launcher, *args],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    bufsize=0,
                    preexec_fn=None if launcher else _die_with_parent,
                )
            except PermissionError as exc:
                raise ConnectorNotFoundError(
                    f"cannot run connector {self.argv[0]!r}: it is not executable ({exc.strerror})"
                ) from None
            except OSError as exc:
                raise ConnectorNotFoundError(
                    f"cannot run connector {self.argv[0]!r}: {exc.strerror or exc}"
                ) from None
            assert process.stdout is not None and process.stderr is not None
            watch = _Watch(process, self.stall_timeout, self.stop_grace)
            stdout = io.BufferedReader(_WatchedPipe(_raw(process.stdout), watch), 1 << 16)
            with self._lock:
                self._running.add(watch)
            stderr_tail: list[str] = []
            reader = threading.Thread(
                target=_drain_stderr,
                args=(_raw(process.stderr), watch, stderr_tail, on_stderr),
                daemon=True,
            )
            reader.start()
            watcher = threading.Thread(target=watch.run, daemon=True)
            watcher.start()
            exhausted = False

            def lines() -> Iterator[bytes]:
                nonlocal exhausted
                yield from stdout
                exhausted = True

            try:
                yield lines()
            finally:
                try:
                    if not exhausted:
                        # The consumer stopped early (error or cancellation): stop the connector.
                        watch.stop()
                    watch.close_pipe(stdout)
                    code = process.wait()
                finally:
                    watch.done()
                    watcher.join()
                    reader.join(timeout=5)
                    if not reader.is_alive():
                        process.stderr.close()
                    with self._lock:
                        self._running.discard(watch)
            if code != 0 and self.terminated:
                raise ConnectorError("run cancelled", failure_type="cancelled")
            if watch.stalled:
                raise ConnectorStalledError(
                    f"connector {self.name} {verb[0]} printed nothing for "
                    f"{self.stall_timeout:g} s: stopped as stalled",
                    failure_type="stalled",
                )
            if launcher and code == _EXEC_FAILED and stderr_tail[:1]:
                # setpriv could not exec the connector (a script whose interpreter is
                # missing): what Popen itself reports as "cannot run".
                first = stderr_tail[0]
                if first.startswith(_SETPRIV_EXEC_FAILED):
                    reason = first.rsplit(": ", 1)[-1]
                    raise ConnectorNotFoundError(f"cannot run connector {self.argv[0]!r}: {reason}")
            if code != 0:
                tail = " | ".join(stderr_tail[-5:]) or "no output on stderr"
                raise ConnectorExitError(
                    f"connector {self.name} {verb[0]} exited with code {code}: {tail}"
                )


class _Watch:
    """Watches one running command: stops it when it stays silent for too long, and kills it
    when it outlives a stop by the grace period. One thread per command, ticking."""

    def __init__(
        self, process: subprocess.Popen[bytes], stall_timeout: float | None, grace: float
    ) -> None:
        self.process = process
        self.stall_timeout = stall_timeout
        self.last_output = time.monotonic()
        self.stalled = False
        self._stop_at: float | None = None
        self._grace = grace
        self._done = threading.Event()
        self._pipe_lock = threading.Lock()
        self._pipe_fd: int | None = process.stdout.fileno() if process.stdout else None
        self._tick = min(1.0, grace / 4, stall_timeout / 4 if stall_timeout else 1.0)

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM now; the watch thread sends SIGKILL once the grace period has passed."""
        if self._stop_at is not None:
            return
        if grace is not None:
            self._grace = grace
        self._stop_at = time.monotonic()
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()

    def close_pipe(self, stdout: io.BufferedIOBase) -> None:
        with self._pipe_lock:
            self._pipe_fd = None
            stdout.close()

    def done(self) -> None:
        self._done.set()

    def run(self) -> None:
        while not self._done.wait(self._tick):
            if self.process.poll() is not None:
                continue
            now = time.monotonic()
            if self._stop_at is not None:
                if now - self._stop_at >= self._grace:
                    with contextlib.suppress(ProcessLookupError):
                        self.process.kill()
                continue
            if (
                self.stall_timeout is not None
                and now - self.last_output > self.stall_timeout
                and self._unread() == 0
            ):
                self.stalled = True
                self.stop()

    def _unread(self) -> int:
        """Bytes the connector wrote that we have not read yet: while there are some, the
        connector is not silent, only waiting for us (a slow load)."""
        with self._pipe_lock:
            if self._pipe_fd is None:
                return 0
            pending = array.array("i", [0])
            try:
                fcntl.ioctl(self._pipe_fd, termios.FIONREAD, pending, True)
            except OSError:
                return 0
            return pending[0]


class _WatchedPipe(io.RawIOBase):
    """The connector's stdout pipe, noting when output arrives (once per buffer refill, not
    per line: the record path stays as cheap as reading the pipe)."""

    def __init__(self, raw: io.RawIOBase, watch: _Watch) -> None:
        self._raw = raw
        self._watch = watch

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        count = self._raw.readinto(buffer)
        if count:
            self._watch.last_output = time.monotonic()
        return count

    def fileno(self) -> int:
        return self._raw.fileno()

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            super().close()


# Dying with the worker is set up by `setpriv --pdeathsig KILL` (util-linux) where there is
# one, instead of a preexec_fn: a preexec_fn makes Python fork() the whole worker rather than
# vfork() it, which copies the page tables of every mapping: 35-40 ms per connector command for
# a worker of 280 MB RSS (0.2 ms without), more as the worker grows, on every run's path. The
# death signal still follows the worker thread that started the command, as prctl in a
# preexec_fn did. Without setpriv, or for a command that cannot be resolved to an executable
# file (Popen then reports why), the preexec_fn is used.
_SETPRIV_EXEC_FAILED = "setpriv: failed to execute "
_EXEC_FAILED = 127


@functools.cache
def _setpriv() -> str | None:
    found = shutil.which("setpriv")
    if found is None or not sys.platform.startswith("linux"):
        return None
    try:
        done = subprocess.run(
            [found, "--pdeathsig", "KILL", "--", "true"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return found if done.returncode == 0 else None  # an old setpriv without --pdeathsig


def _launcher(program: str) -> list[str]:
    """What the connector's command line is prefixed with: setpriv, or nothing (preexec_fn)."""
    setpriv = _setpriv()
    if setpriv is None or shutil.which(program) is None:
        return []
    return [setpriv, "--pdeathsig", "KILL", "--"]


def _die_with_parent() -> None:
    """In the child, before exec: be killed when the worker dies, even by SIGKILL, so that no
    connector runs on (and holds data) with nobody reading it. Linux only; elsewhere a no-op."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


_PR_SET_PDEATHSIG = 1
# Looked up once in the parent: nothing may be loaded between fork and exec.
_prctl: Callable[..., int] | None
try:
    _prctl = ctypes.CDLL(None).prctl
except (OSError, AttributeError):
    _prctl = None


def _raw(pipe: IO[bytes]) -> io.RawIOBase:
    """A pipe of a process started with bufsize=0: Popen hands it over as a raw FileIO."""
    assert isinstance(pipe, io.RawIOBase)
    return pipe


def _drain_stderr(
    stderr: io.RawIOBase,
    watch: _Watch,
    tail: list[str],
    on_stderr: Callable[[str], None] | None,
) -> None:
    for raw in io.BufferedReader(stderr):
        watch.last_output = time.monotonic()
        line = raw.decode("utf-8", errors="replace").rstrip("\n")
        tail.append(line)
        del tail[:-20]
        if on_stderr:
            on_stderr(line)
