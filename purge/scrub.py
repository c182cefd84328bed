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

Matching is Aho-Corasick (``ahocorasick-rs``, over UTF-8 bytes: several times faster than
``pyahocorasick`` over ``str``), in two stages:

1. **Find the lines.** A block of many lines (see :meth:`LogScrubber.scrub_text`) is searched in
   one pass with a leftmost-longest automaton (a DFA while it stays small) holding the spellings
   that do not start with another spelling, plus the words that every structural pattern needs
   (``Setting state of``, ``stream_state``, the cursor field names, ...). Leftmost-longest lets
   the library use its SIMD prefilter (up to 64 patterns); it reports non-overlapping matches
   only, but every occurrence of a pattern overlaps a reported match, so every line holding
   anything sensitive is found. Most lines hold nothing and are passed through untouched, without
   a single Python operation per line.
2. **Scrub a line.** On a line that was found, every occurrence of every spelling is taken,
   overlapping ones included, and the spans of the structural patterns are added. Leftmost-longest
   alone would not do here: after ``abcdxyz`` consumed the head of ``abcdxyz1234``, the tail of a
   second value ``xyz1234`` would survive. All spans are merged, so a value can never survive
   half-redacted because two rules disagreed about its edges. When spans of different kinds
   merge, the stronger kind names the marker (secret, then state, then cursor).

Lines are delimited by ``\\n``; no pattern contains a line break (a multi-line value is also
registered line by line), so nothing is ever matched across lines and a line's terminator is never
touched.
"""

from __future__ import annotations

import base64
import json
import math
import re
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from itertools import accumulate, islice
from typing import Any, NamedTuple
from urllib.parse import quote

import ahocorasick_rs

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

MIN_FREE_TEXT_LENGTH = 4
"""Values shorter than this are not matched in free text.

A cursor of ``"6"`` or a ``seed`` of ``3`` would otherwise wreck every timestamp, count and id in
the log while protecting nothing. Short values are still removed where their position is known:
inside a printed state blob and as the value of a cursor-field ``key=value`` pair. A number is
measured by its shortest rendering (``20.0`` is the number 20: too short; ``12345`` is long enough,
and so are its renderings; ``0042`` is text). The floor applies to secrets alike; configuration
secrets shorter than four characters are rare, and if one exists it is only removed where it
appears as part of a longer matched span.
"""

MIN_BASE64_LENGTH = 6
"""Values shorter than this many UTF-8 bytes (or than MIN_FREE_TEXT_LENGTH) are not looked for in
base64.

A value inside base64 text can only be recognised by the characters that depend on its bytes
alone; the characters at its edges also carry bits of whatever precedes and follows it. For a
value of ``n`` bytes at alignment ``k`` (the bytes before it, modulo 3) that stable core is
``b64(k bytes + value)[ceil(8k/6) : floor(8(k+n)/6)]``, between ``floor(4n/3) - 1`` and
``floor(4n/3)`` characters long: at six bytes, seven or eight characters (42 bits and more), long
enough not to hit random base64 by chance. The one to four bits of the value that sit in the edge
characters stay; they cannot identify it. Base64 wrapped across lines (MIME, PEM) is matched on
each line separately, so a value split by a wrap is not found there.
"""

SECRET_KEY_WORDS = (
    "password",
    "secret",
    "token",
    "api_key",
    "apikey",
    "access_key",
    "private_key",
    "client_secret",
    "credentials_json",
    "passphrase",
    "refresh_token",
    "access_token",
)
"""Config keys whose values are secrets whatever the spec says (substring, case-insensitive)."""

# A block scrubbed at once by ``scrub_chunks``, and the lines per batch of ``scrub_stream``: large
# enough that the per-call cost vanishes, small enough to keep memory bounded and the block in
# the CPU cache. Measured on the bench's 100 MB (1,000 values): 64 KiB to 1 MiB blocks are equally
# fast, 4 MiB ~15% slower; batches of 1,000 to 8,000 lines equal, 32,000 ~20% slower.
_BLOCK_CHARS = 1 << 20
_BATCH_LINES = 4096

# The block search runs as a DFA up to this many bytes of detectors (about 1,500 values in all
# their spellings): a third faster than an NFA, but ~250 bytes of memory per detector byte, so
# about 120 MB at the limit. Beyond it, a contiguous NFA, a few MB whatever the number of values.
_DFA_MAX_PATTERN_BYTES = 512 * 1024


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

METADATA_STATE_KEYS = frozenset(
    {
        "stream_descriptor",
        "streamDescriptor",
        "stream_name",
        "stream_namespace",
        "streamName",
        "streamNamespace",
        "cursor_field",
        "cursorField",
    }
)
"""Keys inside a state payload whose values name a stream, a namespace or a field.

