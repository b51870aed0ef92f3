"""The config file users edit (TOML), validated into frozen dataclasses.

Every problem names the file and the key path, and all problems are reported at once.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import math
import os
import re
import tomllib
import zoneinfo
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeVar, get_args
from urllib.parse import urlsplit

from apscheduler.triggers.cron import CronTrigger
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from crm_export.errors import ConfigError

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


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``: for reprs, logs and messages."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return "<unparsable URL>"
    if "password" in parsed.query:  # libpq also takes ?password=
        parsed = parsed.update_query_dict({"password": "***"})
    return parsed.render_as_string(hide_password=True)


def _repr_redacting_urls(obj: Any) -> str:
    # A database URL may carry a password, and reprs end up in logs and tracebacks.
    shown = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name.endswith("url") and isinstance(value, str):
            value = redact_url(value)
        shown.append(f"{f.name}={value!r}")
    return f"{type(obj).__name__}({', '.join(shown)})"


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = "sqlite:///crm_export.db"

    def __repr__(self) -> str:
        return _repr_redacting_urls(self)


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

    max_attempts: int = 12
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

    def __repr__(self) -> str:
        return _repr_redacting_urls(self)


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


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

CONFIG_ENV_VAR: Final = "CRM_EXPORT_CONFIG"

# Every key the file may hold, by section ("streams" is each [[streams]] table). Anything else
# is an error: a misspelt key must never silently fall back to a default (pause mode off).
CONFIG_KEYS: Final[Mapping[str, frozenset[str]]] = {
    "database": frozenset({"url"}),
    "salesforce": frozenset(
        {
            "login_url",
            "auth",
            "client_id",
            "client_secret_env",
            "client_secret_file",
            "username",
            "password_env",
            "password_file",
            "private_key_env",
            "private_key_file",
            "session_id_env",
            "session_id_file",
            "instance_url",
            "api_version",
            "ca_bundle",
            "timeout_seconds",
            "max_reauth",
        }
    ),
    "retry": frozenset(
        {
            "max_attempts",
            "max_elapsed_seconds",
            "initial_backoff_seconds",
            "max_backoff_seconds",
        }
    ),
    "export": frozenset(
        {"pause_on_error", "batch_size", "record_retry_attempts", "max_identical_errors"}
    ),
    "schedule": frozenset(
        {"export_interval_seconds", "reexport_cron", "timezone", "misfire_grace_seconds"}
    ),
    "logging": frozenset({"format", "level"}),
    "sandbox": frozenset({"enabled", "org_file", "data_file", "port"}),
    "streams": frozenset(
        {
            "name",
            "table",
            "query",
            "source_url",
            "key",
            "order_by",
            "sobject",
            "external_id_field",
            "pause_on_error",
            "fields",
        }
    ),
}

AUTH_MODES: Final[tuple[AuthMode, ...]] = get_args(AuthMode)
LOG_FORMATS: Final[tuple[LogFormat, ...]] = get_args(LogFormat)
LOG_LEVELS: Final = ("debug", "info", "warning", "error")

# sObject Collections upsert takes at most 200 records per call.
MAX_BATCH_SIZE: Final = 200
# Salesforce ends any REST/SOAP call after 10 minutes; waiting longer only hides a hang.
MAX_TIMEOUT_SECONDS: Final = 600
# sObject Collections upsert by external ID exists from API 46.0 on.
MIN_API_VERSION: Final = 46

_SECRETS: Final = ("client_secret", "password", "private_key", "session_id")
# What each auth mode needs; a credential that the chosen mode does not use is an error too,
# because it usually means `auth` was forgotten and another flow would run than intended.
_AUTH_NEEDS: Final[Mapping[str, tuple[str, ...]]] = {
    "client_credentials": ("client_id", "client_secret"),
    "password": ("client_id", "client_secret", "username", "password"),
    "jwt": ("client_id", "username", "private_key"),
    "session": ("session_id", "instance_url"),
}
_CREDENTIALS: Final = (
    "client_id",
    "client_secret",
    "username",
    "password",
    "private_key",
    "session_id",
    "instance_url",
)
# Salesforce refuses the client credentials flow on the shared login hosts.
_SHARED_LOGIN_HOSTS: Final = frozenset({"login.salesforce.com", "test.salesforce.com"})

_SQL_NAME: Final = r"[A-Za-z_][A-Za-z0-9_$]*"
_SQL_IDENTIFIER: Final = re.compile(_SQL_NAME)
_SQL_TABLE: Final = re.compile(rf"{_SQL_NAME}(?:\.{_SQL_NAME})?")
_SF_NAME: Final = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_STREAM_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_API_VERSION: Final = re.compile(r"(\d{2,3})\.(\d)")
# Statements that change data or schema. The query guard is best effort (a read-only database
# role is the real protection); it stops the plain mistakes before they run every few minutes.
_WRITING_WORDS: Final = frozenset(
    {
        "insert",
        "update",
        "delete",
        "merge",
        "into",
        "drop",
        "alter",
        "create",
        "truncate",
        "grant",
        "revoke",
    }
)


def resolve_config_path(
    arg: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None
) -> Path:
    """The config file to read: ``arg`` (``--config``), else ``$CRM_EXPORT_CONFIG``.

    The result is absolute but symlinks are kept, so that relative paths in the file resolve
    next to the path the user gave (a Kubernetes ConfigMap mounts the file as a symlink into a
    hidden directory).
    """
    env = os.environ if environ is None else environ
    chosen = os.fspath(arg) if arg is not None else env.get(CONFIG_ENV_VAR, "")
    if not chosen.strip():
        raise ConfigError(
            "(no config file)",
            [
                "no config file given: pass --config PATH "
                f"or set {CONFIG_ENV_VAR}=/path/to/config.toml"
            ],
        )
    return Path(os.path.abspath(os.path.expanduser(chosen)))


def load_config(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Read and validate the config file; raise ``ConfigError`` listing every problem found.

    ``environ`` (default ``os.environ``) is where ``*_env`` secrets and ``CRM_EXPORT_CONFIG``
    are looked up. Loading reads files and never writes anything.
    """
    env = os.environ if environ is None else environ
    config_path = resolve_config_path(path, env)
    document = _read_toml(config_path, from_env=path is None)
    problems: list[str] = []
    config = _build(document, config_path, env, problems)
    if problems:
        raise ConfigError(str(config_path), problems)
    return config


