"""The spellings a value takes in a log, each a pattern for the free-text search.

As is, JSON-escaped (once and twice, ASCII-only or raw UTF-8, with ``\\/``), Python repr,
URL-encoded the ways common encoders do it, the stable core of its base64 encoding at each of the
three alignments; for a cursor value that is a number or an ISO-8601 date-time, also the other
renderings of that number or instant. See :func:`_value_spellings`.
"""

from __future__ import annotations

import base64
import json
import math
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from urllib.parse import quote

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
