"""The payload codec: encrypted on the way out, any listed key on the way in, foreign payloads
(typed into the Temporal UI) passed through. The codec server is tests/test_codec_server.py."""

from __future__ import annotations

import pytest
from temporalio.api.common.v1 import Payload

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
