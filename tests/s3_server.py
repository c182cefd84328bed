"""moto's S3 server, started once per test session, buckets made per test, and fault injection.

Import the fixtures by name in each test module that needs them (pytest_plugins only works in
the root conftest): `from tests.s3_server import bucket, s3_client, s3_endpoint`.

The server is real HTTP on a loopback port, so requests go through botocore's whole stack
(serialisation, signing, parsing). Faults are injected with botocore event hooks on the test's
own client, never by patching our code.
"""

from __future__ import annotations

import copy
import logging
import socket
import threading
import types
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import boto3
import pytest
from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from botocore.client import BaseClient
from botocore.config import Config
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.server import ThreadedMotoServer
from werkzeug.serving import make_server

__all__ = [
    "DeleteObjectsRecorder",
    "KeyErrorsOnce",
    "ThrottleFirstDeletes",
    "bucket",
    "error_response",
    "free_port",
    "make_client",
    "s3_client",
    "s3_endpoint",
    "seed_objects",
]

REGION = "us-east-1"
# moto's default account, which the dummy credentials map to.
MOTO_ACCOUNT = "123456789012"
DUMMY_CREDENTIALS = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}

BucketKind = Literal["plain", "versioned", "suspended", "object_lock"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _OneRequestAtATimeMotoServer(ThreadedMotoServer):
    """moto's threaded server, answering one request at a time.

    moto's S3 backend is not thread-safe: ListObjectVersions deep-copies the bucket's key
    table, and a DeleteObjects running at the same moment makes it fail with a 500 (a
    TypeError inside moto). S3 itself lists and deletes concurrently, and the purge pipeline
    does both at once, so requests are serialised here, on the server side only: clients
    still have several requests in flight.
    """

    def _server_entry(self) -> None:
        app = DomainDispatcherApplication(create_backend_app)
        lock = threading.Lock()

        def serialised(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            with lock:
                return list(app(environ, start_response))

        self._server = make_server(
            self._ip_address, self._port, serialised, True, request_handler=MotoRequestHandler
        )
        self._server_ready_event.set()
        self._server.serve_forever()


_VIEW_CLASSES: dict[type, type] = {}


def _shallow_snapshot(versions: list[Any]) -> list[Any]:
    """A view of each version object sharing its data, for a listing to set `is_latest` on.

    moto's keys close their data buffer when collected (`__del__`); a view shares that buffer,
    so its class is a subclass that closes nothing.
    """
    snapshot = []
    for version in versions:
        cls = type(version)
        view_cls = _VIEW_CLASSES.get(cls)
        if view_cls is None:
            view_cls = type(cls.__name__, (cls,), {"__del__": lambda self: None})
            _VIEW_CLASSES[cls] = view_cls
        view = object.__new__(view_cls)
        view.__dict__.update(version.__dict__)
        snapshot.append(view)
    return snapshot


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """The URL of a moto S3 server on a free loopback port, for the whole session."""
    import moto.s3.models

    # werkzeug logs every request at INFO; a failing test's output should show ours instead.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    # moto's ListObjectVersions deep-copies every version in the bucket, data included, for
    # each page: listing 10,000 objects takes 24 s. With requests serialised, a shallow
    # snapshot is as good. Only done where moto still uses the copy module that way.
    patch = pytest.MonkeyPatch()
    if getattr(moto.s3.models, "copy", None) is copy:
        fast_copy = types.SimpleNamespace(copy=copy.copy, deepcopy=_shallow_snapshot)
        patch.setattr(moto.s3.models, "copy", fast_copy)
    port = free_port()
    server = _OneRequestAtATimeMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        patch.undo()


def make_client(endpoint: str, **config: Any) -> BaseClient:
    """A client of the moto server, built explicitly so no environment variable is needed.

    Retries are off, as in the delete client S3StagingStore builds for itself, so an injected
    SlowDown reaches the store instead of being retried inside botocore. The endpoint is plain
    http, so AWS_CA_BUNDLE (set on some machines) plays no part.
    """
    session = boto3.session.Session(region_name=REGION, **DUMMY_CREDENTIALS)
    retries = {"total_max_attempts": 1, "mode": "standard"}
    return session.client("s3", endpoint_url=endpoint, config=Config(retries=retries, **config))


@pytest.fixture
def s3_client(s3_endpoint: str) -> BaseClient:
    """A fresh client per test, so the event hooks a test registers die with it."""
    return make_client(s3_endpoint, max_pool_connections=16)


@pytest.fixture
def bucket(s3_client: BaseClient) -> Callable[[BucketKind], str]:
    """Make a new, uniquely named bucket of the given kind and return its name.

    "suspended" has versioning turned on, then suspended; "object_lock" is created with
    Object Lock enabled, which also enables versioning.
    """

    def make(kind: BucketKind = "plain") -> str:
        name = f"sluice-{kind.replace('_', '-')}-{uuid.uuid4().hex[:12]}"
        if kind == "object_lock":
            s3_client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
            return name
        s3_client.create_bucket(Bucket=name)
        if kind in ("versioned", "suspended"):
            s3_client.put_bucket_versioning(
                Bucket=name, VersioningConfiguration={"Status": "Enabled"}
            )
        if kind == "suspended":
            s3_client.put_bucket_versioning(
                Bucket=name, VersioningConfiguration={"Status": "Suspended"}
            )
        return name

    return make


def seed_objects(bucket_name: str, keys: Iterable[str], body: bytes = b"x") -> int:
    """Put many objects straight into the moto backend of this process; return how many.

    Ten thousand PUTs over HTTP take most of a minute; the backend takes them in a second.
    Only seeding goes around HTTP: listing and deleting, which are under test, do not.
    """
    from moto.s3.models import s3_backends

    backend = s3_backends[MOTO_ACCOUNT]["aws"]
    count = 0
    for key in keys:
        backend.put_object(bucket_name, key, body)
        count += 1
    return count


# --- observing and disturbing DeleteObjects ------------------------------------------------


def _deleted_keys_in(body: bytes | str | None) -> int:
    """How many <Object> entries a DeleteObjects request body carries: what goes on the wire."""
    if body is None:
        return 0
    root = ET.fromstring(body)
    return sum(1 for element in root.iter() if element.tag.rsplit("}", 1)[-1] == "Object")


@dataclass
class DeleteObjectsRecorder:
    """Counts DeleteObjects requests, their keys, and how many were in flight at once."""

    key_counts: list[int] = field(default_factory=list)
    in_flight_at_send: list[int] = field(default_factory=list)
    _in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def attach(self, client: BaseClient) -> DeleteObjectsRecorder:
        client.meta.events.register("before-send.s3.DeleteObjects", self._before_send)
        client.meta.events.register("after-call.s3.DeleteObjects", self._done)
        client.meta.events.register("after-call-error.s3.DeleteObjects", self._done)
        return self

    @property
    def requests(self) -> int:
        return len(self.key_counts)

    def _before_send(self, request: AWSPreparedRequest, **_: Any) -> None:
        with self._lock:
            self._in_flight += 1
            self.in_flight_at_send.append(self._in_flight)
            self.key_counts.append(_deleted_keys_in(request.body))

    def _done(self, **_: Any) -> None:
        with self._lock:
            self._in_flight -= 1


class _Body:
    """The raw body botocore reads an AWSResponse's content from."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._data


def error_response(
    request: AWSPreparedRequest, status: int, code: str, message: str
) -> AWSResponse:
    """An S3 error answer, as the service would send it, without asking the server."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        "<RequestId>injected</RequestId></Error>"
    ).encode()
    headers = {"Content-Type": "application/xml", "x-amz-request-id": "injected"}
    return AWSResponse(request.url, status, headers, _Body(body))


class ThrottleFirstDeletes:
    """Answer the first `count` DeleteObjects requests with 503 SlowDown, deleting nothing."""

    def __init__(self, count: int) -> None:
        self.remaining = count
        self.throttled = 0
        self._lock = threading.Lock()

    def attach(self, client: BaseClient) -> ThrottleFirstDeletes:
        client.meta.events.register("before-send.s3.DeleteObjects", self._before_send)
        return self

    def _before_send(self, request: AWSPreparedRequest, **_: Any) -> AWSResponse | None:
        with self._lock:
            if self.remaining <= 0:
                return None
            self.remaining -= 1
            self.throttled += 1
        return error_response(request, 503, "SlowDown", "Please reduce your request rate.")


_NOTHING_KEY = "sluice-injected-nothing"


class KeyErrorsOnce:
    """Make chosen keys fail inside a 200 DeleteObjects answer, as S3 does, `times` times each.

    The keys are taken out of the request before it is built (so the server keeps them) and
    put back in the parsed answer's `Errors` list with the code `code_for(key)` returns.
    """

    def __init__(self, code_for: Callable[[str], str | None], times: int = 1) -> None:
        self._code_for = code_for
        self._times = times
        self._failed: dict[str, int] = {}
        self._lock = threading.Lock()
        self.injected = 0

    def attach(self, client: BaseClient) -> KeyErrorsOnce:
        client.meta.events.register("before-parameter-build.s3.DeleteObjects", self._withhold_keys)
        client.meta.events.register("after-call.s3.DeleteObjects", self._report_errors)
        return self

    def _withhold_keys(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        kept, withheld = [], []
        with self._lock:
            for entry in params["Delete"]["Objects"]:
                code = self._code_for(entry["Key"])
                identity = f"{entry['Key']}\0{entry.get('VersionId', '')}"
                if code is not None and self._failed.get(identity, 0) < self._times:
                    self._failed[identity] = self._failed.get(identity, 0) + 1
                    withheld.append({**entry, "Code": code})
                else:
                    kept.append(entry)
            self.injected += len(withheld)
        if not kept:
            # S3 refuses an empty Delete; keep one harmless entry that names nothing.
            kept = [{"Key": _NOTHING_KEY}]
        params["Delete"] = {**params["Delete"], "Objects": kept}
        context["sluice_withheld"] = withheld

    def _report_errors(self, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        withheld = context.get("sluice_withheld", [])
        parsed["Deleted"] = [
            entry
            for entry in parsed.get("Deleted", [])
            if entry["Key"] != "sluice-injected-nothing"
        ]
        errors = parsed.setdefault("Errors", [])
        for entry in withheld:
            error = {"Key": entry["Key"], "Code": entry["Code"], "Message": "injected"}
            if "VersionId" in entry:
                error["VersionId"] = entry["VersionId"]
            errors.append(error)
