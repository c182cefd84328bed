"""Property tests for the log scrubber: random values in random log lines, in every form.

The forms a value should be found in are computed here, independently of ``purge.scrub``: the
scrubber's own list of spellings is only used to keep the neutral text of a template neutral.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from urllib.parse import quote, quote_plus

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from purge.scrub import (
    MIN_BASE64_LENGTH,
    MIN_FREE_TEXT_LENGTH,
    LogScrubber,
    RedactionKind,
    state_leaf_values,
)
from purge.scrub.patterns import _STRUCTURE_TRIGGERS
from purge.scrub.spellings import _value_spellings

SETTINGS = settings(
    max_examples=400,
    deadline=None,
    database=None,  # nothing left behind in the work tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
MARKERS = tuple(kind.marker for kind in RedactionKind)
# The delimiters around an embedded value: no value holds them and no spelling makes them, so a
# redaction can never reach across them into the neutral text of a template.
OPEN, CLOSE = "\u2986", "\u2985"
EXCLUDED = "\n\r\x00" + OPEN + CLOSE

# --- values ------------------------------------------------------------------------------------

texts = st.text(
    alphabet=st.one_of(
        st.characters(blacklist_categories=("Cs",), blacklist_characters=EXCLUDED),
        st.sampled_from("'\"\\/ %+:=&?{}é✓"),
    ),
    min_size=1,
    max_size=24,
)
zones = st.sampled_from(
    [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30))]
)
instants = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.none() | zones
)
integers = st.integers(min_value=-(10**15), max_value=10**18)
floats = st.floats(allow_nan=False, allow_infinity=False, width=64)
decimals = st.decimals(
    allow_nan=False, allow_infinity=False, places=4, min_value=-(10**9), max_value=10**9
)


@st.composite
def timestamps(draw: st.DrawFn) -> str:
    """An ISO-8601 date-time as a state would hold it."""
    moment = draw(instants)
    if draw(st.booleans()):
        moment = moment.replace(microsecond=0)
    text = moment.isoformat(sep=draw(st.sampled_from("T ")))
    if text.endswith("+00:00") and draw(st.booleans()):
        text = text[: -len("+00:00")] + "Z"
    return text


# A state leaf: what ``state_leaf_values`` gets from JSON, rendered by it into cursor values.
leaves = st.one_of(texts, timestamps(), integers, floats, decimals.map(str))


def free_text(value: str) -> bool:
    """Long enough to be looked for anywhere: four characters, and a number with a fraction
    (``20.0``) is measured without its trailing zeros."""
    if NUMBER.fullmatch(value) and "." in value:
        value = format(Decimal(value).normalize(), "f")
    return len(value) >= MIN_FREE_TEXT_LENGTH


def inside_a_longer_number(value: str, text: str) -> bool:
    """Whether the number `value` occurs in `text` with a digit right before or after it, as
    part of another number (which the scrubber leaves: epoch seconds are not a rendering of the
    milliseconds that start with them)."""
    if not NUMBER.fullmatch(value):
        return False
    start = text.find(value)
    while start != -1:
        end = start + len(value)
        if text[start - 1 : start] in ASCII_DIGITS or text[end : end + 1] in ASCII_DIGITS:
            return True
        start = text.find(value, start + 1)
    return False


def cursor_values(leaf: object) -> list[str]:
    state = {"type": "STREAM", "stream": {"stream_descriptor": {"name": "s"}, "stream_state": {}}}
    state["stream"]["stream_state"] = {"cursor": leaf}  # type: ignore[index]
    return sorted(state_leaf_values([state]))


# --- the forms a value takes in a log, computed independently ----------------------------------


NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
ASCII_DIGITS = frozenset("0123456789")
PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
PLAIN_DATE_TIME = re.compile(
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d{6})?(?:Z|[+-]\d{2}:\d{2})?"
)


def renderings(value: str) -> set[str]:
    """The value, and the same number or instant as other writers print it."""
    out = {value}
    if PLAIN_NUMBER.fullmatch(value) and len(value) < 30:
        number = Decimal(value)
        if number == int(number):
            out |= {str(int(number)), f"{int(number)}.0"}
    if PLAIN_DATE_TIME.fullmatch(value):
        moment = datetime.fromisoformat(value)
        utc = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
        base = f"{utc:%Y-%m-%d}T{utc:%H:%M:%S}"
        fractions = [".000", ".000000"] if utc.microsecond == 0 else [f".{utc.microsecond:06d}"]
        for fraction in ["", *fractions]:
            for suffix in ("Z", "+00:00", ""):
                out.add(base + fraction + suffix)
                out.add(base.replace("T", " ") + fraction + suffix)
        epoch = utc - datetime(1970, 1, 1, tzinfo=UTC)
        out.add(str(epoch // timedelta(seconds=1)))
        out.add(str(epoch // timedelta(milliseconds=1)))
    return {r for r in out if free_text(r)}


def encodings(rendering: str) -> dict[str, str]:
    """The rendering as is, JSON-escaped, repr'd and URL-encoded."""
    return {
        "as is": rendering,
        "json": json.dumps(rendering)[1:-1],
        "json utf-8": json.dumps(rendering, ensure_ascii=False)[1:-1],
        "repr": repr(rendering)[1:-1],
        "quote": quote(rendering, safe=""),
        "quote /": quote(rendering),
        "quote_plus": quote_plus(rendering),
    }


