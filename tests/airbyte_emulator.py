"""An Airbyte API emulator for tests: the public API and the two Config API calls Sluice uses.

It serves, on 127.0.0.1 and a free port, exactly what the Airbyte backend talks to:

* public API under ``/api/public/v1``: ``POST /applications/token``, ``POST /jobs``,
  ``GET /jobs``, ``GET /jobs/{jobId}``, ``DELETE /jobs/{jobId}``, ``GET /connections/{id}``,
  ``GET /streams``, and (for the source and destination types) ``GET /sources/{id}`` and
  ``GET /destinations/{id}``;
* Config API under ``/api/v1``: ``POST /jobs/get`` (attempts with their logs) and
  ``POST /state/get`` (the connection state).

Why an emulator and not a mock of the SDK: the backend must survive what the real server does on
the wire (409 ``try-again-later`` problems, 429 with ``Retry-After``, token expiry, slow
answers), and the only trustworthy description of that wire is the pair of OpenAPI documents
Airbyte publishes. So every response this emulator serves is validated against those documents
(``tests/airbyte_specs/``, copied from Airbyte; see its SOURCE.md) before it leaves, and every
request against them when it arrives.
A response that does not conform is recorded as a violation and the ``airbyte_emulator`` fixture
fails the test at teardown: the emulator cannot silently drift away from the real API.

Validation, and the spec constructs that need help:

* ``api.yaml`` (OpenAPI 3.1) has two dangling references (``#/components/responses/
  ForbiddenResponse`` and ``#/components/schemas/DataplaneCreateResponseBody``) and
  ``config.yaml`` (3.0) has ``default: null`` on a non-nullable string, so both fail
  openapi-spec-validator's whole-document check. They are loaded with that check off; openapi-core
  resolves references lazily, and none of the operations served here touch the broken parts.
* The specs' servers are ``https://api.airbyte.com/v1`` and ``https://cloud.airbyte.com/api``,
  while a self-managed Airbyte serves ``/api/public/v1`` and ``/api/v1``. Each request is
  re-addressed onto the spec's own server URL before openapi-core matches it.
* The public spec declares its error responses without a body (``'404': {description: Not
  found}``) or not at all (409, 429, 500, 503 are absent). Those bodies are validated directly
  against the problem schemas of ``api-problems.yaml`` with openapi-schema-validator. A problem's
  identity (``type``, ``title``, ``status``) lives only in schema *defaults* there, so the
  validator also checks the body's ``title`` names a problem defined for that HTTP status and its
  ``type`` equals that problem's default. 429, 502 and 504 have no problem in api-problems.yaml;
  their bodies are checked against ``BaseProblemFields`` only. Config API errors the spec does not
  declare are checked against ``KnownExceptionInfo`` from config.yaml.
* ``ApplicationTokenRequestWithGrant`` requires ``grant_type`` but declares the property as
  ``grant-type``; openapi-core's form decoder keeps declared properties only, so the SDK's
  (correct) form-encoded token request would fail. Form bodies are checked as their JSON
  equivalent, which the same operation declares with the same schema.
* Nullable fields are not nullable in the spec: ``JobResponse.duration`` is absent, not null,
  while a job is pending, as Airbyte's own mapper does it.
"""

from __future__ import annotations

import base64
import copy
import functools
import http
import itertools
import json
import re
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
import yaml
from openapi_core import Config, OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_core.templating.responses.exceptions import ResponseNotFound
from openapi_schema_validator import OAS30Validator
from werkzeug.datastructures import Headers, ImmutableMultiDict

SPECS_DIR = Path(__file__).resolve().parent / "airbyte_specs"
PUBLIC_BASE = "/api/public/v1"
CONFIG_BASE = "/api/v1"

JobStatus = Literal[
    "pending", "queued", "running", "incomplete", "failed", "succeeded", "cancelled"
]
JOB_STATUSES: tuple[str, ...] = get_args(JobStatus)
TERMINAL_STATUSES = frozenset({"failed", "succeeded", "cancelled"})
LogFormat = Literal["formatted", "structured"]
AuthMode = Literal["none", "bearer", "basic", "client_credentials"]
ApiKind = Literal["public", "config"]
ViolationKind = Literal["request", "response", "unrouted", "crash"]

_JSON = "application/json"
_PROBLEM_JSON = "application/problem+json"


class SpecViolation(AssertionError):
    """The emulator served (or was sent) something the real Airbyte specs do not allow."""


# --------------------------------------------------------------------------------------------
# The specs, loaded once per process (= once per pytest session)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ProblemKind:
    schema_name: str
    status: int
    type: str
    title: str
    detail: str
    data_schema: str | None


class _SpecRequest:
    """A request re-addressed onto a spec's server URL, in openapi-core's Request protocol."""

    def __init__(
        self,
        host_url: str,
        path: str,
        method: str,
        query: Sequence[tuple[str, str]],
        body: bytes | None,
        content_type: str,
    ) -> None:
        self.host_url = host_url
        self.path = path
        self.method = method.lower()
        self.body = body or None
        self.content_type = content_type
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(list(query)),
            header=Headers(),
            cookie=ImmutableMultiDict(),
            path={},
        )


class _SpecResponse:
    """A response in openapi-core's Response protocol."""

    def __init__(self, status: int, content_type: str, data: bytes, headers: Headers) -> None:
        self.status_code = status
        self.content_type = content_type
        self.data = data
        self.headers = headers


