"""Fixed cost of a run: a small incremental sync through Sluice vs. the bare connector read.

A benchmark, not a test: run it by hand, ``.venv/bin/python bench/bench_small_run.py``. It finds
(or installs) source-faker as ``bench/run`` does, and measures, in interleaved rounds:

1. the connector's own start-up: ``source-faker spec`` (no config, no output to speak of);
2. the bare read: ``source-faker read --config C --catalog CAT --state S > /dev/null``, with the
   same configured catalog Sluice hands the connector and the state Sluice committed;
3. Sluice: one SyncConnectionWorkflow run of the same connection (``reset=false``), through a
   Temporal dev server started here and a worker in a child process (as bench_sync.py runs
   them), timed from ``start_workflow`` until ``result()`` returns.

The connection is the demo's with count=100: ``users`` incremental + append_dedup, ``purchases``
incremental + append, ``products`` full_refresh + overwrite. A first, untimed run discovers the
catalog (cached in the metadata store) and commits the state; every timed run then starts from
that state, so each reads the 100 products and nothing new from the incremental streams.

Then the overhead (Sluice - bare read; target <= 0.5 s), and where it goes: each run's
workflow history (every workflow task and activity: scheduled, started, completed, and the gaps
between them) and spans timed inside the worker (the bench wraps a few functions of the worker
child: metadata-store calls, the catalog lookup, the destination, the scrub and retention, the
purge), with when the connector's ``read`` process was alive.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import bench_sync as common  # noqa: E402
from bench_sync import REPO, TreeSampler, WorkerProcess, temporal_dev_server  # noqa: E402
from temporalio.api.enums.v1 import EventType  # noqa: E402
from temporalio.client import Client  # noqa: E402

from workers.client import connect  # noqa: E402
from workers.settings import Settings  # noqa: E402
from workflows.models import SyncRequest, SyncSummary  # noqa: E402
from workflows.sync import SyncConnectionWorkflow  # noqa: E402

CONFIG: dict[str, Any] = {
    "count": 100,
    "seed": 42,
    "records_per_slice": 100,
    "parallelism": 1,
    "always_updated": False,
}
# name, sync mode, destination mode, cursor field, primary key (the demo connection's streams)
STREAMS: list[tuple[str, str, str, list[str], list[list[str]]]] = [
    ("users", "incremental", "append_dedup", ["updated_at"], [["id"]]),
    ("purchases", "incremental", "append", ["updated_at"], []),
    ("products", "full_refresh", "overwrite", [], []),
]
CONNECTION_ID = "bench-small"
TARGET_OVERHEAD_SECONDS = 0.5

# What the worker child times (module, attribute path). Functions another module imported by
# name are wrapped where they are looked up.
TRACED: list[tuple[str, str]] = [
    ("workers.activities.sync", "SyncActivities.plan_run"),
    ("workers.activities.sync", "SyncActivities.run_sync"),
    ("workers.activities.sync", "SyncActivities.retain_metadata"),
    ("workers.activities.sync", "SyncActivities.purge_staging"),
    ("workers.activities.sync", "SyncActivities.record_run"),
    ("workers.activities.sync", "load_connection"),
    ("workers.activities.sync", "SyncActivities._local_sync"),
    ("workers.activities.sync", "SyncActivities._scrubber"),
    ("workers.activities.locks", "ConnectionLocks.acquire"),
    ("workers.metadata", "MetadataStore.*"),
    ("workers.localsync.engine", "LocalSync.run"),
    ("workers.localsync.engine", "LocalSync._plan"),
    ("workers.localsync.engine", "LocalSync._catalog"),
    ("workers.localsync.engine", "LocalSync._read"),
    ("workers.localsync.engine", "LocalSync._finish"),
    ("workers.localsync.engine", "LocalSync._load"),
    ("workers.localsync.engine", "discover_catalog"),
    ("workers.destinations.duckdb", "DuckDBDestination.__init__"),
    ("workers.destinations.duckdb", "DuckDBDestination.prepare"),
    ("workers.destinations.duckdb", "DuckDBDestination.committed_state"),
    ("workers.destinations.duckdb", "DuckDBDestination.run_counts"),
    ("workers.destinations.duckdb", "DuckDBDestination.commit"),
    ("workers.destinations.duckdb", "DuckDBDestination.close"),
    ("workers.connectors.process", "remove_orphaned_private_files"),
    ("workers.connectors.process", "Connector.spec"),
    ("workers.connectors.process", "Connector.discover"),
    ("workers.retained_logs", "LogRetention.retain"),
    ("workers.purging", "Purger.purge"),
    ("workers.purging", "purge_prefix"),
    # The connector process: from fork to exec'd child, and from its end to its reaping.
    ("subprocess", "Popen.__init__"),
    ("subprocess", "Popen.wait"),
]


# -- the worker child: spans ------------------------------------------------------------------


class SpanLog:
    """Appends one JSON line per finished call of a wrapped function: name, thread, start and
    end (time.time(), the clock the history's event times use)."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        self._lock = threading.Lock()

    def wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def traced(*args: Any, **kwargs: Any) -> Any:
            started = time.time()
            try:
                return function(*args, **kwargs)
            finally:
                ended = time.time()
                line = json.dumps(
                    {"name": name, "thread": threading.get_ident(), "t0": started, "t1": ended}
                )
                with self._lock:
                    self._file.write(line + "\n")

        return traced

    def install(self) -> None:
        for module_name, path in TRACED:
            module = importlib.import_module(module_name)
            owner_name, _, attribute = path.rpartition(".")
            owner: Any = getattr(module, owner_name) if owner_name else module
            if attribute == "*":
                names = [n for n in vars(owner) if not n.startswith("_")]
            else:
                names = [attribute]
            for name in names:
                function = vars(owner)[name] if owner_name else getattr(owner, name)
                if isinstance(function, staticmethod | classmethod) or not callable(function):
                    continue
                label = f"{owner_name}.{name}" if owner_name else name
                setattr(owner, name, self.wrap(label, function))


# What-ifs: a change recommended in a file this bench may not edit, applied in the worker child
# only, so that its gain is measured side by side with the code as it is.
WHAT_IFS = {
    "sqlite-wal": "the SQLite metadata store in WAL mode with synchronous=NORMAL (one fsync "
    "per checkpoint instead of about four per transaction)",
}


def _sqlite_wal() -> None:
    import sqlite3

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    @event.listens_for(Engine, "connect")
    def _wal(connection: Any, _record: Any) -> None:
        if isinstance(connection, sqlite3.Connection):
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()


def traced_worker_child(args: argparse.Namespace) -> int:
    if args.what_if == "sqlite-wal":
        _sqlite_wal()
    if args.spans is not None:
        SpanLog(args.spans).install()
    return asyncio.run(common.worker_child(args))


# -- setup ----------------------------------------------------------------------------------


def _toml(value: Any) -> str:
    return common._toml(value)


def write_connections(path: Path, faker: str, warehouse: Path) -> None:
    body = [
        "[[connections]]",
        f"id = {_toml(CONNECTION_ID)}",
        'backend = "local"',
        "",
        "[connections.source]",
        f"command = {_toml([faker])}",  # no `package`: nothing is installed
        f"config = {_toml(CONFIG)}",
        "",
        "[connections.destination]",
        'type = "duckdb"',
        f"path = {_toml(str(warehouse))}",
    ]
    for name, sync_mode, destination_mode, cursor, key in STREAMS:
        body += [
            "",
            "[[connections.streams]]",
            f"name = {_toml(name)}",
            f"sync_mode = {_toml(sync_mode)}",
            f"destination_mode = {_toml(destination_mode)}",
        ]
        if cursor:
            body.append(f"cursor_field = {_toml(cursor)}")
        if key:
            body.append(f"primary_key = {_toml(key)}")
    path.write_text("\n".join(body) + "\n", encoding="utf-8")


def bare_files(faker: str, workdir: Path, warehouse: Path) -> tuple[Path, Path, Path]:
    """config.json, the configured catalog (as Sluice builds it for ``read``) and the state
    Sluice committed for the incremental streams (as Sluice hands it to ``read``)."""
    config = workdir / "config.json"
    config.write_text(json.dumps(CONFIG))
    done = subprocess.run(
        [faker, "discover", "--config", str(config)], capture_output=True, check=True
    )
    catalog = next(
        json.loads(line)["catalog"]
        for line in done.stdout.splitlines()
        if line.startswith(b"{") and json.loads(line).get("type") == "CATALOG"
    )
    offered = {s["name"]: s for s in catalog["streams"]}
    configured = {
        "streams": [
            {
                "stream": {
                    "name": name,
                    "json_schema": {},
                    "supported_sync_modes": [sync_mode],
                },
                "sync_mode": sync_mode,
                "destination_sync_mode": "overwrite" if mode == "overwrite" else "append",
                "cursor_field": cursor or offered[name].get("default_cursor_field") or None,
                "primary_key": key or offered[name].get("source_defined_primary_key") or None,
            }
            for name, sync_mode, mode, cursor, key in STREAMS
        ]
    }
    catalog_path = workdir / "catalog.json"
    catalog_path.write_text(json.dumps(configured))

    import duckdb

    incremental = {name for name, sync_mode, *_ in STREAMS if sync_mode == "incremental"}
    with duckdb.connect(str(warehouse), read_only=True) as db:
        rows = db.execute(
            "SELECT state FROM _sluice_state WHERE connection_id = ? ORDER BY state_key",
            [CONNECTION_ID],
        ).fetchall()
    states = [json.loads(r[0]) for r in rows]
    states = [
        s
        for s in states
        if s.get("type") == "STREAM" and s["stream"]["stream_descriptor"]["name"] in incremental
    ]
    if len(states) != len(incremental):
        raise SystemExit(f"expected a committed state per incremental stream, found {states}")
    state_path = workdir / "state.json"
    state_path.write_text(json.dumps(states))
    return config, catalog_path, state_path


def count_records(argv: list[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    done = subprocess.run(argv, capture_output=True, check=True)
    for line in done.stdout.splitlines():
        if b'"RECORD"' in line and line.startswith(b"{"):
            message = json.loads(line)
            if message.get("type") == "RECORD":
                counts[message["record"]["stream"]] += 1
    return counts


# -- measurements ---------------------------------------------------------------------------


@dataclass
class Timed:
    seconds: float
    other_cpu: float
    extra: dict[str, Any] = field(default_factory=dict)


def timed_process(argv: list[str], server_pid: int) -> Timed:
    with common.Meter(server_pid) as meter:
        started = time.perf_counter()
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        code, cpu = common.wait_with_usage(process)
        seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"{argv[1:2]} exited with code {code}")
    return Timed(seconds, meter.others(cpu), {"cpu": cpu})


async def sluice_run(
    client: Client, settings: Settings, worker: WorkerProcess, server: common.DevServer
) -> Timed:
    """One run, timed from start_workflow to result; its history and the read process's
    lifetime (wall clock)."""
    cpu_before = common.process_cpu(worker.pid)
    with common.Meter(server.process.pid) as meter, TreeSampler(worker.pid) as sampler:
        wall0, perf0 = time.time(), time.perf_counter()
        handle = await client.start_workflow(
            SyncConnectionWorkflow.run,
            SyncRequest(connection_id=CONNECTION_ID),
            id=f"bench-small-{uuid.uuid4().hex[:12]}",
            task_queue=settings.task_queue,
            execution_timeout=timedelta(minutes=10),
            result_type=SyncSummary,
        )
        summary = await handle.result()
        seconds = time.perf_counter() - perf0
        cpu = common.process_cpu(worker.pid) - cpu_before
    if summary.status != "succeeded" or not summary.verified_empty:
        raise SystemExit(f"Sluice run did not succeed cleanly: {summary}")
    events = []
    async for event in handle.fetch_history_events():
        events.append(event)
    processes = [
        (verb, wall0 + first - perf0, wall0 + last - perf0)
        for verb, first, last in sampler.children.values()
    ]
    return Timed(
        seconds,
        meter.others(cpu),
        {
            "start": wall0,
            "end": wall0 + seconds,
            "records": summary.records,
            "timeline": timeline(events, wall0, wall0 + seconds),
            "processes": processes,
            "cpu": cpu,
            "server_cpu": meter.server,
        },
    )


_SHORT = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED: "workflow started",
    EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED: "WFT scheduled",
    EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED: "WFT started",
    EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED: "WFT completed",
    EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED: "scheduled",
    EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED: "started",
    EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: "completed",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED: "workflow completed",
}


def timeline(events: list[Any], client_start: float, client_end: float) -> list[tuple[str, float]]:
    """(label, wall time) of every event, in time order, between the client's start and its
    result. Activity events are labelled with the activity's name."""
    names: dict[int, str] = {}
    points: list[tuple[str, float]] = [("client: start_workflow called", client_start)]
    for event in events:
        at = event.event_time.ToDatetime(tzinfo=UTC).timestamp()
        kind = event.event_type
        label = _SHORT.get(kind, EventType.Name(kind))
        if kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            name = event.activity_task_scheduled_event_attributes.activity_type.name
            names[event.event_id] = name
            label = f"{name} scheduled"
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            label = f"{names[event.activity_task_started_event_attributes.scheduled_event_id]} "
            label += "started"
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            attributes = event.activity_task_completed_event_attributes
            label = f"{names[attributes.scheduled_event_id]} completed"
        points.append((label, at))
    points.append(("client: result() returned", client_end))
    # The started event of an activity with a retry policy is written when it completes, after
    # events of the workflow task that ran meanwhile: order by time, not by event id.
    points.sort(key=lambda p: p[1])
    return points


def spans_between(path: Path, start: float, end: float) -> list[dict[str, Any]]:
    spans = []
    with contextlib.suppress(FileNotFoundError), open(path, encoding="utf-8") as fh:
        for line in fh:
            span = json.loads(line)
            if span["t0"] >= start and span["t1"] <= end:
                spans.append(span)
    return sorted(spans, key=lambda s: (s["t0"], -s["t1"]))


# -- report ---------------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def report(
    spec: list[Timed],
    bare: list[Timed],
    sluice: list[Timed],
    spans_path: Path,
    expected: Counter[str],
    notes: dict[str, Any],
) -> dict[str, Any]:
    bare_s, sluice_s, spec_s = (_median([t.seconds for t in x]) for x in (bare, sluice, spec))
    overhead = sluice_s - bare_s
    print()
    print(
        f"source-faker {json.dumps(CONFIG)}; streams "
        + ", ".join(f"{n} ({s}/{m})" for n, s, m, *_ in STREAMS)
        + f"; {os.cpu_count()} CPUs; load average now {common._loadavg()}"
    )
    print(f"records per incremental run: {dict(expected)} (bare read with state = Sluice's)")
    print()
    rows = [
        ("connector start-up: `spec`", spec),
        ("bare read --config --catalog --state", bare),
        ("Sluice run, start_workflow -> result", sluice),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"  {'measurement':<{width}}  {'n':>2}  {'median s':>8}  {'others CPU s':>12}  runs s")
    for label, runs in rows:
        print(
            f"  {label:<{width}}  {len(runs):>2}  {_median([t.seconds for t in runs]):>8.3f}  "
            f"{_median([t.other_cpu for t in runs]):>12.2f}  "
            + " ".join(f"{t.seconds:.2f}" for t in runs)
        )
    mark = "ok" if overhead <= TARGET_OVERHEAD_SECONDS else "MISSED"
    print()
    print(
        f"Overhead: Sluice - bare read = {overhead:.3f} s (medians; target <= "
        f"{TARGET_OVERHEAD_SECONDS} s) {mark}; Sluice / bare = {sluice_s / bare_s:.2f}; "
        "per round: "
        + " ".join(f"{s.seconds - b.seconds:.2f}" for s, b in zip(sluice, bare, strict=True))
    )
    print(
        f"Sluice's worker CPU per run (median, connector included): "
        f"{_median([t.extra['cpu'] for t in sluice]):.2f} s; bare read CPU "
        f"{_median([t.extra['cpu'] for t in bare]):.2f} s; Temporal server CPU per run "
        f"{_median([t.extra['server_cpu'] for t in sluice]):.2f} s"
    )

    # The history, segment by segment (median over runs, by position).
    print()
    print("Where a run's wall time goes (workflow history + the client's clock; median of runs):")
    sequences = [t.extra["timeline"] for t in sluice]
    same = all([p[0] for p in s] == [p[0] for p in sequences[0]] for s in sequences)
    segments: dict[str, list[float]] = defaultdict(list)
    for points in sequences if same else sequences[:1]:
        for (a, ta), (b, tb) in itertools.pairwise(points):
            segments[f"{a} -> {b}"].append(tb - ta)
    for name, values in segments.items():
        print(f"  {_median(values):7.3f}  {name}")
    if not same:
        print("  (runs' event sequences differ: the first run is shown)")

    # Roll-up: activity execution vs. Temporal's dispatch and workflow-task round trips.
    def rollup(points: list[tuple[str, float]]) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        started: dict[str, float] = {}
        scheduled: dict[str, float] = {}
        for label, at in points:
            if label.endswith(" scheduled") and not label.startswith("WFT"):
                scheduled[label.removesuffix(" scheduled")] = at
            elif label.endswith(" started") and not label.startswith(("WFT", "workflow")):
                name = label.removesuffix(" started")
                started[name] = at
                out["activity dispatch (scheduled -> started)"] += at - scheduled[name]
            elif label.endswith(" completed") and not label.startswith(("WFT", "workflow")):
                name = label.removesuffix(" completed")
                out[f"activity {name} (started -> completed)"] += at - started[name]
        total = points[-1][1] - points[0][1]
        out["everything else: workflow tasks, client <-> server"] = total - sum(out.values())
        out["total"] = total
        return out

    rolled = [rollup(points) for points in sequences]
    print()
    print("Roll-up (median of runs):")
    for name in rolled[0]:
        print(f"  {_median([r.get(name, 0.0) for r in rolled]):7.3f}  {name}")

    # Inside the worker: spans, and when the read process was alive.
    per_run: list[dict[str, tuple[float, int]]] = []
    read_alive: list[float] = []
    for run in sluice:
        totals: dict[str, list[float]] = defaultdict(list)
        for span in spans_between(spans_path, run.extra["start"], run.extra["end"]):
            totals[span["name"]].append(span["t1"] - span["t0"])
        per_run.append({n: (sum(v), len(v)) for n, v in totals.items()})
        read_alive.append(sum(b - a for verb, a, b in run.extra["processes"] if verb == "read"))
    names = list(dict.fromkeys(n for r in per_run for n in r))
    print()
    print("Inside the worker (median seconds per run, calls; spans nest):")
    print(f"  {_median(read_alive):7.3f}  connector `read` process seen alive (+-50 ms)")
    for name in names:
        seconds = _median([r.get(name, (0.0, 0))[0] for r in per_run])
        calls = _median([r.get(name, (0.0, 0))[1] for r in per_run])
        print(f"  {seconds:7.3f}  {name} ({calls:g} calls)")
    verbs = Counter(verb for run in sluice for verb, *_ in run.extra["processes"])
    print(f"  connector processes seen over all timed runs: {dict(verbs)}")

    # One run, span by span, against its start (the median run).
    ordered = sorted(sluice, key=lambda t: t.seconds)
    middle = ordered[len(ordered) // 2]
    print()
    print(f"The median run ({middle.seconds:.2f} s), span by span (s from start_workflow):")
    events = [
        (at - middle.extra["start"], 0.0, f"[history] {label}")
        for label, at in middle.extra["timeline"]
    ]
    events += [
        (a - middle.extra["start"], b - a, f"[process] connector {verb}")
        for verb, a, b in middle.extra["processes"]
    ]
    events += [
        (s["t0"] - middle.extra["start"], s["t1"] - s["t0"], f"[worker] {s['name']}")
        for s in spans_between(spans_path, middle.extra["start"], middle.extra["end"])
    ]
    for offset, length, label in sorted(events, key=lambda e: (e[0], -e[1])):
        print(f"  {offset:7.3f}  {length:7.3f}  {label}")
    return {
        "spec_seconds": spec_s,
        "bare_seconds": bare_s,
        "sluice_seconds": sluice_s,
        "overhead_seconds": overhead,
        "target_met": overhead <= TARGET_OVERHEAD_SECONDS,
        "rollup": {n: _median([r.get(n, 0.0) for r in rolled]) for n in rolled[0]},
        "notes": notes,
    }


# -- the benchmark --------------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> int:
    faker = str(Path(args.faker or common.find_faker()).resolve())
    workdir = Path(tempfile.mkdtemp(prefix="sluice-bench-small-"))
    common._say(f"work dir {workdir}; connector {faker}; load average {common._loadavg()}")
    keep = args.keep
    try:
        return await _bench(args, faker, workdir)
    except BaseException:
        keep = True
        raise
    finally:
        if keep:
            common._say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


async def _bench(args: argparse.Namespace, faker: str, workdir: Path) -> int:
    warehouse = workdir / "warehouse.duckdb"
    connections = workdir / "connections.toml"
    write_connections(connections, faker, warehouse)
    spans_path = workdir / "spans.jsonl"
    with temporal_dev_server(workdir) as server:
        settings = Settings(
            state_dir=workdir / "sluice-state",
            connections_file=connections,
            temporal_address=server.address,
            task_queue=f"bench-small-{uuid.uuid4().hex[:8]}",
        )
        client = await connect(settings, wait_seconds=60)
        extra = [] if args.no_spans else ["--spans", str(spans_path)]
        worker = WorkerProcess(settings, workdir, None, script=Path(__file__), extra_args=extra)
        what_if: WorkerProcess | None = None
        what_if_settings = settings.model_copy(update={"task_queue": settings.task_queue + "-w"})
        what_if_runs: list[Timed] = []
        try:
            await worker.wait_polling(client)
            common._say(f"worker polling (child process {worker.pid})")
            if args.what_if:
                # Its own metadata store (a what-if may change the file itself, as WAL does).
                os.environ["SLUICE_METADATA_URL"] = f"sqlite:///{workdir / 'what-if.db'}"
                try:
                    what_if = WorkerProcess(
                        what_if_settings,
                        workdir,
                        None,
                        script=Path(__file__),
                        extra_args=[
                            "--what-if",
                            args.what_if,
                            *([] if args.no_spans else ["--spans", str(spans_path) + ".what-if"]),
                        ],
                        log_name="worker-what-if.log",
                    )
                finally:
                    del os.environ["SLUICE_METADATA_URL"]
                await what_if.wait_polling(client)
            first = await sluice_run(client, settings, worker, server)
            common._say(
                f"first run (discovers, full read; untimed): {first.seconds:.2f} s, "
                f"{first.extra['records']}"
            )
            second = await sluice_run(client, settings, worker, server)
            common._say(f"warm-up incremental run (untimed): {second.seconds:.2f} s")
            if what_if is not None:
                for _ in range(2):  # its first run discovers: its own catalog cache
                    await sluice_run(client, what_if_settings, what_if, server)
            config, catalog, state = bare_files(faker, workdir, warehouse)
            bare_argv = [
                faker, "read", "--config", str(config), "--catalog", str(catalog),
                "--state", str(state),
            ]  # fmt: skip
            expected = count_records(bare_argv)
            if dict(expected) != {k: v for k, v in second.extra["records"].items() if v}:
                raise SystemExit(
                    f"the bare read emits {dict(expected)}, Sluice read {second.extra['records']}"
                )
            spec_runs: list[Timed] = []
            bare_runs: list[Timed] = []
            sluice_runs: list[Timed] = []
            for number in range(1, args.repeat + 1):
                spec_runs.append(timed_process([faker, "spec"], server.process.pid))
                bare_runs.append(timed_process(bare_argv, server.process.pid))
                sluice_runs.append(await sluice_run(client, settings, worker, server))
                if what_if is not None:
                    what_if_runs.append(await sluice_run(client, what_if_settings, what_if, server))
                common._say(
                    f"round {number}: spec {spec_runs[-1].seconds:.2f} s, bare read "
                    f"{bare_runs[-1].seconds:.2f} s, Sluice {sluice_runs[-1].seconds:.2f} s"
                    + (f", what-if {what_if_runs[-1].seconds:.2f} s" if what_if_runs else "")
                )
        finally:
            worker.stop()
            if what_if is not None:
                what_if.stop()
    result = report(
        spec_runs,
        bare_runs,
        sluice_runs,
        spans_path,
        expected,
        {"first_run_seconds": first.seconds, "spans": not args.no_spans},
    )
    results_dir = REPO / "bench" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    out = results_dir / f"small-run-{datetime.now():%Y%m%d-%H%M%S}.json"
    if what_if_runs:
        gains = [a.seconds - b.seconds for a, b in zip(sluice_runs, what_if_runs, strict=True)]
        print(
            f"\nWhat-if {args.what_if} ({WHAT_IFS[args.what_if]}): Sluice "
            f"{_median([t.seconds for t in what_if_runs]):.3f} s (median; runs "
            + " ".join(f"{t.seconds:.2f}" for t in what_if_runs)
            + f"); gain per round (as is - what-if, paired): median {_median(gains):.3f} s "
            "(" + " ".join(f"{g:+.3f}" for g in gains) + ")"
        )
        result["what_if"] = {
            "name": args.what_if,
            "seconds": [t.seconds for t in what_if_runs],
            "gain_median": _median(gains),
        }
    result["runs"] = {
        "spec": [t.seconds for t in spec_runs],
        "bare": [t.seconds for t in bare_runs],
        "sluice": [t.seconds for t in sluice_runs],
        "timelines": [t.extra["timeline"] for t in sluice_runs],
    }
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"results written to {out.relative_to(REPO)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--faker", help="the source-faker executable (default: as bench/run)")
    parser.add_argument("--repeat", type=int, default=7, help="rounds (default 7)")
    parser.add_argument("--no-spans", action="store_true", help="do not time inside the worker")
    parser.add_argument(
        "--what-if",
        choices=sorted(WHAT_IFS),
        help="also run a second worker with this change applied (its own metadata store), "
        "interleaved with the first: " + "; ".join(f"{k}: {v}" for k, v in WHAT_IFS.items()),
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary work dir")
    # The worker child (internal): bench_sync's, with spans.
    parser.add_argument("--worker-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--spans", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--state-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--connections-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--task-queue", help=argparse.SUPPRESS)
    parser.add_argument("--profile-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker_child:
        return traced_worker_child(args)
    return asyncio.run(bench(args))


if __name__ == "__main__":
    sys.exit(main())
