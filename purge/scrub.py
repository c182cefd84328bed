"""Scrub technical logs of cursor values, secrets and printed state blobs.

Logs are kept for troubleshooting, so a scrubbed line must still read like the original: only the
sensitive spans are replaced by a typed marker (``[REDACTED:cursor]``, ``[REDACTED:secret]``,
``[REDACTED:state]``) and every other byte is left alone.

Two passes find the spans of a line, both on the original text:

* **Structural patterns** know where sensitive values sit whatever their length: the state blob
  the Python CDK prints in ``Setting state of <name> stream to {...}``, the state objects of an
  Airbyte ``STATE`` message printed as JSON (``stream_state``, ``shared_state``, legacy ``data``),
  and the value of a ``key=value`` / ``key: value`` / ``"key": value`` pair whose key is a cursor
  field.
* **Free text**: every known cursor value and secret, in the spellings a log can carry it (as
  is, JSON-escaped, Python-repr-escaped), matched with one Aho-Corasick automaton so that the cost
  per line does not grow with the number of values. All occurrences are taken, overlapping ones
  included, so values that overlap each other ("abcd", "abcdxyz", "xyz1234") go entirely.

Overlapping spans are merged, so a value can never survive half-redacted because two rules
disagreed about its edges. When spans of different kinds merge, the stronger kind names the
marker (secret, then state, then cursor).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from enum import StrEnum
from typing import Any, NamedTuple

import ahocorasick

__all__ = [
    "MIN_FREE_TEXT_LENGTH",
    "LogScrubber",
    "RedactionKind",
    "state_leaf_values",
]

MIN_FREE_TEXT_LENGTH = 4
"""Values shorter than this are not matched in free text.

