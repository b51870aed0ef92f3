"""The config file's sections as pydantic models: each key is declared once, with its type,
default and bounds, and the checks in ``checks.py`` attached to it.

The models are also what the rest of crm-export reads (frozen, so a loaded config cannot
change under a running export). A validator that depends on another key of its section
reads it from ``info.data``, which holds the fields declared above it that passed; so the
order of the fields matters, and a key that already failed never causes a second problem.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Self, TypeVar, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from crm_export.config.checks import (
    DEFAULT_DATABASE_URL,
    STREAM_NAME,
    ApiVersion,
    CaBundle,
    ColumnName,
    ConfigPath,
    DatabaseUrl,
    ExternalIdField,
    HttpsUrl,
    ListenAddress,
    MayHoldPassword,
    NonBlank,
    Problems,
    ReadOnlyQuery,
    SalesforceName,
    StreamName,
    TableName,
    TimeZone,
    check_cron,
    context_of,
    field_mapping,
    problem,
    split_listen,
    zone_of,
)
from crm_export.config.relations import (
    dependency_problems,
    lookups_table,
    stream_names,
)
from crm_export.config.secret import EnvOrFile, Secret, SecretKeys, usable_private_key
from crm_export.store.urls import redact_url

AuthMode = Literal["client_credentials", "password", "jwt", "session"]
LogFormat = Literal["auto", "json", "console"]
LogLevel = Literal["debug", "info", "warning", "error"]

AUTH_MODES: Final[tuple[AuthMode, ...]] = get_args(AuthMode)
LOG_FORMATS: Final[tuple[LogFormat, ...]] = get_args(LogFormat)
LOG_LEVELS: Final[tuple[LogLevel, ...]] = get_args(LogLevel)

# sObject Collections upsert takes at most 200 records per call.
MAX_BATCH_SIZE: Final = 200
# Salesforce runs at most 25 long-running requests (over 20 s) of an org at once
# (Salesforce Developer Limits, "Concurrent API Request Limits"): more in flight buys nothing.
MAX_CONCURRENT_REQUESTS: Final = 25
_CONCURRENCY_LIMIT: Final = (
    "Salesforce runs at most 25 long-running requests of an org at once, shared by every "
    "integration"
)
# Salesforce ends any REST/SOAP call after 10 minutes; waiting longer only hides a hang.
MAX_TIMEOUT_SECONDS: Final = 600
# A lookback re-reads its whole window on every run: a day is already far more than any
# transaction lasts, and a wider window only costs reads.
MAX_LOOKBACK_SECONDS: Final = 86_400
MAX_LOOKBACK_ROWS: Final = 1_000_000

Seconds = Annotated[float, Field(gt=0)]


class _Section(BaseModel):
    # strict: TOML has real types, so "30" is not a number and 100.0 is not a whole number.
    # validate_default: the checks also run on absent keys (a missing credential is a problem).
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=True,
        validate_default=True,
        allow_inf_nan=False,
        defer_build=True,
    )

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        # A database URL may carry a password, and reprs end up in logs and tracebacks.
        redacted = {
            name
            for name, field in type(self).model_fields.items()
            if any(isinstance(m, MayHoldPassword) for m in field.metadata)
        }
        for name, value in super().__repr_args__():
            if name in redacted and isinstance(value, str):
                value = redact_url(value)
            yield name, value


class DatabaseConfig(_Section):
    url: DatabaseUrl = DEFAULT_DATABASE_URL


# [salesforce] ------------------------------------------------------------------------------

# What each auth mode needs; a credential that the chosen mode does not use is an error too,
# because it usually means `auth` was forgotten and another flow would run than intended.
AUTH_NEEDS: Final[Mapping[str, tuple[str, ...]]] = {
    "client_credentials": ("client_id", "client_secret"),
    "password": ("client_id", "client_secret", "username", "password"),
    "jwt": ("client_id", "username", "private_key"),
    "session": ("session_id", "instance_url"),
}
# Salesforce refuses the client credentials flow on the shared login hosts.
_SHARED_LOGIN_HOSTS: Final = frozenset({"login.salesforce.com", "test.salesforce.com"})


def _checked_auth(info: ValidationInfo) -> str | None:
    """The auth mode whose credential rules apply, or None: no file being loaded, the
    sandbox brings its own credentials, or ``auth`` itself failed."""
    context = context_of(info)
    if context is None or context.sandbox:
        return None
    auth = info.data.get("auth")
    return auth if isinstance(auth, str) else None


def _mode_problem(
    info: ValidationInfo, given: list[str], missing_key: str, how: str
) -> PydanticCustomError | None:
    auth = _checked_auth(info)
    credential = info.field_name
    if auth is None or credential is None:
        return None
    needs = AUTH_NEEDS[auth]
    if credential in needs and not given:
        return problem(
            "credential_missing", f'missing: auth = "{auth}" needs {how}', key=missing_key
        )
    if credential not in needs and given:
        users = " or ".join(f'"{m}"' for m, n in AUTH_NEEDS.items() if credential in n)
        return problem(
            "credential_unused",
            f'not used with auth = "{auth}"; remove it, or set auth = {users} '
            "if that is the flow you meant",
            key=given[0],
        )
    return None


_T = TypeVar("_T")


def _used_by_auth_mode(value: _T, info: ValidationInfo) -> _T:
    name = info.field_name or ""
    error = _mode_problem(info, [name] if value is not None else [], name, name)
    if error is not None:
        raise error
    return value


def _secret_from_env_or_file(value: object, info: ValidationInfo) -> Secret | None:
    name = info.field_name or ""
    if isinstance(value, Secret):  # built in code
        return value
    if value is not None and not isinstance(value, SecretKeys):
        raise problem(
            "inline_secret",
            "unknown key; secrets are not written in this file: set "
            f"{name}_env (the name of an environment variable) or {name}_file (a file path)",
        )
    keys = value if isinstance(value, SecretKeys) else SecretKeys(name)
    how = f"{keys.env_key} or {keys.file_key}"
    # A key the auth mode does not use is to be removed: its form does not matter.
    if error := _mode_problem(info, keys.given(), keys.env_key, how):
        raise error
    context = context_of(info)
    problems = Problems()
    where = keys.where(problems, None if context is None else context.base)
    problems.raise_if_any()
    # Read only what the auth mode uses: any other secret key was reported just above.
    if where is None or context is None or not context.secrets or _checked_auth(info) is None:
        return None
    return keys.read(where, context.environ)


UsedByAuthMode = AfterValidator(_used_by_auth_mode)
SecretFromEnvOrFile = Annotated[
    Secret | None, EnvOrFile(), BeforeValidator(_secret_from_env_or_file)
]


class SalesforceConfig(_Section):
    # auth comes first: the credential rules below read it from info.data.
    auth: AuthMode = "client_credentials"
    login_url: HttpsUrl = "https://login.salesforce.com"
    client_id: Annotated[NonBlank | None, UsedByAuthMode] = None
    client_secret: SecretFromEnvOrFile = None
    username: Annotated[NonBlank | None, UsedByAuthMode] = None
    password: SecretFromEnvOrFile = None
    # PEM, for auth = "jwt"
    private_key: Annotated[SecretFromEnvOrFile, AfterValidator(usable_private_key)] = None
    session_id: SecretFromEnvOrFile = None  # for auth = "session"
    instance_url: Annotated[HttpsUrl | None, UsedByAuthMode] = None  # for auth = "session"
    api_version: ApiVersion = "64.0"
    ca_bundle: CaBundle | None = None
    timeout_seconds: Seconds = Field(
        30.0,
        le=MAX_TIMEOUT_SECONDS,
        description="Salesforce ends any API call after 10 minutes",
    )
    max_reauth: int = Field(2, ge=0)
    # The share of the org's daily API allocation crm-export may use, counting every
    # integration's calls: at the line it stops sending (runs end "deferred"). 100: no line.
    max_api_usage_percent: int = Field(
        80,
        ge=1,
        le=100,
        description="a percentage of the org's daily API allocation; 100 means no line",
    )

    @model_validator(mode="before")
    @classmethod
    def _gather_secret_keys(cls, data: Any) -> Any:
        """Hand each secret field its ``*_env`` and ``*_file`` keys, as written."""
        if not isinstance(data, dict):
            return data
        gathered = dict(data)
        for name, field in cls.model_fields.items():
            if any(isinstance(m, EnvOrFile) for m in field.metadata):
                env = gathered.pop(f"{name}_env", None)
                file = gathered.pop(f"{name}_file", None)
                # A secret written inline stays, to be reported as such.
                if name not in gathered and (env is not None or file is not None):
                    gathered[name] = SecretKeys(name, env, file)
        return gathered

    @field_validator("login_url")
    @classmethod
    def _my_domain_for_client_credentials(cls, value: str, info: ValidationInfo) -> str:
        if (
            _checked_auth(info) == "client_credentials"
            and urlsplit(value).hostname in _SHARED_LOGIN_HOSTS
        ):
            raise problem(
                "shared_login_host",
                'auth = "client_credentials" needs your org\'s My Domain login URL, such as '
                "https://acme.my.salesforce.com; Salesforce refuses this flow on "
                "login.salesforce.com and test.salesforce.com",
            )
        return value


# The other sections ------------------------------------------------------------------------


def _cap_not_below_start(value: float, info: ValidationInfo, start: str) -> float:
    """A backoff's cap (``value``) must not be below its first wait, the key ``start``."""
    initial = info.data.get(start)
    if initial is not None and value < initial:
        raise problem("backoff_inverted", f"must be at least {start} ({initial:g}), got {value:g}")
    return value