Sluice keeps these names as metadata, so :func:`state_leaf_values` does not collect them as
cursor values: Java sources write ``{"stream_name": "users", "stream_namespace": "public",
"cursor_field": ["updated_at"], "cursor": "2024-05-01", ...}`` into their state, and redacting
``users`` in every line would make the log unreadable while protecting nothing.
"""


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

    Inside a payload, the leaves that name things rather than hold data are metadata too, and are
    skipped (see :data:`METADATA_STATE_KEYS`): a nested stream descriptor (``stream_descriptor``
    / ``streamDescriptor``), the ``stream_name`` / ``stream_namespace`` that the Java sources
    write into their per-stream and CDC state, and the field names under ``cursor_field``. A log
    line ``Read 100 records from users`` keeps ``users``. They are still removed where state is
    printed (a state blob, a STATE message), with the rest of the blob.

    ``None`` and booleans are skipped (``True`` is not a cursor). Numbers are rendered with
    ``str()``, plus ``"1234"`` for an integral float and ``"1234.0"`` for an int, because JSON
    serializers disagree about which one they print; an integral number shorter than
    :data:`MIN_FREE_TEXT_LENGTH` comes back only as ``"20"``, not as ``"20.0"``, which would pass
    for a long value although it is the same short number.
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
    """Collect every scalar under ``node``: everything inside a state payload is a value, except
    the names of streams, namespaces and fields (:data:`METADATA_STATE_KEYS`)."""
    node = _plain(node)
    if node is None or isinstance(node, bool):
        return
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key not in METADATA_STATE_KEYS:
                _collect_leaves(value, out)
    elif isinstance(node, list | tuple | set | frozenset):
        for value in node:
            _collect_leaves(value, out)
    elif isinstance(node, int):
        out.add(str(node))
        if len(str(node)) >= MIN_FREE_TEXT_LENGTH:
            out.add(f"{node}.0")
    elif isinstance(node, float):
        if math.isfinite(node) and node.is_integer():
            out.add(str(int(node)))
            if len(str(int(node))) >= MIN_FREE_TEXT_LENGTH:
                out.add(str(node))
        else:
            out.add(str(node))
    elif isinstance(node, str):
        if node:
            out.add(node)
    else:
        out.add(str(node))


# --------------------------------------------------------------------------------------------
# Collecting secrets from a connector's configuration
# --------------------------------------------------------------------------------------------


def spec_secret_values(spec: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    """Return the secrets of a connector ``config``, in order of appearance, without repeats.

    Two sources, because neither is enough alone: the values at the paths that the connector's
    ``spec`` marks ``airbyte_secret: true`` (walking ``properties``, nested objects, array
    ``items``, ``oneOf`` / ``anyOf`` / ``allOf`` branches and local ``$ref``), and the values of
    every key whose name contains one of :data:`SECRET_KEY_WORDS`, which catches what a spec forgot
    to mark. ``spec`` may be the connection specification (a JSON schema), the
    ``ConnectorSpecification`` holding it, or the ``SPEC`` message holding that.

    Everything under a marked path is a secret, numbers included. Under a secret-looking key name
    only strings are: ``max_tokens: 1000`` names no secret, and registering ``1000`` would wreck
    every count in the log. A secret string that is itself a JSON object (``credentials_json``, a
    service-account key) also yields its secret-looking fields, such as the private key, since a
    log may print them on their own.
    """
    schema: Any = spec
    if isinstance(schema, Mapping) and isinstance(schema.get("spec"), Mapping):
        schema = schema["spec"]
    if isinstance(schema, Mapping) and isinstance(schema.get("connectionSpecification"), Mapping):
        schema = schema["connectionSpecification"]
    found: dict[str, None] = {}  # an ordered set
    if isinstance(schema, Mapping):
        _walk_spec(schema, schema, config, found, depth=0)
    _walk_secret_names(config, found)
    return list(found)


def _walk_spec(
    schema: Mapping[str, Any],
    root: Mapping[str, Any],
    node: Any,
    found: dict[str, None],
    depth: int,
) -> None:
    """Collect the parts of ``node`` that ``schema`` marks ``airbyte_secret``."""
    if depth > 64:  # a recursive $ref: the config is finite, but a cycle in the schema is not
        return
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, Mapping) else None
        if isinstance(target, Mapping):
            _walk_spec(target, root, node, found, depth + 1)
    if schema.get("airbyte_secret") is True:
        _collect_secret(node, found, strings_only=False)
        return
    for keyword in ("oneOf", "anyOf", "allOf"):
        branches = schema.get(keyword)
        if isinstance(branches, list):
            for branch in branches:
                if isinstance(branch, Mapping):
                    _walk_spec(branch, root, node, found, depth + 1)
    properties = schema.get("properties")
    if isinstance(properties, Mapping) and isinstance(node, Mapping):
        for key, subschema in properties.items():
            if key in node and isinstance(subschema, Mapping):
                _walk_spec(subschema, root, node[key], found, depth + 1)
    items = schema.get("items")
    if isinstance(items, Mapping) and isinstance(node, list):
        for item in node:
            _walk_spec(items, root, item, found, depth + 1)


def _walk_secret_names(node: Any, found: dict[str, None]) -> None:
    """Collect the string values under every key that names a secret."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            if isinstance(key, str) and any(word in key.lower() for word in SECRET_KEY_WORDS):
                _collect_secret(value, found, strings_only=True)
            else:
                _walk_secret_names(value, found)
    elif isinstance(node, list | tuple):
        for item in node:
            _walk_secret_names(item, found)


