"""The Alembic migrations, driven through crm_export.store.migrations, on SQLite and
PostgreSQL."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import make_url

from crm_export.errors import SchemaOutdatedError
from crm_export.ports import BatchAck, RecordError, RecordFailure
from crm_export.store import SqlStore, migrations
from crm_export.store.schema import VERSION_TABLE, metadata
from crm_export.wiring import open_store

CRM_EXPORT_TABLES = {
    "export_runs",
    "exporterrors",
    "stream_state",
    "operator_actions",
    "record_fingerprints",
    "bulk_jobs",
}
EXPORT_ERRORS_COLUMNS = [
    "id",
    "stream",
    "record_key",
    "sobject",
    "external_id",
    "error_code",
    "error_message",
    "error_fields",
    "payload",
    "attempts",
    "first_failed_at",
    "last_failed_at",
    "resolved_at",
    "status",
    "run_id",
    "closed_by",
    "close_reason",
]


def tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return set(sa.inspect(conn).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_downgrade_and_upgrade_again(empty_state_url: str) -> None:
    assert migrations.current(empty_state_url) is None

    migrations.upgrade(empty_state_url)
    assert migrations.current(empty_state_url) == migrations.head()
    assert tables(empty_state_url) == CRM_EXPORT_TABLES | {VERSION_TABLE}
    migrations.check_schema(empty_state_url)  # does not raise

    migrations.downgrade(empty_state_url, "base")
    assert migrations.current(empty_state_url) is None
    assert tables(empty_state_url) & CRM_EXPORT_TABLES == set()

    migrations.upgrade(empty_state_url)
    assert migrations.current(empty_state_url) == migrations.head()


def test_upgrading_twice_changes_nothing(empty_state_url: str) -> None:
    migrations.upgrade(empty_state_url)
    with SqlStore(empty_state_url) as store:
        store.begin_run("CRMExport", "contacts")
    migrations.upgrade(empty_state_url)
    with SqlStore(empty_state_url) as store:
        assert len(store.list_runs()) == 1


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_open_store_sets_up_an_in_memory_state_database(url: str) -> None:
    # Only the store's own engine can reach the database, so the caller migrates through it.
    with open_store(url) as store:
        assert store.stream_overview() == []
        store.begin_run("CRMExport", "contacts")
        assert [r["stream"] for r in store.list_runs()] == ["contacts"]


def test_the_schema_matches_the_metadata_the_store_uses(state_url: str) -> None:
    # schema.py and 0001_initial.py are written separately: this keeps them in step.
    engine = sa.create_engine(state_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "version_table": VERSION_TABLE}
            )
            assert compare_metadata(context, metadata) == []
    finally:
        engine.dispose()


def test_select_star_from_exporterrors_works_as_users_type_it(state_url: str) -> None:
    with SqlStore(state_url) as store:
        run = store.begin_run("CRMExport", "contacts")
        error = RecordError("INVALID_EMAIL_ADDRESS", "Email: invalid email address", ("Email",))
        store.acknowledge(
            BatchAck(
                "contacts",
                run,
                failures=[RecordFailure("7", "Contact", "Legacy_Id__c", error, {"Email": "x@"})],
            )
        )

    url = make_url(state_url)
    if url.get_backend_name() == "sqlite":
        assert url.database is not None
        conn = sqlite3.connect(url.database)
        try:
            cursor = conn.execute("SELECT * FROM ExportErrors")
            rows = cursor.fetchall()
            names = [d[0] for d in cursor.description]
        finally:
            conn.close()
    else:
        dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(dsn) as pg, pg.cursor() as pg_cursor:
            pg_cursor.execute("SELECT * FROM ExportErrors")
            rows = pg_cursor.fetchall()
            names = [d.name for d in pg_cursor.description or ()]

    assert names == EXPORT_ERRORS_COLUMNS
    [row] = rows
    values = dict(zip(names, row, strict=True))
    assert values["error_code"] == "INVALID_EMAIL_ADDRESS"
    assert values["error_fields"] == "Email"
    assert values["payload"] == '{"Email": "x@"}'
    assert values["status"] == "open"


def test_offline_sql_for_a_dba(empty_state_url: str) -> None:
    sql = migrations.offline_sql(empty_state_url)
    assert "CREATE TABLE exporterrors" in sql
    assert "CREATE UNIQUE INDEX uq_exporterrors_open_record" in sql
    assert "WHERE resolved_at IS NULL" in sql
    assert sql.lstrip().startswith("BEGIN")  # all or nothing when the DBA runs it
    assert f"INSERT INTO {VERSION_TABLE}" in sql

    down = migrations.offline_sql(empty_state_url, "base", downgrade=True)
    assert "DROP TABLE exporterrors" in down
    # Printing SQL touches nothing.
    assert migrations.current(empty_state_url) is None


def test_offline_sql_runs_as_printed(empty_state_url: str) -> None:
    script = migrations.offline_sql(empty_state_url)
    if empty_state_url.startswith("sqlite"):
        path = make_url(empty_state_url).database
        assert path is not None
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.executescript(script)
        finally:
            conn.close()
    else:
        dsn = make_url(empty_state_url).set(drivername="postgresql")
        with psycopg.connect(dsn.render_as_string(hide_password=False), autocommit=True) as pg:
            pg.execute(script.encode())
    assert migrations.current(empty_state_url) == migrations.head()
    migrations.check_schema(empty_state_url)


def test_check_schema_on_an_empty_database_says_what_to_run(empty_state_url: str) -> None:
    with pytest.raises(SchemaOutdatedError) as info:
        migrations.check_schema(empty_state_url)
    message = str(info.value)
    assert message.startswith("the state database at ")
    assert f"this crm-export needs {migrations.head()}: run `crm-export db upgrade`" in message


def test_check_schema_on_an_unknown_newer_revision(state_url: str) -> None:
    engine = sa.create_engine(state_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = 'ffff9999'"))
    finally:
        engine.dispose()
    with pytest.raises(SchemaOutdatedError, match="is at revision ffff9999, which this"):
        migrations.check_schema(state_url)


def test_the_one_query_check_knows_the_newest_migration() -> None:
    # check_schema compares the version table with HEAD without Alembic: a new migration
    # that is not named there would let a database one revision behind pass the check.
    assert migrations.head() == migrations.HEAD


def test_check_schema_refuses_a_database_one_revision_behind(state_url: str) -> None:
    migrations.downgrade(state_url, "-1")
    behind = migrations.current(state_url)
    assert behind is not None and behind != migrations.HEAD
    with pytest.raises(SchemaOutdatedError) as info:
        migrations.check_schema(state_url)
    assert f"is at revision {behind}, this crm-export needs {migrations.HEAD}" in str(info.value)
    with pytest.raises(SchemaOutdatedError, match="run `crm-export db upgrade`"):
        migrations.ensure_schema(state_url)


def test_check_schema_names_the_database_but_not_its_password(empty_state_url: str) -> None:
    url = make_url(empty_state_url)
    if url.get_backend_name() == "postgresql":
        url = url.set(password="hunter2")  # the test server trusts: any password connects
    with pytest.raises(SchemaOutdatedError) as info:
        migrations.check_schema(url.render_as_string(hide_password=False))
    message = str(info.value)
    assert "hunter2" not in message
    assert str(url.database) in message


def test_ensure_schema_sets_up_a_fresh_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'crm_export.db'}"
    migrations.ensure_schema(url)
    assert migrations.current(url) == migrations.head()
    migrations.ensure_schema(url)  # at head: nothing to do, no error


def test_ensure_schema_leaves_a_sqlite_file_with_tables_alone(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE contacts (id INTEGER)")
    conn.close()
    with pytest.raises(SchemaOutdatedError, match="run `crm-export db upgrade`"):
        migrations.ensure_schema(f"sqlite:///{path}")
    assert tables(f"sqlite:///{path}") == {"contacts"}


def test_ensure_schema_does_not_upgrade_postgresql(empty_state_url: str) -> None:
    if empty_state_url.startswith("sqlite"):
        migrations.ensure_schema(empty_state_url)
        assert migrations.current(empty_state_url) == migrations.head()
        return
    with pytest.raises(SchemaOutdatedError, match="run `crm-export db upgrade`"):
        migrations.ensure_schema(empty_state_url)
    assert tables(empty_state_url) == set()


def test_concurrent_first_starts_on_sqlite_migrate_once(tmp_path: Path) -> None:
    # Several runners (or a runner and `crm-export status`) starting on a new SQLite file.
    url = f"sqlite:///{tmp_path / 'crm_export.db'}"
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        try:
            barrier.wait()
            migrations.ensure_schema(url)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert migrations.current(url) == migrations.head()


def test_asking_for_the_revision_does_not_create_a_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "typo.db"
    assert migrations.current(f"sqlite:///{path}") is None
    with pytest.raises(SchemaOutdatedError):
        migrations.check_schema(f"sqlite:///{path}")
    assert not path.exists()


def test_0003_keeps_every_row_allows_skipped_and_downgrades_it_to_resolved(
    empty_state_url: str,
) -> None:
    migrations.upgrade(empty_state_url, "0001")
    engine = sa.create_engine(empty_state_url)
    insert = sa.text(
        "INSERT INTO exporterrors (stream, record_key, sobject, external_id, error_code, "
        "error_message, attempts, first_failed_at, last_failed_at, status) VALUES "
        "('contacts', :key, 'Contact', :ext, 'X', 'm', 1, '2026-01-01', '2026-01-01', 'open')"
    )
    try:
        with engine.begin() as conn:
            conn.execute(insert, {"key": "7", "ext": "7"})
        migrations.upgrade(empty_state_url)
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE exporterrors SET status = 'skipped', resolved_at = '2026-01-02', "
                    "closed_by = 'ops', close_reason = 'bad data' WHERE record_key = '7'"
                )
            )
            # Still one open row per record: the partial unique index survived the rebuild.
            conn.execute(insert, {"key": "7", "ext": "7"})
            with pytest.raises(sa.exc.IntegrityError), conn.begin_nested():
                conn.execute(insert, {"key": "7", "ext": "7"})
            with pytest.raises(sa.exc.IntegrityError), conn.begin_nested():
                conn.execute(sa.text("UPDATE exporterrors SET status = 'gone'"))
            conn.execute(sa.text("UPDATE stream_state SET revision = revision + 1"))
        migrations.downgrade(empty_state_url, "0001")
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT record_key, status FROM exporterrors ORDER BY id")
            ).all()
        assert [tuple(r) for r in rows] == [("7", "resolved"), ("7", "open")]
        assert "operator_actions" not in tables(empty_state_url)
    finally:
        engine.dispose()


def test_0002_counts_old_runs_once_and_keeps_every_error_s_run(empty_state_url: str) -> None:
    """Upgrading a 0001 database with history: the halting record of a paused run moves to
    records_paused, records_skipped's surplus over the failures becomes records_superseded,
    and (SQLite rebuilds export_runs) ExportErrors keep their run_id; the downgrade puts the
    old counters back."""
    migrations.upgrade(empty_state_url, "0001")
    engine = sa.create_engine(empty_state_url)
    runs = (
        # id, job, outcome, read, exported, failed, skipped
        (1, "CRMExport", "paused", 8, 7, 1, 0),
        (2, "CRMExport", "completed", 10, 6, 2, 4),
        (3, "CRMExport_ExportError", "completed", 3, 1, 2, 0),
    )
    try:
        with engine.begin() as conn:
            for run in runs:
                conn.execute(
                    sa.text(
                        "INSERT INTO export_runs (id, job_id, stream, started_at, outcome, "
                        "records_read, records_exported, records_failed, records_skipped, "
                        "api_calls, runner) VALUES (:id, :job, 's', :at, :outcome, :read, "
                        ":exported, :failed, :skipped, 3, 'r')"
                    ),
                    dict(
                        zip(
                            ("id", "job", "outcome", "read", "exported", "failed", "skipped"),
                            run,
                            strict=True,
                        ),
                        at=datetime(2026, 1, 1, tzinfo=UTC),
                    ),
                )
            for error_id, run_id in ((1, 1), (2, 2)):
                conn.execute(
                    sa.text(
                        "INSERT INTO exporterrors (id, stream, record_key, sobject, external_id, "
                        "error_code, error_message, attempts, first_failed_at, last_failed_at, "
                        "status, run_id) VALUES (:id, 's', :id, 'Contact', :id, 'X', 'm', 1, "
                        ":at, :at, 'open', :run)"
                    ),
                    {"id": error_id, "run": run_id, "at": datetime(2026, 1, 1, tzinfo=UTC)},
                )
        migrations.upgrade(empty_state_url)
        columns = "id, records_read, records_exported, records_failed, records_paused, "
        columns += "records_superseded, records_unchanged, logins"
        with engine.connect() as conn:
            got = [tuple(r) for r in conn.execute(sa.text(f"SELECT {columns} FROM export_runs"))]
            errors = [
                tuple(r) for r in conn.execute(sa.text("SELECT id, run_id FROM exporterrors"))
            ]
        assert sorted(got) == [
            (1, 8, 7, 0, 1, 0, 0, 0),
            (2, 10, 6, 2, 0, 2, 0, 0),
            (3, 3, 1, 2, 0, 0, 0, 0),
        ]
        # Each row read counted once.
        assert all(r[1] == r[2] + r[3] + r[4] + r[5] + r[6] for r in got)
        assert sorted(errors) == [(1, 1), (2, 2)]

        migrations.downgrade(empty_state_url, "0001")
        with engine.connect() as conn:
            old = conn.execute(
                sa.text(
                    "SELECT id, records_read, records_exported, records_failed, "
                    "records_skipped FROM export_runs"
                )
            )
            assert sorted(tuple(r) for r in old) == [(r[0], *r[3:]) for r in runs]
            errors = [
                tuple(r) for r in conn.execute(sa.text("SELECT id, run_id FROM exporterrors"))
            ]
        assert sorted(errors) == [(1, 1), (2, 2)]
    finally:
        engine.dispose()
