"""Purge targets are checked before any call: unsafe prefixes and the allow-list."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from purge.targets import TargetRefusedError, parse_target
from tests.conftest import REPO

ALLOW = ["s3://bucket/runs/", "az://container/", "file:///srv/staging/"]


@pytest.mark.parametrize(
    ("uri", "store", "prefix"),
    [
        ("s3://bucket/runs/conn1", "s3://bucket/", "runs/conn1/"),
        ("s3://bucket//runs/./conn1/", "s3://bucket/", "runs/conn1/"),
        ("az://container/a/b/", "az://container/", "a/b/"),
        ("file:///srv/staging/x/", "file:///", "srv/staging/x/"),
        ("s3://bucket/runs/with%20space/", "s3://bucket/", "runs/with space/"),
    ],
)
def test_targets_are_normalised(uri: str, store: str, prefix: str) -> None:
    target = parse_target(uri, ALLOW)
    assert (target.store_uri, target.prefix) == (store, prefix)


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("s3://bucket/", "empty"),
        ("s3://bucket/runs/../other/", "'..'"),
        ("s3://other-bucket/runs/x/", "allow-list"),
        ("s3://bucket/runsx/", "allow-list"),  # a '/' boundary, not a string prefix
        ("file:///", "empty"),
        ("az://container/", "empty"),
        ("file:///srv/stag/", "allow-list"),
        ("http://bucket/runs/x/", "scheme"),
        ("s3:///runs/x/", "bucket"),
        ("runs/x/", "scheme"),
    ],
)
def test_unsafe_or_unlisted_targets_are_refused(uri: str, reason: str) -> None:
    with pytest.raises(TargetRefusedError, match=reason):
        parse_target(uri, ALLOW)


def test_sibling_prefix_is_not_allowed_by_its_neighbour() -> None:
    with pytest.raises(TargetRefusedError, match="allow-list"):
        parse_target("s3://bucket/runs/conn10/", ["s3://bucket/runs/conn1/"])
    assert parse_target("s3://bucket/runs/conn1/x/", ["s3://bucket/runs/conn1"]).prefix == (
        "runs/conn1/x/"
    )


def sluice(args: list[str], tmp: Path, allow: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "SLUICE_STATE_DIR": str(tmp / "state"),
        "SLUICE_PURGE_ALLOW": allow,
        "SLUICE_CONNECTIONS_FILE": str(tmp / "none.toml"),
    }
    return subprocess.run(
        [str(REPO / ".venv" / "bin" / "sluice"), *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def test_cli_purge_prints_receipt_and_exit_code(tmp_path: Path) -> None:
    staging = tmp_path / "elsewhere"
    for rel in ("runs/conn1/a/1.gz", "runs/conn1/2.gz", "runs/conn10/3.gz"):
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        (staging / rel).write_bytes(b"data")
    allow = staging.as_uri() + "/"
    target = allow + "runs/conn1/"

    refused = sluice(["purge", target], tmp_path, allow)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert (staging / "runs/conn1/2.gz").exists()

    dry = sluice(["purge", target, "--dry-run"], tmp_path, allow)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["objects_deleted"] == 2
    assert (staging / "runs/conn1/2.gz").exists()

    done = sluice(["purge", target, "--yes"], tmp_path, allow)
    assert done.returncode == 0, done.stderr
    receipt = json.loads(done.stdout)
    assert receipt["verified_empty"] and receipt["objects_deleted"] == 2
    assert not (staging / "runs/conn1").exists()
    assert (staging / "runs/conn10/3.gz").exists()

    outside = sluice(["purge", target.replace("conn1", "conn10"), "--yes"], tmp_path, "s3://b/x/")
    assert outside.returncode == 2 and "allow-list" in outside.stderr
    assert (staging / "runs/conn10/3.gz").exists()
