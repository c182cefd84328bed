"""The codec server as Temporal UI 2.54 calls it: preflight, `?preserveStorageRefs=true`, CORS on
every answer to an allowed origin (errors too), and nothing decoded or encoded without the
operator's token (a bearer header, or the browser's session cookie from the sign-in page)."""

from __future__ import annotations

import datetime
import http.client
import json
import logging
import os
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.client import ScheduleActionStartWorkflow

from tests.support.processes import free_port
from tests.support.session import REPO
from workers.codec import EncryptionCodec, new_key_spec, parse_keys
from workers.codec_server import (
    SESSION_COOKIE,
    CodecAccess,
    CodecServer,
    CodecServerConfigError,
    tls_context,
)
from workers.run_metadata import RunMetadata
from workers.schedules import sync_schedule
from workers.settings import Settings

TOKEN = "operator-token-0123456789"
UI = "http://localhost:8233"
SECRET = b'{"cursor": "2024-05-01T00:00:00Z"}'


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> dict[str, object]:
        loaded = json.loads(self.body)
        assert isinstance(loaded, dict)
        return loaded


@dataclass
class Running:
    server: CodecServer
    codec: EncryptionCodec
    context: ssl.SSLContext | None = None

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        host, port = self.server.server_address[:2]
        connection: http.client.HTTPConnection
        if self.context is not None:
            connection = http.client.HTTPSConnection(
                "localhost", port, context=self.context, timeout=10
            )
        else:
            connection = http.client.HTTPConnection(str(host), port, timeout=10)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return Answer(response.status, response.headers, response.read())
        finally:
            connection.close()

    def decode(self, body: bytes, **headers: str) -> Answer:
        return self.call(
            "POST",
            "/decode?preserveStorageRefs=true",
            body,
            {"Content-Type": "application/json", "X-Namespace": "default", **headers},
        )


def _serve(server: CodecServer) -> Iterator[None]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def codec_server() -> Iterator[Running]:
    codec = EncryptionCodec(parse_keys(new_key_spec()))
    access = CodecAccess(token=TOKEN, allowed_origins=frozenset({UI, "http://127.0.0.1:8233"}))
    server = CodecServer(codec, access, "127.0.0.1", 0)
    for _ in _serve(server):
        yield Running(server, codec)


async def sealed_body(codec: EncryptionCodec, data: bytes = SECRET) -> bytes:
    (sealed,) = await codec.encode([Payload(metadata={"encoding": b"json/plain"}, data=data)])
    return json_format.MessageToJson(Payloads(payloads=[sealed])).encode()


def payloads_of(answer: Answer) -> list[Payload]:
    return list(json_format.Parse(answer.body, Payloads()).payloads)


async def test_without_a_token_nothing_is_decoded_or_encoded(codec_server: Running) -> None:
    body = await sealed_body(codec_server.codec)
    answer = codec_server.decode(body, Origin=UI)
    assert answer.status == 401
    assert b"cursor" not in answer.body and b"2024" not in answer.body
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    # The browser may read the refusal: CORS headers on the error too.
    assert answer.headers["Access-Control-Allow-Origin"] == UI
    plain = json.dumps({"payloads": [{"metadata": {"encoding": "anNvbi9wbGFpbg=="}}]}).encode()
    encode = codec_server.call("POST", "/encode", plain, {"Content-Type": "application/json"})
    assert encode.status == 401 and b"payloads" not in encode.body


