"""The commands that look at the state database: ``status`` and ``errors``. They never talk
to Salesforce, so they work without its secret."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from crm_export import report as report_mod

from .common import EXIT_OK, Commands, config_option, load, open_store


def cmd_status(args: argparse.Namespace) -> int:
    from crm_export.wiring import stream_plan

    config = load(args, secrets=False)
    with open_store(config) as store:
        overview = {o["stream"]: o for o in store.stream_overview()}
        report = []
        for stream in config.streams:
            item = overview.get(stream.name, {})
            paused = item.get("paused")
            position = item.get("position")
            entry: dict[str, Any] = {
                "stream": stream.name,
                "pause_on_error": stream.pause_on_error,
                "position": None
                if position is None
                else {"order_by": position.order_value, "key": position.key},
                "paused": None,
                "last_run": item.get("last_run"),
                "open_errors": item.get("open_errors", 0),
            }
            if paused is not None:
                waiting = store.count_after(stream_plan(stream).source, position)
                entry["paused"] = {
                    "record_key": paused.record_key,
                    "since": paused.since,
                    "error_code": paused.error_code,
                    "error_message": paused.error_message,
                    # The paused record itself is the first row after the position.
                    "waiting_behind": max(0, waiting - 1),
                }
            report.append(entry)
    if args.json:
        print(report_mod.to_json(report))
        return EXIT_OK
    rows = [_status_row(e) for e in report]
    report_mod.render_table(
        "crm-export status",
        rows,
        ["stream", "state", "position", "last run", "open errors"],
        sys.stdout,
    )
    for e in report:
        if e["paused"]:
            p = e["paused"]
            print(
                f"{e['stream']}: paused since {p['since']:%Y-%m-%d %H:%M:%S} UTC at record "
                f"{p['record_key']}: {p['error_code']}: {p['error_message']} "
                f"({p['waiting_behind']} rows wait behind it)"
            )
    return EXIT_OK


def _status_row(entry: dict[str, Any]) -> dict[str, Any]:
    run = entry["last_run"]
    position = entry["position"]
    return {
        "stream": entry["stream"],
        "state": "PAUSED" if entry["paused"] else "ok",
        "position": "-" if position is None else f"{position['order_by']} / {position['key']}",
        "last run": "never"
        if run is None
        else f"{run['job_id']} {run['outcome']} at {run['started_at']:%Y-%m-%d %H:%M:%S}"
        + (f" ({run['error']})" if run.get("error") else ""),
        "open errors": entry["open_errors"],
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
    "closed_by",
    "close_reason",
]


def cmd_errors(args: argparse.Namespace) -> int:
    config = load(args, secrets=False)
    if args.sql:
        print(report_mod.operator_queries(config.database.url), end="")
        return EXIT_OK
    with open_store(config) as store:
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


def register(commands: Commands) -> None:
    status = commands.add_parser("status", help="each stream: position, pause, last run, errors")
    config_option(status, top=False)
    status.add_argument("--json", action="store_true", help="print JSON for scripts")
    status.set_defaults(func=cmd_status)

    errors = commands.add_parser("errors", help="list ExportErrors rows (open ones by default)")
    config_option(errors, top=False)
    errors.add_argument("--stream", help="only this stream")
    errors.add_argument("--code", help="only this error code, e.g. REQUIRED_FIELD_MISSING")
    errors.add_argument("--all", action="store_true", help="include resolved rows")
    errors.add_argument("--limit", type=int, help="at most this many rows")
    out = errors.add_mutually_exclusive_group()
    out.add_argument("--csv", metavar="FILE", help="write CSV, safe to open in a spreadsheet")
    out.add_argument("--json", action="store_true", help="print raw JSON")
    out.add_argument("--sql", action="store_true", help="print the operator's first queries")
    errors.set_defaults(func=cmd_errors)
