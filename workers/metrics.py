"""A worker's Prometheus metrics: the Temporal SDK's own and Sluice's, on one endpoint.

The SDK's runtime serves its Prometheus exporter (`metrics_runtime`); the client the worker is
built on uses that runtime, so the SDK's worker, workflow, activity and request metrics and
Sluice's instruments, created on the same runtime's meter, are scraped from one `/metrics`.

Sluice's own metrics are observed in one place, `MetricsReporting`, an activity interceptor,
from what two activities already carry once they succeeded: `record_run`'s input (how a run
ended, its counts, redactions and log) and `purge_staging`'s result (the purge receipt); and
every activity is timed by its type. No activity counts anything itself. Label values are
connection ids, stream names, kinds, statuses and activity names only, never a record or cursor
value.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import structlog
from temporalio import activity
from temporalio.common import MetricMeter
from temporalio.exceptions import CancelledError as TemporalCancelledError
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from purge.receipts import PurgeReceipt
from workflows.models import ActivityName, RecordRunInput, RunPlan, SweepOutcome

log = structlog.get_logger(__name__)

METRICS_PORT_SETTING = "SLUICE_METRICS_PORT"

# Syncs last from seconds to hours; the SDK's default buckets stop at 10 s.
DURATION_BUCKETS: Sequence[float] = (
    *(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
    *(1800, 3600, 7200, 14400, 28800, 86400),
)
RUN_DURATION = "sluice_run_duration_seconds"
PHASE_DURATION = "sluice_phase_duration_seconds"

_SWEEPS = {
    ActivityName.SWEEP_RETAINED_LOGS: "logs",
    ActivityName.SWEEP_FAILED_STAGING: "staging",
}


class MetricsPortError(RuntimeError):
    """The metrics endpoint cannot listen on the port it was given."""

    def __init__(self, port: int, reason: str) -> None:
        super().__init__(
            f"cannot serve metrics on port {port} (--metrics-port or {METRICS_PORT_SETTING}): "
            f"{reason}"
        )
        self.port = port


def metrics_runtime(port: int, host: str = "0.0.0.0") -> Runtime:
    """A Temporal runtime whose Prometheus exporter serves `http://HOST:PORT/metrics`, started
    here, so that a port already in use fails the worker at once (`MetricsPortError`)."""
    if not 1 <= port <= 65535:
        raise MetricsPortError(port, "not a TCP port (1-65535)")
    config = PrometheusConfig(
        bind_address=f"{host}:{port}",
        counters_total_suffix=True,
        durations_as_seconds=True,
        histogram_bucket_overrides=dict.fromkeys((RUN_DURATION, PHASE_DURATION), DURATION_BUCKETS),
    )
    try:
        return Runtime(telemetry=TelemetryConfig(metrics=config))
    except ValueError as exc:  # "Failed starting Prometheus exporter: Address already in use"
        reason = str(exc).removeprefix("Failed starting Prometheus exporter: ")
        if "in use" in reason.lower():
            reason = "address already in use: choose a free port (unset: no endpoint)"
        raise MetricsPortError(port, reason) from exc


class SluiceMetrics:
    """Sluice's instruments on a Temporal metric meter (a no-op meter: nothing is exported)."""

    def __init__(self, meter: MetricMeter) -> None:
        counter = meter.create_counter
        self.runs = counter("sluice_runs", "Runs ended, by how they ended.")
        self.run_duration = meter.create_histogram_float(
            RUN_DURATION, "A run from its start to its record, by how it ended.", "s"
        )
        self.phase_duration = meter.create_histogram_float(
            PHASE_DURATION, "One activity attempt, by its activity type and result.", "s"
        )
        self.records = counter("sluice_records", "Records synced, by stream.")
        self.bytes_staged = counter("sluice_bytes_staged", "Bytes staged by runs.", "By")
        self.redactions = counter("sluice_redactions", "Redactions in retained logs, by kind.")
        self.log_lines = counter("sluice_log_lines_retained", "Scrubbed log lines retained.")
        self.logs_not_retained = counter(
            "sluice_logs_not_retained", "Runs whose scrubbed log could not be written."
        )
        self.purges = counter("sluice_purges", "Purges of a run's staging, by result.")
        self.purge_objects = counter(
            "sluice_purge_objects_deleted", "Objects and versions a purge deleted."
        )
        self.purge_versions = counter(
            "sluice_purge_versions_deleted", "Of the objects deleted, those with a version id."
        )
        self.purge_bytes = counter("sluice_purge_bytes_deleted", "Bytes a purge deleted.", "By")
        self.purge_objects_failed = counter(
            "sluice_purge_objects_failed", "Objects a purge could not delete."
        )
        self.purge_retries = counter(
            "sluice_purge_retries", "Objects sent again after a transient store failure."
        )
        self.purge_throttles = counter(
            "sluice_purge_throttles", "Batch deletes the store answered with 'slow down'."
        )
        self.sweep_objects = counter(
            "sluice_sweep_objects_deleted", "Objects the retention sweep deleted, by what."
        )
        self.sweep_failures = counter(
            "sluice_sweep_failures", "Runs whose logs or staging the sweep had to keep."
        )

    def observe_run(self, run: RecordRunInput) -> None:
        """How a run ended: `record_run`'s input, which holds the run's summary counts."""
        plan = run.plan
        connection = {"connection": plan.connection_id}
        ended = {**connection, "backend": plan.backend, "kind": plan.kind, "status": run.status}
        self.runs.add(1, ended)
        seconds = (run.finished_at - run.started_at).total_seconds()
        self.run_duration.record(max(seconds, 0.0), ended)
        if run.outcome is not None:
            for stream in run.outcome.streams:
                self.records.add(stream.records, {**connection, "stream": stream.name})
            self.bytes_staged.add(run.outcome.bytes_staged, connection)
        if run.scrub is not None:
            for kind, count in run.scrub.redactions.items():
                self.redactions.add(count, {**connection, "kind": kind})
            if run.scrub.log_uri is not None:
                self.log_lines.add(run.scrub.lines, connection)
            else:
                self.logs_not_retained.add(1, connection)

    def observe_purge(self, connection_id: str, receipt: PurgeReceipt) -> None:
        connection = {"connection": connection_id}
        result = "verified" if receipt.verified_empty else "unverified"
        self.purges.add(1, {**connection, "result": result})
        self.purge_objects.add(receipt.objects_deleted, connection)
        self.purge_versions.add(receipt.versions_deleted, connection)
        self.purge_bytes.add(receipt.bytes_deleted, connection)
        self.purge_objects_failed.add(receipt.objects_failed, connection)
        self.purge_retries.add(receipt.retries, connection)
        self.purge_throttles.add(receipt.throttles, connection)

    def observe_purge_error(self, connection_id: str) -> None:
        self.purges.add(1, {"connection": connection_id, "result": "error"})

    def observe_sweep(self, what: str, outcome: SweepOutcome) -> None:
        self.sweep_objects.add(outcome.objects_deleted, {"what": what})
        self.sweep_failures.add(len(outcome.failures), {"what": what})

    def observe_phase(self, phase: str, connection_id: str, result: str, seconds: float) -> None:
        self.phase_duration.record(
            seconds, {"phase": phase, "connection": connection_id, "result": result}
        )


