"""Table metadata of the state database (metadata only: the statements live beside it).

Users read these tables with plain SQL in ``sqlite3`` or ``psql``, so every name is
lower_snake (PostgreSQL folds unquoted names to lower case: ``SELECT * FROM ExportErrors``
finds ``exporterrors`` in both databases). Timestamps are UTC. The hand-written migrations in
``migrations/versions/`` (0001_initial, 0002_api_budget, 0003_operator_actions,
0004_bulk_jobs) create exactly these tables; a test compares the two.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

# Constraint names are spelled out in the migration; the convention documents the pattern.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

# Alembic's bookkeeping table. Not the default "alembic_version": the state database may be an
# application's own database (source_url == state url), with its own Alembic history.
VERSION_TABLE = "crm_export_alembic_version"

# SQLite only auto-assigns ids to a column declared exactly INTEGER PRIMARY KEY (a rowid alias);
# BIGINT there would stay NULL. PostgreSQL gets a 64-bit BIGSERIAL: ExportErrors only grows.
IdType = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class UtcDateTime(sa.TypeDecorator[datetime]):
    """An aware UTC datetime in Python, whatever the database keeps.

    PostgreSQL stores ``timestamptz`` and returns it in the session time zone; SQLite stores
    naive text. Both come back as aware UTC, and a naive datetime is refused on the way in
    because guessing its zone would silently shift timestamps.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: the state database stores UTC only")
        value = value.astimezone(UTC)
        # SQLite's DATETIME text has no offset; storing UTC naive keeps it sortable as text.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        # The impl already parsed SQLite's text; anything else is a driver surprise.
        moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
        if moment.tzinfo is None:
            return moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)


ERROR_STATUSES = ("open", "resolved", "source_deleted", "skipped")
RUN_OUTCOMES = ("running", "completed", "paused", "failed", "interrupted", "deferred")
OPERATOR_ACTIONS = ("errors_skip", "errors_retry", "stream_reset", "stream_resync")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


