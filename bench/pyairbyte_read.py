"""One PyAirbyte read of source-faker into a fresh DuckDB cache (or, with ``--postgres``, a fresh
schema of a PostgreSQL database: PyAirbyte's PostgresCache); run by bench_sync.py.

Runs under the PyAirbyte virtual environment (bench/run creates it), never the project's: the
`airbyte` package pins its own dependency tree. Writes its timings and per-stream counts as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--executable", required=True, help="the source-faker command")
    parser.add_argument("--config", required=True, type=Path, help="connector config (JSON)")
    parser.add_argument("--workdir", required=True, type=Path, help="fresh dir for the cache")
    parser.add_argument("--out", required=True, type=Path, help="where to write the result")
    parser.add_argument(
        "--postgres",
        help="JSON of PostgresCache's host, port, username, password, database, schema_name",
    )
    args = parser.parse_args()
    os.environ.setdefault("AIRBYTE_OFFLINE_MODE", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")

    started = time.perf_counter()
    import airbyte as ab
    from airbyte.caches import CacheBase, DuckDBCache, PostgresCache

    imported = time.perf_counter()
    source = ab.get_source(
        "source-faker",
        local_executable=args.executable,
        config=json.loads(args.config.read_text()),
    )
    source.select_all_streams()
    cache: CacheBase
    if args.postgres:
        cache = PostgresCache(**json.loads(args.postgres), cache_dir=str(args.workdir / "cache"))
    else:
        cache = DuckDBCache(
            db_path=str(args.workdir / "pyairbyte.duckdb"), cache_dir=str(args.workdir / "cache")
        )
    prepared = time.perf_counter()
    result = source.read(cache=cache, force_full_refresh=True)
    finished = time.perf_counter()
    counts = {name: len(dataset) for name, dataset in result.streams.items()}
    args.out.write_text(
        json.dumps(
            {
                "import_seconds": imported - started,
                "get_source_seconds": prepared - imported,
                "read_seconds": finished - prepared,
                "script_seconds": finished - started,
                "records": counts,
                "airbyte_version": ab.__version__ if hasattr(ab, "__version__") else None,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
