"""The state the export core keeps: runs, stream positions and pauses, ExportErrors.

``acknowledge`` is the hot path: everything one batch changed (position, pause, ExportErrors
episodes, the run's counters) commits in one transaction, so a crash at any instant leaves
the state consistent.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from datetime import date, datetime, time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from crm_export.errors import StreamChangedError
from crm_export.ports import (
    UNCHANGED,
    ApiUsage,
    BatchAck,
    BulkJob,
    ErrorStatus,
    OpenError,
    PausedRecord,
    RecordFailure,
    RunCounts,
    RunOutcome,
    StreamState,
)
from crm_export.store import bulk_jobs
from crm_export.store.engines import StateDatabase, state_database_errors
from crm_export.store.locks import RunLocks
from crm_export.store.positions import position_columns, position_from_columns
from crm_export.store.schema import export_errors, export_runs, record_fingerprints, stream_state
from crm_export.store.statements import IN_CHUNK, chunks, upsert

__all__ = [
    "COUNTER_COLUMNS",
    "INTERRUPTED_MESSAGE",
    "StateStore",
    "pause_columns",
    "state_from_row",
]

# ports.RunCounts field -> export_runs column.
COUNTER_COLUMNS: Mapping[str, str] = {
    "read": "records_read",
    "exported": "records_exported",
    "unchanged": "records_unchanged",
    "failed": "records_failed",
    "paused": "records_paused",
    "superseded": "records_superseded",
    "late": "records_late",
    "api_calls": "api_calls",
    "logins": "logins",
}

INTERRUPTED_MESSAGE = "runner stopped before the run finished"


class StateStore:
    """The state half of ``ports.Store``.

    ``run_locks`` (PostgreSQL only) gives each run in progress a lock of its own, so that a
    run left ``running`` is marked interrupted only when its runner is really gone.
    """

    def __init__(self, db: StateDatabase, runner: str, run_locks: RunLocks | None) -> None:
        self._db = db
        self._runner = runner
        self._run_locks = run_locks
        # stream -> stream_state.revision as this store last loaded it (0: no row yet). An
        # acknowledgement is refused once an operator action has bumped it since.
        self._seen: dict[str, int] = {}

    # -- runs -------------------------------------------------------------------------------

    def begin_run(self, job_id: str, stream: str) -> int:
        """Record a run as ``running`` and return its id.

        On PostgreSQL the run's lock is taken in the transaction that inserts the row, so no
        other session ever sees the run ``running`` without its lock held.
        """
        insert = export_runs.insert().values(
            job_id=job_id,
            stream=stream,
            started_at=self._db.now(),
            outcome=RunOutcome.RUNNING.value,
            runner=self._runner,
        )
        if self._run_locks is None:
            with self._db.write() as conn:
                pk = conn.execute(insert).inserted_primary_key
                assert pk is not None
                return int(pk[0])

        def insert_run(conn: Connection) -> int:
            return int(conn.execute(insert.returning(export_runs.c.id)).scalar_one())

        with state_database_errors(self._db.url):
            return self._run_locks.begin_locked(insert_run)

    def finish_run(
        self,
        run_id: int,
        outcome: RunOutcome,
        error: str | None = None,
        *,
        tail: RunCounts | None = None,
        usage: ApiUsage | None = None,
    ) -> None:
        """Close a run with its outcome (and the error text of a failed run), adding the
        counters no acknowledgement carried (``tail``: the calls of a batch that failed) and
        recording the org's API usage as last seen."""
        if outcome is RunOutcome.RUNNING:
            raise ValueError("a run can not finish as 'running'")
        values: dict[str, Any] = {
            "outcome": RunOutcome(outcome).value,
            "finished_at": self._db.now(),
            "error": error,
            **_counter_increments(tail or RunCounts()),
        }
        if usage is not None:
            values.update(org_api_used=usage.used, org_api_max=usage.max)
        with self._db.write() as conn:
            result = conn.execute(
                export_runs.update().where(export_runs.c.id == run_id).values(values)
            )
            if result.rowcount != 1:
                raise LookupError(f"no export run with id {run_id}")
        # Only after the outcome is committed: nobody may see the run running and unlocked.
        if self._run_locks is not None:
            self._run_locks.release(run_id)

    def mark_interrupted_runs(self) -> int:
        """Mark runs left ``running`` by a runner that died as ``interrupted``.

        Call this while holding the one-runner lock, before this store begins a run (its own
        runs in progress count as abandoned). On SQLite that is the whole proof: the runner's
        file lock can not be lost while its process lives. On PostgreSQL the runner lock can
        be lost to a broken connection while the process goes on, so a run is only marked
        when its own lock is free: its runner is gone. Returns how many runs were marked.
        """
        if self._run_locks is not None:
            self._run_locks.release_all()
        runs = export_runs
        with self._db.write() as conn:
            running = [
                int(r[0])
                for r in conn.execute(
                    sa.select(runs.c.id).where(runs.c.outcome == RunOutcome.RUNNING.value)
                )
            ]
            if conn.dialect.name == "postgresql":
                running = RunLocks.abandoned(conn, running)
            marked = 0
            for chunk in chunks(running):
                result = conn.execute(
                    runs.update()
                    .where(runs.c.id.in_(chunk), runs.c.outcome == RunOutcome.RUNNING.value)
                    .values(
                        outcome=RunOutcome.INTERRUPTED.value,
                        finished_at=self._db.now(),
                        error=INTERRUPTED_MESSAGE,
                    )
                )
                marked += int(result.rowcount)
            return marked

    def last_api_usage(self) -> ApiUsage | None:
        """The org's usage as recorded by the latest run that saw it."""
        r = export_runs
        stmt = (
            sa.select(r.c.org_api_used, r.c.org_api_max)
            .where(r.c.org_api_used.is_not(None), r.c.org_api_max.is_not(None))
            .order_by(r.c.id.desc())
            .limit(1)
        )
        with self._db.read() as conn:
            row = conn.execute(stmt).first()
        return None if row is None else ApiUsage(int(row[0]), int(row[1]))

    # -- stream state -----------------------------------------------------------------------

    def load_state(self, stream: str) -> StreamState:
        with self._db.read() as conn:
            row = conn.execute(stream_state.select().where(stream_state.c.stream == stream)).first()
        self._seen[stream] = 0 if row is None else int(row.revision)
        if row is None:
            return StreamState(stream=stream)
        return state_from_row(row._mapping)

    # -- ExportErrors -----------------------------------------------------------------------

    def open_errors(self, stream: str, after_id: int = 0, limit: int = 200) -> list[OpenError]:
        """Open ExportErrors rows of a stream with id > ``after_id``, by id (the caller pages
        with the last id it got)."""
        t = export_errors
        stmt = (
            sa.select(t.c.id, t.c.stream, t.c.record_key, t.c.error_code, t.c.attempts)
            .where(t.c.stream == stream, t.c.resolved_at.is_(None), t.c.id > after_id)
            .order_by(t.c.id)
            .limit(limit)
        )
        with self._db.read() as conn:
            return [
                OpenError(id=r[0], stream=r[1], record_key=r[2], error_code=r[3], attempts=r[4])
                for r in conn.execute(stmt)
            ]

    # -- fingerprints -------------------------------------------------------------------------

    def known_fingerprints(self, stream: str, keys: Sequence[str]) -> dict[str, bytes]:
        """What Salesforce last accepted for these records, except records with an open
        ExportErrors row: a record Salesforce refused since is always sent. One statement per
        500 keys (a batch is at most 200), on the primary key and the open-errors index."""
        f, e = record_fingerprints, export_errors
        open_error = (
            sa.select(e.c.id)
            .where(e.c.stream == f.c.stream, e.c.record_key == f.c.record_key)
            .where(e.c.resolved_at.is_(None))
        )
        found: dict[str, bytes] = {}
        with self._db.read() as conn:
            for chunk in chunks(list(dict.fromkeys(keys))):
                stmt = sa.select(f.c.record_key, f.c.fingerprint).where(
                    f.c.stream == stream, f.c.record_key.in_(chunk), ~open_error.exists()
                )
                found.update((str(k), bytes(v)) for k, v in conn.execute(stmt))
        return found

    def fingerprint_count(self, stream: str | None = None) -> int:
        stmt = sa.select(sa.func.count()).select_from(record_fingerprints)
        if stream is not None:
            stmt = stmt.where(record_fingerprints.c.stream == stream)
        with self._db.read() as conn:
            return int(conn.execute(stmt).scalar_one())

    # -- the hot path -----------------------------------------------------------------------

    def acknowledge(self, ack: BatchAck) -> None:
        """Commit everything one batch changed, in one transaction (all or nothing):

        the stream's position and pause, the ExportErrors episodes (closed for
        ``resolved_keys`` and ``source_deleted_keys``, then opened or bumped for
        ``failures``; a key in both gets its old episode closed and a new one opened, so the
        failure stays visible), the fingerprints of the records Salesforce accepted, and the
        counters added to the run's row.
        """
        now = self._db.now()
        with self._db.write() as conn:
            self._check_revision(conn, ack.stream)
            self._save_state(conn, ack, now)
            self._close_errors(conn, ack, ack.resolved_keys, ErrorStatus.RESOLVED, now)
            self._close_errors(conn, ack, ack.source_deleted_keys, ErrorStatus.SOURCE_DELETED, now)
            self._save_fingerprints(conn, ack)
            self._record_failures(conn, ack, now)
            self._add_counters(conn, ack)
            if ack.bulk_job_started is not None:
                bulk_jobs.insert_job(conn, ack.bulk_job_started, ack.run_id, now)
            if ack.bulk_job_done is not None:
                bulk_jobs.finish_job(conn, ack.bulk_job_done, now)

    def open_bulk_jobs(self, stream: str) -> list[BulkJob]:
        with self._db.read() as conn:
            return bulk_jobs.open_jobs(conn, stream)

    def fail_bulk_job(self, job_id: str, reason: str) -> None:
        now = self._db.now()
        with self._db.write() as conn:
            bulk_jobs.fail_job(conn, job_id, reason, now)

    def _check_revision(self, conn: Connection, stream: str) -> None:
        """Refuse the acknowledgement if an operator acted on the stream since this store
        loaded its state: the batch was decided on a state that is gone (a pause since
        released, a position since reset), and committing it would undo the action.

        The row is locked (PostgreSQL) so that an operator action and an acknowledgement
        take turns: each sees what the other committed.
        """
        seen = self._seen.get(stream)
        if seen is None:
            return  # this store never loaded the stream's state: nothing to overwrite
        current = conn.execute(
            sa.select(stream_state.c.revision)
            .where(stream_state.c.stream == stream)
            .with_for_update()
        ).scalar()
        if int(current or 0) != seen:
            raise StreamChangedError(
                f"stream {stream!r} was changed by an operator (crm-export errors skip or "
                "stream reset) while this run was working on it: this batch was not "
                "recorded, so as not to undo that change, and the run stops. The next run "
                "starts from the new state (anything this batch sent is sent again if still "
                "needed; upserts by external ID make that harmless)."
            )

    def _save_state(self, conn: Connection, ack: BatchAck, now: datetime) -> None:
        changes: dict[str, Any] = {}
        if ack.position is not UNCHANGED:
            changes.update(position_columns(ack.position))
        if ack.pause is not UNCHANGED:
            changes.update(pause_columns(ack.pause))
        if ack.source_snapshot is not UNCHANGED:
            changes["source_snapshot"] = ack.source_snapshot
        if ack.resync_requested is not UNCHANGED:
            changes["resync_requested_at"] = now if ack.resync_requested else None
        if not changes:
            return
        changes["updated_at"] = now
        insert = upsert(conn, stream_state).values(stream=ack.stream, **changes)
        conn.execute(
            insert.on_conflict_do_update(
                index_elements=[stream_state.c.stream],
                set_={name: insert.excluded[name] for name in changes},
            )
        )

    @staticmethod
    def _close_errors(
        conn: Connection, ack: BatchAck, keys: Sequence[str], status: ErrorStatus, now: datetime
    ) -> None:
        t = export_errors
        unique = list(dict.fromkeys(keys))
        for chunk in chunks(unique):
            conn.execute(
                t.update()
                .where(t.c.stream == ack.stream)
                .where(t.c.resolved_at.is_(None))
                .where(t.c.record_key.in_(chunk))
                .values(status=status.value, resolved_at=now, run_id=ack.run_id)
            )

    @staticmethod
    def _record_failures(conn: Connection, ack: BatchAck, now: datetime) -> None:
        if not ack.failures:
            return
        # One statement row per record: a record failing twice in one batch is one episode
        # with two attempts, its latest error kept.
        latest: dict[str, RecordFailure] = {}
        counts: dict[str, int] = {}
        for failure in ack.failures:
            latest[failure.record_key] = failure
            counts[failure.record_key] = counts.get(failure.record_key, 0) + 1
        rows = [
            {
                "stream": ack.stream,
                "record_key": key,
                "sobject": f.sobject,
                "external_id": f.external_id,
                "error_code": f.error.code,
                "error_message": f.error.message,
                "error_fields": ",".join(f.error.fields) or None,
                "payload": _payload_text(f.payload),
                "attempts": counts[key],
                "first_failed_at": now,
                "last_failed_at": now,
                "resolved_at": None,
                "status": ErrorStatus.OPEN.value,
                "run_id": ack.run_id,
            }
            for key, f in latest.items()
        ]
        t = export_errors
        insert = upsert(conn, t)
        # The conflict target is the partial unique index on open rows: an open episode is
        # bumped, anything else (no row, or only closed ones) opens a new episode.
        stmt = insert.on_conflict_do_update(
            index_elements=[t.c.stream, t.c.record_key],
            index_where=t.c.resolved_at.is_(None),
            set_={
                "attempts": t.c.attempts + insert.excluded.attempts,
                "last_failed_at": insert.excluded.last_failed_at,
                "sobject": insert.excluded.sobject,
                "external_id": insert.excluded.external_id,
                "error_code": insert.excluded.error_code,
                "error_message": insert.excluded.error_message,
                "error_fields": insert.excluded.error_fields,
                "payload": insert.excluded.payload,
                "run_id": insert.excluded.run_id,
            },
        )
        for chunk in chunks(rows):
            conn.execute(stmt, list(chunk))

    @staticmethod
    def _save_fingerprints(conn: Connection, ack: BatchAck) -> None:
        f = record_fingerprints
        if ack.forget_fingerprints:
            conn.execute(f.delete().where(f.c.stream == ack.stream))
        if not ack.fingerprints:
            return
        insert = upsert(conn, f)
        stmt = insert.on_conflict_do_update(
            index_elements=[f.c.stream, f.c.record_key],
            set_={"fingerprint": insert.excluded.fingerprint},
        )
        # Built a chunk at a time: a Bulk job acknowledges up to 100,000 at once.
        items = iter(ack.fingerprints.items())
        while chunk := list(itertools.islice(items, IN_CHUNK)):
            conn.execute(
                stmt,
                [{"stream": ack.stream, "record_key": k, "fingerprint": v} for k, v in chunk],
            )

    @staticmethod
    def _add_counters(conn: Connection, ack: BatchAck) -> None:
        r = export_runs
        result = conn.execute(
            r.update().where(r.c.id == ack.run_id).values(_counter_increments(ack.counts))
        )
        if result.rowcount != 1:
            # Raising here rolls back the whole batch: nothing is recorded against a run
            # that does not exist.
            raise LookupError(f"no export run with id {ack.run_id}")


