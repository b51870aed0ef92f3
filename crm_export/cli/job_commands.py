"""The commands that run the jobs: ``job`` (one job, once, now), ``demo`` and ``run`` (the
daemon)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from crm_export.config import Config, load_config
from crm_export.logs import configure_logging
from crm_export.ports import JobId, RunOutcome
from crm_export.store.urls import is_sqlite

from .common import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    Commands,
    config_option,
    load,
    open_store,
    secrets_of,
)


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
        results = JOBS[JobId(args.job_id)](config, None)
    finally:
        lock.release()
    for result in results:
        print(result.summary(), flush=True)
    if any(r.config_key for r in results):
        return EXIT_CONFIG
    failed = [r for r in results if r.outcome in (RunOutcome.FAILED, RunOutcome.INTERRUPTED)]
    return EXIT_FAILED if failed else EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from crm_export import demo

    directory = Path(args.dir)
    args.config = str(demo.prepare(directory))
    args.job_id, args.wait = JobId.EXPORT, 0.0
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
    job = commands.add_parser("job", help="run one job once, now, and print a line per stream")
    config_option(job, top=False)
    job.add_argument("job_id", choices=[j.value for j in JobId])
    job.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long for another runner (the daemon) to release the state database",
    )
    job.set_defaults(func=cmd_job)

    demo = commands.add_parser(
        "demo", help="try crm-export: sample data, SQLite and the sandbox org, one export"
    )
    demo.add_argument("--dir", default="crm-export-demo", help="where the demo files go")
    demo.set_defaults(func=cmd_demo, config=None)

    run = commands.add_parser("run", help="run the daemon: both jobs on their schedules")
    config_option(run, top=False)
    run.set_defaults(func=cmd_run)
