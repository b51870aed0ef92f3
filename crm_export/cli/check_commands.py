"""``check``: the preflight check. It logs in, describes every stream's object (and its
lookups' parents), reads up to ``--rows`` source rows per stream, and reports what the org
would refuse, naming the stream and the config key. It writes nothing to Salesforce and
never opens the state database.

Exit codes: 0 nothing found, 1 problems found, 2 the config is invalid (or names a login
URL that cannot be right).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from crm_export import report as report_mod
from crm_export.errors import SourceError, TransientError
from crm_export.export import StreamPlan
from crm_export.export.outcome import null_order_error
from crm_export.export.presend import RowCheck, mapping_problems
from crm_export.mapping import MappingError, build_payload
from crm_export.ports import RecordError, Sink, SObjectDescribe, SourceRow

from .common import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, Commands, config_option, documented, load

if TYPE_CHECKING:
    from crm_export.store.sources import SourceReader

# How many record keys a finding quotes as examples.
EXAMPLES = 5
# Rows read per statement.
PAGE = 500


@dataclass
class Finding:
    key: str  # the config key, e.g. streams[0] ("contacts").fields.LastName
    code: str
    message: str  # the first occurrence's
    rows: int = 0  # how many of the rows read have it (0: the mapping itself)
    record_keys: list[str] = field(default_factory=list)


@dataclass
class StreamReport:
    stream: str
    sobject: str
    rows_read: int = 0
    problems: list[Finding] = field(default_factory=list)
    # The CREATE INDEX statement the source table needs for its keyset reads (a note, not a
    # problem: the export works without it, slowly on a large table).
    missing_index: str | None = None

    def note(self, key: str, error: RecordError, record_key: str) -> None:
        found = next((f for f in self.problems if (f.key, f.code) == (key, error.code)), None)
        if found is None:
            found = Finding(key, error.code, error.message)
            self.problems.append(found)
        found.rows += 1
        if len(found.record_keys) < EXAMPLES:
            found.record_keys.append(record_key)


def check_stream(plan: StreamPlan, sink: Sink, rows: Iterator[SourceRow]) -> StreamReport:
    """What the org would refuse of ``plan``: its mapping against describe, then each row."""
    fmap = plan.fmap
    result = StreamReport(plan.name, fmap.sobject)
    describe = sink.describe(fmap.sobject)
    parents = {lookup.sobject: sink.describe(lookup.sobject) for lookup in fmap.lookups}
    for problem in mapping_problems(fmap, describe, parents):
        result.problems.append(
            Finding(f"{plan.config_path}.{problem.key}", problem.code, problem.message)
        )
    if describe is None:
        return result
    check = RowCheck(fmap, describe)
    for row in rows:
        result.rows_read += 1
        for error in _row_errors(plan, check, row):
            result.note(_key_of(plan, describe, error), error, plan.record_key(row))
    return result


def _row_errors(plan: StreamPlan, check: RowCheck, row: SourceRow) -> list[RecordError]:
    # In the order the exporter meets them (sending.py): no place in the order, then what
    # the mapping cannot send, then what the org would refuse.
    if row.key is not None and row.order_value is None:
        return [null_order_error(plan)]
    try:
        payload = build_payload(plan.fmap, row)
    except MappingError as exc:
        return [exc.error]
    return check.problems(payload)


def _key_of(plan: StreamPlan, describe: SObjectDescribe, error: RecordError) -> str:
    """The config key a row's error is about: the entry that maps the field it names."""
    name = error.fields[0] if error.fields else ""
    fmap, source = plan.fmap, plan.source
    fdef = describe.field(name)
    same = name.casefold() if fdef is None else fdef.name.casefold()
    key = next((f"fields.{sf}" for sf, _ in fmap.fields if sf.casefold() == same), None)
    key = key or next(
        (f"lookups.{x.field}" for x in fmap.lookups if x.field.casefold() == same), None
    )
    if key is None:
        if name in (source.key, fmap.external_id_field):
            key = "key"
        elif name == source.order_by:
            key = "order_by"
        else:
            key = "fields"
    return f"{plan.config_path}.{key}"


