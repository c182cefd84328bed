"""Notifications: webhooks told when a run fails, when a connection keeps failing and when it
recovers; a connection's schedule paused after too many failures in a row.

An outbox, so that telling never fails or delays a run:

- `NotificationOutbox`, an activity interceptor registered on the worker, observes `record_run`
  once it succeeded (the run is then in the metadata store) and writes what the run has to tell
  into the store's `notification_outbox`: one row per event and webhook, one to pause the
  schedule. Nothing is sent from the activity, and nothing it does can fail it.
- `NotificationDelivery` runs beside the worker in every worker process (`plugin()`): it claims
  the rows that are due (one worker of a fleet wins each), posts them with a per-request
  timeout, retries with exponential backoff, gives up after SLUICE_NOTIFY_GIVE_UP_HOURS, and
  records each outcome in the row. It pauses schedules with the worker's Temporal client.

A message holds names, ids, statuses, counts, the run's recorded error (scrubbed before it was
recorded) and its Temporal UI link: what the run's record holds, never a record or cursor value.
A webhook URL is a secret: the outbox names the environment variable holding it, never the URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import structlog
from temporalio import activity
from temporalio.client import Client
from temporalio.plugin import SimplePlugin
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from workers.client import ui_link
from workers.connections import ConnectionsFile
from workers.errors import SluiceError
from workers.metadata import MetadataStore
from workers.schedules import SYNC_SCHEDULE_PREFIX
from workers.settings import Settings
from workflows.models import ActivityName, RecordRunInput

log = structlog.get_logger(__name__)

GLOBAL_WEBHOOK = "SLUICE_NOTIFY_WEBHOOK_URL"

RUN_FAILED = "run_failed"
REPEATED_FAILURES = "repeated_failures"
CONNECTION_RECOVERED = "connection_recovered"
SCHEDULE_PAUSED = "schedule_paused"

WEBHOOK = "webhook"
PAUSE_SCHEDULE = "pause_schedule"

# How often a worker looks for due notifications when nothing woke it (a run recorded by this
# worker wakes it at once).
POLL_SECONDS = 1.0
# Retries never wait longer than this, however many came before.
MAX_RETRY_SECONDS = 600.0
# Writing a run's notifications into the outbox never holds record_run longer than this.
ENQUEUE_TIMEOUT_SECONDS = 10.0
CLAIM_BATCH = 20


class DeliveryFailedError(Exception):
    """One attempt to deliver a notification failed; the message is recorded in its row, so it
    names a status or a cause, never the webhook's URL."""


@dataclass(frozen=True)
class FailurePolicy:
    """When a connection's failures in a row are worth more than their own messages."""

    repeated_failures: int  # the repeated-failure message at exactly this many (0: never)
    pause_after_failures: int  # pause at this many, and every as many more (0: never)
    pause_after_failing_days: float  # pause at the first failure this long into a streak

    @classmethod
    def from_settings(cls, settings: Settings) -> FailurePolicy:
        return cls(
            settings.notify_repeated_failures,
            settings.pause_after_failures,
            settings.pause_after_failing_days,
        )

    def warns(self, streak: Sequence[datetime]) -> bool:
        return self.repeated_failures > 0 and len(streak) == self.repeated_failures

    def pause_reason(self, streak: Sequence[datetime]) -> str | None:
        """Why the connection's schedule is to be paused now, given its failures in a row
        (when each finished, newest first, the run just recorded first); None: not now.
        A connection resumed while it still fails is paused again after as many failures
        more; the days rule fires once per streak, at the failure that crosses it."""
        count = len(streak)
        if self.pause_after_failures > 0 and count and count % self.pause_after_failures == 0:
            return f"{count} failed runs in a row"
        if self.pause_after_failing_days > 0 and count >= 2:
            limit = timedelta(days=self.pause_after_failing_days)
            first = streak[-1]
            if streak[0] - first >= limit > streak[1] - first:
                return f"only failed runs for {self.pause_after_failing_days:g} days ({count} runs)"
        return None


def _failed_phase(run: RecordRunInput) -> str | None:
    """Where a failed run failed, from its record: before its commit (the sync), or after it
    (the purge failed or left objects: what follows a commit fails a run only then)."""
    if run.status == "timed_out":
        return "sync"
    if run.status == "failed":
        return "purge" if run.committed else "sync"
    return None


