"""Every TOML example in the README loads as a connections file, commented settings included.

A ```toml block is checked as written and with its commented-out settings (``# name = value``
lines) uncommented, so an optional line a reader is invited to enable is valid too. The secrets
each connection declares are then resolved from a made-up environment and must reach the values
the scrubber is given.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from purge.scrub import LogScrubber, RedactionKind
from tests.conftest import REPO
from workers.connections import (
    AirbyteConnection,
    Connection,
    ConnectionsFile,
    ConnectionsFileError,
    resolve_source_config,
    secret_values,
)

README = REPO / "README.md"
EXAMPLE = REPO / "connections.toml"

_TOML_BLOCK = re.compile(r"^```toml[ \t]*\n(?P<body>.*?)^```", re.DOTALL | re.MULTILINE)
# A commented-out setting: "# name = value", "# a.b = value", indented or not.
_COMMENTED_SETTING = re.compile(r"^(?P<indent>[ \t]*)# (?=[A-Za-z_][\w.-]*[ \t]*=[ \t]*\S)", re.M)


def toml_blocks(text: str) -> list[str]:
    return [match.group("body") for match in _TOML_BLOCK.finditer(text)]


def uncomment_settings(block: str) -> str:
    return _COMMENTED_SETTING.sub(r"\g<indent>", block)


def variants() -> list[pytest.ParameterSet]:
    params = []
    sources = [(f"README block {n}", b) for n, b in enumerate(toml_blocks(README.read_text()), 1)]
    sources.append(("connections.toml", EXAMPLE.read_text()))
    for name, block in sources:
        params.append(pytest.param(block, id=f"{name} as written"))
        uncommented = uncomment_settings(block)
        if uncommented != block:
            params.append(pytest.param(uncommented, id=f"{name} uncommented"))
    return params


def load(tmp_path: Path, text: str) -> ConnectionsFile:
    path = tmp_path / "connections.toml"
    path.write_text(text, encoding="utf-8")
    return ConnectionsFile.load(path)


def scrubbed_secrets(
    connection: Connection | AirbyteConnection,
) -> tuple[dict[str, str], list[str]]:
    """(the environment the secrets need, the secret values a run hands the scrubber)."""
    if isinstance(connection, Connection):
        environ = {var: f"value-of-{var}-0123" for var in connection.source.secrets.values()}
        return environ, secret_values(connection, resolve_source_config(connection, environ))
    from workers.activities.airbyte import AirbyteActivities

    environ = {var: f"value-of-{var}-0123" for var in connection.secrets.values()}
    activities = SimpleNamespace(environ=environ)
    client = SimpleNamespace(server=SimpleNamespace(secrets=lambda: []))
    return environ, AirbyteActivities._secrets(activities, connection, client)  # type: ignore[arg-type]


def test_the_readme_has_toml_examples_with_commented_settings() -> None:
    blocks = toml_blocks(README.read_text())
    assert len(blocks) >= 2
    assert any(uncomment_settings(block) != block for block in blocks)
    assert uncomment_settings('# staging = "x"\n  # a.b = 1\n# not a setting\n#x = 1\n') == (
        'staging = "x"\n  a.b = 1\n# not a setting\n#x = 1\n'
    )


@pytest.mark.parametrize("text", variants())
def test_every_toml_example_loads_and_its_secrets_reach_the_scrubber(
    tmp_path: Path, text: str
) -> None:
    connections = load(tmp_path, text)
    assert connections.connections
    for connection in connections.connections.values():
        environ, secrets = scrubbed_secrets(connection)
        assert set(environ.values()) <= set(secrets), connection.id
        scrubber = LogScrubber(cursor_values=(), secrets=secrets)
        for value in environ.values():
            assert scrubber.scrub_line(f"auth {value} ok\n") == (
                f"auth {RedactionKind.SECRET.marker} ok\n"
            )


def test_airbyte_secrets_beside_the_connection_id_are_the_connections_secrets(
    tmp_path: Path,
) -> None:
    [block] = [b for b in toml_blocks(README.read_text()) if 'backend = "airbyte"' in b]
    connection = load(tmp_path, uncomment_settings(block)).get("shop-cloud")
    assert isinstance(connection, AirbyteConnection)
    assert connection.secrets == {"warehouse_password": "SHOP_DW_PASSWORD"}
    assert connection.airbyte.connection_id == "9f7c3f0e-5b7a-4c1e-8f7e-2c1a8d3b6e10"


AIRBYTE = """
[[connections]]
id = "a"
backend = "airbyte"
{outer}
[connections.airbyte]
connection_id = "x"
{inner}
"""


def test_airbyte_secrets_in_both_places_merge_and_conflicts_are_named(tmp_path: Path) -> None:
    both = AIRBYTE.format(outer='secrets = { a = "A" }', inner='secrets = { b = "B" }')
    assert load(tmp_path, both).get("a").secrets == {"a": "A", "b": "B"}  # type: ignore[union-attr]
    same = AIRBYTE.format(outer='secrets = { a = "A" }', inner='secrets = { a = "A" }')
    assert load(tmp_path, same).get("a").secrets == {"a": "A"}  # type: ignore[union-attr]
    clash = AIRBYTE.format(outer='secrets = { a = "A" }', inner='secrets = { a = "OTHER" }')
    with pytest.raises(ConnectionsFileError, match=r"connection 'a': .*secrets\.a: declared in"):
        load(tmp_path, clash)
    wrong = AIRBYTE.format(outer="", inner='secrets = "A"')
    with pytest.raises(
        ConnectionsFileError, match="connection 'a': secrets: Input should be a valid dict"
    ):
        load(tmp_path, wrong)
