"""What operators do to the state through the CLI: skip ExportErrors rows, reset a stream,
and the audit trail of every such action (``operator_actions``).

Each action is one transaction that re-reads what it changes (rows locked on PostgreSQL,
BEGIN IMMEDIATE on SQLite) and bumps the stream's ``revision``: a run that read the
stream's state before the action then has its next acknowledgement refused
(``StateStore._check_revision``) instead of overwriting the action. So an action goes
through safely while the daemon runs; the run it interrupts stops, and the next run starts
from the new state.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from crm_export.ports import ErrorStatus, Position
from crm_export.store.engines import StateDatabase
from crm_export.store.positions import position_columns, position_from_columns
from crm_export.store.schema import export_errors, operator_actions, stream_state
from crm_export.store.state import pause_columns
from crm_export.store.statements import chunks, upsert

__all__ = ["OperatorActions", "SkipResult", "StepOver"]


@dataclass(frozen=True)
class StepOver:
    """Where a stream paused at ``record_key`` goes when that record is skipped: ``to``, the
    record's own position, if it is still the very next row after ``position`` (so the
    next run steps over it instead of sending it again); else the position stays."""

    record_key: str
    position: Position | None
    to: Position | None


@dataclass
class SkipResult:
    skipped: list[dict[str, Any]] = field(default_factory=list)  # the rows, as they were
    not_open: list[dict[str, Any]] = field(default_factory=list)  # closed already: untouched
    missing: list[int] = field(default_factory=list)  # no such id
    # stream -> the paused record released, and whether the position stepped over it.
    released: dict[str, dict[str, Any]] = field(default_factory=dict)
    action_id: int = 0


class OperatorActions:
    def __init__(self, db: StateDatabase) -> None:
        self._db = db

    def errors_by_ids(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        """ExportErrors rows with these ids, as dicts of every column, by id."""
        t = export_errors
        found: list[dict[str, Any]] = []
        with self._db.read() as conn:
            for chunk in chunks(list(dict.fromkeys(ids))):
                stmt = t.select().where(t.c.id.in_(chunk)).order_by(t.c.id)
                found += [dict(r._mapping) for r in conn.execute(stmt)]
        return sorted(found, key=lambda r: int(r["id"]))

    def skip_errors(
        self,
        ids: Sequence[int],
        *,
        actor: str,
        reason: str | None,
        step_over: Mapping[str, StepOver] | None = None,
    ) -> SkipResult:
        """Close the open rows among ``ids`` as ``skipped`` (by ``actor``, for ``reason``).

        A stream paused at a skipped record is released; its position moves as
        ``step_over[stream]`` says, if the stream is still paused at that record with that
        position (anything else moved it meanwhile, and the position is left alone).
        """
        t = export_errors
        result = SkipResult()
        now = self._db.now()
        with self._db.write() as conn:
            rows = []
            for chunk in chunks(list(dict.fromkeys(ids))):
                stmt = t.select().where(t.c.id.in_(chunk)).with_for_update()
                rows += [dict(r._mapping) for r in conn.execute(stmt)]
            found = {int(r["id"]) for r in rows}
            result.missing = [i for i in dict.fromkeys(ids) if i not in found]
            for row in sorted(rows, key=lambda r: int(r["id"])):
                if row["resolved_at"] is not None:
                    result.not_open.append(row)
                    continue
                conn.execute(
                    t.update()
                    .where(t.c.id == row["id"], t.c.resolved_at.is_(None))
                    .values(
                        status=ErrorStatus.SKIPPED.value,
                        resolved_at=now,
                        closed_by=actor,
                        close_reason=reason,
                    )
                )
                result.skipped.append(row)
            streams = sorted({str(r["stream"]) for r in result.skipped})
            for stream in streams:
                keys = {str(r["record_key"]) for r in result.skipped if r["stream"] == stream}
                released = self._release(conn, stream, keys, (step_over or {}).get(stream), now)
                if released is not None:
                    result.released[stream] = released
                _bump_revision(conn, stream, now)
            result.action_id = _audit(
                conn,
                now,
                actor,
                "errors_skip",
                streams[0] if len(streams) == 1 else None,
                [int(r["id"]) for r in result.skipped],
                reason,
                {
                    "released": result.released,
                    "not_open": [int(r["id"]) for r in result.not_open],
                    "missing": result.missing,
                },
            )
        return result

    @staticmethod
    def _release(
        conn: Connection, stream: str, keys: set[str], step: StepOver | None, now: datetime
    ) -> dict[str, Any] | None:
        s = stream_state
        state = conn.execute(s.select().where(s.c.stream == stream).with_for_update()).first()
        if state is None or state.paused_record_key not in keys:
            return None
        position = position_from_columns(state.position_order, state.position_key)
        changes: dict[str, Any] = {**pause_columns(None), "updated_at": now}
        moved = (
            step is not None
            and step.record_key == state.paused_record_key
            and step.to is not None
            and step.position == position
        )
        if moved:
            assert step is not None and step.to is not None
            changes.update(position_columns(step.to))
        conn.execute(s.update().where(s.c.stream == stream).values(changes))
        return {"record_key": state.paused_record_key, "stepped_over": moved}

    def reset_stream(self, stream: str, *, actor: str, reason: str | None) -> dict[str, Any]:
        """Clear the stream's position, pause and late-commit snapshot: the next run exports
        it from the beginning. Open ExportErrors rows stay open (the run resolves those that
        go through). Returns what was cleared (also kept in the audit row)."""
        s = stream_state
        now = self._db.now()
        with self._db.write() as conn:
            state = conn.execute(s.select().where(s.c.stream == stream).with_for_update()).first()
            before: dict[str, Any] = {"position": None, "paused_record_key": None}
            if state is not None:
                position = position_from_columns(state.position_order, state.position_key)
                before = {
                    "position": None
                    if position is None
                    else {"order_by": position.order_value, "key": position.key},
                    "paused_record_key": state.paused_record_key,
                }
                conn.execute(
                    s.update()
                    .where(s.c.stream == stream)
                    .values(
                        **position_columns(None),
                        **pause_columns(None),
                        source_snapshot=None,
                        updated_at=now,
                    )
                )
            _bump_revision(conn, stream, now)
            before["action_id"] = _audit(
                conn, now, actor, "stream_reset", stream, [], reason, {"before": before}
            )
        return before

    def record_action(
        self,
        action: str,
        *,
        actor: str,
        stream: str | None,
        error_ids: Sequence[int],
        reason: str | None,
        detail: Mapping[str, Any],
    ) -> int:
        """An audit row for an action that changes state by other means (``errors retry``
        runs the re-export, which acknowledges as any run)."""
        with self._db.write() as conn:
            return _audit(conn, self._db.now(), actor, action, stream, error_ids, reason, detail)

    def list_actions(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest audit rows first."""
        t = operator_actions
        with self._db.read() as conn:
            stmt = t.select().order_by(t.c.id.desc()).limit(limit)
            return [dict(r._mapping) for r in conn.execute(stmt)]


def _bump_revision(conn: Connection, stream: str, now: datetime) -> None:
    s = stream_state
    insert = upsert(conn, s).values(stream=stream, updated_at=now, revision=1)
    conn.execute(
        insert.on_conflict_do_update(
            index_elements=[s.c.stream],
            set_={"revision": s.c.revision + 1, "updated_at": insert.excluded.updated_at},
        )
    )


def _audit(
    conn: Connection,
    now: datetime,
    actor: str,
    action: str,
    stream: str | None,
    error_ids: Sequence[int],
    reason: str | None,
    detail: Mapping[str, Any],
) -> int:
    inserted = conn.execute(
        operator_actions.insert().values(
            at=now,
            actor=actor,
            action=action,
            stream=stream,
            error_ids=",".join(str(i) for i in error_ids) or None,
            reason=reason,
            detail=json.dumps(dict(detail), default=str, sort_keys=True),
        )
    ).inserted_primary_key
    assert inserted is not None
    return int(inserted[0])
