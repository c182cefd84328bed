"""Every payload encrypted (AES-256-GCM) before it leaves the worker (the codec server that lets
the Temporal UI show them is workers/codec_server.py).

Key rotation: payloads are encrypted with the first key and decrypted with whichever key their
metadata names, so a new key goes first and old ones stay until their histories are gone.
Payloads that are not ours (JSON an operator typed into the Temporal UI) pass through as they
are, so the UI can still start workflows.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
)

ENCODING = b"binary/encrypted"
_KEY_ID = "encryption-key-id"
_NONCE_BYTES = 12


class PayloadKeyError(ValueError):
    """The payload keys are missing, malformed, or do not decrypt a payload."""


def parse_keys(spec: str) -> list[tuple[str, bytes]]:
    """`id:base64key,id2:base64key` (newest first) -> [(id, 32-byte key), ...]."""
    keys = []
    for index, entry in enumerate(part.strip() for part in spec.split(",") if part.strip()):
        key_id, sep, encoded = entry.partition(":")
        if not sep or not key_id:
            raise PayloadKeyError(f"payload key #{index + 1}: expected ID:BASE64KEY")
        try:
            key = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise PayloadKeyError(f"payload key {key_id!r}: not base64") from None
        if len(key) != 32:
            raise PayloadKeyError(f"payload key {key_id!r}: must be 32 bytes, is {len(key)}")
        keys.append((key_id, key))
    if not keys:
        raise PayloadKeyError("no payload key given")
    return keys


def new_key_spec(key_id: str = "k1") -> str:
    return f"{key_id}:{base64.b64encode(secrets.token_bytes(32)).decode()}"


def local_key_spec(path: Path) -> str:
    """The embedded default's key: made once, kept in the state dir (readable by us only).
    Several workers need one key: in a deployment set SLUICE_PAYLOAD_KEYS instead."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process of ours made it meanwhile
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(new_key_spec())
    for _ in range(50):
        spec = path.read_text().strip()
        if spec:
            return spec
        time.sleep(0.1)  # being written by the process that made it
    raise PayloadKeyError(f"{path}: empty payload key file")


class EncryptionCodec(PayloadCodec):
    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        if not keys:
            raise PayloadKeyError("no payload key given")
        self._current_id, current = keys[0]
        self._current = AESGCM(current)
        self._by_id = {key_id: AESGCM(key) for key_id, key in keys}

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        encoded = []
        for payload in payloads:
            nonce = os.urandom(_NONCE_BYTES)
            sealed = self._current.encrypt(
                nonce, payload.SerializeToString(), self._current_id.encode()
            )
            encoded.append(
                Payload(
                    metadata={"encoding": ENCODING, _KEY_ID: self._current_id.encode()},
                    data=nonce + sealed,
                )
            )
        return encoded

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        decoded = []
        for payload in payloads:
            if payload.metadata.get("encoding") != ENCODING:
                decoded.append(payload)  # not ours: typed into the UI, for instance
                continue
            key_id = payload.metadata.get(_KEY_ID, b"").decode()
            cipher = self._by_id.get(key_id)
            if cipher is None:
                raise PayloadKeyError(f"payload encrypted with unknown key {key_id!r}")
            try:
                plain = cipher.decrypt(
                    payload.data[:_NONCE_BYTES], payload.data[_NONCE_BYTES:], key_id.encode()
                )
            except InvalidTag:
                raise PayloadKeyError(f"payload does not decrypt with key {key_id!r}") from None
            decoded.append(Payload.FromString(plain))
        return decoded


def data_converter(keys: Sequence[tuple[str, bytes]]) -> DataConverter:
    """Pydantic payloads, encrypted; failures' messages and stack traces encrypted too."""
    return replace(
        pydantic_data_converter,
        payload_codec=EncryptionCodec(keys),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )
