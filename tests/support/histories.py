"""Recorded workflow histories: where they live, the key they are encrypted with, and how a
test records one (tests/histories/README.md)."""

from __future__ import annotations

import os
from typing import Any

from tests.support.session import REPO

# The fixed payload key of the histories in tests/histories/ (a test key, not a secret): they are
# replayed by tests/test_histories.py, so a change that breaks runs in flight fails a test.
HISTORY_KEYS = "history:5Gg2DNOi8OTRSmr2nuwYYB6SQNcDjUbaJnXWANR/pEA="
HISTORIES_DIR = REPO / "tests" / "histories"


async def save_history(handle: Any, name: str) -> None:
    """Keep the history of a finished run as tests/histories/NAME.json, when the suite is run
    with SLUICE_RECORD_HISTORIES=1 (see tests/histories/README.md)."""
    if os.environ.get("SLUICE_RECORD_HISTORIES") != "1":
        return
    history = await handle.fetch_history()
    HISTORIES_DIR.mkdir(exist_ok=True)
    (HISTORIES_DIR / f"{name}.json").write_text(history.to_json(), encoding="utf-8")