class AirbyteSpecs:
    """The three Airbyte OpenAPI documents, ready to validate requests and responses."""

    def __init__(self, directory: Path) -> None:
        # The whole-document check fails on both specs (see the module docstring); references
        # are still resolved, lazily, when an operation is validated.
        config = Config(spec_validator_cls=None)
        public, config_api, problems = (
            _read_yaml(directory / name)
            for name in ("api.yaml", "config.yaml", "api-problems.yaml")
        )
        self.directory = directory
        self.public = OpenAPI.from_dict(public, config=config)
        self.config = OpenAPI.from_dict(config_api, config=config)
        self._public_server = urlsplit(public["servers"][0]["url"])
        self._config_server = urlsplit(config_api["servers"][0]["url"])
        self._problem_components = {"schemas": problems["components"]["schemas"]}
        self._config_components = {"schemas": config_api["components"]["schemas"]}
        self.problems = self._index_problems(problems["components"]["schemas"])
        self._validators: dict[tuple[str, str], OAS30Validator] = {}
        # openapi-core objects are shared across the emulators' server threads.
        self._lock = threading.Lock()

    @staticmethod
    def _index_problems(schemas: Mapping[str, Any]) -> dict[str, _ProblemKind]:
        kinds: dict[str, _ProblemKind] = {}
        for name, schema in schemas.items():
            if schema.get("x-implements") != "io.airbyte.api.problems.ProblemResponse":
                continue
            defaults: dict[str, Any] = {}
            data_schema = None
            for part in schema.get("allOf", []):
                for prop, spec in part.get("properties", {}).items():
                    if "default" in spec:
                        defaults[prop] = spec["default"]
                    if prop == "data" and "$ref" in spec:
                        data_schema = spec["$ref"].rsplit("/", 1)[-1]
            if {"status", "type", "title"} <= defaults.keys():
                kinds[name] = _ProblemKind(
                    schema_name=name,
                    status=int(defaults["status"]),
                    type=defaults["type"],
                    title=defaults["title"],
                    detail=defaults.get("detail", ""),
                    data_schema=data_schema,
                )
        return kinds

    def _validator(self, document: str, schema_name: str) -> OAS30Validator:
        key = (document, schema_name)
        if key not in self._validators:
            components = (
                self._problem_components if document == "problems" else self._config_components
            )
            # A self-contained schema: the $ref resolves against this dict's own components.
            schema = {"$ref": f"#/components/schemas/{schema_name}", "components": components}
            self._validators[key] = OAS30Validator(schema)
        return self._validators[key]

    def schema_errors(self, document: str, schema_name: str, body: Any) -> list[str]:
        """Errors of `body` against one component schema of api-problems.yaml or config.yaml."""
        with self._lock:
            validator = self._validator(document, schema_name)
            return [error.message for error in validator.iter_errors(body)]

    def _spec_request(
        self,
        kind: ApiKind,
        path: str,
        method: str,
        query: Sequence[tuple[str, str]],
        body: bytes | None,
        content_type: str,
    ) -> _SpecRequest:
        base = PUBLIC_BASE if kind == "public" else CONFIG_BASE
        server = self._public_server if kind == "public" else self._config_server
        # Public paths are relative to the server (https://api.airbyte.com/v1 + /jobs); Config
        # API paths carry their version (https://cloud.airbyte.com/api + /v1/jobs/get).
        tail = path[len(base) :] if kind == "public" else path[len("/api") :]
        return _SpecRequest(
            f"{server.scheme}://{server.netloc}",
            server.path.rstrip("/") + tail,
            method,
            query,
            body,
            content_type,
        )

    def request_errors(
        self,
        kind: ApiKind,
        path: str,
        method: str,
        query: Sequence[tuple[str, str]],
        body: bytes | None,
        content_type: str,
    ) -> list[str]:
        """What is wrong with a request, per the spec of its API (empty when it conforms)."""
        if body and content_type.startswith("application/x-www-form-urlencoded"):
            # The token endpoint's schema requires `grant_type` but declares only `grant-type`,
            # and openapi-core's form decoder keeps declared properties only, so the SDK's
            # correct form would fail. The operation declares the same schema for JSON: check
            # the form as its JSON equivalent.
            body = json.dumps(dict(parse_qsl(body.decode(), keep_blank_values=True))).encode()
            content_type = _JSON
        request = self._spec_request(kind, path, method, query, body, content_type)
        spec = self.public if kind == "public" else self.config
        with self._lock:
            try:
                spec.validate_request(request)
            except Exception as error:  # openapi-core raises a family of errors; all are findings
                return [_describe(error)]
        return []

    def response_errors(
        self,
        kind: ApiKind,
        path: str,
        method: str,
        query: Sequence[tuple[str, str]],
        status: int,
        content_type: str,
        data: bytes,
        headers: Mapping[str, str],
    ) -> list[str]:
        """What is wrong with a response, per the spec of its API (empty when it conforms)."""
        request = self._spec_request(kind, path, method, query, None, _JSON)
        response = _SpecResponse(status, content_type, data, Headers(dict(headers)))
        spec = self.public if kind == "public" else self.config
        declared = True
        with self._lock:
            try:
                spec.validate_response(request, response)
            except ResponseNotFound:
                declared = False
            except Exception as error:
                return [_describe(error)]
        if status < 400:
            return [] if declared else [f"status {status} is not declared for {method} {path}"]
        if kind == "config":
            # Declared Config API errors carry their schema, which openapi-core just checked.
            return [] if declared else self._config_error_errors(data)
        return self._problem_errors(status, content_type, data)

    def _config_error_errors(self, data: bytes) -> list[str]:
        try:
            body = json.loads(data)
        except ValueError:
            return ["an undeclared Config API error must be a KnownExceptionInfo JSON body"]
        return self.schema_errors("config", "KnownExceptionInfo", body)

    def _problem_errors(self, status: int, content_type: str, data: bytes) -> list[str]:
        if content_type.split(";")[0].strip() not in (_PROBLEM_JSON, _JSON):
            return [f"a problem body must be JSON, not {content_type!r}"]
        try:
            body = json.loads(data)
        except ValueError:
            return ["a problem body must be JSON"]
        if not isinstance(body, dict):
            return ["a problem body must be a JSON object"]
        if body.get("status", status) != status:
            return [f"problem status {body.get('status')} differs from HTTP status {status}"]
        kinds = [kind for kind in self.problems.values() if kind.status == status]
        if not kinds:
            return self.schema_errors("problems", "BaseProblemFields", body)
        matching = [kind for kind in kinds if kind.title == body.get("title")]
        if not matching:
            titles = sorted({kind.title for kind in kinds})
            return [
                f"problem title {body.get('title')!r} is not one api-problems.yaml defines for "
                f"status {status} ({', '.join(titles)})"
            ]
        errors: list[str] = []
        for kind in matching:
            errors = self.schema_errors("problems", kind.schema_name, body)
            if body.get("type") != kind.type:
                errors.append(f"problem type {body.get('type')!r} is not {kind.type!r}")
            if not errors:
                return []
        return errors

    def problem_body(self, schema_name: str, detail: str | None, data: Any = None) -> dict:
        """A problem body built from the defaults api-problems.yaml gives `schema_name`."""
        kind = self.problems[schema_name]
        body: dict[str, Any] = {
            "status": kind.status,
            "type": kind.type,
            "title": kind.title,
            "detail": detail or kind.detail,
        }
        if data is not None:
            body["data"] = data
        elif kind.data_schema == "ProblemMessageData":
            body["data"] = {"message": detail or kind.detail}
        return body


