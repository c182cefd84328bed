"""`sluice worker --metrics-port`: the Temporal SDK's metrics and Sluice's own on one Prometheus
endpoint, scraped during and after real runs through a worker process; the counters move by
what the runs' summaries and receipts say, and no label carries anything but a known name."""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import socket
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.client import Client, WorkflowFailureError
from temporalio.runtime import MetricBuffer, Runtime, TelemetryConfig
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput

from purge.errors import PurgeError
from tests.airbyte_emulator import AirbyteEmulator, EmulatedStream, stream_state
from tests.airbyte_emulator import airbyte_emulator_fixture as airbyte_emulator_fixture
from tests.support.connections import items_connection, protocol_connector, wait_for_file
from tests.support.processes import free_port, wait_until, worker_process
from tests.support.session import REPO
from workers import cli
from workers.cli import start_sync
from workers.metadata import MetadataStore
from workers.metrics import PHASE_DURATION, MetricsReporting, SluiceMetrics, count_airbyte_call
from workers.settings import Settings
from workflows.models import (
    ActivityName,
    PurgeInput,
    RecordRunInput,
    RunPlan,
    SweepOutcome,
    SweepRequest,
    SyncRequest,
    SyncSummary,
)

pytestmark = pytest.mark.temporal

# Cursor values the connector commits, and record values it emits: none may reach a metric.
USERS_CURSOR = "2031-04-05T06:07:08Z"
ORDERS_CURSOR = "9184732"
RECORD_MARKER = "ada-lovelace-7f3a@example.invalid"


# -- the Prometheus text format --------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
_LABEL = re.compile(r'(?P<key>[a-zA-Z_][a-zA-Z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)",?')


def parse(text: str) -> list[Sample]:
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a Prometheus sample line: {line!r}"
        raw = match.group("labels") or ""
        labels = {m.group("key"): m.group("value") for m in _LABEL.finditer(raw)}
        assert _LABEL.sub("", raw) == "", f"labels not parsed whole: {line!r}"
        samples.append(Sample(match.group("name"), labels, float(match.group("value"))))
    return samples


