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
        ("file:///srv/staging/x/", "file:///srv/staging/", "x/"),
        ("file:///srv/staging/", "file:///srv/", "staging/"),  # the root itself: never empty
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


# --- a local staging root reached through a symlink ----------------------------------------------


@pytest.fixture
def linked_staging(tmp_path: Path) -> tuple[Path, Path]:
    """(real staging root, the same root through a symlinked directory above it)."""
    real = tmp_path / "real"
    (real / "staging").mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    return real / "staging", link / "staging"


def test_a_local_target_is_rooted_at_its_resolved_allow_list_entry(
    linked_staging: tuple[Path, Path],
) -> None:
    real, linked = linked_staging
    allow = [linked.as_uri() + "/", "s3://bucket/runs/"]
    target = parse_target(linked.as_uri() + "/conn/run-1/", allow)
    assert (target.store_uri, target.prefix) == (real.as_uri() + "/", "conn/run-1/")
    # The longest entry the target falls under is its root.
    nested = parse_target(linked.as_uri() + "/conn/run-1/", [*allow, linked.as_uri() + "/conn"])
    assert (nested.store_uri, nested.prefix) == (real.as_uri() + "/conn/", "run-1/")
    # The root itself: rooted at its resolved parent, so the prefix is never empty.
    whole = parse_target(linked.as_uri() + "/", allow)
    assert (whole.store_uri, whole.prefix) == (real.parent.as_uri() + "/", "staging/")


def test_allow_list_matching_stays_on_the_paths_as_written(
    linked_staging: tuple[Path, Path],
) -> None:
    real, linked = linked_staging
    with pytest.raises(TargetRefusedError, match="allow-list"):
        parse_target(real.as_uri() + "/conn/", [linked.as_uri() + "/"])
    with pytest.raises(TargetRefusedError, match="allow-list"):  # the '/' boundary
        parse_target(linked.as_uri() + "-other/conn/", [linked.as_uri() + "/"])
    with pytest.raises(TargetRefusedError, match=r"'\.\.'"):
        parse_target(linked.as_uri() + "/conn/../../x/", [linked.as_uri() + "/"])


def test_an_entry_that_is_a_symlink_to_the_filesystem_root_cannot_purge_it(tmp_path: Path) -> None:
    (tmp_path / "everything").symlink_to("/", target_is_directory=True)
    entry = (tmp_path / "everything").as_uri() + "/"
    for target in (entry, entry + "etc/"):
        with pytest.raises(TargetRefusedError, match="filesystem root"):
            parse_target(target, [entry])


def test_cli_purges_a_staging_root_behind_a_symlink(
    tmp_path: Path, linked_staging: tuple[Path, Path]
) -> None:
    real, linked = linked_staging
    for rel in ("conn/run-1/a/1.gz", "conn/run-1/2.gz", "conn/run-10/3.gz"):
        (real / rel).parent.mkdir(parents=True, exist_ok=True)
        (real / rel).write_bytes(b"data")
    allow = linked.as_uri() + "/"
    done = sluice(["purge", allow + "conn/run-1/", "--yes"], tmp_path, allow)
    assert done.returncode == 0, done.stderr
    receipt = json.loads(done.stdout)
    assert receipt["verified_empty"] and receipt["objects_deleted"] == 2
    assert receipt["target"] == real.as_uri() + "/conn/run-1/"
    assert not (real / "conn/run-1").exists()
    assert (real / "conn/run-10/3.gz").exists()
