"""``SqlStore``: the one ``ports.Store`` over SQL, composed from the store's parts.

Each concern lives in its own module (``sources``, ``state``, ``operator``, ``locks``); this
class only builds them on one state engine and hands each call to the part that owns it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine, make_url

from crm_export.errors import TerminalError
from crm_export.ports import (
    ApiUsage,
    BatchAck,
    BulkJob,
    OpenError,
    Position,
    RunCounts,
    RunOutcome,
    SourceRow,
    SourceValue,
    Store,
    StreamSource,
    StreamState,
)
from crm_export.store.actions import OperatorActions, SkipResult, StepOver
from crm_export.store.engines import StateDatabase, create_state_engine
from crm_export.store.locks import RunLocks, holder_id
from crm_export.store.operator import MonitoringSnapshot, OperatorQueries
from crm_export.store.sources import SourceReader
from crm_export.store.state import StateStore
from crm_export.store.urls import redact_url

__all__ = ["SqlStore"]


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
        db = StateDatabase(state_url, self._engine, clock)
        # PostgreSQL: each run in progress holds a lock of its own (see RunLocks).
        self._run_locks = RunLocks(state_url) if backend == "postgresql" else None
        self._state = StateStore(db, runner or holder_id(), self._run_locks)
        self._operator = OperatorQueries(db)
        self._actions = OperatorActions(db)
        # A source URL equal to the state URL shares its engine.
        self._sources = SourceReader(shared={state_url: self._engine})

    @property
    def engine(self) -> Engine:
        """The state database's engine. The store never migrates it: callers do, through
        ``migrations.ensure_schema(url, store.engine)``, which an in-memory database needs
        (no other engine can reach it)."""
        return self._engine

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Dispose every engine (state and sources). The store can not be used afterwards."""
        self._sources.close()
        if self._run_locks is not None:
            self._run_locks.close()
        self._engine.dispose()

    def __enter__(self) -> SqlStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- runs, stream state, ExportErrors (StateStore) ---------------------------------------

    def begin_run(self, job_id: str, stream: str) -> int:
        return self._state.begin_run(job_id, stream)

    def finish_run(
        self,
        run_id: int,
        outcome: RunOutcome,
        error: str | None = None,
        *,
        tail: RunCounts | None = None,
        usage: ApiUsage | None = None,
    ) -> None:
        self._state.finish_run(run_id, outcome, error, tail=tail, usage=usage)

    def last_api_usage(self) -> ApiUsage | None:
        return self._state.last_api_usage()

    def mark_interrupted_runs(self) -> int:
        return self._state.mark_interrupted_runs()

    def load_state(self, stream: str) -> StreamState:
        return self._state.load_state(stream)

    def open_errors(self, stream: str, after_id: int = 0, limit: int = 200) -> list[OpenError]:
        return self._state.open_errors(stream, after_id, limit)

    def acknowledge(self, ack: BatchAck) -> None:
        self._state.acknowledge(ack)

    def open_bulk_jobs(self, stream: str) -> list[BulkJob]:
        return self._state.open_bulk_jobs(stream)

    def fail_bulk_job(self, job_id: str, reason: str) -> None:
        self._state.fail_bulk_job(job_id, reason)

    def known_fingerprints(self, stream: str, keys: Sequence[str]) -> dict[str, bytes]:
        return self._state.known_fingerprints(stream, keys)

    def fingerprint_count(self, stream: str | None = None) -> int:
        return self._state.fingerprint_count(stream)

    # -- source reading (SourceReader) ------------------------------------------------------

    def read_batch(
        self, source: StreamSource, after: Position | None, limit: int
    ) -> list[SourceRow]:
        return self._sources.read_batch(source, after, limit)

    def source_snapshot(self, source: StreamSource) -> str | None:
        return self._sources.source_snapshot(source)

    def read_late(
        self,
        source: StreamSource,
        snapshot: str,
        upto: Position,
        after: Position | None,
        limit: int,
    ) -> list[SourceRow]:
        return self._sources.read_late(source, snapshot, upto, after, limit)

    def read_window(
        self,
        source: StreamSource,
        since: SourceValue,
        upto: Position,
        after: Position | None,
        limit: int,
    ) -> list[SourceRow]:
        return self._sources.read_window(source, since, upto, after, limit)

    def latest_order_value(self, source: StreamSource) -> SourceValue:
        return self._sources.latest_order_value(source)

    def count_after(self, source: StreamSource, position: Position | None) -> int:
        return self._sources.count_after(source, position)

    def read_by_keys(self, source: StreamSource, keys: Sequence[str]) -> dict[str, SourceRow]:
        return self._sources.read_by_keys(source, keys)

    def check_source(self, source: StreamSource) -> None:
        self._sources.check_source(source)

    def missing_keyset_index(self, source: StreamSource) -> str | None:
        return self._sources.missing_keyset_index(source)

    # -- the operator's commands (OperatorQueries) ------------------------------------------

    def stream_overview(self) -> list[dict[str, Any]]:
        return self._operator.stream_overview()

    def list_errors(
        self,
        stream: str | None = None,
        code: str | None = None,
        include_resolved: bool = False,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        return self._operator.list_errors(stream, code, include_resolved, limit)

    def list_runs(self, stream: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        return self._operator.list_runs(stream, limit)

    def get_run(self, run_id: int) -> dict[str, Any] | None:
        return self._operator.get_run(run_id)

    def monitoring_snapshot(self) -> MonitoringSnapshot:
        return self._operator.monitoring_snapshot()

    # -- the operator's actions (OperatorActions) -------------------------------------------

    def errors_by_ids(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        return self._actions.errors_by_ids(ids)

    def skip_errors(
        self,
        ids: Sequence[int],
        *,
        actor: str,
        reason: str | None,
        step_over: Mapping[str, StepOver] | None = None,
    ) -> SkipResult:
        return self._actions.skip_errors(ids, actor=actor, reason=reason, step_over=step_over)

    def reset_stream(self, stream: str, *, actor: str, reason: str | None) -> dict[str, Any]:
        return self._actions.reset_stream(stream, actor=actor, reason=reason)

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
        return self._actions.record_action(
            action, actor=actor, stream=stream, error_ids=error_ids, reason=reason, detail=detail
        )

    def list_actions(self, limit: int = 50) -> list[dict[str, Any]]:
        return self._actions.list_actions(limit)

    def request_resync(self, stream: str) -> int:
        return self._operator.request_resync(stream)

    def api_usage(self) -> dict[str, Any] | None:
        return self._operator.api_usage()


if TYPE_CHECKING:

    def _conforms(store: SqlStore) -> Store:
        # mypy proves SqlStore implements the port.
        return store
