"""Capture the corpus ``faker_always_updated.log`` / ``faker_always_updated_states.json``.

Runs the real ``source-faker`` connector three times incrementally with ``always_updated: true``,
each run reading the state the previous one emitted, so the cursor values change from run to run.
Keeps what a technical log holds (LOG, TRACE and STATE messages, and stderr), never RECORDs, and
every state message emitted. Not a test: run it by hand to refresh the corpus.

    .venv/bin/python tests/data/capture_faker_always_updated.py [path/to/source-faker]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
REPO = HERE.parent.parent
CANDIDATES = (
    REPO / ".cache/connectors/source-faker/bin/source-faker",
    Path("/tmp/faker/bin/source-faker"),
)
CONFIG = {"count": 20, "seed": 3, "records_per_slice": 10, "always_updated": True, "parallelism": 1}
STREAMS = ("products", "users", "purchases")
RUNS = 3


def main() -> None:
    connector = (
        Path(sys.argv[1]) if len(sys.argv) > 1 else next(p for p in CANDIDATES if p.exists())
    )
    catalog = {
        "streams": [
            {
                "stream": {
                    "name": name,
                    "json_schema": {},
                    "supported_sync_modes": ["incremental"],
                },
                "sync_mode": "incremental",
                "destination_sync_mode": "append",
                "cursor_field": ["updated_at"],
            }
            for name in STREAMS
        ]
    }
    log_lines: list[str] = []
    states: list[dict] = []
    latest: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as work:
        config_path = Path(work, "config.json")
        catalog_path = Path(work, "catalog.json")
        state_path = Path(work, "state.json")
        config_path.write_text(json.dumps(CONFIG))
        catalog_path.write_text(json.dumps(catalog))
        for run in range(RUNS):
            if run:
                time.sleep(1.5)  # the cursor has a resolution of one second
            args = [str(connector), "read", "--config", str(config_path)]
            args += ["--catalog", str(catalog_path)]
            if latest:
                state_path.write_text(json.dumps(list(latest.values())))
                args += ["--state", str(state_path)]
            done = subprocess.run(args, capture_output=True, text=True, check=True)
            for line in done.stdout.splitlines(keepends=True):
                message = json.loads(line)
                if message["type"] == "RECORD":
                    continue
                log_lines.append(line)
                if message["type"] == "STATE":
                    state = message["state"]
                    states.append(state)
                    latest[state["stream"]["stream_descriptor"]["name"]] = state
            log_lines.extend(done.stderr.splitlines(keepends=True))
    (HERE / "faker_always_updated.log").write_text("".join(log_lines), encoding="utf-8")
    (HERE / "faker_always_updated_states.json").write_text(json.dumps(states, indent=2) + "\n")
    cursors = sorted({s["stream"]["stream_state"].get("updated_at", "") for s in states})
    print(f"{len(log_lines)} lines, {len(states)} states, cursor values {cursors}")


if __name__ == "__main__":
    main()