def all_forms(value: str) -> set[str]:
    return {form for r in renderings(value) for form in encodings(r).values()}


# --- log templates: (form name, how the line embeds it) ----------------------------------------

Template = Callable[[str], str]
TEMPLATES: dict[str, Template] = {
    "worker": lambda form: f"2026-01-02 INFO i.a.w.Worker(run):42 - got {OPEN}{form}{CLOSE} ok\n",
    "json log": lambda form: (
        json.dumps(
            {"type": "LOG", "log": {"level": "INFO", "message": f"v {OPEN}{form}{CLOSE}"}},
            ensure_ascii=False,
        )
        + "\n"
    ),
    "url": lambda form: f"GET https://api.example.com/v1/items?since={OPEN}{form}{CLOSE}&n=2\n",
    "bare": lambda form: f"{OPEN}{form}{CLOSE}",
}


def masked(text: str) -> str:
    """The text with each marker made one character no value holds, so none can join values."""
    for marker in MARKERS:
        text = text.replace(marker, "\x00")
    return text


def assert_gone(text: str, forms: set[str]) -> None:
    left = masked(text)
    for form in forms:
        assert form not in left, (form, text)


def neutral(value: str, template: Template) -> bool:
    """Whether the template's own text holds no spelling of the value."""
    skeleton = template("")
    return not any(spelling in skeleton for spelling in _value_spellings(value, cursor=True))


# --- properties --------------------------------------------------------------------------------


@SETTINGS
@given(
    leaf=leaves,
    template=st.sampled_from(sorted(TEMPLATES)),
    data=st.data(),
)
def test_value_in_every_form_and_template_is_gone(
    leaf: object, template: str, data: st.DataObject
) -> None:
    values = cursor_values(leaf)
    long_values = [v for v in values if free_text(v)]
    assume(long_values)
    value = data.draw(st.sampled_from(long_values))
    assume(not any(value in marker for marker in MARKERS))
    embed = TEMPLATES[template]
    assume(neutral(value, embed))
    rendering = data.draw(st.sampled_from(sorted(renderings(value))))
    form = data.draw(st.sampled_from(sorted(set(encodings(rendering).values()))))
    if template == "json log":
        # The template escapes the text itself: embed the rendering, JSON makes the form.
        form = rendering
    line = embed(form)

    scrubber = LogScrubber(cursor_values=values, secrets=())
    out = scrubber.scrub_line(line)
    assert_gone(out, all_forms(value))
    # The neutral text around the value is byte for byte what it was.
    head, tail = line.split(OPEN, 1)[0], line.rsplit(CLOSE, 1)[1]
    assert out.startswith(head + OPEN) and out.endswith(CLOSE + tail)
    assert scrubber.counts["cursor"] >= 1
    # The block path gives the same line.
    assert LogScrubber(cursor_values=values, secrets=()).scrub_text(line) == out