def stream_key_path(index: int, name: str | None, *keys: str) -> str:
    """How problems name a stream's key: ``streams[1] ("contacts").fields.Email``.

    Public so that later checks against the database report in the same words.
    """
    where = f"streams[{index}]"
    if name:
        where += f' ("{name}")'
    return ".".join((where, *keys))


def _read_toml(path: Path, *, from_env: bool) -> dict[str, Any]:
    origin = f" (named by {CONFIG_ENV_VAR})" if from_env else ""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        problem = f"file not found{origin}; config.example.toml is a starting point"
    except IsADirectoryError:
        problem = f"is a directory, not a config file{origin}"
    except PermissionError:
        problem = "not readable by this user (permission denied)"
    except OSError as exc:
        problem = f"cannot read: {exc.strerror}"
    else:
        try:
            # utf-8-sig: editors on Windows save a byte-order mark that tomllib rejects.
            return tomllib.loads(raw.decode("utf-8-sig"))
        except UnicodeDecodeError as exc:
            problem = f"not UTF-8 text (byte {exc.start}); TOML files must be UTF-8"
        except tomllib.TOMLDecodeError as exc:
            # tomllib's messages give the position and never quote the file's content.
            problem = f"TOML syntax error: {exc}"
    raise ConfigError(str(path), [problem])


def _build(
    doc: Mapping[str, Any], path: Path, environ: Mapping[str, str], problems: list[str]
) -> Config:
    root = _Table(doc, "", problems, known=CONFIG_KEYS, is_root=True)
    base = path.parent

    # Sections are read in the order the example file shows them, so problems come out in a
    # familiar order; only [sandbox] goes first, since it decides what [salesforce] needs.
    sandbox = _sandbox(root.section("sandbox"), base)
    database = _database(root.section("database"), base)
    salesforce = _salesforce(root.section("salesforce"), base, environ, sandbox.enabled)
    retry = _retry(root.section("retry"))
    export = _export(root.section("export"))
    schedule = _schedule(root.section("schedule"))
    logging = _logging(root.section("logging"))
    streams = _streams(
        doc.get("streams"), problems, base, default_url=database.url, pause=export.pause_on_error
    )
    return Config(
        path=path,
        database=database,
        salesforce=salesforce,
        export=export,
        retry=retry,
        schedule=schedule,
        logging=logging,
        sandbox=sandbox,
        streams=streams,
    )


# Sections -----------------------------------------------------------------------------------


def _database(t: _Table, base: Path) -> DatabaseConfig:
    url = _database_url(t, "url", t.string("url") or DatabaseConfig.url, base)
    return DatabaseConfig(url=url or DatabaseConfig.url)


