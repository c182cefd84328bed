"""`sluice ...`: the dev server, the worker, syncs, and the newcomer's demo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any

from rich.console import Console
from rich.table import Table
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from purge.purge import purge_prefix
from purge.scrub import LogScrubber, spec_secret_values, state_leaf_values
from purge.stores import UnsupportedStoreError, open_store
from purge.targets import TargetRefusedError, parse_target
from workers.airbyte.connector import ConnectorError, ConnectorInstaller
from workers.client import connect, has_worker
from workers.codec import EncryptionCodec, PayloadKeyError, serve_codec
from workers.connections import ConnectionsFile, ConnectionsFileError, UnknownConnectionError
from workers.devserver import DevServerError, is_listening, server_command, start_in_background
from workers.runlog import configure_logging
from workers.schedules import apply_schedules
from workers.settings import Settings
from workers.storage import purge_allow_list, store_options
from workers.store.metadata import MetadataStore
from workers.worker import build_worker
from workflows.models import SyncRequest, SyncSummary
from workflows.sync import SyncConnectionWorkflow

EXAMPLE_CONNECTION = "faker"
console = Console(stderr=True, soft_wrap=True)  # messages stay whole lines, for logs and grep
out = Console()


def _ui_url(settings: Settings, workflow_id: str | None = None) -> str:
    base = f"http://localhost:{settings.temporal_ui_port}/namespaces/{settings.temporal_namespace}"
    return f"{base}/workflows/{workflow_id}" if workflow_id else f"{base}/workflows"


@contextlib.asynccontextmanager
async def _worker_unless_running(client: Client, settings: Settings) -> AsyncIterator[None]:
    if await has_worker(client, settings):
        console.print(f"[green]✓[/] a worker is polling task queue {settings.task_queue!r}")
        yield
        return
    console.print(
        f"[green]✓[/] starting a worker in this process (task queue {settings.task_queue!r})"
    )
    worker = build_worker(client, settings)
    async with worker:
        yield


async def start_sync(
    client: Client, settings: Settings, request: SyncRequest
) -> WorkflowHandle[Any, SyncSummary]:
    # One running sync per connection: a second start while one runs fails instead of racing it.
    return await client.start_workflow(
        SyncConnectionWorkflow.run,
        request,
        id=f"sync-{request.connection_id}",
        task_queue=settings.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        execution_timeout=timedelta(days=2),
        result_type=SyncSummary,
    )


async def _wait_with_progress(handle: WorkflowHandle[Any, SyncSummary], label: str) -> SyncSummary:
    with console.status(f"{label}: starting") as status:
        task = asyncio.ensure_future(handle.result())
        while not task.done():
            with contextlib.suppress(Exception):
                phase = await handle.query(SyncConnectionWorkflow.phase)
                status.update(f"{label}: {phase}")
            await asyncio.wait({task}, timeout=0.5)
        return task.result()


def summary_table(
    title: str, summary: SyncSummary, settings: Settings, workflow_id: str, destination: str
) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("stream")
    table.add_column("records", justify="right", overflow="fold")
    for stream, count in summary.records.items():
        table.add_row(stream, str(count))
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
        ("Temporal UI", _ui_url(settings, workflow_id)),
        ("duration", f"{summary.duration_seconds:.1f}s"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table


# -- commands -----------------------------------------------------------------------------------


def cmd_server(settings: Settings, _args: argparse.Namespace) -> int:
    settings.state_path.mkdir(parents=True, exist_ok=True)
    command = server_command(settings)
    console.print(f"Temporal dev server on {settings.temporal_address}, UI {_ui_url(settings)}")
    console.print(f"state persisted in {settings.temporal_db}")
    os.execv(command[0], command)
    return 0  # pragma: no cover


async def cmd_worker(settings: Settings, _args: argparse.Namespace) -> int:
    client = await connect(settings, wait_seconds=30)
    worker = build_worker(client, settings)
    console.print(f"worker polling {settings.task_queue!r} on {settings.temporal_address}")
    await worker.run()
    return 0


async def cmd_sync(settings: Settings, args: argparse.Namespace) -> int:
    request = SyncRequest(connection_id=args.connection, reset=args.reset, streams=args.stream)
    ConnectionsFile.load(settings.connections_file).get(request.connection_id)
    client = await connect(settings, wait_seconds=3)
    handle = await start_sync(client, settings, request)
    console.print(f"started {handle.id}: {_ui_url(settings, handle.id)}")
    if not args.wait:
        out.print(handle.id)
        return 0
    summary = await _wait_with_progress(handle, f"sync {request.connection_id}")
    out.print_json(summary.model_dump_json())
    return 0


async def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    connections = ConnectionsFile.load(settings.connections_file)
    connection = connections.get(args.connection)
    installer = ConnectorInstaller(settings.connectors_dir)
    with console.status(
        f"installing connector {connection.source.package or connection.source.command[0]}"
    ):
        argv = installer.argv(connection.source)
    console.print(f"[green]✓[/] connector ready: {argv[0]}")
    if is_listening(settings.temporal_address):
        console.print(f"[green]✓[/] Temporal is running at {settings.temporal_address}")
    else:
        with console.status("starting the Temporal dev server"):
            start_in_background(settings)
        console.print(
            f"[green]✓[/] started the Temporal dev server at {settings.temporal_address} "
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
            summary = await _wait_with_progress(handle, f"run {number}: {label}")
            out.print(
                summary_table(
                    f"Run {number}: {label} of {connection.id!r} — {summary.status}",
                    summary,
                    settings,
                    handle.id,
                    str(connection.destination.path),
                )
            )
    out.print(f"Temporal UI: {_ui_url(settings)}")
    return 0


def cmd_purge(settings: Settings, args: argparse.Namespace) -> int:
    try:
        connections: ConnectionsFile | None = ConnectionsFile.load(settings.connections_file)
    except ConnectionsFileError:
        connections = None  # purging must not depend on a valid connections file
    target = parse_target(args.uri, purge_allow_list(settings, connections))
    if not args.dry_run and not args.yes:
        if not sys.stdin.isatty():
            console.print(
                f"[red]error:[/] purging {target.uri} deletes every object and version "
                "under it; pass --yes (or --dry-run)"
            )
            return 2
        if input(f"delete everything under {target.uri}? [y/N] ").strip().lower() != "y":
            return 1
    store = open_store(target.store_uri, store_options(settings))
    receipt = purge_prefix(
        store, target.prefix, receipt_id=f"purge-cli-{uuid.uuid4()}", dry_run=args.dry_run
    )
    MetadataStore.from_url(settings.resolved_metadata_url).record_receipt(receipt, None)
    out.print_json(receipt.model_dump_json())
    if args.dry_run:
        return 0
    if not receipt.verified_empty:
        console.print(
            f"[red]not purged:[/] {receipt.remaining} objects remain, "
            f"{receipt.objects_failed} could not be deleted"
        )
        return 1
    if receipt.recoverable_until is not None:
        console.print(
            f"[yellow]deleted, but recoverable until {receipt.recoverable_until:%Y-%m-%d %H:%M} "
            f"UTC[/]: the store keeps deleted objects ({receipt.store_settings})"
        )
    return 0


async def cmd_schedules(settings: Settings, _args: argparse.Namespace) -> int:
    connections = ConnectionsFile.load(settings.connections_file)
    client = await connect(settings, wait_seconds=3)
    for schedule_id in await apply_schedules(client, settings, connections):
        out.print(schedule_id)
    return 0


def _read_json(path: str, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except OSError as exc:
        raise ScrubInputError(f"{what} {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ScrubInputError(f"{what} {path}: not JSON: {exc}") from None


class ScrubInputError(ValueError):
    """A file given to `sluice scrub` is missing or not what it should be."""


def cmd_scrub(_settings: Settings, args: argparse.Namespace) -> int:
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
    ui = f"http://localhost:{settings.temporal_ui_port}"
    console.print(
        f"codec server on http://127.0.0.1:{args.port} for the Temporal UI at {ui}; set it as "
        "the UI's codec endpoint (or start the dev server with --ui-codec-endpoint)"
    )
    serve_codec(EncryptionCodec(settings.payload_key_list()), "127.0.0.1", args.port, ui)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sluice", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("server", help="run the Temporal dev server (persisted in the state dir)")
    sub.add_parser("worker", help="run a worker on the task queue")
    sync = sub.add_parser("sync", help="start a sync of one connection")
    sync.add_argument("connection")
    sync.add_argument("--wait", action="store_true", help="wait and print the run summary")
    sync.add_argument("--reset", action="store_true", help="sync from scratch")
    sync.add_argument("--stream", action="append", help="only this stream (repeatable)")
    purge = sub.add_parser(
        "purge", help="delete every object and version under a URI, verify, print the receipt"
    )
    purge.add_argument(
        "uri", help="file:///abs/dir/prefix/, s3://bucket/prefix/ or az://container/prefix/"
    )
    purge.add_argument("--dry-run", action="store_true", help="list what would go; delete nothing")
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    schedules = sub.add_parser(
        "schedules", help="create or update the Temporal schedules (syncs, retention sweep)"
    )
    schedules.add_argument("action", choices=["apply"])
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
        "codec-server", help="decrypt payloads for the Temporal UI (its remote codec endpoint)"
    )
    codec.add_argument("--port", type=int, default=8081)
    demo = sub.add_parser(
        "demo", help="start what is missing, sync the example connection twice, show summaries"
    )
    demo.add_argument("--connection", default=EXAMPLE_CONNECTION)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(os.environ.get("SLUICE_LOG_LEVEL", "WARNING"))
    settings = Settings()
    try:
        if args.command == "server":
            return cmd_server(settings, args)
        if args.command == "purge":
            return cmd_purge(settings, args)
        if args.command == "scrub":
            return cmd_scrub(settings, args)
        if args.command == "codec-server":
            return cmd_codec_server(settings, args)
        command = {
            "worker": cmd_worker,
            "sync": cmd_sync,
            "demo": cmd_demo,
            "schedules": cmd_schedules,
        }[args.command]
        return asyncio.run(command(settings, args))
    except (
        ConnectionsFileError,
        UnknownConnectionError,
        DevServerError,
        ConnectorError,
        TargetRefusedError,
        UnsupportedStoreError,
        ScrubInputError,
        PayloadKeyError,
    ) as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    except WorkflowAlreadyStartedError as exc:
        console.print(f"[red]error:[/] a sync is already running as {exc.workflow_id}")
        return 1
    except WorkflowFailureError as exc:
        cause = exc.cause
        message = getattr(cause, "message", None) or str(cause)
        console.print(f"[red]sync failed:[/] {message}")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
