"""Database URLs: how one may be shown, and what kind of database it names.

Only ``make_url`` here, no engine and no driver: the config module imports this to check
and show URLs long before any database is opened.
"""

from __future__ import annotations

import re

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

__all__ = ["is_memory_sqlite", "is_sqlite", "redact_url"]

MASK = "***"
# Query parameters that carry a password to the driver: libpq reads ?password= and
# ?sslpassword= (psycopg passes the query through), MySQL drivers also take ?passwd=.
_SECRET_PARAMETER = re.compile(r"(ssl)?pass(word|wd)|pwd", re.IGNORECASE)
# An ODBC connection string in ?odbc_connect= holds its password as PWD=...; (or {...}).
_ODBC_PASSWORD = re.compile(r"(\b(?:pwd|password)\s*=\s*)(\{[^}]*\}|[^;]*)", re.IGNORECASE)


def redact_url(url: str) -> str:
    """The URL as it may appear in messages and logs: every password in it is masked, the
    userinfo's and any passed as a query parameter (``?password=``)."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return "<unparseable database URL>"
    masked: dict[str, str | list[str]] = {}
    for name, value in parsed.query.items():
        if _SECRET_PARAMETER.fullmatch(name):
            masked[name] = MASK
        elif name.lower() == "odbc_connect":
            values = [value] if isinstance(value, str) else list(value)
            masked[name] = [_ODBC_PASSWORD.sub(rf"\g<1>{MASK}", v) for v in values]
    if masked:
        parsed = parsed.update_query_dict(masked)
    # The URL is rendered with its query percent-encoded; the mask reads better as typed.
    return parsed.render_as_string(hide_password=True).replace("%2A%2A%2A", MASK)


def is_sqlite(url: str) -> bool:
    """A SQLite database, in a file or in memory."""
    return make_url(url).get_backend_name() == "sqlite"


def is_memory_sqlite(url: str) -> bool:
    """``sqlite://``, ``sqlite:///:memory:`` or a URI filename with ``?mode=memory``: a
    database that lives as long as its engine."""
    sa_url = make_url(url)
    database = sa_url.database or ""
    return sa_url.get_backend_name() == "sqlite" and (
        database in ("", ":memory:") or sa_url.query.get("mode") == "memory"
    )