def _salesforce(
    t: _Table, base: Path, environ: Mapping[str, str], sandbox_enabled: bool
) -> SalesforceConfig:
    defaults = SalesforceConfig()
    auth = t.choice("auth", defaults.auth, AUTH_MODES)
    login_url = _https_url(t, "login_url") or defaults.login_url
    instance_url = _https_url(t, "instance_url")

    # With the sandbox enabled, crm-export points [salesforce] at the sandbox org and brings
    # its own credentials: the keys here are still type-checked, but not required or resolved.
    mode_checks = not sandbox_enabled and t.valid("auth")
    needs = _AUTH_NEEDS[auth] if mode_checks else ()
    if mode_checks:
        _check_credentials_for_mode(t, auth)
        if (
            auth == "client_credentials"
            and t.valid("login_url")
            and urlsplit(login_url).hostname in _SHARED_LOGIN_HOSTS
        ):
            t.problem(
                "login_url",
                'auth = "client_credentials" needs your org\'s My Domain login URL, such as '
                "https://acme.my.salesforce.com; Salesforce refuses this flow on "
                "login.salesforce.com and test.salesforce.com",
            )

    secrets = {name: _secret(t, name, base, environ, resolve=name in needs) for name in _SECRETS}
    private_key = secrets["private_key"] and _private_key(t, secrets["private_key"])

    return SalesforceConfig(
        login_url=login_url,
        auth=auth,
        client_id=t.string("client_id"),
        client_secret=secrets["client_secret"],
        username=t.string("username"),
        password=secrets["password"],
        private_key=private_key,
        session_id=secrets["session_id"],
        instance_url=instance_url,
        api_version=_api_version(t) or defaults.api_version,
        ca_bundle=_ca_bundle(t, base),
        timeout_seconds=t.number(
            "timeout_seconds",
            defaults.timeout_seconds,
            maximum=MAX_TIMEOUT_SECONDS,
            note="Salesforce ends any API call after 10 minutes",
        ),
        max_reauth=t.integer("max_reauth", defaults.max_reauth, minimum=0),
    )


def _check_credentials_for_mode(t: _Table, auth: str) -> None:
    needs = _AUTH_NEEDS[auth]
    for credential in _CREDENTIALS:
        if credential in _SECRETS:
            keys = [k for k in (f"{credential}_env", f"{credential}_file") if k in t.data]
            missing_key = f"{credential}_env"
            how = f"{credential}_env or {credential}_file"
        else:
            keys = [credential] if credential in t.data else []
            missing_key = how = credential
        if credential in needs and not keys:
            t.problem(missing_key, f'missing: auth = "{auth}" needs {how}')
        elif credential not in needs and keys:
            users = " or ".join(f'"{m}"' for m, n in _AUTH_NEEDS.items() if credential in n)
            t.problem(
                keys[0],
                f'not used with auth = "{auth}"; remove it, or set auth = {users} '
                "if that is the flow you meant",
            )


def _private_key(t: _Table, key: Secret) -> Secret | None:
    """Check that ``key`` is a usable PEM private key, without ever quoting it."""
    where = "private_key_env" if key.source.startswith("env ") else "private_key_file"
    pem = key.reveal()
    if "\\n" in pem and "\n" not in pem:
        # Env files and CI variables cannot hold newlines, so a PEM often arrives with literal
        # \n escapes; PEM text never contains a backslash, so turning them back is safe.
        pem = pem.replace("\\n", "\n")
        key = Secret(pem, key.source)
    # A JWT setup has a certificate (uploaded to the connected app) and its private key (kept
    # here); passing the wrong one is the classic mistake, and it fails only at login.
    if "ENCRYPTED PRIVATE KEY" in pem or "Proc-Type: 4,ENCRYPTED" in pem:
        t.problem(where, "the private key is encrypted; crm-export needs an unencrypted PEM key")
    elif "PRIVATE KEY-----" not in pem:
        found = "a certificate, not" if "BEGIN CERTIFICATE" in pem else "no PEM text for"
        t.problem(
            where,
            f"holds {found} the private key; the JWT flow needs the PEM private key "
            "(-----BEGIN PRIVATE KEY-----) whose certificate is in the connected app",
        )
    else:
        return key
    return None


def _export(t: _Table) -> ExportConfig:
    d = ExportConfig()
    return ExportConfig(
        pause_on_error=t.boolean("pause_on_error", d.pause_on_error),
        batch_size=t.integer(
            "batch_size",
            d.batch_size,
            minimum=1,
            maximum=MAX_BATCH_SIZE,
            note="Salesforce's sObject Collections upsert takes at most 200 records per call",
        ),
        record_retry_attempts=t.integer(
            "record_retry_attempts", d.record_retry_attempts, minimum=0
        ),
        max_identical_errors=t.integer("max_identical_errors", d.max_identical_errors, minimum=1),
    )