def _run_fields(
    settings: Settings, run: RecordRunInput, consecutive_failures: int
) -> dict[str, Any]:
    plan = run.plan
    return {
        "connection_id": plan.connection_id,
        "run_id": plan.run_id,
        "workflow_id": run.workflow_id,
        "kind": plan.kind,
        "backend": plan.backend,
        "status": run.status,
        "failed_phase": _failed_phase(run),
        "error": run.error,
        "started_at": run.started_at.astimezone(UTC).isoformat(),
        "finished_at": run.finished_at.astimezone(UTC).isoformat(),
        "consecutive_failures": consecutive_failures,
        "temporal_ui": ui_link(settings, run.workflow_id, plan.run_id),
    }


def _message(event: str, fields: Mapping[str, Any], text: str) -> dict[str, Any]:
    # `text` is what Slack (and Mattermost, Discord's /slack endpoint) shows; the rest is for
    # whatever reads the message as data.
    return {"text": text, "event": event, **fields}


def run_failed_message(fields: Mapping[str, Any]) -> dict[str, Any]:
    verb = "timed out" if fields["status"] == "timed_out" else "failed"
    error = fields["error"] or "no error recorded"
    text = (
        f"Sluice: {fields['kind']} of connection '{fields['connection_id']}' {verb} "
        f"(run {fields['run_id']}, in its {fields['failed_phase']}): {error}\n"
        f"{fields['temporal_ui']}"
    )
    return _message(RUN_FAILED, fields, text)


def repeated_failures_message(fields: Mapping[str, Any]) -> dict[str, Any]:
    error = fields["error"] or "no error recorded"
    text = (
        f"Sluice: connection '{fields['connection_id']}' has failed "
        f"{fields['consecutive_failures']} runs in a row; the latest (run {fields['run_id']}): "
        f"{error}\n{fields['temporal_ui']}"
    )
    return _message(REPEATED_FAILURES, fields, text)


def recovered_message(fields: Mapping[str, Any]) -> dict[str, Any]:
    failures = fields["consecutive_failures"]
    text = (
        f"Sluice: connection '{fields['connection_id']}' recovered: run {fields['run_id']} "
        f"succeeded after {failures} failed run{'s' if failures != 1 else ''}\n"
        f"{fields['temporal_ui']}"
    )
    return _message(CONNECTION_RECOVERED, fields, text)


def paused_message(
    fields: Mapping[str, Any], schedule_id: str, reason: str, outcome: str, note: str | None
) -> dict[str, Any]:
    """`outcome`: `paused` (now), `already_paused` (kept as it was) or `no_schedule`."""
    connection = fields["connection_id"]
    if outcome == "no_schedule":
        told = f"connection '{connection}' has {reason}; it has no schedule to pause"
    else:
        state = "was paused" if outcome == "paused" else "is paused"
        told = (
            f"the schedule of connection '{connection}' ({schedule_id}) {state} after {reason} "
            f"(the latest: run {fields['run_id']}). Once fixed: sluice schedules resume "
            f"{connection}"
        )
    message = _message(SCHEDULE_PAUSED, fields, f"Sluice: {told}\n{fields['temporal_ui']}")
    message.update(
        schedule_id=schedule_id,
        schedule_paused=outcome != "no_schedule",
        pause_outcome=outcome,
        pause_reason=reason,
        pause_note=note,
    )
    return message


def pause_note(connection_id: str, reason: str, run_id: str) -> str:
    return (
        f"paused by Sluice after {reason} (the latest: run {run_id}); resume once fixed: "
        f"sluice schedules resume {connection_id}"
    )


def _row(
    run_id: str, connection_id: str, event: str, action: str, target: str, payload: Any
) -> dict[str, Any]:
    return {
        "id": f"{run_id}:{event}:{target}",
        "connection_id": connection_id,
        "run_id": run_id,
        "event": event,
        "action": action,
        "target": target,
        "payload": payload,
    }


