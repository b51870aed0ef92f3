"""Shared database fixtures: every state-database test runs on SQLite and on PostgreSQL.

PostgreSQL comes from ``CRM_EXPORT_TEST_POSTGRES_URL`` (e.g.
``postgresql+psycopg://postgres@127.0.0.1:5432/test``). Without it the PostgreSQL half is
skipped, except under ``CI=true`` where it fails: CI must never go green by skipping.

Isolation is cheap: one template database is migrated once per session, and each test gets
``CREATE DATABASE ... TEMPLATE`` of it (a file copy on the server), dropped afterwards.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from crm_export.store import SqlStore, migrations

POSTGRES_ENV = "CRM_EXPORT_TEST_POSTGRES_URL"
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]

# Per-session names, so that two test sessions sharing one server never collide.
_SESSION = f"{os.getpid()}"
_TEMPLATE = f"crm_export_tpl_{_SESSION}"
_counter = itertools.count(1)


class PostgresServer:
    """The test server: creates and drops databases through the maintenance database."""

    def __init__(self, url: str) -> None:
        self.url = make_url(url)
        # CREATE/DROP DATABASE can not run in a transaction: AUTOCOMMIT.
        self._admin = sa.create_engine(
            self.url.set(database="postgres"), isolation_level="AUTOCOMMIT"
        )

    def url_of(self, database: str) -> str:
        return self.url.set(database=database).render_as_string(hide_password=False)

    def create(self, name: str, template: str = "template0") -> str:
        preparer = self._admin.dialect.identifier_preparer
        with self._admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {preparer.quote(name)} WITH (FORCE)")
            conn.exec_driver_sql(
                f"CREATE DATABASE {preparer.quote(name)} TEMPLATE {preparer.quote(template)}"
            )
        return self.url_of(name)

    def drop(self, name: str) -> None:
        preparer = self._admin.dialect.identifier_preparer
        with self._admin.connect() as conn:
            # FORCE: a test that leaked a connection must not leak its database too.
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {preparer.quote(name)} WITH (FORCE)")

    def close(self) -> None:
        self._admin.dispose()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The PostgreSQL server named by CRM_EXPORT_TEST_POSTGRES_URL (skip, or fail in CI)."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        reason = f"{POSTGRES_ENV} is not set (e.g. postgresql+psycopg://postgres@127.0.0.1/test)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {reason}: the PostgreSQL tests must run in CI")
        pytest.skip(reason)
    server = PostgresServer(url)
    yield server
    server.close()


@pytest.fixture(scope="session")
def postgres_template(postgres_server: PostgresServer) -> Iterator[str]:
    """Name of a database migrated to head, the template of every migrated test database."""
    url = postgres_server.create(_TEMPLATE)
    migrations.upgrade(url)  # disposes its engine: a template must have no open connections
    yield _TEMPLATE
    postgres_server.drop(_TEMPLATE)


def _postgres_database(
    request: pytest.FixtureRequest, server: PostgresServer, template: str
) -> str:
    name = f"crm_export_t_{_SESSION}_{next(_counter)}"
    url = server.create(name, template)
    request.addfinalizer(lambda: server.drop(name))
    return url


@pytest.fixture(params=BACKENDS)
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of a state database migrated to head, fresh for the test: a SQLite file in
    tmp_path, or a PostgreSQL database copied from the session's template."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.db'}"
        migrations.upgrade(url)
        return url
    template: str = request.getfixturevalue("postgres_template")
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return _postgres_database(request, server, template)


@pytest.fixture
def postgres_state_url(
    request: pytest.FixtureRequest, postgres_server: PostgresServer, postgres_template: str
) -> str:
    """A migrated PostgreSQL state database only, for PostgreSQL-specific behaviour."""
    return _postgres_database(request, postgres_server, postgres_template)


@pytest.fixture(params=BACKENDS)
def empty_state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of an empty, unmigrated database: a SQLite path that does not exist yet, or an
    empty PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return _postgres_database(request, server, "template0")


@pytest.fixture
def store(state_url: str) -> Iterator[SqlStore]:
    """A SqlStore on ``state_url``, closed (engines disposed) after the test."""
    with SqlStore(state_url) as s:
        yield s


@pytest.fixture
def source_url(state_url: str, tmp_path: Path) -> str:
    """A source database of the same kind as ``state_url``: a separate SQLite file, or for
    PostgreSQL the state database itself (a source may share the state database)."""
    if state_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'source.db'}"
    return state_url


CreateSourceTable = Callable[..., None]


def _create_source_table(
    url: str,
    name: str,
    columns: Mapping[str, sa.types.TypeEngine[Any] | type[sa.types.TypeEngine[Any]]],
    rows: Sequence[Mapping[str, Any]] = (),
    *,
    primary_key: str | None = None,
    schema: str | None = None,
) -> None:
    engine = sa.create_engine(url)
    try:
        metadata = sa.MetaData()
        table = sa.Table(
            name,
            metadata,
            *(
                sa.Column(col, typ, primary_key=col == primary_key, autoincrement=False)
                for col, typ in columns.items()
            ),
            schema=schema,
        )
        with engine.begin() as conn:
            metadata.create_all(conn)
            if rows:
                conn.execute(table.insert(), [dict(r) for r in rows])
    finally:
        engine.dispose()


@pytest.fixture
def create_source_table() -> CreateSourceTable:
    """``create_source_table(url, name, {column: type}, rows, primary_key=None, schema=None)``
    creates a table in the database at ``url`` and inserts ``rows`` (dicts)."""
    return _create_source_table
