"""Alembic environment of crm-export's state database.

Driven from ``crm_export.store.migrations`` (there is no alembic.ini): the URL, and for online
runs an open connection inside crm-export's own transaction, arrive in ``config.attributes``.

To write a new migration, hand-write ``versions/NNNN_<what>.py`` from ``script.py.mako``
(self-contained ``op`` calls, explicit constraint names via ``op.f``) and update
``crm_export/store/schema.py`` to match; ``tests/test_migrations.py`` compares the two.
"""

from __future__ import annotations

from alembic import context

from crm_export.store.schema import VERSION_TABLE, metadata

config = context.config


def run_offline() -> None:
    context.configure(
        url=config.attributes["url"],
        target_metadata=metadata,
        literal_binds=True,
        version_table=VERSION_TABLE,
        dialect_opts={"paramstyle": "named"},
        # SQLite's DDL is transactional too: wrap the script in BEGIN/COMMIT there as well,
        # so a DBA's run of it is all or nothing.
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError(
            "run migrations through crm_export.store.migrations (crm-export db upgrade), which"
            " opens the connection with crm-export's SQLite settings and locking"
        )
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        # SQLite can not ALTER most things: future migrations use batch mode there.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    # The caller's transaction is already open (Alembic joins it): all migrations commit or
    # roll back together.
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
