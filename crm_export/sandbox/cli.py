"""``crm-export sandbox serve`` and ``crm-export sandbox records``.

``add_commands`` plugs them into the main CLI; ``main`` runs them standalone
(``python -m crm_export.sandbox.cli serve``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import sys
import threading
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crm_export.sandbox import DEFAULT_PORT, STATE_FILE_NAME, default_state_dir

# The server, its TLS and the admin client are imported by the commands that use them, not
# here: the main CLI builds these parsers on every run.

SYSTEM_COLUMNS = {"CreatedDate", "LastModifiedDate", "SystemModstamp"}
MAX_CELL = 32
# Enough to check a mapping by eye; an export of 50,000 rows is not a screen to scroll.
DEFAULT_RECORDS_LIMIT = 20


SERVE_CODES = {
    0: "stopped with Ctrl+C or SIGTERM",
    2: "an invalid org file, faults or --data file, or the port is taken",
}


def _epilog(examples: list[str], codes: dict[int, str]) -> dict[str, Any]:
    """``add_parser`` keywords for a --help that ends with examples and exit codes (as the
    main CLI's commands do; this module stays importable without it)."""
    lines = ["examples:", *(f"  {e}" for e in examples), "", "exit codes:"]
    lines += [f"  {code}  {meaning}" for code, meaning in codes.items()]
    return {"epilog": "\n".join(lines), "formatter_class": argparse.RawDescriptionHelpFormatter}


def _whole_number(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"a whole number >= 0, not {text!r}")
    return int(text)


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sandbox = subparsers.add_parser(
        "sandbox",
        help="run a local Salesforce sandbox org to rehearse a mapping",
        description="A local HTTPS emulator of the Salesforce APIs crm-export uses.",
        **_epilog(
            ["crm-export sandbox serve --port 8443", "crm-export sandbox records --limit 50"],
            SERVE_CODES,
        ),
    )
    commands = sandbox.add_subparsers(dest="sandbox_command", metavar="COMMAND", required=True)

    serve_parser = commands.add_parser(
        "serve",
        help="serve a sandbox org in the foreground until Ctrl+C",
        description="Serve a sandbox org in the foreground until Ctrl+C.",
        **_epilog(
            [
                "crm-export sandbox serve",
                "crm-export sandbox serve --port 0 --data records.db --org my-org.toml",
                'crm-export sandbox serve --faults \'{"http_error_rate": {"503": 0.1}}\'',
            ],
            SERVE_CODES,
        ),
    )
    serve_parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port on 127.0.0.1 (default {DEFAULT_PORT}; 0 picks a free one)",
    )
    serve_parser.add_argument(
        "--org", metavar="ORG_FILE", help="org file (TOML); default: the built-in org"
    )
    serve_parser.add_argument(
        "--data", metavar="FILE", type=Path, help="keep records in this SQLite file across restarts"
    )
    serve_parser.add_argument("--seed", type=int, default=0, help="seed of the random faults")
    serve_parser.add_argument(
        "--faults",
        metavar="FAULTS_FILE_OR_JSON",
        help="fault options: a JSON/TOML file or inline JSON",
    )
    serve_parser.add_argument(
        "--state-dir",
        type=Path,
        help=f"where the CA and state file go (default {default_state_dir()})",
    )
    serve_parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    serve_parser.set_defaults(func=serve)

    records_parser = commands.add_parser(
        "records",
        help="show a running sandbox's records, rejected records and counters",
        description="Show a running sandbox's records, rejected records and counters.",
        **_epilog(
            [
                "crm-export sandbox records",
                "crm-export sandbox records --sobject Contact --limit 100",
                "crm-export sandbox records --json --limit 0 > everything.json",
            ],
            {
                0: "shown",
                1: "no sandbox is running there, or it can not be reached",
                2: "the command line is invalid (--url without --ca, a bad --limit)",
            },
        ),
    )
    records_parser.add_argument(
        "--url", help="base URL of the sandbox (default: from the state dir)"
    )
    records_parser.add_argument("--ca", help="its CA certificate file (needed with --url)")
    records_parser.add_argument("--sobject", help="only this object")
    records_parser.add_argument(
        "--limit",
        type=_whole_number,
        default=DEFAULT_RECORDS_LIMIT,
        metavar="N",
        help=f"show the first N records of each object and the newest N rejected records "
        f"(default {DEFAULT_RECORDS_LIMIT}; 0 shows all)",
    )
    records_parser.add_argument("--json", action="store_true", help="print raw JSON")
    records_parser.add_argument("--state-dir", type=Path, help="state dir given to serve")
    records_parser.set_defaults(func=records)