A cursor of ``"6"`` or a ``seed`` of ``3`` would otherwise wreck every timestamp, count and id in
the log while protecting nothing. Short values are still removed where their position is known:
inside a printed state blob and as the value of a cursor-field ``key=value`` pair. The same floor
applies to secrets; configuration secrets shorter than four characters are rare, and if one exists
it is only removed where it appears as part of a longer matched span.
"""


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


# --------------------------------------------------------------------------------------------
# Collecting cursor values from Airbyte state
# --------------------------------------------------------------------------------------------


def state_leaf_values(states: Iterable[Any]) -> set[str]:
    """Return every scalar leaf of Airbyte state, rendered the ways a log prints it.

    Accepted shapes: a list of ``AirbyteStateMessage`` dicts (``STREAM``, ``GLOBAL``, ``LEGACY``),
    a single such message, an ``AirbyteMessage`` of type ``STATE``, the Config API's
    ``ConnectionState`` (``stateType`` / ``streamState`` / ``globalState``), a bare state blob, or
    pydantic models of any of these. Only the state payload is collected (``stream_state``,
    ``shared_state``, ``data``, blobs); stream descriptors, the ``type`` field and source and
    destination stats are metadata and must stay readable, so they are skipped. Dict keys are
    never collected: they are field names, and redacting ``updated_at`` everywhere would destroy
    the log's meaning.

    ``None`` and booleans are skipped (``True`` is not a cursor). Numbers are rendered with
    ``str()``, plus ``"123"`` for an integral float and ``"123.0"`` for an int, because JSON
    serializers disagree about which one they print.
    """
    if isinstance(states, str | bytes):
        raise TypeError("state_leaf_values takes parsed state (dicts/lists), not JSON text")
    roots: Iterable[Any] = (
        [states] if isinstance(states, Mapping) or hasattr(states, "model_dump") else states
    )
    values: set[str] = set()
    for root in roots:
        _collect_state(root, values)
    return values


def _plain(node: Any) -> Any:
    """Turn a pydantic model into the JSON-shaped dict it serializes to; pass anything else."""
    if hasattr(node, "model_dump"):
        return node.model_dump(mode="json", by_alias=True, exclude_none=True)
    return node


def _collect_state(node: Any, out: set[str]) -> None:
    """Collect the payload of one state document, recognising message envelopes by their shape."""
    node = _plain(node)
    if isinstance(node, list | tuple):
        for item in node:
            _collect_state(item, out)
        return
    if not isinstance(node, Mapping):
        _collect_leaves(node, out)
        return

    kind = node.get("type")
    if kind == "STATE" and "state" in node:  # a whole AirbyteMessage line
        _collect_state(node["state"], out)
    elif "stateType" in node:  # Config API ConnectionState
        _collect_leaves(node.get("state"), out)
        for stream in node.get("streamState") or ():
            _collect_leaves(stream.get("streamState"), out)
        global_state = node.get("globalState") or {}
        _collect_leaves(global_state.get("shared_state"), out)
        for stream in global_state.get("streamStates") or ():
            _collect_leaves(stream.get("streamState"), out)
    elif kind in ("STREAM", "GLOBAL", "LEGACY") or _looks_like_state_message(node):
        stream = node.get("stream")
        if isinstance(stream, Mapping):
            _collect_leaves(stream.get("stream_state"), out)
        global_state = node.get("global")
        if isinstance(global_state, Mapping):
            _collect_leaves(global_state.get("shared_state"), out)
            for stream in global_state.get("stream_states") or ():
                _collect_leaves(stream.get("stream_state"), out)
        # Older CDKs send the legacy ``data`` copy alongside per-stream state: it is state too.
        _collect_leaves(node.get("data"), out)
    else:
        _collect_leaves(node, out)


def _looks_like_state_message(node: Mapping[str, Any]) -> bool:
    """Recognise a state message that lost its ``type`` field, so its descriptor is skipped."""
    stream = node.get("stream")
    if isinstance(stream, Mapping) and "stream_descriptor" in stream:
        return True
    global_state = node.get("global")
    return isinstance(global_state, Mapping) and (
        "stream_states" in global_state or "shared_state" in global_state
    )


def _collect_leaves(node: Any, out: set[str]) -> None:
    """Collect every scalar under ``node``: everything inside a state payload is a value."""
    node = _plain(node)
    if node is None or isinstance(node, bool):
        return
    if isinstance(node, Mapping):
        for value in node.values():
            _collect_leaves(value, out)
    elif isinstance(node, list | tuple | set | frozenset):
        for value in node:
            _collect_leaves(value, out)
    elif isinstance(node, int):
        out.add(str(node))
        out.add(f"{node}.0")
    elif isinstance(node, float):
        out.add(str(node))
        if math.isfinite(node) and node.is_integer():
            out.add(str(int(node)))
    elif isinstance(node, str):
        if node:
            out.add(node)
    else:
        out.add(str(node))


# --------------------------------------------------------------------------------------------
# Scrubbing
# --------------------------------------------------------------------------------------------

# Python CDK: ``logger.info(f"Setting state of {self.name} stream to {stream_state}")``.
_STATE_PREFIX = "Setting state of "
_STATE_SENTENCE = re.compile(r"Setting state of .*? stream to\s*(?=\{)")

# The value of a cursor-field pair: a quoted string (JSON-escaped ``\"...\"`` inside a JSON log
# message, or plain double/single quoted with backslash escapes), else a bare token. Only what is
# between the quotes is replaced, so a JSON line stays valid JSON and a repr stays a repr. A bare
# token stops at ``"`` and at the escapes ``\n``, ``\r``, ``\t``, ``\"`` so that inside a
# JSON-encoded log line it cannot swallow the quote closing the message string or the next line of
# a multi-line message; an unterminated quoted value (a truncated line) runs to the next stop.
_PAIR_VALUE = (
    r"(?:"
    r'\\"(?P<json_quoted>(?:\\\\(?:\\.|[^\\])|\\[^"\\]|[^\\])*?)\\"'
    r'|"(?P<double_quoted>(?:\\.|[^"\\])*)"'
    r"|'(?P<single_quoted>(?:\\.|[^'\\])*)'"
    r'|\\?["\'](?P<unterminated>(?:[^\s,}\])"\\]|\\(?![nrt"]))*)'
    r'|(?P<bare>(?:[^\s,}\])"{\[\\]|\\(?![nrt"]))(?:[^\s,}\])"\\]|\\(?![nrt"]))*)'
    r")"
)
_PAIR_VALUE_GROUPS = ("json_quoted", "double_quoted", "single_quoted", "unterminated", "bare")

_LINE_TERMINATORS = ("\r\n", "\n", "\r")


class _Span(NamedTuple):
    """A run of ``content[start:end]`` to replace by the marker of ``kind``.

    ``quoted`` spans replace a whole JSON value (a state object in an Airbyte ``STATE`` message):
    their marker is written as a JSON string so the line still parses.
    """

    start: int
    end: int
    kind: RedactionKind
    quoted: bool = False


class LogScrubber:
    """Replaces cursor values, secrets and printed state in log lines by typed markers.

    Build one per sync run from that run's state and connector configuration; it keeps running
    ``counts`` so the run's receipt can say how much was removed. Not thread-safe: give each log
    its own scrubber or serialise calls.
    """

    def __init__(
        self,
        *,
        cursor_values: Iterable[str],
        secrets: Iterable[str],
        cursor_fields: Iterable[str] = (),
    ) -> None:
        self._counts: dict[str, int] = {kind.value: 0 for kind in RedactionKind}
        self._automaton = _build_automaton(cursor_values, secrets)
        fields = sorted({f for f in cursor_fields if f}, key=len, reverse=True)
        self._pair_pattern = _build_pair_pattern(fields) if fields else None

    @property
    def counts(self) -> dict[str, int]:
        """Redactions so far by kind; all three kinds are always present."""
        return dict(self._counts)

    def scrub_line(self, line: str) -> str:
        """Return ``line`` with every sensitive span replaced; its terminator is kept as is."""
        content, terminator = _split_terminator(line)
        spans: list[_Span] = []
        if _STATE_PREFIX in content:
            spans.extend(_state_blob_spans(content))
        if _STATE_KEY_HINT.search(content):
            spans.extend(_state_object_spans(content))
        if self._pair_pattern is not None:
            spans.extend(_pair_value_spans(self._pair_pattern, content))
        if self._automaton is not None:
            # Every occurrence, overlapping ones included: leftmost-longest alone would let the
            # tail of "xyz1234" survive after "abcdxyz" consumed its head. The merge fuses them.
            for end, (length, kind) in self._automaton.iter(content):
                spans.append(_Span(end + 1 - length, end + 1, kind))
        if not spans:
            return line

        pieces: list[str] = []
        position = 0
        for span in _merge(spans):
            pieces.append(content[position : span.start])
            pieces.append(f'"{span.kind.marker}"' if span.quoted else span.kind.marker)
            self._counts[span.kind.value] += 1
            position = span.end
        pieces.append(content[position:])
        pieces.append(terminator)
        return "".join(pieces)

    def scrub_stream(self, lines: Iterable[str]) -> Iterator[str]:
        """Scrub lazily, one line in, one line out: a log of any size runs in bounded memory."""
        for line in lines:
            yield self.scrub_line(line)


def _spellings(value: str) -> set[str]:
    """The ways ``value`` can appear in a log line.

    As is; JSON-escaped (ASCII-only as Python's ``json`` writes it, and raw UTF-8 as the CDK's
    orjson writes it); Python-repr-escaped (a dict printed with ``str()``); and a repr inside a JSON
    log message, which is how the CDK's ``Setting state ...`` text reaches a JSON log line.
    """
    in_repr = repr(value)[1:-1]
    return {
        value,
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        in_repr,
        json.dumps(in_repr)[1:-1],
        json.dumps(in_repr, ensure_ascii=False)[1:-1],
    }


def _build_automaton(
    cursor_values: Iterable[str], secrets: Iterable[str]
) -> ahocorasick.Automaton | None:
    """One automaton over every spelling of every value; ``None`` when there is nothing to find."""
    kinds: dict[str, RedactionKind] = {}
    for value in cursor_values:
        if len(value) >= MIN_FREE_TEXT_LENGTH:
            for spelling in _spellings(value):
                kinds[spelling] = RedactionKind.CURSOR
    for secret in secrets:
        # A multi-line secret (a PEM key) printed raw spans several log lines, and lines are
        # scrubbed one at a time: each of its lines must be findable on its own.
        parts = {secret, *(part.strip() for part in secret.splitlines())}
        for part in parts:
            if len(part) >= MIN_FREE_TEXT_LENGTH:
                for spelling in _spellings(part):
                    kinds[spelling] = RedactionKind.SECRET  # a secret outranks a cursor value
    if not kinds:
        return None  # pyahocorasick refuses to search an automaton with no words
    automaton = ahocorasick.Automaton()
    for spelling, kind in kinds.items():
        automaton.add_word(spelling, (len(spelling), kind))
    automaton.make_automaton()
    return automaton


def _build_pair_pattern(fields: list[str]) -> re.Pattern[str]:
    """Match ``key=value``, ``key: value``, ``"key": value``, ``'key': value`` for cursor fields.

    The quoted-key form also accepts ``\\"key\\"``: that is how ``"key"`` looks inside a JSON log
    message. A bare key must start at a word boundary so that ``last_updated_at`` is not taken for
    ``updated_at``; an escaped newline or tab (``\\nupdated_at=...`` in a JSON message) counts as
    one.
    """
    keys = "|".join(re.escape(field) for field in fields)
    return re.compile(
        rf"(?:(?:(?<!\w)|(?<=\\[nrt]))(?:{keys})|(?P<quote>\\?[\"'])(?:{keys})(?P=quote))"
        rf"\s*[=:]\s*{_PAIR_VALUE}"
    )


def _pair_value_spans(pattern: re.Pattern[str], content: str) -> Iterator[_Span]:
    """Spans of cursor-field values; an empty value hides nothing and yields no span."""
    for match in pattern.finditer(content):
        group = next(name for name in _PAIR_VALUE_GROUPS if match.group(name) is not None)
        start, end = match.span(group)
        if start < end:
            yield _Span(start, end, RedactionKind.CURSOR)


def _state_blob_spans(content: str) -> Iterator[_Span]:
    """Spans of the blobs printed by ``Setting state of <name> stream to {...}``.

    The blob ends at its matching brace rather than at the last ``}`` of the line: in a JSON log
    line the last brace closes the envelope, and redacting up to it would eat the envelope too.
    Where the blob cannot be delimited (a truncated line, an unusual repr) everything up to the end
    of the message is redacted, because keeping the line readable never outranks removing state.
    An empty blob ``{}`` holds nothing and is left alone.
    """
    search_from = 0
    while match := _STATE_SENTENCE.search(content, search_from):
        start = match.end()
        end = _blob_end(content, start, inside_json_string=_inside_json_string(content, start))
        if re.sub(r"\s+", "", content[start:end]) != "{}":
            yield _Span(start, end, RedactionKind.STATE)
        search_from = max(end, start + 1)


# Airbyte STATE messages printed as JSON: the state objects themselves, wherever they sit. The
# legacy ``data`` key is only taken in a STATE message; in a RECORD it is the record.
_STATE_KEY_HINT = re.compile(r"stream_state|shared_state|streamState|STATE|LEGACY")
_STATE_OBJECT = re.compile(
    r'(?P<quote>\\?")(?:stream_state|shared_state|streamState|(?P<data>data))(?P=quote)\s*:\s*(?=\{)'
)
_STATE_MESSAGE = re.compile(r'\\?"type\\?"\s*:\s*\\?"(?:STATE|LEGACY)\\?"')


def _state_object_spans(content: str) -> Iterator[_Span]:
    """Spans of the state objects in an Airbyte ``STATE`` message printed as a log line.

    Values shorter than ``MIN_FREE_TEXT_LENGTH`` (``"seed": 3``, ``"loop_offset": 20``) are not
    found by free-text matching, so the whole object goes, as any printed state blob does. When
    the object is JSON structure (not text inside a string) the marker is written as a JSON string
    so the line still parses; an empty object holds nothing and is left alone.
    """
    is_state_message = _STATE_MESSAGE.search(content) is not None
    for match in _STATE_OBJECT.finditer(content):
        if match.group("data") is not None and not is_state_message:
            continue
        start = match.end()
        in_string = _inside_json_string(content, start)
        end = _blob_end(content, start, inside_json_string=in_string)
        if re.sub(r"\s+", "", content[start:end]) != "{}":
            yield _Span(start, end, RedactionKind.STATE, quoted=not in_string)


def _inside_json_string(content: str, position: int) -> bool:
    """Whether ``position`` falls inside a JSON string literal, counting unescaped quotes."""
    inside = False
    escaped = False
    for char in content[:position]:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = inside
        elif char == '"':
            inside = not inside
    return inside


def _blob_end(content: str, start: int, *, inside_json_string: bool) -> int:
    """End (exclusive) of the brace-balanced blob at ``content[start]``, or a safe upper bound."""
    if not inside_json_string:
        end = _balanced_end(content, start)
        return len(content) if end is None else end
    decoded, raw_ends, string_end = _decode_json_string(content, start)
    end = _balanced_end(decoded, 0)
    if end is None:
        return string_end
    return raw_ends[end - 1]


def _balanced_end(text: str, start: int) -> int | None:
    """Index after the brace closing the one at ``text[start]``, skipping quoted strings.

    Quoting follows Python repr and JSON: ``'...'`` or ``"..."`` with backslash escapes. ``None``
    when the blob does not close within ``text``.
    """
    depth = 0
    quote: str | None = None
    escaped = False
    for index in range(start, len(text)):
        char = text[index]
        if quote is not None:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return index + 1
    return None


_JSON_ESCAPES = {
    '"': '"',
    "\\": "\\",
    "/": "/",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
}


def _decode_json_string(content: str, start: int) -> tuple[str, list[int], int]:
    """Decode a JSON string literal from ``start`` up to its closing quote.

    Returns the decoded text, for each decoded character the raw index just after its escape
    sequence (to map a decoded position back onto the line), and the raw index of the closing
    quote (``len(content)`` if the literal is not closed on this line).
    """
    chars: list[str] = []
    raw_ends: list[int] = []
    index = start
    length = len(content)
    while index < length:
        char = content[index]
        if char == '"':
            return "".join(chars), raw_ends, index
        if char == "\\" and index + 1 < length:
            code = content[index + 1]
            if code in _JSON_ESCAPES:
                chars.append(_JSON_ESCAPES[code])
                index += 2
            elif code == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", content[index + 2 : index + 6]):
                chars.append(chr(int(content[index + 2 : index + 6], 16)))
                index += 6
            else:  # not valid JSON: keep the backslash literally
                chars.append(char)
                index += 1
        else:
            chars.append(char)
            index += 1
        raw_ends.append(index)
    return "".join(chars), raw_ends, length


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


def _split_terminator(line: str) -> tuple[str, str]:
    """Split off the line terminator so no rule can ever consume or alter it."""
    for terminator in _LINE_TERMINATORS:
        if line.endswith(terminator):
            return line[: -len(terminator)], terminator
    return line, ""
