"""What the whole test session shares: where the repository is, where connectors are installed,
and the payload key of this session's client and of every worker it starts."""

from __future__ import annotations

from pathlib import Path

from workers.codec import new_key_spec

REPO = Path(__file__).resolve().parents[2]
# Shared across test sessions: installing a connector takes half a minute.
CONNECTORS_DIR = REPO / ".cache" / "connectors"
# The payload key of this test session: the test client and every worker it starts share it.
PAYLOAD_KEYS = new_key_spec("test")