def _load_faults(value: str | None) -> dict[str, Any]:
    from crm_export.sandbox.faults import FaultsError

    if not value:
        return {}
    path = Path(value)
    try:
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            loaded = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        else:
            loaded = json.loads(value)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise FaultsError([f"--faults: neither a readable file nor valid JSON: {exc}"]) from exc
    if not isinstance(loaded, dict):
        raise FaultsError(["--faults: must be a JSON object / TOML table of options"])
    return loaded


def serve(args: argparse.Namespace) -> int:
    from crm_export.sandbox.faults import FaultsError
    from crm_export.sandbox.org import OrgError
    from crm_export.sandbox.server import SandboxServer

    state_dir = (args.state_dir or default_state_dir()).resolve()
    try:
        server = SandboxServer(
            org=args.org,
            faults=_load_faults(args.faults),
            seed=args.seed,
            data=args.data,
            port=args.port,
            state_dir=state_dir,
            verbose=args.verbose,
        )
    except (OrgError, FaultsError) as exc:
        print(f"crm-export sandbox: {exc}", file=sys.stderr)
        return 2
    except sqlite3.Error as exc:
        print(f"crm-export sandbox: cannot use --data {args.data}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(
            f"crm-export sandbox: cannot listen on 127.0.0.1:{args.port}: {exc.strerror}",
            file=sys.stderr,
        )
        return 2

    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    state_file = state_dir / STATE_FILE_NAME
    server.start()
    try:
        # Written aside, then renamed: a reader never sees a half-written file.
        partial = state_file.with_name(f"{STATE_FILE_NAME}.tmp")
        partial.write_text(
            json.dumps(
                {"base_url": server.base_url, "ca_path": server.ca_path, "pid": os.getpid()}
            ),
            encoding="utf-8",
        )
        os.replace(partial, state_file)
        org = server.state.org
        client = org.default_client
        user = org.default_user
        lines = [
            f"Sandbox org listening on {server.base_url}",
            f"CA certificate (clients must trust it): {server.ca_path}",
        ]
        if client is not None:
            lines.append(
                f"Client: client_id={client.client_id} client_secret={client.client_secret}"
            )
        if user is not None:
            lines.append(f"User: username={user.username} password={user.password}")
        if args.data:
            lines.append(f"Records are kept in {Path(args.data).resolve()}")
        lines.append("Press Ctrl+C to stop.")
        print("\n".join(lines), flush=True)
        stop.wait()
    finally:
        server.stop()
        state_file.unlink(missing_ok=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("Sandbox org stopped.", flush=True)
    return 0


def records(args: argparse.Namespace) -> int:
    from crm_export.sandbox.admin_client import AdminClient, SandboxAdminError

    try:
        if args.url:
            if not args.ca:
                print("crm-export sandbox records: --url needs --ca", file=sys.stderr)
                return 2
            client = AdminClient(args.url, args.ca)
        else:
            client = AdminClient.from_state_dir(args.state_dir)
        limit = args.limit or None
        stored = client.records(args.sobject, limit)
        if args.sobject:
            stored = {args.sobject: stored}
        if args.sobject:
            rejections = [
                r for r in client.rejections() if r["sobject"].lower() == args.sobject.lower()
            ]
            rejections = rejections[len(rejections) - limit :] if limit else rejections
        else:
            rejections = client.rejections(limit=limit)
        counters = client.counters()
    except (FileNotFoundError, SandboxAdminError) as exc:
        print(f"crm-export sandbox records: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"crm-export sandbox records: cannot reach the sandbox: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(
            json.dumps(
                {"records": stored, "rejections": rejections, "counters": counters}, indent=2
            )
        )
        return 0
    print(render_report(stored, rejections, counters, _rejected_total(counters, args.sobject)))
    return 0


def _rejected_total(counters: dict[str, Any], sobject: str | None) -> int:
    if sobject is None:
        return int(counters.get("records", {}).get("failed", 0))
    by_sobject = {k.lower(): v for k, v in counters.get("by_sobject", {}).items()}
    return int(by_sobject.get(sobject.lower(), {}).get("failed", 0))


def _cell(value: Any) -> str:
    text = (
        "" if value is None else json.dumps(value) if isinstance(value, dict | list) else str(value)
    )
    text = " ".join(text.split())
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return lines


def render_report(
    stored: dict[str, list[dict[str, Any]]],
    rejections: list[dict[str, Any]],
    counters: dict[str, Any],
    rejected_total: int | None = None,
) -> str:
    """What ``records`` prints. ``counters["stored"]`` and ``rejected_total`` say how many
    there are, when only some were fetched."""
    out: list[str] = []
    totals = {name.lower(): n for name, n in counters.get("stored", {}).items()}
    for sobject, rows in stored.items():
        total = totals.get(sobject.lower(), len(rows))
        line = f"{sobject}: {total} record{'s' if total != 1 else ''}"
        if len(rows) < total:
            line += f" (the first {len(rows)}; --limit N shows more, --limit 0 all)"
        out.append(line)
        columns: list[str] = ["Id"]
        for row in rows:
            columns += [k for k in row if k not in columns and k not in SYSTEM_COLUMNS]
        if rows:
            out += _table(columns, [[_cell(row.get(c)) for c in columns] for row in rows])
        out.append("")
    if not stored:
        out += ["No records stored.", ""]
    total = len(rejections) if rejected_total is None else max(rejected_total, len(rejections))
    line = f"Rejected records: {total}"
    if len(rejections) < total:
        line += f" (the newest {len(rejections)}; --limit N shows more, --limit 0 all)"
    out.append(line)
    if rejections:
        table_rows = []
        for entry in rejections:
            errors = entry.get("errors") or [{}]
            first = errors[0]
            message = f"{first.get('statusCode')}: {first.get('message')}"
            if len(errors) > 1:
                message += f" (+{len(errors) - 1} more)"
            table_rows.append(
                [
                    str(entry.get("seq")),
                    str(entry.get("sobject")),
                    _cell(entry.get("external_id")),
                    str(entry.get("endpoint")),
                    message,
                ]
            )
        out += _table(["seq", "sobject", "external id", "endpoint", "error"], table_rows)
    out.append("")
    usage = counters.get("api_usage", {})
    out.append(f"API usage: {usage.get('used')}/{usage.get('max')}")
    calls = counters.get("calls", {})
    out.append("Calls: " + (", ".join(f"{k}={v}" for k, v in calls.items()) or "none"))
    record_counts = counters.get("records", {})
    out.append("Records: " + ", ".join(f"{k}={v}" for k, v in record_counts.items()))
    faults = counters.get("faults", {})
    out.append("Faults injected: " + (", ".join(f"{k}={v}" for k, v in faults.items()) or "none"))
    transport = counters.get("transport")
    if transport:
        out.append("Connections: " + ", ".join(f"{k}={v}" for k, v in transport.items()))
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crm-export")
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sandbox`` subcommands standalone: ``python -m crm_export.sandbox.cli serve``."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments or arguments[0] != "sandbox":
        arguments.insert(0, "sandbox")
    args = build_parser().parse_args(arguments)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
