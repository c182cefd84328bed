"""Sync benchmark: the bare connector read vs. Sluice vs. PyAirbyte, on the same data.

A benchmark, not a test: run it by hand with ``bench/run`` (which prepares the connector and the
PyAirbyte virtual environment, then calls this file). In one run it measures

1. the bare read: ``source-faker read --config C --catalog CAT > /dev/null``;
2. Sluice: the real SyncConnectionWorkflow on a Temporal dev server started here (temporary
   database, free loopback ports, no UI) and a worker built by ``workers.worker.build_worker``
   in a *child process* (so that its memory and CPU are measured apart from this process and the
   Temporal server): a cold run (the worker's first) and warm runs, all with ``reset=true``,
   plus warm runs with ``reset=false`` (same data: every stream is full_refresh + overwrite)
   to show what the catalog cache saves when a run does not force a fresh discover;
3. PyAirbyte: ``source.read()`` into a DuckDB cache, in its own virtual environment, as a
   subprocess (``bench/pyairbyte_read.py``).

``--destination postgres`` loads Sluice into PostgreSQL instead of DuckDB, and PyAirbyte into
its PostgresCache: both in a database the bench creates (and drops) on the server of
``--postgres-dsn`` (default: the local server, user postgres).

For each: wall seconds, records/s, CPU seconds of the process tree and its peak RSS (sampled from
``/proc`` every 50 ms), and the CPU that *other* processes burnt meanwhile (a noise gauge: the
machine has 2 cores). Then Sluice's ratios against its targets, the per-activity breakdown of the
Sluice runs (from the workflow history) and, when Sluice misses its target, a cProfile of the
worker side (one extra, untimed run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
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
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from temporalio.api.enums.v1 import EventType  # noqa: E402
from temporalio.client import Client  # noqa: E402

from workers.client import connect, has_worker  # noqa: E402
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
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


FAKER_PACKAGE = "airbyte-source-faker==7.2.1"


def find_faker() -> str:
    """The source-faker executable, found the way ``bench/run`` finds it: $SLUICE_BENCH_FAKER,
    else the one ``sluice demo`` or the tests installed, else airbyte-source-faker 7.2.1 from
    PyPI installed into .cache/bench/source-faker (its own virtual environment)."""
    chosen = os.environ.get("SLUICE_BENCH_FAKER")
    if chosen:
        return chosen
    bench_venv = REPO / ".cache" / "bench" / "source-faker"
    for venv in (
        REPO / ".sluice" / "connectors" / "source-faker",
        REPO / ".cache" / "connectors" / "source-faker",
        bench_venv,
    ):
        if os.access(venv / "bin" / "source-faker", os.X_OK):
            return str(venv / "bin" / "source-faker")
    print(f"installing {FAKER_PACKAGE} into {bench_venv}", file=sys.stderr, flush=True)
    shutil.rmtree(bench_venv, ignore_errors=True)
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", str(bench_venv)], check=True)
    subprocess.run(
        [
            str(bench_venv / "bin" / "pip"),
            "install",
            "--quiet",
            "--disable-pip-version-check",
            FAKER_PACKAGE,
        ],
        check=True,
    )
    return str(bench_venv / "bin" / "source-faker")


# -- /proc: memory and CPU of process trees ---------------------------------------------------


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


def process_cpu(pid: int, *, reaped_children: bool = True) -> float:
    """CPU seconds (user + system) of a live process, plus those of the children it reaped."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): utime, stime, cutime, cstime are fields 14-17.
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def machine_busy_cpu() -> float:
    """CPU seconds the whole machine spent busy since boot (every core)."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


class TreeSampler:
    """Peak RSS of a process and its descendants, sampled from /proc every 50 ms.

    The peak is the larger of the largest sampled sum of VmRSS over the tree and the largest
    VmHWM (kernel-tracked peak) of any one process in it, which covers a one-process tree whose
    peak falls between two samples. Also records the descendants seen and, for the root's direct
    children (connector commands), their verb and how long they were seen alive (+-50 ms).
    """

    def __init__(self, root: int, interval: float = SAMPLE_EVERY) -> None:
        self.root = root
        self.interval = interval
        self.peak_sum_kib = 0
        self.peak_one_kib = 0
        self.descendants: set[int] = set()
        self.root_rss: list[tuple[float, int]] = []  # (perf_counter, the root's VmRSS KiB)
        self.children: dict[int, list[Any]] = {}  # pid -> [verb, first seen, last seen]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="rss-sampler")

    def _sample(self) -> None:
        now = time.perf_counter()
        for pid in _children(self.root):
            if pid not in self.children:
                self.children[pid] = [_verb(pid), now, now]
            elif self.children[pid][0] == "other":  # seen between its fork and its exec
                self.children[pid][0] = _verb(pid)
            self.children[pid][2] = now
        total = 0
        for pid in _tree(self.root):
            rss, hwm = _memory_kib(pid)
            if pid == self.root:
                self.root_rss.append((now, rss))
            total += rss
            self.peak_one_kib = max(self.peak_one_kib, hwm)
            if pid != self.root:
                self.descendants.add(pid)
        self.peak_sum_kib = max(self.peak_sum_kib, total)

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

    def root_memory(self, since: float) -> dict[str, float]:
        """When the root process alone peaked, against when its `read` child was last seen:
        seconds from `since`, and its RSS then (MiB)."""
        if not self.root_rss:
            return {}
        peak_at, peak = max(self.root_rss, key=lambda sample: sample[1])
        reads = [last for verb, _first, last in self.children.values() if verb == "read"]
        out = {"root peak MiB": peak / 1024, "root peak at s": peak_at - since}
        if reads:
            read_end = max(reads)
            before = [rss for at, rss in self.root_rss if at <= read_end]
            out["read ended at s"] = read_end - since
            out["root RSS at read end MiB"] = (before[-1] if before else 0) / 1024
            out["root peak during read MiB"] = max(before, default=0) / 1024
        return out

    def seconds_by_verb(self) -> dict[str, float]:
        """How long the root's children ran, summed per connector verb."""
        seconds: dict[str, float] = {}
        for verb, first, last in self.children.values():
            seconds[verb] = seconds.get(verb, 0.0) + last - first
        return seconds


