"""``crm-export run``: the long-lived service.

APScheduler's BlockingScheduler runs the two jobs (defined in code, no job store) on one
worker thread, so they never work on the same stream at once. The config is re-read before
every run; a bad edit is logged and the last good config stays in force. SIGTERM or SIGINT
lets the in-flight batch be acknowledged and committed, then exits 0; a second signal exits
at once, which is safe because every acknowledgement is a single transaction.

With ``[metrics] listen`` it also serves ``/metrics``, ``/healthz`` and ``/readyz`` on a
thread of their own (crm_export/metrics.py), from the start, standby included: ``/healthz``
is 200 while the daemon is waiting as a standby or its scheduler runs, 503 once it stops;
``/readyz`` is 200 only on the active runner.

Exit codes: 0 stopped on request; 1 could not start (state database unreachable or
outdated, runner lock file impossible to create, metrics.listen address taken); 2 invalid
config at start, or a config value Salesforce refuses (an API version the org does not
serve); 3 lost the runner lock while active. 128 + the signal number after a second signal.

Log events an operator can watch for: ``standby`` / ``active`` (the runner lock),
``metrics_listening``, ``daemon_started``, ``job_started`` / ``job_finished`` (each
stream's outcome), ``progress`` (a stream's figures, at most every 10 s while it runs),
``job_skipped`` / ``job_missed``, ``heartbeat`` (role, next runs, the running job's counts,
how each job last ended), ``config_invalid`` / ``config_restart_required``,
``pause_mode_off``, ``stopping``, ``runner_lock_lost``, ``cannot_start`` and
``daemon_stopped``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType
from typing import Any, NoReturn

import structlog
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.exc import SQLAlchemyError

from crm_export.config import Config, load_config
from crm_export.errors import ConfigError, CrmExportError, OrgMismatchError
from crm_export.export import StreamProgress
from crm_export.metrics import Health, Metrics, MetricsServer
from crm_export.ports import JobId
from crm_export.progress import ProgressLog, RunTimer, figures
from crm_export.store import RunnerLock, holder_id, runner_lock
from crm_export.store import migrations as migrate
from crm_export.store.urls import is_sqlite
from crm_export.watch import Watch, Watches
from crm_export.wiring import check_sources

EXIT_STOPPED, EXIT_START_FAILED, EXIT_CONFIG, EXIT_LOCK_LOST = 0, 1, 2, 3

log = structlog.get_logger("crm_export.daemon")

JobRunner = Callable[[str, Config, threading.Event, Watch], Any]


# The scheduled jobs users know; the daemon's own housekeeping jobs are left out of events.
JOB_IDS: tuple[str, ...] = tuple(JobId)


@dataclass(frozen=True)
class DaemonTuning:
    stop_timeout_seconds: float = 60.0
    max_heartbeat_seconds: float = 60.0
    max_standby_poll_seconds: float = 5.0


def _run_registered_job(job_id: str, config: Config, stop: threading.Event, watch: Watch) -> Any:
    from crm_export.jobs import JOBS

    return JOBS[JobId(job_id)](config, stop, watch)


class RunningJob(Watch):
    """The running job's figures per stream (those it has finished included), for the
    heartbeat; None between jobs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._job: str | None = None
        self._streams: dict[str, dict[str, Any]] = {}
        self._timer = RunTimer(time.monotonic)

    def begin(self, job_id: str) -> None:
        with self._lock:
            self._job, self._streams = job_id, {}

    def end(self) -> None:
        with self._lock:
            self._job, self._streams = None, {}

    def progress(self, progress: StreamProgress) -> None:
        shown = figures(progress, self._timer.seconds(progress))
        for key in ("job", "stream", "run_id"):
            shown.pop(key)
        if progress.finished:
            shown["outcome"] = str(progress.result.outcome)
        with self._lock:
            self._streams[progress.result.stream] = shown

    def snapshot(self) -> dict[str, Any] | None:
        with self._lock:
            if self._job is None:
                return None
            return {"job": self._job, "streams": {k: dict(v) for k, v in self._streams.items()}}


