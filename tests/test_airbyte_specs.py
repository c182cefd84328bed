"""The Airbyte API specs the emulator validates against live in the repository (a clone must run
its own tests); where the shared copy sits next to the repository, the two must be the same."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.airbyte_emulator import SPECS_DIR

SHARED = Path(__file__).resolve().parents[2] / "shared" / "airbyte-specs"
FILES = ["api.yaml", "config.yaml", "api-problems.yaml"]


def test_the_specs_are_in_the_repository_with_their_source() -> None:
    for name in FILES:
        assert (SPECS_DIR / name).stat().st_size > 10_000
    source = (SPECS_DIR / "SOURCE.md").read_text(encoding="utf-8")
    assert "commit" in source and "License" in source


@pytest.mark.skipif(not SHARED.is_dir(), reason="no shared copy next to this clone")
@pytest.mark.parametrize("name", FILES)
def test_the_specs_match_the_shared_copy(name: str) -> None:
    assert (SPECS_DIR / name).read_bytes() == (SHARED / name).read_bytes()
