"""Scrub technical logs of cursor values, secrets and printed state blobs.

Logs are kept for troubleshooting, so a scrubbed line must still read like the original: only the
sensitive spans are replaced by a typed marker (``[REDACTED:cursor]``, ``[REDACTED:secret]``,
``[REDACTED:state]``) and every other byte is left alone.

What is looked for:

* **Structural patterns** know where sensitive values sit whatever their length: the state blob
  the Python CDK prints in ``Setting state of <name> stream to {...}``, whatever follows the
  platform's ``Raw state message``, an ``AirbyteStateMessage`` printed by Java/Kotlin
  ``toString()``, the state objects of an Airbyte ``STATE`` message (or Config API state) printed
  as JSON anywhere in a line (``stream_state``, ``shared_state``, ``streamState``, legacy
  ``data``/``state``), and the value of a ``key=value`` / ``key: value`` / ``"key": value`` pair
  whose key is a cursor field.
* **Free text**: every known cursor value and secret in every spelling a log gives it (see
  :data:`MIN_FREE_TEXT_LENGTH` and :data:`MIN_BASE64_LENGTH` for what is too short): as is,
  JSON-escaped (also twice, for JSON inside a JSON log message), Python repr, URL-encoded, the
  stable core of its base64 encoding at each of the three alignments; a cursor value that is a
  number also as ``123`` / ``123.0`` / ``1e-05``, and one that is an ISO-8601 date-time also in
  the other common renderings of the same instant (``Z`` / ``+00:00`` / ``+0000``, with and
  without fractional seconds, ``T`` or space, epoch seconds, milliseconds and microseconds).

One module per concern:

* :mod:`purge.scrub.values`: what to look for, the cursor values of a run's state and the secrets
  of a connector's configuration (:func:`state_leaf_values`, :func:`spec_secret_values`).
* :mod:`purge.scrub.spellings`: the spellings a value takes in a log (escapes, URL-encoding,
  base64 alignments, number and timestamp renderings) and the minimum lengths.
* :mod:`purge.scrub.patterns`: the structural patterns, and reading the JSON inside a line.
* :mod:`purge.scrub.spans`: :class:`RedactionKind`, the spans to redact, merging overlapping ones.
* :mod:`purge.scrub.scanner`: :class:`LogScrubber`, the two-stage Aho-Corasick search that finds
  the lines holding something and scrubs them.
"""

from __future__ import annotations

from purge.scrub.scanner import LogScrubber
from purge.scrub.spans import RedactionKind
from purge.scrub.spellings import MIN_BASE64_LENGTH, MIN_FREE_TEXT_LENGTH
from purge.scrub.values import (
    METADATA_STATE_KEYS,
    SECRET_KEY_WORDS,
    spec_secret_values,
    state_leaf_values,
)

__all__ = [
    "METADATA_STATE_KEYS",
    "MIN_BASE64_LENGTH",
    "MIN_FREE_TEXT_LENGTH",
    "SECRET_KEY_WORDS",
    "LogScrubber",
    "RedactionKind",
    "spec_secret_values",
    "state_leaf_values",
]
