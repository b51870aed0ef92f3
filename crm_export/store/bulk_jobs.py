"""bulk_jobs: the Bulk API 2.0 jobs a stream has in flight, and their key ranges.

A job is inserted in the transaction that acknowledges what its rows' building decided
(rows Salesforce already holds, rows the mapping refused), before its upload; it is marked
done in the transaction that acknowledges its outcome and moves the position over its rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from crm_export.ports import BulkJob, BulkJobStatus, Position
from crm_export.store.positions import decode_value, encode_value
from crm_export.store.schema import bulk_jobs

__all__ = ["fail_job", "finish_job", "insert_job", "open_jobs"]


def _columns(prefix: str, position: Position | None) -> dict[str, Any]:
    if position is None:
        return {f"{prefix}_order": None, f"{prefix}_key": None}
    return {
        f"{prefix}_order": encode_value(position.order_value),
        f"{prefix}_key": encode_value(position.key),
    }


def _position(m: Mapping[Any, Any], prefix: str) -> Position | None:
    order = m[f"{prefix}_order"]
    if order is None:
        return None
    return Position(decode_value(order), decode_value(m[f"{prefix}_key"]))


def insert_job(conn: Connection, job: BulkJob, run_id: int, now: datetime) -> None:
    conn.execute(
        bulk_jobs.insert().values(
            job_id=job.job_id,
            stream=job.stream,
            records=job.records,
            status=str(job.status),
            run_id=run_id,
            created_at=now,
            **_columns("after", job.after),
            **_columns("first", job.first),
            **_columns("last", job.last),
        )
    )


def finish_job(conn: Connection, job_id: str, now: datetime) -> None:
    conn.execute(
        bulk_jobs.update()
        .where(bulk_jobs.c.job_id == job_id)
        .values(status=str(BulkJobStatus.DONE), finished_at=now)
    )


def fail_job(conn: Connection, job_id: str, reason: str, now: datetime) -> None:
    conn.execute(
        bulk_jobs.update()
        .where(bulk_jobs.c.job_id == job_id, bulk_jobs.c.status == str(BulkJobStatus.OPEN))
        .values(status=str(BulkJobStatus.FAILED), finished_at=now, error=reason)
    )


def open_jobs(conn: Connection, stream: str | None = None) -> list[BulkJob]:
    """Open jobs, oldest first (of one stream, or of all)."""
    t = bulk_jobs
    stmt = sa.select(t).where(t.c.status == str(BulkJobStatus.OPEN))
    if stream is not None:
        stmt = stmt.where(t.c.stream == stream)
    jobs = []
    for row in conn.execute(stmt.order_by(t.c.created_at, t.c.job_id)):
        m = row._mapping
        first, last = _position(m, "first"), _position(m, "last")
        assert first is not None and last is not None
        jobs.append(
            BulkJob(
                job_id=m["job_id"],
                stream=m["stream"],
                after=_position(m, "after"),
                first=first,
                last=last,
                records=int(m["records"]),
                status=BulkJobStatus(m["status"]),
                created_at=m["created_at"],
            )
        )
    return jobs
