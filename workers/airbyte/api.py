"""The Airbyte backend: Airbyte Cloud or self-managed Airbyte, driven through its API.

Jobs, connections and streams go through the public API with the `airbyte-api` SDK (its async
methods); attempt logs and connection state only exist in the Config API, reached with httpx.

The failure modes other orchestrators have are decided here, once:
- a 409 ``try-again-later`` on create means a sync already runs: attach to it, never start another;
- 429 (honouring Retry-After), 5xx, connection errors and timeouts are retried with backoff;
  400, 401, 403, 404 and 422 are not, and name the connection and the API's own message;
- job statuses outside the documented set fail closed;
- cancelling a job that already finished (409 ``state-conflict``) is not an error.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import random
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import httpx
import structlog
from airbyte_api import AirbyteAPI, api, errors, models

from workers.errors import SluiceError
from workers.metrics import count_airbyte_call

log = structlog.get_logger(__name__)

T = TypeVar("T")

RUNNING_STATUSES = frozenset({"pending", "queued", "running", "incomplete"})
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})

AuthKind = Literal["none", "bearer", "basic", "client_credentials"]


class AirbyteApiError(SluiceError):
    """An answer from Airbyte that Sluice will not (or may no longer) retry."""

    kind = "AirbyteApi"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        problem_type: str = "",
    ) -> None:
        super().__init__(message, retryable=retryable)
        self.status = status
        self.problem_type = problem_type


class AirbyteConfigError(SluiceError):
    """The Airbyte server settings are unusable (e.g. plain http to a remote host)."""

    kind = "AirbyteConfig"


@dataclass(frozen=True)
class AirbyteServer:
    """How to reach one Airbyte: validated once, from settings."""

    api_url: str
    """Public API base, e.g. https://api.airbyte.com/v1 or http://host:8000/api/public/v1."""
    config_api_url: str
    """Config API base, e.g. http://host:8000/api/v1."""
    auth: AuthKind = "none"
    bearer_token: str | None = None
    username: str | None = None
    password: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    token_url: str | None = None
    timeout_seconds: float = 30.0
    max_attempts: int = 6
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 30.0

    @classmethod
    def build(
        cls,
        *,
        api_url: str,
        config_api_url: str | None = None,
        bearer_token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        token_url: str | None = None,
        allow_http: bool = False,
        **tuning: Any,
    ) -> AirbyteServer:
        api_url = api_url.rstrip("/")
        if config_api_url is None:
            if not api_url.endswith("/api/public/v1"):
                raise AirbyteConfigError(
                    f"cannot derive the Config API URL from {api_url!r}; "
                    "set SLUICE_AIRBYTE_CONFIG_API_URL"
                )
            config_api_url = api_url.removesuffix("/public/v1") + "/v1"
        config_api_url = config_api_url.rstrip("/")
        for name, url in (("api_url", api_url), ("config_api_url", config_api_url)):
            _check_scheme(name, url, allow_http)
        auth: AuthKind = "none"
        if client_id or client_secret:
            if not (client_id and client_secret):
                raise AirbyteConfigError("client credentials need both a client id and a secret")
            if not token_url:
                token_url = api_url + "/applications/token"
            if not urllib.parse.urlsplit(token_url).netloc:
                # The SDK resolves a relative token URL with urljoin, which drops the
                # /api/public/v1 path: only an absolute one reaches the token endpoint.
                raise AirbyteConfigError(
                    f"the token URL must be absolute (https://host/...), got {token_url!r}"
                )
            _check_scheme("token_url", token_url, allow_http)
            auth = "client_credentials"
        elif bearer_token:
            auth = "bearer"
        elif username or password:
            if not (username and password):
                raise AirbyteConfigError("basic auth needs both a username and a password")
            auth = "basic"
        return cls(
            api_url=api_url,
            config_api_url=config_api_url,
            auth=auth,
            bearer_token=bearer_token,
            username=username,
            password=password,
            client_id=client_id,
            client_secret=client_secret,
            token_url=token_url,
            **tuning,
        )

    def secrets(self) -> list[str]:
        """Credentials that must never reach a retained log."""
        return [s for s in (self.bearer_token, self.password, self.client_secret) if s]


