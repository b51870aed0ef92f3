"""The ``crm-export`` command line.

Exit codes: 0 the command did its work (a run that paused or logged record errors included),
1 a run failed or the state database needs attention, 2 the config or the command line is
invalid.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from crm_export import __version__
from crm_export.config import Config, Secret, load_config
from crm_export.errors import ConfigError, CrmExportError
from crm_export.logs import configure_logging
from crm_export.ports import RunOutcome

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
    values = [
        getattr(config.salesforce, f.name) for f in config.salesforce.__dataclass_fields__.values()
    ]
    return [v.reveal() for v in values if isinstance(v, Secret)]


def load(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    configure_logging(config.logging.format, config.logging.level, secrets=secrets_of(config))
    return config


def cmd_job(args: argparse.Namespace) -> int:
    from jobs import JOBS

    config = load(args)
    results = JOBS[args.job_id](config, None)
    for result in results:
        print(result.summary(), flush=True)
    failed = [r for r in results if r.outcome in (RunOutcome.FAILED, RunOutcome.INTERRUPTED)]
    return EXIT_FAILED if failed else EXIT_OK


def cmd_db(args: argparse.Namespace) -> int:
    from crm_export import migrate

    config = load(args)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crm-export",
        description="Export SQL records into Salesforce, pausing or skipping on record errors.",
    )
    parser.add_argument("--version", action="version", version=f"crm-export {__version__}")
    _config_option(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    job = commands.add_parser("job", help="run one job once, now, and print a line per stream")
    _config_option(job, top=False)
    job.add_argument("job_id", choices=["CRMExport", "CRMExport_ExportError"])
    job.set_defaults(func=cmd_job)

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

    from crm_export.sandbox.cli import add_commands as add_sandbox_commands

    add_sandbox_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
