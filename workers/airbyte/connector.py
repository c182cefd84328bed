"""Airbyte protocol connectors run as subprocesses.

A connector from PyPI is installed into its own virtual environment (connectors bring their own
dependency trees, which would clash with ours). Config, catalog and state reach the connector as
files in a private temporary directory that is removed when the command ends.

Errors are classified once, where they are raised: a ConnectorError knows whether another
attempt may go differently (``retryable``) and how Temporal is told (``kind``). A TRACE
error's message and failure type win over the exit code that follows it; output Sluice cannot
take is a ConnectorProtocolError (final, naming the stdout line and stream, never a value); a
command silent for longer than its stall timeout is stopped and fails as stalled (retried).
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import fcntl
import io
import json
import os
import re
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

from airbyte_protocol.models import (
    AirbyteMessage,
    ConfiguredAirbyteCatalog,
    TraceType,
    Type,
)
from pydantic import ValidationError

from workers.connections import SourceConfig
from workers.errors import SluiceError


class ConnectorError(SluiceError):
    """The connector could not be run, or it failed; the message is the connector's own.

    ``retryable``: whether another attempt may go differently. A connector's own configuration
    error and a cancellation are final; anything else (an upstream 502, a crash, a stall) may
    pass, and the attempt is retried from the committed state, as Airbyte retries attempts.
    """

    retryable = True
    kind = "ConnectorFailed"

    def __init__(
        self, message: str, *, failure_type: str | None = None, retryable: bool | None = None
    ) -> None:
        if retryable is None:
            retryable = type(self).retryable and failure_type not in _FINAL_FAILURE_TYPES
        super().__init__(message, retryable=retryable)
        self.failure_type = failure_type


_FINAL_FAILURE_TYPES = frozenset({"config_error", "cancelled"})


class ConnectorNotFoundError(ConnectorError):
    """The connector command is missing, not executable, or could not be installed."""

    retryable = False
    kind = "ConnectorNotFound"


class ConnectorProtocolError(ConnectorError):
    """The connector printed something Sluice cannot take (a RECORD without its stream or an
    object ``data``, invalid UTF-8, a malformed protocol message, a bad catalog, a record over
    the size limit). The same output fails the same way again: never retried.

    The message names the command, the stdout line and the stream, and what was wrong; never a
    value of the record (it goes into Temporal's history).
    """

    retryable = False
    kind = "ConnectorProtocolError"

    def __init__(self, message: str) -> None:
        super().__init__(message, failure_type="protocol_error")


class ConnectorExitError(ConnectorError):
    """The connector ended badly by itself: a non-zero exit. A TRACE error it printed before
    says more, and wins over this."""


class ConnectorStalledError(ConnectorExitError):
    """The connector printed nothing for longer than the stall timeout and was stopped."""


# DuckDB's read_json refuses JSON objects above its maximum_object_size (16 MiB by default);
# a longer RECORD line is refused here, with its stream and line, before DuckDB sees it.
MAX_RECORD_BYTES = 16 * 1024 * 1024

PROTOCOL_TYPES = frozenset(t.value for t in Type)
_DECLARED_TYPE = re.compile(rb'\s*\{\s*"type"\s*:\s*"([A-Z_]{1,32})"')
_JSON_KINDS = {
    dict: "an object",
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    type(None): "null",
}


def json_kind(value: Any) -> str:
    """What kind of JSON value this is (never the value itself)."""
    return _JSON_KINDS.get(type(value), type(value).__name__)


def protocol_json(line: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """The parsed protocol message a line starting with ``{`` holds, or why it cannot be one.

    Returns ``(message, None)`` for a JSON object whose ``type`` is a protocol type;
    ``(None, None)`` for a line that is not a protocol message (text, or a library printing
    JSON of its own): such lines are kept as log lines; ``(None, problem)`` for a line that
    declares a protocol type but is not valid UTF-8 or not valid JSON. The problem never quotes
    the line.
    """
    try:
        message = json.loads(line)
    except UnicodeDecodeError:
        try:
            message = json.loads(line.decode("utf-8", "surrogateescape"))
        except (ValueError, RecursionError):
            message = None
        kind = message.get("type") if isinstance(message, dict) else _declared_type(line)
        if kind in PROTOCOL_TYPES:
            return (message if isinstance(message, dict) else None), (
                f"{kind} message is not valid UTF-8"
            )
        return None, None
    except (ValueError, RecursionError):
        kind = _declared_type(line)
        if kind in PROTOCOL_TYPES:
            return None, f"{kind} message is not valid JSON"
        return None, None
    if isinstance(message, dict) and message.get("type") in PROTOCOL_TYPES:
        return message, None
    return None, None


def _declared_type(line: bytes) -> str | None:
    match = _DECLARED_TYPE.match(line)
    return match.group(1).decode("ascii") if match else None


def record_stream_problem(message: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """``(stream, namespace, problem)`` of a parsed RECORD message: where it goes, or why it
    goes nowhere."""
    record = message.get("record")
    if not isinstance(record, dict):
        if record is None:
            return None, None, "RECORD message has no record"
        return None, None, f"RECORD message's record is {json_kind(record)}, not an object"
    stream = record.get("stream")
    if not isinstance(stream, str) or not stream:
        what = "no stream" if stream is None else f"a stream that is {json_kind(stream)}"
        return None, None, f"RECORD has {what}"
    namespace = record.get("namespace")
    if namespace is not None and not isinstance(namespace, str):
        return stream, None, f"RECORD has a namespace that is {json_kind(namespace)}"
    return stream, namespace, None


def record_problem(message: dict[str, Any], size: int) -> str | None:
    """Why a parsed RECORD (of a known stream) cannot be loaded, or None. Cheap: no schema."""
    record = message["record"]
    data = record.get("data")
    if not isinstance(data, dict):
        if "data" not in record:
            return "RECORD has no data"
        return f"RECORD data is {json_kind(data)}, not an object"
    emitted_at = record.get("emitted_at")
    if emitted_at is not None and (
        isinstance(emitted_at, bool) or not isinstance(emitted_at, int | float)
    ):
        return f"RECORD emitted_at is {json_kind(emitted_at)}, not a number"
    if size > MAX_RECORD_BYTES:
        return oversized(size)
    return None


def oversized(size: int) -> str:
    return (
        f"RECORD is {size} bytes, over the limit of {MAX_RECORD_BYTES} bytes "
        "(16 MiB, DuckDB's largest JSON object)"
    )


def message_problem(message: dict[str, Any]) -> tuple[AirbyteMessage | None, str | None]:
    """Validate a parsed protocol message other than a RECORD with the protocol models.

    A malformed LOG message is no problem: it is kept as a log line (``(None, None)``); any
    other malformed message is. The problem names the fields and what is wrong with them,
    never their values.
    """
    try:
        return AirbyteMessage.model_validate(message), None
    except ValidationError as exc:
        if message.get("type") == "LOG":
            return None, None
        return None, f"malformed {message.get('type')} message: {validation_summary(exc)}"


def validation_summary(exc: ValidationError, limit: int = 3) -> str:
    """A pydantic error without the input values it quotes."""
    errors = exc.errors(include_input=False, include_url=False, include_context=False)
    parts = [
        f"{'.'.join(str(part) for part in error['loc']) or '(message)'}: {error['msg']}"
        for error in errors[:limit]
    ]
    if len(errors) > limit:
        parts.append(f"and {len(errors) - limit} more")
    return "; ".join(parts)


LogSink = Callable[[str, str], None]
"""Where a connector's log goes: ``write(level, text)``."""


def log_message(write: LogSink, message: AirbyteMessage) -> AirbyteMessage | None:
    """Write a LOG, TRACE or CONTROL message into the run's log. Returns the message when it is
    a TRACE error, which fails the run with its message."""
    if message.type == Type.TRACE and message.trace is not None:
        trace = message.trace
        if trace.type == TraceType.ERROR and trace.error is not None:
            error = trace.error
            failure_type = error.failure_type.value if error.failure_type else "unknown"
            write("error", f"TRACE ERROR ({failure_type}): {error.message}")
            if error.internal_message:
                write("error", f"internal: {error.internal_message}")
            if error.stack_trace:
                write("error", error.stack_trace)
            return message
        if trace.type == TraceType.STREAM_STATUS and trace.stream_status is not None:
            status = trace.stream_status
            write("trace", f"STREAM_STATUS {status.stream_descriptor.name} {status.status.value}")
        elif trace.type == TraceType.ESTIMATE and trace.estimate is not None:
            write("trace", f"ESTIMATE {trace.estimate.name}")
        else:
            write("trace", f"{trace.type.value}")
    elif message.type == Type.LOG and message.log is not None:
        write(message.log.level.value, message.log.message)
        if message.log.stack_trace:
            write(message.log.level.value, message.log.stack_trace)
    elif message.type == Type.CONTROL:
        write("control", "CONTROL message (config update not applied)")
    return None


def trace_failure(message: AirbyteMessage) -> ConnectorError:
    """The failure a TRACE error reports: its message, and its failure type (a config_error is
    final)."""
    assert message.trace is not None and message.trace.error is not None
    error = message.trace.error
    failure_type = error.failure_type.value if error.failure_type else None
    return ConnectorError(
        f"connector reported an error ({failure_type or 'unknown'}): {error.message}",
        failure_type=failure_type,
    )


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
            if resolved is None and os.sep in program and Path(program).is_file():
                raise ConnectorNotFoundError(
                    f"connector command {program!r} is not executable (add its execute bit)"
                )
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
                _check_catalog(catalog, f"connector {self.name} discover")
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
                    raw, problem = protocol_json(line) if _is_message(line) else (None, None)
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
            try:
                process = subprocess.Popen(
                    args,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    bufsize=0,
                    preexec_fn=_die_with_parent,
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
            stdout = io.BufferedReader(_WatchedPipe(process.stdout, watch), 1 << 16)
            with self._lock:
                self._running.add(watch)
            stderr_tail: list[str] = []
            reader = threading.Thread(
                target=_drain_stderr,
                args=(process.stderr, watch, stderr_tail, on_stderr),
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
            if code != 0:
                tail = " | ".join(stderr_tail[-5:]) or "no output on stderr"
                raise ConnectorExitError(
                    f"connector {self.name} {verb[0]} exited with code {code}: {tail}"
                )


def _check_catalog(catalog: dict[str, Any], where: str) -> None:
    """What the protocol models leave open and planning relies on: unique stream names, and
    a JSON schema whose properties are an object."""
    seen: set[tuple[str | None, str]] = set()
    for index, stream in enumerate(catalog.get("streams", [])):
        name = stream.get("name")
        key = (stream.get("namespace"), name)
        if key in seen:
            raise ConnectorProtocolError(f"{where}: bad catalog: stream {name!r} is listed twice")
        seen.add(key)
        properties = stream.get("json_schema", {}).get("properties", {})
        if not isinstance(properties, dict):
            raise ConnectorProtocolError(
                f"{where}: bad catalog: streams[{index}] ({name}): json_schema.properties is "
                f"{json_kind(properties)}, not an object"
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

    def close_pipe(self, stdout: io.BufferedReader) -> None:
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
    stderr: IO[bytes],
    watch: _Watch,
    tail: list[str],
    on_stderr: Callable[[str], None] | None,
) -> None:
    for raw in io.BufferedReader(stderr):  # type: ignore[arg-type]
        watch.last_output = time.monotonic()
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
