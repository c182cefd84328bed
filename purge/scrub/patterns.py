"""Structural patterns: where sensitive values sit in a line, whatever their length.

The state blob the Python CDK prints in ``Setting state of <name> stream to {...}``, whatever
follows the platform's ``Raw state message``, an ``AirbyteStateMessage`` printed by Java/Kotlin
``toString()``, the state objects of an Airbyte ``STATE`` message (or Config API state) printed
as JSON anywhere in a line, and the value of a ``key=value`` / ``key: value`` / ``"key": value``
pair whose key is a cursor field. Each yields the spans to redact; the helpers below them read the
JSON (and Python repr) that a line holds, to find where a blob or a string ends.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from purge.scrub.spans import RedactionKind, _Span

# Python CDK: ``logger.info(f"Setting state of {self.name} stream to {stream_state}")``; the
# platform, when a state checksum does not match: ``Raw state message: ...``. What follows the
# second is redacted to the end of the message, whatever its shape.
_STATE_PREFIX = "Setting state of "
_RAW_STATE = "Raw state message"
_STATE_INTRO = re.compile(
    r"Setting state of .*? stream to\s*(?=\{)|(?P<raw>Raw state message)(?:[\s:=]|\\[nrt])*"
)
# Java/Kotlin ``toString()`` of the protocol model: ``AirbyteStateMessage@1a2b[type=STREAM, ...]``
# or ``AirbyteStateMessage(type=STREAM, ...)``.
_TO_STRING_CLASS = "AirbyteStateMessage"
_TO_STRING = re.compile(r"AirbyteStateMessage(?:@[0-9a-fA-F]+)?(?=[\[({])")

# Airbyte STATE messages printed as JSON: the state objects themselves, wherever they sit. The
# legacy ``data`` key is only taken in a STATE message (in a RECORD it is the record), and the
# Config API's legacy ``state`` only beside ``stateType`` (elsewhere it wraps a whole message).
_STATE_KEY_HINT = re.compile(r"stream_state|shared_state|streamState|stateType|STATE|LEGACY")
_STATE_OBJECT = re.compile(
    r'(?P<quote>\\?")(?:stream_state|shared_state|streamState|(?P<data>data)|(?P<legacy>state))'
    r"(?P=quote)\s*:\s*(?=\{)"
)
_STATE_MESSAGE = re.compile(r'\\?"type\\?"\s*:\s*\\?"(?:STATE|LEGACY)\\?"')
_CONFIG_API_STATE = re.compile(r'\\?"stateType\\?"\s*:')

# Every structural pattern needs one of these words in the line: the block search looks for them
# beside the values, so a line without any of them is passed through without a second look.
_STRUCTURE_TRIGGERS = (
    _STATE_PREFIX,
    _RAW_STATE,
    _TO_STRING_CLASS,
    "stream_state",
    "shared_state",
    "streamState",
    "stateType",
    "STATE",
    "LEGACY",
)

# The value of a cursor-field pair: a quoted string (JSON-escaped ``\"...\"`` inside a JSON log
# message, or plain double/single quoted with backslash escapes), else a bare token. Only what is
# between the quotes is replaced, so a JSON line stays valid JSON and a repr stays a repr. A bare
# token stops at ``"`` and at the escapes ``\n``, ``\r``, ``\t``, ``\"`` so that inside a
# JSON-encoded log line it cannot swallow the quote closing the message string or the next line of
# a multi-line message; an unterminated quoted value (a truncated line) runs to the next stop. A
# bare date-time keeps its time after a space (``updated_at = 2024-01-01 10:00:00.0`` from a Java
# state report).
_PAIR_VALUE = (
    r"(?:"
    r'\\"(?P<json_quoted>(?:\\\\(?:\\.|[^\\])|\\[^"\\]|[^\\])*?)\\"'
    r'|"(?P<double_quoted>(?:\\.|[^"\\])*)"'
    r"|'(?P<single_quoted>(?:\\.|[^'\\])*)'"
    r'|\\?["\'](?P<unterminated>(?:[^\s,}\])"\\]|\\(?![nrt"]))*)'
    r"|(?P<bare>\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?"
    r"(?:Z|[+-]\d{2}:?\d{2}| ?UTC)?(?![^\s,}\])\"\\])"
    r'|(?:[^\s,}\])"{\[\\]|\\(?![nrt"]))(?:[^\s,}\])"\\]|\\(?![nrt"]))*)'
    r")"
)
_PAIR_VALUE_GROUPS = ("json_quoted", "double_quoted", "single_quoted", "unterminated", "bare")


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


def _pair_value_spans(
    pattern: re.Pattern[str], fields: tuple[str, ...], content: str
) -> Iterator[_Span]:
    """Spans of cursor-field values; an empty value hides nothing and yields no span.

    The same matches as ``pattern.finditer``, found faster: a pair starts at its key, or at the
    quote (``"``, ``'``, ``\\"``) one or two characters before it, so the pattern is only tried
    where ``str.find`` saw a key, instead of at every position of the line.
    """
    starts: set[int] = set()
    for field in fields:
        index = content.find(field)
        while index >= 0:
            starts.update((index, index - 1, index - 2))
            index = content.find(field, index + 1)
    resume = 0
    for start in sorted(starts):
        if start < resume:
            continue
        match = pattern.match(content, start)
        if match is None:
            continue
        group = next(name for name in _PAIR_VALUE_GROUPS if match.group(name) is not None)
        value_start, value_end = match.span(group)
        if value_start < value_end:
            yield _Span(value_start, value_end, RedactionKind.CURSOR)
        resume = match.end()


def _state_blob_spans(content: str) -> Iterator[_Span]:
    """Spans of ``Setting state of <name> stream to {...}`` blobs and raw state messages.

    The blob ends at its matching brace rather than at the last ``}`` of the line: in a JSON log
    line the last brace closes the envelope, and redacting up to it would eat the envelope too.
    Where the blob cannot be delimited (a truncated line, an unusual repr) everything up to the end
    of the message is redacted, because keeping the line readable never outranks removing state.
    An empty blob ``{}`` holds nothing and is left alone. After ``Raw state message`` whatever
    follows is state: a blob as above, else the rest of the message.
    """
    search_from = 0
    while match := _STATE_INTRO.search(content, search_from):
        start = match.end()
        in_string = _inside_json_string(content, start)
        if match.group("raw") is not None and content[start : start + 1] != "{":
            end = _string_end(content, start) if in_string else len(content)
        else:
            end = _blob_end(content, start, inside_json_string=in_string)
        if start < end and re.sub(r"\s+", "", content[start:end]) != "{}":
            yield _Span(start, end, RedactionKind.STATE)
        search_from = max(end, start + 1)


def _to_string_spans(content: str) -> Iterator[_Span]:
    """Spans of the bracketed fields of an ``AirbyteStateMessage`` printed by ``toString()``."""
    for match in _TO_STRING.finditer(content):
        start = match.end()
        end = _blob_end(content, start, inside_json_string=_inside_json_string(content, start))
        yield _Span(start, end, RedactionKind.STATE)


def _state_object_spans(content: str) -> Iterator[_Span]:
    """Spans of the state objects in an Airbyte ``STATE`` message printed as a log line.

    Values shorter than ``MIN_FREE_TEXT_LENGTH`` (``"seed": 3``, ``"loop_offset": 20``) are not
    found by free-text matching, so the whole object goes, as any printed state blob does. When
    the object is JSON structure (not text inside a string) the marker is written as a JSON string
    so the line still parses; an empty object holds nothing and is left alone.
    """
    is_state_message = _STATE_MESSAGE.search(content) is not None
    is_config_api_state = _CONFIG_API_STATE.search(content) is not None
    for match in _STATE_OBJECT.finditer(content):
        if match.group("data") is not None and not is_state_message:
            continue
        if match.group("legacy") is not None and not is_config_api_state:
            continue
        start = match.end()
        in_string = _inside_json_string(content, start)
        end = _blob_end(content, start, inside_json_string=in_string)
        if re.sub(r"\s+", "", content[start:end]) != "{}":
            yield _Span(start, end, RedactionKind.STATE, quoted=not in_string)


# --------------------------------------------------------------------------------------------
# Reading JSON (and Python repr) inside a line
# --------------------------------------------------------------------------------------------

_BRACKETS = {"{": "}", "[": "]", "(": ")"}


def _is_json_number(content: str, start: int, end: int) -> bool:
    """Whether ``content[start:end]`` is a whole number value of a JSON line.

    Its marker is then written as a JSON string, so that ``"cursor": 1714551630`` becomes
    ``"cursor": "[REDACTED:cursor]"`` and the line still parses.
    """
    return (
        content.lstrip()[:1] in ("{", "[")
        and content[:start].rstrip()[-1:] in (":", ",", "[")
        and content[end:].lstrip()[:1] in (",", "}", "]")
        and not _inside_json_string(content, start)
    )


def _inside_json_string(content: str, position: int) -> bool:
    """Whether ``position`` falls inside a JSON string literal, counting unescaped quotes."""
    if '"' not in content:
        return False
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


def _string_end(content: str, start: int) -> int:
    """Raw index of the quote closing the JSON string that ``start`` is in (or the line's end)."""
    return _decode_json_string(content, start)[2]


def _blob_end(content: str, start: int, *, inside_json_string: bool) -> int:
    """End (exclusive) of the bracket-balanced blob at ``content[start]``, or a safe upper bound."""
    if not inside_json_string:
        end = _balanced_end(content, start)
        return len(content) if end is None else end
    decoded, raw_ends, string_end = _decode_json_string(content, start)
    end = _balanced_end(decoded, 0)
    if end is None:
        return string_end
    return raw_ends[end - 1]


def _balanced_end(text: str, start: int) -> int | None:
    """Index after the bracket closing the one at ``text[start]``, skipping quoted strings.

    Only the bracket kind that opens the blob is counted. Quoting follows Python repr and JSON:
    ``'...'`` or ``"..."`` with backslash escapes. ``None`` when the blob does not close within
    ``text`` (an apostrophe in an unquoted ``toString()`` value ends up here too: redacting to
    the end is the safe answer).
    """
    opener = text[start : start + 1]
    closer = _BRACKETS.get(opener)
    if closer is None:
        return None
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
        elif char == opener:
            depth += 1
        elif char == closer:
            depth -= 1
            if depth == 0:
                return index + 1
    return None


_JSON_STRING_TOKEN = re.compile(r'[^"\\]+|\\u[0-9a-fA-F]{4}|\\["\\/bfnrt]|\\|"')
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
    quote (``len(content)`` if the literal is not closed on this line). An invalid escape keeps
    its backslash literally.
    """
    chars: list[str] = []
    raw_ends: list[int] = []
    for token in _JSON_STRING_TOKEN.finditer(content, start):
        text = token.group()
        begin, end = token.span()
        if text == '"':
            return "".join(chars), raw_ends, begin
        if text[0] != "\\":  # a run of plain characters, one raw character each
            chars.append(text)
            raw_ends.extend(range(begin + 1, end + 1))
            continue
        if len(text) == 1:
            chars.append("\\")
        elif text[1] == "u":
            chars.append(chr(int(text[2:], 16)))
        else:
            chars.append(_JSON_ESCAPES[text[1]])
        raw_ends.append(end)
    return "".join(chars), raw_ends, len(content)
