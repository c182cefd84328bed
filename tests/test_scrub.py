"""Tests for the log scrubber: what must disappear, and what must stay byte for byte."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from purge.scrub import (
    MIN_FREE_TEXT_LENGTH,
    LogScrubber,
    RedactionKind,
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
        "7",
        "7.0",
        "123456",
        "123456.0",
        "1.5",
        "2.0",
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


def test_scrub_stream_is_lazy() -> None:
    s = scrubber(cursor_values=("cursorvalue",))
    pulled: list[int] = []

    def source() -> Iterator[str]:
        for index in range(3):
            pulled.append(index)
            yield f"line {index} cursorvalue\n"
        raise AssertionError("the scrubber read past what was asked of it")

    stream = s.scrub_stream(source())
    assert pulled == []
    assert next(stream) == f"line 0 {CURSOR}\n"
    assert pulled == [0]
    assert next(stream) == f"line 1 {CURSOR}\n"
    assert pulled == [0, 1]
    assert s.counts["cursor"] == 2


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
