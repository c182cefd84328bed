"""The connections file: what Sluice syncs, declared in TOML.

Secrets never appear in the file: ``source.secrets`` maps a config key to the name of an
environment variable, resolved by the worker at run time (never in workflow history). An Airbyte
connection names the secrets to scrub from its job's logs the same way, in ``[connections.airbyte]``
(or, equivalently, as ``secrets`` of the connection itself).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from workers.errors import SluiceError

SyncMode = Literal["full_refresh", "incremental"]
DestinationMode = Literal["append", "overwrite", "append_dedup"]

_CRON_FIELD = re.compile(r"^[\d*/,\-A-Za-z?LW#]+$")


class ConnectionsFileError(SluiceError):
    """The connections file is unreadable or invalid; the message names file, connection, field."""

    kind = "InvalidConnectionsFile"


class UnknownConnectionError(SluiceError):
    kind = "UnknownConnection"

    def __init__(self, connection_id: str, path: Path, known: list[str]) -> None:
        super().__init__(
            f"unknown connection {connection_id!r} in {path} (known: {', '.join(known) or 'none'})"
        )


class MissingSecretError(ConnectionsFileError):
    """A secret the connection declares is not in the environment."""

    kind = "MissingSecret"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Strict):
    command: list[str] = Field(min_length=1)
    package: str | None = Field(
        default=None,
        description="pip requirement of the connector; installed into its own virtual "
        "environment, where `command[0]` is looked up.",
    )
    config: dict[str, Any] = Field(default_factory=dict)
    secrets: dict[str, str] = Field(
        default_factory=dict,
        description="config key (dotted path) -> environment variable holding its value",
    )

    @field_validator("command", mode="before")
    @classmethod
    def _split_command(cls, value: Any) -> Any:
        return value.split() if isinstance(value, str) else value

    @property
    def fingerprint(self) -> str:
        """Identifies what `discover` depends on, without secret values (only their sources)."""
        spec = {
            "command": self.command,
            "package": self.package,
            "config": self.config,
            "secrets": self.secrets,
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()

    @property
    def connector_name(self) -> str:
        """The source type, e.g. ``source-faker``: metadata, used to name its virtual env."""
        if self.package:
            return re.split(r"[<>=!~\[ ;]", self.package, maxsplit=1)[0].removeprefix("airbyte-")
        return Path(self.command[0]).name


class StreamConfig(_Strict):
    name: str = Field(min_length=1)
    namespace: str | None = None
    sync_mode: SyncMode = "full_refresh"
    destination_mode: DestinationMode = "append"
    cursor_field: list[str] = Field(default_factory=list)
    primary_key: list[list[str]] = Field(default_factory=list)

    @field_validator("cursor_field", mode="before")
    @classmethod
    def _cursor_path(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _mode_pair(self) -> StreamConfig:
        if self.sync_mode == "incremental" and self.destination_mode == "overwrite":
            # Each run would replace the table with only what changed since the last one.
            raise ValueError(
                "destination_mode: overwrite with sync_mode incremental would keep only the "
                "latest changes; use append or append_dedup (or full_refresh)"
            )
        return self

    @field_validator("primary_key", mode="before")
    @classmethod
    def _key_paths(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [[value]]
        if isinstance(value, list):
            return [[part] if isinstance(part, str) else part for part in value]
        return value


class DestinationConfig(_Strict):
    """Where a local connection loads: a DuckDB file (``path``), or a schema of a PostgreSQL
    database (``dsn_env``: the environment variable that holds the DSN, password included;
    ``schema``: default the connection's id)."""

    type: Literal["duckdb", "postgres"] = "duckdb"
    path: Path | None = Field(default=None, description="duckdb: the database file")
    dsn_env: str | None = Field(
        default=None,
        min_length=1,
        description="postgres: environment variable holding the DSN (libpq key=value or URL)",
    )
    db_schema: str | None = Field(
        default=None,
        alias="schema",
        min_length=1,
        description="postgres: the schema of the connection's tables (default: its id)",
    )

    @model_validator(mode="after")
    def _settings_of_the_type(self) -> DestinationConfig:
        own = {"duckdb": ("path",), "postgres": ("dsn_env", "schema")}[self.type]
        given = {
            "path": self.path is not None,
            "dsn_env": self.dsn_env is not None,
            "schema": self.db_schema is not None,
        }
        others = [name for name, set_ in given.items() if set_ and name not in own]
        if others:
            raise PydanticCustomError(
                "destination_setting",
                f"{', '.join(others)}: not a setting of a {self.type} destination",
            )
        required = own[0]
        if not given[required]:
            raise PydanticCustomError(
                "destination_setting", f"{required}: a {self.type} destination needs it"
            )
        return self

    def secrets(self, environ: Mapping[str, str]) -> list[str]:
        """The destination's secret values, for the scrubber: a PostgreSQL DSN's password (as
        written and decoded), or the whole DSN when it cannot be parsed; ``PGPASSWORD`` when
        the DSN has no password (libpq then uses it)."""
        if self.type != "postgres" or self.dsn_env is None:
            return []
        dsn = environ.get(self.dsn_env)
        if not dsn:
            return []
        from urllib.parse import urlsplit

        from psycopg import Error
        from psycopg.conninfo import conninfo_to_dict

        try:
            password = conninfo_to_dict(dsn).get("password")
        except Error:
            return [dsn]
        found = [str(password)] if password else []
        if "://" in dsn:
            with contextlib.suppress(ValueError):
                written = urlsplit(dsn).password
                if written and written not in found:
                    found.append(written)
        if not found and environ.get("PGPASSWORD"):
            found.append(environ["PGPASSWORD"])
        return found


class NotifyConfig(_Strict):
    """Where a connection's notifications go besides SLUICE_NOTIFY_WEBHOOK_URL: a webhook
    whose URL (a secret) the worker reads from the environment variable ``webhook_env``."""

    webhook_env: str = Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="environment variable holding the webhook URL",
    )


