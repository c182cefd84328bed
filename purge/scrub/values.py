"""What to look for: cursor values collected from Airbyte state, secrets from a connector config."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from purge.scrub.spellings import MIN_FREE_TEXT_LENGTH

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
