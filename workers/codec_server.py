"""The codec server: the Temporal UI's remote codec endpoint, which decrypts payloads for the
people allowed to see them (and encrypts what they type into the start form)."""

from __future__ import annotations

import asyncio
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads

from workers.codec import EncryptionCodec, PayloadKeyError


def serve_codec(codec: EncryptionCodec, host: str, port: int, ui_origin: str) -> None:
    """The Temporal UI's remote codec endpoint: POST /decode and /encode, Payloads as JSON."""

    class Handler(BaseHTTPRequestHandler):
        def _cors(self) -> None:
            self.send_header("Access-Control-Allow-Origin", ui_origin)
            self.send_header("Access-Control-Allow-Methods", "POST, OPTIONS")
            self.send_header("Access-Control-Allow-Headers", "content-type, x-namespace")

        def do_OPTIONS(self) -> None:
            self.send_response(200)
            self._cors()
            self.end_headers()

        def do_POST(self) -> None:
            if self.path not in ("/decode", "/encode"):
                self.send_error(404)
                return
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            payloads = json_format.Parse(body, Payloads())
            work = codec.decode if self.path == "/decode" else codec.encode
            try:
                result = asyncio.run(work(list(payloads.payloads)))
            except PayloadKeyError as exc:
                self.send_error(400, str(exc))
                return
            answer = json_format.MessageToJson(Payloads(payloads=result)).encode()
            self.send_response(200)
            self._cors()
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            del args  # quiet: payload contents must not reach a log

    ThreadingHTTPServer((host, port), Handler).serve_forever()
