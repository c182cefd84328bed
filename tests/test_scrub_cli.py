"""`sluice scrub`: raw log text in, scrubbed text out, counts on stderr."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import REPO

SLUICE = str(REPO / ".venv" / "bin" / "sluice")
CURSOR = "2026-02-03T04:05:06+00:00"
STATES = {
    "connection_state": {
        "connectionId": "c1",
        "stateType": "stream",
        "streamState": [
            {"streamDescriptor": {"name": "users"}, "streamState": {"updated_at": CURSOR}}
        ],
    },
    "message_list": [
        {
            "type": "STREAM",
            "stream": {
                "stream_descriptor": {"name": "users"},
                "stream_state": {"updated_at": CURSOR},
            },
        }
    ],
    "blob": {"updated_at": CURSOR},
}
RAW = (
    "INFO starting\n"
    f"INFO Setting state of SourceX stream to {{'updated_at': '{CURSOR}'}}\n"
    f"WARN retrying after cursor {CURSOR} with api key hunter2-SECRET-77\n"
    f"DEBUG escaped {json.dumps(json.dumps(CURSOR))}\n"
)


def run(
    tmp_path: Path, state: object, *extra: str, stdin: str = RAW
) -> subprocess.CompletedProcess[str]:
    state_file = tmp_path / "state.json"
    state_file.write_text(json.dumps(state))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"api_key": "hunter2-SECRET-77", "start_date": "2020-01-01"}))
    return subprocess.run(
        [SLUICE, "scrub", "--state", str(state_file), "--config", str(config), *extra],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )


def test_every_state_shape_scrubs_the_cursor_and_the_secret(tmp_path: Path) -> None:
    for name, state in STATES.items():
        done = run(tmp_path, state)
        assert done.returncode == 0, (name, done.stderr)
        assert CURSOR not in done.stdout and "hunter2-SECRET-77" not in done.stdout, name
        assert done.stdout.startswith("INFO starting\n"), name
        assert done.stdout.count("\n") == RAW.count("\n"), name
        counts = json.loads(done.stderr.strip().splitlines()[-1])["redactions"]
        assert counts["secret"] == 1 and counts["cursor"] + counts["state"] >= 3, name


def test_file_argument_and_bad_input(tmp_path: Path) -> None:
    log = tmp_path / "raw.log"
    log.write_text(RAW)
    done = run(tmp_path, STATES["blob"], str(log), stdin="")
    assert done.returncode == 0 and CURSOR not in done.stdout

    missing = subprocess.run(
        [SLUICE, "scrub", "--state", str(tmp_path / "nope.json")],
        input="",
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 2 and "nope.json" in missing.stderr

    (tmp_path / "bad.json").write_text("{not json")
    bad = subprocess.run(
        [SLUICE, "scrub", "--state", str(tmp_path / "bad.json")],
        input="",
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and "not JSON" in bad.stderr