class RetryConfig(_Section):
    """Request-level retries: exponential backoff with full jitter, bounded twice."""

    max_attempts: int = Field(12, ge=1)
    max_elapsed_seconds: Seconds = 300.0
    initial_backoff_seconds: Seconds = 1.0
    max_backoff_seconds: Seconds = 60.0

    @field_validator("max_backoff_seconds")
    @classmethod
    def _not_below_initial(cls, value: float, info: ValidationInfo) -> float:
        return _cap_not_below_start(value, info, "initial_backoff_seconds")


class ExportConfig(_Section):
    pause_on_error: bool = True
    batch_size: int = Field(
        200,
        ge=1,
        le=MAX_BATCH_SIZE,
        description="Salesforce's sObject Collections upsert takes at most 200 records per call",
    )
    # Record-level transient errors (UNABLE_TO_LOCK_ROW, rolled back by allOrNone).
    record_retry_attempts: int = Field(5, ge=0)
    # A run that sees this many record errors in a row with the same code and fields stops
    # as a configuration problem instead of filling ExportErrors with identical rows.
    max_identical_errors: int = Field(50, ge=1)
    # Bulk API 2.0 (issue 11): a stream in skip mode with more rows pending than this goes
    # through Bulk ingest jobs instead of Collections; 0 turns Bulk off.
    bulk_threshold: int = Field(10_000, ge=0)
    bulk_max_records: int = Field(
        100_000,
        ge=1,
        le=150_000_000,
        description="records per Bulk job (Salesforce processes at most 150,000,000 a day)",
    )
    bulk_max_jobs_in_flight: int = Field(
        2, ge=1, le=25, description="Bulk jobs uploaded and not yet finished, per stream"
    )
    # Polling a job: the first wait, doubling up to the cap, and how long a run waits for one
    # job before it fails (transient; the job is resumed by the next run).
    bulk_poll_initial_seconds: float = Field(1.0, gt=0, le=3600)
    bulk_poll_max_seconds: float = Field(30.0, gt=0, le=3600)
    bulk_poll_timeout_seconds: float = Field(3600.0, gt=0)

    @field_validator("bulk_poll_max_seconds")
    @classmethod
    def _poll_cap_not_below_start(cls, value: float, info: ValidationInfo) -> float:
        return _cap_not_below_start(value, info, "bulk_poll_initial_seconds")

    # Collections calls one stream in skip mode keeps in flight (pause mode always has one:
    # it needs each answer before the next send). Salesforce runs at most 25 long requests
    # of an org at once, shared by every integration.
    max_in_flight: int = Field(4, ge=1, le=MAX_CONCURRENT_REQUESTS, description=_CONCURRENCY_LIMIT)
    # Streams CRMExport runs at the same time (a stream still waits for its depends_on).
    max_parallel_streams: int = Field(
        4, ge=1, le=MAX_CONCURRENT_REQUESTS, description=_CONCURRENCY_LIMIT
    )