class Scrape:
    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = parse(text)

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` whose labels include `labels` (0: none)."""
        return sum(
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def by(self, name: str, label: str, **labels: str) -> dict[str, float]:
        """The samples of `name` (matching `labels`) summed by the value of `label`."""
        totals: dict[str, float] = {}
        for s in self.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                totals[s.labels[label]] = totals.get(s.labels[label], 0) + s.value
        return totals


def scrape(port: int) -> Scrape:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        return Scrape(response.read().decode())


@dataclass
class MetricsWorker:
    """`sluice worker` in a process of its own, serving its metrics on `port`."""

    port: int
    process: subprocess.Popen[bytes]
    log: Path

    async def ready(self) -> Scrape:
        """The first scrape, once the endpoint answers."""

        def answers() -> bool:
            assert self.process.poll() is None, f"the worker exited: {self.log.read_text()}"
            try:
                scrape(self.port)
            except (urllib.error.URLError, ConnectionError):
                return False
            return True

        await wait_until(answers, timeout=60)
        return scrape(self.port)


# -- a connector with two streams, a logged cursor value, and a pause -------------------------


def two_stream_connector(tmp_path: Path, release: Path) -> Path:
    """users (3 records) and orders (2), each with a STATE; it logs its cursor values (the
    scrubber redacts them) and, on its first read, waits for `release` (the test scrapes the
    endpoint meanwhile)."""
    script = tmp_path / "source-two-streams"
    script.write_text(
        f"#!{sys.executable}\n"
        + textwrap.dedent(
            f"""
            import json, sys
            def emit(message):
                print(json.dumps(message), flush=True)
            def schema(cursor_type):
                return {{"type": "object", "properties": {{"id": {{"type": "integer"}},
                    "email": {{"type": "string"}}, "cursor": {{"type": cursor_type}}}}}}
            def stream(name, cursor_type):
                return {{"name": name, "json_schema": schema(cursor_type),
                    "supported_sync_modes": ["full_refresh", "incremental"],
                    "source_defined_cursor": True, "default_cursor_field": ["cursor"],
                    "source_defined_primary_key": [["id"]]}}
            def record(name, i, cursor):
                emit({{"type": "RECORD", "record": {{"stream": name, "emitted_at": 1,
                    "data": {{"id": i, "email": {RECORD_MARKER!r}, "cursor": cursor}}}}}})
            def state(name, cursor):
                emit({{"type": "STATE", "state": {{"type": "STREAM", "stream": {{
                    "stream_descriptor": {{"name": name}},
                    "stream_state": {{"cursor": cursor}}}}}}}})
            def log(message):
                emit({{"type": "LOG", "log": {{"level": "INFO", "message": message}}}})
            verb = sys.argv[1]
            if verb == "spec":
                emit({{"type": "SPEC", "spec": {{"connectionSpecification": {{}}}}}})
            elif verb == "check":
                emit({{"type": "CONNECTION_STATUS", "connectionStatus": {{"status": "SUCCEEDED"}}}})
            elif verb == "discover":
                emit({{"type": "CATALOG", "catalog": {{"streams": [
                    stream("users", "string"), stream("orders", "integer")]}}}})
            elif verb == "read":
            """
        )
        + textwrap.indent(wait_for_file(release), "    ")
        + textwrap.indent(
            textwrap.dedent(
                f"""
                for i in range(3):
                    record("users", i, {USERS_CURSOR!r})
                log("users read up to " + {USERS_CURSOR!r})
                state("users", {USERS_CURSOR!r})
                for i in range(2):
                    record("orders", i, {int(ORDERS_CURSOR)})
                log("orders read up to cursor={ORDERS_CURSOR}")
                state("orders", {int(ORDERS_CURSOR)})
                """
            ),
            "    ",
        )
    )
    script.chmod(0o755)
    return script


def connections_toml(command: Path, warehouse: Path) -> str:
    streams = "".join(
        f"""
        [[connections.streams]]
        name = "{name}"
        sync_mode = "incremental"
        destination_mode = "append_dedup"
        """
        for name in ("users", "orders")
    )
    return f"""
        [[connections]]
        id = "shop"
        [connections.source]
        command = ["{command}"]
        [connections.destination]
        path = "{warehouse}"
        {streams}
    """


StartMetricsWorker = Callable[..., MetricsWorker]


@pytest.fixture
def metrics_worker(
    tmp_path: Path, temporal_env: WorkflowEnvironment
) -> Iterator[StartMetricsWorker]:
    """Starts `sluice worker` in a process of its own, configured like `settings` (and
    `extra_env`), with SLUICE_METRICS_PORT set; stopped (SIGTERM) at the end of the test."""
    started: list[MetricsWorker] = []

    def start(settings: Settings, extra_env: dict[str, str] | None = None) -> MetricsWorker:
        port = free_port()
        log = tmp_path / f"worker-{len(started)}.log"
        env = {**(extra_env or {}), "SLUICE_METRICS_PORT": str(port)}
        worker = MetricsWorker(port, worker_process(settings, temporal_env, log, env), log)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.process.terminate()
        worker.process.wait(timeout=60)


# -- what may be a label ----------------------------------------------------------------------

SLUICE_LABELS = {
    "connection",
    "stream",
    "backend",
    "kind",
    "status",
    "result",
    "phase",
    "what",
    "status_class",
    # the SDK's: every metric's service, a histogram's bucket, an activity's meter
    "service_name",
    "le",
    "namespace",
    "task_queue",
    "activity_type",
}
ACTIVITIES = {v for k, v in vars(ActivityName).items() if k.isupper()}
REDACTION_KINDS = {"cursor", "secret", "state"}
STATUSES = {"succeeded", "failed", "cancelled", "timed_out"}
_NUMBER = re.compile(r"^(\+Inf|-?\d+(\.\d+)?(e[+-]?\d+)?)$")
# Label values of the SDK's own metrics: names of workflows, activities, RPCs, task queues and
# worker kinds, never anything longer or stranger than an identifier.
_SDK_NAME = re.compile(r"^[A-Za-z0-9_.:/@-]{0,100}$")


def assert_only_known_names(
    result: Scrape, *, connections: set[str], streams: set[str], task_queue: str
) -> None:
    known = (
        connections
        | streams
        | ACTIVITIES
        | REDACTION_KINDS
        | STATUSES
        | {"local", "airbyte", "sync", "replay"}  # backends, kinds of run
        | {"verified", "unverified", "error", "logs", "staging", "", "temporal-core-sdk"}
        | {"2xx", "3xx", "4xx", "5xx", "error", "default", task_queue}
    )
    for sample in result.samples:
        ours = sample.name.startswith("sluice_")
        assert ours or sample.name.startswith("temporal_"), sample
        if ours:
            assert set(sample.labels) <= SLUICE_LABELS, sample
        for key, value in sample.labels.items():
            if key == "le":
                assert _NUMBER.match(value), sample
            elif ours:
                assert value in known, f"unknown label value {value!r} in {sample}"
            else:
                assert _SDK_NAME.match(value), f"unexpected label value {value!r} in {sample}"
    for value in (USERS_CURSOR, ORDERS_CURSOR, RECORD_MARKER):
        for spelling in _spellings(value):
            assert spelling not in result.text, f"{spelling!r} is in the scrape"


def _spellings(value: str) -> list[str]:
    spellings = [value, base64.b64encode(value.encode()).decode().rstrip("=")]
    if value == USERS_CURSOR:
        spellings += ["2031-04-05", "1933222028"]  # the date, the epoch seconds
    return spellings


# -- tests -------------------------------------------------------------------------------------


async def test_a_real_run_moves_the_counters_by_what_its_summary_and_receipt_say(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    metrics_worker: StartMetricsWorker,
    client: Client,
) -> None:
    release = tmp_path / "release"
    settings = make_settings(
        connections_toml(two_stream_connector(tmp_path, release), tmp_path / "w.duckdb")
    )
    worker = metrics_worker(settings)
    port = worker.port
    before = await worker.ready()
    assert before.value("sluice_runs_total") == 0

    handle = await start_sync(client, settings, SyncRequest(connection_id="shop"))
    # During the run: the plan has been timed, the sync is going, nothing ended yet.
    await wait_until(
        lambda: (
            scrape(port).value("sluice_phase_duration_seconds_count", phase=ActivityName.PLAN_RUN)
            == 1
        ),
        timeout=60,
    )
    during = scrape(port)
    assert during.value("sluice_runs_total") == 0
    assert during.value("sluice_records_total") == 0
    assert during.value(
        "sluice_phase_duration_seconds_count",
        phase=ActivityName.PLAN_RUN,
        connection="shop",
        result="succeeded",
    )
    # The SDK's own metrics, on the same endpoint: the worker polls the test's task queue.
    assert any(
        s.name.startswith("temporal_") and s.labels.get("task_queue") == settings.task_queue
        for s in during.samples
    ), during.text
    assert_only_known_names(
        during, connections={"shop"}, streams={"users", "orders"}, task_queue=settings.task_queue
    )
    release.touch()
    first: SyncSummary = await handle.result()
    assert first.records == {"users": 3, "orders": 2}
    assert first.redactions.get("cursor", 0) >= 2, first.redactions
    after = await _settled(port, runs=1)
    _assert_moved_by(after, before, first, settings)
    assert_only_known_names(
        after, connections={"shop"}, streams={"users", "orders"}, task_queue=settings.task_queue
    )

    # A second (incremental) run moves every counter by its own summary, again.
    second: SyncSummary = await (
        await start_sync(client, settings, SyncRequest(connection_id="shop"))
    ).result()
    assert second.incremental
    again = await _settled(port, runs=2)
    _assert_moved_by(again, after, second, settings)
    assert_only_known_names(
        again, connections={"shop"}, streams={"users", "orders"}, task_queue=settings.task_queue
    )


async def _settled(port: int, runs: int) -> Scrape:
    """The scrape once the record of the `runs`-th run has been counted (the workflow's result
    can come back before the worker reported the activity's metrics)."""
    await wait_until(lambda: scrape(port).value("sluice_runs_total") == runs, timeout=30)
    return scrape(port)


def _assert_moved_by(now: Scrape, then: Scrape, summary: SyncSummary, settings: Settings) -> None:
    def moved(name: str, **labels: str) -> float:
        return now.value(name, **labels) - then.value(name, **labels)

    shop = {"connection": "shop"}
    assert moved("sluice_runs_total", **shop, backend="local", kind="sync", status="succeeded") == 1
    assert moved("sluice_runs_total") == 1
    assert moved("sluice_run_duration_seconds_count", **shop, status="succeeded") == 1
    for stream, records in summary.records.items():
        assert moved("sluice_records_total", **shop, stream=stream) == records, stream
    assert moved("sluice_records_total") == sum(summary.records.values())
    assert moved("sluice_bytes_staged_total", **shop) == summary.bytes_staged > 0
    assert set(summary.redactions) <= REDACTION_KINDS
    for kind, count in summary.redactions.items():
        assert moved("sluice_redactions_total", **shop, kind=kind) == count, kind
    assert moved("sluice_redactions_total") == sum(summary.redactions.values())

    # The log retained: its lines, as the scrubbed file holds them.
    assert summary.log_uri is not None and summary.log_uri.startswith("file://")
    retained = Path(summary.log_uri.removeprefix("file://"))
    lines = len(retained.read_text().splitlines())
    assert moved("sluice_log_lines_retained_total", **shop) == lines > 0

    # The purge: what its receipt says.
    assert summary.receipt_id is not None
    receipt = MetadataStore.from_url(settings.resolved_metadata_url).receipt(summary.receipt_id)
    assert receipt is not None and receipt.verified_empty
    assert summary.objects_purged == receipt.objects_deleted > 0
    assert moved("sluice_purges_total", **shop, result="verified") == 1
    assert moved("sluice_purges_total") == 1
    assert moved("sluice_purge_objects_deleted_total", **shop) == receipt.objects_deleted
    assert moved("sluice_purge_versions_deleted_total", **shop) == receipt.versions_deleted
    assert moved("sluice_purge_bytes_deleted_total", **shop) == receipt.bytes_deleted
    assert moved("sluice_purge_retries_total", **shop) == receipt.retries
    assert moved("sluice_purge_throttles_total", **shop) == receipt.throttles

    # Every phase of the run timed once, by its activity type.
    for phase in (
        ActivityName.PLAN_RUN,
        ActivityName.RUN_SYNC,
        ActivityName.RETAIN_METADATA,
        ActivityName.PURGE_STAGING,
        ActivityName.RECORD_RUN,
    ):
        count = moved("sluice_phase_duration_seconds_count", phase=phase, result="succeeded")
        assert count == 1, phase
    assert moved("sluice_phase_duration_seconds_count", result="failed") == 0


async def test_airbyte_api_calls_are_counted_by_status_class(
    tmp_path: Path,
    airbyte_emulator: AirbyteEmulator,
    make_settings: Callable[..., Settings],
    metrics_worker: StartMetricsWorker,
    client: Client,
) -> None:
    emu = airbyte_emulator
    client_id, secret = emu.require_client_credentials(client_secret="cs-metrics-0123456789")
    connection = emu.add_connection(
        streams=[EmulatedStream("orders", cursor_field=["updated_at"], primary_key=[["id"]])],
        state=stream_state({"orders": {"updated_at": USERS_CURSOR}}),
    )
    settings = make_settings(
        f"""
        [[connections]]
        id = "shop"
        backend = "airbyte"
        [connections.airbyte]
        connection_id = "{connection.connection_id}"
        """,
        airbyte_api_url=emu.public_url,
        airbyte_token_url=emu.token_url,
        airbyte_client_id=client_id,
        airbyte_client_secret=secret,
        airbyte_poll_seconds=0.2,
    )
    emu.script_job(polls_until_done=2, rows_synced=7, bytes_synced=700)
    emu.fail_next(r"/api/public/v1/jobs/\d+", 503, count=2, method="GET")
    # The worker process reads the Airbyte settings from its environment.
    worker = metrics_worker(
        settings,
        {
            "SLUICE_AIRBYTE_API_URL": emu.public_url,
            "SLUICE_AIRBYTE_TOKEN_URL": emu.token_url,
            "SLUICE_AIRBYTE_CLIENT_ID": client_id,
            "SLUICE_AIRBYTE_CLIENT_SECRET": secret,
            "SLUICE_AIRBYTE_POLL_SECONDS": "0.2",
        },
    )
    await worker.ready()
    handle = await start_sync(client, settings, SyncRequest(connection_id="shop"))
    summary = await handle.result()
    assert summary.status == "succeeded"
    result = await _settled(worker.port, runs=1)

    # Every request Sluice made (not the token requests the SDK makes for it), by class.
    expected: dict[str, float] = {}
    for request in emu.requests:
        if request.path.endswith("/applications/token") or request.path == "/token":
            continue
        status_class = f"{request.status // 100}xx" if request.status else "error"
        expected[status_class] = expected.get(status_class, 0) + 1
    assert expected.get("5xx") == 2
    assert result.by("sluice_airbyte_api_calls_total", "status_class") == expected
    assert result.value("sluice_runs_total", connection="shop", backend="airbyte") == 1
    assert_only_known_names(
        result, connections={"shop"}, streams={"orders"}, task_queue=settings.task_queue
    )


@pytest.mark.parametrize("how", ["flag", "setting"])
def test_a_metrics_port_in_use_fails_at_start_naming_the_port_and_the_setting(
    tmp_path: Path, how: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")},
            "SLUICE_STATE_DIR": str(tmp_path / "state"),
            # Nothing listens here: the port is refused before Temporal is looked for.
            "SLUICE_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
        }
        args = [str(REPO / ".venv" / "bin" / "sluice"), "worker"]
        if how == "flag":
            args += ["--metrics-port", str(port)]
        else:
            env["SLUICE_METRICS_PORT"] = str(port)
        done = subprocess.run(
            args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
    assert done.returncode == cli.EXIT_REFUSED, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"port {port}" in lines[0]
    assert "SLUICE_METRICS_PORT" in lines[0]
    assert "address already in use" in lines[0]


def test_the_compose_files_prometheus_scrapes_every_worker_at_its_metrics_port() -> None:
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text(encoding="utf-8"))
    services = compose["services"]
    port = Settings.model_validate(
        {"metrics_port": services["worker"]["environment"]["SLUICE_METRICS_PORT"]}
    ).metrics_port
    assert port is not None
    prometheus = services["prometheus"]
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    config = yaml.safe_load((REPO / "docker" / "prometheus.yml").read_text(encoding="utf-8"))
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "sluice-worker"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    (discovery,) = job["dns_sd_configs"]
    # Every replica of the worker service, at the port its metrics are served on.
    assert discovery["names"] == ["worker"] and discovery["type"] == "A"
    assert discovery["port"] == port


async def test_a_failed_run_is_counted_failed_with_its_failed_phase_and_no_purge(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    metrics_worker: StartMetricsWorker,
    client: Client,
) -> None:
    connector = protocol_connector(
        tmp_path,
        "source-rejects-key",
        """
        emit({"type": "LOG", "log": {"level": "INFO", "message": "API key check"}})
        emit({"type": "TRACE", "trace": {"type": "ERROR", "emitted_at": 1,
              "error": {"message": "API key rejected", "failure_type": "config_error"}}})
        sys.exit(1)
        """,
    )
    settings = make_settings(items_connection(connector, tmp_path / "w.duckdb"))
    worker = metrics_worker(settings)
    before = await worker.ready()
    handle = await start_sync(client, settings, SyncRequest(connection_id="items"))
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    after = await _settled(worker.port, runs=1)

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    items = {"connection": "items"}
    assert moved("sluice_runs_total", **items, backend="local", status="failed") == 1
    assert moved("sluice_runs_total") == 1
    # A config error is final: one attempt, failed; nothing was purged (a failed sync's
    # staging is kept), nothing synced; its scrubbed log was retained all the same.
    assert moved("sluice_phase_duration_seconds_count", phase="run_sync", result="failed") == 1
    assert moved("sluice_phase_duration_seconds_count", phase="purge_staging") == 0
    assert moved("sluice_purges_total") == 0
    assert moved("sluice_records_total") == 0
    assert moved("sluice_log_lines_retained_total", **items) > 0
    assert moved("sluice_phase_duration_seconds_count", phase="record_run", result="succeeded") == 1
    assert_only_known_names(
        after, connections={"items"}, streams={"items"}, task_queue=settings.task_queue
    )


# -- the interceptor's other paths, without a server --------------------------------------------


@dataclass
class Buffered:
    """Sluice's instruments on a runtime that buffers its metric updates for the test."""

    buffer: MetricBuffer
    metrics: SluiceMetrics

    @classmethod
    def create(cls) -> Buffered:
        buffer = MetricBuffer(10_000)
        runtime = Runtime(telemetry=TelemetryConfig(metrics=buffer))
        return cls(buffer, SluiceMetrics(runtime.metric_meter))

    def drain(self) -> list[tuple[str, dict[str, Any], float]]:
        """(metric, labels but the SDK's service_name, value) of every update since the last."""
        return [
            (
                update.metric.name,
                {k: v for k, v in update.attributes.items() if k != "service_name"},
                update.value,
            )
            for update in self.buffer.retrieve_updates()
        ]


class _Raising(ActivityInboundInterceptor):
    def __init__(self, error: BaseException) -> None:
        self.error = error

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        raise self.error


class _Returning(ActivityInboundInterceptor):
    def __init__(self, result: Any) -> None:
        self.result = result

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        return self.result


async def _execute(
    inner: ActivityInboundInterceptor, metrics: SluiceMetrics, activity_type: str, arg: Any
) -> Any:
    """Run the metrics interceptor over `inner` as the worker would, in an activity context."""
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, activity_type=activity_type)
    inbound = MetricsReporting(metrics).intercept_activity(inner)

    async def run() -> Any:
        return await inbound.execute_activity(
            ExecuteActivityInput(fn=run, args=[arg], executor=None, headers={})
        )

    return await env.run(run)


async def test_a_purge_that_raises_is_counted_as_an_error_and_its_phase_failed() -> None:
    buffered = Buffered.create()
    plan = RunPlan(connection_id="shop", run_id="r1")
    with pytest.raises(PurgeError):
        await _execute(
            _Raising(PurgeError("store unreachable")),
            buffered.metrics,
            ActivityName.PURGE_STAGING,
            PurgeInput(plan=plan),
        )
    updates = buffered.drain()
    purges = [(labels, value) for name, labels, value in updates if name == "sluice_purges"]
    assert purges == [({"connection": "shop", "result": "error"}, 1)]
    phases = [labels for name, labels, _ in updates if name == PHASE_DURATION]
    assert phases == [{"phase": "purge_staging", "connection": "shop", "result": "failed"}]


async def test_a_metric_that_cannot_be_recorded_never_fails_the_activity() -> None:
    class Broken(SluiceMetrics):
        def observe_run(self, run: RecordRunInput) -> None:
            raise ValueError("a broken exporter")

    buffered = Buffered.create()
    broken = Broken(Runtime(telemetry=TelemetryConfig(metrics=buffered.buffer)).metric_meter)
    plan = RunPlan(connection_id="shop", run_id="r1")
    now = datetime.now(UTC)
    record = RecordRunInput(
        plan=plan, workflow_id="sync-shop", status="succeeded", started_at=now, finished_at=now
    )
    assert await _execute(_Returning(None), broken, ActivityName.RECORD_RUN, record) is None


def test_airbyte_calls_outside_an_activity_are_not_counted() -> None:
    count_airbyte_call(200)  # the CLI's and the tests' clients: no activity, no meter, no error


async def test_the_sweeps_deletions_and_kept_runs_are_counted_by_what_was_swept() -> None:
    buffered = Buffered.create()
    outcome = SweepOutcome(runs=2, objects_deleted=5, failures=["run-1: legal hold"])
    await _execute(
        _Returning(outcome), buffered.metrics, ActivityName.SWEEP_FAILED_STAGING, SweepRequest()
    )
    await _execute(
        _Returning(SweepOutcome(objects_deleted=3)),
        buffered.metrics,
        ActivityName.SWEEP_RETAINED_LOGS,
        SweepRequest(),
    )
    updates = buffered.drain()
    deleted = [(labels, v) for n, labels, v in updates if n == "sluice_sweep_objects_deleted"]
    assert deleted == [({"what": "staging"}, 5), ({"what": "logs"}, 3)]
    kept = [(labels, v) for n, labels, v in updates if n == "sluice_sweep_failures"]
    assert kept == [({"what": "staging"}, 1), ({"what": "logs"}, 0)]
    # The sweep works for no connection: its phases carry none.
    phases = [labels["connection"] for n, labels, _ in updates if n == PHASE_DURATION]
    assert phases == ["", ""]
