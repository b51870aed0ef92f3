"""Issue 11: bulk_jobs, the Bulk API 2.0 ingest jobs a stream has in flight.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

- ``bulk_jobs``: one row per job, recorded before its upload with the source rows it covers
  (after ``after_*`` up to ``last_*``, tagged JSON like stream_state's position), so that a
  run that stops while a job is in flight resumes polling it instead of sending its rows
  again. ``status``: open, done (its outcome acknowledged), failed (Salesforce never
  finished it; its rows go again).

Self-contained on purpose (see 0001).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
STATUSES = "status IN ('open', 'done', 'failed')"


def _ts(name: str, *, nullable: bool) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "bulk_jobs",
        sa.Column("job_id", sa.String(18), nullable=False),
        sa.Column("stream", sa.String(200), nullable=False),
        sa.Column("after_order", sa.Text(), nullable=True),
        sa.Column("after_key", sa.Text(), nullable=True),
        sa.Column("first_order", sa.Text(), nullable=False),
        sa.Column("first_key", sa.Text(), nullable=False),
        sa.Column("last_order", sa.Text(), nullable=False),
        sa.Column("last_key", sa.Text(), nullable=False),
        sa.Column("records", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False, server_default="open"),
        sa.Column("run_id", ID, nullable=True),
        _ts("created_at", nullable=False),
        _ts("finished_at", nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_bulk_jobs")),
        sa.CheckConstraint(STATUSES, name=op.f("ck_bulk_jobs_status")),
    )
    op.create_index("ix_bulk_jobs_stream_status", "bulk_jobs", ["stream", "status"])


def downgrade() -> None:
    op.drop_index("ix_bulk_jobs_stream_status", table_name="bulk_jobs")
    op.drop_table("bulk_jobs")
