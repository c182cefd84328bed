"""The servers the purge benchmark measures against: one moto S3 server, one Azurite.

The moto server runs in a child process of its own (`python bench/purge_servers.py s3 PORT`),
so that neither the benchmark's in-process purges nor its bookkeeping share a GIL with it. It is
the test suite's server (tests/s3_server.py): requests are answered one at a time, because
moto's S3 backend is not thread-safe, and ListObjectVersions takes a shallow snapshot of the
bucket instead of moto's deep copy of every version and its data on every page (with the deep
copy, listing 50,000 versions takes minutes; S3 itself does not slow down that way).

Two routes of our own sit in front of moto, inside the same one-request-at-a-time lock:

- `POST /_bench/seed?bucket=B&prefix=P&count=N&versioning=none|Enabled` creates the bucket and
  puts N small objects into the backend directly. 50,000 PUTs over HTTP take minutes in moto;
  the backend takes them in seconds. Only seeding goes around HTTP.
- `GET /_bench/count?bucket=B` counts what is left: objects (current versions that are not delete
  markers), versions (every version that holds data) and delete markers, from the same version
  table that ListObjectVersions walks, in one pass (moto walks the whole bucket for every page
  of ListObjectVersions, so listing 100,000 leftovers page by page takes minutes).
- `POST /_bench/drop?bucket=B` forgets a bucket and everything in it, so memory stays flat
  between measurements.
"""

from __future__ import annotations

import copy
import json
import logging
import sys
import threading
import types
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MOTO_ACCOUNT = "123456789012"
REGION = "us-east-1"
BODY = b"x" * 100


def _backend() -> Any:
    from moto.s3.models import s3_backends

    return s3_backends[MOTO_ACCOUNT]["aws"]


def _seed(query: dict[str, str]) -> dict[str, Any]:
    backend = _backend()
    bucket, prefix = query["bucket"], query.get("prefix", "")
    count = int(query["count"])
    backend.create_bucket(bucket, REGION)
    versioning = query.get("versioning", "none")
    if versioning != "none":
        backend.put_bucket_versioning(bucket, versioning)
    for index in range(count):
        backend.put_object(bucket, f"{prefix}part-{index:07d}.jsonl", BODY)
    return {"bucket": bucket, "seeded": count}


def _count(query: dict[str, str]) -> dict[str, Any]:
    from moto.s3.models import FakeDeleteMarker

    bucket = _backend().get_bucket(query["bucket"])
    objects = versions = markers = 0
    for _name, entries in bucket.keys.iterlists():
        for entry in entries:
            if isinstance(entry, FakeDeleteMarker):
                markers += 1
            else:
                versions += 1
        if entries and not isinstance(entries[-1], FakeDeleteMarker):
            objects += 1  # the latest version holds data: a plain listing still shows the key
    return {"objects": objects, "versions": versions, "delete_markers": markers}


def _drop(query: dict[str, str]) -> dict[str, Any]:
    from moto.s3.models import s3_backends

    backend = _backend()
    name = query["bucket"]
    backend.buckets.pop(name, None)
    s3_backends.bucket_accounts.pop(name, None)
    return {"dropped": name}


_ROUTES = {"/_bench/seed": _seed, "/_bench/count": _count, "/_bench/drop": _drop}


def serve_s3(port: int) -> None:
    """moto on 127.0.0.1:PORT, as tests/s3_server.py runs it, plus the routes above."""
    import moto.s3.models
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    from tests.s3_server import _shallow_snapshot

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    if getattr(moto.s3.models, "copy", None) is copy:
        moto.s3.models.copy = types.SimpleNamespace(copy=copy.copy, deepcopy=_shallow_snapshot)
    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def serialised(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        with lock:
            route = _ROUTES.get(environ.get("PATH_INFO", ""))
            if route is None:
                return list(app(environ, start_response))
            query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
            try:
                body, status = json.dumps(route(query)).encode(), "200 OK"
            except Exception as exc:  # the bench reads the message
                body, status = json.dumps({"error": repr(exc)}).encode(), "500 Error"
            start_response(status, [("Content-Type", "application/json")])
            return [body]

    server = make_server(
        "127.0.0.1", port, serialised, threaded=True, request_handler=MotoRequestHandler
    )
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "s3":
        sys.exit("usage: purge_servers.py s3 PORT")
    serve_s3(int(sys.argv[2]))