def _collect_secret(node: Any, found: dict[str, None], *, strings_only: bool) -> None:
    """Collect every scalar under a secret, and the secret fields of a secret JSON document."""
    if isinstance(node, Mapping):
        for value in node.values():
            _collect_secret(value, found, strings_only=strings_only)
    elif isinstance(node, list | tuple):
        for item in node:
            _collect_secret(item, found, strings_only=strings_only)
    elif isinstance(node, str):
        if node:
            found[node] = None
            if node.lstrip().startswith("{"):
                try:
                    document = json.loads(node)
                except ValueError:
                    return
                _walk_secret_names(document, found)
    elif node is not None and not isinstance(node, bool) and not strings_only:
        found[str(node)] = None


# --------------------------------------------------------------------------------------------
# The spellings of a value
# --------------------------------------------------------------------------------------------

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_DATE_TIME = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:[Zz]|[+-]\d{2}(?::?\d{2})?)?"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_UTC_SUFFIXES = ("", "Z", "+00:00", "+0000")
_URLSAFE = str.maketrans("+/", "-_")
_PERCENT_ESCAPE = re.compile(r"%[0-9A-F]{2}")
_ESCAPED_CHARS = frozenset("\"'\\/")  # escaped by JSON or repr, or slashed by some JSON writers


