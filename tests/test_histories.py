"""Histories recorded from this version's workflows replay against the current code: a change
that would break the runs already in flight (a non-deterministic change) fails here, not in
production. See tests/histories/README.md for adding one when a workflow changes on purpose."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from tests.conftest import HISTORIES_DIR, HISTORY_KEYS
from workers.codec import data_converter, parse_keys
from workflows.replay import ReplayFailedSyncWorkflow
from workflows.sweep import RetentionSweepWorkflow
from workflows.sync import SyncConnectionWorkflow

HISTORIES = sorted(HISTORIES_DIR.glob("*.json"))


def test_every_workflow_kind_has_a_recorded_history() -> None:
    kinds = {
        json.loads(path.read_text())["events"][0]["workflowExecutionStartedEventAttributes"][
            "workflowType"
        ]["name"]
        for path in HISTORIES
    }
    assert kinds == {
        "SyncConnectionWorkflow",
        "ReplayFailedSyncWorkflow",
        "RetentionSweepWorkflow",
    }


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_a_recorded_history_replays(path: Path) -> None:
    replayer = Replayer(
        workflows=[SyncConnectionWorkflow, ReplayFailedSyncWorkflow, RetentionSweepWorkflow],
        data_converter=data_converter(parse_keys(HISTORY_KEYS)),
    )
    history = WorkflowHistory.from_json(path.stem, path.read_text(encoding="utf-8"))
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"
