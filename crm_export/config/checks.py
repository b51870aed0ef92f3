"""The config's domain checks: small validators that the models in ``models.py`` attach to
their fields (names, the read-only query guard, URLs, paths, time zone, cron, API version).

A check raises ``problem(...)`` in the words the user reads; ``problems.py`` puts the key
path in front. Checks never quote a value that may hold a password (database URLs).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import re
import unicodedata
import zoneinfo
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final

from pydantic import AfterValidator, BeforeValidator, PlainValidator, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError, PydanticKnownError

from crm_export.config.wording import kind, show, suggest

if TYPE_CHECKING:
    from pydantic import ValidationInfo
    from sqlalchemy.engine import URL

# sObject Collections upsert by external ID exists from API 46.0 on.
MIN_API_VERSION: Final = 46
DEFAULT_DATABASE_URL: Final = "sqlite:///crm_export.db"


@dataclass(frozen=True)
class LoadContext:
    """What the checks need from the loader; without it (a model built in code) only the
    types and bounds are checked, and nothing is read from files or the environment."""

    path: Path  # the config file: relative paths in it resolve next to it
    environ: Mapping[str, str]  # where *_env secrets are looked up
    secrets: bool  # False: check the secret keys, but neither require nor read the values
    sandbox: bool  # [sandbox] enabled: it brings its own Salesforce credentials

    @property
    def base(self) -> Path:
        return self.path.parent


def context_of(info: ValidationInfo) -> LoadContext | None:
    return info.context if isinstance(info.context, LoadContext) else None


def problem(kind: str, message: str, *, key: str | None = None) -> PydanticCustomError:
    """One problem in the user's words. ``key`` names the file key it is about when that is
    not the field being checked (a secret's ``*_env`` or ``*_file`` key, for one)."""
    return PydanticCustomError(kind, message, {"key": key} if key else None)


class Problems:
    """Several problems from one check, raised together so that each is reported at its
    own key (pydantic nests the locations under the field being validated)."""

    def __init__(self) -> None:
        self.errors: list[InitErrorDetails] = []

    def add(self, error: PydanticCustomError, *loc: str | int) -> None:
        self.errors.append(InitErrorDetails(type=error, loc=loc, input=None))

    def add_all(self, exc: ValidationError, *under: str | int) -> None:
        """Keep pydantic's own entries, with their types and inputs, beside ours (their
        locations put ``under`` the given keys)."""
        for e in exc.errors(include_url=False):
            error = PydanticCustomError(e["type"], e["msg"], e.get("ctx"))
            loc = (*under, *e["loc"])
            self.errors.append(InitErrorDetails(type=error, loc=loc, input=e["input"]))

    def raise_if_any(self) -> None:
        if self.errors:
            raise ValidationError.from_exception_data("config", self.errors)


# Text ---------------------------------------------------------------------------------------


def _not_blank(value: str) -> str:
    if not value.strip():
        raise problem("blank", "must not be empty")
    return value


NonBlank = Annotated[str, AfterValidator(_not_blank)]

_CHARACTER_NAMES: Final = {" ": "a space", "\t": "a tab", "\n": "a newline", "\r": "a return"}


def _no_invisible_characters(url: str, *, inner_spaces: bool = False) -> None:
    """Refuse whitespace and control characters, naming the first without quoting the URL.

    A trailing space or newline passes for a URL everywhere but fails at the first request
    (requests raises InvalidURL), long after the config was read.
    """
    for i, c in enumerate(url):
        if c == " " and inner_spaces and 0 < i < len(url) - 1:
            continue
        if c.isspace() or unicodedata.category(c).startswith("C"):
            what = _CHARACTER_NAMES.get(c, f"character U+{ord(c):04X}")
            at = "the end" if i == len(url) - 1 else "the start" if i == 0 else f"position {i + 1}"
            raise problem(
                "url_whitespace",
                f"must not contain whitespace or control characters: {what} at {at}",
            )


# Names --------------------------------------------------------------------------------------

_SQL_NAME: Final = r"[A-Za-z_][A-Za-z0-9_$]*"
SQL_IDENTIFIER: Final = re.compile(_SQL_NAME)
_SQL_TABLE: Final = re.compile(rf"{_SQL_NAME}(?:\.{_SQL_NAME})?")
_SF_NAME: Final = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
STREAM_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _unsafe_hint(value: str) -> str:
    if any(c in value for c in "'\";`") or any(c.isspace() for c in value):
        return " (quotes, semicolons and spaces are not allowed in names)"
    return ""


def _stream_name(value: str) -> str:
    if not STREAM_NAME.fullmatch(value):
        raise problem(
            "stream_name",
            f"must be letters, digits, '_', '-' or '.', starting with a letter or digit, "
            f"got {show(value)}; it names the stream in logs, the CLI and the state database",
        )
    return value


def column_problem(value: str) -> PydanticCustomError | None:
    if SQL_IDENTIFIER.fullmatch(value):
        return None
    return problem(
        "column_name",
        f"must be a plain column name (letters, digits, _ or $, not starting with a digit), "
        f"got {show(value)}{_unsafe_hint(value)}; to read a column whose name needs quotes, "
        "select it under an alias in query",
    )


def _column(value: str) -> str:
    if error := column_problem(value):
        raise error
    return value


def _sf_name(value: str) -> str:
    if not _SF_NAME.fullmatch(value):
        raise problem(
            "salesforce_name",
            "must be a Salesforce API name (letters, digits and _, starting with a letter), "
            f"got {show(value)}",
        )
    return value


def _external_id(value: str) -> str:
    if value.lower() == "id":
        raise problem(
            "external_id_is_id",
            "must be an external ID field, not Id: upsert matches records on an external ID "
            "field such as External_Id__c",
        )
    return value


def _table(value: str) -> str:
    if not _SQL_TABLE.fullmatch(value):
        raise problem(
            "table_name",
            f"must be a plain table name or schema.table (letters, digits, _ or $), "
            f"got {show(value)}{_unsafe_hint(value)}; for anything else use query",
        )
    return value


StreamName = Annotated[NonBlank, AfterValidator(_stream_name)]
ColumnName = Annotated[NonBlank, AfterValidator(_column)]
SalesforceName = Annotated[NonBlank, AfterValidator(_sf_name)]
ExternalIdField = Annotated[SalesforceName, AfterValidator(_external_id)]
TableName = Annotated[NonBlank, AfterValidator(_table)]


def field_mapping(
    raw: object, external_id: str | None, stream_keys: Collection[str]
) -> tuple[tuple[str, str], ...]:
    """``[streams.fields]`` as (Salesforce field, source column) pairs in file order.

    ``raw`` is the empty tuple when the table is absent. Each mapping gets at most one
    problem, at its own key.
    """
    if isinstance(raw, tuple) and raw:  # built in code, already pairs
        return raw
    if raw == ():
        raise problem(
            "fields_missing",
            "missing: add a [streams.fields] table mapping Salesforce fields to source "
            'columns, e.g. LastName = "last_name"',
        )
    if not isinstance(raw, dict):
        raise problem(
            "fields_type", f'must be a table of SalesforceField = "column", got {kind(raw)}'
        )
    if not raw:
        raise problem(
            "fields_empty", "is empty: map at least one Salesforce field to a source column"
        )

    problems = Problems()
    mapping: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for sf_field, column in raw.items():
        error = _mapping_problem(sf_field, column, seen, external_id, stream_keys)
        if error is not None:
            problems.add(error, sf_field)
        else:
            mapping.append((sf_field, column))
    problems.raise_if_any()
    return tuple(mapping)


def _mapping_problem(
    sf_field: str,
    column: object,
    seen: dict[str, str],
    external_id: str | None,
    stream_keys: Collection[str],
) -> PydanticCustomError | None:
    if not isinstance(column, str):
        hint = ""
        if sf_field in stream_keys:
            # TOML puts every key after [streams.fields] into that table.
            hint = (
                f"; if {sf_field} is the stream setting, move it above [streams.fields]: "
                "every key after that header belongs to fields"
            )
        return problem("column_type", f"must be a source column name in quotes{hint}")
    if not _SF_NAME.fullmatch(sf_field):
        return problem(
            "field_name",
            "is not a Salesforce field API name (letters, digits and _, starting with a letter)",
        )
    folded = sf_field.lower()  # Salesforce API names ignore case
    if folded in seen:
        return problem("field_twice", f"maps the same Salesforce field as fields.{seen[folded]}")
    seen[folded] = sf_field
    if external_id is not None and folded == external_id.lower():
        return problem(
            "field_is_external_id",
            "is the external_id_field; crm-export fills it from key, so remove it here",
        )
    if folded == "id":
        return problem(
            "field_is_id", "Id is assigned by Salesforce and cannot be written by an upsert"
        )
    return column_problem(column)


# The read-only query guard ------------------------------------------------------------------

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


def _read_only_query(sql: str) -> str:
    """Check that ``sql`` is one read-only SELECT; return it without the trailing ``;``.

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
                raise problem("query", "has a /* comment that is never closed")
            i = close + 2
            continue
        if c.isspace():
            i += 1
            continue
        if statement_end is not None:
            raise problem("query", "must be a single SELECT statement (found SQL after ';')")
        if c in "'\"":
            close = i + 1
            while True:
                close = sql.find(c, close)
                if close == -1:
                    raise problem("query", f"has an unterminated {c} quote")
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
        match = SQL_IDENTIFIER.match(sql, i)
        if match:
            words.append(match.group().lower())
            i = end = match.end()
            continue
        i += 1
        end = i
    if not words or words[0] not in ("select", "with"):
        raise problem("query", "must be a SELECT statement (starting with SELECT or WITH)")
    writing = sorted(_WRITING_WORDS.intersection(words))
    if writing:
        raise problem("query", f"must only read rows; found {writing[0].upper()}")
    return sql[:end]


ReadOnlyQuery = Annotated[NonBlank, AfterValidator(_read_only_query)]


# URLs ---------------------------------------------------------------------------------------


def _https_url(raw: str) -> str:
    from urllib.parse import urlsplit

    _no_invisible_characters(raw)
    try:
        parts = urlsplit(raw)
        _ = parts.port  # raises ValueError on a bad port
    except ValueError:
        raise problem("url", "is not a valid URL") from None
    # The checks below never quote the URL: it might carry a user:password@.
    if parts.username or parts.password:
        raise problem("url", "must not contain credentials (user:password@); use the secret keys")
    if parts.scheme == "http":
        raise problem(
            "url",
            "must use https://, not http://: Salesforce serves its API only over HTTPS "
            "(for a local sandbox org, trust its CA with ca_bundle)",
        )
    if parts.scheme != "https" or not parts.hostname:
        raise problem("url", "must be an https:// URL such as https://acme.my.salesforce.com")
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise problem(
            "url",
            "must be the site's address only, without a path such as /services/...: "
            "crm-export adds the paths",
        )
    return raw.rstrip("/")


HttpsUrl = Annotated[NonBlank, AfterValidator(_https_url)]


def split_listen(value: str) -> tuple[str, int]:
    """``host:port`` (an IPv6 host in brackets) as (host without brackets, port)."""
    host, _, port = value.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


_HOST_NAME: Final = re.compile(
    r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*"
)


def _listen_address(raw: str) -> str:
    import ipaddress

    example = 'such as "127.0.0.1:9464", "0.0.0.0:9464" or "[::1]:9464"'
    host, colon, port = raw.rpartition(":")
    if not colon or not host or not port:
        raise problem("listen", f"must be a host and a port, {example}")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise problem("listen", f"port {port!r} is not a port number (0 to 65535)")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise problem("listen", f"{host} is not an IPv6 address") from None
    elif ":" in host:
        raise problem("listen", f"an IPv6 address goes in brackets, {example}")
    elif not _HOST_NAME.fullmatch(host):
        raise problem("listen", f"{host!r} is neither an IP address nor a host name, {example}")
    return raw


# host:port for a server of ours to listen on; port 0 takes any free port.
ListenAddress = Annotated[NonBlank, AfterValidator(_listen_address)]


class MayHoldPassword:
    """Marks a field whose value may carry a password: reprs show it redacted."""


def _database_url(raw: str, info: ValidationInfo) -> str:
    """Validate a SQLAlchemy URL; make a relative SQLite path absolute next to the config.

    Problems never quote the URL, which may hold a database password.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    # A space inside a SQLite path is part of a file name (SQLAlchemy 2.0 does not decode %20
    # there, so it cannot be written otherwise); anywhere else it is a mistake.
    _no_invisible_characters(raw, inner_spaces=raw.startswith("sqlite"))
    example = "e.g. sqlite:///crm_export.db or postgresql+psycopg://user@host/dbname"
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):
        raise problem("database_url", f"is not a database URL; {example}") from None
    backend = url.get_backend_name()
    if backend == "postgres":
        raise problem(
            "database_url", "write postgresql:// (or postgresql+psycopg://), not postgres://"
        )
    if backend not in ("sqlite", "postgresql"):
        raise problem(
            "database_url",
            f"unsupported database {backend!r}: crm-export supports SQLite and PostgreSQL",
        )
    try:
        driver = url.get_driver_name()  # the dialect's default when none is written
    except Exception:  # an unknown driver plugin: reported just below
        driver = url.drivername
    if backend == "sqlite" and driver == "pysqlite":
        context = context_of(info)
        return raw if context is None else _absolute_sqlite_url(url, raw, context.base)
    if backend == "postgresql" and driver == "psycopg":
        if not _psycopg_installed():
            # Else the first connection raises ModuleNotFoundError, as a traceback.
            raise problem(
                "postgres_driver_missing",
                "PostgreSQL needs the psycopg driver, which is not installed: "
                "pip install 'crm-export[postgres]'",
            )
        return raw
    scheme = "sqlite:///" if backend == "sqlite" else "postgresql+psycopg://"
    raise problem("database_driver", f"unsupported driver {driver!r}: write {scheme}...")