def _rows(reader: SourceReader, plan: StreamPlan, limit: int) -> Iterator[SourceRow]:
    """The stream's first ``limit`` rows in its order, a page at a time."""
    after = None
    while limit > 0:
        asked = min(PAGE, limit)
        page = reader.read_batch(plan.source, after, asked)
        yield from page
        if len(page) < asked:
            return
        limit -= len(page)
        after = page[-1].position


def cmd_check(args: argparse.Namespace) -> int:
    from crm_export.store.sources import SourceReader
    from crm_export.wiring import check_sources, open_sink, stream_plan

    config = load(args)
    names = [s.name for s in config.streams]
    if args.stream is not None and args.stream not in names:
        print(
            f"crm-export: no stream named {args.stream!r} in {config.path} "
            f"(streams: {', '.join(names)})",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    check_sources(config)  # a missing table or column is a bad config: exit 2
    plans = [
        stream_plan(s, i)
        for i, s in enumerate(config.streams)
        if args.stream is None or s.name == args.stream
    ]
    reports: list[StreamReport] = []
    reader = SourceReader()
    try:
        with open_sink(config) as sink:
            for plan in plans:
                try:
                    checked = check_stream(plan, sink, _rows(reader, plan, args.rows))
                    checked.missing_index = reader.missing_keyset_index(plan.source)
                    reports.append(checked)
                except (SourceError, TransientError) as exc:
                    failed = StreamReport(plan.name, plan.fmap.sobject)
                    what = "table" if plan.source.table else "query"
                    failed.problems.append(
                        Finding(f"{plan.config_path}.{what}", "SOURCE_UNREADABLE", str(exc))
                    )
                    reports.append(failed)
            calls = sink.api_calls
    finally:
        reader.close()
    found = sum(len(r.problems) for r in reports)
    if args.json:
        body = {"ok": found == 0, "api_calls": calls, "streams": [asdict(r) for r in reports]}
        print(report_mod.to_json(body))
    else:
        _print(reports, found, calls)
    return EXIT_FAILED if found else EXIT_OK


def _print(reports: list[StreamReport], found: int, calls: int) -> None:
    streams = f"{len(reports)} stream{'s' * (len(reports) != 1)}"
    verdict = f"{found} problem{'s' * (found != 1)}" if found else "no problems"
    print(f"crm-export check: {streams}, {verdict} ({calls} API calls, nothing written)")
    for r in reports:
        print(f"\n{r.stream} -> {r.sobject}: {r.rows_read:,} rows read", end="")
        print(":" if r.problems else ", no problems")
        for f in r.problems:
            where = ""
            if f.rows:
                more = ", ..." if f.rows > len(f.record_keys) else ""
                where = (
                    f" in {f.rows:,} of {r.rows_read:,} rows "
                    f"(keys {', '.join(f.record_keys)}{more})"
                )
            message = f.message if len(f.message) <= 300 else f.message[:300] + "..."
            print(f"  {f.key}: {f.code}{where}: {message}")
        if r.missing_index is not None:
            print(
                "  note: the source table has no index for the export's reads, so each batch"
                f" scans and sorts the whole table; create one:\n    {r.missing_index};"
            )


def register(commands: Commands) -> None:
    check = commands.add_parser(
        "check",
        **documented(
            "preflight: check every stream's mapping and first rows against the org (log "
            "in, describe each object, read up to --rows rows per stream, and report what "
            "the org would refuse, naming the config key; writes nothing to Salesforce or "
            "the state database)",
            [
                "crm-export check --config crm-export.toml",
                "crm-export check --rows 5000 --stream contacts --json",
            ],
            {
                EXIT_OK: "no problems found",
                EXIT_FAILED: "problems found (each names its stream and config key)",
                EXIT_CONFIG: "the config is invalid, or a login URL cannot be right",
            },
        ),
    )
    config_option(check, top=False)
    check.add_argument(
        "--rows", type=int, default=1000, metavar="N", help="source rows read per stream"
    )
    check.add_argument("--stream", metavar="NAME", help="only this stream")
    check.add_argument("--json", action="store_true", help="print JSON for scripts")
    check.set_defaults(func=cmd_check)
