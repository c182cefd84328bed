"""The Airbyte protocol as Sluice reads it: a connector's stdout lines, checked and parsed.

Nothing here runs a process or touches storage: these are the checks that decide whether a line
is a RECORD for a stream of the run, another protocol message, or text to keep as a log line;
the messages that describe a problem never quote a value. ``record_stream`` is the fast path
that routes a RECORD line in the Python CDK's shape without parsing it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from airbyte_protocol.models import (
    AirbyteMessage,
    ConfiguredAirbyteCatalog,
    TraceType,
    Type,
)
from pydantic import ValidationError

from workers.connectors.errors import ConnectorError, ConnectorProtocolError

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


def check_catalog(catalog: dict[str, Any], where: str) -> None:
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


def is_message(line: bytes) -> bool:
    return line.lstrip().startswith(b"{")


def parse_message(line: bytes) -> AirbyteMessage:
    return AirbyteMessage.model_validate_json(line)


def configured_catalog(streams: list[dict[str, Any]]) -> dict[str, Any]:
    """Validate a configured catalog with the protocol models before handing it over."""
    return ConfiguredAirbyteCatalog.model_validate({"streams": streams}).model_dump(
        mode="json", exclude_none=True
    )


# -- RECORD lines: the fast path --------------------------------------------------------------

_RECORD_PREFIX = b'{"type":"RECORD","record":{"stream":"'
_DATA_AFTER_STREAM = b'","data":{'
_MAX_RECORD_LINE = MAX_RECORD_BYTES + 1  # with its newline
# The stream a line names, as far as it can be told without parsing it.
STREAM_FIELD = re.compile(rb'"stream"\s*:\s*"([^"\\]{1,256})"')


def record_stream(line: bytes) -> str | None:
    """The stream of a RECORD line as the Python CDK prints it, without parsing the record.

    Records are most of the traffic, and parsing each one only to route it costs as much CPU as
    a good share of the connector's own work. So only cheap checks run here: the exact CDK
    shape up to an object ``data``, a whole line (ending in ``}`` and a newline), the size
    limit, and valid UTF-8 (decoded only when the line is not ASCII). Anything else (other key
    order, escapes in the name, a namespace, a line that fails a check) returns None and is
    parsed and checked in full; what only a parse could find, the destination finds when it
    loads the batch (it refuses the records), and the batch is then checked in full to name the
    line.
    """
    if not line.startswith(_RECORD_PREFIX):
        return None
    end = line.find(b'"', len(_RECORD_PREFIX))
    if (
        end < 0
        or not line.startswith(_DATA_AFTER_STREAM, end)
        or not line.endswith(b"}\n")
        or len(line) > _MAX_RECORD_LINE
    ):
        return None
    name = line[len(_RECORD_PREFIX) : end]
    if b"\\" in name or b'"namespace"' in line:
        return None
    if not line.isascii():
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return name.decode("utf-8")


def record_size(line: bytes) -> int:
    return len(line) - (1 if line.endswith(b"\n") else 0)


# -- STATE messages ----------------------------------------------------------------------------


def state_key(message: dict[str, Any]) -> str:
    """Where a STATE message is kept: one row per stream, or one for GLOBAL / LEGACY state."""
    kind = message.get("type") or "LEGACY"
    if kind == "STREAM":
        descriptor = message["stream"]["stream_descriptor"]
        return f"stream:{descriptor.get('namespace') or ''}:{descriptor['name']}"
    return kind.lower()


def stream_state_key(name: str, namespace: str | None) -> str:
    """The key of a stream's own STATE (``state_key`` of a STREAM state for it)."""
    return f"stream:{namespace or ''}:{name}"


def is_stream_state_key(key: str) -> bool:
    """Whether a state key is a stream's own, rather than a GLOBAL or LEGACY state's."""
    return key.startswith("stream:")
