"""Where the worker's memory grows with a sync's size: the DuckDB destination's loads, alone.

A benchmark, not a test: ``.venv/bin/python bench/bench_duckdb_memory.py`` (about 3 minutes
on 2 cores). Each measurement is a child process (a fresh interpreter, so its peak RSS, VmHWM,
is its own) that loads N records of a users-like stream (17 columns, as source-faker's
``users``) into ``DuckDBDestination`` as a sync does: batches of 10,000 records in gzip NDJSON
files, one ``commit`` each, into the run-scoped table of an overwrite stream, which replaces
the live table at the last commit. It reports the peak RSS and the memory DuckDB accounts for
(``duckdb_memory()``) after the last commit. The variants, each at every size:

- ``growing``: the sync's own load, into a table that grows to N rows;
- ``emptied``: the same loads, but the run-scoped table is emptied after each commit, so every
  load goes into a table of at most 10,000 rows: what the loads cost apart from the table's size;
- ``limit=M``: ``growing`` with DuckDB's ``memory_limit`` at M instead of the default
  (``SLUICE_DUCKDB_MEMORY_LIMIT``, 512MB);
- ``wide``: ``growing`` with 200 more string columns (217 in all), at the smallest size and with
  each limit, to show what a small limit costs a wide stream.

Records are generated in the child, outside the timed loads' memory (one batch at a time).
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

BATCH = 10_000
PROPERTIES: dict[str, Any] = {
    "id": {"type": "integer"},
    "created_at": {"type": "string", "format": "date-time"},
    "updated_at": {"type": "string", "format": "date-time"},
    "name": {"type": "string"},
    "title": {"type": "string"},
    "age": {"type": "integer"},
    "email": {"type": "string"},
    "telephone": {"type": "string"},
    "gender": {"type": "string"},
    "language": {"type": "string"},
    "academic_degree": {"type": "string"},
    "nationality": {"type": "string"},
    "occupation": {"type": "string"},
    "height": {"type": "string"},
    "blood_type": {"type": "string"},
    "weight": {"type": "integer"},
    "address": {
        "type": "object",
        "properties": {"street_number": {"type": "string"}, "city": {"type": "string"}},
    },
}


def _status_mib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    return 0


def _record(number: int, wide: int) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": number,
        "created_at": "2020-01-01T00:00:00+00:00",
        "updated_at": f"2021-01-01T00:00:{number % 60:02d}+00:00",
        "name": f"name {number}",
        "title": "Dr.",
        "age": number % 90,
        "email": f"user{number}@example.com",
        "telephone": "+1-555-0100",
        "gender": "Other",
        "language": "English",
        "academic_degree": "PhD",
        "nationality": "Chilean",
        "occupation": "Engineer",
        "height": "1.80",
        "blood_type": "O+",
        "weight": 70,
        "address": {"street_number": str(number), "city": "Springfield"},
    }
    data.update({f"extra_{k}": f"value {k} of {number}" for k in range(wide)})
    message = {"stream": "users", "data": data, "emitted_at": 1_700_000_000_000}
    return {"type": "RECORD", "record": message}


def child(records: int, variant: str, limit: str, wide: int, work: Path) -> None:
    """In the child: load, then print one JSON line."""
    from workers.destinations.base import StreamTable
    from workers.destinations.duckdb import DuckDBDestination

    properties = {**PROPERTIES, **{f"extra_{k}": {"type": "string"} for k in range(wide)}}
    destination = DuckDBDestination(work / "bench.duckdb", "bench", limit)
    stream = StreamTable(
        name="users",
        namespace=None,
        columns=destination.columns(properties),
        mode="overwrite",
        replace=True,
        run_suffix="run1",
    )
    destination.prepare([stream], "run1")
    rss_before = _status_mib("VmRSS")
    started = time.perf_counter()
    for first in range(0, records, BATCH):
        last = first + BATCH >= records
        path = work / "batch.jsonl.gz"
        with gzip.open(path, "wt", compresslevel=1) as batch:
            for number in range(first, min(records, first + BATCH)):
                batch.write(json.dumps(_record(number, wide)) + "\n")
        destination.commit(
            {"users": [path]},
            {"users": stream},
            [],
            "run1",
            replace=[stream] if last else [],
            counts={"users": min(BATCH, records - first)},
        )
        if variant == "emptied" and not last:
            destination._db.execute(f"DELETE FROM main.{stream.load_table_name}")
            destination._db.execute("CHECKPOINT")
    seconds = time.perf_counter() - started
    accounted = destination._db.execute(
        "SELECT sum(memory_usage_bytes) // 1048576 FROM duckdb_memory()"
    ).fetchone()
    destination.close()
    print(
        json.dumps(
            {
                "seconds": seconds,
                "rss_before_mib": rss_before,
                "hwm_mib": _status_mib("VmHWM"),
                "duckdb_mib": int(accounted[0]) if accounted and accounted[0] is not None else 0,
            }
        )
    )


def measure(records: int, variant: str, limit: str, wide: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sluice-bench-duckdb-") as work:
        argv = [sys.executable, __file__, "--child", str(records), variant, limit, str(wide), work]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if "Error" in line]
        return {"error": (errors[-1].strip() if errors else f"exit {done.returncode}")[:120]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20000,200000,1000000", help="records of the stream")
    parser.add_argument("--limits", default="128MB,64MB", help="memory_limit variants")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        records, variant, limit, wide, work = args.child
        child(int(records), variant, limit, int(wide), Path(work))
        return 0
    sizes = [int(size) for size in args.sizes.split(",")]
    limits = [limit for limit in args.limits.split(",") if limit]
    cases = [("growing", "512MB", 0), ("emptied", "512MB", 0)]
    cases += [(f"limit={limit}", limit, 0) for limit in limits]
    print(
        "| variant | memory_limit | columns | records | load s | RSS before MiB | peak RSS MiB "
        "(VmHWM) | DuckDB accounts for, MiB | peak vs smallest |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, limit, wide in cases:
        smallest = 0
        for records in sizes:
            result = measure(records, "emptied" if name == "emptied" else "growing", limit, wide)
            _row(name, limit, wide, records, result, smallest)
            smallest = smallest or result.get("hwm_mib", 0)
    for limit in ["512MB", *limits]:
        _row("wide", limit, 200, sizes[0], measure(sizes[0], "growing", limit, 200), 0)
    return 0


def _row(
    name: str, limit: str, wide: int, records: int, result: dict[str, Any], smallest: int
) -> None:
    columns = len(PROPERTIES) + wide
    if "error" in result:
        print(f"| {name} | {limit} | {columns} | {records:,} | failed: {result['error']} | | | | |")
        return
    growth = f"{result['hwm_mib'] / smallest - 1:+.0%}" if smallest else ""
    print(
        f"| {name} | {limit} | {columns} | {records:,} | {result['seconds']:.1f} | "
        f"{result['rss_before_mib']} | {result['hwm_mib']} | {result['duckdb_mib']} | {growth} |",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
