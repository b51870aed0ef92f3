"""``crm-export demo``: the README's first command.

Sets up the embedded defaults in a directory (a sample source table, a SQLite state database,
and a config that starts the sandbox org in-process), runs CRMExport once, and explains what
happened and what to do next. Run again, it runs CRMExport again on the same directory.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

ACCOUNTS = [
    # id (the external ID), name
    ("ACME", "Acme Corporation"),
    ("GLOBEX", "Globex"),
    ("INITECH", "Initech"),
]

SAMPLE = [
    # id, first name, last name, email, title, account (by its external ID)
    (1, "Ada", "Lovelace", "ada@acme.test", "CTO", "ACME"),
    (2, "Grace", "Hopper", "grace@acme.test", "Rear Admiral", "GLOBEX"),
    (3, "Alan", "Turing", "alan@acme.test", "Researcher", "ACME"),
    (4, "Katherine", "Johnson", "katherine@acme.test", "Mathematician", "INITECH"),
    (5, "Edsger", "Dijkstra", "edsger@acme.test", "Professor", None),
    (6, "Barbara", "Liskov", "barbara@acme.test", "Professor", "GLOBEX"),
    (7, "Donald", "Knuth", "don@acme.test", "Author", "ACME"),
    # The sandbox org's validation rule rejects example.invalid addresses.
    (8, "Maria", "Garcia", "maria.garcia@example.invalid", "Buyer", "INITECH"),
    (9, "Ken", "Thompson", "ken@acme.test", "Engineer", "ACME"),
    (10, "Dennis", "Ritchie", "dennis@acme.test", "Engineer", "ACME"),
    # Its Apex-like trigger fails on this last name.
    (11, "Tess", "TriggerFail", "tess@acme.test", "Analyst", "GLOBEX"),
    (12, "Margaret", "Hamilton", "margaret@acme.test", "Director", None),
    # Not an email address at all.
    (13, "Linus", "Torvalds", "linus-at-acme", "Maintainer", "INITECH"),
    (14, "Frances", "Allen", "frances@acme.test", "Fellow", "ACME"),
    (15, "John", "Backus", "john@acme.test", "Engineer", "GLOBEX"),
]

CONFIG = """\
# The embedded defaults: a SQLite state database, the sample source table in app.db, and the
# local sandbox org, started in-process (its records are kept in sandbox-records.db).
# Every key is documented in the example config: crm-export config example.

[database]
url = "sqlite:///state.db"

[export]
pause_on_error = true
batch_size = 200

[logging]
format = "console"
level = "warning"

[sandbox]
enabled = true
data_file = "sandbox-records.db"

# Contacts are written first here, yet run second: their AccountId lookup points at Account,
# which the accounts stream exports, so Salesforce has each parent before its children.
[[streams]]
name = "contacts"
table = "contacts"
source_url = "sqlite:///app.db"
key = "id"
order_by = "updated_at"
sobject = "Contact"
external_id_field = "External_Id__c"

[streams.fields]
FirstName = "first_name"
LastName = "last_name"
Email = "email"
Title = "title"

[streams.lookups]
AccountId = { sobject = "Account", external_id_field = "External_Id__c", column = "account_id" }

[[streams]]
name = "accounts"
table = "accounts"
source_url = "sqlite:///app.db"
key = "id"
order_by = "updated_at"
sobject = "Account"
external_id_field = "External_Id__c"

[streams.fields]
Name = "name"
"""


def prepare(directory: Path) -> Path:
    """Create the demo directory (once) and return its config file."""
    config = directory / "crm-export.toml"
    if config.exists():
        return config
    directory.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(directory / "app.db") as db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS accounts (id TEXT PRIMARY KEY, name TEXT, "
            "updated_at TEXT NOT NULL)"
        )
        db.executemany(
            "INSERT OR REPLACE INTO accounts VALUES (?, ?, '2026-01-01 08:00:00')", ACCOUNTS
        )
        db.execute(
            "CREATE TABLE IF NOT EXISTS contacts (id INTEGER PRIMARY KEY, first_name TEXT, "
            "last_name TEXT, email TEXT, title TEXT, account_id TEXT, updated_at TEXT NOT NULL)"
        )
        db.executemany(
            "INSERT OR REPLACE INTO contacts VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(*row, f"2026-01-01 09:00:{row[0]:02d}") for row in SAMPLE],
        )
        # What every source table wants (the README's production section): the export
        # reads in (order_by, key) order, and without this index each batch sorts the table.
        for table in ("accounts", "contacts"):
            db.execute(
                f"CREATE INDEX IF NOT EXISTS ix_{table}_updated_at_id ON {table} (updated_at, id)"
            )
    config.write_text(CONFIG)
    return config


def next_steps(directory: Path, paused_key: str | None, cli: str) -> str:
    d = directory
    lines = ["", "What to look at next:", ""]
    lines += [
        "  The failures, in plain SQL (sqlite3 or any SQLite client):",
        f'    sqlite3 {d}/state.db "SELECT stream, record_key, error_code, error_message, '
        'attempts, resolved_at FROM ExportErrors"',
        f"    {cli} errors --config {d}/crm-export.toml",
        f"    {cli} status --config {d}/crm-export.toml",
        "",
    ]
    if paused_key is not None:
        lines += [
            f"  The stream is paused at record {paused_key}: nothing ordered after it was sent.",
            "  Fix the source row, then run the job again; the record goes first, then the",
            "  rows behind it:",
            f"    sqlite3 {d}/app.db \"UPDATE contacts SET email = 'maria@acme.test', "
            f'updated_at = CURRENT_TIMESTAMP WHERE id = {paused_key}"',
            f"    {cli} job CRMExport --config {d}/crm-export.toml",
            "",
            "  Or let the daily re-export of every ExportErrors row pick the fix up now:",
            f"    {cli} job CRMExport_ExportError --config {d}/crm-export.toml",
            "",
            "  To skip failing records instead of pausing, set pause_on_error = false in",
            f"  {d}/crm-export.toml and run the job again.",
            "",
        ]
    lines += [
        "  Run it as a service (both jobs on their schedules; Ctrl-C stops it cleanly):",
        f"    {cli} run --config {d}/crm-export.toml",
    ]
    return "\n".join(lines)
