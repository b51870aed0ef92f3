"""Acting on records: ExportErrors rows closed as 'skipped' by a person, the operator_actions
audit table, and stream_state.revision.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

- exporterrors.status may be 'skipped' (closed by `crm-export errors skip`); closed_by and
  close_reason say who closed a row by hand, and why (resolved_at says when).
- operator_actions: one row per operator action (who, when, what, on which rows, why).
- operator_actions.action: errors_skip, errors_retry, stream_reset, stream_resync.
- stream_state.revision: bumped by every operator action on a stream, so that a run that
  read the stream's state before the action can not overwrite it (see store/state.py).

Self-contained on purpose (see 0001). SQLite can not alter a CHECK constraint, so there the
table is rebuilt (batch mode); its definition as of 0001 is spelled out below rather than
reflected, which also lets `crm-export db upgrade --sql` print the script.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

OLD_STATUSES = "status IN ('open', 'resolved', 'source_deleted')"
NEW_STATUSES = "status IN ('open', 'resolved', 'source_deleted', 'skipped')"
ACTIONS = "action IN ('errors_skip', 'errors_retry', 'stream_reset', 'stream_resync')"


def _ts(name: str, *, nullable: bool) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _exporterrors(statuses: str, *, closing_columns: bool) -> sa.Table:
    """exporterrors as it stands before this revision (upgrade) or after it (downgrade);
    0002 does not touch it."""
    columns: list[sa.Column[Any]] = [
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
    ]
    if closing_columns:
        columns += [
            sa.Column("closed_by", sa.String(200), nullable=True),
            sa.Column("close_reason", sa.Text(), nullable=True),
        ]
    metadata = sa.MetaData()
    sa.Table("export_runs", metadata, sa.Column("id", ID, primary_key=True))
    table = sa.Table(
        "exporterrors",
        metadata,
        *columns,
        sa.PrimaryKeyConstraint("id", name="pk_exporterrors"),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["export_runs.id"],
            name="fk_exporterrors_run_id_export_runs",
            ondelete="SET NULL",
        ),
        sa.CheckConstraint(statuses, name="ck_exporterrors_status"),
        sa.CheckConstraint(
            "(status = 'open' AND resolved_at IS NULL)"
            " OR (status <> 'open' AND resolved_at IS NOT NULL)",
            name="ck_exporterrors_open_unresolved",
        ),
        sa.CheckConstraint("attempts >= 1", name="ck_exporterrors_attempts"),
    )
    sa.Index(
        "uq_exporterrors_open_record",
        table.c.stream,
        table.c.record_key,
        unique=True,
        sqlite_where=sa.text("resolved_at IS NULL"),
        postgresql_where=sa.text("resolved_at IS NULL"),
    )
    return table


def _stream_state() -> sa.Table:
    """stream_state as this revision leaves it (for the downgrade's rebuild on SQLite)."""
    return sa.Table(
        "stream_state",
        sa.MetaData(),
        sa.Column("stream", sa.String(200), nullable=False),
        sa.Column("position_order", sa.Text(), nullable=True),
        sa.Column("position_key", sa.Text(), nullable=True),
        sa.Column("paused_record_key", sa.Text(), nullable=True),
        _ts("paused_since", nullable=True),
        sa.Column("paused_error_code", sa.String(200), nullable=True),
        sa.Column("paused_error_message", sa.Text(), nullable=True),
        sa.Column("source_snapshot", sa.Text(), nullable=True),
        _ts("updated_at", nullable=False),
        _ts("resync_requested_at", nullable=True),  # from 0002
        sa.Column("revision", sa.BigInteger(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("stream", name="pk_stream_state"),
        sa.CheckConstraint(
            "(position_order IS NULL) = (position_key IS NULL)",
            name="ck_stream_state_position_complete",
        ),
        sa.CheckConstraint(
            "paused_record_key IS NULL OR (paused_since IS NOT NULL"
            " AND paused_error_code IS NOT NULL AND paused_error_message IS NOT NULL)",
            name="ck_stream_state_pause_complete",
        ),
    )


def upgrade() -> None:
    with op.batch_alter_table(
        "exporterrors", copy_from=_exporterrors(OLD_STATUSES, closing_columns=False)
    ) as batch:
        batch.drop_constraint(op.f("ck_exporterrors_status"), type_="check")
        batch.create_check_constraint(op.f("ck_exporterrors_status"), sa.text(NEW_STATUSES))
        batch.add_column(sa.Column("closed_by", sa.String(200), nullable=True))
        batch.add_column(sa.Column("close_reason", sa.Text(), nullable=True))

    op.add_column(
        "stream_state",
        sa.Column("revision", sa.BigInteger(), nullable=False, server_default="0"),
    )

    op.create_table(
        "operator_actions",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        _ts("at", nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(50), nullable=False),
        sa.Column("stream", sa.String(200), nullable=True),
        sa.Column("error_ids", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_operator_actions")),
        sa.CheckConstraint(ACTIONS, name=op.f("ck_operator_actions_action")),
    )


def downgrade() -> None:
    op.drop_table("operator_actions")
    with op.batch_alter_table("stream_state", copy_from=_stream_state()) as batch:
        batch.drop_column("revision")
    # The old schema has no 'skipped': such rows stay closed, as resolved.
    op.execute("UPDATE exporterrors SET status = 'resolved' WHERE status = 'skipped'")
    with op.batch_alter_table(
        "exporterrors", copy_from=_exporterrors(NEW_STATUSES, closing_columns=True)
    ) as batch:
        batch.drop_constraint(op.f("ck_exporterrors_status"), type_="check")
        batch.create_check_constraint(op.f("ck_exporterrors_status"), sa.text(OLD_STATUSES))
        batch.drop_column("close_reason")
        batch.drop_column("closed_by")