def _read_yaml(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        return yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _describe(error: BaseException) -> str:
    """An openapi-core error with the jsonschema findings it wraps (they hold the detail)."""
    parts = [f"{type(error).__name__}: {error}"]
    cause = error.__cause__
    while cause is not None:
        schema_errors = getattr(cause, "schema_errors", None)
        if schema_errors:
            parts.extend(getattr(item, "message", str(item)) for item in schema_errors)
        else:
            parts.append(f"{type(cause).__name__}: {cause}")
        cause = cause.__cause__
    return "; ".join(parts)


@functools.cache
def load_specs(directory: Path = SPECS_DIR) -> AirbyteSpecs:
    """The specs, parsed once per process: config.yaml alone is 23k lines."""
    return AirbyteSpecs(directory)


# --------------------------------------------------------------------------------------------
# What the tests program: connections, job scripts, state, failures
# --------------------------------------------------------------------------------------------


@dataclass
class EmulatedStream:
    """A configured stream of a connection, and the properties `GET /streams` reports for it."""

    name: str
    namespace: str | None = None
    sync_mode: str = "incremental_append"
    cursor_field: list[str] | None = None
    primary_key: list[list[str]] | None = None
    selected_fields: list[str] | None = None
    columns: list[str] = field(default_factory=lambda: ["id", "updated_at"])
    source_defined_cursor: bool = False
    sync_modes: list[str] = field(
        default_factory=lambda: [
            "full_refresh_overwrite",
            "full_refresh_append",
            "incremental_append",
            "incremental_deduped_history",
        ]
    )

    def configuration(self) -> dict[str, Any]:
        """The stream's StreamConfiguration in ConnectionResponse."""
        body: dict[str, Any] = {"name": self.name, "syncMode": self.sync_mode}
        if self.namespace is not None:
            body["namespace"] = self.namespace
        if self.cursor_field is not None:
            body["cursorField"] = list(self.cursor_field)
        if self.primary_key is not None:
            body["primaryKey"] = [list(path) for path in self.primary_key]
        if self.selected_fields is not None:
            body["selectedFields"] = [{"fieldPath": [column]} for column in self.selected_fields]
        return body

    def properties(self) -> dict[str, Any]:
        """The stream's StreamProperties in the `GET /streams` answer."""
        body: dict[str, Any] = {
            "streamName": self.name,
            "syncModes": list(self.sync_modes),
            "defaultCursorField": list(self.cursor_field or []),
            "sourceDefinedCursorField": self.source_defined_cursor,
            "sourceDefinedPrimaryKey": [list(path) for path in self.primary_key or []],
            "propertyFields": [[column] for column in self.columns],
        }
        if self.namespace is not None:
            body["streamnamespace"] = self.namespace
        return body


@dataclass
class EmulatedConnection:
    """A connection with its source and destination, as the emulator serves them."""

    connection_id: str
    name: str
    source_id: str
    destination_id: str
    workspace_id: str
    source_type: str
    destination_type: str
    streams: list[EmulatedStream]
    source_name: str
    destination_name: str
    source_configuration: dict[str, Any]
    destination_configuration: dict[str, Any]
    created_at: int
    status: str = "active"
    schedule_type: str = "manual"


@dataclass
class JobScript:
    """How one job behaves: the statuses it walks through, one per `GET /jobs/{id}`, and what
    its attempts, logs and resulting state look like."""

    statuses: list[str]
    connection_id: str | None = None
    failure_summary: str | None = None
    rows_synced: int = 0
    bytes_synced: int = 0
    attempt_logs: list[list[str | dict[str, Any]]] | None = None
    log_format: LogFormat | list[LogFormat] = "formatted"
    state_after: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.statuses:
            raise ValueError("a job script needs at least one status")
        unknown = [status for status in self.statuses if status not in JOB_STATUSES]
        if unknown:
            raise ValueError(
                f"unknown job status(es) {unknown}; serve invalid answers with tamper_next()"
            )


@dataclass
class EmulatedJob:
    """A job the emulator runs; its status advances by one scripted step per poll."""

    job_id: int
    connection_id: str
    job_type: str
    script: JobScript
    created_at: float
    updated_at: float
    step: int = 0
    cancelled: bool = False

    @property
    def status(self) -> str:
        """The job's current status."""
        return "cancelled" if self.cancelled else self.script.statuses[self.step]

    @property
    def terminal(self) -> bool:
        """Whether the job has finished (succeeded, failed or cancelled)."""
        return self.status in TERMINAL_STATUSES

    @property
    def started(self) -> bool:
        """Whether the job has attempts: it left pending/queued at least once (a job cancelled
        while still pending never got one)."""
        return any(
            status not in ("pending", "queued") for status in self.script.statuses[: self.step + 1]
        )


@dataclass
class RecordedRequest:
    """One request the emulator received, as the tests may assert on it."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    authorization: str | None
    at: float
    status: int | None = None


@dataclass
class Violation:
    """A request or response that does not conform to the Airbyte specs."""

    kind: ViolationKind
    method: str
    path: str
    status: int | None
    errors: list[str]

    def __str__(self) -> str:
        status = f" -> {self.status}" if self.status is not None else ""
        return f"{self.kind}: {self.method} {self.path}{status}: " + " | ".join(self.errors)


@dataclass
class _Rule:
    pattern: re.Pattern[str]
    method: str | None
    remaining: int | None

    def take(self, method: str, path: str) -> bool:
        if self.remaining == 0 or not self.pattern.fullmatch(path):
            return False
        if self.method is not None and self.method != method:
            return False
        if self.remaining is not None:
            self.remaining -= 1
        return True


@dataclass
class _FailureRule(_Rule):
    status: int = 500
    retry_after: float | None = None
    body: Any = None


@dataclass
class _DelayRule(_Rule):
    seconds: float = 0.0


@dataclass
class _TamperRule(_Rule):
    mutate: Callable[[Any], Any] = lambda body: body


@dataclass
class _Answer:
    status: int
    body: Any
    content_type: str = _JSON
    headers: dict[str, str] = field(default_factory=dict)


def stream_state(streams: Mapping[str | tuple[str, str], Mapping[str, Any]]) -> dict[str, Any]:
    """A per-stream ConnectionState (stateType ``stream``); keys are names or (namespace, name)."""
    return {"stateType": "stream", "streamState": _stream_states(streams)}


def global_state(
    shared: Mapping[str, Any] | None,
    streams: Mapping[str | tuple[str, str], Mapping[str, Any]],
) -> dict[str, Any]:
    """A global ConnectionState (stateType ``global``): a shared blob plus per-stream blobs."""
    body: dict[str, Any] = {"streamStates": _stream_states(streams)}
    if shared is not None:
        body["shared_state"] = dict(shared)
    return {"stateType": "global", "globalState": body}


def legacy_state(blob: Mapping[str, Any]) -> dict[str, Any]:
    """A legacy ConnectionState (stateType ``legacy``): one opaque blob."""
    return {"stateType": "legacy", "state": dict(blob)}


NOT_SET: dict[str, Any] = {"stateType": "not_set"}


def _stream_states(
    streams: Mapping[str | tuple[str, str], Mapping[str, Any]],
) -> list[dict[str, Any]]:
    states = []
    for key, blob in streams.items():
        descriptor: dict[str, Any]
        if isinstance(key, tuple):
            descriptor = {"name": key[1], "namespace": key[0]}
        else:
            descriptor = {"name": key}
        states.append({"streamDescriptor": descriptor, "streamState": dict(blob)})
    return states


def _iso_instant(epoch: float) -> str:
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso_duration(seconds: int) -> str:
    """java.time.Duration#toString, which is what Airbyte serves: PT0S, PT42S, PT1H2M3S."""
    hours, rest = divmod(max(seconds, 0), 3600)
    minutes, secs = divmod(rest, 60)
    text = "PT" + (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
    return text + (f"{secs}S" if secs or not (hours or minutes) else "")


# --------------------------------------------------------------------------------------------
# The emulator
# --------------------------------------------------------------------------------------------


class AirbyteEmulator:
    """An Airbyte server on loopback whose behaviour tests program, and whose every answer is
    validated against the real specs. Start it with `start()` (or the `airbyte_emulator`
    fixture); point the SDK at `public_url` and httpx at `config_url`."""

    def __init__(self, specs: AirbyteSpecs | None = None) -> None:
        self.specs = specs or load_specs()
        self.workspace_id = str(uuid.uuid4())
        self.default_script = JobScript(statuses=["pending", "running", "succeeded"])
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._job_ids = itertools.count(1)
        self._connections: dict[str, EmulatedConnection] = {}
        self._jobs: dict[int, EmulatedJob] = {}
        self._scripts: list[JobScript] = []
        self._states: dict[str, dict[str, Any]] = {}
        self._failures: list[_FailureRule] = []
        self._delays: list[_DelayRule] = []
        self._tampers: list[_TamperRule] = []
        self._requests: list[RecordedRequest] = []
        self._violations: list[Violation] = []
        self._auth_mode: AuthMode = "none"
        self._bearer_token: str | None = None
        self._basic: tuple[str, str] | None = None
        self._client: tuple[str, str] | None = None
        self._token_expires_in = 3600
        self._token_lifetime = 3600.0
        self._tokens: dict[str, float] = {}
        self._tokens_issued = 0

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> AirbyteEmulator:
        """Serve on 127.0.0.1 and a free port, from a daemon thread."""
        server = _EmulatorServer(("127.0.0.1", 0), _handler_for(self))
        self._server = server
        self._thread = threading.Thread(
            # A short poll interval: shutdown() waits up to one interval, once per test.
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="airbyte-emulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; delayed answers still in flight are cut short."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> AirbyteEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, the server root."""
        if self._server is None:
            raise RuntimeError("the emulator is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def public_url(self) -> str:
        """The SDK's ``server_url``: the public API root, ``.../api/public/v1``."""
        return self.url + PUBLIC_BASE

    @property
    def config_url(self) -> str:
        """The Config API root, ``.../api/v1``: POST ``/jobs/get`` and ``/state/get`` under it."""
        return self.url + CONFIG_BASE

    @property
    def token_url(self) -> str:
        """The absolute token URL for the SDK's client credentials (a relative one breaks)."""
        return self.public_url + "/applications/token"

    # ---- auth ---------------------------------------------------------------------------

    def require_no_auth(self) -> None:
        """Accept every request (the default)."""
        with self._lock:
            self._auth_mode = "none"

    def require_bearer(self, token: str) -> None:
        """Accept only ``Authorization: Bearer <token>`` (an application's fixed API key)."""
        with self._lock:
            self._auth_mode, self._bearer_token = "bearer", token

    def require_basic(self, username: str, password: str) -> None:
        """Accept only HTTP basic auth with these credentials (self-managed Airbyte)."""
        with self._lock:
            self._auth_mode, self._basic = "basic", (username, password)

    def require_client_credentials(
        self,
        client_id: str | None = None,
        client_secret: str | None = None,
        *,
        expires_in: int = 3600,
        lifetime: float | None = None,
    ) -> tuple[str, str]:
        """Accept only bearer tokens issued by ``POST /applications/token`` for these
        credentials. Tokens advertise `expires_in` seconds but stop working after `lifetime`
        seconds (default: the same), which is how a test makes a token expire under a client
        that still trusts it (the SDK renews a token only within 60 s of its advertised expiry,
        so an `expires_in` of 60 or less makes it fetch a token before every call). Returns
        (client_id, client_secret); fresh random ones by default, because the SDK caches tokens
        process-wide by client id and secret, across emulators."""
        client = (client_id or f"client-{uuid.uuid4()}", client_secret or uuid.uuid4().hex)
        with self._lock:
            self._auth_mode, self._client = "client_credentials", client
            self._token_expires_in = expires_in
            self._token_lifetime = float(expires_in if lifetime is None else lifetime)
        return client

    def expire_tokens(self) -> None:
        """Make every token issued so far invalid at once (next use answers 401)."""
        with self._lock:
            self._tokens.clear()

    @property
    def issued_tokens(self) -> int:
        """How many tokens `POST /applications/token` has issued (still valid or not)."""
        with self._lock:
            return self._tokens_issued

    # ---- connections, jobs, state -------------------------------------------------------

    def add_connection(
        self,
        *,
        name: str = "Postgres to Snowflake",
        streams: Sequence[EmulatedStream] | None = None,
        source_type: str = "postgres",
        destination_type: str = "snowflake",
        connection_id: str | None = None,
        source_id: str | None = None,
        destination_id: str | None = None,
        source_configuration: Mapping[str, Any] | None = None,
        destination_configuration: Mapping[str, Any] | None = None,
        state: Mapping[str, Any] | None = None,
    ) -> EmulatedConnection:
        """Register a connection (with its source and destination) the API will serve.
        `state` is its ConnectionState before any job (see `stream_state` and friends)."""
        connection = EmulatedConnection(
            connection_id=connection_id or str(uuid.uuid4()),
            name=name,
            source_id=source_id or str(uuid.uuid4()),
            destination_id=destination_id or str(uuid.uuid4()),
            workspace_id=self.workspace_id,
            source_type=source_type,
            destination_type=destination_type,
            streams=list(
                streams
                if streams is not None
                else [EmulatedStream("users", cursor_field=["updated_at"], primary_key=[["id"]])]
            ),
            source_name=f"{source_type} source",
            destination_name=f"{destination_type} destination",
            source_configuration=dict(
                source_configuration
                if source_configuration is not None
                else _DEFAULT_CONFIGURATIONS.get(
                    ("source", source_type), {"sourceType": source_type}
                )
            ),
            destination_configuration=dict(
                destination_configuration
                if destination_configuration is not None
                else _DEFAULT_CONFIGURATIONS.get(
                    ("destination", destination_type), {"destinationType": destination_type}
                )
            ),
            created_at=int(time.time()),
        )
        with self._lock:
            self._connections[connection.connection_id] = connection
            if state is not None:
                self._states[connection.connection_id] = dict(state)
        return connection

    def set_state(self, connection_id: str, state: Mapping[str, Any]) -> None:
        """Set the ConnectionState `POST /api/v1/state/get` answers for a connection."""
        with self._lock:
            self._states[connection_id] = copy.deepcopy(dict(state))

    def state_of(self, connection_id: str) -> dict[str, Any]:
        """The connection's current ConnectionState, as the Config API would serve it."""
        with self._lock:
            state = copy.deepcopy(self._states.get(connection_id, NOT_SET))
        return {**state, "connectionId": connection_id}

    def script_job(
        self,
        *,
        connection_id: str | None = None,
        polls_until_done: int = 2,
        outcome: Literal["succeeded", "failed", "cancelled"] = "succeeded",
        statuses: Sequence[str] | None = None,
        failure_summary: str | None = None,
        rows_synced: int = 0,
        bytes_synced: int = 0,
        attempt_logs: Sequence[Sequence[str | dict[str, Any]]] | None = None,
        log_format: LogFormat | Sequence[LogFormat] = "formatted",
        state_after: Mapping[str, Any] | None = None,
    ) -> JobScript:
        """Script the next job `POST /jobs` creates (for `connection_id`, or any connection).

        The job is created ``pending`` and advances one step per ``GET /jobs/{id}``: running
        until the `polls_until_done`-th poll, which answers `outcome`. `statuses` replaces that
        walk with an explicit one (its first entry is what the create answers). A failed job's
        attempts carry `failure_summary`. `attempt_logs` gives each attempt's log lines (strings,
        or dicts merged into a structured LogEvent), served as `log_format` ("formatted" =
        ``logs.logLines``, "structured" = ``logs.events``; one format or one per attempt).
        `state_after` becomes the connection's state when the job succeeds. Scripts queue up."""
        if statuses is None:
            if polls_until_done < 1:
                raise ValueError("polls_until_done must be at least 1")
            statuses = ["pending", *(["running"] * (polls_until_done - 1)), outcome]
        script = JobScript(
            statuses=list(statuses),
            connection_id=connection_id,
            failure_summary=failure_summary,
            rows_synced=rows_synced,
            bytes_synced=bytes_synced,
            attempt_logs=[list(lines) for lines in attempt_logs] if attempt_logs else None,
            log_format=log_format if isinstance(log_format, str) else list(log_format),
            state_after=dict(state_after) if state_after is not None else None,
        )
        with self._lock:
            self._scripts.append(script)
        return script

    def conflict_on_create(
        self,
        connection_id: str,
        *,
        polls_until_done: int = 2,
        outcome: Literal["succeeded", "failed", "cancelled"] = "succeeded",
        **script: Any,
    ) -> EmulatedJob:
        """Start a job for the connection behind the API's back (a scheduled sync, another
        client), already ``running``. While it is not finished, ``POST /jobs`` for that
        connection answers 409 ``try-again-later``, as Airbyte does. It finishes with `outcome`
        on its `polls_until_done`-th poll; other keywords as in `script_job`."""
        statuses = ["running"] * polls_until_done + [outcome]
        job_script = JobScript(statuses=statuses, connection_id=connection_id, **script)
        with self._lock:
            self._require_connection(connection_id)
            return self._new_job(connection_id, "sync", job_script)

    @property
    def jobs(self) -> list[EmulatedJob]:
        """Every job, in creation order."""
        with self._lock:
            return list(self._jobs.values())

    def job(self, job_id: int) -> EmulatedJob:
        """One job by id."""
        with self._lock:
            return self._jobs[job_id]

    def finish_job(self, job_id: int) -> None:
        """Move a job straight to its scripted final status, without a poll."""
        with self._lock:
            job = self._jobs[job_id]
            self._advance(job, len(job.script.statuses))

    # ---- failures, delays, tampering ----------------------------------------------------

    def fail_next(
        self,
        path_pattern: str,
        status: int,
        count: int = 1,
        *,
        method: str | None = None,
        retry_after: float | None = None,
        body: Any = None,
    ) -> None:
        """Answer the next `count` requests whose path fully matches the regex `path_pattern`
        (and `method`, if given) with `status` and the problem body api-problems.yaml defines
        for it (KnownExceptionInfo on the Config API), plus ``Retry-After`` if given. Rules are
        used in the order they were added, so two calls make a burst of 500s then 503s."""
        with self._lock:
            self._failures.append(
                _FailureRule(re.compile(path_pattern), method, count, status, retry_after, body)
            )

    def delay(
        self,
        path_pattern: str,
        seconds: float,
        *,
        count: int | None = None,
        method: str | None = None,
    ) -> None:
        """Answer matching requests only after `seconds` (every one, or the next `count`)."""
        with self._lock:
            self._delays.append(_DelayRule(re.compile(path_pattern), method, count, seconds))

    def tamper_next(
        self,
        path_pattern: str,
        mutate: Callable[[Any], Any],
        count: int = 1,
        *,
        method: str | None = None,
    ) -> None:
        """Debug hook: pass the next matching answer's JSON body through `mutate` before it is
        validated and sent. Use it to serve what the real server must never send (an unknown
        job status, a missing field); the violation is recorded like any other, so a test that
        does this on purpose collects it with `take_violations()`."""
        with self._lock:
            self._tampers.append(_TamperRule(re.compile(path_pattern), method, count, mutate))

    # ---- what happened ------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received, in order."""
        with self._lock:
            return list(self._requests)

    def requests_to(self, method: str, path_pattern: str) -> list[RecordedRequest]:
        """The requests with this method whose path fully matches the regex `path_pattern`."""
        pattern = re.compile(path_pattern)
        return [r for r in self.requests if r.method == method and pattern.fullmatch(r.path)]

    @property
    def violations(self) -> list[Violation]:
        """Every spec violation seen so far."""
        with self._lock:
            return list(self._violations)

    def take_violations(self) -> list[Violation]:
        """Return and forget the violations seen so far (for tests that provoke them)."""
        with self._lock:
            taken, self._violations = self._violations, []
        return taken

    def assert_conforming(self) -> None:
        """Raise SpecViolation if any request or response broke the specs."""
        violations = self.violations
        if violations:
            raise SpecViolation(
                f"{len(violations)} Airbyte spec violation(s):\n"
                + "\n".join(f"  {violation}" for violation in violations)
            )

    # ---- request handling (server threads) ----------------------------------------------

    def _serve(
        self,
        method: str,
        raw_path: str,
        headers: Mapping[str, str],
        raw_body: bytes,
    ) -> _Answer:
        split = urlsplit(raw_path)
        path = split.path
        query = parse_qsl(split.query, keep_blank_values=True)
        content_type = headers.get("Content-Type", "") or ""
        record = RecordedRequest(
            method=method,
            path=path,
            query=_group(query),
            body=_parse_body(raw_body, content_type),
            authorization=headers.get("Authorization"),
            at=time.time(),
        )
        with self._lock:
            self._requests.append(record)
            delay = sum(rule.seconds for rule in self._delays if rule.take(method, path))
        if delay:
            self._stopping.wait(delay)

        kind: ApiKind = "public" if path.startswith(PUBLIC_BASE + "/") else "config"
        route = _route(method, path)
        answer = self._answer(kind, route, method, path, query, headers, raw_body, record)

        with self._lock:
            for rule in self._tampers:
                if rule.take(method, path):
                    answer.body = rule.mutate(copy.deepcopy(answer.body))
        record.status = answer.status
        if route is not None:
            data = _encode(answer.body)
            errors = self.specs.response_errors(
                kind, path, method, query, answer.status, answer.content_type, data, answer.headers
            )
            if errors:
                self._violate("response", method, path, answer.status, errors)
        return answer

    def _answer(
        self,
        kind: ApiKind,
        route: tuple[str, tuple[str, ...]] | None,
        method: str,
        path: str,
        query: list[tuple[str, str]],
        headers: Mapping[str, str],
        raw_body: bytes,
        record: RecordedRequest,
    ) -> _Answer:
        with self._lock:
            failure = next((rule for rule in self._failures if rule.take(method, path)), None)
        if failure is not None:
            answer = self._error(kind, failure.status, f"Injected {failure.status}.", failure.body)
            if failure.retry_after is not None:
                retry_after = failure.retry_after
                answer.headers["Retry-After"] = (
                    str(int(retry_after)) if float(retry_after).is_integer() else str(retry_after)
                )
            return answer
        if route is None:
            self._violate(
                "unrouted",
                method,
                path,
                404,
                ["not an endpoint the emulator serves (is the base path right?)"],
            )
            return self._error("public", 404, f"No route for {method} {path}.")
        name, params = route
        if name != "token":
            denied = self._authorize(kind, headers.get("Authorization"))
            if denied is not None:
                return denied
        content_type = headers.get("Content-Type", "") or _JSON
        request_errors = self.specs.request_errors(
            kind, path, method, query, raw_body or None, content_type
        )
        if request_errors:
            self._violate("request", method, path, None, request_errors)
            if kind == "config":
                return self._config_error(422, "Invalid request.", validationErrors=[])
            return self._error(kind, 400, "; ".join(request_errors)[:500])
        handler: Callable[..., _Answer] = getattr(self, f"_handle_{name}")
        with self._lock:
            return handler(*params, query=_group(query), body=record.body)

    def _violate(
        self,
        kind: ViolationKind,
        method: str,
        path: str,
        status: int | None,
        errors: list[str],
    ) -> None:
        with self._lock:
            self._violations.append(Violation(kind, method, path, status, errors))

    def _authorize(self, kind: ApiKind, authorization: str | None) -> _Answer | None:
        with self._lock:
            mode = self._auth_mode
            if mode == "none":
                return None
            scheme, _, credentials = (authorization or "").partition(" ")
            if mode == "bearer" and scheme == "Bearer" and credentials == self._bearer_token:
                return None
            if mode == "basic" and scheme == "Basic" and self._basic is not None:
                expected = base64.b64encode(":".join(self._basic).encode()).decode()
                if credentials == expected:
                    return None
            if mode == "client_credentials" and scheme == "Bearer":
                expiry = self._tokens.get(credentials)
                if expiry is not None and time.time() < expiry:
                    return None
        return self._error(kind, 401, "The API key in the Authorization header is invalid.")

    def _error(self, kind: ApiKind, status: int, detail: str, body: Any = None) -> _Answer:
        if kind == "config":
            return self._config_error(status, detail) if body is None else _Answer(status, body)
        if body is not None:
            return _Answer(status, body, _PROBLEM_JSON)
        schema = _PUBLIC_PROBLEMS.get(status)
        if schema is None:
            # api-problems.yaml defines no problem for this status (429, 502, 504).
            phrase = http.HTTPStatus(status).phrase.lower().replace(" ", "-")
            problem = {
                "status": status,
                "type": "https://reference.airbyte.com/reference/errors",
                "title": phrase,
                "detail": detail,
            }
            return _Answer(status, problem, _PROBLEM_JSON)
        return _Answer(status, self.specs.problem_body(schema, detail), _PROBLEM_JSON)

    def _config_error(self, status: int, message: str, **extra: Any) -> _Answer:
        return _Answer(status, {"message": message, **extra})

    def _not_found(self, resource_type: str, resource_id: str) -> _Answer:
        body = self.specs.problem_body(
            "ResourceNotFoundProblemResponse",
            f"Could not find a resource for: {resource_id}",
            data={"resourceType": resource_type, "resourceId": resource_id},
        )
        return _Answer(404, body, _PROBLEM_JSON)

    def _require_connection(self, connection_id: str) -> EmulatedConnection:
        connection = self._connections.get(connection_id)
        if connection is None:
            raise KeyError(f"no connection {connection_id} on the emulator")
        return connection

    # ---- public API handlers (called with the lock held) --------------------------------

    def _handle_token(self, *, query: dict[str, list[str]], body: Any) -> _Answer:
        fields = body if isinstance(body, dict) else {}
        given = (str(fields.get("client_id", "")), str(fields.get("client_secret", "")))
        if self._auth_mode == "client_credentials" and given != self._client:
            return self._error("public", 403, "Invalid client credentials.")
        token = f"emulated-{uuid.uuid4().hex}"
        self._tokens[token] = time.time() + self._token_lifetime
        self._tokens_issued += 1
        answer = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self._token_expires_in,
        }
        return _Answer(200, answer)

    def _handle_create_job(self, *, query: dict[str, list[str]], body: Any) -> _Answer:
        connection_id = str(body.get("connectionId"))
        job_type = str(body.get("jobType"))
        if job_type not in ("sync", "reset"):
            return self._error(
                "public", 422, f"Job type {job_type} is not supported in the public API."
            )
        if connection_id not in self._connections:
            return self._not_found("connection", connection_id)
        running = [
            job
            for job in self._jobs.values()
            if job.connection_id == connection_id and not job.terminal
        ]
        if running:
            problem = self.specs.problem_body(
                "TryAgainLaterConflictProblemResponse",
                f"A sync is already running for: {connection_id}",
            )
            return _Answer(409, problem, _PROBLEM_JSON)
        script = self._next_script(connection_id)
        job = self._new_job(connection_id, job_type, script)
        return _Answer(200, self._job_response(job))

    def _handle_get_job(self, job_id: str, *, query: dict[str, list[str]], body: Any) -> _Answer:
        job = self._jobs.get(int(job_id))
        if job is None:
            return self._not_found("job", job_id)
        self._advance(job, 1)
        return _Answer(200, self._job_response(job))

    def _handle_cancel_job(self, job_id: str, *, query: dict[str, list[str]], body: Any) -> _Answer:
        job = self._jobs.get(int(job_id))
        if job is None:
            return self._not_found("job", job_id)
        if job.terminal:
            problem = self.specs.problem_body(
                "StateConflictProblemResponse",
                f"Job {job_id} is not currently running; it is {job.status}.",
            )
            return _Answer(409, problem, _PROBLEM_JSON)
        job.cancelled = True
        job.updated_at = time.time()
        return _Answer(200, self._job_response(job))

    def _handle_list_jobs(self, *, query: dict[str, list[str]], body: Any) -> _Answer:
        def one(name: str) -> str | None:
            values = query.get(name)
            return values[-1] if values else None

        jobs = list(self._jobs.values())
        for name, attribute in (
            ("connectionId", "connection_id"),
            ("jobType", "job_type"),
            ("status", "status"),
        ):
            wanted = one(name)
            if wanted is not None:
                jobs = [job for job in jobs if getattr(job, attribute) == wanted]
        order_by = one("orderBy") or "createdAt|ASC"
        match = re.fullmatch(r"(createdAt|updatedAt)\|(ASC|DESC)", order_by)
        if match is None:
            return self._error("public", 400, f"Invalid order by clause provided: {order_by}")
        key = "created_at" if match.group(1) == "createdAt" else "updated_at"
        jobs.sort(key=lambda job: (getattr(job, key), job.job_id), reverse=match.group(2) == "DESC")
        limit = int(one("limit") or 20)
        offset = int(one("offset") or 0)
        page = jobs[offset : offset + limit]
        answer: dict[str, Any] = {"data": [self._job_response(job) for job in page]}
        base = {k: v for k, v in query.items() if k not in ("limit", "offset")}
        if offset + limit < len(jobs):
            answer["next"] = self._page_url(base, limit, offset + limit)
        if offset > 0:
            answer["previous"] = self._page_url(base, limit, max(offset - limit, 0))
        return _Answer(200, answer)

    def _page_url(self, query: dict[str, list[str]], limit: int, offset: int) -> str:
        pairs = [(k, v) for k, values in query.items() for v in values]
        pairs += [("limit", str(limit)), ("offset", str(offset))]
        return f"{self.public_url}/jobs?{urlencode(pairs)}"

    def _handle_get_connection(
        self, connection_id: str, *, query: dict[str, list[str]], body: Any
    ) -> _Answer:
        connection = self._connections.get(connection_id)
        if connection is None:
            return self._not_found("connection", connection_id)
        return _Answer(
            200,
            {
                "connectionId": connection.connection_id,
                "name": connection.name,
                "sourceId": connection.source_id,
                "destinationId": connection.destination_id,
                "workspaceId": connection.workspace_id,
                "status": connection.status,
                "schedule": {"scheduleType": connection.schedule_type},
                "nonBreakingSchemaUpdatesBehavior": "ignore",
                "namespaceDefinition": "destination",
                "configurations": {"streams": [s.configuration() for s in connection.streams]},
                "createdAt": connection.created_at,
                "tags": [],
            },
        )

    def _handle_stream_properties(self, *, query: dict[str, list[str]], body: Any) -> _Answer:
        source_id = (query.get("sourceId") or [""])[-1]
        destination_id = (query.get("destinationId") or [None])[-1]
        connection = next(
            (
                c
                for c in self._connections.values()
                if c.source_id == source_id
                and (destination_id is None or c.destination_id == destination_id)
            ),
            None,
        )
        if connection is None:
            return self._not_found("source", source_id)
        return _Answer(200, [stream.properties() for stream in connection.streams])

    def _handle_get_source(
        self, source_id: str, *, query: dict[str, list[str]], body: Any
    ) -> _Answer:
        connection = next((c for c in self._connections.values() if c.source_id == source_id), None)
        if connection is None:
            return self._not_found("source", source_id)
        return _Answer(
            200,
            {
                "sourceId": source_id,
                "name": connection.source_name,
                "sourceType": connection.source_type,
                "workspaceId": connection.workspace_id,
                "definitionId": str(uuid.uuid5(uuid.NAMESPACE_URL, connection.source_type)),
                "configuration": connection.source_configuration,
                "createdAt": connection.created_at,
            },
        )

    def _handle_get_destination(
        self, destination_id: str, *, query: dict[str, list[str]], body: Any
    ) -> _Answer:
        connection = next(
            (c for c in self._connections.values() if c.destination_id == destination_id), None
        )
        if connection is None:
            return self._not_found("destination", destination_id)
        return _Answer(
            200,
            {
                "destinationId": destination_id,
                "name": connection.destination_name,
                "destinationType": connection.destination_type,
                "workspaceId": connection.workspace_id,
                "definitionId": str(uuid.uuid5(uuid.NAMESPACE_URL, connection.destination_type)),
                "configuration": connection.destination_configuration,
                "createdAt": connection.created_at,
            },
        )

    # ---- Config API handlers (called with the lock held) --------------------------------

    def _handle_job_info(self, *, query: dict[str, list[str]], body: Any) -> _Answer:
        job = self._jobs.get(int(body["id"]))
        if job is None:
            return self._config_error(
                404,
                f"Could not find configuration for JOB: {body['id']}.",
                exceptionClassName="io.airbyte.commons.server.errors.IdNotFoundKnownException",
                id=str(body["id"]),
            )
        return _Answer(200, {"job": self._job_read(job), "attempts": self._attempts(job)})

    def _handle_state(self, *, query: dict[str, list[str]], body: Any) -> _Answer:
        connection_id = str(body["connectionId"])
        if connection_id not in self._connections:
            return self._config_error(
                404,
                f"Could not find configuration for STANDARD_SYNC: {connection_id}.",
                exceptionClassName="io.airbyte.commons.server.errors.IdNotFoundKnownException",
                id=connection_id,
            )
        return _Answer(200, self.state_of(connection_id))

    # ---- job mechanics (called with the lock held) --------------------------------------

    def _next_script(self, connection_id: str) -> JobScript:
        for index, script in enumerate(self._scripts):
            if script.connection_id in (None, connection_id):
                return self._scripts.pop(index)
        return copy.deepcopy(self.default_script)

    def _new_job(self, connection_id: str, job_type: str, script: JobScript) -> EmulatedJob:
        now = time.time()
        job = EmulatedJob(
            job_id=next(self._job_ids),
            connection_id=connection_id,
            job_type=job_type,
            script=script,
            created_at=now,
            updated_at=now,
        )
        self._jobs[job.job_id] = job
        return job

    def _advance(self, job: EmulatedJob, steps: int) -> None:
        if job.terminal:
            return
        before = job.step
        job.step = min(job.step + steps, len(job.script.statuses) - 1)
        if job.step != before:
            job.updated_at = time.time()
        if job.status == "succeeded" and job.script.state_after is not None:
            self._states[job.connection_id] = copy.deepcopy(job.script.state_after)

    def _job_response(self, job: EmulatedJob) -> dict[str, Any]:
        """JobResponse as Airbyte's JobResponseMapper builds it from the Config API job."""
        body: dict[str, Any] = {
            "jobId": job.job_id,
            "status": job.status,
            "jobType": job.job_type,
            "startTime": _iso_instant(job.created_at),
            "connectionId": job.connection_id,
        }
        if job.terminal:
            body["lastUpdatedAt"] = _iso_instant(job.updated_at)
        if job.status != "pending":
            body["duration"] = _iso_duration(int(job.updated_at) - int(job.created_at))
        if job.started:
            rows, bytes_ = self._committed(job)
            body["bytesSynced"] = bytes_
            body["rowsSynced"] = rows
        return body

    @staticmethod
    def _committed(job: EmulatedJob) -> tuple[int, int]:
        """(rows, bytes) committed: the scripted counts once the job has ended by itself."""
        if job.terminal and not job.cancelled:
            return job.script.rows_synced, job.script.bytes_synced
        return 0, 0

    def _job_read(self, job: EmulatedJob) -> dict[str, Any]:
        connection = self._connections[job.connection_id]
        read: dict[str, Any] = {
            "id": job.job_id,
            "configType": "sync" if job.job_type == "sync" else "reset_connection",
            "configId": job.connection_id,
            "enabledStreams": [_descriptor(stream) for stream in connection.streams],
            "createdAt": int(job.created_at),
            "updatedAt": int(job.updated_at),
            "status": job.status,
        }
        if job.started:
            rows, bytes_ = self._committed(job)
            read["startedAt"] = int(job.created_at)
            read["aggregatedStats"] = {
                "recordsEmitted": rows,
                "bytesEmitted": bytes_,
                "recordsCommitted": rows,
                "bytesCommitted": bytes_,
                "recordsRejected": 0,
            }
        return read

    def _attempts(self, job: EmulatedJob) -> list[dict[str, Any]]:
        if not job.started:
            return []
        logs = job.script.attempt_logs or [
            [
                "Starting sync for connection " + job.connection_id,
                "source > Reading stream users",
                "Sync finished: " + job.status,
            ]
        ]
        formats = job.script.log_format
        connection = self._connections[job.connection_id]
        attempts = []
        for index, lines in enumerate(logs):
            last = index == len(logs) - 1
            if not last:
                status = "failed"
            elif job.status == "succeeded":
                status = "succeeded"
            elif job.terminal:
                status = "failed"
            else:
                status = "running"
            log_format = formats if isinstance(formats, str) else formats[index % len(formats)]
            rows, bytes_ = self._committed(job) if last else (0, 0)
            stats = {
                "recordsEmitted": rows,
                "bytesEmitted": bytes_,
                "recordsCommitted": rows,
                "bytesCommitted": bytes_,
                "stateMessagesEmitted": len(connection.streams),
            }
            attempt: dict[str, Any] = {
                "id": index,
                "status": status,
                "createdAt": int(job.created_at),
                "updatedAt": int(job.updated_at),
                "bytesSynced": bytes_,
                "recordsSynced": rows,
                "totalStats": stats,
                "streamStats": _stream_stats(connection.streams, rows, bytes_),
            }
            if status != "running":
                attempt["endedAt"] = int(job.updated_at)
            if status == "failed":
                attempt["failureSummary"] = self._failure_summary(job, last)
            if log_format == "formatted":
                log_body: dict[str, Any] = {"logLines": [_as_line(line) for line in lines]}
            else:
                log_body = {"events": [_as_event(line, job.created_at) for line in lines]}
                log_body["version"] = "1"
            attempts.append({"attempt": attempt, "logType": log_format, "logs": log_body})
        return attempts

    def _failure_summary(self, job: EmulatedJob, last: bool) -> dict[str, Any]:
        if job.cancelled and last:
            reason = {
                "failureOrigin": "airbyte_platform",
                "failureType": "manual_cancellation",
                "externalMessage": "The sync was cancelled.",
            }
        else:
            reason = {
                "failureOrigin": "source",
                "failureType": "system_error",
                "externalMessage": job.script.failure_summary or "Something went wrong.",
                "internalMessage": job.script.failure_summary or "Something went wrong.",
                "retryable": not last,
            }
        return {
            "failures": [{**reason, "timestamp": int(job.updated_at * 1000)}],
            "partialSuccess": False,
        }


# What GET /sources/{id} and /destinations/{id} serve by default: secrets masked, as Airbyte
# does, and the type key inside the configuration, without which the SDK cannot parse a
# destination (its DestinationConfiguration union is discriminated on `destinationType`).
_DEFAULT_CONFIGURATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("source", "postgres"): {
        "sourceType": "postgres",
        "host": "db.internal",
        "port": 5432,
        "database": "app",
        "username": "airbyte",
        "password": "**********",
    },
    ("source", "faker"): {"sourceType": "faker", "count": 1000},
    ("destination", "snowflake"): {
        "destinationType": "snowflake",
        "host": "acme.snowflakecomputing.com",
        "role": "AIRBYTE_ROLE",
        "warehouse": "AIRBYTE_WAREHOUSE",
        "database": "ANALYTICS",
        "schema": "RAW",
        "username": "AIRBYTE_USER",
        "credentials": {"auth_type": "Username and Password", "password": "**********"},
    },
    ("destination", "postgres"): {
        "destinationType": "postgres",
        "host": "warehouse.internal",
        "port": 5432,
        "database": "warehouse",
        "schema": "public",
        "username": "airbyte",
        "password": "**********",
    },
}

_PUBLIC_PROBLEMS: dict[int, str] = {
    400: "BadRequestProblemResponse",
    401: "InvalidApiKeyProblemResponse",
    403: "ForbiddenProblemResponse",
    404: "ResourceNotFoundProblemResponse",
    408: "RequestTimeoutExceededProblemResponse",
    409: "StateConflictProblemResponse",
    422: "UnprocessableEntityProblemResponse",
    500: "UnexpectedProblemResponse",
    503: "ServiceUnavailableProblemResponse",
}

_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(PUBLIC_BASE + r"/applications/token"), "token"),
    ("POST", re.compile(PUBLIC_BASE + r"/jobs"), "create_job"),
    ("GET", re.compile(PUBLIC_BASE + r"/jobs"), "list_jobs"),
    ("GET", re.compile(PUBLIC_BASE + r"/jobs/(\d+)"), "get_job"),
    ("DELETE", re.compile(PUBLIC_BASE + r"/jobs/(\d+)"), "cancel_job"),
    ("GET", re.compile(PUBLIC_BASE + r"/connections/([^/]+)"), "get_connection"),
    ("GET", re.compile(PUBLIC_BASE + r"/streams"), "stream_properties"),
    ("GET", re.compile(PUBLIC_BASE + r"/sources/([^/]+)"), "get_source"),
    ("GET", re.compile(PUBLIC_BASE + r"/destinations/([^/]+)"), "get_destination"),
    ("POST", re.compile(CONFIG_BASE + r"/jobs/get"), "job_info"),
    ("POST", re.compile(CONFIG_BASE + r"/state/get"), "state"),
]