def _retry(t: _Table) -> RetryConfig:
    d = RetryConfig()
    config = RetryConfig(
        max_attempts=t.integer("max_attempts", d.max_attempts, minimum=1),
        max_elapsed_seconds=t.number("max_elapsed_seconds", d.max_elapsed_seconds),
        initial_backoff_seconds=t.number("initial_backoff_seconds", d.initial_backoff_seconds),
        max_backoff_seconds=t.number("max_backoff_seconds", d.max_backoff_seconds),
    )
    if (
        t.valid("initial_backoff_seconds", "max_backoff_seconds")
        and config.max_backoff_seconds < config.initial_backoff_seconds
    ):
        t.problem(
            "max_backoff_seconds",
            f"must be at least initial_backoff_seconds ({config.initial_backoff_seconds:g}), "
            f"got {config.max_backoff_seconds:g}",
        )
    return config


def _schedule(t: _Table) -> ScheduleConfig:
    d = ScheduleConfig()
    timezone_name = t.string("timezone") or d.timezone
    zone = _zone(t, timezone_name)
    cron = t.string("reexport_cron") or d.reexport_cron
    _check_cron(t, cron, zone or dt.UTC)
    return ScheduleConfig(
        export_interval_seconds=t.integer(
            "export_interval_seconds", d.export_interval_seconds, minimum=1
        ),
        reexport_cron=cron,
        timezone=timezone_name,
        misfire_grace_seconds=t.integer(
            "misfire_grace_seconds", d.misfire_grace_seconds, minimum=1
        ),
    )


def _logging(t: _Table) -> LoggingConfig:
    d = LoggingConfig()
    return LoggingConfig(
        format=t.choice("format", d.format, LOG_FORMATS),
        level=t.choice("level", d.level, LOG_LEVELS),
    )


def _sandbox(t: _Table, base: Path) -> SandboxConfig:
    d = SandboxConfig()
    enabled = t.boolean("enabled", d.enabled)
    org_file = t.path("org_file", base)
    data_file = t.path("data_file", base)
    # Files only matter when the sandbox runs; a disabled section may point anywhere.
    if enabled and org_file is not None and not org_file.is_file():
        t.problem("org_file", f"file {org_file} does not exist")
    if enabled and data_file is not None and not data_file.parent.is_dir():
        t.problem("data_file", f"directory {data_file.parent} does not exist")
    return SandboxConfig(
        enabled=enabled,
        org_file=org_file,
        data_file=data_file,
        port=t.integer("port", d.port, minimum=0, maximum=65535, note="0 picks a free port"),
    )


def _streams(
    raw: object, problems: list[str], base: Path, *, default_url: str, pause: bool
) -> tuple[StreamConfig, ...]:
    if raw is None:
        problems.append("streams: no streams configured; add at least one [[streams]] table")
        return ()
    if isinstance(raw, dict):
        problems.append(
            "streams: must be an array of tables: write [[streams]] (double brackets) "
            "above each stream"
        )
        return ()
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        problems.append("streams: must be [[streams]] tables, one per stream")
        return ()
    if not raw:
        problems.append("streams: no streams configured; add at least one [[streams]] table")
        return ()

    streams: list[StreamConfig] = []
    first_index: dict[str, int] = {}
    for index, item in enumerate(raw):
        name = item.get("name")
        shown = name if isinstance(name, str) and _STREAM_NAME.fullmatch(name) else None
        t = _Table(item, stream_key_path(index, shown), problems, known=CONFIG_KEYS["streams"])
        stream = _stream(t, base, default_url=default_url, pause=pause)
        if shown is not None:
            if shown in first_index:
                t.problem(
                    "name",
                    f'duplicate stream name; streams[{first_index[shown]}] is already "{shown}"',
                )
            first_index.setdefault(shown, index)
        if stream is not None:
            streams.append(stream)
    return tuple(streams)


def _stream(t: _Table, base: Path, *, default_url: str, pause: bool) -> StreamConfig | None:
    name = t.required_string("name")
    if name is not None and not _STREAM_NAME.fullmatch(name):
        t.problem(
            "name",
            f"must be letters, digits, '_', '-' or '.', starting with a letter or digit, "
            f"got {_show(name)}; it names the stream in logs, the CLI and the state database",
        )
    key = _sql_name(t, "key", t.required_string("key"))
    order_by = _sql_name(t, "order_by", t.required_string("order_by"))
    sobject = _sf_name(t, "sobject", t.required_string("sobject"))
    external_id = _sf_name(t, "external_id_field", t.required_string("external_id_field"))
    if external_id is not None and external_id.lower() == "id":
        t.problem(
            "external_id_field",
            "must be an external ID field, not Id: upsert matches records on an external ID "
            "field such as External_Id__c",
        )
    table, query = _table_or_query(t)
    fields = _fields(t, external_id)
    url_text = t.string("source_url")
    source_url = default_url if url_text is None else _database_url(t, "source_url", url_text, base)
    pause_on_error = t.boolean("pause_on_error", pause)

    if not (
        name and key and order_by and sobject and external_id and fields and source_url
    ) or not (table or query):
        return None  # every missing piece has been reported
    return StreamConfig(
        name=name,
        key=key,
        order_by=order_by,
        sobject=sobject,
        external_id_field=external_id,
        fields=fields,
        pause_on_error=pause_on_error,
        source_url=source_url,
        table=table,
        query=query,
    )