def _value_spellings(value: str, *, cursor: bool) -> set[str]:
    """Every pattern that finds ``value`` in a log; none holds a line break.

    A cursor value also gets the renderings of the number or instant it names; a secret is taken
    literally. A multi-line value (a PEM key) cannot be matched across lines, so each of its lines
    is a value of its own too.
    """
    parts = {value}
    if "\n" in value or "\r" in value:
        parts.update(part.strip() for part in value.splitlines())
    spellings: set[str] = set()
    for part in parts:
        renderings = {part}
        base64_sources = {part}
        if cursor:
            numbers = _number_renderings(part)
            if numbers and len(min(numbers, key=len)) < MIN_FREE_TEXT_LENGTH:
                # ``20.0`` is the number 20, as short as ``20`` whatever it looks like; ``0042``
                # is looked for as the text it is, but not as the number 42.
                if "." in part:
                    continue
                numbers = set()
            renderings |= numbers
            instants, canonical = _timestamp_renderings(part)
            renderings |= instants
            base64_sources |= canonical
        for rendering in renderings:
            if len(rendering) >= MIN_FREE_TEXT_LENGTH:
                spellings |= _text_spellings(rendering)
                spellings |= _url_spellings(rendering)
        for source in base64_sources:
            if len(source) >= MIN_FREE_TEXT_LENGTH:
                # Base64 usually wraps JSON (a pagination token): the value may be escaped in it.
                spellings |= _base64_cores(source)
                spellings |= _base64_cores(_json_inner(source, ascii_only=True))
    return {s for s in spellings if s and "\n" not in s and "\r" not in s}


def _json_inner(text: str, *, ascii_only: bool) -> str:
    """``text`` as it appears between the quotes of a JSON string."""
    return json.dumps(text, ensure_ascii=ascii_only)[1:-1]


def _text_spellings(text: str) -> set[str]:
    """As is, Python repr (``str()`` of a dict, ``ascii()``), and JSON-escaped.

    JSON escaping comes ASCII-only (Python's ``json``) and raw UTF-8 (orjson, the CDK's), with
    ``\\/`` (PHP, some Java), once and twice: a STATE message or a repr printed inside a JSON log
    line is escaped again.
    """
    if text.isascii() and text.isprintable() and not _ESCAPED_CHARS.intersection(text):
        return {text}  # nothing to escape: every spelling is the text itself
    plain = {text, repr(text)[1:-1], ascii(text)[1:-1]}
    once = {_json_inner(form, ascii_only=flag) for form in plain for flag in (True, False)}
    twice = {_json_inner(form, ascii_only=flag) for form in once for flag in (True, False)}
    slashed = {form.replace("/", "\\/") for form in once if "/" in form}
    return plain | once | twice | slashed


def _url_spellings(text: str) -> set[str]:
    """URL-encoded as the common encoders do it: ``%xx`` or ``+`` for a space, upper or lower hex.

    Encoders disagree about which characters need no escape: Python's ``quote`` keeps ``/``
    unless told otherwise, a path segment keeps ``:`` and ``@``, JavaScript's
    ``encodeURIComponent`` keeps ``!'()*``, Java's ``URLEncoder`` keeps ``*`` and escapes ``~``.
    Each is derived from the fully escaped form by undoing the escapes it does not make (a literal
    ``%2F`` in the text is ``%252F`` there, so the undoing cannot misfire).
    """
    escaped = quote(text.encode("utf-8", "surrogatepass"), safe="")
    if escaped == text and "~" not in text:
        return {text}
    keep_slash = escaped.replace("%2F", "/")
    forms = {
        escaped,
        keep_slash,
        escaped.replace("%3A", ":").replace("%40", "@"),
        _unescape(escaped, "!'()*"),
        escaped.replace("%20", "+"),
        keep_slash.replace("%20", "+"),
        escaped.replace("%20", "+").replace("%2A", "*").replace("~", "%7E"),
    }
    return forms | {_PERCENT_ESCAPE.sub(_lower, form) for form in forms if "%" in form}


def _unescape(escaped: str, characters: str) -> str:
    for character in characters:
        escaped = escaped.replace(f"%{ord(character):02X}", character)
    return escaped


def _lower(match: re.Match[str]) -> str:
    return match.group().lower()