@SETTINGS
@given(
    value=texts.filter(
        lambda v: len(v) >= MIN_FREE_TEXT_LENGTH and len(v.encode()) >= MIN_BASE64_LENGTH
    ),
    prefix=st.binary(max_size=7),
    suffix=st.binary(max_size=4),
    urlsafe=st.booleans(),
)
def test_secret_inside_base64_is_gone_at_every_alignment(
    value: str, prefix: bytes, suffix: bytes, urlsafe: bool
) -> None:
    raw = value.encode()
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    token = encode(prefix + raw + suffix).decode()
    # Characters fully determined by the value's bits: 6-bit groups inside its 8-bit span.
    core = token[-(-8 * len(prefix) // 6) : 8 * (len(prefix) + len(raw)) // 6]
    line = f"Authorization: Bearer {OPEN}{token}{CLOSE}\n"
    assume(not any(s in line.split(OPEN)[0] for s in _value_spellings(value, cursor=False)))
    out = LogScrubber(cursor_values=(), secrets=(value,)).scrub_line(line)
    assert core not in masked(out)
    assert RedactionKind.SECRET.marker in out
    assert out.startswith(f"Authorization: Bearer {OPEN}") and out.endswith(f"{CLOSE}\n")


@SETTINGS
@given(
    head=texts.filter(lambda v: len(v) >= MIN_FREE_TEXT_LENGTH),
    middle=texts,
    tail=texts,
)
def test_overlapping_values_scrub_completely(head: str, middle: str, tail: str) -> None:
    # x and xk; and two values overlapping head-to-tail (head+middle, middle+tail).
    values = (head, head + tail, head + middle, middle + tail)
    long_values = [v for v in values if free_text(v)]
    assume(not any(v in marker for v in long_values for marker in MARKERS))
    text = (
        f"a {head + tail} b\n"
        f"c {head + middle + tail} d\n"
        + json.dumps({"message": head + middle + tail + head})
        + "\n"
    )
    # Digits run together (head "0000", middle and tail "0") make one longer number, which is
    # not the value: a number is only that number where no digit continues it.
    assume(not any(inside_a_longer_number(v, text) for v in long_values))
    scrubber = LogScrubber(cursor_values=values, secrets=())
    out = scrubber.scrub_text(text)
    assert_gone(out, {form for v in long_values for form in encodings(v).values()})
    assert out.count("\n") == text.count("\n")


@SETTINGS
@given(
    leaves=st.lists(leaves, min_size=1, max_size=5),
    lines=st.lists(texts, min_size=1, max_size=30),
    positions=st.lists(st.integers(min_value=0, max_value=29), max_size=5),
)
def test_unrelated_text_stays_byte_identical(
    leaves: list[object], lines: list[str], positions: list[int]
) -> None:
    values = [v for leaf in leaves for v in cursor_values(leaf)]
    spellings = {s for v in values for s in _value_spellings(v, cursor=True)}
    unrelated = [line + "\n" for line in lines]
    for line in unrelated:
        assume(not any(s in line for s in spellings))
        assume(not any(word in line for word in _STRUCTURE_TRIGGERS))
    # Lines that do hold a value, in between: the others must not move by a byte.
    sensitive = [v for v in values if free_text(v)]
    mixed = list(unrelated)
    for index, position in enumerate(positions):
        if sensitive:
            mixed.insert(min(position, len(mixed)), f"x {sensitive[index % len(sensitive)]} y\n")
    scrubber = LogScrubber(cursor_values=values, secrets=(), cursor_fields=("updated_at",))
    out = re.findall(r"[^\n]*\n", scrubber.scrub_text("".join(mixed)))
    assert len(out) == len(mixed)
    for before, after in zip(mixed, out, strict=True):
        if before in unrelated:
            assert after == before
        else:
            assert_gone(after, set(sensitive))
    assert list(LogScrubber(cursor_values=values, secrets=()).scrub_stream(unrelated)) == unrelated


short_leaves = st.one_of(
    st.integers(min_value=-99, max_value=999),
    st.text(alphabet="abcxyz019'\" ", min_size=1, max_size=MIN_FREE_TEXT_LENGTH - 1),
)


@SETTINGS
@given(leaf=short_leaves, other=short_leaves)
def test_short_values_only_go_where_their_place_is_known(leaf: object, other: object) -> None:
    values = cursor_values(leaf)
    short = str(leaf)
    blob = {"updated_at": leaf, "seed": other}
    state_message = {
        "type": "STATE",
        "state": {
            "type": "STREAM",
            "stream": {"stream_descriptor": {"name": "users"}, "stream_state": blob},
        },
    }
    scrubber = LogScrubber(cursor_values=values, secrets=(), cursor_fields=("updated_at",))

    setting = f"Setting state of users stream to {blob}\n"
    assert scrubber.scrub_line(setting) == (
        f"Setting state of users stream to {RedactionKind.STATE.marker}\n"
    )
    printed = json.loads(scrubber.scrub_line(json.dumps(state_message)))
    assert printed["state"]["stream"]["stream_state"] == RedactionKind.STATE.marker
    assert printed["state"]["stream"]["stream_descriptor"] == {"name": "users"}
    pair = scrubber.scrub_line(f"cursor updated_at={json.dumps(short)} next\n")
    assert pair == f'cursor updated_at="{RedactionKind.CURSOR.marker}" next\n'

    # In free text a short value is left alone: it would hit every count and id in the log.
    free = f"Read {short} records from users | {short}\n"
    assert scrubber.scrub_line(free) == free


FRAGMENTS = (
    "Setting state of users stream to {'updated_at': 5, 'seed': 3}",
    '{"type":"STATE","state":{"type":"LEGACY","data":{"c":1}}}',
    '{"stateType":"legacy","state":{"c":1}}',
    "Raw state message: x=1",
    "AirbyteStateMessage(type=STREAM, streamState={c=1})",
    "updated_at=5",
    '\\"updated_at\\": \\"5\\"',
    "emitted_at 1714551630897",
    "STATE",
    "{",
    '"',
)


@SETTINGS
@given(
    leaf=leaves,
    pieces=st.lists(
        st.lists(st.one_of(st.sampled_from(FRAGMENTS), texts, st.just("VALUE")), max_size=4),
        min_size=1,
        max_size=12,
    ),
)
def test_the_block_path_is_the_line_path(leaf: object, pieces: list[list[str]]) -> None:
    """Whatever a line holds, scrub_text and scrub_stream give what scrub_line gives."""
    values = cursor_values(leaf)
    value = max(values, key=len)
    lines = [
        " ".join(
            json.dumps(value) if p == "VALUE" and i % 2 else value if p == "VALUE" else p
            for i, p in enumerate(parts)
        )
        + "\n"
        for parts in pieces
    ]

    def build() -> LogScrubber:
        return LogScrubber(cursor_values=values, secrets=(), cursor_fields=("updated_at",))

    by_line = build()
    expected = [by_line.scrub_line(line) for line in lines]
    block = build()
    assert block.scrub_text("".join(lines)) == "".join(expected)
    assert block.counts == by_line.counts
    stream = build()
    assert list(stream.scrub_stream(lines)) == expected
    assert stream.counts == by_line.counts
