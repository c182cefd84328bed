"""Fleet benchmark: total records/s of 1, 2 and 3 worker processes on the same nine connections.

A benchmark, not a test: run it by hand, ``.venv/bin/python bench/bench_fleet.py``. One run
starts, once for every measurement:

- a Temporal dev server (``WorkflowEnvironment.start_local``, as the test suite starts it);
- one moto S3 server in a child process (``bench/purge_servers.py``, the suite's server: one
  request at a time), where staging and retained logs go, in a plain bucket;

and then, for each number of workers, on a fresh database of the local PostgreSQL
(127.0.0.1:5432, trust auth; the metadata store and the destination, created and dropped here):
that many ``sluice worker`` processes, each with a state dir of its own, as tests/test_fleet.py
starts them (``tests.support.processes.worker_process``), and the nine connections of the fleet
test (``tests.test_fleet.fleet_connections``: source-faker with seeds 1..9 and different counts,
``users`` incremental + append_dedup and ``products`` full_refresh + overwrite, into
PostgreSQL) started at once. The time is from the first start to the last result; records are
the runs' summaries; every run must succeed with its staging purged and verified, and every
``users`` table must hold each user exactly once, or the bench exits 1.

The machine the figures in bench/README.md come from has 2 cores: more workers share them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import boto3  # noqa: E402
from temporalio.api.enums.v1 import TaskQueueType  # noqa: E402
from temporalio.api.taskqueue.v1 import TaskQueue  # noqa: E402
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest  # noqa: E402
from temporalio.client import Client  # noqa: E402
from temporalio.testing import WorkflowEnvironment  # noqa: E402

from bench.bench_sync import machine_busy_cpu, process_cpu  # noqa: E402
from tests.support.postgres import scratch_database  # noqa: E402
from tests.support.processes import free_port, worker_process  # noqa: E402
from tests.support.session import CONNECTORS_DIR  # noqa: E402
from tests.test_fleet import count_rows, distinct_ids, fleet_connections  # noqa: E402
from workers.cli import start_sync  # noqa: E402
from workers.codec import data_converter, new_key_spec, parse_keys  # noqa: E402
from workers.connections import SourceConfig  # noqa: E402
from workers.connectors.executors import ConnectorInstaller  # noqa: E402
from workers.devserver import temporal_cli  # noqa: E402
from workers.settings import Settings  # noqa: E402
from workflows.models import SyncRequest  # noqa: E402

FAKER = SourceConfig(package="airbyte-source-faker==7.2.1", command=["source-faker"])
REGION = "us-east-1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
CONNECTIONS = 9


@dataclass
class Measurement:
    workers: int
    seconds: float
    records: int
    machine_cpu: float  # busy CPU seconds of the whole machine (every core) during the run
    sluice_cpu: float  # of the worker processes and the connectors they ran

    @property
    def rate(self) -> float:
        return self.records / self.seconds


# -- the services ------------------------------------------------------------------------------


@contextlib.contextmanager
def moto_server(workdir: Path) -> Iterator[str]:
    """bench/purge_servers.py's moto (the suite's server) in a child process; its URL."""
    port = free_port()
    log = open(workdir / "moto.log", "wb")  # noqa: SIM115 - the child keeps it until stopped
    process = subprocess.Popen(
        [sys.executable, str(REPO / "bench" / "purge_servers.py"), "s3", str(port)],
        stdout=subprocess.PIPE,
        stderr=log,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != b"ready":
            raise SystemExit(f"the moto server did not start; see {workdir / 'moto.log'}")
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(process)
        log.close()


def _stop(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def wait_for_pollers(client: Client, task_queue: str, count: int, seconds: float) -> None:
    """Until `count` worker processes poll both the workflow and the activity task queue."""
    deadline = time.monotonic() + seconds
    kinds = (TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY)
    while True:
        polling = []
        for kind in kinds:
            answer = await client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace=client.namespace,
                    task_queue=TaskQueue(name=task_queue),
                    task_queue_type=kind,
                )
            )
            polling.append(len({poller.identity for poller in answer.pollers}))
        if min(polling) >= count:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"{count} workers did not all poll within {seconds:.0f} s")
        await asyncio.sleep(0.2)


# -- one measurement -----------------------------------------------------------------------------


async def measure(
    env: WorkflowEnvironment,
    workdir: Path,
    faker: str,
    counts: list[int],
    workers: int,
    s3_endpoint: str,
    bucket: str,
    payload_keys: str,
) -> Measurement:
    """`workers` worker processes, the nine connections started at once, timed to the last
    result; checked like the fleet test checks them."""
    label = f"w{workers}-{uuid.uuid4().hex[:6]}"
    here = workdir / label
    here.mkdir()
    connections_file = here / "connections.toml"
    connections_file.write_text(fleet_connections(faker, counts), encoding="utf-8")
    with scratch_database("sluice_bench_fleet") as database:
        dsn = f"postgresql://postgres@127.0.0.1:5432/{database}"
        extra_env = {
            **CREDENTIALS,
            "AWS_ENDPOINT_URL": s3_endpoint,
            "AWS_REGION": REGION,
            "SLUICE_STAGING_URI": f"s3://{bucket}/{label}/staging/",
            "SLUICE_LOG_STORE": f"s3://{bucket}/{label}/logs/",
            "SLUICE_METADATA_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}",
            "FLEET_DSN": dsn,
        }
        task_queue = f"bench-fleet-{label}"
        processes: list[subprocess.Popen[bytes]] = []
        try:
            for number in range(workers):
                host = here / f"host{number}"
                host.mkdir()
                settings = Settings(
                    state_dir=host / "state",
                    connectors_dir_override=host / "connectors",
                    connections_file=connections_file,
                    task_queue=task_queue,
                    payload_keys=payload_keys,
                )
                processes.append(
                    worker_process(settings, env, host / "worker.log", extra_env=extra_env)
                )
            await wait_for_pollers(env.client, task_queue, workers, seconds=120)
            client_settings = Settings(
                connections_file=connections_file, task_queue=task_queue, payload_keys=payload_keys
            )
            busy_before = machine_busy_cpu()
            cpu_before = sum(process_cpu(process.pid) for process in processes)
            started = time.perf_counter()
            handles = await asyncio.gather(
                *(
                    start_sync(env.client, client_settings, SyncRequest(connection_id=f"shop{i}"))
                    for i in range(len(counts))
                )
            )
            summaries = await asyncio.wait_for(
                asyncio.gather(*(handle.result() for handle in handles)), timeout=1800
            )
            seconds = time.perf_counter() - started
            machine_cpu = machine_busy_cpu() - busy_before
            # The connectors were reaped by their worker: their CPU is in its cutime.
            sluice_cpu = sum(process_cpu(process.pid) for process in processes) - cpu_before
        finally:
            for process in processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in processes:
                _stop(process)
        problems = []
        for index, (count, summary) in enumerate(zip(counts, summaries, strict=True)):
            schema = f"shop{index}"
            if summary.status != "succeeded" or not summary.verified_empty:
                problems.append(f"{schema}: {summary.status}, verified {summary.verified_empty}")
            elif not count_rows(dsn, schema, "users") == count == distinct_ids(dsn, schema):
                problems.append(f"{schema}: users rows differ from the {count} the source made")
        if problems:
            raise SystemExit(f"{workers} workers: " + "; ".join(problems) + f" (see {here})")
        records = sum(sum(summary.records.values()) for summary in summaries)
    return Measurement(workers, seconds, records, machine_cpu, sluice_cpu)


# -- the report ------------------------------------------------------------------------------


def table(rows: Sequence[Measurement], repeat: int) -> str:
    by_workers: dict[int, list[Measurement]] = {}
    for row in rows:
        by_workers.setdefault(row.workers, []).append(row)
    lines = [
        "| workers | wall s | records | records/s | vs 1 worker | Sluice CPU s "
        "| machine busy CPU s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    one = statistics.median(r.rate for r in by_workers.get(1, [])) if 1 in by_workers else None
    for workers, measured in sorted(by_workers.items()):
        wall = statistics.median(r.seconds for r in measured)
        rate = statistics.median(r.rate for r in measured)
        walls = ", ".join(f"{r.seconds:.1f}" for r in measured)
        ratio = f"{rate / one:.2f}x" if one else "-"
        lines.append(
            f"| {workers} | {wall:.1f}" + (f" ({walls})" if repeat > 1 else "") + " | "
            f"{measured[0].records:,} | {rate:,.0f} | {ratio} | "
            f"{statistics.median(r.sluice_cpu for r in measured):.1f} | "
            f"{statistics.median(r.machine_cpu for r in measured):.1f} |"
        )
    return "\n".join(lines)


async def bench(args: argparse.Namespace) -> int:
    faker = args.faker or ConnectorInstaller(CONNECTORS_DIR).argv(FAKER)[0]
    counts = [args.base_count + args.step * index for index in range(CONNECTIONS)]
    worker_counts = [int(part) for part in args.workers.split(",")]
    payload_keys = new_key_spec("bench")
    cores = os.cpu_count()
    slots = os.environ.get("SLUICE_MAX_CONCURRENT_ACTIVITIES", "8 (default)")
    print(
        f"fleet bench: {CONNECTIONS} connections, users counts {counts[0]:,}..{counts[-1]:,}; "
        f"workers {worker_counts}, {args.repeat} round(s); {cores} cores; "
        f"SLUICE_MAX_CONCURRENT_ACTIVITIES={slots}",
        flush=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="sluice-bench-fleet-"))
    rows: list[Measurement] = []
    try:
        with moto_server(workdir) as s3_endpoint:
            bucket = f"sluice-bench-fleet-{uuid.uuid4().hex[:8]}"
            boto3.session.Session(
                region_name=REGION,
                aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            ).client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
            env = await WorkflowEnvironment.start_local(
                data_converter=data_converter(parse_keys(payload_keys)),
                dev_server_existing_path=temporal_cli(),
                port=free_port(),
                ui=False,
                dev_server_log_level="error",
            )
            try:
                for round_ in range(args.repeat):
                    for workers in worker_counts:
                        row = await measure(
                            env, workdir, faker, counts, workers, s3_endpoint, bucket, payload_keys
                        )
                        rows.append(row)
                        print(
                            f"round {round_ + 1}, {workers} worker(s): {row.seconds:.1f} s, "
                            f"{row.records:,} records, {row.rate:,.0f} records/s, Sluice CPU "
                            f"{row.sluice_cpu:.1f} s, machine busy CPU {row.machine_cpu:.1f} s; "
                            f"load {os.getloadavg()[0]:.1f}",
                            flush=True,
                        )
            finally:
                await env.shutdown()
    except BaseException:
        print(f"work dir kept: {workdir}", file=sys.stderr)
        raise
    print()
    print(table(rows, args.repeat))
    print(
        f"\n{cores} cores on this machine: every worker, its connectors, the Temporal dev server, "
        "moto and PostgreSQL share them."
    )
    if args.json:
        args.json.write_text(json.dumps([row.__dict__ for row in rows], indent=2))
    if not args.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"work dir kept: {workdir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--faker", help="a source-faker executable (default: install 7.2.1 once)")
    parser.add_argument("--workers", default="1,2,3", help="worker counts (default 1,2,3)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds (default 1)")
    parser.add_argument(
        "--base-count", type=int, default=10_000, help="users of the first connection"
    )
    parser.add_argument(
        "--step", type=int, default=1_000, help="users added per further connection"
    )
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    parser.add_argument("--keep", action="store_true", help="keep the work dir and its logs")
    return asyncio.run(bench(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