# --------------------------------------------------------------------------------------------
# Rows and columns


def _counter_increments(counts: RunCounts) -> dict[str, Any]:
    """export_runs' counter columns, each plus its share in ``counts``."""
    r = export_runs
    return {column: r.c[column] + getattr(counts, name) for name, column in COUNTER_COLUMNS.items()}


def state_from_row(m: Mapping[Any, Any]) -> StreamState:
    """A stream_state row as the core sees it."""
    position = position_from_columns(m["position_order"], m["position_key"])
    paused = None
    if m["paused_record_key"] is not None:
        paused = PausedRecord(
            record_key=m["paused_record_key"],
            since=m["paused_since"],
            error_code=m["paused_error_code"],
            error_message=m["paused_error_message"],
        )
    return StreamState(
        stream=m["stream"],
        position=position,
        paused=paused,
        source_snapshot=m["source_snapshot"],
        resync_requested=m["resync_requested_at"] is not None,
    )


def pause_columns(pause: PausedRecord | None) -> dict[str, Any]:
    """The stream_state columns that hold ``pause``."""
    if pause is None:
        return {
            "paused_record_key": None,
            "paused_since": None,
            "paused_error_code": None,
            "paused_error_message": None,
        }
    return {
        "paused_record_key": pause.record_key,
        "paused_since": pause.since,
        "paused_error_code": pause.error_code,
        "paused_error_message": pause.error_message,
    }


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return str(value)


def _payload_text(payload: Mapping[str, Any] | None) -> str | None:
    if payload is None:
        return None
    return json.dumps(dict(payload), ensure_ascii=False, default=_json_default)
