"""``verify NAME [--sample N | --all]``: read a stream's records back from Salesforce by
external ID and compare every mapped field with the source row as Salesforce would store
it (``crm_export.verify``). It reports records missing in Salesforce, fields that differ
(edited in Salesforce, or rewritten by a trigger), and records Salesforce holds that
crm-export never acknowledged. Read-only on both sides.

Exit codes: 0 everything checked matches, 1 problems found, 2 invalid config.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from typing import Any

from crm_export import report as report_mod
from crm_export.export import StreamPlan
from crm_export.export.presend import mapping_problems, mismatch
from crm_export.mapping import MappingError, build_payload
from crm_export.ports import ErrorStatus, Sink, SObjectDescribe, SourceRow
from crm_export.verify import Findings, differences, fold_id, queries

from .common import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    Commands,
    config_option,
    documented,
    load,
    open_store,
)

# Source rows read, and records asked of Salesforce, per round.
PAGE = 200


def _scan(store: Any, plan: StreamPlan, after: Any = None) -> Iterator[list[SourceRow]]:
    while page := store.read_batch(plan.source, after, 1000):
        yield page
        if len(page) < 1000:
            return
        after = page[-1].position


def _sample(store: Any, plan: StreamPlan, size: int | None) -> Iterator[list[SourceRow]]:
    """Pages of the rows to check: all of them, or a uniform sample of ``size`` (reservoir
    sampling over one pass of the source)."""
    if size is None:
        for page in _scan(store, plan):
            for start in range(0, len(page), PAGE):
                yield page[start : start + PAGE]
        return
    rng = random.Random()
    chosen: list[SourceRow] = []
    seen = 0
    for page in _scan(store, plan):
        for row in page:
            seen += 1
            if len(chosen) < size:
                chosen.append(row)
            elif (slot := rng.randrange(seen)) < size:
                chosen[slot] = row
    for start in range(0, len(chosen), PAGE):
        yield chosen[start : start + PAGE]


def verify_stream(
    plan: StreamPlan, store: Any, sink: Sink, size: int | None
) -> tuple[SObjectDescribe, Findings]:
    fmap = plan.fmap
    describe = sink.describe(fmap.sobject)
    fatal = [p for p in mapping_problems(fmap, describe) if p.fatal]
    if fatal or describe is None:
        raise mismatch(plan, fatal)
    ext_field = describe.field(fmap.external_id_field)
    state = store.load_state(plan.name)
    # A row's latest ExportErrors episode decides whether its failure still stands.
    latest: dict[str, str] = {}
    for row in store.list_errors(stream=plan.name, include_resolved=True):
        latest[str(row["record_key"])] = str(row["status"])
    # Rows after the position have not been acknowledged (yet).
    pending: set[str] | None = None  # None: no position, so every row is
    if state.position is not None:
        pending = set()
        for page in _scan(store, plan, state.position):
            pending |= {plan.record_key(r) for r in page}
    findings = Findings()
    for rows in _sample(store, plan, size):
        payloads: dict[str, dict[str, Any] | None] = {}
        for row in rows:
            if row.key is None:
                findings.checked += 1
                findings.pending.append(plan.record_key(row))
                continue
            try:
                payloads[row.record_key] = build_payload(fmap, row)
            except MappingError:
                payloads[row.record_key] = None  # never sent: its error says why
        held: dict[str, list[dict[str, Any]]] = {}
        for soql in queries(fmap, describe, list(payloads)):
            for record in sink.query(soql):
                key = fold_id(ext_field, record.get(ext_field.name if ext_field else ""))
                held.setdefault(key, []).append(record)
        for key, payload in payloads.items():
            status = latest.get(key)
            failed = status in (ErrorStatus.OPEN, ErrorStatus.SKIPPED)
            behind = pending is not None and key not in pending
            acknowledged = not failed and (behind or status == ErrorStatus.RESOLVED)
            found = held.get(fold_id(ext_field, key), [])
            diffs = None
            if payload is not None and found:
                diffs = differences(fmap, describe, payload, found[0])
            findings.judge(key, acknowledged and payload is not None, found, diffs)
    return describe, findings


def cmd_verify(args: argparse.Namespace) -> int:
    from crm_export.wiring import check_sources, open_sink, stream_plan

    config = load(args)
    index = next((i for i, s in enumerate(config.streams) if s.name == args.name), None)
    if index is None:
        names = ", ".join(s.name for s in config.streams)
        print(
            f"crm-export: no stream named {args.name!r} in {config.path} (streams: {names})",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    check_sources(config)
    plan = stream_plan(config.streams[index], index)
    size = None if args.all else args.sample
    with open_store(config) as store, open_sink(config) as sink:
        describe, findings = verify_stream(plan, store, sink, size)
        calls = sink.api_calls
    if args.json:
        body = {
            "ok": findings.problems == 0,
            "stream": plan.name,
            "sobject": describe.name,
            "sample": size,
            "api_calls": calls,
            **asdict(findings),
        }
        print(report_mod.to_json(body))
    else:
        _print(plan, describe, findings, size, calls)
    return EXIT_FAILED if findings.problems else EXIT_OK


def _keys(keys: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _print(
    plan: StreamPlan, describe: SObjectDescribe, f: Findings, size: int | None, calls: int
) -> None:
    how = "all rows" if size is None else f"a sample of up to {size}"
    verdict = "everything matches" if not f.problems else f"{f.problems} problems"
    print(
        f"crm-export verify {plan.name} -> {describe.name}: {f.checked} rows checked ({how}), "
        f"{f.matched} match, {verdict} ({calls} API calls)"
    )
    if f.missing:
        print(f"  missing in Salesforce, though exported: {_keys(f.missing)}")
    for d in f.differs:
        changes = "; ".join(
            f"{c['field']}: sent {c['expected']!r}, Salesforce has {c['actual']!r}"
            for c in d["fields"]
        )
        print(f"  differs: {d['record_key']} ({d['id']}): {changes}")
    if f.unacknowledged:
        print(
            "  in Salesforce as the source row is now, but never acknowledged: "
            f"{_keys(f.unacknowledged)}"
        )
    if f.duplicates:
        print(f"  more than one record with the external ID: {_keys(f.duplicates)}")
    if f.pending:
        print(
            f"  not expected yet (after the position, failed, or skipped): {len(f.pending)} "
            f"rows ({_keys(f.pending, 5)})"
        )


def register(commands: Commands) -> None:
    verify = commands.add_parser(
        "verify",
        **documented(
            "compare a stream's records in Salesforce with its source rows: read them back "
            "by external ID (SOQL), compare every mapped field as Salesforce stores it, and "
            "report records missing in Salesforce, fields that differ, and records present "
            "but never acknowledged (writes nothing)",
            [
                "crm-export verify contacts",
                "crm-export verify contacts --sample 500",
                "crm-export verify accounts --all --json",
            ],
            {
                EXIT_OK: "everything checked matches",
                EXIT_FAILED: "problems found",
                EXIT_CONFIG: "the config is invalid, the stream is unknown, or its mapping "
                "names a field the object lacks",
            },
        ),
    )
    config_option(verify, top=False)
    verify.add_argument("name", metavar="NAME", help="the stream's name")
    which = verify.add_mutually_exclusive_group()
    which.add_argument(
        "--sample", type=int, default=200, metavar="N", help="check N random rows (default 200)"
    )
    which.add_argument("--all", action="store_true", help="check every row")
    verify.add_argument("--json", action="store_true", help="print JSON for scripts")
    verify.set_defaults(func=cmd_verify)