def _verb(pid: int) -> str:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as fh:
        args = fh.read().decode(errors="replace").split("\0")
        for verb in ("spec", "check", "discover", "read"):
            if verb in args:
                return verb
    return "other"


class Meter:
    """Machine-wide busy CPU and our Temporal server's CPU over one measurement."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid
        self.busy = self.server = 0.0

    def _server(self) -> float:
        if self.server_pid is None:
            return 0.0
        with contextlib.suppress(OSError):
            return process_cpu(self.server_pid)
        return 0.0

    def __enter__(self) -> Meter:
        self._busy0, self._server0 = machine_busy_cpu(), self._server()
        return self

    def __exit__(self, *exc: object) -> None:
        self.busy = machine_busy_cpu() - self._busy0
        self.server = self._server() - self._server0

    def others(self, tree_cpu: float) -> float:
        """CPU seconds of processes other than the measured tree and our Temporal server."""
        return max(0.0, self.busy - tree_cpu - self.server)


def wait_with_usage(process: subprocess.Popen[Any]) -> tuple[int, float]:
    """Wait for a child; its exit code and the CPU seconds of its whole (reaped) tree."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_utime + usage.ru_stime


# -- results --------------------------------------------------------------------------------


@dataclass
class Run:
    seconds: float
    records: int
    peak_mib: float
    cpu_seconds: float
    other_cpu: float
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Measured:
    label: str
    runs: list[Run] = field(default_factory=list)

    def median(self, key: Callable[[Run], float] = lambda r: r.seconds) -> float:
        return statistics.median(key(r) for r in self.runs)

    @property
    def seconds(self) -> float:
        return self.median()

    @property
    def records(self) -> int:
        return self.runs[0].records if self.runs else 0


