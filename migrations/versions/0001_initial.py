"""The state database: export_runs, stream_state and ExportErrors.

Revision ID: 0001
Revises:
Create Date: 2026-11-23

Self-contained on purpose: a migration must create the schema as it was at this revision, so
it imports nothing from crm_export (whose store/schema.py moves on with later revisions).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite auto-assigns ids only to "INTEGER PRIMARY KEY"; PostgreSQL gets BIGSERIAL.
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _ts(name: str, *, nullable: bool) -> sa.Column[datetime]:
    # UTC: timestamptz on PostgreSQL, "YYYY-MM-DD HH:MM:SS.ffffff" UTC text on SQLite.
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "export_runs",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(100), nullable=False),
        sa.Column("stream", sa.String(200), nullable=False),
        _ts("started_at", nullable=False),
        _ts("finished_at", nullable=True),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("records_read", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("records_exported", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("records_failed", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("records_skipped", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("api_calls", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("runner", sa.String(300), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_export_runs")),
        sa.CheckConstraint(
            "outcome IN ('running', 'completed', 'paused', 'failed', 'interrupted')",
            name=op.f("ck_export_runs_outcome"),
        ),
    )
    op.create_index(
        op.f("ix_export_runs_stream_started_at"), "export_runs", ["stream", "started_at"]
    )

    op.create_table(
        "exporterrors",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("stream", sa.String(200), nullable=False),
        sa.Column("record_key", sa.Text(), nullable=False),
        sa.Column("sobject", sa.String(200), nullable=False),
        sa.Column("external_id", sa.String(200), nullable=False),
        sa.Column("error_code", sa.String(200), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=False),
        sa.Column("error_fields", sa.Text(), nullable=True),
        sa.Column("payload", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="1"),
        _ts("first_failed_at", nullable=False),
        _ts("last_failed_at", nullable=False),
        _ts("resolved_at", nullable=True),
        sa.Column("status", sa.String(20), nullable=False, server_default="open"),
        sa.Column("run_id", ID, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_exporterrors")),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["export_runs.id"],
            name=op.f("fk_exporterrors_run_id_export_runs"),
            ondelete="SET NULL",
        ),
        sa.CheckConstraint(
            "status IN ('open', 'resolved', 'source_deleted')",
            name=op.f("ck_exporterrors_status"),
        ),
        sa.CheckConstraint(
            "(status = 'open' AND resolved_at IS NULL)"
            " OR (status <> 'open' AND resolved_at IS NOT NULL)",
            name=op.f("ck_exporterrors_open_unresolved"),
        ),
        sa.CheckConstraint("attempts >= 1", name=op.f("ck_exporterrors_attempts")),
    )
    # One open episode per record, and the index that finds a stream's open rows.
    op.create_index(
        op.f("uq_exporterrors_open_record"),
        "exporterrors",
        ["stream", "record_key"],
        unique=True,
        sqlite_where=sa.text("resolved_at IS NULL"),
        postgresql_where=sa.text("resolved_at IS NULL"),
    )

    op.create_table(
        "stream_state",
        sa.Column("stream", sa.String(200), nullable=False),
        sa.Column("position_order", sa.Text(), nullable=True),
        sa.Column("position_key", sa.Text(), nullable=True),
        sa.Column("paused_record_key", sa.Text(), nullable=True),
        _ts("paused_since", nullable=True),
        sa.Column("paused_error_code", sa.String(200), nullable=True),
        sa.Column("paused_error_message", sa.Text(), nullable=True),
        sa.Column("source_snapshot", sa.Text(), nullable=True),
        _ts("updated_at", nullable=False),
        sa.PrimaryKeyConstraint("stream", name=op.f("pk_stream_state")),
        sa.CheckConstraint(
            "(position_order IS NULL) = (position_key IS NULL)",
            name=op.f("ck_stream_state_position_complete"),
        ),
        sa.CheckConstraint(
            "paused_record_key IS NULL OR (paused_since IS NOT NULL"
            " AND paused_error_code IS NOT NULL AND paused_error_message IS NOT NULL)",
            name=op.f("ck_stream_state_pause_complete"),
        ),
    )


def downgrade() -> None:
    op.drop_table("stream_state")
    op.drop_index(op.f("uq_exporterrors_open_record"), table_name="exporterrors")
    op.drop_table("exporterrors")
    op.drop_index(op.f("ix_export_runs_stream_started_at"), table_name="export_runs")
    op.drop_table("export_runs")