class ScheduleConfig(_Section):
    export_interval_seconds: int = Field(300, ge=1)
    timezone: TimeZone = "UTC"  # before reexport_cron, which is read in this zone
    reexport_cron: NonBlank = "0 2 * * *"
    misfire_grace_seconds: int = Field(3600, ge=1)

    @field_validator("reexport_cron")
    @classmethod
    def _valid_cron(cls, value: str, info: ValidationInfo) -> str:
        check_cron(value, zone_of(info.data.get("timezone", "UTC")))
        return value


class LoggingConfig(_Section):
    format: LogFormat = "auto"
    level: LogLevel = "info"


class MetricsConfig(_Section):
    """The daemon's HTTP endpoints for monitoring: /metrics, /healthz, /readyz."""

    # host:port, such as "127.0.0.1:9464"; unset (the default), nothing listens.
    listen: ListenAddress | None = None

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) to listen on, or None when off."""
        return None if self.listen is None else split_listen(self.listen)


class SandboxConfig(_Section):
    """Start the local sandbox org in-process and export into it (the embedded default)."""

    enabled: bool = False
    # Files only matter when the sandbox runs; a disabled section may point anywhere.
    org_file: ConfigPath | None = None
    data_file: ConfigPath | None = None
    port: int = Field(0, ge=0, le=65535, description="0 picks a free port")

    @field_validator("org_file")
    @classmethod
    def _org_file_exists(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and info.data.get("enabled") and not value.is_file():
            raise problem("org_file", f"file {value} does not exist")
        return value

    @field_validator("data_file")
    @classmethod
    def _data_directory_exists(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and info.data.get("enabled") and not value.parent.is_dir():
            raise problem("data_file", f"directory {value.parent} does not exist")
        return value


class LookupConfig(_Section):
    """One ``[streams.lookups]`` entry: a lookup field set through its parent's external ID."""

    sobject: SalesforceName  # the parent's object
    external_id_field: ExternalIdField  # the parent's external ID field
    column: ColumnName  # the source column holding the parent's key
    # Derived when absent, as Salesforce derives it: AccountId -> Account, Foo__c -> Foo__r.
    relationship: SalesforceName | None = None