class _ConnectionBase(_Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=128)
    name: str = ""
    staging: str | None = Field(default=None, description="staging root URI, e.g. file:///x/")
    schedule: str | None = Field(default=None, description="cron expression (5 fields)")
    notify: NotifyConfig | None = Field(
        default=None, description="the connection's own webhook (workers/notifications.py)"
    )

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None:
            return value
        fields = value.split()
        if len(fields) != 5 or not all(_CRON_FIELD.match(f) for f in fields):
            raise ValueError(f"not a 5-field cron expression: {value!r}")
        return value

    @field_validator("staging")
    @classmethod
    def _staging(cls, value: str | None) -> str | None:
        if value is not None and not value.endswith("/"):
            value += "/"
        return value


class Connection(_ConnectionBase):
    """A connection Sluice runs itself: a connector subprocess into DuckDB."""

    backend: Literal["local"] = "local"
    source: SourceConfig
    destination: DestinationConfig
    streams: list[StreamConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_streams(self) -> Connection:
        seen: set[tuple[str | None, str]] = set()
        for stream in self.streams:
            key = (stream.namespace, stream.name)
            if key in seen:
                raise ValueError(f"stream {stream.name!r} is declared twice")
            seen.add(key)
        return self


class AirbyteConnectionRef(_Strict):
    connection_id: str = Field(min_length=1, description="the connection's id in Airbyte")


class AirbyteConnection(_ConnectionBase):
    """A connection Airbyte runs: Sluice drives its jobs through the API and purges `staging`
    (the path its destination stages into, e.g. S3 staging of Redshift or Snowflake) after a
    job succeeded. Streams and columns are read from Airbyte."""

    backend: Literal["airbyte"]
    airbyte: AirbyteConnectionRef
    secrets: dict[str, str] = Field(
        default_factory=dict,
        description="name -> environment variable of secrets to scrub from the job's logs",
    )

    @model_validator(mode="before")
    @classmethod
    def _secrets_in_the_airbyte_table(cls, data: Any) -> Any:
        """``[connections.airbyte] secrets = {...}``, beside the Airbyte connection id as the
        README shows it, is the connection's ``secrets``: merged into it, so the worker reads the
        environment variables and the scrubber gets their values, whichever place declared them.
        """
        if not isinstance(data, Mapping):
            return data
        airbyte = data.get("airbyte")
        if not isinstance(airbyte, Mapping) or "secrets" not in airbyte:
            return data
        nested = airbyte["secrets"]
        outer = data.get("secrets")
        merged: Any = nested
        if isinstance(nested, Mapping) and isinstance(outer, Mapping):
            for name, variable in nested.items():
                if name in outer and outer[name] != variable:
                    raise ValueError(
                        f"secrets.{name}: declared in [connections.airbyte] and beside it, "
                        "with different environment variables"
                    )
            merged = {**outer, **nested}
        elif outer is not None:
            return data  # something is not a table: the field checks say what
        rest = {key: value for key, value in airbyte.items() if key != "secrets"}
        return {**data, "airbyte": rest, "secrets": merged}


AnyConnection = Annotated[Connection | AirbyteConnection, Field(discriminator="backend")]
_CONNECTION = TypeAdapter(AnyConnection)


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        path = list(item["loc"])
        if path and path[0] in ("local", "airbyte"):
            path = path[1:]  # the union's tag, not a field of the file
        loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in path)
        parts.append(f"{loc.replace('.[', '[') or '(connection)'}: {item['msg']}")
    return "; ".join(parts)