class RunNotices:
    """What a recorded run has to tell, written into the outbox."""

    def __init__(self, settings: Settings, store: MetadataStore) -> None:
        self.settings = settings
        self.store = store
        self.policy = FailurePolicy.from_settings(settings)

    def webhooks(self, connection_id: str) -> list[str]:
        """The settings or environment variables naming the connection's webhooks."""
        targets = [GLOBAL_WEBHOOK] if self.settings.notify_webhook_url is not None else []
        try:
            connection = ConnectionsFile.load(self.settings.connections_file).connections.get(
                connection_id
            )
        except SluiceError as exc:  # a file broken since: its global webhook is still told
            log.warning("connections file unreadable for notifications", error=type(exc).__name__)
            connection = None
        if connection is not None and connection.notify is not None:
            targets.append(connection.notify.webhook_env)
        return targets

    def note(self, run: RecordRunInput) -> int:
        """Write the run's notifications into the outbox; returns how many were added (none
        when they were written before: a retried record_run)."""
        if run.status not in ("succeeded", "failed", "timed_out"):
            return 0
        plan = run.plan
        streak = self.store.failure_streak(plan.connection_id, run.finished_at)
        if run.status == "succeeded" and not streak:
            return 0
        fields = _run_fields(self.settings, run, len(streak))
        webhooks = self.webhooks(plan.connection_id)

        def to_webhooks(event: str, message: dict[str, Any]) -> list[dict[str, Any]]:
            return [
                _row(plan.run_id, plan.connection_id, event, WEBHOOK, target, message)
                for target in webhooks
            ]

        if run.status == "succeeded":
            rows = to_webhooks(CONNECTION_RECOVERED, recovered_message(fields))
        else:
            rows = to_webhooks(RUN_FAILED, run_failed_message(fields))
            if self.policy.warns(streak):
                rows += to_webhooks(REPEATED_FAILURES, repeated_failures_message(fields))
            reason = self.policy.pause_reason(streak)
            if reason is not None:
                schedule_id = f"{SYNC_SCHEDULE_PREFIX}{plan.connection_id}"
                pause = {"fields": fields, "reason": reason, "webhooks": webhooks}
                rows.append(
                    _row(
                        plan.run_id,
                        plan.connection_id,
                        SCHEDULE_PAUSED,
                        PAUSE_SCHEDULE,
                        schedule_id,
                        pause,
                    )
                )
        return self.store.enqueue_notifications(rows)


class NotificationOutbox(Interceptor):
    """Registered on the worker: once `record_run` succeeded, the run's notifications go into
    the outbox, and this worker's delivery is woken. Never fails the activity: failing
    record_run after it recorded would record the run again."""

    def __init__(self, notices: RunNotices, wake: Callable[[], None] | None = None) -> None:
        self.notices = notices
        self.wake = wake

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _OutboxActivityInbound(next, self)


class _OutboxActivityInbound(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, outbox: NotificationOutbox) -> None:
        super().__init__(next)
        self._outbox = outbox

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        result = await super().execute_activity(input)
        if activity.info().activity_type != ActivityName.RECORD_RUN:
            return result
        run = input.args[0] if input.args else None
        if not isinstance(run, RecordRunInput):
            return result
        try:
            # The store is synchronous: off the event loop, and bounded.
            async with asyncio.timeout(ENQUEUE_TIMEOUT_SECONDS):
                added = await asyncio.to_thread(self._outbox.notices.note, run)
        except Exception as exc:
            log.warning(
                "notifications not written",
                run_id=run.plan.run_id,
                connection=run.plan.connection_id,
                error=type(exc).__name__,
            )
            return result
        if added and self._outbox.wake is not None:
            self._outbox.wake()
        return result