def _check_scheme(name: str, url: str, allow_http: bool) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        return
    if parts.scheme != "http":
        raise AirbyteConfigError(f"{name} {url!r}: scheme must be https (or http to loopback)")
    host = parts.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not (loopback or allow_http):
        raise AirbyteConfigError(
            f"{name} {url!r}: plain http to a non-loopback host is refused "
            "(credentials would travel in clear); use https or set SLUICE_AIRBYTE_ALLOW_HTTP=true"
        )


@dataclass(frozen=True)
class JobView:
    job_id: int
    status: str
    rows_synced: int = 0
    bytes_synced: int = 0


def _problem_message(error: errors.SDKError) -> str:
    try:
        body = httpx.Response(200, content=error.body.encode()).json()
    except Exception:
        return error.body[:300] or error.message
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("title") or body.get("message") or body)[:300]
    return str(body)[:300]


def _problem_type(error: errors.SDKError) -> str:
    try:
        body = httpx.Response(200, content=error.body.encode()).json()
    except Exception:
        return ""
    return str(body.get("type", "")) if isinstance(body, dict) else ""


def _retry_after(headers: Any) -> float | None:
    value = headers.get("retry-after") if headers is not None else None
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class AirbyteClient:
    """Public API (SDK) and Config API (httpx) of one Airbyte, with Sluice's retry rules."""

    def __init__(self, server: AirbyteServer) -> None:
        self.server = server
        self._sdk = AirbyteAPI(
            server_url=server.api_url,
            security=self._security(),
            timeout_ms=int(server.timeout_seconds * 1000),
        )
        self._http = httpx.AsyncClient(timeout=server.timeout_seconds)
        self._token: tuple[str, float] | None = None

    async def aclose(self) -> None:
        await self._http.aclose()

    def _security(self) -> models.Security | None:
        server = self.server
        if server.auth == "client_credentials":
            return models.Security(
                client_credentials=models.SchemeClientCredentials(
                    client_id=server.client_id or "",
                    client_secret=server.client_secret or "",
                    token_url=server.token_url or "",
                )
            )
        if server.auth == "bearer":
            return models.Security(bearer_auth=server.bearer_token)
        if server.auth == "basic":
            return models.Security(
                basic_auth=models.SchemeBasicAuth(
                    username=server.username or "", password=server.password or ""
                )
            )
        return None

    # -- the retry rule, in one place -----------------------------------------------------

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        delay = self.server.backoff_seconds
        for attempt in range(1, self.server.max_attempts + 1):
            wait: float | None = None
            try:
                result = await call()
                count_airbyte_call(200)  # the SDK (and _config_api) raise for any other status
                return result
            except errors.SDKError as exc:
                status = exc.status_code
                count_airbyte_call(status)
                message = f"{what}: HTTP {status}: {_problem_message(exc)}"
                if status == 401 and self.server.auth == "client_credentials" and attempt == 1:
                    # The SDK drops its cached token on a 401 but does not retry.
                    self._token = None
                    wait = 0.0
                elif status not in _RETRYABLE_STATUS:
                    raise AirbyteApiError(
                        message, status=status, problem_type=_problem_type(exc)
                    ) from None
                else:
                    wait = _retry_after(exc.headers) if status == 429 else None
                failure = AirbyteApiError(message, status=status, retryable=True)
            except errors.ResponseValidationError as exc:
                count_airbyte_call(None)
                raise AirbyteApiError(
                    f"{what}: Airbyte's answer does not match the API (failing closed): {exc}"
                ) from None
            except (httpx.TransportError, TimeoutError) as exc:
                count_airbyte_call(None)
                failure = AirbyteApiError(f"{what}: {type(exc).__name__}: {exc}", retryable=True)
            except Exception as exc:
                if "token endpoint" not in str(exc):
                    raise
                count_airbyte_call(None)
                # The SDK's client-credentials hook raises a bare Exception for token failures.
                failure = AirbyteApiError(f"{what}: {exc}", retryable=True)
            if attempt == self.server.max_attempts:
                raise failure
            if wait is None:
                wait = min(delay, self.server.max_backoff_seconds) * random.uniform(0.5, 1.0)
                delay *= 2
            log.info("airbyte call retried", call=what, attempt=attempt, wait=round(wait, 2))
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def _config_api(self, what: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async def post() -> dict[str, Any]:
            response = await self._http.post(
                self.server.config_api_url + path, json=body, headers=await self._auth_headers()
            )
            if response.status_code >= 400:
                raise errors.SDKError("Config API error", response)
            result = response.json()
            if not isinstance(result, dict):
                raise AirbyteApiError(f"{what}: Config API answered {type(result).__name__}")
            return result

        return await self._call(what, post)

    async def _auth_headers(self) -> dict[str, str]:
        server = self.server
        if server.auth == "bearer":
            return {"Authorization": f"Bearer {server.bearer_token}"}
        if server.auth == "basic":
            pair = f"{server.username}:{server.password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
        if server.auth == "client_credentials":
            if self._token is None or self._token[1] - 60 < time.monotonic():
                response = await self._http.post(
                    server.token_url or "",
                    data={
                        "grant_type": "client_credentials",
                        "client_id": server.client_id or "",
                        "client_secret": server.client_secret or "",
                    },
                )
                if response.status_code >= 400:
                    raise errors.SDKError("token endpoint", response)
                token = response.json()
                expires_in = float(token.get("expires_in") or 300)
                self._token = (token["access_token"], time.monotonic() + expires_in)
            return {"Authorization": f"Bearer {self._token[0]}"}
        return {}

    # -- jobs -----------------------------------------------------------------------------

    async def start_sync(self, connection_id: str) -> tuple[int, bool]:
        """Start a sync job, or attach to the one already running. Returns (job id, attached)."""
        request = models.JobCreateRequest(
            connection_id=connection_id, job_type=models.JobTypeEnum.SYNC
        )

        async def create() -> int:
            response = await self._sdk.jobs.create_job_async(request=request)
            assert response.job_response is not None
            return response.job_response.job_id

        try:
            return await self._call(f"start a sync of connection {connection_id}", create), False
        except AirbyteApiError as exc:
            # Only "try again later" means a job of this connection is running; another 409
            # (a locked connection, say) is an error like any other.
            if exc.status != 409 or "try-again-later" not in exc.problem_type:
                raise
        job_id = await self.active_job(connection_id)
        if job_id is None:
            raise AirbyteApiError(
                f"connection {connection_id}: Airbyte answered 409 (a sync is running) but lists "
                "no running job; try again later",
                status=409,
                retryable=True,
            )
        log.info("attached to running job", connection=connection_id, job_id=job_id)
        return job_id, True

    async def active_job(self, connection_id: str) -> int | None:
        """The newest pending, queued, running or incomplete job of the connection (a sync, or
        a reset or refresh that also holds it)."""
        for status in ("running", "incomplete", "pending", "queued"):
            request = api.ListJobsRequest(
                connection_id=connection_id,
                status=models.JobStatusEnum(status),
                order_by="createdAt|DESC",
                limit=5,
            )

            async def listed(request: api.ListJobsRequest = request) -> list[models.JobResponse]:
                response = await self._sdk.jobs.list_jobs_async(request=request)
                return list(response.jobs_response.data) if response.jobs_response else []

            jobs = await self._call(f"list jobs of connection {connection_id}", listed)
            if jobs:
                return jobs[0].job_id
        return None

    async def job(self, job_id: int) -> JobView:
        async def get() -> JobView:
            response = await self._sdk.jobs.get_job_async(request=api.GetJobRequest(job_id=job_id))
            job = response.job_response
            assert job is not None
            status = job.status.value if hasattr(job.status, "value") else str(job.status)
            return JobView(
                job_id=job.job_id,
                status=status,
                rows_synced=job.rows_synced or 0,
                bytes_synced=job.bytes_synced or 0,
            )

        view = await self._call(f"get job {job_id}", get)
        if view.status not in RUNNING_STATUSES | TERMINAL_STATUSES:
            raise AirbyteApiError(f"job {job_id} has unknown status {view.status!r}")
        return view

    async def cancel(self, job_id: int) -> None:
        async def cancel() -> None:
            await self._sdk.jobs.cancel_job_async(request=api.CancelJobRequest(job_id=job_id))

        try:
            await self._call(f"cancel job {job_id}", cancel)
        except AirbyteApiError as exc:
            if exc.status != 409:  # state-conflict: the job had already finished
                raise

    # -- connection metadata --------------------------------------------------------------

    async def connection(self, connection_id: str) -> models.ConnectionResponse:
        async def get() -> models.ConnectionResponse:
            response = await self._sdk.connections.get_connection_async(
                request=api.GetConnectionRequest(connection_id=connection_id)
            )
            assert response.connection_response is not None
            return response.connection_response

        return await self._call(f"connection {connection_id}", get)

    async def stream_properties(
        self, source_id: str, destination_id: str
    ) -> list[models.StreamProperties]:
        async def get() -> list[models.StreamProperties]:
            response = await self._sdk.streams.get_stream_properties_async(
                request=api.GetStreamPropertiesRequest(
                    source_id=source_id, destination_id=destination_id
                )
            )
            return list(response.stream_properties_response or [])

        return await self._call(f"stream properties of source {source_id}", get)

    async def actor_type(self, kind: Literal["source", "destination"], actor_id: str) -> str:
        """The source or destination type (e.g. postgres), read without trusting the SDK's
        lossy parse of the configuration union."""

        async def get() -> str:
            try:
                if kind == "source":
                    source = await self._sdk.sources.get_source_async(
                        request=api.GetSourceRequest(source_id=actor_id)
                    )
                    assert source.source_response is not None
                    return source.source_response.source_type
                destination = await self._sdk.destinations.get_destination_async(
                    request=api.GetDestinationRequest(destination_id=actor_id)
                )
                assert destination.destination_response is not None
                return destination.destination_response.destination_type
            except errors.ResponseValidationError as exc:
                body = exc.raw_response.json()
                return str(body.get(f"{kind}Type", "unknown"))

        return await self._call(f"{kind} {actor_id}", get)

    # -- Config API: logs and state -------------------------------------------------------

    async def job_info(self, job_id: int) -> dict[str, Any]:
        return await self._config_api(f"logs of job {job_id}", "/jobs/get", {"id": job_id})

    async def connection_state(self, connection_id: str) -> dict[str, Any]:
        return await self._config_api(
            f"state of connection {connection_id}", "/state/get", {"connectionId": connection_id}
        )


def log_lines(job_info: dict[str, Any]) -> Iterator[str]:
    """Every attempt's log as text lines, from either form the Config API serves."""
    for number, item in enumerate(job_info.get("attempts") or [], start=1):
        yield f"----- attempt {number} ({item.get('attempt', {}).get('status', '?')}) -----\n"
        logs = item.get("logs") or {}
        for line in logs.get("logLines") or []:
            yield line if line.endswith("\n") else line + "\n"
        for event in logs.get("events") or []:
            stamp = event.get("timestamp", "")
            level = event.get("level", "")
            source = event.get("logSource", "")
            text = f"{stamp} {source} {level} {event.get('message', '')}"
            if event.get("stackTrace"):
                text += "\n" + str(event["stackTrace"])
            yield text.rstrip("\n") + "\n"


def failure_summary(job_info: dict[str, Any]) -> str | None:
    """The last attempt's failure messages, as Airbyte's UI shows them."""
    attempts = job_info.get("attempts") or []
    if not attempts:
        return None
    summary = attempts[-1].get("attempt", {}).get("failureSummary") or {}
    messages = [
        f"{f.get('failureOrigin', 'unknown')}: {f.get('externalMessage') or f.get('failureType')}"
        for f in summary.get("failures") or []
    ]
    return "; ".join(messages) or None