def _table_or_query(t: _Table) -> tuple[str | None, str | None]:
    table = t.string("table")
    query = t.string("query")
    if "table" in t.data and "query" in t.data:
        t.problem("query", "set either table or query, not both")
        return None, None
    if "table" not in t.data and "query" not in t.data:
        t.problem("table", 'missing: set table = "name" (or schema.name), or query = "SELECT ..."')
        return None, None
    if table is not None and not _SQL_TABLE.fullmatch(table):
        t.problem(
            "table",
            f"must be a plain table name or schema.table (letters, digits, _ or $), "
            f"got {_show(table)}{_unsafe_hint(table)}; for anything else use query",
        )
        table = None
    if query is not None:
        problem, query = _check_query(query)
        if problem:
            t.problem("query", problem)
            query = None
    return table, query


def _fields(t: _Table, external_id: str | None) -> tuple[tuple[str, str], ...] | None:
    raw = t.data.get("fields")
    if raw is None:
        t.problem(
            "fields",
            "missing: add a [streams.fields] table mapping Salesforce fields to source "
            'columns, e.g. LastName = "last_name"',
        )
        return None
    if not isinstance(raw, dict):
        t.problem("fields", f'must be a table of SalesforceField = "column", got {_kind(raw)}')
        return None
    if not raw:
        t.problem("fields", "is empty: map at least one Salesforce field to a source column")
        return None

    fields = _Table(raw, t.at("fields"), t.problems, known=None)
    mapping: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for sf_field, column in raw.items():
        if not isinstance(column, str):
            hint = ""
            if sf_field in CONFIG_KEYS["streams"]:
                # TOML puts every key after [streams.fields] into that table.
                hint = (
                    f"; if {sf_field} is the stream setting, move it above [streams.fields]: "
                    "every key after that header belongs to fields"
                )
            fields.problem(sf_field, f"must be a source column name in quotes{hint}")
            continue
        if not _SF_NAME.fullmatch(sf_field):
            fields.problem(
                sf_field,
                "is not a Salesforce field API name (letters, digits and _, starting with a "
                "letter)",
            )
            continue
        folded = sf_field.lower()  # Salesforce API names ignore case
        if folded in seen:
            fields.problem(sf_field, f"maps the same Salesforce field as fields.{seen[folded]}")
            continue
        seen[folded] = sf_field
        if external_id is not None and folded == external_id.lower():
            fields.problem(
                sf_field,
                "is the external_id_field; crm-export fills it from key, so remove it here",
            )
            continue
        if folded == "id":
            fields.problem(
                sf_field, "Id is assigned by Salesforce and cannot be written by an upsert"
            )
            continue
        if _sql_name(fields, sf_field, column) is not None:
            mapping.append((sf_field, column))
    return None if fields.invalid else tuple(mapping)


# Values -------------------------------------------------------------------------------------


def _sql_name(t: _Table, key: str, value: str | None) -> str | None:
    if value is None or _SQL_IDENTIFIER.fullmatch(value):
        return value
    t.problem(
        key,
        f"must be a plain column name (letters, digits, _ or $, not starting with a digit), "
        f"got {_show(value)}{_unsafe_hint(value)}; to read a column whose name needs quotes, "
        "select it under an alias in query",
    )
    return None


def _sf_name(t: _Table, key: str, value: str | None) -> str | None:
    if value is None or _SF_NAME.fullmatch(value):
        return value
    t.problem(
        key,
        "must be a Salesforce API name (letters, digits and _, starting with a letter), "
        f"got {_show(value)}",
    )
    return None


def _unsafe_hint(value: str) -> str:
    if any(c in value for c in "'\";`") or any(c.isspace() for c in value):
        return " (quotes, semicolons and spaces are not allowed in names)"
    return ""


