"""The ``crm-export`` command line.

Exit codes: 0 the command did its work (a run that paused, logged record errors, or was
deferred because the org's API usage reached [salesforce] max_api_usage_percent included:
nothing is wrong, a later run resumes), 1 a run failed or the state database needs
attention, 2 the config or the command line is invalid.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crm_export import __version__
from crm_export import report as report_mod
from crm_export.config import Config, Secret, load_config
from crm_export.errors import ConfigError, CrmExportError
from crm_export.logs import configure_logging
from crm_export.ports import JobId, RunOutcome
from crm_export.store.urls import is_sqlite

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def _config_option(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # On subcommands the default is SUPPRESS so that `crm-export --config X job ...` is not
    # overwritten by the subcommand's own default.
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=None if top else argparse.SUPPRESS,
        help="config file (default: $CRM_EXPORT_CONFIG)",
    )


def secrets_of(config: Config) -> list[str]:
    values = [getattr(config.salesforce, name) for name in type(config.salesforce).model_fields]
    return [v.reveal() for v in values if isinstance(v, Secret)]


def load(args: argparse.Namespace, *, secrets: bool = True) -> Config:
    """The config; ``secrets=False`` for commands that never talk to Salesforce, so that
    they work where the Salesforce secret is not available (see ``load_config``)."""
    config = load_config(args.config, secrets=secrets)
    configure_logging(config.logging.format, config.logging.level, secrets=secrets_of(config))
    return config


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
        results = JOBS[JobId(args.job_id)](config, None, resend_all=args.resend_all)
    finally:
        lock.release()
    for result in results:
        print(result.summary(), flush=True)
    failed = [r for r in results if r.outcome in (RunOutcome.FAILED, RunOutcome.INTERRUPTED)]
    return EXIT_FAILED if failed else EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from crm_export import demo

    directory = Path(args.dir)
    args.config = str(demo.prepare(directory))
    args.job_id, args.wait, args.resend_all = JobId.EXPORT, 0.0, False
    print(f"crm-export demo in {directory}/: CRMExport on the embedded defaults", flush=True)
    code = cmd_job(args)
    config = load_config(args.config)
    with _open_store(config) as store:
        paused = next((o["paused"] for o in store.stream_overview() if o["paused"]), None)
    cli = sys.argv[0] if Path(sys.argv[0]).name == "crm-export" else "python -m crm_export"
    print(demo.next_steps(directory, paused.record_key if paused else None, cli))
    return code


def cmd_run(args: argparse.Namespace) -> int:
    from crm_export.daemon import Daemon

    def on_config(config: Config) -> None:
        configure_logging(config.logging.format, config.logging.level, secrets=secrets_of(config))

    return Daemon(args.config, on_config=on_config).run()


def _open_store(config: Config) -> Any:
    from crm_export.wiring import open_store

    return open_store(config.database.url)


def _api_budget(config: Config, usage: dict[str, Any] | None) -> dict[str, Any]:
    """The org's usage as the last run saw it, and crm-export's line."""
    from crm_export.budget import ApiBudget

    percent = config.salesforce.max_api_usage_percent
    budget: dict[str, Any] = {"max_api_usage_percent": percent, "used": None, "max": None}
    budget.update(line=None, seen_at=None)
    if usage is not None:
        budget.update(usage, line=ApiBudget(percent).line(usage["max"]))
    return budget


def _pending(store: Any, source: Any, position: Any) -> int | None:
    try:
        return int(store.count_after(source, position))
    except CrmExportError:
        return None  # the source can not be read now; status still reports the rest


def cmd_status(args: argparse.Namespace) -> int:
    from crm_export.budget import forecast
    from crm_export.wiring import stream_plan

    config = load(args, secrets=False)
    batch_size = config.export.batch_size
    with _open_store(config) as store:
        overview = {o["stream"]: o for o in store.stream_overview()}
        budget = _api_budget(config, store.api_usage())
        report = []
        for stream in config.streams:
            item = overview.get(stream.name, {})
            paused = item.get("paused")
            position = item.get("position")
            source = stream_plan(stream).source
            pending = _pending(store, source, position)
            calls = None if pending is None else forecast(pending, batch_size)
            entry: dict[str, Any] = {
                "stream": stream.name,
                "pause_on_error": stream.pause_on_error,
                "position": None
                if position is None
                else {"order_by": position.order_value, "key": position.key},
                "paused": None,
                "last_run": item.get("last_run"),
                "open_errors": item.get("open_errors", 0),
                "forecast": None
                if calls is None
                else {
                    "pending_rows": calls.pending,
                    "collections_calls": calls.collections,
                    "bulk_calls_estimate": calls.bulk,
                },
                "api_budget": budget,
            }
            if paused is not None:
                entry["paused"] = {
                    "record_key": paused.record_key,
                    "since": paused.since,
                    "error_code": paused.error_code,
                    "error_message": paused.error_message,
                    # The paused record itself is the first row after the position.
                    "waiting_behind": None if pending is None else max(0, pending - 1),
                }
            report.append(entry)
    if args.json:
        print(report_mod.to_json(report))
        return EXIT_OK
    rows = [_status_row(e) for e in report]
    report_mod.render_table(
        "crm-export status",
        rows,
        ["stream", "state", "position", "last run", "open errors", "pending", "calls"],
        sys.stdout,
    )
    print(_budget_line(budget, report, batch_size))
    for e in report:
        if e["paused"]:
            p = e["paused"]
            print(
                f"{e['stream']}: paused since {p['since']:%Y-%m-%d %H:%M:%S} UTC at record "
                f"{p['record_key']}: {p['error_code']}: {p['error_message']} "
                f"({'?' if p['waiting_behind'] is None else p['waiting_behind']} rows wait "
                "behind it)"
            )
    return EXIT_OK


def _budget_line(budget: dict[str, Any], report: list[dict[str, Any]], batch_size: int) -> str:
    percent = budget["max_api_usage_percent"]
    if budget["used"] is None:
        usage = "the org's API usage: not seen yet (the first run that calls Salesforce sees it)"
    else:
        share = 100 * budget["used"] / budget["max"]
        usage = (
            f"the org's API usage: {budget['used']:,} of {budget['max']:,} daily calls "
            f"({share:.1f}%), as of {budget['seen_at']:%Y-%m-%d %H:%M:%S} UTC"
        )
    if percent >= 100:
        usage += "; crm-export's line: none (max_api_usage_percent = 100)"
    elif budget["line"] is not None:
        usage += f"; crm-export stops at {budget['line']:,} ({percent}%)"
    else:
        usage += f"; crm-export stops at {percent}% of it"
    forecasts = [e["forecast"] for e in report if e["forecast"] is not None]
    pending = sum(f["pending_rows"] for f in forecasts)
    collections = sum(f["collections_calls"] for f in forecasts)
    bulk = sum(f["bulk_calls_estimate"] for f in forecasts)
    return (
        f"{usage}.\nForecast: {pending:,} rows pending need at most {collections:,} "
        f"Collections calls (batches of {batch_size}; rows found unchanged cost none), or "
        f"about {bulk:,} Bulk API 2.0 calls (an estimate: create, upload, close, status "
        "polls and results per job of up to 100,000 records)."
    )


def _status_row(entry: dict[str, Any]) -> dict[str, Any]:
    run = entry["last_run"]
    position = entry["position"]
    forecast = entry["forecast"]
    return {
        "stream": entry["stream"],
        "state": "PAUSED" if entry["paused"] else "ok",
        "position": "-" if position is None else f"{position['order_by']} / {position['key']}",
        "last run": "never"
        if run is None
        else f"{run['job_id']} {run['outcome']} at {run['started_at']:%Y-%m-%d %H:%M:%S}"
        + (f" ({run['error']})" if run.get("error") else ""),
        "open errors": entry["open_errors"],
        "pending": "?" if forecast is None else f"{forecast['pending_rows']:,}",
        "calls": "?" if forecast is None else f"{forecast['collections_calls']:,}",
    }


ERROR_COLUMNS = [
    "id",
    "stream",
    "record_key",
    "sobject",
    "external_id",
    "error_code",
    "error_message",
    "error_fields",
    "payload",
    "attempts",
    "status",
    "first_failed_at",
    "last_failed_at",
    "resolved_at",
    "run_id",
]


def cmd_stream(args: argparse.Namespace) -> int:
    config = load(args, secrets=False)
    names = [s.name for s in config.streams]
    if args.name not in names:
        print(
            f"crm-export: stream {args.stream_command}: no stream named {args.name!r} in "
            f"{config.path} (its streams: {', '.join(names)})",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    with _open_store(config) as store:
        known = store.request_resync(args.name)
    print(
        f"{args.name}: the next CRMExport run starts over from the first row and sends "
        f"every row again, forgetting the {known:,} fingerprints of what Salesforce holds "
        "(as it goes, it records them anew). A run in progress finishes as it is."
    )
    return EXIT_OK


def cmd_errors(args: argparse.Namespace) -> int:
    config = load(args, secrets=False)
    if args.sql:
        print(report_mod.operator_queries(config.database.url), end="")
        return EXIT_OK
    with _open_store(config) as store:
        rows = store.list_errors(
            stream=args.stream, code=args.code, include_resolved=args.all, limit=args.limit
        )
    if args.csv:
        from crm_export.private_files import open_private

        # Keys, messages and payloads are personal data: the file is the user's alone.
        with open_private(args.csv, newline="") as out:
            report_mod.write_csv(rows, out, ERROR_COLUMNS)
        print(f"wrote {len(rows)} rows to {args.csv}")
    elif args.json:
        print(report_mod.to_json(rows))
    else:
        title = "ExportErrors" + ("" if args.all else " (open)")
        columns = ["id", "stream", "record_key", "error_code", "error_message", "attempts"]
        columns += ["first_failed_at", "last_failed_at"] + (["status"] if args.all else [])
        report_mod.render_table(title, rows, columns, sys.stdout)
    return EXIT_OK


def cmd_db(args: argparse.Namespace) -> int:
    from crm_export.store import migrations as migrate

    config = load(args, secrets=False)
    url = config.database.url
    if args.db_command == "upgrade":
        if args.sql:
            print(migrate.offline_sql(url, args.revision))
            return EXIT_OK
        migrate.upgrade(url, args.revision)
        print(f"state database is at revision {migrate.current(url)}")
    elif args.db_command == "downgrade":
        if args.sql:
            print(migrate.offline_sql(url, args.revision, downgrade=True))
            return EXIT_OK
        migrate.downgrade(url, args.revision)
        print(f"state database is at revision {migrate.current(url) or 'base (empty)'}")
    else:
        print(migrate.current(url) or "base (empty: run `crm-export db upgrade`)")
    return EXIT_OK


def example_config() -> str:
    """config.example.toml, as shipped in the package (the wheel has no repository beside it)."""
    from importlib import resources

    return (resources.files("crm_export") / "config.example.toml").read_text(encoding="utf-8")


def cmd_config(args: argparse.Namespace) -> int:
    sys.stdout.write(example_config())
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crm-export",
        description="Export SQL records into Salesforce, pausing or skipping on record errors.",
    )
    parser.add_argument("--version", action="version", version=f"crm-export {__version__}")
    _config_option(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    job = commands.add_parser(
        "job",
        help="run one job once, now, and print a line per stream",
        description="Run one job once, now, and print a line per stream: read N = exported "
        "+ unchanged + failed + paused + superseded (each row once), API calls and logins.",
        epilog="Exit codes: 0 the job ran (streams that paused, logged record errors, or were "
        "deferred because the org's API usage reached [salesforce] max_api_usage_percent "
        "included: a later run resumes them); 1 a stream failed or was interrupted; 2 bad "
        "config or command line. Example: crm-export job CRMExport --config crm-export.toml",
    )
    _config_option(job, top=False)
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
        "demo", help="try crm-export: sample data, SQLite and the sandbox org, one export"
    )
    demo.add_argument("--dir", default="crm-export-demo", help="where the demo files go")
    demo.set_defaults(func=cmd_demo, config=None)

    run = commands.add_parser("run", help="run the daemon: both jobs on their schedules")
    _config_option(run, top=False)
    run.set_defaults(func=cmd_run)

    status = commands.add_parser(
        "status",
        help="each stream: position, pause, last run, errors, pending rows; the API budget",
        description="Each stream's position, pause, last run, open errors and rows pending, "
        "and the org's API usage as the last run saw it, crm-export's line and a forecast "
        "of the calls the pending rows need. It reads the state database and the sources, "
        "never Salesforce.",
    )
    _config_option(status, top=False)
    status.add_argument("--json", action="store_true", help="print JSON for scripts")
    status.set_defaults(func=cmd_status)

    stream = commands.add_parser("stream", help="act on one stream's state")
    stream_commands = stream.add_subparsers(
        dest="stream_command", required=True, metavar="STREAM_COMMAND"
    )
    resync = stream_commands.add_parser(
        "resync",
        help="make the next CRMExport run resend the whole stream",
        description="Make the next CRMExport run of NAME start over from the first row and "
        "send every row again, whatever Salesforce is known to hold: for records edited or "
        "deleted in Salesforce by someone else, or an org refreshed from a sandbox. The run "
        "applies it in one transaction of its own, so a run in progress is never undercut.",
        epilog="Exit codes: 0 requested; 2 no stream NAME in the config. "
        "Example: crm-export stream resync contacts",
    )
    resync.add_argument("name", metavar="NAME", help="the stream, as named in the config")
    _config_option(resync, top=False)
    resync.set_defaults(func=cmd_stream)

    errors = commands.add_parser("errors", help="list ExportErrors rows (open ones by default)")
    _config_option(errors, top=False)
    errors.add_argument("--stream", help="only this stream")
    errors.add_argument("--code", help="only this error code, e.g. REQUIRED_FIELD_MISSING")
    errors.add_argument("--all", action="store_true", help="include resolved rows")
    errors.add_argument("--limit", type=int, help="at most this many rows")
    out = errors.add_mutually_exclusive_group()
    out.add_argument("--csv", metavar="FILE", help="write CSV, safe to open in a spreadsheet")
    out.add_argument("--json", action="store_true", help="print raw JSON")
    out.add_argument("--sql", action="store_true", help="print the operator's first queries")
    errors.set_defaults(func=cmd_errors)

    db = commands.add_parser("db", help="manage the state database schema (Alembic)")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    upgrade = db_commands.add_parser("upgrade", help="apply the migrations")
    upgrade.add_argument("revision", nargs="?", default="head")
    downgrade = db_commands.add_parser("downgrade", help="revert migrations")
    downgrade.add_argument("revision")
    for sub in (upgrade, downgrade):
        sub.add_argument("--sql", action="store_true", help="print the SQL instead (for DBAs)")
    current = db_commands.add_parser("current", help="print the schema revision")
    for sub in (upgrade, downgrade, current):
        _config_option(sub, top=False)
        sub.set_defaults(func=cmd_db)

    config = commands.add_parser("config", help="print an example config file to start from")
    config_commands = config.add_subparsers(
        dest="config_command", required=True, metavar="CONFIG_COMMAND"
    )
    example = config_commands.add_parser(
        "example",
        help="print the documented example config: crm-export config example > crm-export.toml",
    )
    example.set_defaults(func=cmd_config)

    from crm_export.sandbox.cli import add_commands as add_sandbox_commands

    add_sandbox_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "resend_all", False) and args.job_id != JobId.EXPORT:
        parser.error(
            f"--resend-all applies to {JobId.EXPORT} only: {args.job_id} always sends every "
            "record it reads"
        )
    try:
        code: int = args.func(args)
        return code
    except ConfigError as exc:
        print(f"crm-export: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except CrmExportError as exc:
        print(f"crm-export: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `crm-export errors --json | head`: the reader left; that is not an error.
        sys.stderr.close()
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
