"""The export core's entry points: one run of one stream, for either job.

Pure policy. It reads and acknowledges through a ``Store`` and writes through a ``Sink``; it
never sees SQL or HTTP. Each batch's outcome is decided in full before the batch is
acknowledged, and the acknowledgement (position, ExportErrors, counters) is one transaction,
so a crash at any instant loses nothing and counts nothing twice: whatever was sent but not
acknowledged is sent again, and upsert by external ID makes the resend harmless.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Collection
from datetime import UTC, datetime

import structlog

from crm_export.errors import ApiBudgetReached, CrmExportError, OrgMismatchError, TerminalError
from crm_export.ports import BulkSink, JobId, RunCounts, RunOutcome, Sink, Store
from crm_export.retry import Clock, StopRequested

from . import incremental, reexport
from .plan import ExportPolicy, StreamPlan, StreamResult
from .sending import BatchSender, RecordRetryObserver
from .stream_run import ProgressObserver, StreamRun

log = structlog.get_logger("crm_export.export")


class Exporter:
    def __init__(
        self,
        store: Store,
        sink: Sink,
        policy: ExportPolicy,
        clock: Clock,
        *,
        rng: random.Random | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        should_stop: Callable[[], bool] = lambda: False,
        on_progress: ProgressObserver | None = None,
        bulk: BulkSink | None = None,
        on_record_retry: RecordRetryObserver | None = None,
    ) -> None:
        self.store = store
        self.sink = sink
        self.policy = policy
        self.clock = clock
        self.now = now
        self.should_stop = should_stop
        self.on_progress = on_progress
        self.bulk = bulk
        self.sender = BatchSender(sink, policy, clock, rng or random.Random(), on_record_retry)
        self._usage_hinted = False
        self._hint_lock = threading.Lock()  # streams may start side by side

    def export_stream(self, plan: StreamPlan, *, resend_all: bool = False) -> StreamResult:
        """CRMExport: what is new or changed since the stream's position. ``resend_all``
        sends every row it reads, whatever Salesforce last accepted."""
        return self._run(JobId.EXPORT, plan, incremental.export, compare=not resend_all)

    def reexport_stream(
        self, plan: StreamPlan, only: Collection[int] | None = None
    ) -> StreamResult:
        """CRMExport_ExportError: every open ExportErrors row, from its source row now,
        always sent; with ``only``, the rows of these ids alone (``crm-export errors
        retry``)."""
        chosen = None if only is None else frozenset(only)
        return self._run(
            JobId.REEXPORT, plan, lambda run: reexport.reexport(run, chosen), compare=False
        )

    def _hint_usage(self) -> None:
        """Once per job: the org's usage as the last run saw it, so that a job starting at
        the budget line asks /limits before it spends anything (see crm_export.budget)."""
        with self._hint_lock:
            if self._usage_hinted:
                return
            self._usage_hinted = True
            usage = self.store.last_api_usage()
            if usage is not None:
                self.sink.hint_api_usage(usage)

    def _run(
        self,
        job_id: JobId,
        plan: StreamPlan,
        body: Callable[[StreamRun], None],
        *,
        compare: bool,
    ) -> StreamResult:
        self._hint_usage()
        run_id = self.store.begin_run(job_id, plan.name)
        result = StreamResult(job_id, plan.name, run_id)
        # Counted on this thread: streams may run side by side on threads of their own.
        calls, logins = self.sink.thread_counts()
        run = StreamRun(
            plan,
            result,
            self.store,
            self.sink,
            self.sender,
            self.policy,
            self.now,
            self.should_stop,
            calls_acked=calls,
            on_progress=self.on_progress,
            logins_acked=logins,
            compare=compare,
            bulk=self.bulk,
        )
        try:
            self.store.check_source(plan.source)
            if self.on_progress is not None:
                run.pending = self._pending(job_id, plan)
                run.report()
            body(run)
            if result.outcome is RunOutcome.RUNNING:
                result.outcome = RunOutcome.COMPLETED
        except ApiBudgetReached as exc:
            # Nothing is wrong: the position holds, no ExportErrors row, a later run resumes.
            result.outcome = RunOutcome.DEFERRED
            result.deferred = str(exc)
            log.warning(
                "api_budget_reached",
                job=job_id,
                stream=plan.name,
                used=exc.used,
                limit=exc.limit,
                line=exc.line,
                detail=str(exc),
            )
        except StopRequested:
            result.outcome = RunOutcome.INTERRUPTED
            result.error = "stopped on request before the stream was finished"
        except CrmExportError as exc:
            result.outcome = RunOutcome.FAILED
            result.error = str(exc)
            if isinstance(exc, OrgMismatchError):
                result.config_key = exc.key
            kind = "terminal" if isinstance(exc, TerminalError) else "transient"
            log.error("run_failed", job=job_id, stream=plan.name, kind=kind, error=str(exc))
        except Exception as exc:
            # A bug or a broken database must not take the other streams down with it.
            result.outcome = RunOutcome.FAILED
            result.error = f"unexpected {type(exc).__name__}: {exc}"
            log.exception("run_crashed", job=job_id, stream=plan.name)
        # What no acknowledgement carried: the calls of a batch that ended in failure (and
        # of those in flight behind it).
        calls, logins = self.sink.thread_counts()
        tail = RunCounts(
            api_calls=calls - run.calls_acked + run.unacked[0],
            logins=logins - run.logins_acked + run.unacked[1],
        )
        result.counts += tail
        self.store.finish_run(
            run_id, result.outcome, result.error, tail=tail, usage=self.sink.api_usage
        )
        usage = self.sink.api_usage
        log.info(
            "run_finished",
            job=job_id,
            stream=plan.name,
            run_id=run_id,
            outcome=str(result.outcome),
            **result.counts.as_dict(),
            org_api_used=None if usage is None else usage.used,
            org_api_max=None if usage is None else usage.max,
            error=result.error,
        )
        run.report(finished=True)
        return result

    def _pending(self, job_id: JobId, plan: StreamPlan) -> int | None:
        """The source rows ahead of a CRMExport run, counted once at its start. None for
        the re-export, whose work is the stream's open ExportErrors, not a range of rows."""
        if job_id is not JobId.EXPORT:
            return None
        position = self.store.load_state(plan.name).position
        return self.store.count_after(plan.source, position)