def _check_query(sql: str) -> tuple[str | None, str]:
    """Check that ``sql`` is one read-only SELECT; return (problem, query without trailing ;).

    A small scanner rather than a regex: semicolons and keywords inside string literals,
    quoted identifiers and comments must not count.
    """
    words: list[str] = []
    end = 0  # end of the last character that is neither whitespace nor comment
    statement_end: int | None = None  # position of the first ';'
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if sql.startswith("--", i):
            newline = sql.find("\n", i)
            i = n if newline == -1 else newline
            continue
        if sql.startswith("/*", i):
            close = sql.find("*/", i + 2)
            if close == -1:
                return "has a /* comment that is never closed", sql
            i = close + 2
            continue
        if c.isspace():
            i += 1
            continue
        if statement_end is not None:
            return "must be a single SELECT statement (found SQL after ';')", sql
        if c in "'\"":
            close = i + 1
            while True:
                close = sql.find(c, close)
                if close == -1:
                    return f"has an unterminated {c} quote", sql
                if sql.startswith(c * 2, close):  # doubled quote escapes itself
                    close += 2
                    continue
                break
            i = end = close + 1
            continue
        if c == ";":
            statement_end = i
            i += 1
            continue
        match = _SQL_IDENTIFIER.match(sql, i)
        if match:
            words.append(match.group().lower())
            i = end = match.end()
            continue
        i += 1
        end = i
    if not words or words[0] not in ("select", "with"):
        return "must be a SELECT statement (starting with SELECT or WITH)", sql
    writing = sorted(_WRITING_WORDS.intersection(words))
    if writing:
        return f"must only read rows; found {writing[0].upper()}", sql
    return None, sql[:end]


def _https_url(t: _Table, key: str) -> str | None:
    raw = t.string(key)
    if raw is None:
        return None
    try:
        parts = urlsplit(raw)
        _ = parts.port  # raises ValueError on a bad port
    except ValueError:
        t.problem(key, "is not a valid URL")
        return None
    # The checks below never quote the URL: it might carry a user:password@.
    if parts.username or parts.password:
        t.problem(key, "must not contain credentials (user:password@); use the secret keys")
    elif parts.scheme == "http":
        t.problem(
            key,
            "must use https://, not http://: Salesforce serves its API only over HTTPS "
            "(for a local sandbox org, trust its CA with ca_bundle)",
        )
    elif parts.scheme != "https" or not parts.hostname:
        t.problem(key, "must be an https:// URL such as https://acme.my.salesforce.com")
    elif parts.path.strip("/") or parts.query or parts.fragment:
        t.problem(
            key,
            "must be the site's address only, without a path such as /services/...: "
            "crm-export adds the paths",
        )
    else:
        return raw.rstrip("/")
    return None


def _api_version(t: _Table) -> str | None:
    value = t.data.get("api_version")
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        t.problem("api_version", 'must be a string in quotes, such as "64.0"')
        return None
    text = t.string("api_version")
    if text is None:
        return None
    match = _API_VERSION.fullmatch(text.removeprefix("v"))
    if match is None:
        t.problem("api_version", f'must look like "64.0", got {_show(text)}')
        return None
    if text.startswith("v"):
        t.problem("api_version", f'write it without the leading v: "{text[1:]}"')
        return None
    if int(match.group(1)) < MIN_API_VERSION:
        t.problem(
            "api_version",
            f"must be {MIN_API_VERSION}.0 or later (the first with sObject Collections upsert), "
            f"got {text}",
        )
        return None
    return text