def _psycopg_installed() -> bool:
    try:
        return importlib.util.find_spec("psycopg") is not None
    except (ImportError, ValueError):  # an import hook refused it, or a broken install
        return False


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


DatabaseUrl = Annotated[NonBlank, AfterValidator(_database_url), MayHoldPassword()]


# Paths and files ----------------------------------------------------------------------------


def _path_next_to_config(value: Any, info: ValidationInfo) -> Path:
    if isinstance(value, Path):  # built in code
        return value
    if not isinstance(value, str):
        raise PydanticKnownError("string_type")
    path = Path(os.path.expanduser(_not_blank(value)))
    context = context_of(info)
    return path if context is None else context.base / path


def _ca_bundle(path: Path) -> Path:
    if path.is_dir():
        return path  # requests also accepts an OpenSSL hashed certificate directory
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise problem("ca_bundle", f"file {path} does not exist") from None
    except OSError as exc:
        raise problem("ca_bundle", f"cannot read {path}: {exc.strerror}") from None
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise problem(
            "ca_bundle", f"file {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        )
    return path


ConfigPath = Annotated[Path, PlainValidator(_path_next_to_config)]
CaBundle = Annotated[ConfigPath, AfterValidator(_ca_bundle)]


# Salesforce API version ---------------------------------------------------------------------

_API_VERSION: Final = re.compile(r"(\d{2,3})\.(\d)")


def _quoted_version(value: object) -> object:
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise problem("api_version", 'must be a string in quotes, such as "64.0"')
    return value


def _api_version(text: str) -> str:
    match = _API_VERSION.fullmatch(text.removeprefix("v"))
    if match is None:
        raise problem("api_version", f'must look like "64.0", got {show(text)}')
    if text.startswith("v"):
        raise problem("api_version", f'write it without the leading v: "{text[1:]}"')
    if int(match.group(1)) < MIN_API_VERSION:
        raise problem(
            "api_version",
            f"must be {MIN_API_VERSION}.0 or later (the first with sObject Collections upsert), "
            f"got {text}",
        )
    return text


ApiVersion = Annotated[NonBlank, BeforeValidator(_quoted_version), AfterValidator(_api_version)]


# Time ---------------------------------------------------------------------------------------


def zone_of(name: str) -> dt.tzinfo:
    if name == "UTC":
        return dt.UTC  # as APScheduler does, so UTC works without the system's tz data
    return zoneinfo.ZoneInfo(name)


def _time_zone(name: str) -> str:
    try:
        zone_of(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        known = zoneinfo.available_timezones()
        # No zones at all means the system lacks tz data (slim container images), not a typo.
        hint = suggest(name, known) if known else "; no tz data found: install tzdata"
        raise problem(
            "time_zone",
            f'{show(name)} is not an IANA time zone such as "Europe/Paris" or "UTC"{hint}',
        ) from None
    return name


TimeZone = Annotated[NonBlank, AfterValidator(_time_zone)]


def check_cron(expr: str, zone: dt.tzinfo) -> None:
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(expr, timezone=zone)
    except (ValueError, TypeError) as exc:
        raise problem("cron", f"invalid cron expression {show(expr)}: {exc}") from None
    day_of_week = expr.split()[4]
    if any(c.isdigit() for c in day_of_week):
        # APScheduler 3 counts weekdays from 0 = Monday, crontab from 0 = Sunday: a number
        # would silently run on another day than the one the user read in crontab docs.
        raise problem(
            "cron_weekday",
            f"write the day of the week as names (mon-fri, sun), not numbers, got "
            f"{show(day_of_week)}: the scheduler counts 0 as Monday, crontab as Sunday",
        )
