"""store.urls: how a database URL is shown in messages, logs and lock descriptions."""

from __future__ import annotations

import pytest

from crm_export.store.urls import is_memory_sqlite, is_sqlite, redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+psycopg://u:hunter2@h/db", "postgresql+psycopg://u:***@h/db"),
        (
            "postgresql+psycopg://u@h/db?password=hunter2",
            "postgresql+psycopg://u@h/db?password=***",
        ),
        (
            "postgresql+psycopg://u:hunter2@h:5433/db?sslmode=require&sslpassword=hunter2",
            "postgresql+psycopg://u:***@h:5433/db?sslmode=require&sslpassword=***",
        ),
        (
            "mysql+pymysql://u@h/db?PASSWD=hunter2&charset=utf8",
            "mysql+pymysql://u@h/db?PASSWD=***&charset=utf8",
        ),
        ("postgresql://u@h/db?password=hunter2&password=again", "postgresql://u@h/db?password=***"),
        ("sqlite:////var/lib/crm-export/state.db", "sqlite:////var/lib/crm-export/state.db"),
    ],
)
def test_redact_url_masks_every_password_and_keeps_the_rest(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_url_masks_the_password_inside_an_odbc_connection_string() -> None:
    url = "mssql+pyodbc:///?odbc_connect=DRIVER%3D%7BODBC%7D%3BUID%3Du%3BPWD%3Dhunter2%3B"
    shown = redact_url(url)
    assert "hunter2" not in shown
    assert "UID%3Du" in shown and "PWD%3D***" in shown


@pytest.mark.parametrize("url", ["not a url", "postgresql://u:hunter2@h:port/db"])
def test_an_unparseable_url_is_not_echoed(url: str) -> None:
    assert redact_url(url) == "<unparseable database URL>"


def test_what_counts_as_sqlite_and_as_in_memory() -> None:
    assert is_sqlite("sqlite:///state.db") and is_sqlite("sqlite://")
    assert not is_sqlite("postgresql+psycopg://u@h/db")
    for memory in ("sqlite://", "sqlite:///:memory:", "sqlite:///file:x?mode=memory&uri=true"):
        assert is_memory_sqlite(memory), memory
    assert not is_memory_sqlite("sqlite:///state.db")
    assert not is_memory_sqlite("postgresql+psycopg://u@h/db")
