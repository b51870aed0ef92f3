"""The operator's questions: the queries behind ``crm-export status`` and ``errors``.

The export core never calls these. The same questions, as plain SQL to paste into sqlite3 or
psql, are in ``sql/operator_queries.<dialect>.sql`` beside this module (``errors --sql``
prints them).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from crm_export.ports import RunOutcome, StreamState
from crm_export.store.engines import StateDatabase
from crm_export.store.schema import export_errors, export_runs, record_fingerprints, stream_state
from crm_export.store.state import state_from_row
from crm_export.store.statements import upsert

__all__ = ["MonitoringSnapshot", "OperatorQueries"]


@dataclass(frozen=True)
class MonitoringSnapshot:
    """What the daemon's metrics show of the state database, read in one transaction."""

    # stream -> since when it is paused (paused streams only)
    paused_since: dict[str, datetime]
    # (stream, error_code) -> open ExportErrors rows
    open_errors: dict[tuple[str, str], int]
    # (job_id, stream) -> when its last completed run finished
    last_completed: dict[tuple[str, str], datetime]


class OperatorQueries:
    """Reads for the operator commands, and ``request_resync`` behind ``stream resync``."""

    def __init__(self, db: StateDatabase) -> None:
        self._db = db

    def list_errors(
        self,
        stream: str | None = None,
        code: str | None = None,
        include_resolved: bool = False,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """ExportErrors rows as dicts of every column, oldest first; open ones unless
        ``include_resolved``."""
        t = export_errors
        stmt = t.select().order_by(t.c.id)
        if stream is not None:
            stmt = stmt.where(t.c.stream == stream)
        if code is not None:
            stmt = stmt.where(t.c.error_code == code)
        if not include_resolved:
            stmt = stmt.where(t.c.resolved_at.is_(None))
        if limit is not None:
            stmt = stmt.limit(limit)
        with self._db.read() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    def stream_overview(self) -> list[dict[str, Any]]:
        """One dict per stream known to the state database, sorted by name:

        ``stream``, ``position`` (Position | None), ``paused`` (PausedRecord | None),
        ``updated_at``, ``last_run`` (dict of the newest export_runs row, or None) and
        ``open_errors`` (count).
        """
        r, e = export_runs, export_errors
        last_ids = sa.select(sa.func.max(r.c.id)).group_by(r.c.stream).scalar_subquery()
        with self._db.read() as conn:
            state_rows = [row._mapping for row in conn.execute(stream_state.select())]
            last_runs = {
                row.stream: dict(row._mapping)
                for row in conn.execute(r.select().where(r.c.id.in_(last_ids)))
            }
            open_counts = {
                row[0]: int(row[1])
                for row in conn.execute(
                    sa.select(e.c.stream, sa.func.count())
                    .where(e.c.resolved_at.is_(None))
                    .group_by(e.c.stream)
                )
            }
        states = {m["stream"]: state_from_row(m) for m in state_rows}
        updated = {m["stream"]: m["updated_at"] for m in state_rows}
        overview = []
        for name in sorted(set(states) | set(last_runs) | set(open_counts)):
            state = states.get(name, StreamState(stream=name))
            overview.append(
                {
                    "stream": name,
                    "position": state.position,
                    "paused": state.paused,
                    "updated_at": updated.get(name),
                    "last_run": last_runs.get(name),
                    "open_errors": open_counts.get(name, 0),
                }
            )
        return overview

    def monitoring_snapshot(self) -> MonitoringSnapshot:
        """Paused streams, open ExportErrors by stream and code, and each job's last
        completed run per stream: three grouped reads (the open-errors index and the
        export_runs primary key keep them cheap), for a metrics scrape."""
        r, e, st = export_runs, export_errors, stream_state
        with self._db.read() as conn:
            paused = conn.execute(
                sa.select(st.c.stream, st.c.paused_since).where(st.c.paused_record_key.is_not(None))
            )
            paused_since = {row[0]: row[1] for row in paused}
            counts = conn.execute(
                sa.select(e.c.stream, e.c.error_code, sa.func.count())
                .where(e.c.resolved_at.is_(None))
                .group_by(e.c.stream, e.c.error_code)
            )
            open_errors = {(row[0], row[1]): int(row[2]) for row in counts}
            completed = conn.execute(
                sa.select(r.c.job_id, r.c.stream, sa.func.max(r.c.finished_at))
                .where(r.c.outcome == RunOutcome.COMPLETED.value)
                .group_by(r.c.job_id, r.c.stream)
            )
            last_completed = {(row[0], row[1]): row[2] for row in completed}
        return MonitoringSnapshot(paused_since, open_errors, last_completed)

    def get_run(self, run_id: int) -> dict[str, Any] | None:
        """One export_runs row as a dict, or None."""
        with self._db.read() as conn:
            row = conn.execute(export_runs.select().where(export_runs.c.id == run_id)).first()
            return dict(row._mapping) if row is not None else None

    def list_runs(self, stream: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """The latest runs, newest first, as dicts of every export_runs column."""
        stmt = export_runs.select().order_by(export_runs.c.id.desc()).limit(limit)
        if stream is not None:
            stmt = stmt.where(export_runs.c.stream == stream)
        with self._db.read() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    def request_resync(self, stream: str) -> int:
        """Ask the next CRMExport run of ``stream`` to resend every row: it forgets the
        stream's fingerprints and starts over from the first row, in one transaction of its
        own (so a run in progress is never undercut). Returns how many fingerprints there
        are to forget."""
        now = self._db.now()
        with self._db.write() as conn:
            insert = upsert(conn, stream_state).values(
                stream=stream, resync_requested_at=now, updated_at=now
            )
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=[stream_state.c.stream],
                    set_={"resync_requested_at": now, "updated_at": now},
                )
            )
            f = record_fingerprints
            count = sa.select(sa.func.count()).select_from(f).where(f.c.stream == stream)
            return int(conn.execute(count).scalar_one())

    def api_usage(self) -> dict[str, Any] | None:
        """The org's API usage as the latest run that saw it recorded it: ``used``, ``max``
        and ``seen_at`` (that run's finish), or None."""
        r = export_runs
        stmt = (
            sa.select(r.c.org_api_used, r.c.org_api_max, r.c.finished_at, r.c.started_at)
            .where(r.c.org_api_used.is_not(None), r.c.org_api_max.is_not(None))
            .order_by(r.c.id.desc())
            .limit(1)
        )
        with self._db.read() as conn:
            row = conn.execute(stmt).first()
        if row is None:
            return None
        return {"used": int(row[0]), "max": int(row[1]), "seen_at": row[2] or row[3]}
