"""The config file users edit (TOML), validated into frozen dataclasses.

Every problem names the file and the key path, and all problems are reported at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

AuthMode = Literal["client_credentials", "password", "jwt", "session"]
LogFormat = Literal["auto", "json", "console"]


class Secret:
    """A secret value that never shows itself in repr, str or logs."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str) -> None:
        self._value = value
        self.source = source  # e.g. "env SF_CLIENT_SECRET" or "file /run/secrets/sf"

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret(<from {self.source}>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = "sqlite:///crm_export.db"


@dataclass(frozen=True)
class SalesforceConfig:
    login_url: str = "https://login.salesforce.com"
    auth: AuthMode = "client_credentials"
    client_id: str | None = None
    client_secret: Secret | None = None
    username: str | None = None
    password: Secret | None = None
    private_key: Secret | None = None  # PEM, for auth = "jwt"
    session_id: Secret | None = None  # for auth = "session"
    instance_url: str | None = None  # for auth = "session"
    api_version: str = "64.0"
    ca_bundle: Path | None = None
    timeout_seconds: float = 30.0
    max_reauth: int = 2


@dataclass(frozen=True)
class RetryConfig:
    """Request-level retries: exponential backoff with full jitter, bounded twice."""

    max_attempts: int = 8
    max_elapsed_seconds: float = 300.0
    initial_backoff_seconds: float = 1.0
    max_backoff_seconds: float = 60.0


@dataclass(frozen=True)
class ExportConfig:
    pause_on_error: bool = True
    batch_size: int = 200
    # Record-level transient errors (UNABLE_TO_LOCK_ROW, rolled back by allOrNone).
    record_retry_attempts: int = 5
    # A run that sees this many record errors in a row with the same code and fields stops
    # as a configuration problem instead of filling ExportErrors with identical rows.
    max_identical_errors: int = 50


@dataclass(frozen=True)
class ScheduleConfig:
    export_interval_seconds: int = 300
    reexport_cron: str = "0 2 * * *"
    timezone: str = "UTC"
    misfire_grace_seconds: int = 3600


@dataclass(frozen=True)
class LoggingConfig:
    format: LogFormat = "auto"
    level: str = "info"


@dataclass(frozen=True)
class SandboxConfig:
    """Start the local sandbox org in-process and export into it (the embedded default)."""

    enabled: bool = False
    org_file: Path | None = None
    data_file: Path | None = None
    port: int = 0


@dataclass(frozen=True)
class StreamConfig:
    name: str
    key: str
    order_by: str
    sobject: str
    external_id_field: str
    fields: tuple[tuple[str, str], ...]  # (Salesforce field, source column), in file order
    pause_on_error: bool
    source_url: str
    table: str | None = None
    query: str | None = None


@dataclass(frozen=True)
class Config:
    path: Path
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    salesforce: SalesforceConfig = field(default_factory=SalesforceConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    streams: tuple[StreamConfig, ...] = ()
