"""Tests for the log scrubber: what must disappear, and what must stay byte for byte."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest

import purge.scrub.scanner as scanner_module
from purge.scrub import (
    MIN_BASE64_LENGTH,
    MIN_FREE_TEXT_LENGTH,
    LogScrubber,
    RedactionKind,
    spec_secret_values,
    state_leaf_values,
)

DATA = Path(__file__).parent / "data"
CURSOR = RedactionKind.CURSOR.marker
SECRET = RedactionKind.SECRET.marker
STATE = RedactionKind.STATE.marker


def scrubber(
    cursor_values: tuple[str, ...] = (),
    secrets: tuple[str, ...] = (),
    cursor_fields: tuple[str, ...] = (),
) -> LogScrubber:
    return LogScrubber(cursor_values=cursor_values, secrets=secrets, cursor_fields=cursor_fields)


# --- free text ---------------------------------------------------------------------------------


def test_overlapping_values_scrub_completely() -> None:
    s = scrubber(cursor_values=("abcd", "abcdxyz", "cdxy", "xyz1234"))
    out = s.scrub_line("a=abcdxyz1234 b=abcd c=zcdxyq\n")
    for value in ("abcd", "xyz", "cdxy", "1234"):
        assert value not in out
    assert out.endswith("\n")
    assert out == f"a={CURSOR} b={CURSOR} c=z{CURSOR}q\n"
    assert s.counts["cursor"] == 3


def test_unrelated_text_is_byte_identical() -> None:
    s = scrubber(cursor_values=("2024-01-01T00:00:00Z",), secrets=("hunter2hunter2",))
    lines = [
        "plain text with tabs\tand  double  spaces\r\n",
        '{"type":"LOG","log":{"level":"INFO","message":"Read 20 records"}}\n',
        "unicode: żółć ✓ \u00a0 no newline at end",
        "",
        "\n",
    ]
    assert [s.scrub_line(line) for line in lines] == lines
    assert s.counts == {"cursor": 0, "secret": 0, "state": 0}


def test_empty_scrubber_passes_lines_through() -> None:
    s = scrubber()
    line = "Setting state of X stream to {}\n"
    assert s.scrub_line(line) == line
    assert s.counts == {"cursor": 0, "secret": 0, "state": 0}


def test_json_escaped_and_repr_forms_are_removed() -> None:
    value = 'it\'s "quoted" \\ back ünï ✓'
    blob = {"c": value}
    s = scrubber(cursor_values=(value,))
    lines = [
        f"raw {value} end",
        f'json {{"c": {json.dumps(value)}}} end',
        f'json utf8 {{"c": {json.dumps(value, ensure_ascii=False)}}} end',
        f"repr {{'c': {value!r}}} end",
        json.dumps({"message": f"repr in json {blob}"}),
    ]
    for line in lines:
        out = s.scrub_line(line)
        assert CURSOR in out, line
        assert "quoted" not in out, out
        assert "back" not in out, out
    assert s.counts["cursor"] == len(lines)


def test_secret_outranks_cursor_value() -> None:
    s = scrubber(cursor_values=("sharedvalue",), secrets=("sharedvalue",))
    assert s.scrub_line("x sharedvalue y") == f"x {SECRET} y"
    assert s.counts == {"cursor": 0, "secret": 1, "state": 0}


def test_multiline_secret_lines_are_found_one_at_a_time() -> None:
    key = "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG\n-----END KEY-----"
    s = scrubber(secrets=(key,))
    out = list(s.scrub_stream(key.splitlines(keepends=True)))
    assert "MIIEvQIBADANBgkqhkiG" not in "".join(out)
    assert out[1] == f"{SECRET}\n"


def test_short_value_not_replaced_in_free_text() -> None:
    assert len("6") < MIN_FREE_TEXT_LENGTH
    s = scrubber(cursor_values=("6",), secrets=("abc",), cursor_fields=("updated_at",))
    line = "Read 16 records in 6.6s from abc stream\n"
    assert s.scrub_line(line) == line


# --- structural patterns -----------------------------------------------------------------------


def test_short_value_removed_inside_state_blob() -> None:
    s = scrubber(cursor_values=("6",))
    line = "2024-05-01 INFO Setting state of users stream to {'seed': 6, 'updated_at': 6}\n"
    assert s.scrub_line(line) == f"2024-05-01 INFO Setting state of users stream to {STATE}\n"
    assert s.counts == {"cursor": 0, "secret": 0, "state": 1}


def test_short_value_removed_in_cursor_field_pair() -> None:
    s = scrubber(cursor_values=("6",), cursor_fields=("updated_at",))
    assert s.scrub_line("emitting updated_at=6, id=6\n") == f"emitting updated_at={CURSOR}, id=6\n"
    assert s.counts["cursor"] == 1


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("updated_at: 6 next", f"updated_at: {CURSOR} next"),
        ('{"updated_at": "6", "id": 6}', f'{{"updated_at": "{CURSOR}", "id": 6}}'),
        ("{'updated_at': '6'}", f"{{'updated_at': '{CURSOR}'}}"),
        ("{'updated_at': ''}", "{'updated_at': ''}"),
        ("updated_at='2024-01", f"updated_at='{CURSOR}"),
        ('{"updated_at":6}', f'{{"updated_at":{CURSOR}}}'),
        ("[updated_at = 6]", f"[updated_at = {CURSOR}]"),
        (
            '{"message":"cursor {\\"updated_at\\": \\"6 \\\\\\"x\\"}"}',
            f'{{"message":"cursor {{\\"updated_at\\": \\"{CURSOR}\\"}}"}}',
        ),
        ('{"message":"updated_at=6"}', f'{{"message":"updated_at={CURSOR}"}}'),
        ("last_updated_at=6", "last_updated_at=6"),
        ('{"message":"a\\nupdated_at=6\\tb"}', f'{{"message":"a\\nupdated_at={CURSOR}\\tb"}}'),
    ],
)
def test_cursor_field_pair_forms(line: str, expected: str) -> None:
    assert scrubber(cursor_fields=("updated_at",)).scrub_line(line) == expected


def test_faker_state_line_keeps_prefix() -> None:
    line = (
        "Setting state of SourceFaker stream to "
        "{'seed': 1, 'updated_at': '2026-11-29T06:37:06+00:00', 'loop_offset': 5}\n"
    )
    out = scrubber().scrub_line(line)
    assert out == f"Setting state of SourceFaker stream to {STATE}\n"


def test_state_blob_inside_json_log_line_keeps_envelope() -> None:
    blob = {"k": "a'}b", "n": {"x": 1}}
    message = f"Setting state of SourceFaker stream to {blob}"
    line = json.dumps({"type": "LOG", "log": {"level": "INFO", "message": message}}) + "\n"
    out = scrubber().scrub_line(line)
    assert json.loads(out)["log"]["message"] == f"Setting state of SourceFaker stream to {STATE}"
    assert out.endswith('"}}\n')


def test_empty_state_blob_is_left_alone() -> None:
    s = scrubber()
    line = '{"type":"LOG","log":{"message":"Setting state of SourceFaker stream to {}"}}\n'
    assert s.scrub_line(line) == line
    assert s.counts["state"] == 0


def test_unterminated_state_blob_redacts_to_end_of_line() -> None:
    out = scrubber().scrub_line("Setting state of a stream to {'updated_at': '2024-01\n")
    assert out == f"Setting state of a stream to {STATE}\n"


def test_state_message_objects_are_redacted_and_stay_json() -> None:
    s = scrubber()
    messages = [
        {
            "type": "STATE",
            "state": {
                "type": "GLOBAL",
                "global": {
                    "shared_state": {"lsn": 7},
                    "stream_states": [
                        {"stream_descriptor": {"name": "users"}, "stream_state": {"id": 1}},
                        {"stream_descriptor": {"name": "empty"}, "stream_state": {}},
                    ],
                },
            },
        },
        {"type": "STATE", "state": {"type": "LEGACY", "data": {"users": {"c": 1}}}},
    ]
    out = [json.loads(s.scrub_line(json.dumps(message))) for message in messages]
    global_state = out[0]["state"]["global"]
    assert global_state["shared_state"] == STATE
    assert global_state["stream_states"][0] == {
        "stream_descriptor": {"name": "users"},
        "stream_state": STATE,
    }
    assert global_state["stream_states"][1]["stream_state"] == {}
    assert out[1]["state"]["data"] == STATE
    assert s.counts == {"cursor": 0, "secret": 0, "state": 3}


def test_state_object_inside_log_message_and_record_data() -> None:
    s = scrubber()
    printed = json.dumps({"type": "STATE", "stream": {"stream_state": {"c": 1}}})
    line = json.dumps({"type": "LOG", "log": {"message": f"emitting {printed}"}})
    message = json.loads(s.scrub_line(line))["log"]["message"]
    assert message == f'emitting {{"type": "STATE", "stream": {{"stream_state": {STATE}}}}}'

    record = '{"type":"RECORD","record":{"stream":"s","data":{"stream_state_note":1}}}\n'
    assert s.scrub_line(record) == record


# --- state_leaf_values -------------------------------------------------------------------------


def test_state_leaf_values_stream_global_legacy_and_bare() -> None:
    states = [
        {
            "type": "STREAM",
            "stream": {
                "stream_descriptor": {"name": "users", "namespace": "public"},
                "stream_state": {"updated_at": "2024-01-01", "nested": [{"id": 7}], "on": True},
            },
            "sourceStats": {"recordCount": 99.0},
        },
        {
            "type": "GLOBAL",
            "global": {
                "shared_state": {"lsn": 123456},
                "stream_states": [
                    {
                        "stream_descriptor": {"name": "orders"},
                        "stream_state": {"cursor": 1.5, "whole": 2.0, "none": None},
                    }
                ],
            },
        },
        {"type": "LEGACY", "data": {"products": {"updated_at": "legacy-cursor"}}},
    ]
    values = state_leaf_values(states)
    assert values == {
        "2024-01-01",
        "7",  # not "7.0": it would pass for a long value
        "123456",
        "123456.0",
        "1.5",
        "2",
        "legacy-cursor",
    }
    for metadata in ("users", "public", "orders", "STREAM", "GLOBAL", "LEGACY", "99.0", "True"):
        assert metadata not in values


def test_state_leaf_values_single_message_and_bare_blob() -> None:
    message = {
        "type": "STREAM",
        "stream": {"stream_descriptor": {"name": "users"}, "stream_state": {"c": "v1"}},
    }
    assert state_leaf_values(message) == {"v1"}
    assert state_leaf_values({"type": "custom", "cursor": "v2"}) == {"custom", "v2"}
    assert state_leaf_values({"type": "STATE", "state": message}) == {"v1"}


def test_state_leaf_values_config_api_connection_state() -> None:
    state = {
        "stateType": "global",
        "connectionId": "c0ffee00-0000-0000-0000-000000000000",
        "globalState": {
            "shared_state": {"lsn": "0/16B3748"},
            "streamStates": [{"streamDescriptor": {"name": "users"}, "streamState": {"c": "v3"}}],
        },
    }
    assert state_leaf_values(state) == {"0/16B3748", "v3"}


def test_state_leaf_values_rejects_json_text() -> None:
    with pytest.raises(TypeError):
        state_leaf_values("[]")


# --- counts and streaming ----------------------------------------------------------------------


def test_counts_by_kind() -> None:
    s = scrubber(
        cursor_values=("2024-01-01",), secrets=("s3cr3t-token",), cursor_fields=("updated_at",)
    )
    assert s.counts == {"cursor": 0, "secret": 0, "state": 0}
    s.scrub_line("a 2024-01-01 b 2024-01-01 token=s3cr3t-token")
    s.scrub_line("updated_at=2024-01-01")  # pair and free text overlap: one redaction
    s.scrub_line("Setting state of x stream to {'updated_at': '2024-01-01'} then s3cr3t-token")
    assert s.counts == {"cursor": 3, "secret": 2, "state": 1}
    counts = s.counts
    counts["cursor"] = 100
    assert s.counts["cursor"] == 3


def test_scrub_stream_reads_ahead_a_bounded_batch() -> None:
    s = scrubber(cursor_values=("cursorvalue",))
    pulled: list[int] = []
    total = 50_000

    def source() -> Iterator[str]:
        for index in range(total):
            pulled.append(index)
            yield f"line {index} cursorvalue\n" if index % 3 == 0 else f"line {index}\n"

    stream = s.scrub_stream(source())
    assert pulled == []
    assert next(stream) == f"line 0 {CURSOR}\n"
    assert 0 < len(pulled) <= 10_000  # a batch, not the whole log
    assert next(stream) == "line 1\n"
    rest = list(stream)
    assert len(rest) == total - 2
    assert rest[-1] == f"line {total - 1}\n"
    assert s.counts["cursor"] == len(range(0, total, 3))


# --- every form a value takes ------------------------------------------------------------------


@pytest.mark.parametrize(
    "rendering",
    [
        "2024-05-01T08:20:30+00:00",
        "2024-05-01T08:20:30Z",
        "2024-05-01 08:20:30",
        "2024-05-01 08:20:30+0000",
        "2024-05-01T08:20:30.000Z",
        "2024-05-01T08:20:30.000000+00:00",
        "2024-05-01 08:20:30.0",
        "2024-05-01T10:20:30+02:00",
        "2024-05-01 10:20:30+0200",
        "1714551630",
        "1714551630000",
        "1714551630.0",
        "2024-05-01T08%3A20%3A30Z",
        "2024-05-01+08%3A20%3A30",
        "2024-05-01T08%3a20%3a30%2b00%3a00",
    ],
)
def test_timestamp_cursor_in_its_other_renderings(rendering: str) -> None:
    s = scrubber(cursor_values=("2024-05-01T10:20:30+02:00",))
    assert s.scrub_line(f"since {rendering} page 2\n") == f"since {CURSOR} page 2\n"


def test_timestamp_with_fraction_and_naive_timestamp() -> None:
    s = scrubber(cursor_values=("2024-05-01T08:20:30.250", "2024-05-02T00:00:00.123456Z"))
    for rendering in (
        "2024-05-01T08:20:30.250Z",
        "2024-05-01 08:20:30.25",
        "2024-05-01T08:20:30.250000+00:00",
        "1714551630250",
        "1714551630.25",
        "2024-05-02 00:00:00.123456+00:00",
        "1714608000123456",
    ):
        assert s.scrub_line(f"x {rendering} y") == f"x {CURSOR} y", rendering


@pytest.mark.parametrize(
    ("value", "rendering"),
    [
        ("12345", "12345.0"),
        ("12345.0", "12345"),
        ("1234.5600", "1234.56"),
        ("0.00001", "1e-05"),
        ("10000000000000000", "1e+16"),
    ],
)
def test_number_cursor_in_its_other_renderings(value: str, rendering: str) -> None:
    s = scrubber(cursor_values=(value,))
    assert s.scrub_line(f'a {rendering} b "{value}" c') == f'a {CURSOR} b "{CURSOR}" c'


def test_url_encoded_forms() -> None:
    value = "o'neil & sons/ü ~x"
    s = scrubber(cursor_values=(value,))
    forms = [
        quote(value, safe=""),
        quote(value),
        quote_plus(value),
        quote(value, safe="").lower(),
        quote_plus(value, safe="*").replace("~", "%7E"),
    ]
    for form in forms:
        assert s.scrub_line(f"GET /items?name={form}&page=2") == f"GET /items?name={CURSOR}&page=2"


@pytest.mark.parametrize("prefix", [b"", b"u", b"us", b"user:", b'{"cursor":"'])
@pytest.mark.parametrize("encode", [base64.b64encode, base64.urlsafe_b64encode])
def test_base64_forms_in_every_alignment(prefix: bytes, encode: Any) -> None:
    secret = "s3cr3t/p?ssw>rd~~"  # has bytes that differ between the two alphabets
    s = scrubber(secrets=(secret,))
    token = encode(prefix + secret.encode() + b'"}').decode()
    out = s.scrub_line(f"Authorization: Basic {token}\n")
    # The characters that encode the secret's bits alone are gone; those before stay.
    first = -(-8 * len(prefix) // 6)
    last = 8 * (len(prefix) + len(secret)) // 6
    assert out.startswith(f"Authorization: Basic {token[:first]}{SECRET}")
    assert token[first:last] not in out
    assert s.counts["secret"] == 1


def test_base64_needs_the_documented_minimum_length() -> None:
    short = "ab" * (MIN_BASE64_LENGTH // 2)
    shorter = short[:-1]
    s = scrubber(secrets=(short, shorter))
    for value, found in ((short, True), (shorter, False)):
        token = base64.b64encode(b"x" + value.encode() + b"x").decode()
        assert (SECRET in s.scrub_line(token)) is found, value


def test_json_escaped_twice_and_slash_escaped() -> None:
    value = 'a/b "c" d'
    s = scrubber(cursor_values=(value,))
    inner = json.dumps({"cursor": value})
    twice = json.dumps({"message": f"emitting {inner}"})
    assert value not in json.loads(json.loads(s.scrub_line(twice))["message"][9:])["cursor"]
    assert s.scrub_line(json.dumps(value).replace("/", "\\/")) == f'"{CURSOR}"'


def test_multiline_cursor_value_is_found_line_by_line_and_escaped() -> None:
    value = "first line of it\nsecond line of it"
    s = scrubber(cursor_values=(value,))
    text = f"a {value} b\n" + json.dumps({"m": value}) + "\n"
    out = s.scrub_text(text)
    assert "line of it" not in out
    assert out.count("\n") == text.count("\n")


def test_numbers_are_whole_numbers_and_json_stays_json() -> None:
    s = scrubber(cursor_values=("2024-05-01T08:20:30Z", "123456"))
    # Epoch seconds of the cursor inside the milliseconds of another instant: not the cursor.
    trace = '{"type":"TRACE","trace":{"emitted_at":1714551630897.5,"n":1123456}}'
    assert s.scrub_line(trace) == trace
    line = '{"a": 123456, "b": [1, 1714551630], "m": "took 123456 ms, ok", "c": 123456.0}'
    assert json.loads(s.scrub_line(line)) == {
        "a": CURSOR,
        "b": [1, CURSOR],
        "m": f"took {CURSOR} ms, ok",
        "c": CURSOR,
    }
    assert s.scrub_line("plain 123456, 1714551630") == f"plain {CURSOR}, {CURSOR}"


def test_short_numbers_do_not_pass_for_long_ones() -> None:
    assert state_leaf_values({"offset": 20, "whole": 20.0, "big": 12345}) == {
        "20",
        "12345",
        "12345.0",
    }
    s = scrubber(cursor_values=("20", "20.0", "0042", "1.50"))
    line = "Read 20.0 MB in 42.0 s, 1.5 s, code 0042\n"
    assert s.scrub_line(line) == f"Read 20.0 MB in 42.0 s, 1.5 s, code {CURSOR}\n"


def test_large_value_sets_use_the_nfa_and_find_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    values = tuple(f"cursor-{index:05d}" for index in range(200))
    text = "".join(f"line {index} cursor-{index:05d} end\n" for index in range(0, 400, 3))
    expected = scrubber(cursor_values=values).scrub_text(text)
    monkeypatch.setattr(scanner_module, "_DFA_MAX_PATTERN_BYTES", 0)
    assert scrubber(cursor_values=values).scrub_text(text) == expected
    assert expected.count(CURSOR) == len(range(0, 200, 3))


# --- blocks and streams ------------------------------------------------------------------------

MIXED_LINES = [
    "2024-05-01 INFO nothing here\n",
    "a 2024-01-01T00:00:00Z b\r\n",
    '{"type":"LOG","log":{"level":"INFO","message":"Setting state of s stream to {\'c\': 6}"}}\n',
    "żółć ✓ unicode before the value hunter2hunter2 and after ✓\n",
    "updated_at=6 and last_updated_at=7\n",
    "\n",
    "",
    "tab\tseparated\tcolumns 2024-01-01 00:00:00+00:00\n",
    "Raw state message: {'a': 1}\n",
    "no newline at the end hunter2hunter2",
]


def _mixed_scrubber() -> LogScrubber:
    return scrubber(
        cursor_values=("2024-01-01T00:00:00Z",),
        secrets=("hunter2hunter2",),
        cursor_fields=("updated_at",),
    )


def test_scrub_text_chunks_and_stream_agree_with_scrub_line() -> None:
    by_line = _mixed_scrubber()
    expected = [by_line.scrub_line(line) for line in MIXED_LINES]
    assert expected[0] == MIXED_LINES[0]
    assert "hunter2" not in "".join(expected)

    block = _mixed_scrubber()
    assert block.scrub_text("".join(MIXED_LINES)) == "".join(expected)
    assert block.counts == by_line.counts

    stream = _mixed_scrubber()
    assert list(stream.scrub_stream(MIXED_LINES)) == expected
    assert stream.counts == by_line.counts

    text = "".join(MIXED_LINES) * 50
    for size in (1, 7, 64, 1 << 20):
        chunked = _mixed_scrubber()
        pieces = [text[i : i + size] for i in range(0, len(text), size)]
        assert "".join(chunked.scrub_chunks(pieces)) == "".join(expected) * 50
        assert chunked.counts == {kind: count * 50 for kind, count in by_line.counts.items()}


def test_scrub_chunks_handles_blocks_and_long_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scanner_module, "_BLOCK_CHARS", 100)
    s = scrubber(cursor_values=("needle-value",))
    text = ("x" * 250 + " needle-value\n") + "short needle-value\n" * 20 + "tail needle-value"
    out = "".join(s.scrub_chunks(text[i : i + 30] for i in range(0, len(text), 30)))
    assert out == text.replace("needle-value", CURSOR)


def test_scrub_text_returns_the_block_itself_when_nothing_is_found() -> None:
    s = _mixed_scrubber()
    text = "nothing sensitive\n" * 1000
    assert s.scrub_text(text) is text
    assert s.scrub_text("") == ""


def test_lone_surrogates_pass_through() -> None:
    s = scrubber(cursor_values=("cursor-value",))
    line = "bad \udcff byte cursor-value \ud800\n"
    assert s.scrub_text(line) == f"bad \udcff byte {CURSOR} \ud800\n"
    assert s.scrub_line(line) == f"bad \udcff byte {CURSOR} \ud800\n"


# --- more structural patterns ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            'Raw state message: {"type":"STREAM","stream":{"stream_state":{"c":6}}} (hash 12)',
            f"Raw state message: {STATE} (hash 12)",
        ),
        ("Raw state message - seed=3, c=6", f"Raw state message {STATE}"),
        (
            json.dumps({"message": 'Raw state message: {"c": 6} end'}),
            json.dumps({"message": f"Raw state message: {STATE} end"}),
        ),
        (
            json.dumps({"message": "Raw state message: c=6", "level": "WARN"}),
            json.dumps({"message": f"Raw state message: {STATE}", "level": "WARN"}),
        ),
        (
            "emit AirbyteStateMessage@5f1c[type=STREAM,stream=S[streamState={c=6}]] done",
            f"emit AirbyteStateMessage@5f1c{STATE} done",
        ),
        (
            "AirbyteStateMessage(type=GLOBAL, global=G(sharedState={lsn=6}))",
            f"AirbyteStateMessage{STATE}",
        ),
        (
            '{"stateType":"legacy","connectionId":"c1","state":{"c":6}}',
            f'{{"stateType":"legacy","connectionId":"c1","state":"{STATE}"}}',
        ),
        ('{"type":"LOG","state":{"c":6}}', '{"type":"LOG","state":{"c":6}}'),
    ],
)
def test_more_printed_state(line: str, expected: str) -> None:
    assert scrubber().scrub_line(line) == expected


def test_java_state_report_pairs() -> None:
    s = scrubber(cursor_fields=("updated_at", "id"))
    line = (
        "State report for stream public_users - original: updated_at = 2024-01-01 10:00:00.0 "
        "(count 1) -> latest: id = 6 (count 2)"
    )
    assert s.scrub_line(line) == (
        f"State report for stream public_users - original: updated_at = {CURSOR} "
        f"(count 1) -> latest: id = {CURSOR} (count 2)"
    )


# --- secrets from the spec ---------------------------------------------------------------------

SPEC = {
    "connectionSpecification": {
        "type": "object",
        "definitions": {"key": {"type": "string", "airbyte_secret": True}},
        "properties": {
            "host": {"type": "string"},
            "port": {"type": "integer"},
            "pin": {"type": "integer", "airbyte_secret": True},
            "credentials": {
                "oneOf": [
                    {
                        "properties": {
                            "auth_type": {"const": "oauth"},
                            "client_id": {"type": "string"},
                            "refresher": {"type": "string", "airbyte_secret": True},
                        }
                    },
                    {
                        "properties": {
                            "auth_type": {"const": "key"},
                            "signing": {"$ref": "#/definitions/key"},
                        }
                    },
                ]
            },
            "tunnels": {
                "type": "array",
                "items": {"properties": {"ssh": {"type": "string", "airbyte_secret": True}}},
            },
        },
    }
}


def test_spec_secret_values_walks_the_spec_and_the_key_names() -> None:
    config = {
        "host": "db.example.com",
        "port": 5432,
        "pin": 482910,
        "credentials": {"auth_type": "oauth", "client_id": "cid-1", "refresher": "r-secret"},
        "tunnels": [{"ssh": "ssh-key-1"}, {"ssh": "ssh-key-2"}],
        "nested": {"Api_Key": "k-123", "max_tokens": 1000, "PASSWORD": "", "misc": "x"},
        "access_token": "tok-9",
    }
    assert spec_secret_values(SPEC, config) == [
        "482910",
        "r-secret",
        "ssh-key-1",
        "ssh-key-2",
        "k-123",
        "tok-9",
    ]


def test_spec_secret_values_ref_spec_message_and_json_credentials() -> None:
    key = (
        "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n"
    )
    service_account = json.dumps({"type": "service_account", "private_key": key, "project": "p"})
    config = {
        "credentials": {"auth_type": "key", "signing": "sig-secret"},
        "credentials_json": service_account,
    }
    message = {"type": "SPEC", "spec": SPEC}
    assert spec_secret_values(message, config) == ["sig-secret", service_account, key]
    assert spec_secret_values({}, {"host": "h"}) == []

    s = scrubber(secrets=tuple(spec_secret_values(message, config)))
    out = s.scrub_text(f"loaded {key}" + json.dumps({"credentials_json": service_account}))
    assert "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC" not in out
    assert "sig-secret" not in s.scrub_line("auth sig-secret")


# --- the real connector's output ---------------------------------------------------------------


def test_faker_corpus_leaves_no_cursor_value() -> None:
    state = json.loads((DATA / "faker_incremental_state.json").read_text())
    values = state_leaf_values(state)
    long_values = {v for v in values if len(v) >= MIN_FREE_TEXT_LENGTH}
    assert "2026-11-29T06:38:58+00:00" in long_values
    assert not {"products", "users", "purchases"} & values

    s = scrubber(cursor_values=tuple(values), cursor_fields=("updated_at",))
    with (DATA / "faker_incremental.log").open(encoding="utf-8", newline="") as log:
        original = log.readlines()
    scrubbed = list(s.scrub_stream(original))

    assert len(scrubbed) == len(original)
    text = "".join(scrubbed)
    for value in long_values:
        assert value not in text, value

    setting = [line for line in scrubbed if "Setting state of SourceFaker stream to" in line]
    assert setting, "the corpus should contain the CDK's state log lines"
    for line in setting:
        message = json.loads(line)["log"]["message"]
        assert message in (
            "Setting state of SourceFaker stream to {}",
            f"Setting state of SourceFaker stream to {STATE}",
        )
    # Three CDK "Setting state" lines and three STATE messages, one blob each.
    assert s.counts == {"cursor": 0, "secret": 0, "state": 6}

    for before, after in zip(original, scrubbed, strict=True):
        message = json.loads(after)  # still a valid Airbyte message
        if message["type"] == "STATE":
            assert message["state"]["stream"]["stream_state"] == STATE
            assert message["state"]["stream"]["stream_descriptor"]["name"] in before
        elif "Setting state" not in before:
            assert after == before


def test_faker_always_updated_corpus_three_runs() -> None:
    """Three incremental runs of the real connector: the cursor moves on every run."""
    states = json.loads((DATA / "faker_always_updated_states.json").read_text())
    cursors = {state["stream"]["stream_state"]["updated_at"] for state in states}
    assert len(cursors) == 3
    values = state_leaf_values(states)
    assert cursors <= values
    long_values = {v for v in values if len(v) >= MIN_FREE_TEXT_LENGTH}
    with (DATA / "faker_always_updated.log").open(encoding="utf-8", newline="") as log:
        original = log.readlines()
    raw = "".join(original)
    assert all(cursor in raw for cursor in cursors)

    s = scrubber(cursor_values=tuple(values), cursor_fields=("updated_at",))
    scrubbed = list(s.scrub_stream(original))
    text = "".join(scrubbed)
    block = scrubber(cursor_values=tuple(values), cursor_fields=("updated_at",))
    assert block.scrub_text(raw) == text
    assert block.counts == s.counts
    for value in long_values:
        assert value not in text, value
    for cursor in cursors:  # nor in the other renderings of the same instant
        moment = datetime.fromisoformat(cursor)
        for rendering in (cursor.replace("+00:00", "Z"), cursor.replace("T", " ")):
            assert rendering not in text
        assert f":{int(moment.timestamp())}," not in text

    blobs = 0
    for before, after in zip(original, scrubbed, strict=True):
        message = json.loads(after)  # still a valid Airbyte message
        if message["type"] == "STATE":
            blobs += 1
            assert message["state"]["stream"]["stream_state"] == STATE
            assert message["state"]["stream"]["stream_descriptor"]["name"] in before
        elif "Setting state of" in before and not before.endswith('to {}"}}\n'):
            blobs += 1
            assert message["log"]["message"] == f"Setting state of SourceFaker stream to {STATE}"
        else:
            # TRACE lines emitted in the cursor's own second keep their epoch milliseconds.
            assert after == before
    assert blobs > len(states) // 2
    assert s.counts == {"cursor": 0, "secret": 0, "state": blobs}


def test_log_time_stamps_in_the_cursors_second_are_not_the_cursor() -> None:
    scrubber = LogScrubber(cursor_values={"2026-11-29T07:47:03+00:00"}, secrets=())
    kept = "2026-11-29T07:47:03.715Z connector INFO Read 12 records\n"
    assert scrubber.scrub_line(kept) == kept
    for rendering in ("2026-11-29T07:47:03Z", "2026-11-29 07:47:03", "2026-11-29T07:47:03.000Z"):
        assert rendering not in scrubber.scrub_line(f"cursor at {rendering} now\n"), rendering


# --- metadata names are kept ---------------------------------------------------------------------

# The per-stream state of a Java source (source-postgres, cursor based) and its CDC (GLOBAL)
# state, in the envelope source-faker uses in tests/data: the payload names its stream, its
# namespace and its cursor field beside the cursor value itself.
JAVA_STATES: list[dict[str, Any]] = [
    {
        "type": "STREAM",
        "stream": {
            "stream_descriptor": {"name": "users", "namespace": "public"},
            "stream_state": {
                "stream_name": "users",
                "stream_namespace": "public",
                "cursor_field": ["updated_at"],
                "cursor": "2026-11-29T06:38:58.123456Z",
                "cursor_record_count": 1,
                "state_type": "cursor_based",
                "version": 2,
            },
        },
        "sourceStats": {"recordCount": 20.0},
    },
    {
        "type": "GLOBAL",
        "global": {
            "shared_state": {"state": {"lsn": 23947281934, "txId": 88271}},
            "stream_states": [
                {
                    "stream_descriptor": {"name": "purchases", "namespace": "shop"},
                    "stream_state": {
                        "stream_name": "purchases",
                        "stream_namespace": "shop",
                        "cursor_field": [],
                        "stream_descriptor": {"name": "purchases", "namespace": "shop"},
                    },
                }
            ],
        },
    },
    {
        "type": "LEGACY",
        "data": {
            "cdc": False,
            "streams": [
                {
                    "stream_name": "products",
                    "stream_namespace": "public",
                    "cursor_field": ["modified"],
                    "cursor": "legacy-cursor-0042",
                }
            ],
        },
    },
]


def test_state_leaf_values_skip_stream_names_namespaces_and_field_names() -> None:
    values = state_leaf_values(JAVA_STATES)
    for metadata in ("users", "public", "purchases", "shop", "products", "updated_at", "modified"):
        assert metadata not in values, metadata
    assert {"2026-11-29T06:38:58.123456Z", "23947281934", "88271", "legacy-cursor-0042"} <= values
    assert "cursor_based" in values  # any other leaf is still a value


def test_stream_names_in_free_text_survive_a_per_stream_state() -> None:
    s = scrubber(cursor_values=tuple(state_leaf_values(JAVA_STATES)), cursor_fields=("cursor",))
    kept = [
        "Read 100 records from users\n",
        '{"type":"LOG","log":{"level":"INFO","message":"Read 0 records from purchases stream"}}\n',
        '{"type":"TRACE","trace":{"type":"STREAM_STATUS","stream_status":{"stream_descriptor":'
        '{"name":"users","namespace":"public"},"status":"COMPLETE"}}}\n',
        "Syncing stream: products in namespace public, cursor field updated_at\n",
    ]
    for line in kept:
        assert s.scrub_line(line) == line
    assert s.counts == {"cursor": 0, "secret": 0, "state": 0}

    # The cursor itself still goes, and so does every printed state blob, names included.
    line = "users: cursor now at 2026-11-29T06:38:58.123456Z\n"
    assert s.scrub_line(line) == f"users: cursor now at {CURSOR}\n"
    state_line = json.dumps({"type": "STATE", "state": JAVA_STATES[0]}) + "\n"
    scrubbed = json.loads(s.scrub_line(state_line))["state"]["stream"]
    assert scrubbed["stream_state"] == STATE
    assert scrubbed["stream_descriptor"] == {"name": "users", "namespace": "public"}
    cdk = "Setting state of users stream to {'stream_name': 'users', 'cursor': 'x'}\n"
    assert s.scrub_line(cdk) == f"Setting state of users stream to {STATE}\n"


def test_keep_names_are_never_cursor_values_which_costs_a_cursor_equal_to_a_name() -> None:
    # A state whose cursor value is a stream name: without `keep`, every line about the stream
    # loses its name; with it, the name stays, and so does that cursor in free text (the
    # documented trade-off). Blobs and cursor-field pairs still remove it.
    states = [
        {
            "type": "STREAM",
            "stream": {
                "stream_descriptor": {"name": "events"},
                "stream_state": {"last_table": "users", "updated_at": "2026-11-29T06:38:58Z"},
            },
        }
    ]
    values = tuple(state_leaf_values(states))
    assert "users" in values
    line = "Read 100 records from users\n"
    assert scrubber(cursor_values=values).scrub_line(line) == f"Read 100 records from {CURSOR}\n"

    keep = {"users", "events", "public", "id", "updated_at"}
    s = LogScrubber(
        cursor_values=values, secrets=("users-secret",), cursor_fields=("last_table",), keep=keep
    )
    assert s.scrub_line(line) == line
    assert s.scrub_line("last_table=users\n") == f"last_table={CURSOR}\n"
    assert s.scrub_line("Setting state of events stream to {'last_table': 'users'}\n") == (
        f"Setting state of events stream to {STATE}\n"
    )
    assert s.scrub_line("at 2026-11-29 06:38:58 users-secret\n") == f"at {CURSOR} {SECRET}\n"


def test_cursor_field_names_are_kept_even_as_values() -> None:
    s = scrubber(
        cursor_values=("updated_at", "2026-11-29T06:38:58Z"), cursor_fields=("updated_at",)
    )
    assert s.scrub_line("ordered by updated_at\n") == "ordered by updated_at\n"
    assert s.scrub_line("updated_at=2026-11-29T06:38:58Z\n") == f"updated_at={CURSOR}\n"


def test_secrets_outrank_keep() -> None:
    s = LogScrubber(cursor_values=(), secrets=("warehouse",), keep={"warehouse"})
    assert s.scrub_line("loading warehouse\n") == f"loading {SECRET}\n"
