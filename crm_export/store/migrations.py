"""The state database's schema, driven through Alembic from code (there is no alembic.ini).

``crm-export db upgrade|downgrade|current`` call these; ``--sql`` prints ``offline_sql`` for a
DBA to review and run. The daemon calls ``ensure_schema`` at start: the embedded default (a
SQLite file that does not exist yet) migrates itself; any other database must be upgraded by a
person, so that a new version never changes a production schema behind their back.

Every run checks the schema, so that check is one query on the version table against
``HEAD``, and Alembic (about 50 ms of imports: Mako, its script directory) is imported only
to migrate, or to explain a database that is not at ``HEAD``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url

import crm_export.migrations as _migrations_package
from crm_export.errors import SchemaOutdatedError
from crm_export.store.engines import (
    begin_write,
    create_state_engine,
    is_transient,
    state_database_errors,
)
from crm_export.store.locks import lock_for_migration
from crm_export.store.schema import VERSION_TABLE
from crm_export.store.urls import is_memory_sqlite, is_sqlite, redact_url

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

__all__ = [
    "HEAD",
    "MIGRATIONS_DIR",
    "check_schema",
    "current",
    "downgrade",
    "ensure_schema",
    "head",
    "offline_sql",
    "upgrade",
    "upgrade_engine",
]

# The repository's top-level migrations/, which the wheel carries as crm_export.migrations
# (a symlink in the checkout): found through the import system, so both layouts work.
MIGRATIONS_DIR = Path(_migrations_package.__file__ or "").resolve().parent

# The newest revision in migrations/versions, which store/schema.py describes: what the
# one-query check compares with. tests/test_migrations.py fails when it is not Alembic's head,
# so a new migration can not be forgotten here.
HEAD = "0004"


def _config(
    url: str, *, connection: Connection | None = None, buffer: io.StringIO | None = None
) -> Config:
    from alembic.config import Config

    cfg = Config(output_buffer=buffer) if buffer is not None else Config()
    # ConfigParser interpolates "%": escape it (a path, never the URL: see attributes below).
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    # The URL travels in attributes, not in the ini options: a password may hold "%".
    cfg.attributes["url"] = url
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _script() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config("sqlite://"))


def head() -> str:
    """The revision this crm-export needs."""
    revision = _script().get_current_head()
    assert revision is not None, "migrations/versions is empty"
    return revision


def upgrade_engine(engine: Engine, url: str, revision: str = "head") -> None:
    """Upgrade through an existing engine (one transaction; SQLite: BEGIN IMMEDIATE)."""
    from alembic import command

    with state_database_errors(url), begin_write(engine) as conn:
        lock_for_migration(conn)
        command.upgrade(_config(url, connection=conn), revision)


def upgrade(url: str, revision: str = "head") -> None:
    """Apply the migrations up to ``revision``, atomically: all of them or none."""
    engine = create_state_engine(url)
    try:
        upgrade_engine(engine, url, revision)
    finally:
        engine.dispose()


def downgrade(url: str, revision: str) -> None:
    """Revert the migrations down to ``revision`` (``base``: drop every crm-export table)."""
    from alembic import command

    engine = create_state_engine(url)
    try:
        with state_database_errors(url), begin_write(engine) as conn:
            lock_for_migration(conn)
            command.downgrade(_config(url, connection=conn), revision)
    finally:
        engine.dispose()


def offline_sql(url: str, revision: str = "head", *, downgrade: bool = False) -> str:
    """The SQL an upgrade (or downgrade) would run, for a DBA; the database is not touched.

    Offline SQL can not look at the database, so it starts from ``base`` for an upgrade and
    from this version's head for a downgrade, unless ``revision`` is a ``from:to`` range.
    """
    from alembic import command

    buffer = io.StringIO()
    cfg = _config(url, buffer=buffer)
    if downgrade:
        command.downgrade(cfg, revision if ":" in revision else f"{head()}:{revision}", sql=True)
    else:
        command.upgrade(cfg, revision, sql=True)
    return buffer.getvalue()


def _sqlite_file_missing(url: str) -> bool:
    if not is_sqlite(url) or is_memory_sqlite(url):
        return False
    database = make_url(url).database or ""
    if database.startswith("file:"):  # a URI filename (?uri=true): let SQLite resolve it
        return False
    return not Path(database).exists()


def current(url: str) -> str | None:
    """The state database's revision; None for an empty database (or a missing SQLite file,
    which is not created by asking)."""
    from alembic.runtime.migration import MigrationContext

    if _sqlite_file_missing(url):
        return None
    engine = create_state_engine(url)
    try:
        with state_database_errors(url), engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            return context.get_current_revision()
    finally:
        engine.dispose()


def _at_head(url: str, engine: Engine | None) -> bool:
    """Whether the state database records exactly ``HEAD``, from one query on the version
    table. False for anything else (no such table, another revision, a missing SQLite file),
    which Alembic then explains; an unreachable database raises ``TransientError``."""
    if _sqlite_file_missing(url):
        return False
    own = engine is None
    engine = create_state_engine(url) if engine is None else engine
    version = sa.table(VERSION_TABLE, sa.column("version_num", sa.String()))
    try:
        with state_database_errors(url):
            try:
                with engine.connect() as conn:
                    found = list(conn.execute(sa.select(version.c.version_num)).scalars())
            except sa.exc.SQLAlchemyError as exc:
                if is_transient(exc):
                    raise
                return False
    finally:
        if own:
            engine.dispose()
    return found == [HEAD]


def check_schema(url: str, engine: Engine | None = None) -> None:
    """Raise ``SchemaOutdatedError`` unless the state database is at this version's head
    (through ``engine`` when given, the store's: no second engine for one query)."""
    if _at_head(url, engine):
        return
    from alembic.util.exc import CommandError

    found, needed = current(url), head()
    if found == needed:
        return
    where = f"the state database at {redact_url(url)}"
    if found is None:
        raise SchemaOutdatedError(
            f"{where} is at revision none (empty), this crm-export needs {needed}:"
            " run `crm-export db upgrade`"
        )
    try:
        _script().get_revision(found)
    except CommandError:
        # Known to a newer crm-export only: upgrading this one can not help.
        raise SchemaOutdatedError(
            f"{where} is at revision {found}, which this crm-export does not know (it needs"
            f" {needed}): a newer crm-export migrated it; run that version, or downgrade the"
            f" database to {needed} with it"
        ) from None
    raise SchemaOutdatedError(
        f"{where} is at revision {found}, this crm-export needs {needed}:"
        " run `crm-export db upgrade`"
    )


def _is_fresh_sqlite(url: str) -> bool:
    if not is_sqlite(url):
        return False
    if _sqlite_file_missing(url):
        return True
    engine = create_state_engine(url)
    try:
        with state_database_errors(url), engine.connect() as conn:
            return not sa.inspect(conn).get_table_names()
    finally:
        engine.dispose()


def ensure_schema(url: str, engine: Engine | None = None) -> None:
    """Make sure the state database is usable by this version.

    A fresh SQLite database (no file, or no tables at all) is upgraded: that is the embedded
    default setting itself up on first use. Anything else is only checked, because a SQLite
    file with tables may be someone's data, and PostgreSQL schema changes belong to a person
    (``crm-export db upgrade``, or ``--sql`` for their DBA).

    An in-memory SQLite database lives and dies with one engine, so only that engine can set
    it up: pass the store's (``SqlStore.engine``). Without it there is nothing to check.
    """
    if is_memory_sqlite(url):
        if engine is not None:
            upgrade_engine(engine, url)
        return
    if _at_head(url, engine):
        return
    if _is_fresh_sqlite(url):
        upgrade(url)
        return
    check_schema(url)