class StreamConfig(_Section):
    name: StreamName
    key: ColumnName
    order_by: ColumnName
    sobject: SalesforceName
    external_id_field: ExternalIdField
    # (Salesforce field, source column), in file order, from the [streams.fields] table;
    # the empty default is there so that a missing table is reported with an example.
    fields: tuple[tuple[str, str], ...] = ()
    # When the stream sets neither, Config fills in [export] pause_on_error and [database] url.
    pause_on_error: bool = True
    source_url: DatabaseUrl = DEFAULT_DATABASE_URL
    table: TableName | None = None
    query: ReadOnlyQuery | None = None
    # Lookup field -> its parent, in file order, from the [streams.lookups] table.
    lookups: dict[SalesforceName, LookupConfig] = Field(default_factory=dict)
    # Streams to export first; those whose object a lookup points at are added by themselves.
    depends_on: tuple[StreamName, ...] = ()

    @field_validator("lookups", mode="before")
    @classmethod
    def _lookups_table(cls, value: object, info: ValidationInfo) -> object:
        # fields and external_id_field come first in the model, so they are read by now.
        return lookups_table(
            value,
            LookupConfig,
            info.context,
            fields=info.data.get("fields", ()),
            external_id=info.data.get("external_id_field"),
        )

    @field_validator("depends_on", mode="before")
    @classmethod
    def _depends_on_list(cls, value: object) -> object:
        return stream_names(value)

    # Late commits: each run also re-reads the rows whose order_by lies this far behind the
    # position (seconds for a timestamp or date order_by, order values for an integer one);
    # unchanged ones cost nothing. None: the default for the source database (wiring.py).
    lookback_seconds: float | None = Field(
        None,
        ge=0,
        le=MAX_LOOKBACK_SECONDS,
        description="re-read on every run: the longest a writer's transaction lasts is enough",
    )
    lookback_rows: int | None = Field(
        None,
        ge=0,
        le=MAX_LOOKBACK_ROWS,
        description="re-read on every run: the rows written while a transaction lasts",
    )

    @field_validator("fields", mode="before")
    @classmethod
    def _fields_table(cls, value: object, info: ValidationInfo) -> object:
        return field_mapping(value, info.data.get("external_id_field"), cls.model_fields)

    @field_validator("query")
    @classmethod
    def _table_or_query(cls, value: str | None, info: ValidationInfo) -> str | None:
        table = info.data.get("table", "(invalid)")  # absent: None; failed: not in data
        if value is not None and table is not None:
            raise problem("table_and_query", "set either table or query, not both")
        if value is None and table is None:
            raise problem(
                "no_source",
                'missing: set table = "name" (or schema.name), or query = "SELECT ..."',
                key="table",
            )
        return value

    @field_validator("lookback_rows")
    @classmethod
    def _one_lookback(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("lookback_seconds") is not None:
            raise problem(
                "two_lookbacks",
                "set lookback_seconds (a timestamp or date order_by) or lookback_rows (an "
                "integer order_by), not both: one order_by has one type",
            )
        return value


# The whole file ----------------------------------------------------------------------------


class Config(BaseModel):
    """The validated config file. ``path`` is where it was read from (not a key in it)."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    # [sandbox] first: it decides what [salesforce] needs (the loader tells the checks).
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    salesforce: SalesforceConfig = Field(default_factory=SalesforceConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    streams: tuple[StreamConfig, ...] = Field((), validate_default=True)

    _path: Path = PrivateAttr()

    @property
    def path(self) -> Path:
        return self._path

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        yield "path", getattr(self, "_path", None)
        yield from super().__repr_args__()

    @model_validator(mode="before")
    @classmethod
    def _absent_sections_are_empty(cls, data: Any) -> Any:
        # So that their rules still apply: a file without [salesforce] still needs client_id.
        if not isinstance(data, dict):
            return data
        return {**{name: {} for name in cls.model_fields if name != "streams"}, **data}

    @field_validator("streams", mode="wrap")
    @classmethod
    def _streams(
        cls, value: object, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> tuple[StreamConfig, ...]:
        if isinstance(value, tuple) and value and all(isinstance(s, StreamConfig) for s in value):
            return value  # built in code
        if value in ((), []):
            raise problem("no_streams", "no streams configured; add at least one [[streams]] table")
        if isinstance(value, dict):
            raise problem(
                "streams_table",
                "must be an array of tables: write [[streams]] (double brackets) above each stream",
            )
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise problem("streams_type", "must be [[streams]] tables, one per stream")

        problems = Problems()
        try:
            streams: tuple[StreamConfig, ...] = handler(value)
        except ValidationError as exc:
            problems.add_all(exc)
        _report_duplicate_names(value, problems)
        problems.raise_if_any()
        dependency_problems(streams, value).raise_if_any()

        database, export = info.data.get("database"), info.data.get("export")
        filled = []
        for raw, stream in zip(value, streams, strict=True):
            update: dict[str, Any] = {}
            if "source_url" not in raw and isinstance(database, DatabaseConfig):
                update["source_url"] = database.url
            if "pause_on_error" not in raw and isinstance(export, ExportConfig):
                update["pause_on_error"] = export.pause_on_error
            filled.append(stream.model_copy(update=update))
        return tuple(filled)

    @model_validator(mode="after")
    def _remember_the_file(self, info: ValidationInfo) -> Self:
        context = context_of(info)
        if context is not None:
            self._path = context.path
        return self


def _report_duplicate_names(streams: list[dict[str, Any]], problems: Problems) -> None:
    first_index: dict[str, int] = {}
    for index, stream in enumerate(streams):
        name = stream.get("name")
        if not isinstance(name, str) or not STREAM_NAME.fullmatch(name):
            continue  # reported by the stream itself
        if name in first_index:
            problems.add(
                problem(
                    "duplicate_stream",
                    f'duplicate stream name; streams[{first_index[name]}] is already "{name}"',
                ),
                index,
                "name",
            )
        first_index.setdefault(name, index)


# The keys of the file, derived from the models -------------------------------------------


def _section_model(annotation: Any) -> type[BaseModel]:
    model = get_args(annotation)[0] if get_origin(annotation) is tuple else annotation
    assert isinstance(model, type) and issubclass(model, BaseModel)
    return model


def _file_keys(model: type[BaseModel]) -> frozenset[str]:
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        if any(isinstance(m, EnvOrFile) for m in field.metadata):
            keys |= {f"{name}_env", f"{name}_file"}
        else:
            keys.add(name)
    return frozenset(keys)


# Each section's model ("streams" is each [[streams]] table), in the order of Config.
SECTIONS: Final[Mapping[str, type[BaseModel]]] = {
    name: _section_model(field.annotation) for name, field in Config.model_fields.items()
}
# The keys of one [streams.lookups] entry.
LOOKUP_KEYS: Final = _file_keys(LookupConfig)
# Every key the file may hold, by section. Anything else is an error: a misspelt key must
# never silently fall back to a default (pause mode off).
CONFIG_KEYS: Final[Mapping[str, frozenset[str]]] = {
    name: _file_keys(model) for name, model in SECTIONS.items()
}
