"""Every knob of a Sluice process, read once from the environment (prefix ``SLUICE_``).

Settings are validated at start and passed down as a typed object; nothing deeper in the code
reads ``os.environ``.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SLUICE_", env_file=".env", extra="ignore", populate_by_name=True
    )

    state_dir: Path = Field(
        default=Path(".sluice"),
        description="Where the embedded default keeps its files: dev server database, metadata "
        "store, staging, retained logs, connector virtual environments, DuckDB warehouse.",
    )
    connections_file: Path = Field(
        default=Path("connections.toml"), description="The connections file (TOML)."
    )
    temporal_address: str = "localhost:7233"
    temporal_namespace: str = "default"
    task_queue: str = "sluice"
    temporal_ui_port: int = 8233
    temporal_ui_url: str = Field(
        default="http://localhost:8233",
        description="The Temporal UI that printed links point at (e.g. a cluster's UI).",
    )
    metadata_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the metadata store; default: SQLite in the state dir.",
    )
    log_store: str | None = Field(
        default=None,
        description="URI of the store where scrubbed logs are retained (file://, s3://, az://); "
        "default: file://STATE_DIR/logs/.",
    )
    log_retention_days: float = Field(
        default=14, gt=0, description="Retained logs older than this are swept."
    )
    failed_staging_ttl_days: float = Field(
        default=7,
        gt=0,
        description="A failed run's staging is kept this long for replay, then swept.",
    )
    sweep_schedule: str = Field(
        default="0 3 * * *", description="cron of the retention sweep (UTC)"
    )
    staging_uri: str | None = Field(
        default=None,
        description="Default staging root for connections that name none; default: "
        "file://STATE_DIR/staging/.",
    )
    connectors_dir_override: Path | None = Field(
        default=None,
        alias="SLUICE_CONNECTORS_DIR",
        description="Where connectors are installed, one virtual environment each; default: "
        "STATE_DIR/connectors.",
    )
    batch_records: int = Field(
        default=10_000, ge=1, description="Records per staged batch file (bounds memory)."
    )
    max_concurrent_activities: int = Field(default=8, ge=1)
    duckdb_memory_limit: str = Field(
        default="512MB", description="memory limit of the DuckDB destination while loading"
    )
    purge_allow: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="URI prefixes that may be purged, comma-separated (besides the staging "
        "URIs of the settings and of every connection, which are always allowed).",
    )
    azure_storage_connection_string: str | None = Field(
        default=None, alias="AZURE_STORAGE_CONNECTION_STRING"
    )
    azure_account_url: str | None = Field(
        default=None, description="e.g. https://ACCOUNT.blob.core.windows.net"
    )
    s3_server_side_encryption: str | None = Field(
        default="AES256",
        description="requested on every S3 write (staging and retained logs): AES256 or aws:kms",
    )
    azure_credential: str | None = Field(
        default=None, description="account key or SAS token for azure_account_url"
    )

    sync_attempts: int = Field(
        default=3,
        ge=1,
        description="attempts of a local sync whose connector failed for a reason other than "
        "its configuration; each resumes from the committed state",
    )
    payload_keys: str | None = Field(
        default=None,
        description="AES-256 keys of the payload codec, ID:BASE64,... newest first (every "
        "worker and client of a cluster needs them); default: a key kept in the state dir",
    )
    heartbeat_timeout_seconds: float = Field(
        default=60, gt=0, description="How long a silent activity may go before it is retried."
    )
    stall_timeout_seconds: float = Field(
        default=600,
        gt=0,
        description="a local connector that prints nothing (stdout or stderr) for this long is "
        "stopped, and its attempt fails as stalled (and is retried)",
    )
    airbyte_api_url: str | None = Field(
        default=None,
        description="Airbyte public API: https://api.airbyte.com/v1 (Cloud) or "
        "http://HOST:8000/api/public/v1 (self-managed)",
    )
    airbyte_config_api_url: str | None = Field(
        default=None, description="Config API (logs, state); default: derived from the API URL"
    )
    airbyte_client_id: str | None = None
    airbyte_client_secret: str | None = None
    airbyte_token_url: str | None = Field(
        default=None, description="absolute; default: API_URL/applications/token"
    )
    airbyte_bearer_token: str | None = None
    airbyte_username: str | None = None
    airbyte_password: str | None = None
    airbyte_allow_http: bool = Field(
        default=False, description="allow plain http to a non-loopback Airbyte"
    )
    airbyte_poll_seconds: float = Field(default=10, gt=0, le=300)
    airbyte_timeout_seconds: float = Field(default=30, gt=0)
    job_timeout_hours: float = Field(
        default=24,
        gt=0,
        validation_alias=AliasChoices(
            "SLUICE_JOB_TIMEOUT_HOURS", "SLUICE_AIRBYTE_JOB_TIMEOUT_HOURS"
        ),
        description="bounds a run's sync across all its attempts: when it passes, the connector "
        "is stopped or the Airbyte job cancelled, and the run ends timed_out",
    )
    lock_ttl_minutes: float = Field(
        default=10,
        gt=0,
        description="a run renews its connection's lock while it lives; a lock not renewed for "
        "this long is free",
    )
    codec_token: SecretStr | None = Field(
        default=None,
        description="the operator credential of `sluice codec-server`: sent as "
        "`Authorization: Bearer <token>`, or pasted once into its sign-in page by a browser",
    )
    codec_allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated browser origins (scheme://host:port) the codec server "
        "grants CORS to; default: http://localhost:UI_PORT, http://127.0.0.1:UI_PORT and the "
        "origin of SLUICE_TEMPORAL_UI_URL",
    )
    codec_tls_cert: Path | None = Field(
        default=None, description="PEM certificate (chain) of the codec server; with the key: https"
    )
    codec_tls_key: Path | None = Field(
        default=None, description="PEM private key of the codec server's certificate"
    )
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="`sluice worker` serves Prometheus metrics (the Temporal SDK's and "
        "Sluice's) on http://0.0.0.0:PORT/metrics; unset: no endpoint",
    )
    notify_webhook_url: SecretStr | None = Field(
        default=None,
        description="a webhook (Slack-compatible JSON) told about every connection's failed "
        "runs, repeated failures, recoveries and paused schedules; a secret (unset: none; a "
        "connection may name its own with [connections.notify] webhook_env)",
    )
    notify_repeated_failures: int = Field(
        default=3,
        ge=0,
        description="after this many failed runs in a row a connection's webhooks get the "
        "repeated-failure message (0: never)",
    )
    pause_after_failures: int = Field(
        default=30,
        ge=0,
        description="after this many failed runs in a row (and every as many more) the "
        "connection's schedule is paused, as Airbyte disables a connection (0: never)",
    )
    pause_after_failing_days: float = Field(
        default=14,
        ge=0,
        description="a connection whose runs have all failed for this many days has its "
        "schedule paused, at the first failure past it (0: never)",
    )
    notify_timeout_seconds: float = Field(
        default=10, gt=0, description="one webhook request gives up after this long"
    )
    notify_retry_seconds: float = Field(
        default=5,
        gt=0,
        description="the first retry of a notification waits this long, each next one twice as "
        "long (at most 10 minutes)",
    )
    notify_give_up_hours: float = Field(
        default=24,
        gt=0,
        description="a notification not delivered this long after its run was recorded is "
        "given up (and recorded as such)",
    )

    @field_validator("purge_allow", "codec_allowed_origins", mode="before")
    @classmethod
    def _split_allow(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator(
        "codec_token",
        "codec_tls_cert",
        "codec_tls_key",
        "metrics_port",
        "notify_webhook_url",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # `SLUICE_CODEC_TLS_CERT=` (as a compose file leaves it) means no certificate, not "."
        return None if isinstance(value, str) and not value.strip() else value

    @cached_property
    def state_path(self) -> Path:
        return self.state_dir.expanduser().resolve()

    @property
    def resolved_metadata_url(self) -> str:
        return self.metadata_url or f"sqlite:///{self.state_path / 'metadata.db'}"

    @property
    def resolved_log_store(self) -> str:
        uri = self.log_store or (self.state_path / "logs").as_uri() + "/"
        return uri if uri.endswith("/") else uri + "/"

    @property
    def resolved_staging_uri(self) -> str:
        return self.staging_uri or (self.state_path / "staging").as_uri() + "/"

    def payload_key_list(self) -> list[tuple[str, bytes]]:
        from workers.codec import local_key_spec, parse_keys

        return parse_keys(self.payload_keys or local_key_spec(self.state_path / "payload-keys"))

    @property
    def connectors_dir(self) -> Path:
        return (
            (self.connectors_dir_override or self.state_path / "connectors").expanduser().resolve()
        )

    @property
    def temporal_db(self) -> Path:
        return self.state_path / "temporal.db"
