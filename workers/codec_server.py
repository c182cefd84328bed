"""The codec server: the Temporal UI's remote codec endpoint, which decrypts payloads for the
operators allowed to see them (and encrypts what they type into the start form).

It speaks the codec server protocol as Temporal UI 2.54 calls it: ``POST <endpoint>/decode`` and
``<endpoint>/encode`` (with ``?preserveStorageRefs=true``, which does not concern us: Sluice
stores no payload externally), ``{"payloads": [...]}`` in and out, a CORS preflight first.

Nothing is decoded or encoded without an operator credential, because a decrypting endpoint
open to whoever reaches it would undo the encryption. Two forms are accepted:

- ``Authorization: Bearer <SLUICE_CODEC_TOKEN>``: the ``temporal`` CLI
  (``--codec-auth "Bearer ..."``), scripts, a proxy in front of the UI;
- a session cookie, for the browser. Temporal UI only forwards *its own* user's SSO token (and
  only to an https endpoint), and a dev server's UI has no users at all; what the UI can do,
  with "Include cross-origin credentials" ticked in its Codec Server settings, is send the
  codec server's cookies. So an operator signs in once at the codec server's own page (``GET
  /``: paste the token), which sets a time-limited session cookie (an HMAC of the token:
  rotating the token ends every session). The cookie is ``SameSite=Strict``, so the UI must be
  on the same site as the codec server (``localhost`` and ``localhost``, or two hosts of one
  domain), and a request that carries it must come from an allowed origin.

CORS headers go on every answer to an allowed origin, errors included (the browser hides an
answer without them, and the UI then says "could not connect" instead of what went wrong).
The log has one line per request (method, route, status, origin) and never a payload, a body
or a credential.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import json
import logging
import re
import ssl
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads

from workers.codec import EncryptionCodec, PayloadKeyError

log = logging.getLogger(__name__)

SESSION_COOKIE = "sluice_codec_session"
SESSION_SECONDS = 12 * 3600
# A history page's payloads are a few MiB at most (Temporal refuses payloads over 2 MiB).
MAX_BODY_BYTES = 64 * 1024 * 1024
# What the UI sends (Authorization and Authorization-Extras when it passes its user's token).
BASE_ALLOWED_HEADERS = ("authorization", "authorization-extras", "content-type", "x-namespace")
MIN_TOKEN_LENGTH = 16
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")
_SESSION_LABEL = b"sluice codec session v1:"


class CodecServerConfigError(ValueError):
    """The codec server cannot start as configured (no token, a bad certificate)."""


@dataclass(frozen=True)
class CodecAccess:
    """Who may use the codec server: the operator token (None only when started with
    ``--insecure-no-auth``) and the browser origins (scheme://host:port) granted CORS."""

    token: str | None
    allowed_origins: frozenset[str]
    secure_cookie: bool = False
    _session_key: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.token is not None and len(self.token.strip()) < MIN_TOKEN_LENGTH:
            raise CodecServerConfigError(
                f"SLUICE_CODEC_TOKEN is too short ({len(self.token.strip())} characters): it is "
                f"all that guards the payloads; use at least {MIN_TOKEN_LENGTH} random "
                "characters (`openssl rand -hex 32`)"
            )
        key = hashlib.sha256(_SESSION_LABEL + (self.token or "").encode()).digest()
        object.__setattr__(self, "_session_key", key)

    def origin_allowed(self, origin: str | None) -> bool:
        return origin is not None and origin in self.allowed_origins

    def token_matches(self, candidate: str) -> bool:
        if self.token is None:
            return False
        return hmac.compare_digest(candidate.encode(), self.token.encode())

    def new_session(self, now: float | None = None) -> str:
        expires = int((now if now is not None else time.time()) + SESSION_SECONDS)
        return f"{expires}.{self._sign(expires)}"

    def session_valid(self, value: str, now: float | None = None) -> bool:
        if self.token is None:
            return False
        expires_text, _, signature = value.partition(".")
        if not expires_text.isdigit():
            return False
        expires = int(expires_text)
        if expires < (now if now is not None else time.time()):
            return False
        return hmac.compare_digest(signature.encode(), self._sign(expires).encode())

    def _sign(self, expires: int) -> str:
        return hmac.new(self._session_key, str(expires).encode(), hashlib.sha256).hexdigest()


def default_origins(ui_port: int, ui_url: str) -> list[str]:
    """The dev UI as a browser may name it (localhost or 127.0.0.1), and the configured UI."""
    parts = urllib.parse.urlsplit(ui_url)
    origins = [f"http://localhost:{ui_port}", f"http://127.0.0.1:{ui_port}"]
    if parts.scheme and parts.netloc:
        origins.append(f"{parts.scheme}://{parts.netloc}")
    return list(dict.fromkeys(origins))


def normalise_origin(origin: str) -> str:
    """``https://UI.example.com/`` -> ``https://ui.example.com`` (an Origin header's form)."""
    parts = urllib.parse.urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CodecServerConfigError(
            f"SLUICE_CODEC_ALLOWED_ORIGINS: {origin!r} is not an origin (scheme://host[:port])"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise CodecServerConfigError(
            f"SLUICE_CODEC_ALLOWED_ORIGINS: {origin!r} has a path; an origin is scheme://host[:port]"
        )
    return f"{parts.scheme}://{parts.netloc.lower()}"


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class CodecServer(ThreadingHTTPServer):
    """The HTTP(S) server; `serve_forever()` runs it, `shutdown()` stops it (from another
    thread), `url` is where it listens."""

    daemon_threads = True

    def __init__(
        self,
        codec: EncryptionCodec,
        access: CodecAccess,
        host: str = "127.0.0.1",
        port: int = 8081,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__((host, port), _CodecHandler)
        self.codec = codec
        self.access = access
        self.tls = tls

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake happens here, in the request's own thread: done on accept, one
        # slow client would hold up every other.
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        secured = self.tls.wrap_socket(request, server_side=True)
        try:
            super().finish_request(secured, client_address)
        finally:
            secured.close()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        scheme = "https" if self.tls is not None else "http"
        name = host if isinstance(host, str) else host.decode()
        return f"{scheme}://{'localhost' if name in ('127.0.0.1', '::1') else name}:{port}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away, a TLS handshake from a plain-http client: one line, no
        # traceback (the default prints one to stderr).
        log.warning("codec server: connection from %s ended with an error", client_address[0])


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile=cert, keyfile=key)
    except (OSError, ssl.SSLError) as exc:
        raise CodecServerConfigError(
            f"SLUICE_CODEC_TLS_CERT / SLUICE_CODEC_TLS_KEY ({cert}, {key}): {exc}"
        ) from None
    return context


class _CodecHandler(BaseHTTPRequestHandler):
    server: CodecServer
    protocol_version = "HTTP/1.1"
    timeout = 60  # seconds a silent client may hold its thread

    def version_string(self) -> str:
        return "sluice-codec"

    # -- routing ---------------------------------------------------------------------------

    def do_OPTIONS(self) -> None:
        origin = self.headers.get("Origin")
        if not self.server.access.origin_allowed(origin):
            # No grant: the browser refuses the request that would follow.
            self._json(403, {"error": "origin not allowed"})
            return
        requested = self.headers.get("Access-Control-Request-Headers", "")
        names = [name.strip().lower() for name in requested.split(",") if name.strip()]
        allowed = list(BASE_ALLOWED_HEADERS)
        # Whatever else the browser asks to send: the server reads no header but
        # Authorization, Cookie, Content-Length and Origin, so another header grants nothing.
        allowed += [n for n in names[:32] if _HEADER_NAME.match(n) and n not in allowed]
        extra = {
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": ", ".join(allowed),
            "Access-Control-Max-Age": "600",
        }
        if self.headers.get("Access-Control-Request-Private-Network", "").lower() == "true":
            extra["Access-Control-Allow-Private-Network"] = "true"
        self._send(204, b"", None, extra)

    def do_GET(self) -> None:
        route = self._route()
        if route == "/":
            self._html(200, _sign_in_page(self._own_url()))
        elif route in ("decode", "encode"):
            self._json(405, {"error": "use POST"}, {"Allow": "POST, OPTIONS"})
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:
        route = self._route()
        try:
            if route in ("decode", "encode"):
                self._convert(route)
            elif route == "/session":
                self._sign_in()
            else:
                self._discard_body()
                self._json(404, {"error": "not found"})
        except _BadRequest as exc:
            self._json(exc.status, {"error": exc.message})
        except Exception as exc:  # never a traceback, never a payload in the log
            log.error("codec server: %s on %s: %s", self.command, route, type(exc).__name__)
            self.close_connection = True  # its body may be unread
            self._json(500, {"error": "internal error"})

    def _route(self) -> str:
        """The last segment of the path, which alone names the operation (the protocol lets
        the endpoint be mounted at any depth); ``/`` and ``/session`` for the sign-in page."""
        path = urllib.parse.urlsplit(self.path).path
        if path in ("", "/"):
            return "/"
        if path == "/session":
            return "/session"
        last = path.rstrip("/").rsplit("/", 1)[-1]
        return last if last in ("decode", "encode") else path

    # -- the codec ---------------------------------------------------------------------------

    def _convert(self, route: str) -> None:
        origin = self.headers.get("Origin")
        if origin is not None and not self.server.access.origin_allowed(origin):
            self._discard_body()
            raise _BadRequest(403, "origin not allowed")
        if not self._authorised(origin):
            self._discard_body()
            self._json(
                401,
                {"error": "an operator credential is required (see `sluice codec-server --help`)"},
                {"WWW-Authenticate": 'Bearer realm="sluice-codec"'},
            )
            return
        payloads = _parse_payloads(self._body())
        work = self.server.codec.decode if route == "decode" else self.server.codec.encode
        try:
            result: list[Payload] = asyncio.run(work(payloads))
        except PayloadKeyError as exc:
            # Its text names a key id, never a payload's content.
            raise _BadRequest(400, str(exc)) from None
        # Always a "payloads" list (proto3 JSON would leave an empty one out).
        answer = json.dumps({"payloads": [json_format.MessageToDict(p) for p in result]}).encode()
        self._send(200, answer, "application/json")

    def _authorised(self, origin: str | None) -> bool:
        access = self.server.access
        if access.token is None:
            return True  # --insecure-no-auth
        scheme, _, credential = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and access.token_matches(credential.strip()):
            return True
        # The browser's session cookie counts only on a CORS request from an allowed origin
        # (a page elsewhere cannot have the browser spend it).
        session = _cookie(self.headers.get("Cookie", ""), SESSION_COOKIE)
        return session is not None and origin is not None and access.session_valid(session)

    # -- the sign-in page ------------------------------------------------------------------

    def _sign_in(self) -> None:
        origin = self.headers.get("Origin")
        if origin is not None and origin not in (self._own_url(), "null"):
            self._discard_body()
            raise _BadRequest(403, "sign in from the codec server's own page")
        form = urllib.parse.parse_qs(self._body().decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0].strip()
        access = self.server.access
        if access.token is None or not access.token_matches(token):
            self._html(401, _sign_in_page(self._own_url(), refused=True))
            return
        cookie = (
            f"{SESSION_COOKIE}={access.new_session()}; Max-Age={SESSION_SECONDS}; Path=/; "
            "HttpOnly; SameSite=Strict" + ("; Secure" if access.secure_cookie else "")
        )
        self._html(200, _signed_in_page(self._own_url()), {"Set-Cookie": cookie})

    def _own_url(self) -> str:
        scheme = "https" if self.server.tls is not None else "http"
        host = self.headers.get("Host") or self.server.url.split("://", 1)[1]
        return f"{scheme}://{host}"

    # -- bodies and answers --------------------------------------------------------------------

    def _body(self) -> bytes:
        length_text = self.headers.get("Content-Length")
        if length_text is None or not length_text.strip().isdigit():
            self.close_connection = True
            raise _BadRequest(411, "a body with a Content-Length is required")
        length = int(length_text)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise _BadRequest(413, f"body over {MAX_BODY_BYTES} bytes")
        return self.rfile.read(length)

    def _discard_body(self) -> None:
        length_text = self.headers.get("Content-Length", "0").strip()
        length = int(length_text) if length_text.isdigit() else 0
        if length > MAX_BODY_BYTES:
            self.close_connection = True
        elif length:
            self.rfile.read(length)

    def _cors_headers(self) -> dict[str, str]:
        origin = self.headers.get("Origin")
        headers = {"Vary": "Origin"}
        if origin is not None and self.server.access.origin_allowed(origin):
            headers["Access-Control-Allow-Origin"] = origin
            headers["Access-Control-Allow-Credentials"] = "true"
        return headers

    def _json(self, status: int, body: dict[str, Any], extra: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(body).encode(), "application/json", extra)

    def _html(self, status: int, page: str, extra: dict[str, str] | None = None) -> None:
        headers = {
            "Content-Security-Policy": "default-src 'none'; form-action 'self'; style-src "
            "'unsafe-inline'",
            "X-Frame-Options": "DENY",
            "Cache-Control": "no-store",
            **(extra or {}),
        }
        self._send(status, page.encode(), "text/html; charset=utf-8", headers)

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str | None,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        for name, value in {**self._cors_headers(), **(extra or {})}.items():
            self.send_header(name, value)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    # -- the log ---------------------------------------------------------------------------------

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        route = self._route() if hasattr(self, "path") else "-"
        log.info(
            "codec server: %s %s -> %s (origin %s)",
            self.command,
            route if route in ("/", "/session", "decode", "encode") else "(other path)",
            code,
            self.headers.get("Origin", "none") if hasattr(self, "headers") else "none",
        )

    def log_message(self, format: str, *args: Any) -> None:
        # The default writes request lines and error texts to stderr; ours go to log_request.
        del format, args


def _parse_payloads(body: bytes) -> list[Payload]:
    """``{"payloads": [...]}`` (proto3 JSON) -> payloads; 400 for anything else. The error
    names what is wrong with the shape, never what the body holds."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise _BadRequest(400, 'malformed body: expected JSON {"payloads": [...]}') from None
    if not isinstance(document, dict):
        raise _BadRequest(400, 'malformed body: expected a JSON object {"payloads": [...]}')
    if not isinstance(document.get("payloads", []), list):
        raise _BadRequest(400, 'malformed body: "payloads" must be a list')
    try:
        parsed = json_format.ParseDict(document, Payloads())
    except (json_format.ParseError, TypeError, ValueError):
        raise _BadRequest(
            400, "malformed body: each payload is {metadata: {key: base64}, data: base64}"
        ) from None
    return list(parsed.payloads)


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value
    return None


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sluice codec server</title>
<style>body{{font-family:sans-serif;max-width:42em;margin:3em auto;line-height:1.5}}
code{{background:#eee;padding:0 .2em}}</style></head><body>
<h1>Sluice codec server</h1>
{body}
</body></html>
"""


def _sign_in_page(own_url: str, refused: bool = False) -> str:
    warning = "<p><strong>That token is not the codec server's.</strong></p>" if refused else ""
    return _PAGE.format(
        body=f"""{warning}
<p>Sign this browser in to decode Sluice's payloads in the Temporal UI.</p>
<form method="post" action="/session">
<label>Codec token (<code>SLUICE_CODEC_TOKEN</code>)
<input type="password" name="token" autocomplete="off" required></label>
<button type="submit">Sign in</button>
</form>
<p>Then, in the Temporal UI: <em>Codec Server</em> settings, endpoint
<code>{html.escape(own_url)}</code>, tick <em>Include cross-origin credentials</em>.</p>"""
    )


def _signed_in_page(own_url: str) -> str:
    hours = SESSION_SECONDS // 3600
    return _PAGE.format(
        body=f"""<p id="signed-in">Signed in for {hours} hours.</p>
<p>In the Temporal UI, open the <em>Codec Server</em> settings, set the endpoint
<code>{html.escape(own_url)}</code> and tick <em>Include cross-origin credentials</em>.
Open the UI under the same host name as this page (the session cookie is not sent across
sites).</p>"""
    )
