"""The commands that look at the state database: ``status`` and ``errors``. They never talk
to Salesforce, so they work without its secret."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from crm_export import report as report_mod
from crm_export.classify import missing_parent
from crm_export.config import Config
from crm_export.counters import run_row_counts
from crm_export.errors import CrmExportError
from crm_export.ports import JobId, PausedRecord, Position, RecordError, RunOutcome

from .common import (
    EXIT_CONFIG,
    EXIT_OK,
    STATE_CODES,
    Commands,
    config_option,
    documented,
    load,
    open_store,
)

if TYPE_CHECKING:
    from crm_export.config import StreamConfig
    from crm_export.ports import StreamSource
    from crm_export.store import SqlStore


def cmd_status(args: argparse.Namespace) -> int:
    from crm_export.budget import forecast
    from crm_export.wiring import stream_plan

    config = load(args, secrets=False)
    batch_size = config.export.batch_size
    with open_store(config) as store:
        overview = {o["stream"]: o for o in store.stream_overview()}
        budget = _api_budget(config, store.api_usage())
        report = []
        for stream in config.streams:
            item = overview.get(stream.name, {})
            paused = item.get("paused")
            position = item.get("position")
            run = item.get("last_run")
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
                "last_run": run,
                "running": _running(store, stream, run, position)
                if run is not None and run["outcome"] == RunOutcome.RUNNING
                else None,
                "open_errors": item.get("open_errors", 0),
                "forecast": None
                if calls is None
                else {
                    "pending_rows": calls.pending,
                    "collections_calls": calls.collections,
                    "bulk_calls_estimate": calls.bulk,
                },
                "api_budget": budget,
                # Bulk API 2.0 jobs recorded and not acknowledged yet (the next run resumes
                # polling them; see docs/guarantees.md).
                "bulk_jobs_in_flight": [
                    {"job_id": j.job_id, "records": j.records, "created_at": j.created_at}
                    for j in store.open_bulk_jobs(stream.name)
                ],
                "missing_index": _missing_index(store, source),
            }
            if paused is not None:
                entry["paused"] = {
                    "record_key": paused.record_key,
                    "since": paused.since,
                    "error_code": paused.error_code,
                    "error_message": paused.error_message,
                    # The paused record itself is the first row after the position.
                    "waiting_behind": None if pending is None else max(0, pending - 1),
                    "waiting_for": _parent_waited_for(config, paused),
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
        for job in e["bulk_jobs_in_flight"]:
            print(
                f"{e['stream']}: Bulk API 2.0 job {job['job_id']} ({job['records']:,} records) "
                f"in flight since {job['created_at']:%Y-%m-%d %H:%M:%S} UTC; the next run "
                "resumes polling it"
            )
        if e["missing_index"]:
            print(
                f"{e['stream']}: the source table has no index for the export's reads, so each"
                f" batch scans and sorts the whole table; create one:\n  {e['missing_index']};"
            )
        if e["paused"]:
            p = e["paused"]
            print(
                f"{e['stream']}: paused since {p['since']:%Y-%m-%d %H:%M:%S} UTC at record "
                f"{p['record_key']}: {p['error_code']}: {p['error_message']} "
                f"({'?' if p['waiting_behind'] is None else p['waiting_behind']} rows wait "
                "behind it)"
            )
            parent = p["waiting_for"]
            if parent is not None:
                exported_by = " or ".join(parent["streams"]) or "no stream of this config"
                print(
                    f"  it waits for its parent {parent['sobject']} "
                    f"{parent['external_id_field']} = {parent['external_id']}, which is not in "
                    f"Salesforce yet (exported by {exported_by}); once the parent arrives, "
                    "the next run sends it"
                )
    return EXIT_OK


def _api_budget(config: Config, usage: dict[str, Any] | None) -> dict[str, Any]:
    """The org's usage as the last run saw it, and crm-export's line."""
    from crm_export.budget import ApiBudget

    percent = config.salesforce.max_api_usage_percent
    budget: dict[str, Any] = {"max_api_usage_percent": percent, "used": None, "max": None}
    budget.update(line=None, seen_at=None)
    if usage is not None:
        budget.update(usage, line=ApiBudget(percent).line(usage["max"]))
    return budget


def _missing_index(store: SqlStore, source: StreamSource) -> str | None:
    """The CREATE INDEX the source table needs (store/indexes.py), as the run warns."""
    try:
        return store.missing_keyset_index(source)
    except CrmExportError:
        return None  # the source can not be read now: _pending says so


def _pending(store: Any, source: Any, position: Any) -> int | None:
    try:
        return int(store.count_after(source, position))
    except CrmExportError:
        return None  # the source can not be read now; status still reports the rest


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


def _parent_waited_for(config: Config, paused: PausedRecord) -> dict[str, Any] | None:
    """The parent record a paused child waits for, when its error says which."""
    parent = missing_parent(RecordError(paused.error_code, paused.error_message))
    if parent is None:
        return None
    streams = [s.name for s in config.streams if s.sobject.lower() == parent.sobject.lower()]
    return {
        "sobject": parent.sobject,
        "external_id_field": parent.external_id_field,
        "external_id": parent.external_id,
        "streams": streams,
    }


def _running(
    store: SqlStore, stream: StreamConfig, run: dict[str, Any], position: Position | None
) -> dict[str, Any]:
    """A run in progress, from its export_runs row: its counters are committed with every
    batch, and what is left is counted from the position committed with them (for CRMExport;
    the re-export works off ExportErrors, so it has no total)."""
    from crm_export.wiring import stream_plan

    counts = run_row_counts(run)
    total = None
    if run["job_id"] == JobId.EXPORT:
        total = counts["read"] + store.count_after(stream_plan(stream).source, position)
    return {
        "run_id": run["id"],
        "job_id": run["job_id"],
        "started_at": run["started_at"],
        "runner": run["runner"],
        "done": counts["read"],
        "total": total,
        "counts": counts,
    }


def _state(entry: dict[str, Any]) -> str:
    running = entry["running"]
    if running is None:
        return "PAUSED" if entry["paused"] else "ok"
    done, total = running["done"], running["total"]
    progress = f"{done:,}" if total is None else f"{done:,} of {total:,}"
    job = "" if running["job_id"] == JobId.EXPORT else f" {running['job_id']}"
    return f"running{job}: {progress}" + (" (PAUSED)" if entry["paused"] else "")


def _status_row(entry: dict[str, Any]) -> dict[str, Any]:
    run = entry["last_run"]
    position = entry["position"]
    forecast = entry["forecast"]
    return {
        "stream": entry["stream"],
        "state": _state(entry),
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
    "closed_by",
    "close_reason",
]


def cmd_errors(args: argparse.Namespace) -> int:
    config = load(args, secrets=False)
    if args.sql:
        print(report_mod.operator_queries(config.database.url), end="")
        return EXIT_OK
    with open_store(config) as store:
        if args.stream is not None:
            known = {s.name for s in config.streams} | {
                o["stream"] for o in store.stream_overview()
            }
            if args.stream not in known:
                print(
                    f"crm-export: errors --stream {args.stream}: no such stream in "
                    f"{config.path} or the state database (streams: "
                    f"{', '.join(sorted(known)) or 'none'})",
                    file=sys.stderr,
                )
                return EXIT_CONFIG
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
    elif not rows and sys.stdout.isatty():
        which = " ".join(
            f"{name} {value}"
            for name, value in (("stream", args.stream), ("code", args.code))
            if value is not None
        )
        print(
            f"No {'' if args.all else 'open '}ExportErrors" + (f" for {which}." if which else ".")
        )
    else:
        title = "ExportErrors" + ("" if args.all else " (open)")
        columns = ["id", "stream", "record_key", "error_code", "error_message", "attempts"]
        columns += ["first_failed_at", "last_failed_at"] + (["status"] if args.all else [])
        report_mod.render_table(title, rows, columns, sys.stdout)
    return EXIT_OK


def register(commands: Commands) -> None:
    status = commands.add_parser(
        "status",
        **documented(
            "each stream: position, pause, last run, errors",
            [
                "crm-export status --config crm-export.toml",
                "crm-export status --json | jq '.[] | select(.paused)'",
            ],
            STATE_CODES,
        ),
    )
    config_option(status, top=False)
    status.add_argument("--json", action="store_true", help="print JSON for scripts")
    status.set_defaults(func=cmd_status)

    errors = commands.add_parser(
        "errors",
        **documented(
            "list ExportErrors rows (open ones by default)",
            [
                "crm-export errors --stream contacts",
                "crm-export errors --code REQUIRED_FIELD_MISSING --all",
                "crm-export errors --csv errors.csv  # for a spreadsheet",
                "crm-export errors --sql             # the same questions as SQL",
            ],
            {
                **STATE_CODES,
                EXIT_CONFIG: "the config or the command line is invalid, or --stream names "
                "a stream that is neither in the config nor in the state database",
            },
        ),
    )
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