class MetricsReporting(Interceptor):
    """Registered on the worker: times every activity by its type, and observes the runs'
    and purges' counts once their activity succeeded."""

    def __init__(self, metrics: SluiceMetrics) -> None:
        self.metrics = metrics

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _MetricsActivityInbound(next, self.metrics)


class _MetricsActivityInbound(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, metrics: SluiceMetrics) -> None:
        super().__init__(next)
        self._metrics = metrics

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        phase = activity.info().activity_type
        connection = _connection_of(input.args)
        started = time.monotonic()
        try:
            result = await super().execute_activity(input)
        except BaseException as exc:
            cancelled = isinstance(exc, asyncio.CancelledError | TemporalCancelledError)
            with _never_failing(phase):
                self._metrics.observe_phase(
                    phase,
                    connection or "",
                    "cancelled" if cancelled else "failed",
                    time.monotonic() - started,
                )
                if phase == ActivityName.PURGE_STAGING and connection and not cancelled:
                    self._metrics.observe_purge_error(connection)
            raise
        if isinstance(result, RunPlan):  # the plan: the connection is known once it resolved
            connection = result.connection_id
        with _never_failing(phase):
            self._metrics.observe_phase(
                phase, connection or "", "succeeded", time.monotonic() - started
            )
            self._observe_success(phase, input.args, connection, result)
        return result

    def _observe_success(
        self, phase: str, args: Sequence[Any], connection: str | None, result: Any
    ) -> None:
        if phase == ActivityName.RECORD_RUN and args and isinstance(args[0], RecordRunInput):
            self._metrics.observe_run(args[0])
        elif (
            phase == ActivityName.PURGE_STAGING and connection and isinstance(result, PurgeReceipt)
        ):
            self._metrics.observe_purge(connection, result)
        elif phase in _SWEEPS and isinstance(result, SweepOutcome):
            self._metrics.observe_sweep(_SWEEPS[phase], result)


@contextlib.contextmanager
def _never_failing(phase: str) -> Iterator[None]:
    """A metric that cannot be recorded is logged, never the activity's failure: failing
    `record_run` after it recorded would record the run again."""
    try:
        yield
    except Exception as exc:
        log.warning("metrics not recorded", activity=phase, error=type(exc).__name__)


def _connection_of(args: Sequence[Any]) -> str | None:
    """The connection an activity works for, from its plan (in its input, or its input's
    `plan`); None before a plan exists (the plan itself, the sweep). Never from what an
    operator typed: an unknown id is not a label."""
    if not args:
        return None
    first = args[0]
    plan = first if isinstance(first, RunPlan) else getattr(first, "plan", None)
    return plan.connection_id if isinstance(plan, RunPlan) else None


def count_airbyte_call(status: int | None) -> None:
    """One request to Airbyte's API, by its status class (2xx, 4xx, 5xx; "error" when no
    answer came), on the metric meter of the activity making it; nothing outside one."""
    if not activity.in_activity():
        return
    status_class = "error" if status is None else f"{status // 100}xx"
    with _never_failing(activity.info().activity_type):
        meter = activity.metric_meter()
        meter.create_counter("sluice_airbyte_api_calls", "Requests to Airbyte's API.").add(
            1, {"status_class": status_class}
        )