def _resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    destination = raw.get("destination")
    if isinstance(destination, dict) and isinstance(destination.get("path"), str):
        path = Path(destination["path"]).expanduser()
        destination["path"] = str(path if path.is_absolute() else (base / path).resolve())
    return raw


class ConnectionsFile:
    """A parsed, validated connections file."""

    def __init__(self, path: Path, connections: list[Connection | AirbyteConnection]) -> None:
        self.path = path
        self.connections = {c.id: c for c in connections}

    @classmethod
    def load(cls, path: Path) -> ConnectionsFile:
        path = path.expanduser().resolve()
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConnectionsFileError(f"{path}: connections file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConnectionsFileError(f"{path}: not valid TOML: {exc}") from None
        entries = data.get("connections")
        if not isinstance(entries, list) or not entries:
            raise ConnectionsFileError(f"{path}: no [[connections]] declared")
        connections: list[Connection | AirbyteConnection] = []
        for index, raw in enumerate(entries):
            label = raw.get("id") if isinstance(raw, dict) else None
            label = repr(label) if label else f"#{index + 1}"
            if not isinstance(raw, dict):
                raise ConnectionsFileError(f"{path}: connection {label}: not a table")
            raw = _resolve_paths(copy.deepcopy(raw), path.parent)
            raw.setdefault("backend", "local")
            if raw["backend"] not in ("local", "airbyte"):
                raise ConnectionsFileError(
                    f"{path}: connection {label}: backend: must be 'local' or 'airbyte', "
                    f"not {raw['backend']!r}"
                )
            try:
                connection: Connection | AirbyteConnection = _CONNECTION.validate_python(raw)
            except ValidationError as exc:
                raise ConnectionsFileError(
                    f"{path}: connection {label}: {_describe(exc)}"
                ) from None
            if any(c.id == connection.id for c in connections):
                raise ConnectionsFileError(f"{path}: connection {label}: id declared twice")
            connections.append(connection)
        return cls(path, connections)

    def get(self, connection_id: str) -> Connection | AirbyteConnection:
        try:
            return self.connections[connection_id]
        except KeyError:
            raise UnknownConnectionError(
                connection_id, self.path, sorted(self.connections)
            ) from None


def resolve_source_config(connection: Connection, environ: Mapping[str, str]) -> dict[str, Any]:
    """The connector config with its secrets filled in from the environment."""
    config = copy.deepcopy(connection.source.config)
    for dotted, variable in connection.source.secrets.items():
        if variable not in environ:
            raise MissingSecretError(
                f"connection {connection.id!r}: source.secrets.{dotted}: "
                f"environment variable {variable} is not set"
            )
        node = config
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = environ[variable]
    return config


def secret_values(
    connection: Connection, config: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> list[str]:
    """Values to scrub as secrets: declared secrets plus fields with well-known secret names,
    and the destination's (a PostgreSQL DSN's password, read from ``environ``: by default the
    worker's environment, where the destination reads it)."""
    found: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                walk(value, f"{path}.{key}" if path else str(key))
        elif isinstance(node, list):
            for item in node:
                walk(item, path)
        elif isinstance(node, str) and node:
            leaf = path.rsplit(".", 1)[-1].lower()
            if path in connection.source.secrets or any(word in leaf for word in _SECRET_KEY_WORDS):
                found.append(node)

    walk(config, "")
    found += connection.destination.secrets(os.environ if environ is None else environ)
    return found


_SECRET_KEY_WORDS = (
    "password",
    "secret",
    "token",
    "api_key",
    "apikey",
    "private_key",
    "credentials_json",
    "access_key",
    "client_secret",
    "passphrase",
)