@pytest.mark.parametrize(
    "authorization",
    [f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer", f"Basic {TOKEN}", TOKEN],
)
async def test_a_wrong_token_is_refused(codec_server: Running, authorization: str) -> None:
    answer = codec_server.decode(await sealed_body(codec_server.codec), Authorization=authorization)
    assert answer.status == 401 and b"cursor" not in answer.body


async def test_the_right_token_decodes_with_the_uis_query_string(codec_server: Running) -> None:
    body = await sealed_body(codec_server.codec)
    answer = codec_server.decode(body, Authorization=f"Bearer {TOKEN}", Origin=UI)
    assert answer.status == 200
    assert answer.headers["Access-Control-Allow-Origin"] == UI
    assert answer.headers["Access-Control-Allow-Credentials"] == "true"
    (decoded,) = payloads_of(answer)
    assert decoded.data == SECRET and decoded.metadata["encoding"] == b"json/plain"
    # The protocol names the operation by the path's last segment: an endpoint mounted deeper
    # works too.
    deeper = codec_server.call(
        "POST",
        "/sluice/decode?preserveStorageRefs=true",
        body,
        {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    assert deeper.status == 200 and payloads_of(deeper)[0].data == SECRET


async def test_encode_round_trip(codec_server: Running) -> None:
    typed = Payload(metadata={"encoding": b"json/plain"}, data=b'{"connection_id": "faker"}')
    body = json_format.MessageToJson(Payloads(payloads=[typed])).encode()
    answer = codec_server.call(
        "POST",
        "/encode?preserveStorageRefs=true",
        body,
        {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json", "Origin": UI},
    )
    assert answer.status == 200 and answer.headers["Access-Control-Allow-Origin"] == UI
    (sealed,) = payloads_of(answer)
    assert sealed.metadata["encoding"] == b"binary/encrypted" and b"faker" not in sealed.data
    assert await codec_server.codec.decode([sealed]) == [typed]
    again = codec_server.decode(answer.body, Authorization=f"Bearer {TOKEN}")
    assert payloads_of(again) == [typed]
    empty = codec_server.decode(b"{}", Authorization=f"Bearer {TOKEN}")
    assert empty.status == 200 and empty.json() == {"payloads": []}


def test_the_preflight_answers_the_ui_without_a_token(codec_server: Running) -> None:
    for origin in (UI, "http://127.0.0.1:8233"):
        answer = codec_server.call(
            "OPTIONS",
            "/decode?preserveStorageRefs=true",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type,x-namespace,"
                "x-request-id",
            },
        )
        assert answer.status == 204
        assert answer.headers["Access-Control-Allow-Origin"] == origin
        assert answer.headers["Access-Control-Allow-Credentials"] == "true"
        assert "POST" in answer.headers["Access-Control-Allow-Methods"]
        allowed = {h.strip() for h in answer.headers["Access-Control-Allow-Headers"].split(",")}
        assert {"authorization", "content-type", "x-namespace", "x-request-id"} <= allowed


async def test_a_wrong_origin_gets_no_cors_grant(codec_server: Running) -> None:
    evil = "http://evil.example"
    preflight = codec_server.call(
        "OPTIONS",
        "/decode",
        headers={"Origin": evil, "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status == 403
    assert "Access-Control-Allow-Origin" not in preflight.headers
    # Even with the token, a page elsewhere gets nothing decoded.
    body = await sealed_body(codec_server.codec)
    answer = codec_server.decode(body, Authorization=f"Bearer {TOKEN}", Origin=evil)
    assert answer.status == 403 and "Access-Control-Allow-Origin" not in answer.headers
    assert b"cursor" not in answer.body
    # The UI's port on another host name is another origin.
    other = codec_server.decode(body, Authorization=f"Bearer {TOKEN}", Origin=UI + "0")
    assert other.status == 403


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"payloads": {"data": "x"}}',
        b'{"payloads": [{"data": "!!not base64!!"}]}',
        b'{"payloads": [' + SECRET + b"]}",
        b"\xff\xfe",
    ],
)
def test_a_malformed_body_gets_a_clear_400_with_cors(
    codec_server: Running, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="workers.codec_server"):
        answer = codec_server.decode(body, Authorization=f"Bearer {TOKEN}", Origin=UI)
    assert answer.status == 400
    assert answer.headers["Access-Control-Allow-Origin"] == UI
    assert answer.headers["Content-Type"] == "application/json"
    error = answer.json()["error"]
    assert isinstance(error, str) and error.startswith("malformed body")
    assert b"cursor" not in answer.body and b"2024" not in answer.body
    # One line for the request, no traceback, nothing of the body.
    assert "Traceback" not in caplog.text and "cursor" not in caplog.text
    assert "not json" not in caplog.text and TOKEN not in caplog.text


def test_other_paths_are_404_with_cors(codec_server: Running) -> None:
    for method, path in (("POST", "/download"), ("POST", "/decodex"), ("GET", "/api/v1")):
        answer = codec_server.call(
            method,
            path,
            b"{}",
            {"Authorization": f"Bearer {TOKEN}", "Origin": UI, "Content-Type": "application/json"},
        )
        assert answer.status == 404, path
        assert answer.headers["Access-Control-Allow-Origin"] == UI


async def test_a_browser_signs_in_once_and_its_cookie_works_from_the_ui_only(
    codec_server: Running,
) -> None:
    page = codec_server.call("GET", "/")
    assert page.status == 200 and b'name="token"' in page.body
    refused = codec_server.call(
        "POST", "/session", b"token=nope", {"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert refused.status == 401 and "Set-Cookie" not in refused.headers
    signed_in = codec_server.call(
        "POST",
        "/session",
        f"token={TOKEN}".encode(),
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert signed_in.status == 200
    cookie_header = signed_in.headers["Set-Cookie"]
    assert "HttpOnly" in cookie_header and "SameSite=Strict" in cookie_header
    session = cookie_header.split(";", 1)[0]
    assert session.startswith(f"{SESSION_COOKIE}=") and TOKEN not in session
    body = await sealed_body(codec_server.codec)
    decoded = codec_server.decode(body, Cookie=session, Origin=UI)
    assert decoded.status == 200 and payloads_of(decoded)[0].data == SECRET
    # Spent without an Origin (not a CORS request from the UI), or forged: refused.
    assert codec_server.decode(body, Cookie=session).status == 401
    forged = session[:-1] + ("0" if session[-1] != "0" else "1")
    assert codec_server.decode(body, Cookie=forged, Origin=UI).status == 401
    with pytest.raises(CodecServerConfigError, match="too short"):
        CodecAccess(token="short", allowed_origins=frozenset({UI}))
    # A session signed for another token (the token rotated) is over.
    other = CodecAccess(token=TOKEN + "-new", allowed_origins=frozenset({UI}))
    value = session.split("=", 1)[1]
    assert not other.session_valid(value) and codec_server.server.access.session_valid(value)


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "codec.pem", tmp_path / "codec.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_tls_when_given_a_certificate(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    codec = EncryptionCodec(parse_keys(new_key_spec()))
    access = CodecAccess(token=TOKEN, allowed_origins=frozenset({UI}), secure_cookie=True)
    server = CodecServer(codec, access, "127.0.0.1", 0, tls_context(cert, key))
    client_context = ssl.create_default_context(cafile=str(cert))
    assert server.url.startswith("https://localhost:")
    for _ in _serve(server):
        running = Running(server, codec, client_context)
        answer = running.decode(await sealed_body(codec), Authorization=f"Bearer {TOKEN}")
        assert answer.status == 200 and payloads_of(answer)[0].data == SECRET
        signed_in = running.call(
            "POST",
            "/session",
            f"token={TOKEN}".encode(),
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert "; Secure" in signed_in.headers["Set-Cookie"]


def _sluice(*args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(REPO / ".venv" / "bin" / "sluice"), *args],
        env={"PATH": os.environ.get("PATH", ""), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )


def test_the_cli_refuses_to_serve_without_a_token_and_says_how(tmp_path: Path) -> None:
    env = {"SLUICE_PAYLOAD_KEYS": new_key_spec(), "SLUICE_STATE_DIR": str(tmp_path)}
    refused = _sluice("codec-server", "--port", str(free_port()), env=env)
    _, err = refused.communicate(timeout=60)
    assert refused.returncode == 2
    assert b"SLUICE_CODEC_TOKEN" in err and b"--insecure-no-auth" in err
    shown = _sluice("codec-server", "--help", env=env)
    out, _ = shown.communicate(timeout=60)
    assert shown.returncode == 0
    for setting in (
        b"SLUICE_CODEC_TOKEN",
        b"SLUICE_CODEC_ALLOWED_ORIGINS",
        b"SLUICE_CODEC_TLS_CERT",
        b"Include cross-origin credentials",
        b"--insecure-no-auth",
    ):
        assert setting in out, setting


async def test_the_cli_serves_with_a_token(tmp_path: Path) -> None:
    keys = new_key_spec()
    port = free_port()
    env = {
        "SLUICE_PAYLOAD_KEYS": keys,
        "SLUICE_STATE_DIR": str(tmp_path),
        "SLUICE_CODEC_TOKEN": TOKEN,
        "SLUICE_CODEC_ALLOWED_ORIGINS": "http://ui.example:8080/, http://localhost:8233",
    }
    server = _sluice("codec-server", "--port", str(port), env=env)
    try:
        body = await sealed_body(EncryptionCodec(parse_keys(keys)))
        for _ in range(300):
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                connection.request(
                    "POST",
                    "/decode?preserveStorageRefs=true",
                    body,
                    {
                        "Authorization": f"Bearer {TOKEN}",
                        "Content-Type": "application/json",
                        "Origin": "http://ui.example:8080",
                    },
                )
                response = connection.getresponse()
                answer = Answer(response.status, response.headers, response.read())
                break
            except OSError:
                assert server.poll() is None, server.communicate()[1]
                time.sleep(0.1)
        else:
            raise AssertionError("the codec server did not answer")
        assert answer.status == 200 and payloads_of(answer)[0].data == SECRET
        assert answer.headers["Access-Control-Allow-Origin"] == "http://ui.example:8080"
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    assert TOKEN.encode() not in err


async def test_run_summaries_stay_readable_without_the_codec(tmp_path: Path) -> None:
    """A run's summary and details (names only) are plain payloads: the UI shows them without
    the codec server, and the codec leaves them as they are."""
    codec = EncryptionCodec(parse_keys(new_key_spec()))
    schedule = sync_schedule(Settings(state_dir=tmp_path), "faker", "0 * * * *")
    action = schedule.action
    assert isinstance(action, ScheduleActionStartWorkflow)
    assert isinstance(action.static_summary, Payload)
    assert action.static_summary.metadata["encoding"] == b"json/plain"
    assert json.loads(action.static_summary.data) == "sync: connection faker"
    assert await codec.decode([action.static_summary]) == [action.static_summary]
    replay = RunMetadata.for_run("replay", "faker", started_by="sluice CLI", replay_of="run-1")
    assert replay.summary == "replay of run run-1 (connection faker)"
    started_by_cli = RunMetadata.for_run("replay", started_by="sluice CLI", replay_of="run-1")
    assert started_by_cli.summary == "replay of run run-1"
    details = json.loads(replay.details_payload().data)
    assert "**replay of**: run run-1" in details
