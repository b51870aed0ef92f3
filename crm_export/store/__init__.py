"""The SQL store: every SQL statement crm-export runs lives in this module.

``SqlStore`` implements ``ports.Store`` over SQLAlchemy Core. It talks to two kinds of
database:

* the **state database** (SQLite by default, PostgreSQL in production): export runs, stream
  positions and pauses, and the ExportErrors table people query by hand;
* the **source databases** named by each stream's ``source_url`` (any SQLAlchemy URL, possibly
  the state database itself), which are only ever read.

Source rows are read with keyset pagination, one short statement per batch, so neither memory
nor transaction age grows with the size of the source table.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, time
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, make_url

from crm_export.errors import TerminalError
from crm_export.ports import (
    UNCHANGED,
    BatchAck,
    ErrorStatus,
    OpenError,
    PausedRecord,
    Position,
    RecordFailure,
    RunOutcome,
    SourceRow,
    Store,
    StreamSource,
    StreamState,
)
from crm_export.store.engines import (
    begin_write,
    create_source_engine,
    create_state_engine,
    state_database_errors,
    write_engine,
)
from crm_export.store.locks import (
    AdvisoryRunnerLock,
    FileRunnerLock,
    NoLock,
    RunLocks,
    RunnerLock,
    advisory_runner_lock,
    holder_id,
    lock_for_migration,
    runner_lock,
)
from crm_export.store.positions import (
    decode_value,
    encode_value,
    position_columns,
    position_from_columns,
)
from crm_export.store.schema import export_errors, export_runs, stream_state
from crm_export.store.sources import SourceReader, preflight_source
from crm_export.store.statements import IN_CHUNK, chunks, upsert
from crm_export.store.urls import is_memory_sqlite, redact_url

__all__ = [
    "INTERRUPTED_MESSAGE",
    "IN_CHUNK",
    "AdvisoryRunnerLock",
    "FileRunnerLock",
    "NoLock",
    "RunnerLock",
    "SqlStore",
    "advisory_runner_lock",
    "begin_write",
    "create_source_engine",
    "create_state_engine",
    "decode_value",
    "encode_value",
    "holder_id",
    "is_memory_sqlite",
    "lock_for_migration",
    "preflight_source",
    "redact_url",
    "runner_lock",
    "state_database_errors",
]

INTERRUPTED_MESSAGE = "runner stopped before the run finished"


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


# --------------------------------------------------------------------------------------------
# The store


class SqlStore:
    """``ports.Store`` over SQLAlchemy Core, plus what the daemon and the operator CLI need.

    One engine for the state database; source engines are created on first use per
    ``source_url`` and cached (a source URL equal to the state URL shares its engine).
    Thread-safe: every method takes its own connection from the pool.
    """

    def __init__(
        self,
        state_url: str,
        *,
        clock: Callable[[], datetime] | None = None,
        runner: str | None = None,
    ) -> None:
        backend = make_url(state_url).get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise TerminalError(
                f"the state database must be SQLite or PostgreSQL, not {backend}"
                f" ({redact_url(state_url)})"
            )
        self.state_url = state_url
        self._engine = create_state_engine(state_url)
        if is_memory_sqlite(state_url):
            # Nobody else can reach this database to migrate it: it starts at head.
            from crm_export.store import migrations

            migrations.upgrade_engine(self._engine, state_url)
        self._writer = write_engine(self._engine)
        # A source URL equal to the state URL shares its engine.
        self._source_reader = SourceReader(shared={state_url: self._engine})
        self._lock = threading.Lock()
        self._clock = clock or (lambda: datetime.now(UTC))
        self._runner = runner or holder_id()
        # PostgreSQL: each run in progress holds a lock (see RunLocks).
        self._run_locks = RunLocks(state_url) if backend == "postgresql" else None

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Dispose every engine (state and sources). The store can not be used afterwards."""
        self._source_reader.close()
        if self._run_locks is not None:
            self._run_locks.close()
        self._engine.dispose()

    def __enter__(self) -> SqlStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the store's clock must return aware datetimes")
        return now.astimezone(UTC)

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with state_database_errors(self.state_url), self._engine.connect() as conn:
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with state_database_errors(self.state_url), self._writer.begin() as conn:
            yield conn

    # -- runs -------------------------------------------------------------------------------

    def begin_run(self, job_id: str, stream: str) -> int:
        """Record a run as ``running`` and return its id.

        On PostgreSQL the run's lock is taken in the transaction that inserts the row, so no
        other session ever sees the run ``running`` without its lock held.
        """
        insert = export_runs.insert().values(
            job_id=job_id,
            stream=stream,
            started_at=self._now(),
            outcome=RunOutcome.RUNNING.value,
            runner=self._runner,
        )
        if self._run_locks is None:
            with self._write() as conn:
                pk = conn.execute(insert).inserted_primary_key
                assert pk is not None
                return int(pk[0])

        def insert_run(conn: Connection) -> int:
            return int(conn.execute(insert.returning(export_runs.c.id)).scalar_one())

        with state_database_errors(self.state_url):
            return self._run_locks.begin_locked(insert_run)

    def finish_run(self, run_id: int, outcome: RunOutcome, error: str | None = None) -> None:
        """Close a run with its outcome (and the error text of a failed run)."""
        if outcome is RunOutcome.RUNNING:
            raise ValueError("a run can not finish as 'running'")
        with self._write() as conn:
            result = conn.execute(
                export_runs.update()
                .where(export_runs.c.id == run_id)
                .values(outcome=RunOutcome(outcome).value, finished_at=self._now(), error=error)
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
        with self._write() as conn:
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
                        finished_at=self._now(),
                        error=INTERRUPTED_MESSAGE,
                    )
                )
                marked += int(result.rowcount)
            return marked

    def get_run(self, run_id: int) -> dict[str, Any] | None:
        """One export_runs row as a dict, or None."""
        with self._read() as conn:
            row = conn.execute(export_runs.select().where(export_runs.c.id == run_id)).first()
            return dict(row._mapping) if row is not None else None

    def list_runs(self, stream: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """The latest runs, newest first, as dicts of every export_runs column."""
        stmt = export_runs.select().order_by(export_runs.c.id.desc()).limit(limit)
        if stream is not None:
            stmt = stmt.where(export_runs.c.stream == stream)
        with self._read() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    # -- stream state -----------------------------------------------------------------------

    def load_state(self, stream: str) -> StreamState:
        with self._read() as conn:
            row = conn.execute(stream_state.select().where(stream_state.c.stream == stream)).first()
        if row is None:
            return StreamState(stream=stream)
        return self._state_from_row(row._mapping)

    @staticmethod
    def _state_from_row(m: Mapping[Any, Any]) -> StreamState:
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
        )

    def clear_pause(self, stream: str) -> bool:
        """Release a stream's pause (operator ``resume``). True if it was paused."""
        with self._write() as conn:
            result = conn.execute(
                stream_state.update()
                .where(stream_state.c.stream == stream)
                .where(stream_state.c.paused_record_key.is_not(None))
                .values({**_pause_values(None), "updated_at": self._now()})
            )
            return result.rowcount == 1

    # -- source reading ---------------------------------------------------------------------

    # -- source reading (SourceReader) ------------------------------------------------------

    def read_batch(
        self, source: StreamSource, after: Position | None, limit: int
    ) -> list[SourceRow]:
        return self._source_reader.read_batch(source, after, limit)

    def source_snapshot(self, source: StreamSource) -> str | None:
        return self._source_reader.source_snapshot(source)

    def read_late(
        self,
        source: StreamSource,
        snapshot: str,
        upto: Position,
        after: Position | None,
        limit: int,
    ) -> list[SourceRow]:
        return self._source_reader.read_late(source, snapshot, upto, after, limit)

    def count_after(self, source: StreamSource, position: Position | None) -> int:
        return self._source_reader.count_after(source, position)

    def read_by_keys(self, source: StreamSource, keys: Sequence[str]) -> dict[str, SourceRow]:
        return self._source_reader.read_by_keys(source, keys)

    def check_source(self, source: StreamSource) -> None:
        self._source_reader.check_source(source)

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
        with self._read() as conn:
            return [
                OpenError(id=r[0], stream=r[1], record_key=r[2], error_code=r[3], attempts=r[4])
                for r in conn.execute(stmt)
            ]

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
        with self._read() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    def stream_overview(self) -> list[dict[str, Any]]:
        """One dict per stream known to the state database, sorted by name:

        ``stream``, ``position`` (Position | None), ``paused`` (PausedRecord | None),
        ``updated_at``, ``last_run`` (dict of the newest export_runs row, or None) and
        ``open_errors`` (count).
        """
        r, e = export_runs, export_errors
        last_ids = sa.select(sa.func.max(r.c.id)).group_by(r.c.stream).scalar_subquery()
        with self._read() as conn:
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
        states = {m["stream"]: self._state_from_row(m) for m in state_rows}
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

    # -- the hot path -----------------------------------------------------------------------

    def acknowledge(self, ack: BatchAck) -> None:
        """Commit everything one batch changed, in one transaction (all or nothing):

        the stream's position and pause, the ExportErrors episodes (closed for
        ``resolved_keys`` and ``source_deleted_keys``, then opened or bumped for
        ``failures``; a key in both gets its old episode closed and a new one opened, so the
        failure stays visible), and the counters added to the run's row.
        """
        now = self._now()
        with self._write() as conn:
            self._save_state(conn, ack, now)
            self._close_errors(conn, ack, ack.resolved_keys, ErrorStatus.RESOLVED, now)
            self._close_errors(conn, ack, ack.source_deleted_keys, ErrorStatus.SOURCE_DELETED, now)
            self._record_failures(conn, ack, now)
            self._add_counters(conn, ack)

    def _save_state(self, conn: Connection, ack: BatchAck, now: datetime) -> None:
        changes: dict[str, Any] = {}
        if ack.position is not UNCHANGED:
            changes.update(position_columns(ack.position))
        if ack.pause is not UNCHANGED:
            changes.update(_pause_values(ack.pause))
        if ack.source_snapshot is not UNCHANGED:
            changes["source_snapshot"] = ack.source_snapshot
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
    def _add_counters(conn: Connection, ack: BatchAck) -> None:
        r = export_runs
        result = conn.execute(
            r.update()
            .where(r.c.id == ack.run_id)
            .values(
                records_read=r.c.records_read + ack.read,
                records_exported=r.c.records_exported + ack.exported,
                records_failed=r.c.records_failed + ack.failed,
                records_skipped=r.c.records_skipped + ack.skipped,
                api_calls=r.c.api_calls + ack.api_calls,
            )
        )
        if result.rowcount != 1:
            # Raising here rolls back the whole batch: nothing is recorded against a run
            # that does not exist.
            raise LookupError(f"no export run with id {ack.run_id}")


# --------------------------------------------------------------------------------------------
# Helpers of SqlStore


def _pause_values(pause: PausedRecord | None) -> dict[str, Any]:
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


if TYPE_CHECKING:

    def _conforms(store: SqlStore) -> Store:
        # mypy proves SqlStore implements the port.
        return store
