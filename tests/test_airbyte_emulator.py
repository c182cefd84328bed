"""The Airbyte API emulator, driven by the real airbyte-api SDK (public API) and httpx (Config
API): every answer parses in the SDK and conforms to the real specs (the fixture fails a test
at teardown otherwise), and every scripted scenario behaves as the backend will see it."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from airbyte_api import AirbyteAPI, api, errors, models

from tests.airbyte_emulator import (
    NOT_SET,
    AirbyteEmulator,
    EmulatedStream,
    SpecViolation,
    global_state,
    legacy_state,
    stream_state,
)
from tests.airbyte_emulator import airbyte_emulator_fixture as airbyte_emulator_fixture

TOKEN = "test-application-token"
JOBS = r"/api/public/v1/jobs"
JOB = r"/api/public/v1/jobs/\d+"


def bearer_sdk(emulator: AirbyteEmulator, token: str = TOKEN) -> AirbyteAPI:
    return AirbyteAPI(server_url=emulator.public_url, security=models.Security(bearer_auth=token))


def sync_request(connection_id: str) -> models.JobCreateRequest:
    return models.JobCreateRequest(connection_id=connection_id, job_type=models.JobTypeEnum.SYNC)


async def poll(sdk: AirbyteAPI, job_id: int) -> models.JobResponse:
    response = await sdk.jobs.get_job_async(request=api.GetJobRequest(job_id=job_id))
    assert response.job_response is not None
    return response.job_response


def problem(error: errors.SDKError) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(error.body)
    return body


# ---- public API through the SDK ---------------------------------------------------------------


async def test_job_created_then_polled_to_success(airbyte_emulator: AirbyteEmulator) -> None:
    emu = airbyte_emulator
    emu.require_bearer(TOKEN)
    connection = emu.add_connection()
    emu.script_job(polls_until_done=3, rows_synced=1200, bytes_synced=48_000)
    sdk = bearer_sdk(emu)

    created = await sdk.jobs.create_job_async(request=sync_request(connection.connection_id))
    job = created.job_response
    assert job is not None
    assert (job.status, job.job_type) == (models.JobStatusEnum.PENDING, models.JobTypeEnum.SYNC)
    assert job.duration is None and job.last_updated_at is None  # pending: neither is set

    seen = [await poll(sdk, job.job_id) for _ in range(3)]
    assert [j.status.value for j in seen] == ["running", "running", "succeeded"]
    assert all(j.last_updated_at is None for j in seen[:2])  # only terminal jobs carry it
    final = seen[-1]
    assert final.last_updated_at is not None and final.duration is not None
    assert (final.rows_synced, final.bytes_synced) == (1200, 48_000)
    # Polling a finished job changes nothing.
    assert (await poll(sdk, job.job_id)).status == models.JobStatusEnum.SUCCEEDED

    assert len(emu.requests_to("POST", JOBS)) == 1
    assert {r.authorization for r in emu.requests} == {f"Bearer {TOKEN}"}
    assert emu.requests_to("POST", JOBS)[0].body == {
        "connectionId": connection.connection_id,
        "jobType": "sync",
    }


async def test_scripted_failure_and_explicit_status_walk(airbyte_emulator: AirbyteEmulator) -> None:
    emu = airbyte_emulator
    connection = emu.add_connection()
    emu.script_job(statuses=["pending", "queued", "running", "incomplete", "running", "failed"])
    emu.script_job(polls_until_done=1, outcome="cancelled")
    sdk = AirbyteAPI(server_url=emu.public_url)

    first = await sdk.jobs.create_job_async(request=sync_request(connection.connection_id))
    assert first.job_response is not None
    walk = [(await poll(sdk, first.job_response.job_id)).status.value for _ in range(5)]
    assert walk == ["queued", "running", "incomplete", "running", "failed"]

    second = await sdk.jobs.create_job_async(request=sync_request(connection.connection_id))
    assert second.job_response is not None
    assert (await poll(sdk, second.job_response.job_id)).status == models.JobStatusEnum.CANCELLED


async def test_list_jobs_filters_orders_and_pages(airbyte_emulator: AirbyteEmulator) -> None:
    emu = airbyte_emulator
    emu.require_bearer(TOKEN)
    ours, other = emu.add_connection(), emu.add_connection(name="other")
    sdk = bearer_sdk(emu)
    ids = []
    for _ in range(3):
        emu.script_job(polls_until_done=1)
        created = await sdk.jobs.create_job_async(request=sync_request(ours.connection_id))
        assert created.job_response is not None
        ids.append(created.job_response.job_id)
        await poll(sdk, ids[-1])
    emu.conflict_on_create(other.connection_id)  # a running job on another connection

    page = await sdk.jobs.list_jobs_async(
        request=api.ListJobsRequest(connection_id=ours.connection_id, limit=2)
    )
    assert page.jobs_response is not None
    assert [j.job_id for j in page.jobs_response.data] == ids[:2]  # createdAt ASC by default
    assert page.jobs_response.next is not None and "offset=2" in page.jobs_response.next

    rest = await sdk.jobs.list_jobs_async(
        request=api.ListJobsRequest(connection_id=ours.connection_id, limit=2, offset=2)
    )
    assert rest.jobs_response is not None
    assert [j.job_id for j in rest.jobs_response.data] == ids[2:]
    assert rest.jobs_response.next is None and rest.jobs_response.previous is not None

    newest_first = await sdk.jobs.list_jobs_async(
        request=api.ListJobsRequest(
            connection_id=ours.connection_id,
            status=models.JobStatusEnum.SUCCEEDED,
            job_type=models.JobTypeEnum.SYNC,
            order_by="createdAt|DESC",
        )
    )
    assert newest_first.jobs_response is not None
    assert [j.job_id for j in newest_first.jobs_response.data] == ids[::-1]

    running = await sdk.jobs.list_jobs_async(
        request=api.ListJobsRequest(status=models.JobStatusEnum.RUNNING)
    )
    assert running.jobs_response is not None
    assert [j.connection_id for j in running.jobs_response.data] == [other.connection_id]


async def test_cancel_running_job_then_cancel_again_conflicts(
    airbyte_emulator: AirbyteEmulator,
) -> None:
    emu = airbyte_emulator
    emu.require_bearer(TOKEN)
    connection = emu.add_connection()
    emu.script_job(polls_until_done=10)
    sdk = bearer_sdk(emu)
    created = await sdk.jobs.create_job_async(request=sync_request(connection.connection_id))
    assert created.job_response is not None
    job_id = created.job_response.job_id
    assert (await poll(sdk, job_id)).status == models.JobStatusEnum.RUNNING

    cancelled = await sdk.jobs.cancel_job_async(request=api.CancelJobRequest(job_id=job_id))
    assert cancelled.job_response is not None
    assert cancelled.job_response.status == models.JobStatusEnum.CANCELLED
    assert cancelled.job_response.last_updated_at is not None
    assert (await poll(sdk, job_id)).status == models.JobStatusEnum.CANCELLED

    with pytest.raises(errors.SDKError) as raised:
        await sdk.jobs.cancel_job_async(request=api.CancelJobRequest(job_id=job_id))
    assert raised.value.status_code == 409
    assert problem(raised.value)["title"] == "state-conflict"
    assert [r.path for r in emu.requests_to("DELETE", JOB)] == [f"/api/public/v1/jobs/{job_id}"] * 2

    with pytest.raises(errors.SDKError) as missing:
        await sdk.jobs.cancel_job_async(request=api.CancelJobRequest(job_id=999_999))
    assert missing.value.status_code == 404


async def test_create_while_a_sync_runs_is_409_try_again_later(
    airbyte_emulator: AirbyteEmulator,
) -> None:
    emu = airbyte_emulator
    emu.require_bearer(TOKEN)
    connection = emu.add_connection()
    running = emu.conflict_on_create(connection.connection_id, polls_until_done=2)
    sdk = bearer_sdk(emu)

    with pytest.raises(errors.SDKError) as raised:
        await sdk.jobs.create_job_async(request=sync_request(connection.connection_id))
    assert raised.value.status_code == 409
    body = problem(raised.value)
    assert body["title"] == "try-again-later"
    assert body["type"] == "https://reference.airbyte.com/reference/errors#try-again-later"
    assert raised.value.raw_response.headers["content-type"] == "application/problem+json"

    # What the backend does next: find the running job and attach to it.
    listed = await sdk.jobs.list_jobs_async(
        request=api.ListJobsRequest(
            connection_id=connection.connection_id, status=models.JobStatusEnum.RUNNING
        )
    )
    assert listed.jobs_response is not None
    assert [j.job_id for j in listed.jobs_response.data] == [running.job_id]
    statuses = [(await poll(sdk, running.job_id)).status.value for _ in range(2)]
    assert statuses == ["running", "succeeded"]
    assert len(emu.jobs) == 1

    # Once it has finished, a new sync may start.
    again = await sdk.jobs.create_job_async(request=sync_request(connection.connection_id))
    assert again.job_response is not None and again.job_response.job_id != running.job_id


async def test_connection_streams_source_and_destination(
    airbyte_emulator: AirbyteEmulator,
) -> None:
    emu = airbyte_emulator
    emu.require_bearer(TOKEN)
    connection = emu.add_connection(
        name="CRM to warehouse",
        source_type="postgres",
        destination_type="snowflake",
        streams=[
            EmulatedStream(
                "users",
                namespace="public",
                sync_mode="incremental_deduped_history",
                cursor_field=["updated_at"],
                primary_key=[["id"]],
                selected_fields=["id", "email", "updated_at"],
                columns=["id", "email", "updated_at", "password_hash"],
            ),
            EmulatedStream("events", sync_mode="full_refresh_overwrite", columns=["id", "kind"]),
        ],
    )
    sdk = bearer_sdk(emu)

    got = await sdk.connections.get_connection_async(
        request=api.GetConnectionRequest(connection_id=connection.connection_id)
    )
    read = got.connection_response
    assert read is not None and read.name == "CRM to warehouse"
    assert (read.source_id, read.destination_id) == (
        connection.source_id,
        connection.destination_id,
    )
    assert read.configurations.streams is not None
    users, events = read.configurations.streams
    assert (users.name, users.namespace) == ("users", "public")
    assert users.sync_mode == models.ConnectionSyncModeEnum.INCREMENTAL_DEDUPED_HISTORY
    assert (users.cursor_field, users.primary_key) == (["updated_at"], [["id"]])
    assert users.selected_fields is not None
    assert [f.field_path for f in users.selected_fields] == [["id"], ["email"], ["updated_at"]]
    assert (events.name, events.cursor_field, events.selected_fields) == ("events", None, None)

    properties = await sdk.streams.get_stream_properties_async(
        request=api.GetStreamPropertiesRequest(
            source_id=connection.source_id, destination_id=connection.destination_id
        )
    )
    streams = properties.stream_properties_response
    assert streams is not None
    assert [(s.stream_name, s.streamnamespace) for s in streams] == [
        ("users", "public"),
        ("events", None),
    ]
    assert streams[0].property_fields == [["id"], ["email"], ["updated_at"], ["password_hash"]]

    source = await sdk.sources.get_source_async(
        request=api.GetSourceRequest(source_id=connection.source_id)
    )
    destination = await sdk.destinations.get_destination_async(
        request=api.GetDestinationRequest(destination_id=connection.destination_id)
    )
    assert source.source_response is not None and destination.destination_response is not None
    assert source.source_response.source_type == "postgres"
    assert destination.destination_response.destination_type == "snowflake"


async def test_unknown_resources_are_404_resource_not_found(
    airbyte_emulator: AirbyteEmulator,
) -> None:
    emu = airbyte_emulator
    sdk = AirbyteAPI(server_url=emu.public_url)
    unknown = "00000000-0000-4000-8000-000000000000"
    calls = [
        sdk.connections.get_connection_async(
            request=api.GetConnectionRequest(connection_id=unknown)
        ),
        sdk.jobs.create_job_async(request=sync_request(unknown)),
        sdk.jobs.get_job_async(request=api.GetJobRequest(job_id=424242)),
        sdk.streams.get_stream_properties_async(
            request=api.GetStreamPropertiesRequest(source_id=unknown)
        ),
    ]
    for call in calls:
        with pytest.raises(errors.SDKError) as raised:
            await call
        assert raised.value.status_code == 404
        assert problem(raised.value)["title"] == "resource-not-found"
    assert emu.jobs == []


# ---- auth -------------------------------------------------------------------------------------


async def test_client_credentials_token_flow_and_expiry(airbyte_emulator: AirbyteEmulator) -> None:
    emu = airbyte_emulator
    # The token claims an hour, so the SDK keeps using it.
    client_id, secret = emu.require_client_credentials(expires_in=3600)
    connection = emu.add_connection()
    credentials = models.SchemeClientCredentials(
        client_id=client_id, client_secret=secret, token_url=emu.token_url
    )
    sdk = AirbyteAPI(
        server_url=emu.public_url, security=models.Security(client_credentials=credentials)
    )

    await sdk.connections.get_connection_async(
        request=api.GetConnectionRequest(connection_id=connection.connection_id)
    )
    token_request = emu.requests_to("POST", r".*/applications/token")[0]
    assert token_request.body == {
        "grant_type": "client_credentials",
        "client_id": client_id,
        "client_secret": secret,
    }
    first_token = emu.requests[-1].authorization
    assert first_token is not None and first_token.startswith("Bearer emulated-")

    # The server drops it while the SDK still trusts it (no clock involved: dropped at once).
    emu.expire_tokens()
    with pytest.raises(errors.SDKError) as expired:
        await sdk.connections.get_connection_async(
            request=api.GetConnectionRequest(connection_id=connection.connection_id)
        )
    assert expired.value.status_code == 401
    assert problem(expired.value)["title"] == "invalid-api-key"

    # The SDK dropped the rejected token on the 401; the next call fetches a fresh one.
    emu.require_client_credentials(client_id, secret)  # tokens live an hour from now on
    await sdk.connections.get_connection_async(
        request=api.GetConnectionRequest(connection_id=connection.connection_id)
    )
    assert emu.issued_tokens == 2
    assert emu.requests[-1].authorization not in (None, first_token)

    emu.expire_tokens()
    with pytest.raises(errors.SDKError) as revoked:
        await sdk.jobs.list_jobs_async(request=api.ListJobsRequest())
    assert revoked.value.status_code == 401


async def test_token_endpoint_rejects_wrong_credentials(airbyte_emulator: AirbyteEmulator) -> None:
    emu = airbyte_emulator
    client_id, _ = emu.require_client_credentials()
    async with httpx.AsyncClient() as http:
        wrong = await http.post(
            emu.token_url,
            data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": "x"},
        )
        right_json = await http.post(
            emu.token_url,
            json={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": emu.require_client_credentials(client_id, "s3cret")[1],
            },
        )
    assert wrong.status_code == 403 and wrong.json()["title"] == "forbidden"
    assert right_json.status_code == 200
    assert right_json.json()["token_type"] == "Bearer" and right_json.json()["expires_in"] == 3600


async def test_relative_token_url_misses_the_token_endpoint(
    airbyte_emulator: AirbyteEmulator,
) -> None:
    """SOURCE.md's warning, shown: the SDK urljoins a relative token URL onto the server URL,
    which drops /api/public/v1, so the token request lands on an endpoint that does not exist."""
    emu = airbyte_emulator
    client_id, secret = emu.require_client_credentials()
    credentials = models.SchemeClientCredentials(
        client_id=client_id, client_secret=secret, token_url="/applications/token"
    )
    sdk = AirbyteAPI(
        server_url=emu.public_url, security=models.Security(client_credentials=credentials)
    )
    with pytest.raises(Exception, match="Unexpected status code 404 from token endpoint"):
        await sdk.jobs.list_jobs_async(request=api.ListJobsRequest())
    [violation] = emu.take_violations()
    assert (violation.kind, violation.path) == ("unrouted", "/applications/token")


@pytest.mark.parametrize("mode", ["bearer", "basic"])
async def test_bearer_and_basic_auth(airbyte_emulator: AirbyteEmulator, mode: str) -> None:
    emu = airbyte_emulator
    connection = emu.add_connection()
    if mode == "bearer":
        emu.require_bearer(TOKEN)
        good = models.Security(bearer_auth=TOKEN)
        bad = models.Security(bearer_auth="not-the-token")
    else:
        emu.require_basic("airbyte", "password")
        good = models.Security(
            basic_auth=models.SchemeBasicAuth(username="airbyte", password="password")
        )
        bad = models.Security(basic_auth=models.SchemeBasicAuth(username="airbyte", password="x"))
    request = api.GetConnectionRequest(connection_id=connection.connection_id)

    ok = await AirbyteAPI(
        server_url=emu.public_url, security=good
    ).connections.get_connection_async(request=request)
    assert ok.connection_response is not None
    with pytest.raises(errors.SDKError) as raised:
        await AirbyteAPI(server_url=emu.public_url, security=bad).connections.get_connection_async(
            request=request
        )
    assert raised.value.status_code == 401
    async with httpx.AsyncClient(base_url=emu.config_url) as http:
        denied = await http.post("/state/get", json={"connectionId": connection.connection_id})
    assert denied.status_code == 401 and "message" in denied.json()


# ---- transient failures -----------------------------------------------------------------------


async def test_429_with_retry_after_then_bursts_of_500_and_503(
    airbyte_emulator: AirbyteEmulator,
) -> None:
    emu = airbyte_emulator
    emu.require_bearer(TOKEN)
    connection = emu.add_connection()
    emu.fail_next(JOBS, 429, method="POST", retry_after=2)
    emu.fail_next(JOBS, 500, count=2, method="POST")
    emu.fail_next(JOBS, 503, count=2, method="POST")
    sdk = bearer_sdk(emu)

    seen: list[tuple[int, str | None, str]] = []
    for _ in range(5):
        with pytest.raises(errors.SDKError) as raised:
            await sdk.jobs.create_job_async(request=sync_request(connection.connection_id))
        error = raised.value
        seen.append((error.status_code, error.headers.get("retry-after"), problem(error)["title"]))
    assert seen == [
        (429, "2", "too-many-requests"),
        (500, None, "unexpected-problem"),
        (500, None, "unexpected-problem"),
        (503, None, "service-unavailable"),
        (503, None, "service-unavailable"),
    ]
    created = await sdk.jobs.create_job_async(request=sync_request(connection.connection_id))
    assert created.job_response is not None
    assert [r.status for r in emu.requests_to("POST", JOBS)] == [429, 500, 500, 503, 503, 200]
    assert len(emu.jobs) == 1  # failed attempts started nothing


async def test_slow_answer_times_out_then_recovers(airbyte_emulator: AirbyteEmulator) -> None:
    emu = airbyte_emulator
    connection = emu.add_connection()
    # Far longer than the client waits: only a timeout can end the first call (if the timeout
    # were ignored, the call would get its answer after a minute and raise nothing). The
    # emulator cuts the delayed answer short when it stops.
    emu.delay(r"/api/public/v1/connections/.+", 60.0, count=1)
    sdk = AirbyteAPI(server_url=emu.public_url)
    request = api.GetConnectionRequest(connection_id=connection.connection_id)

    with pytest.raises(httpx.TimeoutException):
        await sdk.connections.get_connection_async(request=request, timeout_ms=300)
    fast = await sdk.connections.get_connection_async(request=request, timeout_ms=30_000)
    assert fast.connection_response is not None
    # Both calls reached the server: the first was delayed, the second answered at once.
    assert len(emu.requests_to("GET", r"/api/public/v1/connections/.+")) == 2


async def test_config_api_failures_are_known_exception_info(
    airbyte_emulator: AirbyteEmulator,
) -> None:
    emu = airbyte_emulator
    connection = emu.add_connection()
    emu.fail_next(r"/api/v1/state/get", 502, retry_after=1)
    async with httpx.AsyncClient(base_url=emu.config_url) as http:
        failed = await http.post("/state/get", json={"connectionId": connection.connection_id})
        ok = await http.post("/state/get", json={"connectionId": connection.connection_id})
    assert failed.status_code == 502 and failed.headers["retry-after"] == "1"
    assert "message" in failed.json()
    assert ok.json() == {"stateType": "not_set", "connectionId": connection.connection_id}


# ---- Config API: logs and state ---------------------------------------------------------------


async def test_job_info_serves_both_log_forms(airbyte_emulator: AirbyteEmulator) -> None:
    emu = airbyte_emulator
    connection = emu.add_connection()
    cursor = "2024-05-01T12:34:56Z"
    emu.script_job(
        polls_until_done=2,
        outcome="failed",
        failure_summary=f"Source crashed after cursor {cursor}",
        attempt_logs=[
            [
                "replication-orchestrator > starting",
                f'source > state: {{"updated_at": "{cursor}"}}',
            ],
            [
                "source > Reading stream users",
                {
                    "message": f"ERROR cursor {cursor} rejected",
                    "level": "error",
                    "logSource": "source",
                },
            ],
        ],
        log_format=["formatted", "structured"],
    )
    sdk = AirbyteAPI(server_url=emu.public_url)
    created = await sdk.jobs.create_job_async(request=sync_request(connection.connection_id))
    assert created.job_response is not None
    job_id = created.job_response.job_id

    async with httpx.AsyncClient(base_url=emu.config_url) as http:
        pending = (await http.post("/jobs/get", json={"id": job_id})).json()
        for _ in range(2):
            await poll(sdk, job_id)
        info = (await http.post("/jobs/get", json={"id": job_id})).json()
        missing = await http.post("/jobs/get", json={"id": 31337})

    assert pending["attempts"] == [] and pending["job"]["status"] == "pending"
    assert info["job"]["status"] == "failed" and info["job"]["configId"] == connection.connection_id
    formatted, structured = info["attempts"]
    assert formatted["logType"] == "formatted"
    assert formatted["logs"]["logLines"][1] == f'source > state: {{"updated_at": "{cursor}"}}'
    assert structured["logType"] == "structured"
    events = structured["logs"]["events"]
    assert [(e["level"], e["logSource"]) for e in events] == [
        ("info", "source"),
        ("error", "source"),
    ]
    assert cursor in events[1]["message"]
    failure = structured["attempt"]["failureSummary"]["failures"][0]
    assert failure["externalMessage"] == f"Source crashed after cursor {cursor}"
    assert [a["attempt"]["status"] for a in info["attempts"]] == ["failed", "failed"]
    assert missing.status_code == 404 and "message" in missing.json()


async def test_cancelled_attempt_reports_manual_cancellation(
    airbyte_emulator: AirbyteEmulator,
) -> None:
    emu = airbyte_emulator
    connection = emu.add_connection()
    emu.script_job(polls_until_done=5, rows_synced=10, bytes_synced=100)
    sdk = AirbyteAPI(server_url=emu.public_url)
    created = await sdk.jobs.create_job_async(request=sync_request(connection.connection_id))
    assert created.job_response is not None
    await poll(sdk, created.job_response.job_id)
    await sdk.jobs.cancel_job_async(
        request=api.CancelJobRequest(job_id=created.job_response.job_id)
    )
    async with httpx.AsyncClient(base_url=emu.config_url) as http:
        info = (await http.post("/jobs/get", json={"id": created.job_response.job_id})).json()
    [attempt] = info["attempts"]
    assert attempt["attempt"]["status"] == "failed"
    [failure] = attempt["attempt"]["failureSummary"]["failures"]
    assert failure["failureType"] == "manual_cancellation"


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (NOT_SET, stream_state({"users": {"updated_at": "2024-05-01"}})),
        (
            stream_state({("public", "users"): {"updated_at": "2024-04-01"}}),
            stream_state({("public", "users"): {"updated_at": "2024-05-01"}}),
        ),
        (
            global_state({"lsn": 100}, {"users": {"id": 1}}),
            global_state({"lsn": 250}, {"users": {"id": 9}, "events": {"id": 3}}),
        ),
        (legacy_state({"cursor": "2024-04-01"}), legacy_state({"cursor": "2024-05-01"})),
    ],
    ids=["not_set-to-stream", "stream", "global", "legacy"],
)
async def test_state_before_and_after_a_job(
    airbyte_emulator: AirbyteEmulator, before: dict[str, Any], after: dict[str, Any]
) -> None:
    emu = airbyte_emulator
    emu.require_bearer(TOKEN)
    connection = emu.add_connection(state=before)
    emu.script_job(polls_until_done=2, state_after=after)
    sdk = bearer_sdk(emu)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    body = {"connectionId": connection.connection_id}

    async with httpx.AsyncClient(base_url=emu.config_url, headers=auth) as http:
        state_before = (await http.post("/state/get", json=body)).json()
        created = await sdk.jobs.create_job_async(request=sync_request(connection.connection_id))
        assert created.job_response is not None
        await poll(sdk, created.job_response.job_id)
        state_running = (await http.post("/state/get", json=body)).json()
        await poll(sdk, created.job_response.job_id)
        state_after = (await http.post("/state/get", json=body)).json()

    assert state_before == {**before, "connectionId": connection.connection_id}
    assert state_running == state_before  # state moves only when the job succeeds
    assert state_after == {**after, "connectionId": connection.connection_id}


async def test_state_of_unknown_connection_is_404(airbyte_emulator: AirbyteEmulator) -> None:
    async with httpx.AsyncClient(base_url=airbyte_emulator.config_url) as http:
        answer = await http.post(
            "/state/get", json={"connectionId": "00000000-0000-4000-8000-000000000000"}
        )
    assert answer.status_code == 404 and "message" in answer.json()


# ---- validation bites -------------------------------------------------------------------------


async def test_a_job_with_an_unknown_status_is_a_spec_violation(
    airbyte_emulator: AirbyteEmulator,
) -> None:
    emu = airbyte_emulator
    connection = emu.add_connection()
    sdk = AirbyteAPI(server_url=emu.public_url)
    created = await sdk.jobs.create_job_async(request=sync_request(connection.connection_id))
    assert created.job_response is not None
    emu.tamper_next(JOB, lambda job: {**job, "status": "exploded"})

    with pytest.raises(errors.ResponseValidationError):  # the SDK's enum is closed, too
        await poll(sdk, created.job_response.job_id)
    with pytest.raises(SpecViolation, match="exploded"):
        emu.assert_conforming()
    [violation] = emu.take_violations()
    assert (violation.kind, violation.method, violation.status) == ("response", "GET", 200)
    emu.assert_conforming()


async def test_problem_bodies_are_checked_against_api_problems(
    airbyte_emulator: AirbyteEmulator,
) -> None:
    emu = airbyte_emulator
    connection = emu.add_connection()
    emu.fail_next(JOBS, 409, method="POST", body={"status": 409, "title": "busy", "type": "x"})
    emu.tamper_next(r"/api/v1/state/get", lambda state: {**state, "stateType": "sideways"})
    sdk = AirbyteAPI(server_url=emu.public_url)
    with pytest.raises(errors.SDKError):
        await sdk.jobs.create_job_async(request=sync_request(connection.connection_id))
    async with httpx.AsyncClient(base_url=emu.config_url) as http:
        await http.post("/state/get", json={"connectionId": connection.connection_id})

    first, second = emu.take_violations()
    assert "'busy' is not one api-problems.yaml defines for status 409" in str(first)
    assert "sideways" in str(second) and second.path == "/api/v1/state/get"


async def test_requests_are_checked_against_the_spec(airbyte_emulator: AirbyteEmulator) -> None:
    emu = airbyte_emulator
    connection = emu.add_connection()
    async with httpx.AsyncClient(base_url=emu.url) as http:
        bad_type = await http.post(
            "/api/public/v1/jobs",
            json={"connectionId": connection.connection_id, "jobType": "explode"},
        )
        bad_id = await http.post("/api/v1/jobs/get", json={"id": "not-a-number"})
    assert bad_type.status_code == 400 and bad_type.json()["title"] == "bad-request"
    assert bad_id.status_code == 422
    assert [v.kind for v in emu.take_violations()] == ["request", "request"]
    assert emu.jobs == []


async def test_an_emulator_bug_fails_loudly(airbyte_emulator: AirbyteEmulator) -> None:
    emu = airbyte_emulator
    emu.tamper_next(r"/api/v1/state/get", lambda state: 1 / 0)
    async with httpx.AsyncClient(base_url=emu.config_url) as http:
        answer = await http.post(
            "/state/get", json={"connectionId": emu.add_connection().connection_id}
        )
    assert answer.status_code == 500
    [violation] = emu.take_violations()
    assert violation.kind == "crash" and "ZeroDivisionError" in str(violation)
