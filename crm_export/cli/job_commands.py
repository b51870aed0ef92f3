"""The commands that run the jobs: ``job`` (one job, once, now), ``demo`` and ``run`` (the
daemon)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from crm_export.config import Config, load_config
from crm_export.logs import configure_logging
from crm_export.ports import JobId, RunOutcome
from crm_export.store.urls import is_sqlite
from crm_export.watch import Watch

from .common import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    Commands,
    config_option,
    documented,
    load,
    open_store,
    secrets_of,
)

JOB_CODES = {
    EXIT_OK: "every stream's run completed, paused (record errors are in ExportErrors), or "
    "was deferred because the org's API usage reached [salesforce] max_api_usage_percent "
    "(a later run resumes it)",
    EXIT_FAILED: "a run failed or was interrupted, another runner is active, or the state "
    "database needs attention",
    EXIT_CONFIG: "the config file or the command line is invalid, or a stream's table or "
    "column does not exist",
}


def cmd_job(args: argparse.Namespace) -> int:
    from crm_export.jobs import JOBS
    from crm_export.store import runner_lock
    from crm_export.wiring import check_sources

    config = load(args)
    check_sources(config)
    if not is_sqlite(config.database.url):
        from crm_export.store import migrations as migrate

        # An unreachable server also fails the lock attempt: say what is wrong with the
        # database instead of blaming a runner that may not exist.
        migrate.check_schema(config.database.url)
    lock = runner_lock(config.database.url)
    deadline = time.monotonic() + args.wait
    while not lock.acquire():
        if time.monotonic() >= deadline:
            print(
                f"crm-export: another runner is active on this state database "
                f"({lock.description}); {args.job_id} did not run. Wait for it with "
                "--wait SECONDS, or let the daemon run the job on its schedule.",
                file=sys.stderr,
            )
            return EXIT_FAILED
        time.sleep(min(1.0, args.wait))
    try:
        with watching(config) as watch:
            results = JOBS[JobId(args.job_id)](config, None, watch, resend_all=args.resend_all)
    finally:
        lock.release()
    for result in results:
        print(result.summary(), flush=True)
    if any(r.config_key for r in results):
        return EXIT_CONFIG
    failed = [r for r in results if r.outcome in (RunOutcome.FAILED, RunOutcome.INTERRUPTED)]
    return EXIT_FAILED if failed else EXIT_OK


@contextmanager
def watching(config: Config) -> Iterator[Watch]:
    """A live progress display per stream when stderr is a terminal; otherwise a
    ``progress`` log event per stream at most every 10 s."""
    from crm_export.progress import ProgressLog, TerminalProgress

    if not sys.stderr.isatty():
        yield ProgressLog()
        return
    from rich.console import Console

    logging = config.logging
    with TerminalProgress(Console(stderr=True)) as display:
        # Log lines print above the display, not through it (the proxy is no terminal, so
        # the format is chosen here from the real stderr).
        fmt = "console" if logging.format == "auto" else logging.format
        configure_logging(fmt, logging.level, stream=display.log_stream, secrets=secrets_of(config))
        try:
            yield display
        finally:
            configure_logging(logging.format, logging.level, secrets=secrets_of(config))


def cmd_demo(args: argparse.Namespace) -> int:
    from crm_export import demo

    directory = Path(args.dir)
    args.config = str(demo.prepare(directory))
    args.job_id, args.wait, args.resend_all = JobId.EXPORT, 0.0, False
    print(f"crm-export demo in {directory}/: CRMExport on the embedded defaults", flush=True)
    code = cmd_job(args)
    config = load_config(args.config)
    with open_store(config) as store:
        paused = next((o["paused"] for o in store.stream_overview() if o["paused"]), None)
    cli = sys.argv[0] if Path(sys.argv[0]).name == "crm-export" else "python -m crm_export"
    print(demo.next_steps(directory, paused.record_key if paused else None, cli))
    return code


def cmd_run(args: argparse.Namespace) -> int:
    from crm_export.daemon import Daemon

    def on_config(config: Config) -> None:
        configure_logging(config.logging.format, config.logging.level, secrets=secrets_of(config))

    return Daemon(args.config, on_config=on_config).run()


def register(commands: Commands) -> None:
    job = commands.add_parser(
        "job",
        **documented(
            "run one job once, now, and print a line per stream: read N = exported + "
            "unchanged + failed + paused + superseded (each row once), API calls and logins",
            [
                "crm-export job CRMExport --config crm-export.toml",
                "crm-export job CRMExport --resend-all  # even rows Salesforce already holds",
                "crm-export job CRMExport_ExportError --wait 600  # after the daemon's run",
            ],
            JOB_CODES,
        ),
    )
    config_option(job, top=False)
    job.add_argument("job_id", choices=[j.value for j in JobId])
    job.add_argument(
        "--resend-all",
        action="store_true",
        help="CRMExport only: send every row this run reads, even those whose payload "
        "Salesforce already holds (their fingerprints are replaced as records are accepted); "
        "to resend rows behind the position too, use `crm-export stream resync NAME`",
    )
    job.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long for another runner (the daemon) to release the state database",
    )
    job.set_defaults(func=cmd_job)

    demo = commands.add_parser(
        "demo",
        **documented(
            "try crm-export: sample data, SQLite and the sandbox org, one export",
            ["crm-export demo", "crm-export demo --dir /tmp/try-crm-export"],
            JOB_CODES,
        ),
    )
    demo.add_argument("--dir", default="crm-export-demo", help="where the demo files go")
    demo.set_defaults(func=cmd_demo, config=None)

    run = commands.add_parser(
        "run",
        **documented(
            "run the daemon: both jobs on their schedules",
            [
                "crm-export run --config /etc/crm-export/crm-export.toml",
                "CRM_EXPORT_CONFIG=crm-export.toml crm-export run",
            ],
            # daemon.py's EXIT_* (not imported here: every command builds these parsers, and
            # the daemon's imports are slow).
            {
                0: "stopped on request (SIGTERM or SIGINT), after the batch in flight",
                1: "could not start: the state database is unusable, "
                "the runner lock can not be taken, or metrics.listen is taken",
                2: "the config file is invalid at start (a bad edit later is "
                "logged and the last good config kept)",
                3: "lost the runner lock while active",
                128: "+ the signal number: a second signal, exit at once",
            },
        ),
    )
    config_option(run, top=False)
    run.set_defaults(func=cmd_run)
