"""An HTTP relay in front of a test server that can hold chosen requests: a way to stop a worker
process at a known point of its conversation with a storage service, without touching the
worker and without slowing the service for anyone else.

The relay forwards each request as it came (headers, signature and body unchanged) and the
answer as it came back. A request that `hold` picks waits until `release()`, and is then
dropped unanswered, never forwarded: the test decides that it never happened.
"""

from __future__ import annotations

import http.client
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# Headers that describe one hop, not the message: the relay sets its own.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
        "content-length",
    }
)


def is_delete_objects(method: str, path: str) -> bool:
    """S3's DeleteObjects: ``POST /bucket?delete`` (path-style addressing)."""
    query = urllib.parse.urlsplit(path).query
    return method == "POST" and "delete" in urllib.parse.parse_qs(query, keep_blank_values=True)


class HoldingRelay:
    """Relay to `upstream` (``http://host:port``); hold the requests `hold(method, path)` picks
    once `allow` of them went through. `url` is where clients connect."""

    def __init__(self, upstream: str, hold: Callable[[str, str], bool], allow: int = 0) -> None:
        parts = urllib.parse.urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._hold = hold
        self._allow = allow
        self._lock = threading.Lock()
        self._released = threading.Event()
        self.passed = 0  # picked requests let through
        self.held = 0  # picked requests held (and dropped)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> HoldingRelay:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def release(self) -> None:
        """Let the held requests go, unanswered and unforwarded."""
        self._released.set()

    def _should_hold(self, method: str, path: str) -> bool:
        if not self._hold(method, path):
            return False
        with self._lock:
            if self.passed < self._allow:
                self.passed += 1
                return False
            self.held += 1
            return True

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        relay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, and 100-continue answered here

            def _relay(self) -> None:
                body = self._read_body()
                if relay._should_hold(self.command, self.path):
                    relay._released.wait(timeout=600)
                    self.close_connection = True
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                if body or self.command in ("POST", "PUT"):
                    headers["Content-Length"] = str(len(body))
                upstream = http.client.HTTPConnection(*relay._upstream, timeout=120)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    answer = upstream.getresponse()
                    data = answer.read()
                    self.send_response_only(answer.status, answer.reason)
                    for key, value in answer.getheaders():
                        if key.lower() not in _HOP_BY_HOP:
                            self.send_header(key, value)
                    if self.command == "HEAD":
                        length = answer.getheader("Content-Length")
                        if length is not None:
                            self.send_header("Content-Length", length)
                    else:
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    upstream.close()

            def _read_body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    chunks: list[bytes] = []
                    while True:
                        size = int(self.rfile.readline().split(b";", 1)[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()  # the CRLF after each chunk
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
