"""Issue 13: record fingerprints, counters that count each record once, the org's API usage,
the deferred outcome, and stream resync requests.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

- ``record_fingerprints`` (stream, record_key, fingerprint): what Salesforce last accepted.
- ``export_runs``: ``records_unchanged``, ``records_paused``, ``records_superseded``,
  ``records_late``, ``logins``, ``org_api_used``, ``org_api_max``; outcome ``deferred``.
  ``records_skipped`` goes: it counted failed records a second time (plus superseded rows).
  Old rows are rewritten so that every row read is counted once: a ``paused`` run's halting
  record moves from ``records_failed`` to ``records_paused``, and what ``records_skipped``
  held beyond the failures becomes ``records_superseded``. The downgrade puts them back.
- ``stream_state.resync_requested_at``.

Self-contained on purpose (see 0001). SQLite cannot change a CHECK constraint in place, so
export_runs is rebuilt there (batch mode, from the table as this file defines it); the
rebuild drops the old table, which with foreign keys on sets every ExportErrors.run_id to
NULL, so they are saved first and put back.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

OLD_OUTCOMES = "outcome IN ('running', 'completed', 'paused', 'failed', 'interrupted')"
NEW_OUTCOMES = "outcome IN ('running', 'completed', 'paused', 'failed', 'interrupted', 'deferred')"
NEW_COUNTERS = ("records_unchanged", "records_paused", "records_superseded", "records_late")
NEW_COLUMNS = (*NEW_COUNTERS, "logins", "org_api_used", "org_api_max")


def _ts(name: str, *, nullable: bool) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _counter(name: str) -> sa.Column[int]:
    return sa.Column(name, sa.BigInteger(), nullable=False, server_default="0")


def _export_runs(*, skipped: bool, new: bool, outcomes: str) -> sa.Table:
    """export_runs as it stands before a rebuild (SQLite batch mode copies from it)."""
    columns: list[sa.Column[Any]] = [
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(100), nullable=False),
        sa.Column("stream", sa.String(200), nullable=False),
        _ts("started_at", nullable=False),
        _ts("finished_at", nullable=True),
        sa.Column("outcome", sa.String(20), nullable=False),
        _counter("records_read"),
        _counter("records_exported"),
        _counter("records_failed"),
    ]
    if skipped:
        columns.append(_counter("records_skipped"))
    columns += [
        _counter("api_calls"),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("runner", sa.String(300), nullable=False),
    ]
    if new:
        columns += [_counter(name) for name in (*NEW_COUNTERS, "logins")]
        columns += [
            sa.Column("org_api_used", sa.BigInteger(), nullable=True),
            sa.Column("org_api_max", sa.BigInteger(), nullable=True),
        ]
    return sa.Table(
        "export_runs",
        sa.MetaData(),
        *columns,
        sa.PrimaryKeyConstraint("id", name="pk_export_runs"),
        sa.CheckConstraint(outcomes, name="ck_export_runs_outcome"),
        sa.Index("ix_export_runs_stream_started_at", "stream", "started_at"),
    )


def _sqlite() -> bool:
    return op.get_context().dialect.name == "sqlite"


def _save_error_runs() -> None:
    op.execute(
        "CREATE TEMPORARY TABLE crm_export_0002_error_runs AS "
        "SELECT id, run_id FROM exporterrors WHERE run_id IS NOT NULL"
    )


def _restore_error_runs() -> None:
    op.execute(
        "UPDATE exporterrors SET run_id = (SELECT s.run_id FROM crm_export_0002_error_runs s "
        "WHERE s.id = exporterrors.id) WHERE id IN (SELECT id FROM crm_export_0002_error_runs)"
    )
    op.execute("DROP TABLE crm_export_0002_error_runs")


def _swap_outcomes(drop: Sequence[str], old: sa.Table, new_outcomes: str) -> None:
    """Drop ``drop`` from export_runs (``old``, as it stands) and replace its outcome check."""
    if _sqlite():
        _save_error_runs()
    with op.batch_alter_table("export_runs", copy_from=old, recreate="auto") as batch:
        for name in drop:
            batch.drop_column(name)
        batch.drop_constraint(op.f("ck_export_runs_outcome"), type_="check")
        batch.create_check_constraint(op.f("ck_export_runs_outcome"), sa.text(new_outcomes))
    if _sqlite():
        _restore_error_runs()


def upgrade() -> None:
    op.create_table(
        "record_fingerprints",
        sa.Column("stream", sa.String(200), nullable=False),
        sa.Column("record_key", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.LargeBinary(16), nullable=False),
        sa.PrimaryKeyConstraint("stream", "record_key", name=op.f("pk_record_fingerprints")),
        sqlite_with_rowid=False,
    )
    op.add_column("stream_state", sa.Column("resync_requested_at", sa.DateTime(timezone=True)))

    for name in (*NEW_COUNTERS, "logins"):
        op.add_column("export_runs", _counter(name))
    op.add_column("export_runs", sa.Column("org_api_used", sa.BigInteger(), nullable=True))
    op.add_column("export_runs", sa.Column("org_api_max", sa.BigInteger(), nullable=True))
    # Each record once. A paused run ended at one halting record, which records_failed
    # counted; records_skipped counted CRMExport's other failures again, plus superseded rows.
    op.execute(
        "UPDATE export_runs SET records_paused = 1, records_failed = records_failed - 1 "
        "WHERE outcome = 'paused' AND records_failed > 0"
    )
    op.execute(
        "UPDATE export_runs SET records_superseded = records_skipped - records_failed "
        "WHERE records_skipped > records_failed"
    )
    _swap_outcomes(
        ["records_skipped"],
        _export_runs(skipped=True, new=True, outcomes=OLD_OUTCOMES),
        NEW_OUTCOMES,
    )


def downgrade() -> None:
    op.execute(
        "UPDATE export_runs SET outcome = 'failed', error = COALESCE(error, "
        "'deferred: the org''s API usage reached max_api_usage_percent') "
        "WHERE outcome = 'deferred'"
    )
    op.add_column("export_runs", _counter("records_skipped"))
    op.execute(
        "UPDATE export_runs SET records_skipped = records_failed + records_superseded "
        "WHERE job_id = 'CRMExport'"
    )
    op.execute("UPDATE export_runs SET records_failed = records_failed + records_paused")
    _swap_outcomes(
        NEW_COLUMNS,
        _export_runs(skipped=True, new=True, outcomes=NEW_OUTCOMES),
        OLD_OUTCOMES,
    )
    # Not batch mode: a rebuild would need stream_state's CHECK constraints restated, and
    # SQLite (3.35 and later) drops a column that no constraint names in place.
    op.drop_column("stream_state", "resync_requested_at")
    op.drop_table("record_fingerprints")