def _base64_cores(text: str) -> set[str]:
    """The part of ``text``'s base64 encoding that does not depend on what surrounds it.

    In ``b64(prefix + text + suffix)`` the encoding of ``text`` depends on its alignment ``k`` =
    ``len(prefix) % 3``. Output character ``i`` of a 3-byte group encodes bits ``6i .. 6i+6`` of
    the group; ``text`` occupies bits ``8k .. 8(k+n)``, so the characters fully inside are those
    from ``ceil(8k/6)`` to ``floor(8(k+n)/6)``, whatever the prefix and suffix bytes (or padding)
    are. Standard and URL-safe alphabets; see :data:`MIN_BASE64_LENGTH`.
    """
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) < MIN_BASE64_LENGTH:
        return set()
    cores: set[str] = set()
    for k in range(3):
        encoded = base64.b64encode(bytes(k) + raw).decode("ascii")
        core = encoded[-(-8 * k // 6) : 8 * (k + len(raw)) // 6]
        cores.add(core)
        cores.add(core.translate(_URLSAFE))
    return cores


def _number_renderings(value: str) -> set[str]:
    """Other ways a serializer prints the number ``value``: ``123``, ``123.0``, ``1.5``, ``1e-05``.

    JSON serializers disagree about integral floats, a decimal column may come back with or without
    its trailing zeros, and Python prints small and large floats in exponent form.
    """
    if not _NUMBER.fullmatch(value):
        return set()
    try:
        number = Decimal(value)
    except InvalidOperation:
        return set()
    if not number.is_finite() or abs(number.adjusted()) > 40:
        return set()
    renderings = {format(number.normalize(), "f")}
    if number == number.to_integral_value():
        integral = int(number)
        renderings |= {str(integral), f"{integral}.0"}
    as_float = float(number)
    if math.isfinite(as_float) and Decimal(repr(as_float)) == number:
        renderings.add(repr(as_float))
    return renderings


def _timestamp_renderings(value: str) -> tuple[set[str], set[str]]:
    """Renderings of the instant an ISO-8601 date-time names, and those worth a base64 search.

    The instant in UTC with ``T`` or a space, with fractional seconds as given, padded to
    milliseconds or microseconds, or cut to the second, followed by nothing, ``Z``, ``+00:00`` or
    ``+0000``; the wall time of its own offset when that is not UTC; epoch seconds, milliseconds
    and microseconds. A value without an offset is taken as UTC. Cut to the second is not the same
    instant, but it identifies the cursor as well as the instant does. The base64 search, which
    costs six patterns a rendering, is kept to the value itself and the ISO forms a cursor token
    most likely wraps (``isoformat()``, with ``Z``, JavaScript's ``toISOString()``).
    """
    if not _DATE_TIME.fullmatch(value):
        return set(), set()
    try:
        parsed = datetime.fromisoformat(value.upper().replace(",", "."))
        utc = parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        micros = (utc - _EPOCH) // timedelta(microseconds=1)
    except (ValueError, OverflowError):
        return set(), set()
    fractions = _fractions(utc.microsecond)
    renderings = {
        _wall_time(utc, separator) + fraction + suffix
        for separator in ("T", " ")
        for fraction in fractions
        for suffix in _UTC_SUFFIXES
    }
    offset = parsed.utcoffset()
    if offset:
        sign = "-" if offset < timedelta(0) else "+"
        hours, minutes = divmod(abs(offset) // timedelta(minutes=1), 60)
        suffixes = ("", f"{sign}{hours:02d}:{minutes:02d}", f"{sign}{hours:02d}{minutes:02d}")
        renderings |= {
            _wall_time(parsed, separator) + fraction + suffix
            for separator in ("T", " ")
            for fraction in fractions
            for suffix in suffixes
        }
    seconds, micro = divmod(micros, 1_000_000)
    millis = micros // 1000
    renderings |= {str(seconds), f"{seconds}.0", str(millis), f"{millis}.0", str(micros)}
    if micro:
        renderings.add(f"{seconds}.{micro:06d}".rstrip("0"))
    iso = utc.isoformat()
    canonical = {
        iso,
        iso.replace("+00:00", "Z"),
        f"{_wall_time(utc, 'T')}.{utc.microsecond // 1000:03d}Z",
    }
    return renderings, canonical


def _wall_time(moment: datetime, separator: str) -> str:
    """``YYYY-MM-DD?HH:MM:SS`` with a zero-padded year, which ``strftime`` does not promise."""
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}{separator}"
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    )


def _fractions(microsecond: int) -> set[str]:
    """Fractional-second renderings: none, ``.0`` (Java ``Timestamp``), milli, micro, trimmed."""
    if microsecond == 0:
        return {"", ".0", ".000", ".000000"}
    six = f".{microsecond:06d}"
    fractions = {"", six, six.rstrip("0")}
    if microsecond % 1000 == 0:
        fractions.add(six[:4])
    return fractions


# --------------------------------------------------------------------------------------------
# Scrubbing
# --------------------------------------------------------------------------------------------

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

_LINE_TERMINATORS = ("\r\n", "\n", "\r")
_DIGITS = frozenset("0123456789")
_ZONELESS_SECONDS = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}$")
_BRACKETS = {"{": "}", "[": "]", "(": ")"}


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
    """Replaces cursor values, secrets and printed state in log text by typed markers.

    Build one per sync run from that run's state and connector configuration (see
    :func:`state_leaf_values` and :func:`spec_secret_values`); it keeps running ``counts`` so the
    run's receipt can say how much was removed. Three ways in, all with the same result:
    :meth:`scrub_line` for one line, :meth:`scrub_text` for a block of lines, and the streaming
    :meth:`scrub_stream` (lines in, lines out) and :meth:`scrub_chunks` (text chunks in, scrubbed
    chunks out, the fastest). Not thread-safe: give each log its own scrubber or serialise calls.

    ``keep`` names the metadata Sluice keeps: stream names, namespaces, cursor field names,
    primary key field names (the ``cursor_fields`` are always kept as well). A cursor value equal
    to one of them is not looked for in free text, so ``Read 100 records from users`` keeps
    ``users`` even when some state holds the string ``users``. The trade-off: a cursor whose value
    really is ``users`` then stays readable in free text too (it is still removed inside printed
    state blobs and as the value of a cursor-field pair), since a name that appears in every line
    about its stream cannot be told apart from the same word used as a cursor. Secrets are never
    kept, whatever ``keep`` says.
    """

    def __init__(
        self,
        *,
        cursor_values: Iterable[str],
        secrets: Iterable[str],
        cursor_fields: Iterable[str] = (),
        keep: Iterable[str] = (),
    ) -> None:
        self._counts: dict[str, int] = {kind.value: 0 for kind in RedactionKind}
        cursor_fields = [f for f in cursor_fields if f]
        kept = frozenset(name for name in (*keep, *cursor_fields) if name)
        kinds: dict[str, RedactionKind] = {}
        for value in cursor_values:
            if value in kept:
                continue
            for spelling in _value_spellings(value, cursor=True):
                if spelling not in kept:
                    kinds[spelling] = RedactionKind.CURSOR
        for secret in secrets:
            for spelling in _value_spellings(secret, cursor=False):
                kinds[spelling] = RedactionKind.SECRET  # a secret outranks a cursor value
        encoded = [spelling.encode("utf-8", "surrogatepass") for spelling in kinds]
        self._kinds = list(kinds.values())
        # A number is only that number where no digit continues it: epoch seconds ``1714551630``
        # are not a rendering of the instant inside the milliseconds ``1714551630897`` of another
        # one, and cutting a number in two would also break the JSON it sits in.
        self._numeric = [_NUMBER.fullmatch(spelling) is not None for spelling in kinds]
        # Likewise a cursor timestamp rendered to the second without a zone is not that instant
        # where a fraction continues it: ``07:47:03`` is not ``07:47:03.715``, the time stamp
        # of a log line written in the same second (source-faker's cursor is "now"). Renderings
        # with a fraction are registered on their own. Secrets are always taken.
        self._digit_ended = [
            kind is RedactionKind.CURSOR and _ZONELESS_SECONDS.search(spelling) is not None
            for spelling, kind in kinds.items()
        ]
        # Overlapping search on the lines that have something: every occurrence, see module doc.
        self._line_automaton = (
            ahocorasick_rs.BytesAhoCorasick(
                encoded, implementation=ahocorasick_rs.Implementation.ContiguousNFA
            )
            if encoded
            else None
        )
        fields = sorted(set(cursor_fields), key=len, reverse=True)
        self._pair_pattern = _build_pair_pattern(fields) if fields else None
        self._fields = tuple(fields)
        # The block search only has to find the lines, not every spelling: a spelling that
        # starts with another one finds no line that the shorter one misses (``...58`` finds
        # every ``...58.000Z``, ``...58+00:00``), and a smaller automaton is a faster one.
        detectors = _prefix_minimal([*encoded, *(w.encode() for w in _STRUCTURE_TRIGGERS)])
        detectors.extend(field.encode("utf-8", "surrogatepass") for field in fields)
        self._block_automaton = ahocorasick_rs.BytesAhoCorasick(
            detectors,
            matchkind=ahocorasick_rs.MatchKind.LeftmostLongest,
            implementation=(
                ahocorasick_rs.Implementation.DFA
                if sum(map(len, detectors)) <= _DFA_MAX_PATTERN_BYTES
                else ahocorasick_rs.Implementation.ContiguousNFA
            ),
        )

    @property
    def counts(self) -> dict[str, int]:
        """Redactions so far by kind; all three kinds are always present."""
        return dict(self._counts)

    @property
    def pattern_count(self) -> int:
        """How many spellings of the cursor values and secrets are looked for."""
        return len(self._kinds)

    def scrub_line(self, line: str) -> str:
        """Return ``line`` with every sensitive span replaced; its terminator is kept as is."""
        content, terminator = _split_terminator(line)
        spans = self._spans(content)
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

    def scrub_text(self, text: str) -> str:
        """Return ``text``, a block of ``\\n``-terminated lines, scrubbed line by line.

        The same result as :meth:`scrub_line` on each line, at the speed of one automaton pass
        over the block: only the lines in which that pass finds something are looked at again.
        ``text`` is returned itself when nothing was found. A line cut in two by the end of the
        block is scrubbed as two lines, so feed whole lines (as :meth:`scrub_chunks` does).
        """
        if not text:
            return text
        data = text.encode("utf-8", "surrogatepass")
        hits = self._block_automaton.find_matches_as_indexes(data)
        if not hits:
            return text
        if len(data) == len(text):  # one byte per character: byte offsets are str offsets
            parts: list[str] = []
            position = 0
            for _, start, _end in hits:
                if start < position:
                    continue  # another hit on a line already scrubbed
                line_start = text.rfind("\n", 0, start) + 1
                line_end = text.find("\n", start) + 1 or len(text)
                parts.append(text[position:line_start])
                parts.append(self.scrub_line(text[line_start:line_end]))
                position = line_end
            parts.append(text[position:])
            return "".join(parts)
        pieces: list[bytes] = []
        position = 0
        for _, start, _end in hits:
            if start < position:
                continue
            line_start = data.rfind(b"\n", 0, start) + 1
            line_end = data.find(b"\n", start) + 1 or len(data)
            pieces.append(data[position:line_start])
            line = data[line_start:line_end].decode("utf-8", "surrogatepass")
            pieces.append(self.scrub_line(line).encode("utf-8", "surrogatepass"))
            position = line_end
        pieces.append(data[position:])
        return b"".join(pieces).decode("utf-8", "surrogatepass")

    def scrub_chunks(self, chunks: Iterable[str]) -> Iterator[str]:
        """Scrub text arriving in chunks of any size (``file.read(n)``), in bounded memory.

        Chunks are gathered into blocks of at least 1 MiB cut after a line break and scrubbed with
        :meth:`scrub_text`; the concatenation of what is yielded is the scrubbed text. Memory is
        one block plus the longest line.
        """
        pending: list[str] = []
        size = 0
        threshold = _BLOCK_CHARS
        for chunk in chunks:
            if not chunk:
                continue
            pending.append(chunk)
            size += len(chunk)
            if size < threshold:
                continue
            text = "".join(pending)
            cut = text.rfind("\n") + 1
            if not cut:  # one line longer than a block: wait for its end, without re-joining often
                pending = [text]
                threshold = 2 * size
                continue
            yield self.scrub_text(text[:cut])
            rest = text[cut:]
            pending = [rest] if rest else []
            size = len(rest)
            threshold = _BLOCK_CHARS
        if pending:
            yield self.scrub_text("".join(pending))

    def scrub_stream(self, lines: Iterable[str]) -> Iterator[str]:
        """Scrub an iterable of lines, yielding one scrubbed line per line, in bounded memory.

        Lines are read ahead in batches of a few thousand, each searched in one pass like
        :meth:`scrub_text`; lines without a hit are yielded as they came. Each line is scrubbed on
        its own (as :meth:`scrub_line` would), whatever its terminator.
        """
        iterator = iter(lines)
        while batch := list(islice(iterator, _BATCH_LINES)):
            yield from self._scrub_batch(batch)

    def _scrub_batch(self, batch: list[str]) -> list[str]:
        text = "".join(batch)
        data = text.encode("utf-8", "surrogatepass")
        hits = self._block_automaton.find_matches_as_indexes(data)
        if not hits:
            return batch
        if len(data) == len(text):
            ends = list(accumulate(map(len, batch)))
        else:
            ends = list(accumulate(len(line.encode("utf-8", "surrogatepass")) for line in batch))
        done = -1
        for _, start, _end in hits:
            index = bisect_right(ends, start)
            if index != done:
                batch[index] = self.scrub_line(batch[index])
                done = index
        return batch

    def _spans(self, content: str) -> list[_Span]:
        """Every sensitive span of one line's content, unmerged."""
        spans: list[_Span] = []
        if _STATE_PREFIX in content or _RAW_STATE in content:
            spans.extend(_state_blob_spans(content))
        if _TO_STRING_CLASS in content:
            spans.extend(_to_string_spans(content))
        if _STATE_KEY_HINT.search(content):
            spans.extend(_state_object_spans(content))
        if self._pair_pattern is not None:
            spans.extend(_pair_value_spans(self._pair_pattern, self._fields, content))
        if self._line_automaton is not None:
            data = content.encode("utf-8", "surrogatepass")
            matches = self._line_automaton.find_matches_as_indexes(data, overlapping=True)
            if matches and len(data) != len(content):
                # Byte offsets to str offsets; only lines with non-ASCII text and a hit pay this.
                def chars(offset: int) -> int:
                    return len(data[:offset].decode("utf-8", "surrogatepass"))

                matches = [(index, chars(start), chars(end)) for index, start, end in matches]
            kinds, numeric, digit_ended = self._kinds, self._numeric, self._digit_ended
            for index, start, end in matches:
                if not numeric[index]:
                    if digit_ended[index] and _continues_number(content, end):
                        continue
                    spans.append(_Span(start, end, kinds[index]))
                elif not (
                    (start > 0 and content[start - 1] in _DIGITS)
                    or (end < len(content) and content[end] in _DIGITS)
                ):
                    quoted = _is_json_number(content, start, end)
                    spans.append(_Span(start, end, kinds[index], quoted))
        return spans


def _continues_number(content: str, end: int) -> bool:
    """Whether digits, or a decimal point and digits, follow position `end`."""
    following = content[end : end + 2]
    return following[:1] in _DIGITS or (following[:1] in (".", ",") and following[1:2] in _DIGITS)


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


def _prefix_minimal(patterns: list[bytes]) -> list[bytes]:
    """The patterns that do not start with another pattern of the list.

    Sorted, a pattern's shortest prefix in the list comes right before the patterns that extend
    it (anything between them starts with it too), so one pass keeps what does not start with the
    last pattern kept.
    """
    kept: list[bytes] = []
    for pattern in sorted(set(patterns)):
        if not kept or not pattern.startswith(kept[-1]):
            kept.append(pattern)
    return kept


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
