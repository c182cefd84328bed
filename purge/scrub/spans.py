"""What a redaction is: its kind, the span of a line it covers, and how overlapping spans merge."""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple


class RedactionKind(StrEnum):
    """What a redacted span held; the value names the marker left in its place."""

    CURSOR = "cursor"
    SECRET = "secret"
    STATE = "state"

    @property
    def marker(self) -> str:
        """The text that replaces a redacted span, e.g. ``[REDACTED:cursor]``."""
        return f"[REDACTED:{self.value}]"


# When spans of different kinds overlap, the merged span is named after the strongest kind: a
# secret must be reported as a secret even when it sits inside a state blob.
_PRIORITY: dict[RedactionKind, int] = {
    RedactionKind.CURSOR: 0,
    RedactionKind.STATE: 1,
    RedactionKind.SECRET: 2,
}


class _Span(NamedTuple):
    """A run of ``content[start:end]`` to replace by the marker of ``kind``.

    ``quoted`` spans replace a whole JSON value (a state object in an Airbyte ``STATE`` message):
    their marker is written as a JSON string so the line still parses.
    """

    start: int
    end: int
    kind: RedactionKind
    quoted: bool = False


def _merge(spans: list[_Span]) -> list[_Span]:
    """Sort spans and fuse overlapping ones, naming each fused span after its strongest kind.

    A fused span stays ``quoted`` only while it still covers exactly one whole JSON value.
    """
    merged: list[_Span] = []
    for span in sorted(spans, key=lambda span: (span.start, -span.end)):
        if merged and span.start < merged[-1].end:
            last = merged[-1]
            kind = span.kind if _PRIORITY[span.kind] > _PRIORITY[last.kind] else last.kind
            merged[-1] = _Span(
                last.start, max(last.end, span.end), kind, last.quoted and span.end <= last.end
            )
        else:
            merged.append(span)
    return merged