class NotificationDelivery:
    """Delivers the outbox from a worker process: claims due rows, posts or pauses, retries
    with backoff, gives up after a bounded time; every outcome is recorded in the row."""

    def __init__(
        self,
        store: MetadataStore,
        client: Client,
        settings: Settings,
        environ: Mapping[str, str],
        *,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self.store = store
        self.client = client
        self.settings = settings
        self.environ = environ
        self.poll_seconds = poll_seconds
        self.timeout = settings.notify_timeout_seconds
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # A claim outlives one attempt (the request's timeout) by a margin; a worker that died
        # mid-attempt lets its claims lapse, and another worker sends them again.
        self.lease = timedelta(seconds=self.timeout + 30)
        self._wake = asyncio.Event()
        self._http: httpx.AsyncClient | None = None
        self._in_flight: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        self._wake.set()

    def plugin(self) -> SimplePlugin:
        """Runs the delivery for as long as the worker runs (`sluice worker`, tests' workers)."""
        return SimplePlugin("sluice.notification-delivery", run_context=self.running)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        task = asyncio.create_task(self.run(), name="sluice notification delivery")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=self.timeout, follow_redirects=False) as http:
            self._http = http
            try:
                while True:
                    self._wake.clear()
                    try:
                        await self.deliver_due()
                    except Exception as exc:  # the store unreachable: try again at the next poll
                        log.warning("notifications not delivered", error=type(exc).__name__)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.poll_seconds):
                            await self._wake.wait()
            finally:
                # Stopping: attempts under way end here; their claims lapse and any worker
                # tries them again.
                for task in list(self._in_flight):
                    task.cancel()
                await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def deliver_due(self) -> int:
        """Claim what is due and start delivering it; returns how many were claimed. Each
        attempt runs on its own: a receiver that hangs holds up only its own notifications."""
        room = CLAIM_BATCH - len(self._in_flight)
        if room <= 0:
            return 0
        rows = await asyncio.to_thread(
            self.store.claim_notifications, self.worker_id, self.lease, room
        )
        for row in rows:
            task = asyncio.create_task(self._deliver_logged(row))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        return len(rows)

    async def _deliver_logged(self, row: dict[str, Any]) -> None:
        try:
            await self._deliver(row)
        except Exception as exc:  # the store unreachable: the claim lapses, and it is tried again
            log.warning(
                "notification attempt not recorded",
                notification=row["id"],
                error=type(exc).__name__,
            )

    async def _deliver(self, row: dict[str, Any]) -> None:
        try:
            if row["action"] == PAUSE_SCHEDULE:
                await self._pause(row)
            else:
                await self._post(row)
        except Exception as exc:
            # Recorded as an attempt like any other, so that it, too, is given up in time.
            error = (
                str(exc)
                if isinstance(exc, DeliveryFailedError)
                else f"unexpected {type(exc).__name__}"
            )
            retry_at = self._retry_at(row)
            log.warning(
                "notification not delivered",
                notification=row["id"],
                error=error,
                gives_up=retry_at is None,
            )
            await asyncio.to_thread(
                self.store.notification_attempted,
                row["id"],
                self.worker_id,
                delivered=False,
                error=error,
                retry_at=retry_at,
            )
            return
        await asyncio.to_thread(
            self.store.notification_attempted, row["id"], self.worker_id, delivered=True
        )

    def _retry_at(self, row: Mapping[str, Any]) -> datetime | None:
        """When to try again after this attempt (exponential backoff); None: give up, the
        next attempt would start after the notification's time is up."""
        attempts = int(row["attempts"]) + 1
        delay = min(self.settings.notify_retry_seconds * 2 ** (attempts - 1), MAX_RETRY_SECONDS)
        retry_at = datetime.now(UTC) + timedelta(seconds=delay)
        deadline = row["created_at"] + timedelta(hours=self.settings.notify_give_up_hours)
        return retry_at if retry_at < deadline else None

    def _url(self, target: str) -> str:
        if target == GLOBAL_WEBHOOK:
            secret = self.settings.notify_webhook_url
            url = secret.get_secret_value() if secret is not None else None
        else:
            url = self.environ.get(target)
        if not url:
            raise DeliveryFailedError(f"{target} is not set on worker {self.worker_id}")
        if not url.startswith(("https://", "http://")):
            raise DeliveryFailedError(f"{target} is not an http(s) URL")
        return url

    async def _post(self, row: Mapping[str, Any]) -> None:
        url = self._url(row["target"])
        assert self._http is not None, "deliveries run inside run()"
        try:
            # httpx's timeout bounds each read; this bounds the whole request (a receiver that
            # trickles its answer byte by byte).
            async with asyncio.timeout(self.timeout):
                response = await self._http.post(url, json=row["payload"])
        except (TimeoutError, httpx.TimeoutException):
            raise DeliveryFailedError(f"no answer within {self.timeout:g} s") from None
        except httpx.HTTPError as exc:  # its text may quote the URL: its kind only
            raise DeliveryFailedError(f"request failed: {type(exc).__name__}") from None
        if not response.is_success:
            raise DeliveryFailedError(f"HTTP {response.status_code}")

    async def _pause(self, row: Mapping[str, Any]) -> None:
        """Pause the connection's schedule (one already paused is left as it is), then tell
        the connection's webhooks, through the outbox, what was done."""
        schedule_id: str = row["target"]
        pause = row["payload"]
        fields, reason = pause["fields"], pause["reason"]
        note: str | None = pause_note(row["connection_id"], reason, row["run_id"])
        handle = self.client.get_schedule_handle(schedule_id)
        rpc_timeout = timedelta(seconds=self.timeout)
        try:
            description = await handle.describe(rpc_timeout=rpc_timeout)
            if description.schedule.state.paused:
                outcome, note = "already_paused", description.schedule.state.note
            else:
                await handle.pause(note=note, rpc_timeout=rpc_timeout)
                outcome = "paused"
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise DeliveryFailedError(f"Temporal answered {exc.status.name}") from None
            outcome, note = "no_schedule", None
        log.warning(
            "connection's schedule paused" if outcome == "paused" else "schedule not paused",
            connection=row["connection_id"],
            schedule_id=schedule_id,
            outcome=outcome,
            reason=reason,
        )
        message = paused_message(fields, schedule_id, reason, outcome, note)
        await asyncio.to_thread(
            self.store.enqueue_notifications,
            [
                _row(row["run_id"], row["connection_id"], SCHEDULE_PAUSED, WEBHOOK, target, message)
                for target in pause["webhooks"]
            ],
        )
        self.wake()
