"""The Airbyte API client's rules, against the emulator: what is retried, what fails at once,
what fails closed, and which server settings are refused before any call."""

from __future__ import annotations

import pytest

from tests.airbyte_emulator import AirbyteEmulator
from tests.airbyte_emulator import airbyte_emulator_fixture as airbyte_emulator_fixture
from workers.airbyte.api import AirbyteApiError, AirbyteClient, AirbyteConfigError, AirbyteServer


def client_for(emu: AirbyteEmulator, **tuning: object) -> AirbyteClient:
    client_id, secret = emu.require_client_credentials()
    return AirbyteClient(
        AirbyteServer.build(
            api_url=emu.public_url,
            token_url=emu.token_url,
            client_id=client_id,
            client_secret=secret,
            backoff_seconds=0.01,
            **tuning,
        )
    )


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        ({"api_url": "http://airbyte.example.com/api/public/v1"}, "plain http"),
        ({"api_url": "ftp://airbyte/api/public/v1"}, "scheme"),
        (
            {
                "api_url": "https://airbyte.example.com/api/public/v1",
                "client_id": "id",
                "client_secret": "secret",
                "token_url": "/applications/token",
            },
            "absolute",
        ),
        ({"api_url": "https://api.airbyte.com/v1"}, "Config API"),
        ({"api_url": "https://h/api/public/v1", "client_id": "only-id"}, "both"),
    ],
)
def test_unsafe_or_incomplete_server_settings_are_refused(
    settings: dict[str, str], reason: str
) -> None:
    with pytest.raises(AirbyteConfigError, match=reason):
        AirbyteServer.build(**settings)  # type: ignore[arg-type]


def test_http_is_allowed_to_loopback_or_when_asked() -> None:
    assert AirbyteServer.build(api_url="http://127.0.0.1:8000/api/public/v1").auth == "none"
    server = AirbyteServer.build(
        api_url="http://airbyte.internal/api/public/v1", allow_http=True, bearer_token="t"
    )
    assert server.config_api_url == "http://airbyte.internal/api/v1"
    assert server.auth == "bearer" and server.secrets() == ["t"]


async def test_expired_token_is_renewed(airbyte_emulator: AirbyteEmulator) -> None:
    emu = airbyte_emulator
    connection = emu.add_connection()
    client = client_for(emu)
    await client.connection(connection.connection_id)
    emu.expire_tokens()
    assert (await client.connection(connection.connection_id)).name == connection.name
    assert emu.issued_tokens >= 2
    await client.aclose()


async def test_unknown_job_status_fails_closed(airbyte_emulator: AirbyteEmulator) -> None:
    emu = airbyte_emulator
    connection = emu.add_connection()
    client = client_for(emu)
    job_id, _ = await client.start_sync(connection.connection_id)
    emu.tamper_next(r"/api/public/v1/jobs/\d+", lambda body: {**body, "status": "exploded"})
    with pytest.raises(AirbyteApiError, match="does not match the API") as failed:
        await client.job(job_id)
    assert not failed.value.retryable
    emu.take_violations()  # served on purpose
    await client.aclose()


async def test_retries_transient_failures_and_not_client_errors(
    airbyte_emulator: AirbyteEmulator,
) -> None:
    emu = airbyte_emulator
    connection = emu.add_connection()
    client = client_for(emu, max_attempts=4)
    emu.fail_next(r"/api/public/v1/connections/.*", 500, count=1)
    emu.fail_next(r"/api/public/v1/connections/.*", 503, count=1)
    emu.fail_next(r"/api/public/v1/connections/.*", 429, count=1, retry_after=0.1)
    assert (await client.connection(connection.connection_id)).name == connection.name
    calls = emu.requests_to("GET", r"/api/public/v1/connections/.*")
    assert [c.status for c in calls] == [500, 503, 429, 200]

    emu.fail_next(r"/api/public/v1/connections/.*", 503, count=4)  # every attempt
    with pytest.raises(AirbyteApiError, match="503") as exhausted:
        await client.connection(connection.connection_id)
    assert exhausted.value.retryable

    for status in (400, 403, 404, 422):
        before = len(emu.requests_to("GET", r"/api/public/v1/connections/.*"))
        emu.fail_next(r"/api/public/v1/connections/.*", status, count=1)
        with pytest.raises(AirbyteApiError, match=str(status)) as refused:
            await client.connection(connection.connection_id)
        assert not refused.value.retryable
        assert len(emu.requests_to("GET", r"/api/public/v1/connections/.*")) == before + 1
    await client.aclose()


async def test_a_call_that_times_out_is_retried(airbyte_emulator: AirbyteEmulator) -> None:
    """Timeouts are transient: retried, and once attempts run out, a retryable error. The
    delays are far longer than the client waits, so only its timeout can end those calls; no
    test clock or wall-time bound is involved."""
    emu = airbyte_emulator
    connection = emu.add_connection()
    path = r"/api/public/v1/connections/.*"
    client = client_for(emu, timeout_seconds=0.3, max_attempts=2)

    emu.delay(path, 60.0, count=1)
    assert (await client.connection(connection.connection_id)).name == connection.name
    assert len(emu.requests_to("GET", path)) == 2  # the timed-out call, then the retry

    emu.delay(path, 60.0, count=2)
    with pytest.raises(AirbyteApiError, match="Timeout") as exhausted:
        await client.connection(connection.connection_id)
    assert exhausted.value.retryable
    assert len(emu.requests_to("GET", path)) == 4
    await client.aclose()


async def test_cancelling_a_finished_job_is_fine(airbyte_emulator: AirbyteEmulator) -> None:
    emu = airbyte_emulator
    connection = emu.add_connection()
    client = client_for(emu)
    job_id, _ = await client.start_sync(connection.connection_id)
    emu.finish_job(job_id)
    await client.cancel(job_id)  # 409 state-conflict: already finished
    assert emu.requests_to("DELETE", rf"/api/public/v1/jobs/{job_id}")[-1].status == 409
    await client.aclose()
