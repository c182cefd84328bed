"""The summary and details a run carries from its start (Temporal's static summary and details),
which the Temporal UI shows on the run's page and in its lists.

They are deliberately left **unencrypted**: they name the connection, the kind of run, the
streams and the run it replays, which are configuration metadata, as the search attributes are
(those Temporal indexes in plain text anyway); and an operator without the codec server must
still tell runs apart. The SDK would pass a `str` through the data converter, i.e. encrypt it,
so they are handed to it as ready-made payloads, which it keeps as they are. Nothing that could
carry a value (a cursor, a record, an error text) may ever go here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from temporalio.api.common.v1 import Payload
from temporalio.converter import DataConverter

_PLAIN = DataConverter.default.payload_converter


def plain_text(text: str) -> Payload:
    """A `json/plain` payload the codec never touches (the codec server passes it through)."""
    return _PLAIN.to_payloads([text])[0]


@dataclass(frozen=True)
class RunMetadata:
    """What a run is, in words: `summary` one line, `details` a few (Markdown) lines."""

    summary: str
    details: str

    @classmethod
    def for_run(
        cls,
        kind: str,
        connection_id: str | None = None,
        *,
        started_by: str,
        reset: bool = False,
        streams: list[str] | None = None,
        replay_of: str | None = None,
    ) -> RunMetadata:
        if replay_of:
            summary = f"{kind} of run {replay_of}"
            if connection_id:
                summary += f" (connection {connection_id})"
        elif connection_id:
            summary = f"{kind}: connection {connection_id}" + (" (reset)" if reset else "")
        else:
            summary = kind
        lines = [f"**kind**: {kind}"]
        if connection_id:
            lines.append(f"**connection**: {connection_id}")
        if replay_of:
            lines.append(f"**replay of**: run {replay_of}")
        if reset:
            lines.append("**reset**: yes, from scratch")
        if streams:
            lines.append(f"**streams**: {', '.join(streams)}")
        lines.append(f"**started by**: {started_by}")
        return cls(summary=summary, details="  \n".join(lines))

    def summary_payload(self) -> Payload:
        return plain_text(self.summary)

    def details_payload(self) -> Payload:
        return plain_text(self.details)

    # What `static_summary=` and `static_details=` of a start take. The SDK's signatures say
    # `str`, but it keeps a Payload as it is (and would encrypt a str): see the module's
    # docstring.

    @property
    def static_summary(self) -> str:
        return cast(str, self.summary_payload())

    @property
    def static_details(self) -> str:
        return cast(str, self.details_payload())
