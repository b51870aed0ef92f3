"""``db upgrade | downgrade | current``: the state database's schema (Alembic). They never
talk to Salesforce, so they work without its secret."""

from __future__ import annotations

import argparse

from .common import EXIT_OK, STATE_CODES, Commands, config_option, documented, load

DB_CODES = {
    **STATE_CODES,
    1: "the state database is unreachable, or a migration failed (nothing of it is applied)",
}


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


def register(commands: Commands) -> None:
    db = commands.add_parser(
        "db",
        **documented(
            "manage the state database schema (Alembic)",
            ["crm-export db upgrade", "crm-export db current"],
            DB_CODES,
        ),
    )
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    upgrade = db_commands.add_parser(
        "upgrade",
        **documented(
            "apply the migrations",
            [
                "crm-export db upgrade --config crm-export.toml",
                "crm-export db upgrade --sql > upgrade.sql  # for a DBA to review and run",
            ],
            DB_CODES,
        ),
    )
    upgrade.add_argument("revision", nargs="?", default="head")
    downgrade = db_commands.add_parser(
        "downgrade",
        **documented(
            "revert migrations",
            ["crm-export db downgrade 0001", "crm-export db downgrade base --sql"],
            DB_CODES,
        ),
    )
    downgrade.add_argument("revision")
    for sub in (upgrade, downgrade):
        sub.add_argument("--sql", action="store_true", help="print the SQL instead (for DBAs)")
    current = db_commands.add_parser(
        "current",
        **documented("print the schema revision", ["crm-export db current"], DB_CODES),
    )
    for sub in (upgrade, downgrade, current):
        config_option(sub, top=False)
        sub.set_defaults(func=cmd_db)