def _ca_bundle(t: _Table, base: Path) -> Path | None:
    path = t.path("ca_bundle", base)
    if path is None:
        return None
    if path.is_dir():
        return path  # requests also accepts an OpenSSL hashed certificate directory
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        t.problem("ca_bundle", f"file {path} does not exist")
        return None
    except OSError as exc:
        t.problem("ca_bundle", f"cannot read {path}: {exc.strerror}")
        return None
    if "-----BEGIN CERTIFICATE-----" not in text:
        t.problem(
            "ca_bundle", f"file {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        )
        return None
    return path


def _secret(
    t: _Table, name: str, base: Path, environ: Mapping[str, str], *, resolve: bool
) -> Secret | None:
    """Read the secret ``name`` from ``{name}_env`` or ``{name}_file``.

    Problems name the variable or the file, never the value. With ``resolve`` false (a
    credential the chosen auth mode does not use) only the keys themselves are checked.
    """
    env_key, file_key = f"{name}_env", f"{name}_file"
    env_name = t.string(env_key)
    file_path = t.path(file_key, base)
    if env_key in t.data and file_key in t.data:
        t.problem(env_key, f"set only one of {env_key} and {file_key}")
        return None
    if env_name is not None:
        if not _ENV_NAME.fullmatch(env_name):
            # Not quoted back: this is often the secret itself pasted into the wrong key.
            t.problem(
                env_key,
                "must be the name of an environment variable (letters, digits and _), "
                "not the secret itself",
            )
            return None
        if not resolve:
            return None
        value = environ.get(env_name)
        if value is None:
            t.problem(env_key, f"environment variable {env_name} is not set")
        elif not value.strip():
            t.problem(env_key, f"environment variable {env_name} is empty")
        else:
            return Secret(value, f"env {env_name}")
        return None
    if file_path is None or not resolve:
        return None
    try:
        # One trailing newline (echo, editors) is never part of a secret.
        value = file_path.read_bytes().decode("utf-8").rstrip("\r\n")
    except FileNotFoundError:
        t.problem(file_key, f"file {file_path} does not exist")
    except IsADirectoryError:
        t.problem(file_key, f"{file_path} is a directory, not a file")
    except PermissionError:
        t.problem(file_key, f"file {file_path} is not readable by this user (permission denied)")
    except OSError as exc:
        t.problem(file_key, f"cannot read {file_path}: {exc.strerror}")
    except UnicodeDecodeError:
        t.problem(file_key, f"file {file_path} is not UTF-8 text")
    else:
        if value.strip():
            return Secret(value, f"file {file_path}")
        t.problem(file_key, f"file {file_path} is empty")
    return None


def _database_url(t: _Table, key: str, raw: str, base: Path) -> str | None:
    """Validate a SQLAlchemy URL; make a relative SQLite path absolute next to the config.

    Problems never quote the URL, which may hold a database password.
    """
    example = "e.g. sqlite:///crm_export.db or postgresql+psycopg://user@host/dbname"
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):
        t.problem(key, f"is not a database URL; {example}")
        return None
    backend = url.get_backend_name()
    if backend in ("sqlite", "postgresql"):
        try:
            driver = url.get_driver_name()  # the dialect's default when none is written
        except Exception:  # an unknown driver plugin: reported just below
            driver = url.drivername
        if backend == "sqlite" and driver == "pysqlite":
            return _absolute_sqlite_url(url, raw, base)
        if backend == "postgresql" and driver == "psycopg":
            return raw
        scheme = "sqlite:///" if backend == "sqlite" else "postgresql+psycopg://"
        t.problem(key, f"unsupported driver {driver!r}: write {scheme}...")
        return None
    if backend == "postgres":
        t.problem(key, "write postgresql:// (or postgresql+psycopg://), not postgres://")
        return None
    t.problem(key, f"unsupported database {backend!r}: crm-export supports SQLite and PostgreSQL")
    return None


def _absolute_sqlite_url(url: URL, raw: str, base: Path) -> str:
    database = url.database or ""
    if database in ("", ":memory:"):
        return raw
    prefix = ""
    if database.startswith("file:") and url.query.get("uri") == "true":
        prefix, database = "file:", database.removeprefix("file:")
    # Under systemd the working directory is /, so a path relative to it is never meant.
    absolute = str(base / os.path.expanduser(database))
    if absolute == database:
        return raw
    return url.set(database=prefix + absolute).render_as_string(hide_password=False)


def _zone(t: _Table, name: str) -> dt.tzinfo | None:
    if name == "UTC":
        return dt.UTC  # as APScheduler does, so UTC works without the system's tz data
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        known = zoneinfo.available_timezones()
        # No zones at all means the system lacks tz data (slim container images), not a typo.
        hint = _suggest(name, known) if known else "; no tz data found: install tzdata"
        t.problem(
            "timezone",
            f'{_show(name)} is not an IANA time zone such as "Europe/Paris" or "UTC"{hint}',
        )
        return None


def _check_cron(t: _Table, expr: str, zone: dt.tzinfo) -> None:
    try:
        CronTrigger.from_crontab(expr, timezone=zone)
    except (ValueError, TypeError) as exc:
        t.problem("reexport_cron", f"invalid cron expression {_show(expr)}: {exc}")
        return
    day_of_week = expr.split()[4]
    if any(c.isdigit() for c in day_of_week):
        # APScheduler 3 counts weekdays from 0 = Monday, crontab from 0 = Sunday: a number
        # would silently run on another day than the one the user read in crontab docs.
        t.problem(
            "reexport_cron",
            f"write the day of the week as names (mon-fri, sun), not numbers, got "
            f"{_show(day_of_week)}: the scheduler counts 0 as Monday, crontab as Sunday",
        )


# The reader ---------------------------------------------------------------------------------

_S = TypeVar("_S", bound=str)


