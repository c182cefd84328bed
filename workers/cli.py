"""`sluice ...`: the dev server, the worker, syncs, and the newcomer's demo.

Exit codes, the same for every command: 0 ok; 1 the run failed (or an unexpected error);
2 refused (bad arguments or settings, an unknown connection or stream, a connection already
syncing, a bad connections file, a refused purge target, an unlock while the run goes on);
3 cancelled (the run was cancelled or terminated in Temporal, or a confirmation was declined);
4 the run timed out; 5 a service is unreachable (Temporal, the metadata store, a store);
130 interrupted by Ctrl-C, 143 by SIGTERM (a run in Temporal goes on). `sluice worker` stopped
by SIGINT or SIGTERM shuts down in order and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import os
import signal
import sys
import traceback
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn

import botocore.exceptions
import pydantic
import pydantic_settings
import sqlalchemy.exc
from rich.console import Console
from rich.text import Text
from sqlalchemy.engine import make_url

from purge.errors import PurgeError
from workers.connections import Connection, ConnectionsFile, ConnectionsFileError
from workers.errors import SluiceError
from workers.metadata import MetadataStore
from workers.purging import Purger
from workers.runlog import configure_logging
from workers.settings import Settings

# What only some commands need (Temporal's SDK, the worker, the codec, the scrubber, rich's
# tables) is imported in those commands: `sluice purge` starts without loading them.
if TYPE_CHECKING:
    from rich.table import Table
    from temporalio.client import (
        Client,
        WorkflowExecutionStatus,
        WorkflowFailureError,
        WorkflowHandle,
    )

    from workflows.models import ReplayRequest, SyncRequest, SyncSummary

EXAMPLE_CONNECTION = "faker"
# Every dynamic text goes out as rich.text.Text (or plain print): never through console markup
# or emoji codes, so "[x]" or "[[connections]]" in a path or a message prints as it is.
console = Console(stderr=True, soft_wrap=True)  # messages stay whole lines, for logs and grep
out = Console()

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_REFUSED = 2
EXIT_CANCELLED = 3
EXIT_TIMED_OUT = 4
EXIT_UNREACHABLE = 5
EXIT_INTERRUPTED = 130

# Failure types (ApplicationError.type, set by the activities) that mean the request was refused
# before anything ran: what was asked for cannot be done as asked.
REFUSED_FAILURE_TYPES = frozenset(
    {
        "ConnectionBusy",
        "UnknownConnection",
        "UnknownStream",
        "InvalidConnectionsFile",
        "InvalidConnection",
        "InvalidRequest",
        "ReplayRefused",
        "MissingSecret",
        "AirbyteConfig",
    }
)


class CliError(Exception):
    """A command's own refusal or failure: printed as one line, exit code `code`."""

    def __init__(self, message: str, code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.code = code


def say(message: str, style: str = "") -> None:
    """One line on stderr, printed literally (no markup, no emoji codes)."""
    console.print(Text(message, style=style))


def _check(message: str) -> None:
    console.print(Text.assemble(("✓ ", "green"), message))


def _error(message: str) -> None:
    console.print(Text.assemble(("sluice: ", "red"), message))


# -- failures of runs ---------------------------------------------------------------------------


def _failure_chain(error: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__
    return chain


def root_failure(error: BaseException) -> BaseException:
    """What went wrong, under the wrappers Temporal puts around it (WorkflowFailureError ->
    ActivityError -> ApplicationError): the innermost ApplicationError of the cause chain, or
    else its innermost failure (a cancellation, a timeout, a termination)."""
    from temporalio.exceptions import ApplicationError

    chain = _failure_chain(error)
    applications = [e for e in chain if isinstance(e, ApplicationError)]
    return applications[-1] if applications else chain[-1]


def describe_failure(error: BaseException) -> str:
    """`Type: message` of the root failure; messages were scrubbed by the worker already."""
    from temporalio.exceptions import ApplicationError, FailureError

    root = root_failure(error)
    kind = type(root).__name__
    if isinstance(root, ApplicationError) and root.type:
        kind = root.type
    message = root.message if isinstance(root, FailureError) else str(root)
    return f"{kind}: {message}" if message else kind


def failure_outcome(error: BaseException) -> tuple[int, str]:
    """(exit code, word) for a run's failure: cancelled / terminated (3), timed out (4),
    refused (2: the request could not be run as asked), failed (1)."""
    from temporalio.exceptions import ApplicationError, TerminatedError
    from temporalio.exceptions import CancelledError as TemporalCancelledError
    from temporalio.exceptions import TimeoutError as TemporalTimeoutError

    chain = _failure_chain(error)
    if any(isinstance(e, TerminatedError) for e in chain):
        return EXIT_CANCELLED, "terminated"
    if any(isinstance(e, TemporalCancelledError) for e in chain):
        return EXIT_CANCELLED, "cancelled"
    if any(isinstance(e, TemporalTimeoutError) for e in chain):
        return EXIT_TIMED_OUT, "timed out"
    root = root_failure(error)
    kind = (root.type or "") if isinstance(root, ApplicationError) else ""
    if kind in REFUSED_FAILURE_TYPES:
        return EXIT_REFUSED, "refused"
    if "cancel" in kind.lower():
        return EXIT_CANCELLED, "cancelled"
    if "timeout" in kind.lower() or "timedout" in kind.lower():
        return EXIT_TIMED_OUT, "timed out"
    return EXIT_FAILED, "failed"


_STATUS_EXIT = {
    "succeeded": EXIT_OK,
    "failed": EXIT_FAILED,
    "cancelled": EXIT_CANCELLED,
    "timed_out": EXIT_TIMED_OUT,
}


def report_failure(label: str, error: WorkflowFailureError) -> int:
    """Print `<label> failed: Type: message` (or refused, cancelled, terminated, timed out) on
    one line; return the exit code."""
    code, word = failure_outcome(error)
    console.print(Text.assemble((f"{label} {word}: ", "red"), describe_failure(error)))
    return code


# -- errors of our own, and unreachable services -------------------------------------------------

# Kinds (the `kind` of Sluice's and purge's own errors) that mean "refused", not "failed".
REFUSED_KINDS = REFUSED_FAILURE_TYPES | {
    "PurgeRefused",
    "UnsafePrefix",
    "UnsafeKey",
    "UnsupportedStore",
    "AzureStoreConfig",
    "ConnectorNotFound",
}


def _metadata_url_for_humans(settings: Settings | None) -> str:
    if settings is None:
        return "the metadata store"
    try:
        url = make_url(settings.resolved_metadata_url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return "the metadata store"
    return f"the metadata store at {url}"


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _settings_problem(error: pydantic.ValidationError) -> str:
    problems = []
    for item in error.errors():
        name = str(item["loc"][0]) if item.get("loc") else "?"
        field = Settings.model_fields.get(name)
        if field is not None and field.alias:
            variable = field.alias
        elif name.isupper():
            variable = name
        else:
            variable = f"SLUICE_{name.upper()}"
        problems.append(f"{variable}: {item['msg']}")  # never the value: it may be a secret
    return "invalid setting " + "; ".join(problems)


def explain(error: BaseException, settings: Settings | None) -> tuple[int, str] | None:
    """(exit code, one line) for an error we know, None for a truly unexpected one."""
    if isinstance(error, CliError):
        return error.code, str(error)
    if isinstance(error, SluiceError | PurgeError):
        return (EXIT_REFUSED if error.kind in REFUSED_KINDS else EXIT_FAILED), str(error)
    if isinstance(error, pydantic.ValidationError):
        return EXIT_REFUSED, _settings_problem(error)
    if isinstance(error, pydantic_settings.SettingsError):
        return EXIT_REFUSED, f"invalid settings: {error}"
    if isinstance(error, sqlalchemy.exc.NoSuchModuleError):
        return EXIT_REFUSED, f"SLUICE_METADATA_URL names an unknown database driver: {error}"
    if isinstance(error, sqlalchemy.exc.ArgumentError):
        return (
            EXIT_REFUSED,
            "SLUICE_METADATA_URL is not a SQLAlchemy URL "
            "(e.g. postgresql+psycopg://user@host/db, sqlite:////abs/path.db)",
        )
    if isinstance(error, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
        reason = _first_line(error.orig) if error.orig is not None else _first_line(error)
        return (
            EXIT_UNREACHABLE,
            f"cannot use {_metadata_url_for_humans(settings)} (SLUICE_METADATA_URL): {reason}",
        )
    # Imported here: only an Azure store's errors are of this class (a purge of another store
    # does not import the Azure SDK).
    from azure.core.exceptions import ServiceRequestError

    if isinstance(error, botocore.exceptions.NoCredentialsError):
        return EXIT_REFUSED, f"S3: {error} (set AWS_ACCESS_KEY_ID / AWS_PROFILE)"
    if isinstance(
        error,
        botocore.exceptions.EndpointConnectionError
        | botocore.exceptions.ConnectTimeoutError
        | ServiceRequestError,
    ):
        return EXIT_UNREACHABLE, f"cannot reach the store: {_first_line(error)}"
    if isinstance(error, ConnectionError):
        return EXIT_UNREACHABLE, _first_line(error)
    if isinstance(error, OSError) and error.strerror:
        where = f": {error.filename}" if error.filename else ""
        return EXIT_FAILED, f"{error.strerror}{where}"
    return _explain_temporal(error, settings)


def _explain_temporal(error: BaseException, settings: Settings | None) -> tuple[int, str] | None:
    """`explain` for the errors of Temporal's SDK and of our code around it (client, worker,
    codec, dev server). Asked last, and imported only here, so that an error of a purge or a
    scrub is explained without loading the SDK: none of these is one of the errors above."""
    from temporalio.client import WorkflowFailureError
    from temporalio.exceptions import WorkflowAlreadyStartedError
    from temporalio.service import RPCError, RPCStatusCode

    from workers.client import (
        SearchAttributesMissingError,
        TemporalAddressError,
        TemporalUnreachableError,
    )
    from workers.codec import PayloadKeyError
    from workers.devserver import DevServerError
    from workers.metrics import MetricsPortError

    # Errors that are neither Sluice's own nor purge's, and mean "refused".
    refused_errors: tuple[type[BaseException], ...] = (
        MetricsPortError,
        PayloadKeyError,
        TemporalAddressError,
        SearchAttributesMissingError,
    )
    if isinstance(error, WorkflowFailureError):
        code, word = failure_outcome(error)
        return code, f"run {word}: {describe_failure(error)}"
    if isinstance(error, WorkflowAlreadyStartedError):
        return EXIT_REFUSED, f"a run is already going as workflow {error.workflow_id}"
    if isinstance(error, refused_errors):
        return EXIT_REFUSED, str(error)
    if isinstance(error, TemporalUnreachableError | DevServerError):
        return EXIT_UNREACHABLE, str(error)
    if isinstance(error, RPCError):
        address = settings.temporal_address if settings else "?"
        if error.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
            return EXIT_UNREACHABLE, f"lost Temporal at {address}: {error.message}"
        if error.status in (
            RPCStatusCode.NOT_FOUND,
            RPCStatusCode.INVALID_ARGUMENT,
            RPCStatusCode.PERMISSION_DENIED,
            RPCStatusCode.UNAUTHENTICATED,
        ):
            return EXIT_REFUSED, f"Temporal at {address} refused: {error.message}"
        return EXIT_FAILED, f"Temporal at {address}: {error.message}"
    return None


def report_error(error: BaseException, settings: Settings | None, debug: bool) -> int:
    known = explain(error, settings)
    if known is not None:
        code, message = known
        _error(message)
        return code
    if debug:
        traceback.print_exception(error)
        _error(f"unexpected {type(error).__name__}")
    else:
        _error(f"unexpected {type(error).__name__} (SLUICE_LOG_LEVEL=DEBUG prints its traceback)")
    return EXIT_FAILED


# -- runs -----------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _worker_unless_running(client: Client, settings: Settings) -> AsyncIterator[None]:
    from workers.client import has_worker
    from workers.worker import build_worker

    if await has_worker(client, settings):
        _check(f"a worker is polling task queue {settings.task_queue!r}")
        yield
        return
    _check(f"starting a worker in this process (task queue {settings.task_queue!r})")
    worker = build_worker(client, settings)
    async with worker:
        yield


async def start_sync(
    client: Client, settings: Settings, request: SyncRequest
) -> WorkflowHandle[Any, SyncSummary]:
    from temporalio.common import WorkflowIDConflictPolicy

    from workers.run_metadata import RunMetadata
    from workflows.sync import SyncConnectionWorkflow

    metadata = RunMetadata.for_run(
        "sync",
        request.connection_id,
        started_by="sluice CLI",
        reset=request.reset,
        streams=request.streams,
    )
    # One running sync per connection: a second start while one runs fails instead of racing it.
    return await client.start_workflow(
        SyncConnectionWorkflow.run,
        request,
        id=f"sync-{request.connection_id}",
        task_queue=settings.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        execution_timeout=timedelta(days=2),
        static_summary=metadata.static_summary,
        static_details=metadata.static_details,
    )


async def _wait_with_progress(handle: WorkflowHandle[Any, SyncSummary], label: str) -> SyncSummary:
    from workflows.sync import SyncConnectionWorkflow

    task = asyncio.ensure_future(handle.result())
    try:
        with console.status(Text(f"{label}: starting")) as status:
            while not task.done():
                with contextlib.suppress(Exception):
                    phase = await handle.query(SyncConnectionWorkflow.phase)
                    status.update(Text(f"{label}: {phase}"))
                await asyncio.wait({task}, timeout=0.5)
            return task.result()
    finally:
        task.cancel()


def summary_table(
    title: str, summary: SyncSummary, settings: Settings, workflow_id: str, destination: str
) -> Table:
    from rich.table import Table

    from workers.client import ui_link

    table = Table(title=Text(title), title_justify="left")
    table.add_column("stream")
    table.add_column("records", justify="right", overflow="fold")
    for stream, count in summary.records.items():
        table.add_row(Text(stream), str(count))
    table.add_section()
    redactions = ", ".join(f"{k}={v}" for k, v in summary.redactions.items())
    rows = [
        ("mode", "incremental (from committed state)" if summary.incremental else "full"),
        ("bytes staged", str(summary.bytes_staged)),
        ("redactions", redactions),
        ("objects purged", f"{summary.objects_purged} (verified empty: {summary.verified_empty})"),
        ("receipt", summary.receipt_id or "-"),
        ("data", destination),
        ("scrubbed log", summary.log_uri or "-"),
        ("Temporal UI", ui_link(settings, workflow_id, summary.run_id)),
        ("duration", f"{summary.duration_seconds:.1f}s"),
    ]
    for key, value in rows:
        table.add_row(key, Text(value))
    return table


# -- commands -----------------------------------------------------------------------------------


def cmd_server(settings: Settings, _args: argparse.Namespace) -> int:
    from workers.devserver import server_command

    settings.state_path.mkdir(parents=True, exist_ok=True)
    command = server_command(settings)
    say(
        f"Temporal dev server on {settings.temporal_address}, "
        f"UI http://localhost:{settings.temporal_ui_port}"
    )
    say(f"state persisted in {settings.temporal_db}")
    sys.stderr.flush()
    os.execv(command[0], command)
    return EXIT_OK  # pragma: no cover


async def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    """Run until SIGINT or SIGTERM, then shut down in order: stop polling, cancel running
    activities and wait for them to end (a sync stops its connector and retains its scrubbed
    log), then let the activity threads go, before the interpreter exits."""
    from workers.client import connect
    from workers.metrics import metrics_runtime
    from workers.worker import build_worker

    port = args.metrics_port or settings.metrics_port
    # The metrics endpoint listens before anything else starts: a port in use fails at once.
    runtime = metrics_runtime(port) if port else None
    client = await connect(settings, wait_seconds=30, runtime=runtime)
    worker = build_worker(client, settings)
    executor = worker.config().get("activity_executor")
    stop = asyncio.Event()

    def request_stop(signum: int) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            say(f"{name}: still stopping, waiting for running activities to end")
            return
        say(f"{name}: stopping the worker; running activities are cancelled and end cleanly")
        stop.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, request_stop, signum)
    say(f"worker polling {settings.task_queue!r} on {settings.temporal_address}")
    if port:
        say(f"metrics on http://0.0.0.0:{port}/metrics")
    run = asyncio.create_task(worker.run())
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({run, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not run.done():
            await worker.shutdown()
        await run  # a fatal worker error is raised here
    finally:
        stopped.cancel()
        if isinstance(executor, Executor):
            await asyncio.to_thread(executor.shutdown, wait=True)
    say("worker stopped")
    return EXIT_OK


async def cmd_sync(settings: Settings, args: argparse.Namespace) -> int:
    from temporalio.exceptions import WorkflowAlreadyStartedError

    from workers.client import connect, ui_link
    from workflows.models import SyncRequest

    request = SyncRequest(connection_id=args.connection, reset=args.reset, streams=args.stream)
    ConnectionsFile.load(settings.connections_file).get(request.connection_id)
    client = await connect(settings, wait_seconds=3)
    try:
        handle = await start_sync(client, settings, request)
    except WorkflowAlreadyStartedError as exc:
        raise CliError(
            f"connection {request.connection_id!r} is already syncing as workflow "
            f"{exc.workflow_id}: {ui_link(settings, exc.workflow_id)}"
        ) from None
    if not args.wait:
        say(f"started {handle.id}: {ui_link(settings, handle.id, handle.result_run_id)}")
        print(handle.id)
        return EXIT_OK
    return await _report_run(settings, handle, "sync", f"sync {request.connection_id}")


async def _report_run(
    settings: Settings, handle: WorkflowHandle[Any, SyncSummary], what: str, label: str
) -> int:
    """Say where a started run is, wait for it showing its phase, print its summary (or the
    root cause of its failure) and exit as it ended."""
    from temporalio.client import WorkflowFailureError

    from workers.client import ui_link

    link = ui_link(settings, handle.id, handle.result_run_id)
    say(f"started {handle.id}: {link}")
    try:
        summary = await _wait_with_progress(handle, label)
    except WorkflowFailureError as exc:
        return report_failure(what, exc)
    except asyncio.CancelledError:
        say(f"stopped waiting; the run goes on in Temporal: {link}")
        raise
    out.print_json(summary.model_dump_json())
    if summary.status != "succeeded":
        console.print(
            Text.assemble((f"{what} {summary.status.replace('_', ' ')}: ", "red"), f"see {link}")
        )
    return _STATUS_EXIT.get(summary.status, EXIT_FAILED)


async def start_replay(
    client: Client, settings: Settings, request: ReplayRequest
) -> WorkflowHandle[Any, SyncSummary]:
    from temporalio.common import WorkflowIDConflictPolicy

    from workers.run_metadata import RunMetadata
    from workflows.replay import ReplayFailedSyncWorkflow

    metadata = RunMetadata.for_run("replay", started_by="sluice CLI", replay_of=request.run_id)
    # One replay of a failed run at a time: a second start fails instead of racing it.
    return await client.start_workflow(
        ReplayFailedSyncWorkflow.run,
        request,
        id=f"replay-{request.run_id}",
        task_queue=settings.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        execution_timeout=timedelta(days=2),
        static_summary=metadata.static_summary,
        static_details=metadata.static_details,
    )


async def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    """Finish a failed run from its staging, then (unless --no-continue) sync on."""
    from temporalio.exceptions import WorkflowAlreadyStartedError

    from workers.client import connect, ui_link
    from workflows.models import ReplayRequest

    request = ReplayRequest.model_validate(
        {"run_id": args.run_id, "continue": not args.no_continue}
    )
    client = await connect(settings, wait_seconds=3)
    try:
        handle = await start_replay(client, settings, request)
    except WorkflowAlreadyStartedError as exc:
        raise CliError(
            f"run {request.run_id} is already being replayed as workflow {exc.workflow_id}: "
            f"{ui_link(settings, exc.workflow_id)}"
        ) from None
    return await _report_run(settings, handle, "replay", f"replay of run {request.run_id}")


def _where_the_data_is(connection: Connection) -> str:
    destination = connection.destination
    if destination.type == "postgres":
        schema = destination.db_schema or connection.id
        return f"PostgreSQL schema {schema!r} (DSN in ${destination.dsn_env})"
    return str(destination.path)


async def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from temporalio.client import WorkflowFailureError

    from workers.client import connect, ui_link
    from workers.connectors.executors import ConnectorInstaller
    from workers.devserver import is_listening, start_in_background
    from workflows.models import SyncRequest

    connections = ConnectionsFile.load(settings.connections_file)
    connection = connections.get(args.connection)
    if not isinstance(connection, Connection):
        raise CliError(
            f"connection {args.connection!r} runs in Airbyte; the demo runs a local connection"
        )
    installer = ConnectorInstaller(settings.connectors_dir)
    with console.status(
        Text(f"installing connector {connection.source.package or connection.source.command[0]}")
    ):
        argv = installer.argv(connection.source)
    _check(f"connector ready: {argv[0]}")
    if is_listening(settings.temporal_address):
        _check(f"Temporal is running at {settings.temporal_address}")
    else:
        with console.status("starting the Temporal dev server"):
            start_in_background(settings)
        _check(
            f"started the Temporal dev server at {settings.temporal_address} "
            f"(state in {settings.temporal_db}; log in {settings.state_path / 'temporal.log'})"
        )
    client = await connect(settings, wait_seconds=30)
    async with _worker_unless_running(client, settings):
        for number, (label, reset) in enumerate(
            [("full sync", True), ("incremental sync", False)], start=1
        ):
            handle = await start_sync(
                client, settings, SyncRequest(connection_id=connection.id, reset=reset)
            )
            try:
                summary = await _wait_with_progress(handle, f"run {number}: {label}")
            except WorkflowFailureError as exc:
                return report_failure(f"run {number} ({label})", exc)
            out.print(
                summary_table(
                    f"Run {number}: {label} of {connection.id!r} — {summary.status}",
                    summary,
                    settings,
                    handle.id,
                    _where_the_data_is(connection),
                )
            )
            if summary.status != "succeeded":
                return _STATUS_EXIT.get(summary.status, EXIT_FAILED)
    print(f"Temporal UI: {ui_link(settings)}")
    return EXIT_OK


def cmd_purge(settings: Settings, args: argparse.Namespace) -> int:
    try:
        connections: ConnectionsFile | None = ConnectionsFile.load(settings.connections_file)
    except ConnectionsFileError:
        connections = None  # purging must not depend on a valid connections file
    checks = Purger(settings)
    target = checks.target(args.uri, checks.allow_list(connections))  # refused before any call
    if not args.dry_run and not args.yes:
        if not sys.stdin.isatty():
            raise CliError(
                f"purging {target.uri} deletes every object and version under it; "
                "pass --yes (or --dry-run)"
            )
        if input(f"delete everything under {target.uri}? [y/N] ").strip().lower() != "y":
            say("not purged: not confirmed")
            return EXIT_CANCELLED
    # The metadata store is opened before anything is deleted: no purge without its receipt.
    purger = Purger(settings, MetadataStore.from_url(settings.resolved_metadata_url))
    receipt = purger.purge(target, receipt_id=f"purge-cli-{uuid.uuid4()}", dry_run=args.dry_run)
    out.print_json(receipt.model_dump_json())
    if args.dry_run:
        return EXIT_OK
    if not receipt.verified_empty:
        console.print(
            Text.assemble(
                ("not purged: ", "red"),
                f"{receipt.remaining} objects remain, "
                f"{receipt.objects_failed} could not be deleted",
            )
        )
        return EXIT_FAILED
    if receipt.recoverable_until is not None:
        say(
            f"deleted, but recoverable until {receipt.recoverable_until:%Y-%m-%d %H:%M} UTC: "
            f"the store keeps deleted objects ({receipt.store_settings})",
            style="yellow",
        )
    return EXIT_OK


async def cmd_schedules(settings: Settings, args: argparse.Namespace) -> int:
    from workers.client import connect
    from workers.schedules import SYNC_SCHEDULE_PREFIX, apply_schedules, paused_schedules

    if args.action == "resume":
        return await _resume_schedule(settings, args.connection)
    if args.connection is not None:
        raise CliError("sluice schedules apply takes no connection (it applies them all)")
    connections = ConnectionsFile.load(settings.connections_file)
    client = await connect(settings, wait_seconds=3)
    applied = await apply_schedules(client, settings, connections)
    for schedule_id in applied:
        print(schedule_id)
    # A paused schedule stays paused (a connection that kept failing, or an operator's pause).
    for schedule_id, note in (await paused_schedules(client, applied)).items():
        connection = schedule_id.removeprefix(SYNC_SCHEDULE_PREFIX)
        resume = (
            f"sluice schedules resume {connection}"
            if schedule_id.startswith(SYNC_SCHEDULE_PREFIX)
            else f"temporal schedule toggle --schedule-id {schedule_id} --unpause"
        )
        say(f"{schedule_id} kept paused ({note or 'no note'}); to resume: {resume}", "yellow")
    return EXIT_OK


async def _resume_schedule(settings: Settings, connection_id: str | None) -> int:
    from workers.client import connect
    from workers.schedules import SYNC_SCHEDULE_PREFIX, ScheduleNotFoundError, resume_schedule

    if connection_id is None:
        raise CliError("sluice schedules resume needs a CONNECTION")
    client = await connect(settings, wait_seconds=3)
    try:
        resumed = await resume_schedule(client, connection_id)
    except ScheduleNotFoundError as exc:
        raise CliError(str(exc)) from None
    schedule_id = f"{SYNC_SCHEDULE_PREFIX}{connection_id}"
    say(f"{schedule_id} resumed" if resumed else f"{schedule_id} was not paused")
    return EXIT_OK


async def _workflow_status(
    client: Client, workflow_id: str, run_id: str
) -> WorkflowExecutionStatus | None:
    """The run's status in Temporal; None when Temporal does not know it."""
    from temporalio.service import RPCError, RPCStatusCode

    try:
        description = await client.get_workflow_handle(workflow_id, run_id=run_id).describe()
    except RPCError as exc:
        # Not found (never started, or gone with retention), or not a run id at all.
        if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
            return None
        raise
    return description.status


@dataclass(frozen=True)
class _KnownStatus:
    """The WorkflowRuns of ConnectionLocks, answering with what `unlock` asked Temporal."""

    known: WorkflowExecutionStatus | None

    def status(self, _workflow_id: str, _run_id: str) -> WorkflowExecutionStatus | None:
        return self.known


async def cmd_unlock(settings: Settings, args: argparse.Namespace) -> int:
    """Release a connection's lock whose run's workflow no longer runs. The run is finished as
    the sweep finishes an abandoned one: recorded (unless it recorded itself), its staging kept
    on record for the sweep, and the lock given back."""
    from temporalio.client import WorkflowExecutionStatus

    from workers.activities.locks import ConnectionLocks
    from workers.client import connect, ui_link

    connection_id: str = args.connection
    metadata = MetadataStore.from_url(settings.resolved_metadata_url)
    holder = metadata.lock_holder(connection_id)
    if holder is None:
        say(f"connection {connection_id!r} is not locked")
        return EXIT_OK
    run_id = str(holder["run_id"])
    # Locks taken by older versions name no workflow: the CLI's own id is the one to check.
    workflow_id = holder.get("workflow_id") or f"sync-{connection_id}"
    client = await connect(settings, wait_seconds=3)
    status = await _workflow_status(client, workflow_id, run_id)
    if status == WorkflowExecutionStatus.RUNNING:
        raise CliError(
            f"connection {connection_id!r} is locked by run {run_id} of workflow {workflow_id}, "
            "which is still running in Temporal: cancel it there, or wait for it "
            f"({ui_link(settings, workflow_id, run_id)})"
        )
    locks = ConnectionLocks(
        metadata, _KnownStatus(status), timedelta(minutes=settings.lock_ttl_minutes)
    )
    locks.finish_if_abandoned({**holder, "workflow_id": workflow_id})
    state = "unknown to Temporal" if status is None else status.name.lower()
    say(
        f"released the lock of connection {connection_id!r}: run {run_id} of workflow "
        f"{workflow_id} is {state}"
    )
    now = metadata.lock_holder(connection_id)
    if now is not None:
        say(f"connection {connection_id!r} is now locked by a new run, {now['run_id']}")
    return EXIT_OK


async def cmd_runs(settings: Settings, args: argparse.Namespace) -> int:
    """`sluice runs [...]`, newest first, and `sluice runs show RUN_ID` (workers/runs_report.py)."""
    from workers import runs_report

    metadata = MetadataStore.from_url(settings.resolved_metadata_url)
    if args.runs_command == "show":
        try:
            details = await runs_report.run_details(settings, metadata, args.run_id)
        except runs_report.RunLookupError as exc:
            raise CliError(str(exc)) from None
        print(
            json.dumps(details.as_json(), indent=2)
            if args.json
            else runs_report.details_text(details)
        )
        return EXIT_OK
    listing = await runs_report.list_runs(
        settings, metadata, connection_id=args.connection, status=args.status, limit=args.limit
    )
    for note in listing.notes:
        say(note, style="yellow")  # on stderr: stdout stays the listing alone
    print(runs_report.runs_json(listing) if args.json else runs_report.runs_text(listing))
    return EXIT_OK


def cmd_logs(settings: Settings, args: argparse.Namespace) -> int:
    """Print a run attempt's retained, scrubbed log from the store that holds it."""
    from workers import runs_report

    metadata = MetadataStore.from_url(settings.resolved_metadata_url)
    try:
        log = runs_report.find_log(settings, metadata, args.run_id, args.attempt)
        attempts = ", ".join(map(str, log.attempts))
        say(f"run {log.run_id} attempt {log.attempt} (attempts with a log: {attempts}): {log.uri}")
        runs_report.copy_log(settings, log, sys.stdout.buffer)
    except runs_report.RunLookupError as exc:
        raise CliError(str(exc)) from None
    sys.stdout.flush()
    return EXIT_OK


async def cmd_audit(settings: Settings, args: argparse.Namespace) -> int:
    """Look for cursor and record values in everything Sluice retains (workers/audit.py): exit
    0 when everything was scanned and nothing found, 1 when something was found, 5 when
    something could not be scanned (and nothing was found)."""
    # Imported here: the audit reads every kind of destination, which the other commands'
    # start-up need not pay for.
    from workers import audit

    report = await audit.run_audit(
        settings,
        connection_id=args.connection,
        **({"sample_rows": args.sample_rows} if args.sample_rows else {}),
    )
    print(json.dumps(report.as_json(), indent=2) if args.json else audit.report_text(report))
    return {"clean": EXIT_OK, "found": EXIT_FAILED}.get(report.outcome, EXIT_UNREACHABLE)


async def cmd_cancel(settings: Settings, args: argparse.Namespace) -> int:
    """Cancel the running run of a connection, or the run RUN_ID. Nothing running: refused
    (exit 2), as `unlock` is while a run goes on."""
    from workers import runs_report

    metadata = MetadataStore.from_url(settings.resolved_metadata_url)
    try:
        cancellation, handle = await runs_report.cancel_run(settings, metadata, args.target)
    except runs_report.NothingRunningError as exc:
        raise CliError(str(exc)) from None
    run_id = cancellation.run_id
    say(
        f"cancellation requested: run {run_id} of connection {cancellation.connection_id!r} "
        f"(workflow {cancellation.workflow_id}): {cancellation.ui_link}"
    )
    if not args.wait:
        say(
            "the run ends once its current step has stopped cleanly, and records how it ended "
            f"(`sluice runs show {run_id}`)"
        )
        return EXIT_OK
    status = await runs_report.wait_until_recorded(handle, metadata, run_id)
    say(f"run {run_id} ended {status}")
    return EXIT_OK if status == "cancelled" else _STATUS_EXIT.get(status, EXIT_FAILED)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return value


def _read_json(path: str, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except OSError as exc:
        raise ScrubInputError(f"{what} {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ScrubInputError(f"{what} {path}: not JSON: {exc}") from None


class ScrubInputError(CliError, ValueError):
    """A file given to `sluice scrub` is missing or not what it should be (exit 2)."""


def cmd_scrub(_settings: Settings, args: argparse.Namespace) -> int:
    from purge.scrub import LogScrubber, spec_secret_values, state_leaf_values

    state = _read_json(args.state, "--state")
    config = _read_json(args.config, "--config") if args.config else {}
    spec = _read_json(args.spec, "--spec") if args.spec else {}
    if not isinstance(config, dict) or not isinstance(spec, dict):
        raise ScrubInputError("--config and --spec must each hold a JSON object")
    try:
        cursor_values = state_leaf_values(state if isinstance(state, list) else [state])
    except TypeError as exc:
        raise ScrubInputError(f"--state {args.state}: {exc}") from None
    scrubber = LogScrubber(
        cursor_values=cursor_values,
        secrets=spec_secret_values(spec, config),
        cursor_fields=args.cursor_field or [],
    )
    with contextlib.ExitStack() as stack:
        if args.file:
            try:
                stream = stack.enter_context(
                    open(args.file, encoding="utf-8", errors="surrogateescape")
                )
            except OSError as exc:
                raise ScrubInputError(f"{args.file}: {exc.strerror}") from None
        else:
            stream = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="surrogateescape")
        for piece in scrubber.scrub_chunks(iter(lambda: stream.read(1 << 20), "")):
            sys.stdout.buffer.write(piece.encode("utf-8", "surrogateescape"))
        sys.stdout.flush()
    print(json.dumps({"redactions": scrubber.counts}), file=sys.stderr)
    return 0


def cmd_codec_server(settings: Settings, args: argparse.Namespace) -> int:
    from workers.codec import EncryptionCodec
    from workers.codec_server import (
        CodecAccess,
        CodecServer,
        CodecServerConfigError,
        default_origins,
        normalise_origin,
        tls_context,
    )

    try:
        origins = [
            normalise_origin(origin)
            for origin in settings.codec_allowed_origins
            or default_origins(settings.temporal_ui_port, settings.temporal_ui_url)
        ]
        tls = None
        if settings.codec_tls_cert or settings.codec_tls_key:
            if not (settings.codec_tls_cert and settings.codec_tls_key):
                raise CodecServerConfigError(
                    "set both SLUICE_CODEC_TLS_CERT and SLUICE_CODEC_TLS_KEY, or neither"
                )
            tls = tls_context(settings.codec_tls_cert, settings.codec_tls_key)
        token = settings.codec_token.get_secret_value() if settings.codec_token else None
        if token is None and not args.insecure_no_auth:
            raise CodecServerConfigError(
                "the codec server decrypts for whoever may call it: set SLUICE_CODEC_TOKEN "
                "(e.g. `openssl rand -hex 32`), or pass --insecure-no-auth"
            )
        access = CodecAccess(
            token=None if args.insecure_no_auth else token,
            allowed_origins=frozenset(origins),
            secure_cookie=tls is not None,
        )
        server = CodecServer(
            EncryptionCodec(settings.payload_key_list()), access, args.host, args.port, tls
        )
    except CodecServerConfigError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"codec server: cannot listen on {args.host}:{args.port}: {exc}") from None
    if access.token is None:
        console.print(
            Text(
                "WARNING: --insecure-no-auth: this codec server decrypts every payload (and "
                "encrypts any) for ANYONE who can reach "
                f"{args.host}:{args.port}; never expose it beyond this machine",
                style="bold red",
            )
        )
    say(f"codec server on {server.url}, for the Temporal UI at {', '.join(origins)}")
    if access.token is not None:
        say(
            f"browser: sign in once at {server.url}/, then in the UI's Codec Server settings set "
            f"the endpoint {server.url} and tick 'Include cross-origin credentials'; CLI: "
            f'TEMPORAL_CODEC_AUTH="Bearer $SLUICE_CODEC_TOKEN" and --codec-endpoint {server.url}'
        )
    sys.stderr.flush()
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return EXIT_OK


CODEC_SERVER_EPILOG = """\
settings (environment or .env):
  SLUICE_CODEC_TOKEN            required: the operator token, 16 characters or more
                                (`openssl rand -hex 32`)
  SLUICE_CODEC_ALLOWED_ORIGINS  comma-separated UI origins granted CORS; default
                                http://localhost:UI_PORT, http://127.0.0.1:UI_PORT
                                (SLUICE_TEMPORAL_UI_PORT) and the origin of
                                SLUICE_TEMPORAL_UI_URL
  SLUICE_CODEC_TLS_CERT, SLUICE_CODEC_TLS_KEY
                                PEM files: serve https (needed for a UI served over https)
  SLUICE_PAYLOAD_KEYS           the payload keys (the workers' list)

in the Temporal UI (a dev server's UI has no login, so the browser carries the credential):
  1. open http://localhost:8081/ in the browser and paste the token: a session cookie is
     set (12 hours; HttpOnly, SameSite=Strict)
  2. in the UI, open the Codec Server settings (the glasses icon at the top), choose
     "Use my browser setting", endpoint http://localhost:8081,
     tick "Include cross-origin credentials", Apply
     (leave "Pass the user access token" off: that is the UI's SSO token)
  open the UI and the codec server under the same host name (localhost and localhost, or
  hosts of one domain): the cookie is not sent across sites.

from the temporal CLI or a script (the token in the environment, not in argv):
  TEMPORAL_CODEC_AUTH="Bearer $SLUICE_CODEC_TOKEN" \\
      temporal workflow show -w ID --codec-endpoint http://localhost:8081
"""


RUN_STATUSES = ("running", "succeeded", "failed", "cancelled", "timed_out", "terminated")
"""What `sluice runs --status` takes: a recorded run's status, `running` for a run in progress,
and `terminated` (a sweep terminated in Temporal; a terminated sync is recorded `failed`)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sluice",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("server", help="run the Temporal dev server (persisted in the state dir)")
    worker = sub.add_parser(
        "worker", help="run a worker on the task queue (SIGINT/SIGTERM: stop in order)"
    )
    worker.add_argument(
        "--metrics-port",
        type=_positive_int,
        help="serve Prometheus metrics on http://0.0.0.0:PORT/metrics (default: "
        "SLUICE_METRICS_PORT; unset: none)",
    )
    sync = sub.add_parser("sync", help="start a sync of one connection")
    sync.add_argument("connection")
    sync.add_argument("--wait", action="store_true", help="wait and print the run summary")
    sync.add_argument("--reset", action="store_true", help="sync from scratch")
    sync.add_argument("--stream", action="append", help="only this stream (repeatable)")
    replay = sub.add_parser(
        "replay",
        help="finish a failed run from its staged data without reading the source again, "
        "then sync on from the committed state; waits and prints the summary",
    )
    replay.add_argument("run_id", help="the failed run (`sluice runs --status failed`)")
    replay.add_argument(
        "--no-continue",
        action="store_true",
        help="only commit what the failed run staged; do not sync on afterwards",
    )
    purge = sub.add_parser(
        "purge", help="delete every object and version under a URI, verify, print the receipt"
    )
    purge.add_argument(
        "uri", help="file:///abs/dir/prefix/, s3://bucket/prefix/ or az://container/prefix/"
    )
    purge.add_argument("--dry-run", action="store_true", help="list what would go; delete nothing")
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    unlock = sub.add_parser(
        "unlock",
        help="release a connection's run lock, unless its run's workflow is still running",
    )
    unlock.add_argument("connection")
    runs = sub.add_parser(
        "runs",
        help="list runs, newest first (syncs, replays, sweeps, runs in progress); "
        "`runs show RUN_ID` tells one",
    )
    runs.add_argument("--connection", help="only this connection's runs (no sweeps)")
    runs.add_argument("--status", choices=RUN_STATUSES)
    runs.add_argument("--limit", type=_positive_int, default=20, help="at most N runs (20)")
    runs.add_argument("--json", action="store_true", help="a JSON list instead of a table")
    runs_sub = runs.add_subparsers(dest="runs_command")
    runs_show = runs_sub.add_parser(
        "show",
        help="a run's phases and attempts, error, counts, redactions, receipts, logs, replay "
        "links and Temporal UI link",
    )
    runs_show.add_argument("run_id")
    runs_show.add_argument("--json", action="store_true", help="as a JSON object")
    logs = sub.add_parser("logs", help="print a run's retained, scrubbed log")
    logs.add_argument("run_id")
    logs.add_argument(
        "--attempt", type=_positive_int, help="the attempt's log (default: the last one)"
    )
    cancel = sub.add_parser(
        "cancel", help="cancel the running run of a connection (or the run RUN_ID)"
    )
    cancel.add_argument("target", metavar="CONNECTION|RUN_ID")
    cancel.add_argument(
        "--wait", action="store_true", help="wait until the run has ended and print how"
    )
    schedules = sub.add_parser(
        "schedules",
        help="create or update the Temporal schedules (syncs, retention sweep), or resume a "
        "paused one",
    )
    schedules.add_argument("action", choices=["apply", "resume"])
    schedules.add_argument(
        "connection",
        nargs="?",
        metavar="CONNECTION",
        help="resume: the connection whose paused schedule runs again",
    )
    scrub = sub.add_parser(
        "scrub", help="scrub a raw log (FILE or stdin) to stdout; redaction counts on stderr"
    )
    scrub.add_argument(
        "--state",
        required=True,
        help="Airbyte state: a Config API ConnectionState, a list of AirbyteStateMessage, or a "
        "state blob",
    )
    scrub.add_argument("--config", help="the connector config (its secrets are scrubbed)")
    scrub.add_argument("--spec", help="the connector spec (fields marked airbyte_secret)")
    scrub.add_argument(
        "--cursor-field",
        action="append",
        help="a cursor field name (repeatable): its "
        "key=value pairs are scrubbed whatever the value's length",
    )
    scrub.add_argument("file", nargs="?", help="the raw log; stdin when absent")
    codec = sub.add_parser(
        "codec-server",
        help="decrypt payloads for the Temporal UI (its remote codec endpoint)",
        description="The Temporal UI's remote codec endpoint: decrypts payloads (inputs, "
        "results, failure messages) for operators, and encrypts what they type into the start "
        "form. Every request needs the operator token.",
        epilog=CODEC_SERVER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    codec.add_argument("--port", type=int, default=8081, help="default 8081")
    codec.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    codec.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="serve without a token: anyone who reaches the port reads every payload",
    )
    audit_parser = sub.add_parser(
        "audit",
        help="look for cursor and record values in everything Sluice retains (metadata store, "
        "retained logs, Temporal histories, staging); never prints a value",
    )
    audit_parser.add_argument("--connection", help="only this connection's values and staging")
    audit_parser.add_argument("--json", action="store_true", help="the report as JSON")
    audit_parser.add_argument(
        "--sample-rows",
        type=_positive_int,
        help="rows read back per stream table for record values (default 20)",
    )
    demo = sub.add_parser(
        "demo", help="start what is missing, sync the example connection twice, show summaries"
    )
    demo.add_argument("--connection", default=EXAMPLE_CONNECTION)
    return parser


async def _interruptible(command: Coroutine[Any, Any, int]) -> int:
    """Run a command; SIGINT or SIGTERM cancels it (its cleanup runs) and exits 130. A command
    may install handlers of its own (`sluice worker` does)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    interrupted: list[int] = []

    def interrupt(signum: int) -> None:
        if not interrupted:
            interrupted.append(signum)
            task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, interrupt, signum)
    try:
        return await command
    except asyncio.CancelledError:
        if interrupted:
            return 128 + interrupted[0]  # 130 for SIGINT, 143 for SIGTERM, as shells say
        raise
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


SYNC_COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
    "server": cmd_server,
    "purge": cmd_purge,
    "scrub": cmd_scrub,
    "codec-server": cmd_codec_server,
    "logs": cmd_logs,
}
ASYNC_COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "worker": cmd_worker,
    "sync": cmd_sync,
    "demo": cmd_demo,
    "schedules": cmd_schedules,
    "unlock": cmd_unlock,
    "replay": cmd_replay,
    "runs": cmd_runs,
    "cancel": cmd_cancel,
    "audit": cmd_audit,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)  # bad arguments: usage on stderr, exit 2
    code = _run(args)
    if argv is None and args.command in ASYNC_COMMANDS:
        # The `sluice` program, after a command that used a Temporal client: the SDK's Rust
        # threads may still release Python objects while the interpreter finalizes, which
        # aborts it ("Fatal Python error: PyGILState_Release", temporalio/sdk-python#300).
        # Everything is done and shut down in order by now: leave without finalizing.
        _exit_without_finalizing(code)
    return code


def _run(args: argparse.Namespace) -> int:
    level = os.environ.get("SLUICE_LOG_LEVEL", "WARNING")
    debug = level.strip().upper() == "DEBUG"
    settings: Settings | None = None
    try:
        try:
            configure_logging(level)
        except ValueError as exc:
            raise CliError(f"SLUICE_LOG_LEVEL: {exc}") from None
        settings = Settings()
        if args.command in SYNC_COMMANDS:
            return SYNC_COMMANDS[args.command](settings, args)
        return asyncio.run(_interruptible(ASYNC_COMMANDS[args.command](settings, args)))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        return report_error(exc, settings, debug)


def _exit_without_finalizing(code: int) -> NoReturn:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