class Daemon:
    def __init__(
        self,
        config_path: str | None,
        *,
        run_job: JobRunner = _run_registered_job,
        tuning: DaemonTuning | None = None,
        on_config: Callable[[Config], None] | None = None,
    ) -> None:
        self.config_path = config_path
        self.run_job = run_job
        self.tuning = tuning or DaemonTuning()
        self.on_config = on_config
        self.config: Config | None = None
        self.stop = threading.Event()
        # Held for the whole of a job. Stopping takes it after setting ``stop``: from then on
        # no job is running and none can start, so the runner lock can be let go.
        self._job_running = threading.Lock()
        self.scheduler: BlockingScheduler | None = None
        self.lock: RunnerLock | None = None
        self.exit_code = EXIT_STOPPED
        self._signals = 0
        # job id -> when it last finished and each stream's outcome, for the heartbeat.
        self._last_jobs: dict[str, dict[str, Any]] = {}
        # "starting", then "standby" while another runner holds the lock, then "active".
        self.role = "starting"
        self.metrics = Metrics()
        self._metrics_server: MetricsServer | None = None
        self._running = RunningJob()
        self._progress_log = ProgressLog()

    # ---- config ----------------------------------------------------------------------

    def reload(self) -> Config:
        """Re-read the config; on a bad edit keep the last good one."""
        assert self.config is not None
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error(
                "config_invalid",
                path=exc.path,
                problems=exc.problems,
                detail="keeping the last good config; fix the file, no restart needed",
            )
            return self.config
        if new.database.url != self.config.database.url:
            # The runner lock guards the old database; switching under it would let another
            # runner export the same streams from the new one at the same time.
            log.error(
                "config_restart_required",
                path=str(new.path),
                key="database.url",
                detail="the state database changed; restart the daemon to switch. Keeping "
                "the last good config until then",
            )
            return self.config
        if new.metrics != self.config.metrics:
            log.warning(
                "config_restart_required",
                path=str(new.path),
                key="metrics.listen",
                detail="the metrics endpoints move when the daemon restarts; the rest of the "
                "edit is in force now",
            )
        self._announce_changes(self.config, new)
        self.metrics.know_streams(s.name for s in new.streams)
        self.config = new
        if self.on_config is not None:
            self.on_config(new)
        return new

    def _announce_changes(self, old: Config, new: Config) -> None:
        before = {s.name: s.pause_on_error for s in old.streams}
        for stream in new.streams:
            was = before.get(stream.name)
            if was is True and not stream.pause_on_error:
                log.warning(
                    "pause_mode_off",
                    stream=stream.name,
                    detail="failed records will now be skipped; Salesforce may be "
                    "inconsistent until ExportErrors is worked off",
                )
            elif was is False and stream.pause_on_error:
                log.info("pause_mode_on", stream=stream.name)
        if old.schedule != new.schedule and self.scheduler is not None:
            self._schedule(new, reschedule=True)
            log.info(
                "schedule_changed",
                export_interval_seconds=new.schedule.export_interval_seconds,
                reexport_cron=new.schedule.reexport_cron,
            )

    # ---- jobs --------------------------------------------------------------------------

    def _job(self, job_id: str) -> None:
        with self._job_running:
            # The lock is checked again here: between two lock checks a standby may already
            # have taken over, and a run started now would overlap its runs.
            if self.stop.is_set() or not self._check_lock():
                return
            try:
                config = self.reload()
                started = datetime.now(UTC)
                log.info("job_started", job=job_id)
                self._running.begin(job_id)
                watch = Watches([self._progress_log, self._running, self.metrics])
                results = self.run_job(job_id, config, self.stop, watch)
                outcomes = {r.stream: str(r.outcome) for r in results or ()}
                finished = datetime.now(UTC)
                log.info(
                    "job_finished",
                    job=job_id,
                    outcomes=outcomes,
                    seconds=round((finished - started).total_seconds(), 3),
                )
                self._last_jobs[job_id] = {"finished_at": _iso(finished), "outcomes": outcomes}
                self._config_refused(results or ())
            except OrgMismatchError as exc:
                # A value the other side refuses (an API version the org does not serve)
                # fails every run alike until the file is fixed: exit 2, as at start.
                log.error(
                    "config_invalid",
                    path=str(self.config.path) if self.config else None,
                    key=exc.key,
                    problems=[str(exc)],
                    detail=f"stopping (exit code {EXIT_CONFIG}); fix the file and start again",
                )
                self.exit_code = EXIT_CONFIG
                self._begin_stop()
            except Exception:
                log.exception("job_crashed", job=job_id)
                self._last_jobs[job_id] = {"finished_at": _iso(datetime.now(UTC)), "crashed": True}
            finally:
                self._running.end()

    def _config_refused(self, results: Iterable[Any]) -> None:
        """Streams that failed on a config value the org refuses (``StreamResult.config_key``):
        each is logged as ``config_invalid``. A [salesforce] key (an API version the org does
        not serve, a login URL that cannot be right) fails every stream alike until the file
        is fixed, so the daemon stops with exit 2, as at start; a stream's own key (a mapped
        field the object lacks) fails that stream only, and the others go on."""
        fatal = False
        for result in results:
            key = getattr(result, "config_key", None)
            if not key:
                continue
            fatal = fatal or key.startswith("salesforce.")
            log.error(
                "config_invalid",
                path=str(self.config.path) if self.config else None,
                key=key,
                stream=result.stream,
                problems=[result.error],
                detail=f"stopping (exit code {EXIT_CONFIG}); fix the file and start again"
                if key.startswith("salesforce.")
                else "this stream fails at every run until the file is fixed; the others go on",
            )
        if fatal:
            self.exit_code = EXIT_CONFIG
            self._begin_stop()

    def _on_scheduler_event(self, event: JobEvent) -> None:
        if event.job_id not in JOB_IDS:
            return
        if event.code == EVENT_JOB_MAX_INSTANCES:
            log.info(
                "job_skipped",
                job=event.job_id,
                detail="its previous run is still going; it runs again at the next tick after",
            )
        elif event.code == EVENT_JOB_MISSED:
            scheduled = getattr(event, "scheduled_run_time", None)
            log.warning(
                "job_missed",
                job=event.job_id,
                scheduled=_iso(scheduled),
                detail="the daemon was busy or down for longer than [schedule] "
                "misfire_grace_seconds after this run was due; it runs at its next time",
            )

    def _check_lock(self) -> bool:
        """Is the runner lock still held? If not, stop. Checked before every job and more
        often than the heartbeat logs: once a standby has taken over, every batch this
        runner still sends is sent twice."""
        assert self.lock is not None
        if self.lock.alive():
            return True
        if self.exit_code != EXIT_LOCK_LOST:
            log.error(
                "runner_lock_lost",
                lock=self.lock.description,
                detail="another runner may take over now; stopping after the batch in flight "
                f"(exit code {EXIT_LOCK_LOST}) so that two never export at once",
            )
            self.exit_code = EXIT_LOCK_LOST
            self._begin_stop()
        return False

    def _heartbeat(self) -> None:
        if self.stop.is_set():
            return
        scheduler = self.scheduler
        jobs = scheduler.get_jobs() if scheduler is not None else []
        log.info(
            "heartbeat",
            role="active",
            runner=holder_id(),
            busy=self._job_running.locked(),
            running=self._running.snapshot(),
            next_runs={j.id: _iso(j.next_run_time) for j in jobs if j.id in JOB_IDS},
            last_jobs=dict(self._last_jobs),
        )

    def _schedule(self, config: Config, *, reschedule: bool = False) -> None:
        assert self.scheduler is not None
        schedule = config.schedule
        common: dict[str, Any] = {
            "coalesce": True,
            "max_instances": 1,
            # APScheduler's default grace of 1 s would silently drop a daily run that comes
            # due while the export job is still busy on the single worker.
            "misfire_grace_time": schedule.misfire_grace_seconds,
            "replace_existing": True,
        }
        interval = IntervalTrigger(seconds=schedule.export_interval_seconds, timezone=UTC)
        cron = CronTrigger.from_crontab(schedule.reexport_cron, timezone=schedule.timezone)
        first = {} if reschedule else {"next_run_time": datetime.now(UTC)}
        for job_id, trigger, extra in zip(JOB_IDS, (interval, cron), (first, {}), strict=True):
            self.scheduler.add_job(
                self._job, trigger, args=[job_id], id=job_id, name=job_id, **common, **extra
            )
        beat = min(self.tuning.max_heartbeat_seconds, schedule.export_interval_seconds)
        check = min(self.tuning.max_standby_poll_seconds, schedule.export_interval_seconds)
        for job_id, func, seconds in (
            ("heartbeat", self._heartbeat, beat),
            ("lock_check", self._check_lock, check),
        ):
            self.scheduler.add_job(
                func,
                IntervalTrigger(seconds=seconds, timezone=UTC),
                id=job_id,
                executor="heartbeat",
                **common,
            )

    # ---- life cycle --------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("second_signal", signal=signal.Signals(signum).name, detail="exit now")
            _exit_now(128 + signum)
        log.info(
            "stopping",
            signal=signal.Signals(signum).name,
            detail="finishing the batch in flight; signal again to exit at once",
        )
        self._begin_stop()

    def _begin_stop(self) -> None:
        self.stop.set()
        self.metrics.active.set(0)
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    def _wait_for_lock(self, lock: RunnerLock) -> bool:
        assert self.config is not None
        poll = min(
            self.tuning.max_standby_poll_seconds, self.config.schedule.export_interval_seconds
        )
        beat = min(self.tuning.max_heartbeat_seconds, self.config.schedule.export_interval_seconds)
        announced = False
        last_beat = time.monotonic()
        while not lock.acquire():
            self.role = "standby"
            if not announced:
                log.info(
                    "standby",
                    lock=lock.description,
                    runner=holder_id(),
                    detail="another runner is active; taking over when it stops",
                )
                announced = True
            elif time.monotonic() - last_beat >= beat:
                # A standby is otherwise silent: show it is alive and still waiting.
                log.info("heartbeat", role="standby", runner=holder_id(), lock=lock.description)
                last_beat = time.monotonic()
            if self.stop.wait(poll):
                return False
        log.info("active", lock=lock.description, runner=holder_id())
        self.role = "active"
        self.metrics.active.set(1)
        return True

    def _state_database_ready(self, *, holding_lock: bool) -> bool:
        """Can the jobs use the state database? Logs why not.

        Before the lock only PostgreSQL is checked (read-only): an unreachable server would
        otherwise look like another runner holding the lock, and the daemon would wait as a
        standby forever. With the lock, a fresh SQLite file may also be set up.
        """
        assert self.config is not None
        url = self.config.database.url
        try:
            if holding_lock:
                migrate.ensure_schema(url)
            elif not is_sqlite(url):
                migrate.check_schema(url)
        except (CrmExportError, SQLAlchemyError) as exc:
            log.error(
                "cannot_start",
                error=str(exc),
                detail="the state database is not usable; fix it, then start the daemon again",
            )
            return False
        return True

    # ---- health, for /healthz and /readyz -----------------------------------------------

    def health(self) -> Health:
        """Alive and doing its job: waiting as a standby, or running its scheduler."""
        if self.stop.is_set():
            return Health(False, {"status": "stopping", "role": self.role})
        if self.role == "standby":
            return Health(True, {"status": "waiting for the runner lock", "role": self.role})
        scheduler = self.scheduler
        if self.role == "active" and scheduler is not None and scheduler.running:
            busy = self._job_running.locked()
            return Health(True, {"status": "running", "role": self.role, "busy": busy})
        return Health(False, {"status": "starting", "role": self.role})

    def readiness(self) -> Health:
        """Healthy and the active runner: the one exporting."""
        health = self.health()
        return Health(health.ok and self.role == "active", health.detail)

    def _start_metrics(self, config: Config) -> bool:
        self.metrics.know_streams(s.name for s in config.streams)
        address = config.metrics.address
        if address is None:
            return True
        host, port = address
        try:
            server = MetricsServer(host, port, self.metrics.registry, self.health, self.readiness)
        except OSError as exc:
            log.error(
                "cannot_start",
                key="metrics.listen",
                error=f"cannot listen on {config.metrics.listen}: {exc.strerror or exc}",
                detail="another process has that address, or this host does not have it; "
                "change metrics.listen or stop the other process",
            )
            return False
        server.start()
        self._metrics_server = server
        shown = f"[{host}]" if ":" in host else host
        log.info(
            "metrics_listening",
            url=f"http://{shown}:{server.port}",
            endpoints=["/metrics", "/healthz", "/readyz"],
        )
        return True

    def _stop_metrics(self) -> None:
        server, self._metrics_server = self._metrics_server, None
        if server is not None:
            server.stop()
        self.metrics.state.close()

    def run(self) -> int:
        self.config = load_config(self.config_path)
        # A table or column that does not exist is a mistake in the file: exit 2 at start.
        check_sources(self.config)
        if self.on_config is not None:
            self.on_config(self.config)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        if not self._start_metrics(self.config):
            return EXIT_START_FAILED
        try:
            return self._run()
        finally:
            self._stop_metrics()

    def _run(self) -> int:
        assert self.config is not None
        if not self._state_database_ready(holding_lock=False):
            return EXIT_START_FAILED
        self.lock = runner_lock(self.config.database.url)
        try:
            got_lock = self._wait_for_lock(self.lock)
        except CrmExportError as exc:
            log.error("cannot_start", error=str(exc), detail="the runner lock can not be taken")
            return EXIT_START_FAILED
        if not got_lock:
            log.info("daemon_stopped", exit_code=EXIT_STOPPED, detail="stopped while on standby")
            return EXIT_STOPPED
        if not self._state_database_ready(holding_lock=True):
            self.lock.release()
            return EXIT_START_FAILED
        self.metrics.state.watch(
            self.config.database.url,
            lambda: [s.name for s in self.config.streams] if self.config else [],
        )
        try:
            self.scheduler = BlockingScheduler(
                timezone=UTC,
                executors={
                    "default": ThreadPoolExecutor(1),
                    "heartbeat": ThreadPoolExecutor(1),
                },
            )
            self.scheduler.add_listener(
                self._on_scheduler_event, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED
            )
            _route_scheduler_logging()
            self._schedule(self.config)
            schedule = self.config.schedule
            log.info(
                "daemon_started",
                config=str(self.config.path),
                export_interval_seconds=schedule.export_interval_seconds,
                reexport_cron=schedule.reexport_cron,
                timezone=schedule.timezone,
                pause_on_error={s.name: s.pause_on_error for s in self.config.streams},
            )
            if not self.stop.is_set():
                self.scheduler.start()
            if not self._job_running.acquire(timeout=self.tuning.stop_timeout_seconds):
                log.warning(
                    "stop_timeout",
                    seconds=self.tuning.stop_timeout_seconds,
                    detail="the job in flight did not finish in time; exiting without it, "
                    "which is safe: every acknowledged batch is already committed",
                )
                # Releasing the runner lock while the job still writes would let a standby
                # start alongside it, and a normal exit would wait for the job's thread.
                # Dying releases the lock only once this process can no longer write.
                _exit_now(self.exit_code)
            self._job_running.release()
        finally:
            self.lock.release()
        log.info("daemon_stopped", exit_code=self.exit_code)
        return self.exit_code


class _ToStructlog(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        log.error("scheduler_error", logger=record.name, message=record.getMessage())


def _route_scheduler_logging() -> None:
    """Keep APScheduler's own stdlib log lines out of the JSON stream.

    Unconfigured, Python prints them as plain text on stderr, which breaks a log pipeline
    that parses every line as JSON. Its warnings (a run skipped or missed) reach the log as
    events through the scheduler listener instead; anything worse is forwarded.
    """
    scheduler_log = logging.getLogger("apscheduler")
    scheduler_log.handlers[:] = [_ToStructlog()]
    scheduler_log.setLevel(logging.ERROR)
    scheduler_log.propagate = False


def _exit_now(code: int) -> NoReturn:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