export_runs = sa.Table(
    "export_runs",
    metadata,
    sa.Column("id", IdType, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(100), nullable=False),
    sa.Column("stream", sa.String(200), nullable=False),
    sa.Column("started_at", UtcDateTime(), nullable=False),
    sa.Column("finished_at", UtcDateTime(), nullable=True),
    sa.Column("outcome", sa.String(20), nullable=False),
    # The counters of ports.RunCounts (README documents each): every row read is counted
    # once, records_read = exported + unchanged + failed + paused + superseded.
    sa.Column("records_read", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("records_exported", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("records_failed", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("api_calls", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Column("runner", sa.String(300), nullable=False),
    sa.Column("records_unchanged", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("records_paused", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("records_superseded", sa.BigInteger(), nullable=False, server_default="0"),
    # Of the rows above, those found behind the position (late commits, lookback) and sent.
    sa.Column("records_late", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("logins", sa.BigInteger(), nullable=False, server_default="0"),
    # The org's api-usage=used/max as last seen during the run (NULL: the run saw none).
    sa.Column("org_api_used", sa.BigInteger(), nullable=True),
    sa.Column("org_api_max", sa.BigInteger(), nullable=True),
    sa.CheckConstraint(_in("outcome", RUN_OUTCOMES), name="outcome"),
    sa.Index("ix_export_runs_stream_started_at", "stream", "started_at"),
)

export_errors = sa.Table(
    "exporterrors",
    metadata,
    sa.Column("id", IdType, primary_key=True, autoincrement=True),
    sa.Column("stream", sa.String(200), nullable=False),
    sa.Column("record_key", sa.Text(), nullable=False),
    sa.Column("sobject", sa.String(200), nullable=False),
    sa.Column("external_id", sa.String(200), nullable=False),
    sa.Column("error_code", sa.String(200), nullable=False),
    sa.Column("error_message", sa.Text(), nullable=False),
    # Comma-separated field names: readable in a terminal, and API names never hold commas.
    sa.Column("error_fields", sa.Text(), nullable=True),
    # JSON text of what was sent (secrets already stripped by the core).
    sa.Column("payload", sa.Text(), nullable=True),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="1"),
    sa.Column("first_failed_at", UtcDateTime(), nullable=False),
    sa.Column("last_failed_at", UtcDateTime(), nullable=False),
    sa.Column("resolved_at", UtcDateTime(), nullable=True),
    sa.Column("status", sa.String(20), nullable=False, server_default="open"),
    sa.Column(
        "run_id",
        IdType,
        sa.ForeignKey("export_runs.id", ondelete="SET NULL"),
        nullable=True,
    ),
    # Who closed the row by hand (the OS user of `crm-export errors skip`), and why.
    sa.Column("closed_by", sa.String(200), nullable=True),
    sa.Column("close_reason", sa.Text(), nullable=True),
    sa.CheckConstraint(_in("status", ERROR_STATUSES), name="status"),
    # status and resolved_at say the same thing twice (status for people, resolved_at for the
    # partial index); the check keeps them from disagreeing.
    sa.CheckConstraint(
        "(status = 'open' AND resolved_at IS NULL)"
        " OR (status <> 'open' AND resolved_at IS NOT NULL)",
        name="open_unresolved",
    ),
    sa.CheckConstraint("attempts >= 1", name="attempts"),
)

# One open row per record: the index both finds a stream's open rows and makes a second
# open episode of the same record impossible, whatever the code above it does.
sa.Index(
    "uq_exporterrors_open_record",
    export_errors.c.stream,
    export_errors.c.record_key,
    unique=True,
    sqlite_where=export_errors.c.resolved_at.is_(None),
    postgresql_where=export_errors.c.resolved_at.is_(None),
)

stream_state = sa.Table(
    "stream_state",
    metadata,
    sa.Column("stream", sa.String(200), primary_key=True),
    # Tagged JSON (see store.encode_value) so str/int/Decimal/datetime... round-trip exactly.
    sa.Column("position_order", sa.Text(), nullable=True),
    sa.Column("position_key", sa.Text(), nullable=True),
    sa.Column("paused_record_key", sa.Text(), nullable=True),
    sa.Column("paused_since", UtcDateTime(), nullable=True),
    sa.Column("paused_error_code", sa.String(200), nullable=True),
    sa.Column("paused_error_message", sa.Text(), nullable=True),
    # PostgreSQL sources: pg_current_snapshot() taken before the last run read anything; rows
    # committed late behind the position are found again from its xmin (see SqlStore).
    sa.Column("source_snapshot", sa.Text(), nullable=True),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    # Bumped by every operator action on the stream (skip, reset): an acknowledgement by a
    # run that read the state before the action is refused instead of overwriting it.
    sa.Column("revision", sa.BigInteger(), nullable=False, server_default="0"),
    # `crm-export stream resync` asked the next CRMExport run to send every row again.
    sa.Column("resync_requested_at", UtcDateTime(), nullable=True),
    sa.CheckConstraint(
        "(position_order IS NULL) = (position_key IS NULL)",
        name="position_complete",
    ),
    sa.CheckConstraint(
        "paused_record_key IS NULL OR (paused_since IS NOT NULL"
        " AND paused_error_code IS NOT NULL AND paused_error_message IS NOT NULL)",
        name="pause_complete",
    ),
)

# The audit trail of what people did through the CLI: append-only.
operator_actions = sa.Table(
    "operator_actions",
    metadata,
    sa.Column("id", IdType, primary_key=True, autoincrement=True),
    sa.Column("at", UtcDateTime(), nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),  # the OS user (getpass.getuser())
    sa.Column("action", sa.String(50), nullable=False),
    sa.Column("stream", sa.String(200), nullable=True),
    # Comma-separated ExportErrors ids the action was about.
    sa.Column("error_ids", sa.Text(), nullable=True),
    sa.Column("reason", sa.Text(), nullable=True),
    # JSON: what the action changed (a released pause, the position before a reset...).
    sa.Column("detail", sa.Text(), nullable=True),
    sa.CheckConstraint(_in("action", OPERATOR_ACTIONS), name="action"),
)

# What Salesforce last accepted for each record, as a 16-byte BLAKE2b of the payload (with the
# sobject and external ID field): a row whose payload hashes the same is not sent again.
# Written only in the transaction that acknowledges the accepting batch, so a fingerprint
# never claims a record Salesforce did not accept. SQLite: WITHOUT ROWID, so the primary key
# is the table and each fingerprint is stored once.
record_fingerprints = sa.Table(
    "record_fingerprints",
    metadata,
    sa.Column("stream", sa.String(200), primary_key=True),
    sa.Column("record_key", sa.Text(), primary_key=True),
    sa.Column("fingerprint", sa.LargeBinary(16), nullable=False),
    sqlite_with_rowid=False,
)

BULK_JOB_STATUSES = ("open", "done", "failed")

# Bulk API 2.0 ingest jobs (issue 11): recorded before their upload, with the source rows
# they cover (after ``after_*`` up to ``last_*``, positions as tagged JSON like stream_state's),
# so that a run that stops while a job is in flight resumes polling it instead of sending its
# rows again. ``done`` once its outcome is acknowledged (in that transaction); ``failed`` when
# Salesforce never finished it (its rows go again, in a new job).
bulk_jobs = sa.Table(
    "bulk_jobs",
    metadata,
    sa.Column("job_id", sa.String(18), primary_key=True),
    sa.Column("stream", sa.String(200), nullable=False),
    sa.Column("after_order", sa.Text(), nullable=True),
    sa.Column("after_key", sa.Text(), nullable=True),
    sa.Column("first_order", sa.Text(), nullable=False),
    sa.Column("first_key", sa.Text(), nullable=False),
    sa.Column("last_order", sa.Text(), nullable=False),
    sa.Column("last_key", sa.Text(), nullable=False),
    sa.Column("records", sa.Integer(), nullable=False),
    sa.Column("status", sa.String(20), nullable=False, server_default="open"),
    sa.Column("run_id", IdType, nullable=True),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("finished_at", UtcDateTime(), nullable=True),
    # Why Salesforce never finished it (its errorMessage, or crm-export's reason).
    sa.Column("error", sa.Text(), nullable=True),
    sa.CheckConstraint(_in("status", BULK_JOB_STATUSES), name="status"),
)
sa.Index("ix_bulk_jobs_stream_status", bulk_jobs.c.stream, bulk_jobs.c.status)
