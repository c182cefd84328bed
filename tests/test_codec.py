"""The payload codec: encrypted on the way out, any listed key on the way in, foreign payloads
(typed into the Temporal UI) passed through; and the codec server the UI calls."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads

from tests.conftest import REPO, free_port
from workers.codec import EncryptionCodec, PayloadKeyError, new_key_spec, parse_keys


def payload(text: str) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=text.encode())


async def test_round_trip_and_rotation() -> None:
    old, new = new_key_spec("old"), new_key_spec("new")
    before = EncryptionCodec(parse_keys(old))
    after = EncryptionCodec(parse_keys(f"{new},{old}"))
    (sealed,) = await before.encode([payload('{"connection_id": "faker"}')])
    assert b"faker" not in sealed.data and sealed.metadata["encryption-key-id"] == b"old"
    assert (await after.decode([sealed]))[0] == payload('{"connection_id": "faker"}')
    (resealed,) = await after.encode([payload("x")])
    assert resealed.metadata["encryption-key-id"] == b"new"
    with pytest.raises(PayloadKeyError, match="unknown key 'new'"):
        await before.decode([resealed])


async def test_payloads_typed_into_the_ui_pass_through() -> None:
    codec = EncryptionCodec(parse_keys(new_key_spec()))
    typed = payload('{"connection_id": "faker"}')
    assert await codec.decode([typed]) == [typed]


async def test_a_tampered_payload_is_refused() -> None:
    codec = EncryptionCodec(parse_keys(new_key_spec()))
    (sealed,) = await codec.encode([payload("x")])
    sealed.data = sealed.data[:-1] + bytes([sealed.data[-1] ^ 1])
    with pytest.raises(PayloadKeyError, match="does not decrypt"):
        await codec.decode([sealed])


@pytest.mark.parametrize(
    ("spec", "reason"),
    [("", "no payload key"), ("k1", "ID:BASE64KEY"), ("k1:!!", "not base64"), ("k1:AAAA", "32")],
)
def test_bad_keys_are_refused(spec: str, reason: str) -> None:
    with pytest.raises(PayloadKeyError, match=reason):
        parse_keys(spec)


async def test_codec_server_decodes_for_the_ui(tmp_path: Path) -> None:
    keys = new_key_spec()
    (sealed,) = await EncryptionCodec(parse_keys(keys)).encode([payload('{"records": 3}')])
    port = free_port()
    server = subprocess.Popen(
        [str(REPO / ".venv" / "bin" / "sluice"), "codec-server", "--port", str(port)],
        env={"SLUICE_PAYLOAD_KEYS": keys, "SLUICE_STATE_DIR": str(tmp_path), "PATH": ""},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        body = json_format.MessageToJson(Payloads(payloads=[sealed])).encode()
        for _ in range(100):
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/decode",
                    data=body,
                    headers={"content-type": "application/json"},
                )
                with urllib.request.urlopen(request, timeout=5) as response:
                    answer = json.loads(response.read())
                    origin = response.headers["Access-Control-Allow-Origin"]
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise AssertionError("the codec server did not answer")
        decoded = json_format.ParseDict(answer, Payloads()).payloads[0]
        assert decoded.data == b'{"records": 3}' and origin == "http://localhost:8233"
    finally:
        server.terminate()
        server.wait()