def _table(rows: Sequence[Measured]) -> str:
    header = [
        "measurement",
        "n",
        "wall s",
        "runs s",
        "records",
        "records/s",
        "CPU s",
        "peak MiB",
        "others' CPU s",
    ]
    lines = [header]
    for row in rows:
        if not row.runs:
            lines.append([row.label, "0", *["-"] * (len(header) - 2)])
            continue
        lines.append(
            [
                row.label,
                str(len(row.runs)),
                f"{row.seconds:.2f}",
                " ".join(f"{r.seconds:.2f}" for r in row.runs),
                str(row.records),
                f"{row.records / row.seconds:,.0f}",
                f"{row.median(lambda r: r.cpu_seconds):.2f}",
                f"{row.median(lambda r: r.peak_mib):.0f}",
                f"{row.median(lambda r: r.other_cpu):.2f}",
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


def bare_read(faker: str, config: Path, catalog: Path, records: int, server: int | None) -> Run:
    argv = [faker, "read", "--config", str(config), "--catalog", str(catalog)]
    with Meter(server) as meter:
        started = time.perf_counter()
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with TreeSampler(process.pid) as sampler:
            code, cpu = wait_with_usage(process)
        seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"bare read exited with code {code}")
    extra = {"processes": 1 + len(sampler.descendants)}
    return Run(seconds, records, sampler.peak_mib, cpu, meter.others(cpu), extra)


# -- PyAirbyte ------------------------------------------------------------------------------


def pyairbyte_read(
    python: str,
    faker: str,
    config: Path,
    workdir: Path,
    server: int | None,
    postgres: dict[str, Any] | None = None,
) -> tuple[Run, Run]:
    """One PyAirbyte run: (the read inside the script, the subprocess as a whole); into a
    DuckDB cache, or a PostgresCache with these settings."""
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
    if postgres is not None:
        schema = f"pyairbyte_{rundir.name.replace('-', '_')}"
        argv += ["--postgres", json.dumps({**postgres, "schema_name": schema})]
    with open(log_path, "ab") as log, Meter(server) as meter:
        started = time.perf_counter()
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        with TreeSampler(process.pid) as sampler:
            code, cpu = wait_with_usage(process)
        wall = time.perf_counter() - started
    if code != 0 or not out.exists():
        tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
        raise RuntimeError(f"PyAirbyte run exited with code {code}:\n  " + "\n  ".join(tail))
    result = json.loads(out.read_text())
    shutil.rmtree(rundir, ignore_errors=True)
    records = sum(result["records"].values())
    others = meter.others(cpu)
    return (
        Run(result["read_seconds"], records, sampler.peak_mib, cpu, others, result),
        Run(wall, records, sampler.peak_mib, cpu, others, result),
    )


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


@dataclass
class Target:
    """Where Sluice loads: a DuckDB file, or a PostgreSQL database of the bench's own."""

    kind: str  # duckdb | postgres
    warehouse: Path
    dsn: str = ""

    @property
    def label(self) -> str:
        return "PostgreSQL" if self.kind == "postgres" else "DuckDB"

    def pyairbyte_cache(self) -> dict[str, Any] | None:
        """PostgresCache's settings for the same database, or None (a DuckDB cache)."""
        if self.kind != "postgres":
            return None
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(self.dsn)
        return {
            "host": params.get("host", "127.0.0.1"),
            "port": int(params.get("port", 5432)),
            "username": params.get("user", "postgres"),
            "password": params.get("password", "unused"),
            "database": params["dbname"],
        }


PG_DSN_ENV = "SLUICE_BENCH_PG_DSN"


@contextlib.contextmanager
def bench_database(admin_dsn: str) -> Iterator[str]:
    """A database of the bench's own on the server of ``admin_dsn``, dropped afterwards."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = f"sluice_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn, autocommit=True) as db:
        db.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_conninfo(**{**conninfo_to_dict(admin_dsn), "dbname": name})
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as db:
            db.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def write_connections(
    path: Path, faker: str, target: Target, config: dict[str, Any] | None = None
) -> None:
    """One connection, the same data as the bare read: every stream full_refresh + overwrite."""
    body = [
        "[[connections]]",
        f"id = {_toml(CONNECTION_ID)}",
        'backend = "local"',
        "",
        "[connections.source]",
        f"command = {_toml([faker])}",  # no `package`: nothing is installed
        f"config = {_toml(config or FAKER_CONFIG)}",
        "",
        "[connections.destination]",
        *(
            ['type = "postgres"', f"dsn_env = {_toml(PG_DSN_ENV)}"]
            if target.kind == "postgres"
            else ['type = "duckdb"', f"path = {_toml(str(target.warehouse))}"]
        ),
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


@dataclass
class DevServer:
    address: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def check(self) -> None:
        if self.process.poll() is not None:
            raise SystemExit(
                f"the Temporal dev server (pid {self.process.pid}) exited with code "
                f"{self.process.returncode} during the benchmark; not by this bench (another "
                f"process stopped it?); see {self.log_path}"
            )


@contextlib.contextmanager
def temporal_dev_server(workdir: Path) -> Iterator[DevServer]:
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
    log_path = workdir / "temporal.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    server = DevServer(address, process, log_path)
    try:
        deadline = time.monotonic() + 60
        while not is_listening(address):
            server.check()
            if time.monotonic() > deadline:
                raise SystemExit("the Temporal dev server did not listen within 60 s")
            time.sleep(0.1)
        yield server
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


class WorkerProcess:
    """``build_worker`` in a child process (``script --worker-child``; this file by default,
    whose ``worker_child`` other benches wrap)."""

    def __init__(
        self,
        settings: Settings,
        workdir: Path,
        profile_dir: Path | None,
        *,
        script: Path | None = None,
        extra_args: Sequence[str] = (),
        log_name: str | None = None,
    ) -> None:
        self.settings = settings
        default_log = "worker-profiled.log" if profile_dir else "worker.log"
        self.log_path = workdir / (log_name or default_log)
        argv = [
            sys.executable,
            str((script or Path(__file__)).resolve()),
            *extra_args,
            "--worker-child",
            "--state-dir",
            str(settings.state_dir),
            "--connections-file",
            str(settings.connections_file),
            "--address",
            settings.temporal_address,
            "--task-queue",
            settings.task_queue,
        ]
        if profile_dir is not None:
            argv += ["--profile-dir", str(profile_dir)]
        pythonpath = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(pythonpath)}
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
        while not await has_worker(client, self.settings):
            if self.process.poll() is not None:
                raise SystemExit(
                    f"the worker exited with code {self.process.returncode}; see {self.log_path}"
                )
            if time.monotonic() > deadline:
                raise SystemExit(f"the worker did not poll within {seconds:.0f} s")
            await asyncio.sleep(0.1)

    def stop(self) -> None:
        _stop(self.process, timeout=30)


async def sluice_sync(
    client: Client,
    settings: Settings,
    worker: WorkerProcess,
    server: DevServer,
    *,
    reset: bool,
    streams: list[str] | None = None,
) -> Run:
    """One SyncConnectionWorkflow run, timed from workflow start to result."""
    try:
        cpu_before = process_cpu(worker.pid)
        with Meter(server.process.pid) as meter, TreeSampler(worker.pid) as sampler:
            started = time.perf_counter()
            handle = await client.start_workflow(
                SyncConnectionWorkflow.run,
                SyncRequest(connection_id=CONNECTION_ID, reset=reset, streams=streams),
                id=f"bench-sync-{uuid.uuid4().hex[:12]}",
                task_queue=settings.task_queue,
                execution_timeout=timedelta(hours=2),
                result_type=SyncSummary,
            )
            summary = await handle.result()
            seconds = time.perf_counter() - started
            # The connector processes were reaped by the worker: their CPU is in its cutime.
            cpu = process_cpu(worker.pid) - cpu_before
        phases = await activity_phases(handle)
    except Exception:
        server.check()
        raise
    if summary.status != "succeeded" or not summary.verified_empty:
        raise SystemExit(f"Sluice run did not succeed cleanly: {summary}")
    phases["(Temporal server CPU s)"] = meter.server
    return Run(
        seconds,
        sum(summary.records.values()),
        sampler.peak_mib,
        cpu,
        meter.others(cpu),
        {
            "records": summary.records,
            "phases": phases,
            "connector_processes": len(sampler.descendants),
            "connector_seconds": sampler.seconds_by_verb(),
            "worker_memory": sampler.root_memory(started),
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
            attributes = event.activity_task_completed_event_attributes
            name, since = scheduled[attributes.scheduled_event_id]
            phases[name] = phases.get(name, 0.0) + (at - since).total_seconds()
    if first and last:
        total = (last - first).total_seconds()
        phases["(between activities)"] = total - sum(phases.values())
        phases["(history: first -> last event)"] = total
    return phases


def check_destination(target: Target, expected: Counter[str]) -> tuple[dict[str, int], list[str]]:
    tables_sql = "SELECT table_name FROM information_schema.tables WHERE table_schema = '{}'"
    counts = {}
    if target.kind == "postgres":
        import psycopg

        with psycopg.connect(target.dsn, autocommit=True) as pg:
            tables = [r[0] for r in pg.execute(tables_sql.format(CONNECTION_ID)).fetchall()]
            for stream in STREAMS:
                if stream in tables:
                    found = pg.execute(f'SELECT count(*) FROM "{CONNECTION_ID}"."{stream}"')
                    counts[stream] = int((found.fetchone() or (0,))[0])
    else:
        import duckdb

        with duckdb.connect(str(target.warehouse), read_only=True) as db:
            tables = [row[0] for row in db.execute(tables_sql.format("main")).fetchall()]
            for stream in STREAMS:
                if stream in tables:
                    row = db.execute(f'SELECT count(*) FROM "{stream}"').fetchone()
                    counts[stream] = int(row[0]) if row else 0
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

    configure_logging(os.environ.get("SLUICE_LOG_LEVEL", "WARNING"))  # as `sluice worker`
    settings = Settings(
        state_dir=args.state_dir,
        connections_file=args.connections_file,
        temporal_address=args.address,
        task_queue=args.task_queue,
    )
    loop_profile: cProfile.Profile | None = None
    if args.profile_dir is not None:
        # build_worker makes its activity executor from this module-level name.
        worker_module.ThreadPoolExecutor = _ProfilingExecutor  # type: ignore[misc]
        loop_profile = cProfile.Profile()
    client = await connect(settings, wait_seconds=60)
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


def format_profile(path: Path, title: str, limit: int) -> str:
    buffer = io.StringIO()
    stats = pstats.Stats(str(path), stream=buffer)
    stats.strip_dirs()
    buffer.write(f"\n== {title}: top {limit} by own time (tottime) ==\n")
    stats.sort_stats("tottime").print_stats(limit)
    buffer.write(f"\n== {title}: top {limit} by cumulative time ==\n")
    stats.sort_stats("cumulative").print_stats(limit)
    return buffer.getvalue()


# -- the benchmark --------------------------------------------------------------------------


def _say(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def _loadavg() -> str:
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


def _raise_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # so that the finally blocks stop our children


async def bench(args: argparse.Namespace) -> int:
    faker = str(Path(args.faker).resolve())
    if not os.access(faker, os.X_OK):
        raise SystemExit(f"not an executable: {faker}")
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    workdir = Path(tempfile.mkdtemp(prefix="sluice-bench-"))
    started = time.perf_counter()
    _say(f"work dir {workdir}; connector {faker}; load average {_loadavg()}")
    keep = args.keep
    try:
        return await _bench(args, faker, workdir)
    except BaseException:
        keep = True  # its logs tell what went wrong
        raise
    finally:
        _say(f"total bench time {time.perf_counter() - started:.0f} s")
        if keep:
            _say(f"kept {workdir} (logs: temporal.log, worker.log, pyairbyte.log)")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


async def _bench(args: argparse.Namespace, faker: str, workdir: Path) -> int:
    if args.counts:
        return await growth(args, faker, workdir)
    if args.destination != "postgres":
        target = Target("duckdb", workdir / "warehouse.duckdb")
        return await _bench_into(args, faker, workdir, target)
    with bench_database(args.postgres_dsn) as dsn:
        os.environ[PG_DSN_ENV] = dsn  # the worker child reads it
        return await _bench_into(args, faker, workdir, Target("postgres", workdir, dsn))


async def _bench_into(args: argparse.Namespace, faker: str, workdir: Path, target: Target) -> int:
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
    cold = Measured("Sluice cold, reset=true (worker's 1st run)")
    warm = Measured("Sluice warm, reset=true")
    cached = Measured("Sluice warm, reset=false (same data)")
    pyab = Measured("PyAirbyte source.read() (in script)")
    pyab_wall = Measured("PyAirbyte subprocess wall")
    pyab_error: str | None = None
    pyab_python = args.pyairbyte_python
    if not pyab_python or not Path(pyab_python).exists():
        pyab_error = f"PyAirbyte virtual environment missing ({pyab_python}); run bench/run"

    connections = workdir / "connections.toml"
    write_connections(connections, faker, target)
    profile_dir = workdir / "profile"
    destination_check: dict[str, Any] = {}
    profile_text = ""
    idle_mib = worker_hwm_mib = 0.0

    with temporal_dev_server(workdir) as server:
        settings = Settings(
            state_dir=workdir / "sluice-state",
            connections_file=connections,
            temporal_address=server.address,
            task_queue=f"bench-{uuid.uuid4().hex[:8]}",
        )
        client = await connect(settings, wait_seconds=60)
        server_pid = server.process.pid
        _say(f"Temporal dev server on {server.address} (pid {server_pid})")
        worker = WorkerProcess(settings, workdir, None)
        try:
            await worker.wait_polling(client)
            idle_mib = sum(_memory_kib(pid)[0] for pid in _tree(worker.pid)) / 1024
            _say(f"worker polling (child process {worker.pid}, {idle_mib:.0f} MiB RSS idle)")
            run = await sluice_sync(client, settings, worker, server, reset=True)
            cold.runs.append(run)
            _say(f"Sluice cold: {run.seconds:.2f} s")
            for number in range(1, args.repeat + 1):
                run = bare_read(faker, config, catalog, total_expected, server_pid)
                bare.runs.append(run)
                _say(f"round {number}: bare read {run.seconds:.2f} s")
                run = await sluice_sync(client, settings, worker, server, reset=True)
                warm.runs.append(run)
                _say(f"round {number}: Sluice warm, reset=true {run.seconds:.2f} s")
                run = await sluice_sync(client, settings, worker, server, reset=False)
                cached.runs.append(run)
                _say(f"round {number}: Sluice warm, reset=false {run.seconds:.2f} s")
                if pyab_error is None:
                    try:
                        read, whole = pyairbyte_read(
                            pyab_python,
                            faker,
                            config,
                            workdir,
                            server_pid,
                            target.pyairbyte_cache(),
                        )
                    except RuntimeError as exc:
                        pyab_error = str(exc)
                    else:
                        pyab.runs.append(read)
                        pyab_wall.runs.append(whole)
                        _say(
                            f"round {number}: PyAirbyte read {read.seconds:.2f} s "
                            f"(subprocess {whole.seconds:.2f} s)"
                        )
            worker_hwm_mib = _memory_kib(worker.pid)[1] / 1024
            counts, problems = check_destination(target, expected)
            destination_check = {"counts": counts, "problems": problems}
        finally:
            worker.stop()

        ratio = warm.seconds / bare.seconds
        if args.profile == "always" or (args.profile == "auto" and ratio > TARGET_SLUICE_OVER_BARE):
            _say("profiling the worker side: one more Sluice run (reset=true) under cProfile")
            profiled = WorkerProcess(settings, workdir, profile_dir)
            try:
                await profiled.wait_polling(client)
                run = await sluice_sync(client, settings, profiled, server, reset=True)
                _say(f"profiled Sluice run: {run.seconds:.2f} s (cProfile overhead included)")
            finally:
                profiled.stop()
            for name, title in (
                ("activities.prof", "worker activities (thread pool)"),
                ("event-loop.prof", "worker event loop (Temporal SDK)"),
            ):
                if (profile_dir / name).exists():
                    profile_text += format_profile(profile_dir / name, title, args.profile_top)
            if args.profile_out:
                args.profile_out.mkdir(parents=True, exist_ok=True)
                for prof in profile_dir.glob("*.prof"):
                    shutil.copy(prof, args.profile_out / prof.name)

    rows = [bare, cold, warm, cached, pyab, pyab_wall]
    notes = {
        "destination": target.label,
        "worker idle RSS MiB": idle_mib,
        "worker peak RSS MiB (VmHWM)": worker_hwm_mib,
        "batch_records": settings.batch_records,
    }
    problems = report(rows, expected, discover_seconds, destination_check, pyab_error, notes)
    if profile_text:
        print(profile_text)
    save(rows, expected, discover_seconds, destination_check, pyab_error, notes)
    return 1 if problems else 0


# -- growth: the same benchmark at several sizes ----------------------------------------------

TARGET_GROWTH_RATIO = 1.10
TARGET_RSS_GROWTH = 0.20


@dataclass
class SizeResult:
    count: int
    records: int
    expected_from: str
    bare: Measured
    sluice: Measured
    worker_idle_mib: float
    worker_hwm_mib: float
    tree_peak_mib: float
    problems: list[str]

    @property
    def ratio(self) -> float:
        return self.sluice.seconds / self.bare.seconds


def expected_counts(
    faker: str, config: Path, catalog: Path, count: int, measure: bool
) -> tuple[Counter[str], str]:
    """Records per stream: counted in an untimed read, or (for the sizes where that read would
    cost minutes) source-faker's own arithmetic, which the counted sizes confirm: `count` users,
    `count` purchases, 100 products."""
    if measure:
        return count_records(faker, config, catalog), "counted (untimed read)"
    return Counter(
        {"users": count, "purchases": count, "products": 100}
    ), "users = purchases = count"


async def growth(args: argparse.Namespace, faker: str, workdir: Path) -> int:
    """The sync benchmark at each faker count of --counts: a fresh worker child per size (its
    VmHWM is that size's peak), a primed catalog cache, then rounds of bare read / Sluice."""
    counts = [int(c) for c in args.counts.split(",")]
    results: list[SizeResult] = []
    with temporal_dev_server(workdir) as server:
        # One state dir for every size: the payload keys live there, and the client's must be
        # the workers'. Each size has its own connections file, warehouse and task queue.
        state_dir = workdir / "sluice-state"
        client = await connect(
            Settings(temporal_address=server.address, state_dir=state_dir), wait_seconds=60
        )
        server_pid = server.process.pid
        _say(f"Temporal dev server on {server.address} (pid {server_pid}); sizes {counts}")
        for count in counts:
            sizedir = workdir / f"count-{count}"
            sizedir.mkdir()
            faker_config = {**FAKER_CONFIG, "count": count}
            config = sizedir / "config.json"
            config.write_text(json.dumps(faker_config))
            catalog, _ = discover_catalog(faker, config, sizedir)
            expected, expected_from = expected_counts(
                faker, config, catalog, count, measure=count <= args.count_max
            )
            total = sum(expected.values())
            target = Target("duckdb", sizedir / "warehouse.duckdb")
            connections = sizedir / "connections.toml"
            write_connections(connections, faker, target, faker_config)
            settings = Settings(
                state_dir=state_dir,
                connections_file=connections,
                temporal_address=server.address,
                task_queue=f"bench-{uuid.uuid4().hex[:8]}",
            )
            repeat = args.repeat if count < args.large_from else args.repeat_large
            bare = Measured(f"bare read, count={count}")
            sluice = Measured(f"Sluice warm reset=true, count={count}")
            worker = WorkerProcess(settings, sizedir, None)
            try:
                await worker.wait_polling(client)
                # One small run (products only) discovers and caches this config's catalog and
                # warms the worker up, as a worker that has run before is.
                await sluice_sync(
                    client, settings, worker, server, reset=True, streams=["products"]
                )
                idle = _memory_kib(worker.pid)[0] / 1024
                for number in range(1, repeat + 1):
                    bare.runs.append(bare_read(faker, config, catalog, total, server_pid))
                    sluice.runs.append(
                        await sluice_sync(client, settings, worker, server, reset=True)
                    )
                    _say(
                        f"count={count} round {number}/{repeat}: bare "
                        f"{bare.runs[-1].seconds:.1f} s, "
                        f"Sluice {sluice.runs[-1].seconds:.1f} s (worker VmHWM so far "
                        f"{_memory_kib(worker.pid)[1] / 1024:.0f} MiB)"
                    )
                hwm = _memory_kib(worker.pid)[1] / 1024
                _, problems = check_destination(target, expected)
            finally:
                worker.stop()
            summary_records = sluice.runs[-1].extra["records"]
            if summary_records != dict(expected):
                problems.append(f"Sluice's summary {summary_records} != expected {dict(expected)}")
            results.append(
                SizeResult(
                    count,
                    total,
                    expected_from,
                    bare,
                    sluice,
                    idle,
                    hwm,
                    max(r.peak_mib for r in sluice.runs),
                    problems,
                )
            )
    return growth_report(results)


def load_growth(path: Path) -> list[SizeResult]:
    """The results a growth run saved, to print their report again (``--report-from``)."""

    def measured(item: dict[str, Any]) -> Measured:
        return Measured(item["label"], [Run(**run) for run in item["runs"]])

    return [
        SizeResult(**{**item, "bare": measured(item["bare"]), "sluice": measured(item["sluice"])})
        for item in json.loads(path.read_text())
    ]


def growth_report(results: list[SizeResult], save: bool = True) -> int:
    print()
    print(
        f"source-faker {json.dumps({k: v for k, v in FAKER_CONFIG.items() if k != 'count'})}, "
        f"count as below; all three streams full_refresh; Sluice into DuckDB; "
        f"{os.cpu_count()} CPUs; load average now {_loadavg()}"
    )
    header = (
        "| records | runs | bare read s | Sluice s | bare records/s | Sluice records/s | "
        "Sluice / bare | CPU s bare / Sluice | CPU ratio | worker idle MiB | worker peak MiB "
        "(VmHWM) | worker + connector peak MiB | others' CPU s (bare / Sluice) |"
    )
    print(header)
    print("| " + " | ".join(["---:"] * (header.count("|") - 1)) + " |")
    problems: list[str] = []
    for r in results:
        cpu_bare = r.bare.median(lambda x: x.cpu_seconds)
        cpu_sluice = r.sluice.median(lambda x: x.cpu_seconds)
        print(
            f"| {r.records:,} | {len(r.sluice.runs)} | {r.bare.seconds:.2f} | "
            f"{r.sluice.seconds:.2f} | "
            f"{r.records / r.bare.seconds:,.0f} | {r.records / r.sluice.seconds:,.0f} | "
            f"{r.ratio:.2f} | {cpu_bare:.1f} / {cpu_sluice:.1f} | {cpu_sluice / cpu_bare:.2f}"
            f" | {r.worker_idle_mib:.0f} | {r.worker_hwm_mib:.0f} | "
            f"{r.tree_peak_mib:.0f} | {r.bare.median(lambda x: x.other_cpu):.1f} / "
            f"{r.sluice.median(lambda x: x.other_cpu):.1f} |"
        )
        problems += [f"count={r.count}: {p}" for p in r.problems]
    print()
    for r in results:
        print(
            f"  count={r.count}: runs s: bare "
            + " ".join(f"{x.seconds:.2f}" for x in r.bare.runs)
            + "; Sluice "
            + " ".join(f"{x.seconds:.2f}" for x in r.sluice.runs)
            + f"; expected records: {r.expected_from}"
        )
    print()
    worst = max(r.ratio for r in results)
    mark = "ok" if worst <= TARGET_GROWTH_RATIO else "MISSED"
    print(f"Sluice / bare read, worst size: {worst:.2f} (target <= {TARGET_GROWTH_RATIO}) {mark}")
    growth_rss = results[-1].worker_hwm_mib / results[0].worker_hwm_mib - 1
    mark = "ok" if growth_rss <= TARGET_RSS_GROWTH else "MISSED"
    print(
        f"worker peak RSS, largest / smallest size: {growth_rss:+.0%} "
        f"(target within {TARGET_RSS_GROWTH:.0%}) {mark}"
    )
    print("Worker memory in each Sluice run (the worker process alone, sampled every 50 ms):")
    for r in results:
        for number, run in enumerate(r.sluice.runs, 1):
            memory = run.extra.get("worker_memory") or {}
            print(
                f"  count={r.count} run {number}: "
                + ", ".join(f"{k} {v:.0f}" for k, v in memory.items())
            )
    print("Sluice runs, seconds per activity (workflow history), median run of each size:")
    for r in results:
        phases = r.sluice.runs[len(r.sluice.runs) // 2].extra["phases"]
        print(f"  count={r.count}: " + ", ".join(f"{k} {v:.2f}" for k, v in phases.items()))
    print("  MISMATCH: " + "; ".join(problems) if problems else "Counts: ok at every size")
    if not save:
        return 1 if problems else 0
    results_dir = REPO / "bench" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"growth-{datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps([asdict(r) for r in results], indent=2, default=str))
    print(f"results written to {path.relative_to(REPO)}")
    return 1 if problems else 0


def report(
    rows: list[Measured],
    expected: Counter[str],
    discover_seconds: float,
    destination_check: dict[str, Any],
    pyab_error: str | None,
    notes: dict[str, Any],
) -> list[str]:
    bare, cold, warm, cached, pyab, pyab_wall = rows
    print()
    print(
        f"source-faker {json.dumps(FAKER_CONFIG)}; streams {', '.join(STREAMS)} "
        f"(full_refresh); Sluice into {notes['destination']}, "
        f"batch_records={notes['batch_records']}; {os.cpu_count()} CPUs; "
        f"load average now {_loadavg()}"
    )
    print(
        f"bare `discover` alone (untimed setup step): {discover_seconds:.2f} s; the bare read "
        f"runs {bare.runs[0].extra['processes']} processes (source-faker forks); the Sluice "
        f"worker process alone: {notes['worker idle RSS MiB']:.0f} MiB RSS idle, "
        f"{notes['worker peak RSS MiB (VmHWM)']:.0f} MiB peak (VmHWM, over all its runs)"
    )
    print()
    print(_table(rows))
    timed = [r for m in rows[:4] + rows[5:] for r in m.runs]
    busy = sum(r.other_cpu for r in timed) / sum(r.seconds * (os.cpu_count() or 1) for r in timed)
    if busy > 0.1:
        print(
            f"WARNING: other processes kept {busy:.0%} of the machine's CPU busy during the "
            'measurements (see "others\' CPU s"): the times are inflated; rerun when it is idle'
        )
    print()
    print("Ratios (medians):")
    ratio = warm.seconds / bare.seconds
    mark = "ok" if ratio <= TARGET_SLUICE_OVER_BARE else "MISSED"
    print(
        f"  Sluice warm (reset=true) / bare read   = {ratio:.2f}  "
        f"(target <= {TARGET_SLUICE_OVER_BARE}) {mark}"
    )
    print(f"  Sluice cold (reset=true) / bare read   = {cold.seconds / bare.seconds:.2f}")
    print(f"  Sluice warm (reset=false) / bare read  = {cached.seconds / bare.seconds:.2f}")
    if pyab.runs:
        pyratio = pyab.seconds / warm.seconds
        mark = "ok" if pyratio > TARGET_PYAIRBYTE_OVER_SLUICE else "MISSED"
        print(
            f"  PyAirbyte read() / Sluice warm         = {pyratio:.2f}  "
            f"(target > {TARGET_PYAIRBYTE_OVER_SLUICE:g}) {mark}"
        )
        print(f"  PyAirbyte subprocess / Sluice warm     = {pyab_wall.seconds / warm.seconds:.2f}")
    if pyab_error:
        print(f"  PyAirbyte: not measured: {pyab_error}")
    print()
    print("Sluice runs, seconds per activity (workflow history: scheduled -> completed):")
    runs = [("cold", cold.runs[0])]
    runs += [(f"warm{i}", r) for i, r in enumerate(warm.runs, 1)]
    runs += [(f"noreset{i}", r) for i, r in enumerate(cached.runs, 1)]
    table: dict[str, list[str]] = {}
    for name in dict.fromkeys(n for _, r in runs for n in r.extra["phases"]):
        table[name] = [f"{r.extra['phases'].get(name, 0.0):.2f}" for _, r in runs]
    verbs = dict.fromkeys(v for _, r in runs for v in r.extra["connector_seconds"])
    for verb in verbs:
        table[f"connector `{verb}` process alive"] = [
            f"{r.extra['connector_seconds'].get(verb, 0.0):.2f}" for _, r in runs
        ]
    table["wall - connector processes alive"] = [
        f"{r.seconds - sum(r.extra['connector_seconds'].values()):.2f}" for _, r in runs
    ]
    table["processes (connector + its forks)"] = [
        str(r.extra["connector_processes"]) for _, r in runs
    ]
    width = max(len(n) for n in table)
    print("  " + " " * width + "".join(f"{label:>9}" for label, _ in runs))
    for name, values in table.items():
        print(f"  {name:<{width}}" + "".join(f"{v:>9}" for v in values))
    print()
    counts = destination_check.get("counts", {})
    problems = list(destination_check.get("problems", ["destination not checked"]))
    print(f"Counts: the bare read emitted {dict(expected)}")
    print(f"        Sluice's {notes.get('destination', 'DuckDB')} tables hold {counts}")
    if pyab.runs:
        print(f"        PyAirbyte's cache holds {pyab.runs[0].extra['records']}")
        if pyab.runs[0].extra["records"] != dict(expected):
            problems.append("PyAirbyte's cache does not hold what the bare read emitted")
    print("  MISMATCH: " + "; ".join(problems) if problems else "  ok: same records everywhere")
    return problems


def save(
    rows: list[Measured],
    expected: Counter[str],
    discover_seconds: float,
    destination_check: dict[str, Any],
    pyab_error: str | None,
    notes: dict[str, Any],
) -> None:
    results_dir = REPO / "bench" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"sync-{datetime.now():%Y%m%d-%H%M%S}.json"
    medians = {m.label: m.seconds for m in rows if m.runs}
    document = {
        "config": FAKER_CONFIG,
        "discover_seconds": discover_seconds,
        "expected": dict(expected),
        "medians": medians,
        "measurements": {m.label: [asdict(r) for r in m.runs] for m in rows},
        "destination_check": destination_check,
        "pyairbyte_error": pyab_error,
        "notes": notes,
    }
    path.write_text(json.dumps(document, indent=2, default=str))
    print(f"results written to {path.relative_to(REPO)}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
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
    parser.add_argument(
        "--counts",
        help="growth: run at each of these faker counts (e.g. 20000,200000,1000000): bare read "
        "and Sluice warm only, a fresh worker per size, its peak RSS",
    )
    parser.add_argument(
        "--large-from",
        type=int,
        default=1_000_000,
        help="growth: counts from this one up run --repeat-large rounds (default 1,000,000)",
    )
    parser.add_argument("--repeat-large", type=int, default=1, help="growth: rounds, large sizes")
    parser.add_argument(
        "--report-from", type=Path, help="growth: print the report of a saved growth-*.json"
    )
    parser.add_argument(
        "--count-max",
        type=int,
        default=200_000,
        help="growth: counts up to this one are checked against an untimed counting read",
    )
    parser.add_argument(
        "--destination",
        choices=["duckdb", "postgres"],
        default="duckdb",
        help="where Sluice loads (and PyAirbyte caches): DuckDB, or PostgreSQL",
    )
    parser.add_argument(
        "--postgres-dsn",
        default="host=127.0.0.1 port=5432 user=postgres dbname=postgres",
        help="--destination postgres: a server where the bench may create a database",
    )
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
    if args.report_from:
        return growth_report(load_growth(args.report_from), save=False)
    if not args.faker:
        args.faker = find_faker()
    return asyncio.run(bench(args))


if __name__ == "__main__":
    sys.exit(main())