def _route(method: str, path: str) -> tuple[str, tuple[str, ...]] | None:
    for route_method, pattern, name in _ROUTES:
        match = pattern.fullmatch(path)
        if match and route_method == method:
            return name, match.groups()
    return None


def _group(pairs: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for key, value in pairs:
        grouped.setdefault(key, []).append(value)
    return grouped


def _parse_body(raw: bytes, content_type: str) -> Any:
    if not raw:
        return None
    if "application/x-www-form-urlencoded" in content_type:
        return dict(parse_qsl(raw.decode(), keep_blank_values=True))
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def _encode(body: Any) -> bytes:
    return json.dumps(body).encode()


def _descriptor(stream: EmulatedStream) -> dict[str, str]:
    descriptor = {"name": stream.name}
    if stream.namespace:
        descriptor["namespace"] = stream.namespace
    return descriptor


def _stream_stats(
    streams: Sequence[EmulatedStream], rows: int, bytes_: int
) -> list[dict[str, Any]]:
    """Per-stream AttemptStreamStats whose sums are the attempt's totals."""
    stats = []
    count = len(streams)
    for index, stream in enumerate(streams):
        # The first stream takes the remainder, so the shares add up exactly.
        share = (
            rows // count + (rows % count if index == 0 else 0),
            bytes_ // count + (bytes_ % count if index == 0 else 0),
        )
        entry: dict[str, Any] = {
            "streamName": stream.name,
            "stats": {"recordsCommitted": share[0], "bytesCommitted": share[1]},
        }
        if stream.namespace:
            entry["streamNamespace"] = stream.namespace
        stats.append(entry)
    return stats


def _as_line(line: str | Mapping[str, Any]) -> str:
    return line if isinstance(line, str) else str(line.get("message", ""))


def _as_event(line: str | Mapping[str, Any], created_at: float) -> dict[str, Any]:
    """A structured LogEvent; plain lines get a level and source guessed from their text."""
    message = _as_line(line)
    lowered = message.lower()
    level = "error" if "error" in lowered else "warn" if "warn" in lowered else "info"
    source = (
        "source"
        if lowered.startswith("source") or " source >" in lowered
        else "destination"
        if lowered.startswith("destination") or " destination >" in lowered
        else "platform"
    )
    event: dict[str, Any] = {
        "timestamp": int(created_at * 1000),
        "message": message,
        "level": level,
        "logSource": source,
    }
    if not isinstance(line, str):
        event.update(line)
    return event


class _EmulatorServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up on a slow answer closes its socket; that is the scenario, not
        # an error worth a traceback on stderr.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _handler_for(emulator: AirbyteEmulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes; with Nagle on, keep-alive clients wait ~40 ms
        # for a delayed ACK on every answer.
        disable_nagle_algorithm = True

        def _dispatch(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw_body = self.rfile.read(length) if length else b""
            headers = {key: value for key, value in self.headers.items()}
            try:
                answer = emulator._serve(self.command, self.path, headers, raw_body)
            except Exception:
                # A bug in the emulator must fail the test, not leave the client hanging.
                emulator._violate("crash", self.command, self.path, 500, [traceback.format_exc()])
                answer = _Answer(500, {"message": "emulator crashed"})
            data = _encode(answer.body)
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(data)))
            for key, value in answer.headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _dispatch

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture(name="airbyte_emulator")
def airbyte_emulator_fixture() -> Iterator[AirbyteEmulator]:
    """The `airbyte_emulator` fixture: a fresh, started emulator per test (specs parsed once per
    session). Fails the test at teardown if anything it served or received broke the specs.

    A test module takes it with ``from tests.airbyte_emulator import airbyte_emulator_fixture
    as airbyte_emulator_fixture`` (the redundant alias marks a re-export, so ruff accepts the
    otherwise unused import), or with ``pytest_plugins = ["tests.airbyte_emulator"]``."""
    emulator = AirbyteEmulator(load_specs()).start()
    try:
        yield emulator
    finally:
        emulator.stop()
    emulator.assert_conforming()
