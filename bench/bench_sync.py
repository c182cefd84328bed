"""Sync benchmark: the bare connector read vs. Sluice vs. PyAirbyte, on the same data.

A benchmark, not a test: run it by hand with ``bench/run`` (which prepares the connector and the
PyAirbyte virtual environment, then calls this file). In one run it measures

1. the bare read: ``source-faker read --config C --catalog CAT > /dev/null``;
2. Sluice: the real SyncConnectionWorkflow on a Temporal dev server started here (temporary
   database, free loopback ports) and a worker built by ``workers.worker.build_worker`` in a
   *child process* (so that its memory is measured alone, apart from this process and the
   Temporal server), twice over with ``reset=true``: cold (first run of the worker) and warm;
3. PyAirbyte: ``source.read()`` into a DuckDB cache, in its own virtual environment, as a
   subprocess (``bench/pyairbyte_read.py``).

For each: wall seconds, records/s and the peak RSS of the process tree (this file samples
``/proc`` every 50 ms). Then Sluice's ratios against its targets, the per-activity breakdown of
the Sluice runs (from the workflow history) and, when Sluice misses its target, a cProfile of the
worker side (one extra, untimed run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import pstats
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from temporalio.api.enums.v1 import EventType  # noqa: E402
from temporalio.client import Client  # noqa: E402

from workers.client import connect  # noqa: E402
from workers.devserver import is_listening, temporal_cli  # noqa: E402
from workers.settings import Settings  # noqa: E402
from workflows.models import SyncRequest, SyncSummary  # noqa: E402
from workflows.sync import SyncConnectionWorkflow  # noqa: E402

FAKER_CONFIG: dict[str, Any] = {
    "count": 20000,
    "seed": 42,
    "records_per_slice": 1000,
    "parallelism": 1,
    "always_updated": False,
}
STREAMS = ("users", "purchases", "products")
CONNECTION_ID = "bench-faker"
SAMPLE_EVERY = 0.05
TARGET_SLUICE_OVER_BARE = 1.15
TARGET_PYAIRBYTE_OVER_SLUICE = 1.0


# -- memory of a process tree ---------------------------------------------------------------


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as fh:
                kids.extend(int(k) for k in fh.read().split())
    return kids


def _tree(root: int) -> list[int]:
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(_children(pid))
    return pids


def _memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of one process in KiB; (0, 0) once it is gone."""
    rss = hwm = 0
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm


class TreeSampler:
    """Peak RSS of a process and its descendants, sampled from /proc every 50 ms.

    The peak is the larger of the largest sampled sum of VmRSS over the tree and the largest
    VmHWM (kernel-tracked peak) of any one process in it, which covers a one-process tree whose
    peak falls between two samples.
    """

    def __init__(self, root: int, interval: float = SAMPLE_EVERY) -> None:
        self.root = root
        self.interval = interval
        self.peak_sum_kib = 0
        self.peak_one_kib = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="rss-sampler")

    def _sample(self) -> None:
        total = 0
        for pid in _tree(self.root):
            rss, hwm = _memory_kib(pid)
            total += rss
            self.peak_one_kib = max(self.peak_one_kib, hwm)
        self.peak_sum_kib = max(self.peak_sum_kib, total)
        self.samples += 1

    def _loop(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mib(self) -> float:
        return max(self.peak_sum_kib, self.peak_one_kib) / 1024


# -- results --------------------------------------------------------------------------------


@dataclass
class Run:
    seconds: float
    records: int
    peak_mib: float
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Measured:
    label: str
    runs: list[Run] = field(default_factory=list)
    note: str = ""

    def median(self, key: Callable[[Run], float] = lambda r: r.seconds) -> float:
        return statistics.median(key(r) for r in self.runs)

    @property
    def seconds(self) -> float:
        return self.median()

    @property
    def records(self) -> int:
        return self.runs[0].records if self.runs else 0

    @property
    def peak_mib(self) -> float:
        return self.median(lambda r: r.peak_mib)


def _table(rows: Sequence[Measured]) -> str:
    header = ["measurement", "n", "wall s (median)", "runs s", "records", "records/s", "peak MiB"]
    lines = [header]
    for row in rows:
        if not row.runs:
            lines.append([row.label, "0", "-", "-", "-", "-", "-"])
            continue
        lines.append(
            [
                row.label,
                str(len(row.runs)),
                f"{row.seconds:.2f}",
                " ".join(f"{r.seconds:.2f}" for r in row.runs),
                str(row.records),
                f"{row.records / row.seconds:,.0f}" if row.records else "-",
                f"{row.peak_mib:.0f}",
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for number, line in enumerate(lines):
        cells = [
            cell.ljust(widths[i]) if i in (0, 3) else cell.rjust(widths[i])
            for i, cell in enumerate(line)
        ]
        out.append("  ".join(cells).rstrip())
        if number == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


# -- the bare read --------------------------------------------------------------------------


def discover_catalog(faker: str, config: Path, workdir: Path) -> tuple[Path, float]:
    """The configured catalog: every stream full_refresh / append (built untimed)."""
    started = time.perf_counter()
    done = subprocess.run(
        [faker, "discover", "--config", str(config)], capture_output=True, check=True
    )
    seconds = time.perf_counter() - started
    catalog = None
    for line in done.stdout.splitlines():
        if line.lstrip().startswith(b"{"):
            message = json.loads(line)
            if message.get("type") == "CATALOG":
                catalog = message["catalog"]
    if catalog is None:
        raise SystemExit("source-faker discover printed no CATALOG message")
    offered = {s["name"] for s in catalog["streams"]}
    if not set(STREAMS) <= offered:
        raise SystemExit(f"source-faker offers {sorted(offered)}, expected {STREAMS}")
    configured = {
        "streams": [
            {"stream": s, "sync_mode": "full_refresh", "destination_sync_mode": "append"}
            for s in catalog["streams"]
            if s["name"] in STREAMS
        ]
    }
    path = workdir / "catalog.json"
    path.write_text(json.dumps(configured))
    return path, seconds


def count_records(faker: str, config: Path, catalog: Path) -> Counter[str]:
    """Records per stream that the bare read emits (a separate, untimed run)."""
    counts: Counter[str] = Counter()
    process = subprocess.Popen(
        [faker, "read", "--config", str(config), "--catalog", str(catalog)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if b'"RECORD"' in line and line.lstrip().startswith(b"{"):
            message = json.loads(line)
            if message.get("type") == "RECORD":
                counts[message["record"]["stream"]] += 1
    if process.wait() != 0:
        raise SystemExit(f"source-faker read exited with code {process.returncode}")
    return counts


def bare_read(faker: str, config: Path, catalog: Path, records: int) -> Run:
    argv = [faker, "read", "--config", str(config), "--catalog", str(catalog)]
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with TreeSampler(process.pid) as sampler:
        code = process.wait()
    seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"bare read exited with code {code}")
    return Run(seconds, records, sampler.peak_mib)


# -- PyAirbyte ------------------------------------------------------------------------------


def pyairbyte_read(python: str, faker: str, config: Path, workdir: Path) -> Run:
    rundir = Path(tempfile.mkdtemp(prefix="pyairbyte-", dir=workdir))
    out = rundir / "result.json"
    log_path = workdir / "pyairbyte.log"
    env = {
        **os.environ,
        "AIRBYTE_OFFLINE_MODE": "1",
        "DO_NOT_TRACK": "1",
        "AIRBYTE_LOGGING_ROOT": str(rundir / "logs"),
        "NO_COLOR": "1",
    }
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONPATH", None)
    argv = [
        python,
        str(Path(__file__).with_name("pyairbyte_read.py")),
        "--executable",
        faker,
        "--config",
        str(config),
        "--workdir",
        str(rundir),
        "--out",
        str(out),
    ]
    with open(log_path, "ab") as log:
        started = time.perf_counter()
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        with TreeSampler(process.pid) as sampler:
            code = process.wait()
        wall = time.perf_counter() - started
    if code != 0 or not out.exists():
        tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
        raise RuntimeError(f"PyAirbyte run exited with code {code}:\n  " + "\n  ".join(tail))
    result = json.loads(out.read_text())
    shutil.rmtree(rundir, ignore_errors=True)
    records = sum(result["records"].values())
    return Run(result["read_seconds"], records, sampler.peak_mib, {"wall": wall, **result})


# -- Sluice ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(type(value))


def write_connections(path: Path, faker: str, warehouse: Path) -> None:
    """One connection, the same data as the bare read: every stream full_refresh + overwrite."""
    body = [
        "[[connections]]",
        f"id = {_toml(CONNECTION_ID)}",
        'backend = "local"',
        "",
        "[connections.source]",
        f"command = {_toml([faker])}",  # no `package`: nothing is installed
        f"config = {_toml(FAKER_CONFIG)}",
        "",
        "[connections.destination]",
        'type = "duckdb"',
        f"path = {_toml(str(warehouse))}",
    ]
    for stream in STREAMS:
        body += [
            "",
            "[[connections.streams]]",
            f"name = {_toml(stream)}",
            'sync_mode = "full_refresh"',
            'destination_mode = "overwrite"',
        ]
    path.write_text("\n".join(body) + "\n", encoding="utf-8")


@contextlib.contextmanager
def temporal_dev_server(workdir: Path) -> Iterator[str]:
    """A dev server of our own: temporary database, free loopback ports, no UI."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    argv = [
        temporal_cli(),
        "server",
        "start-dev",
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--http-port",
        str(free_port()),
        "--metrics-port",
        str(free_port()),
        "--headless",
        "--db-filename",
        str(workdir / "temporal.db"),
        "--namespace",
        "default",
        "--log-level",
        "warn",
    ]
    with open(workdir / "temporal.log", "ab") as log:
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        deadline = time.monotonic() + 60
        while not is_listening(address):
            if process.poll() is not None:
                raise SystemExit(
                    f"the Temporal dev server exited with code {process.returncode}; "
                    f"see {workdir / 'temporal.log'}"
                )
            if time.monotonic() > deadline:
                raise SystemExit("the Temporal dev server did not listen within 60 s")
            time.sleep(0.1)
        yield address
    finally:
        _stop(process, timeout=15)


def _stop(process: subprocess.Popen[Any], timeout: float) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def connect_with_retry(settings: Settings, seconds: float = 60) -> Client:
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await connect(settings)
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def _has_poller(client: Client, settings: Settings) -> bool:
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

    response = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=settings.temporal_namespace,
            task_queue=TaskQueue(name=settings.task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
    )
    return len(response.pollers) > 0


def _settings_args(settings: Settings) -> list[str]:
    return [
        "--state-dir",
        str(settings.state_dir),
        "--connections-file",
        str(settings.connections_file),
        "--address",
        settings.temporal_address,
        "--task-queue",
        settings.task_queue,
    ]


class WorkerProcess:
    """``build_worker`` in a child process (this file, ``--worker-child``)."""

    def __init__(self, settings: Settings, workdir: Path, profile_dir: Path | None) -> None:
        self.settings = settings
        self.log_path = workdir / ("worker-profiled.log" if profile_dir else "worker.log")
        argv = [sys.executable, str(Path(__file__).resolve()), "--worker-child"]
        argv += _settings_args(settings)
        if profile_dir is not None:
            argv += ["--profile-dir", str(profile_dir)]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        }
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=workdir,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    async def wait_polling(self, client: Client, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while not await _has_poller(client, self.settings):
            if self.process.poll() is not None:
                raise SystemExit(
                    f"the worker exited with code {self.process.returncode}; see {self.log_path}"
                )
            if time.monotonic() > deadline:
                raise SystemExit(f"the worker did not poll within {seconds:.0f} s")
            await asyncio.sleep(0.1)

    def stop(self) -> None:
        _stop(self.process, timeout=30)


async def sluice_sync(client: Client, settings: Settings, worker: WorkerProcess) -> Run:
    """One SyncConnectionWorkflow run, reset=true, timed from start to result."""
    with TreeSampler(worker.pid) as sampler:
        started = time.perf_counter()
        handle = await client.start_workflow(
            SyncConnectionWorkflow.run,
            SyncRequest(connection_id=CONNECTION_ID, reset=True),
            id=f"bench-sync-{uuid.uuid4().hex[:12]}",
            task_queue=settings.task_queue,
            execution_timeout=timedelta(minutes=30),
            result_type=SyncSummary,
        )
        summary = await handle.result()
        seconds = time.perf_counter() - started
    if summary.status != "succeeded" or not summary.verified_empty:
        raise SystemExit(f"Sluice run did not succeed cleanly: {summary}")
    phases = await activity_phases(handle)
    return Run(
        seconds,
        sum(summary.records.values()),
        sampler.peak_mib,
        {
            "records": summary.records,
            "phases": phases,
            "workflow_id": handle.id,
            "bytes_staged": summary.bytes_staged,
            "objects_purged": summary.objects_purged,
        },
    )


async def activity_phases(handle: Any) -> dict[str, float]:
    """Seconds per activity (scheduled -> completed) and the rest of the workflow, from history."""
    scheduled: dict[int, tuple[str, datetime]] = {}
    phases: dict[str, float] = {}
    first = last = None
    async for event in handle.fetch_history_events():
        at = event.event_time.ToDatetime(tzinfo=UTC)
        first = first or at
        last = at
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            name = event.activity_task_scheduled_event_attributes.activity_type.name
            scheduled[event.event_id] = (name, at)
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            name, since = scheduled[
                event.activity_task_completed_event_attributes.scheduled_event_id
            ]
            phases[name] = phases.get(name, 0.0) + (at - since).total_seconds()
    if first and last:
        total = (last - first).total_seconds()
        phases["(workflow tasks, queueing)"] = total - sum(phases.values())
        phases["(history: first -> last event)"] = total
    return phases


def check_destination(warehouse: Path, expected: Counter[str]) -> tuple[dict[str, int], list[str]]:
    import duckdb

    with duckdb.connect(str(warehouse), read_only=True) as db:
        tables = [
            row[0]
            for row in db.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
            ).fetchall()
        ]
        counts = {
            s: int(db.execute(f'SELECT count(*) FROM "{s}"').fetchone()[0])  # type: ignore[index]
            for s in STREAMS
            if s in tables
        }
    problems = [
        f"{s}: destination {counts.get(s)} rows, bare read emitted {expected.get(s, 0)}"
        for s in STREAMS
        if counts.get(s) != expected.get(s, 0)
    ]
    leftovers = [t for t in tables if "__sluice_" in t]
    if leftovers:
        problems.append(f"run-scoped tables left behind: {leftovers}")
    return counts, problems


# -- profiling the worker side (child process) ----------------------------------------------


class _ProfilingExecutor(ThreadPoolExecutor):
    """Runs each activity under its own cProfile.Profile (cProfile sees one thread only)."""

    profiles: list[cProfile.Profile] = []
    _lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        def profiled() -> Any:
            profile = cProfile.Profile()
            try:
                return profile.runcall(fn, *args, **kwargs)
            finally:
                with self._lock:
                    self.profiles.append(profile)

        return super().submit(profiled)


async def worker_child(args: argparse.Namespace) -> int:
    from workers import worker as worker_module
    from workers.runlog import configure_logging

    configure_logging(os.environ.get("SLUICE_LOG_LEVEL", "WARNING"))
    settings = Settings(
        state_dir=args.state_dir,
        connections_file=args.connections_file,
        temporal_address=args.address,
        task_queue=args.task_queue,
    )
    loop_profile: cProfile.Profile | None = None
    if args.profile_dir is not None:
        worker_module.ThreadPoolExecutor = _ProfilingExecutor  # type: ignore[misc]
        loop_profile = cProfile.Profile()
    client = await connect_with_retry(settings)
    worker = worker_module.build_worker(client, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with worker:
        if loop_profile is not None:
            loop_profile.enable()
        await stop.wait()
        if loop_profile is not None:
            loop_profile.disable()
    if args.profile_dir is not None:
        assert loop_profile is not None
        args.profile_dir.mkdir(parents=True, exist_ok=True)
        loop_profile.dump_stats(args.profile_dir / "event-loop.prof")
        if _ProfilingExecutor.profiles:
            pstats.Stats(*_ProfilingExecutor.profiles).dump_stats(
                args.profile_dir / "activities.prof"
            )
    return 0


def print_profile(path: Path, title: str, limit: int) -> str:
    import io

    buffer = io.StringIO()
    stats = pstats.Stats(str(path), stream=buffer)
    stats.strip_dirs()
    buffer.write(f"\n== {title}: top {limit} by own time (tottime) ==\n")
    stats.sort_stats("tottime").print_stats(limit)
    buffer.write(f"\n== {title}: top {limit} by cumulative time ==\n")
    stats.sort_stats("cumulative").print_stats(limit)
    return buffer.getvalue()


# -- the benchmark --------------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> int:
    faker = str(Path(args.faker).resolve())
    if not os.access(faker, os.X_OK):
        raise SystemExit(f"not an executable: {faker}")
    workdir = Path(tempfile.mkdtemp(prefix="sluice-bench-"))
    started = time.perf_counter()
    print(f"work dir {workdir}; connector {faker}", file=sys.stderr)
    try:
        return await _bench(args, faker, workdir)
    finally:
        print(f"total bench time {time.perf_counter() - started:.0f} s", file=sys.stderr)
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _say(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


async def _bench(args: argparse.Namespace, faker: str, workdir: Path) -> int:
    config = workdir / "config.json"
    config.write_text(json.dumps(FAKER_CONFIG))
    catalog, discover_seconds = discover_catalog(faker, config, workdir)
    expected = count_records(faker, config, catalog)  # untimed; also warms the page cache
    total_expected = sum(expected.values())
    _say(
        f"bare read emits {dict(expected)} ({total_expected} records); "
        f"discover took {discover_seconds:.2f} s"
    )

    bare = Measured("bare read (source-faker read > /dev/null)")
    cold = Measured("Sluice cold (1st run: discover)")
    warm = Measured("Sluice warm (reset=true)")
    pyab = Measured("PyAirbyte source.read() (in script)")
    pyab_wall = Measured("PyAirbyte subprocess wall")
    pyab_error: str | None = None
    pyab_python = args.pyairbyte_python
    if not pyab_python or not Path(pyab_python).exists():
        pyab_error = f"PyAirbyte virtual environment missing ({pyab_python}); run bench/run"

    state = workdir / "sluice-state"
    warehouse = workdir / "warehouse.duckdb"
    connections = workdir / "connections.toml"
    write_connections(connections, faker, warehouse)
    profile_dir = workdir / "profile"
    destination_check: dict[str, Any] = {}

    with temporal_dev_server(workdir) as address:
        settings = Settings(
            state_dir=state,
            connections_file=connections,
            temporal_address=address,
            task_queue=f"bench-{uuid.uuid4().hex[:8]}",
        )
        client = await connect_with_retry(settings)
        _say(f"Temporal dev server on {address}")
        worker = WorkerProcess(settings, workdir, None)
        try:
            await worker.wait_polling(client)
            _say(f"worker polling (child process {worker.pid})")
            run = await sluice_sync(client, settings, worker)
            cold.runs.append(run)
            _say(f"Sluice cold: {run.seconds:.2f} s")
            for number in range(1, args.repeat + 1):
                run = bare_read(faker, config, catalog, total_expected)
                bare.runs.append(run)
                _say(f"round {number}: bare read {run.seconds:.2f} s")
                run = await sluice_sync(client, settings, worker)
                warm.runs.append(run)
                _say(f"round {number}: Sluice warm {run.seconds:.2f} s")
                if pyab_error is None:
                    try:
                        run = pyairbyte_read(pyab_python, faker, config, workdir)
                    except RuntimeError as exc:
                        pyab_error = str(exc)
                    else:
                        pyab.runs.append(run)
                        pyab_wall.runs.append(
                            Run(run.extra["wall"], run.records, run.peak_mib, run.extra)
                        )
                        _say(
                            f"round {number}: PyAirbyte read {run.seconds:.2f} s "
                            f"(subprocess {run.extra['wall']:.2f} s)"
                        )
            counts, problems = check_destination(warehouse, expected)
            destination_check = {"counts": counts, "problems": problems}
        finally:
            worker.stop()

        ratio = warm.seconds / bare.seconds
        profile_text = ""
        if args.profile == "always" or (args.profile == "auto" and ratio > TARGET_SLUICE_OVER_BARE):
            _say("profiling the worker side: one more (untimed) Sluice run under cProfile")
            profiled = WorkerProcess(settings, workdir, profile_dir)
            try:
                await profiled.wait_polling(client)
                run = await sluice_sync(client, settings, profiled)
                _say(f"profiled Sluice run: {run.seconds:.2f} s (cProfile overhead included)")
            finally:
                profiled.stop()
            for name, title in (
                ("activities.prof", "worker activities (thread pool)"),
                ("event-loop.prof", "worker event loop (Temporal SDK)"),
            ):
                if (profile_dir / name).exists():
                    profile_text += print_profile(profile_dir / name, title, args.profile_top)
            if args.profile_out:
                args.profile_out.mkdir(parents=True, exist_ok=True)
                for prof in profile_dir.glob("*.prof"):
                    shutil.copy(prof, args.profile_out / prof.name)

    # -- report -------------------------------------------------------------------------
    rows = [bare, cold, warm, pyab, pyab_wall]
    print()
    print(
        f"source-faker {json.dumps(FAKER_CONFIG)}, streams {', '.join(STREAMS)} "
        f"(full_refresh); {os.cpu_count()} CPUs"
    )
    print(f"bare `discover` alone (untimed setup step): {discover_seconds:.2f} s")
    print()
    print(_table(rows))
    print()
    print("Ratios (medians):")
    mark = "ok" if ratio <= TARGET_SLUICE_OVER_BARE else "MISSED"
    print(
        f"  Sluice warm / bare read      = {ratio:.2f}  (target <= {TARGET_SLUICE_OVER_BARE}) "
        f"{mark}"
    )
    print(f"  Sluice cold / bare read      = {cold.seconds / bare.seconds:.2f}")
    if pyab.runs:
        pyratio = pyab.seconds / warm.seconds
        mark = "ok" if pyratio > TARGET_PYAIRBYTE_OVER_SLUICE else "MISSED"
        print(
            f"  PyAirbyte read / Sluice warm = {pyratio:.2f}  "
            f"(target > {TARGET_PYAIRBYTE_OVER_SLUICE:g}) {mark}"
        )
        print(f"  PyAirbyte wall / Sluice warm = {pyab_wall.seconds / warm.seconds:.2f}")
    if pyab_error:
        print(f"  PyAirbyte: not measured: {pyab_error}")
    print()
    print("Sluice activity breakdown, seconds (workflow history; scheduled -> completed):")
    sluice_runs = [("cold", cold.runs[0])] + [(f"warm{i}", r) for i, r in enumerate(warm.runs, 1)]
    names = list(dict.fromkeys(n for _, r in sluice_runs for n in r.extra["phases"]))
    width = max(len(n) for n in names)
    print("  " + " " * width + "".join(f"{label:>8}" for label, _ in sluice_runs))
    for name in names:
        values = "".join(f"{r.extra['phases'].get(name, 0.0):8.2f}" for _, r in sluice_runs)
        print(f"  {name:<{width}}{values}")
    print()
    counts = destination_check.get("counts", {})
    problems = destination_check.get("problems", ["destination not checked"])
    print(
        f"Counts: bare read emitted {dict(expected)}; Sluice DuckDB tables hold {counts}"
        + ("" if not pyab.runs else f"; PyAirbyte cache holds {pyab.runs[0].extra['records']}")
    )
    if problems:
        print("  MISMATCH: " + "; ".join(problems))
    else:
        print("  ok: the Sluice tables hold exactly the records the bare read emitted")
    if pyab.runs and pyab.runs[0].extra["records"] != dict(expected):
        print("  MISMATCH: PyAirbyte's cache does not hold what the bare read emitted")
    if profile_text:
        print(profile_text)

    results_dir = REPO / "bench" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = results_dir / f"sync-{stamp}.json"
    path.write_text(
        json.dumps(
            {
                "config": FAKER_CONFIG,
                "discover_seconds": discover_seconds,
                "expected": dict(expected),
                "measurements": {m.label: [asdict(r) for r in m.runs] for m in rows},
                "ratios": {
                    "sluice_warm_over_bare": ratio,
                    "sluice_cold_over_bare": cold.seconds / bare.seconds,
                    "pyairbyte_over_sluice_warm": pyab.seconds / warm.seconds
                    if pyab.runs
                    else None,
                },
                "destination_check": destination_check,
                "pyairbyte_error": pyab_error,
            },
            indent=2,
            default=str,
        )
    )
    print(f"results written to {path.relative_to(REPO)}")
    return 1 if problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faker", help="the source-faker executable (bench/run finds one)")
    parser.add_argument("--pyairbyte-python", help="python of the PyAirbyte virtual env")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (default 3)")
    parser.add_argument(
        "--profile",
        choices=["auto", "always", "never"],
        default="auto",
        help="cProfile the worker in one extra run: auto = when Sluice misses its target",
    )
    parser.add_argument("--profile-top", type=int, default=25, help="rows per profile listing")
    parser.add_argument("--profile-out", type=Path, help="keep the .prof files here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work dir")
    # The worker child (internal).
    parser.add_argument("--worker-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--state-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--connections-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--task-queue", help=argparse.SUPPRESS)
    parser.add_argument("--profile-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker_child:
        return asyncio.run(worker_child(args))
    if not args.faker:
        parser.error("--faker is required (bench/run finds the connector)")
    return asyncio.run(bench(args))


if __name__ == "__main__":
    sys.exit(main())