class _Table:
    """One TOML table being read: typed getters that report problems instead of raising.

    Every problem is recorded with the key path and the offending key is remembered, so that
    cross-checks between keys can skip values that already failed.
    """

    def __init__(
        self,
        data: Mapping[str, Any],
        where: str,
        problems: list[str],
        *,
        known: Collection[str] | None,
        is_root: bool = False,
    ) -> None:
        self.data = data
        self.where = where
        self.problems = problems
        self.invalid: set[str] = set()
        if known is not None:
            for key in data:
                if key not in known:
                    self.problem(key, _unknown_key(key, known, is_root=is_root))

    def at(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def problem(self, key: str, message: str) -> None:
        self.problems.append(f"{self.at(key)}: {message}")
        self.invalid.add(key)

    def valid(self, *keys: str) -> bool:
        return self.invalid.isdisjoint(keys)

    def section(self, name: str) -> _Table:
        raw = self.data.get(name, {})
        if not isinstance(raw, dict):
            self.problem(name, f"must be a table ([{name}]), got {_kind(raw)}")
            raw = {}
        return _Table(raw, self.at(name), self.problems, known=CONFIG_KEYS[name])

    def string(self, key: str) -> str | None:
        """The string at ``key``; None when absent or (reported) not a non-empty string."""
        value = self.data.get(key)
        if value is None or key in self.invalid:
            return None
        if not isinstance(value, str):
            self.problem(key, f"must be a string (in quotes), got {_kind(value)}")
            return None
        if not value.strip():
            self.problem(key, "must not be empty")
            return None
        return value

    def required_string(self, key: str) -> str | None:
        if key not in self.data:
            self.problem(key, "missing (required)")
            return None
        return self.string(key)

    def path(self, key: str, base: Path) -> Path | None:
        value = self.string(key)
        return None if value is None else base / Path(os.path.expanduser(value))

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if isinstance(value, bool):
            return value
        hint = ""
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            hint = f" (write {value.strip().lower()} without quotes)"
        self.problem(key, f"must be true or false, got {_kind(value)}{hint}")
        return default

    def integer(
        self,
        key: str,
        default: int,
        *,
        minimum: int,
        maximum: int | None = None,
        note: str = "",
    ) -> int:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            hint = ""
            if isinstance(value, float) and value.is_integer():
                hint = f" (write {int(value)})"
            self.problem(key, f"must be a whole number, got {_kind(value)}{hint}")
            return default
        if maximum is not None and not minimum <= value <= maximum:
            self.problem(key, f"must be between {minimum} and {maximum}, got {value}{_paren(note)}")
        elif value < minimum:
            self.problem(key, f"must be at least {minimum}, got {value}{_paren(note)}")
        return value

    def number(
        self, key: str, default: float, *, maximum: float | None = None, note: str = ""
    ) -> float:
        """A positive number of seconds: int or float, finite, > 0, at most ``maximum``."""
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problem(key, f"must be a number, got {_kind(value)}")
            return default
        if not math.isfinite(value) or value <= 0:
            self.problem(key, f"must be greater than 0, got {value}")
        elif maximum is not None and value > maximum:
            self.problem(key, f"must be at most {maximum}, got {value}{_paren(note)}")
        return float(value)

    def choice(self, key: str, default: _S, choices: Sequence[_S]) -> _S:
        value = self.data.get(key, default)
        if not isinstance(value, str):
            self.problem(key, f"must be a string (in quotes), got {_kind(value)}")
            return default
        for choice in choices:
            if value == choice:
                return choice
        listed = ", ".join(f'"{c}"' for c in choices)
        self.problem(key, f"must be one of {listed}, got {_show(value)}{_suggest(value, choices)}")
        return default


def _unknown_key(key: str, known: Collection[str], *, is_root: bool) -> str:
    if f"{key}_env" in known:
        return (
            "unknown key; secrets are not written in this file: set "
            f"{key}_env (the name of an environment variable) or {key}_file (a file path)"
        )
    # Sections other than this table's own (``known`` is one of CONFIG_KEYS' values).
    homes = [s for s, keys in CONFIG_KEYS.items() if key in keys and keys is not known]
    if homes:
        where = "[[streams]]" if homes[0] == "streams" else f"[{homes[0]}]"
        # The usual cause is TOML itself: every key after a [header] belongs to that table.
        after = "" if is_root else " (keys after a [header] belong to that header's table)"
        return f"unknown key here; it belongs under {where}{after}"
    return "unknown " + ("section" if is_root else "key") + _suggest(key, known)


def _suggest(value: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    if not close:  # "INFO" for "info"
        close = difflib.get_close_matches(value.lower(), list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _kind(value: object) -> str:
    """A TOML value's type, in TOML's words (values are not quoted: they may be secrets)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return "a date/time"


def _show(value: str, limit: int = 60) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _paren(note: str) -> str:
    return f" ({note})" if note else ""
