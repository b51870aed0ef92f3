"""Acting on one record, or one stream: ``errors skip``, ``errors retry`` and
``stream reset``. Each action is logged (``operator_action``) and kept in the state
database's ``operator_actions`` table, with the OS user who ran it.

``errors skip`` and ``stream reset`` only change the state database, in one transaction
that re-reads what it changes; they go through while the daemon runs, and a run that was
working on that stream stops at its next batch instead of overwriting the change (see
``crm_export.store.actions``). ``errors retry`` sends records to Salesforce, so it is a run:
it needs the runner lock, and is refused while another runner (the daemon) holds it.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
from typing import Any

import structlog

from crm_export.config import Config
from crm_export.errors import CrmExportError
from crm_export.export import StreamPlan
from crm_export.ports import ErrorStatus, RunOutcome
from crm_export.store.urls import is_sqlite

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

log = structlog.get_logger("crm_export.cli")


def actor() -> str:
    """Who is acting: the OS user (a container may have no name for its uid)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return f"uid {os.getuid()}"


def _plans(config: Config) -> dict[str, StreamPlan]:
    from crm_export.wiring import stream_plan

    return {s.name: stream_plan(s, i) for i, s in enumerate(config.streams)}


def _describe(row: dict[str, Any]) -> str:
    return f"{row['id']} ({row['stream']}, record {row['record_key']}, {row['error_code']})"


# -- errors skip ---------------------------------------------------------------------------


def cmd_skip(args: argparse.Namespace) -> int:
    from crm_export.store.actions import StepOver

    config = load(args, secrets=False)
    plans = _plans(config)
    who = actor()
    with open_store(config) as store:
        step_over: dict[str, StepOver] = {}
        for row in store.errors_by_ids(args.ids):
            stream = str(row["stream"])
            if row["resolved_at"] is not None or stream in step_over or stream not in plans:
                continue
            state = store.load_state(stream)
            if state.paused is None or state.paused.record_key != row["record_key"]:
                continue
            # The paused record is the very next row after the position: releasing the pause
            # must also step over it, or the next run would send it again.
            plan = plans[stream]
            try:
                following = store.read_batch(plan.source, state.position, 1)
            except CrmExportError as exc:
                print(f"crm-export: cannot read stream {stream!r}'s source: {exc}", file=sys.stderr)
                following = []
            to = None
            if following and plan.record_key(following[0]) == row["record_key"]:
                to = following[0].position
            step_over[stream] = StepOver(str(row["record_key"]), state.position, to)
        result = store.skip_errors(args.ids, actor=who, reason=args.reason, step_over=step_over)
    log.info(
        "operator_action",
        action="errors_skip",
        actor=who,
        ids=[r["id"] for r in result.skipped],
        reason=args.reason,
        released=result.released,
        action_id=result.action_id,
    )
    for row in result.skipped:
        print(f"skipped {_describe(row)}")
    for stream, released in result.released.items():
        how = (
            "the next run goes on after it"
            if released["stepped_over"]
            else "its source row has moved or is gone, so the next run reads it as it is now"
        )
        print(f"{stream}: was paused at record {released['record_key']}: released; {how}")
    for row in result.not_open:
        print(f"{_describe(row)}: already closed ({row['status']}); nothing done")
    for missing in result.missing:
        print(f"{missing}: no such ExportErrors row", file=sys.stderr)
    return EXIT_FAILED if result.missing else EXIT_OK


# -- errors retry --------------------------------------------------------------------------


def _selected(store: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.ids:
        return list(store.errors_by_ids(args.ids))
    rows: list[dict[str, Any]] = store.list_errors(stream=args.stream, code=args.code)
    return rows


def _take_runner_lock(config: Config, wait: float) -> Any:
    from crm_export.store import runner_lock

    lock = runner_lock(config.database.url)
    deadline = time.monotonic() + wait
    while not lock.acquire():
        if time.monotonic() >= deadline:
            print(
                f"crm-export: another runner is active on this state database "
                f"({lock.description}). `errors retry` sends records to Salesforce, which "
                "only one runner may do at a time: wait for it with --wait SECONDS, or let "
                "the daemon's next CRMExport_ExportError run retry them. (`errors skip` and "
                "`stream reset` work while the daemon runs.)",
                file=sys.stderr,
            )
            return None
        time.sleep(min(1.0, wait))
    return lock


def cmd_retry(args: argparse.Namespace) -> int:
    from crm_export.wiring import check_sources, open_runtime, retry_errors

    if not (args.ids or args.stream or args.code):
        print("crm-export: name ExportErrors ids, or --stream, or --code", file=sys.stderr)
        return EXIT_CONFIG
    config = load(args)
    check_sources(config)
    if not is_sqlite(config.database.url):
        from crm_export.store import migrations

        # An unreachable server also fails the lock attempt: name the database instead.
        migrations.check_schema(config.database.url)
    lock = _take_runner_lock(config, args.wait)
    if lock is None:
        return EXIT_FAILED
    try:
        with open_runtime(config) as runtime:
            selected = _selected(runtime.store, args)
            open_rows = [r for r in selected if r["resolved_at"] is None]
            plans = {p.name: p for p in runtime.plans}
            results = []
            for stream in dict.fromkeys(str(r["stream"]) for r in open_rows):
                if stream in plans:
                    ids = [int(r["id"]) for r in open_rows if r["stream"] == stream]
                    results.append(retry_errors(runtime, plans[stream], ids))
            after = {
                int(r["id"]): r for r in runtime.store.errors_by_ids([r["id"] for r in selected])
            }
            outcomes = [_outcome(before, after[int(before["id"])], plans) for before in selected]
            who = actor()
            action_id = runtime.store.record_action(
                "errors_retry",
                actor=who,
                stream=args.stream,
                error_ids=[int(r["id"]) for r in open_rows],
                reason=args.reason,
                detail={
                    "outcomes": {
                        str(r["id"]): o for r, (o, _) in zip(selected, outcomes, strict=True)
                    }
                },
            )
    finally:
        lock.release()
    log.info(
        "operator_action",
        action="errors_retry",
        actor=who,
        ids=[r["id"] for r in open_rows],
        outcomes={r["id"]: o for r, (o, _) in zip(selected, outcomes, strict=True)},
        action_id=action_id,
    )
    if not selected:
        print("no ExportErrors rows match; nothing to retry")
    for row, (_, text) in zip(selected, outcomes, strict=True):
        print(f"{_describe(row)}: {text}")
    for result in results:
        if result.outcome in (RunOutcome.FAILED, RunOutcome.INTERRUPTED):
            print(result.summary())
    if any(r.config_key for r in results):
        return EXIT_CONFIG
    # A row closed already is not a failure: nothing was asked of it.
    good = ("exported", "source_deleted", "not_open")
    return EXIT_OK if all(o in good for o, _ in outcomes) else EXIT_FAILED


def _outcome(
    before: dict[str, Any], after: dict[str, Any], plans: dict[str, StreamPlan]
) -> tuple[str, str]:
    """(outcome, what to print) of one ExportErrors row after the retry."""
    if before["resolved_at"] is not None:
        return "not_open", f"not open ({before['status']}): not retried"
    if before["stream"] not in plans:
        return "no_stream", f"stream {before['stream']!r} is not in the config: not retried"
    status = after["status"]
    if status == ErrorStatus.RESOLVED:
        return "exported", "exported (resolved)"
    if status == ErrorStatus.SOURCE_DELETED:
        return "source_deleted", "its source row is gone: closed as source_deleted"
    if after["attempts"] > before["attempts"]:
        return "failed", f"failed again: {after['error_code']}: {after['error_message']}"
    return "not_sent", "not sent (the run stopped first: see below)"


# -- stream reset --------------------------------------------------------------------------


def cmd_reset(args: argparse.Namespace) -> int:
    config = load(args, secrets=False)
    plans = _plans(config)
    plan = plans.get(args.name)
    if plan is None:
        print(
            f"crm-export: no stream named {args.name!r} in {config.path} "
            f"(streams: {', '.join(plans)})",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    who = actor()
    with open_store(config) as store:
        state = store.load_state(plan.name)
        open_count = len(store.list_errors(stream=plan.name))
        if not args.yes and not _confirmed(plan, state, store, open_count):
            print("aborted; nothing changed")
            return EXIT_FAILED
        before = store.reset_stream(plan.name, actor=who, reason=args.reason)
    log.info(
        "operator_action",
        action="stream_reset",
        actor=who,
        stream=plan.name,
        before=before,
        reason=args.reason,
    )
    print(
        f"stream {plan.name!r} reset: the next CRMExport run exports it from the start "
        f"({open_count} open ExportErrors rows stay open until their records go through)"
    )
    return EXIT_OK


def cmd_resync(args: argparse.Namespace) -> int:
    config = load(args, secrets=False)
    plans = _plans(config)
    if args.name not in plans:
        print(
            f"crm-export: no stream named {args.name!r} in {config.path} "
            f"(streams: {', '.join(plans)})",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    who = actor()
    with open_store(config) as store:
        known = store.request_resync(args.name)
        store.record_action(
            "stream_resync",
            actor=who,
            stream=args.name,
            error_ids=(),
            reason=args.reason,
            detail={"fingerprints": known},
        )
    log.info(
        "operator_action", action="stream_resync", actor=who, stream=args.name, reason=args.reason
    )
    print(
        f"{args.name}: the next CRMExport run starts over from the first row and sends "
        f"every row again, forgetting the {known:,} fingerprints of what Salesforce holds "
        "(as it goes, it records them anew). A run in progress finishes as it is."
    )
    return EXIT_OK


def _confirmed(plan: StreamPlan, state: Any, store: Any, open_count: int) -> bool:
    where = "at the start already"
    if state.position is not None:
        where = f"at {state.position.order_value} / {state.position.key}"
    paused = f", paused at record {state.paused.record_key}" if state.paused else ""
    rows = store.count_after(plan.source, None)
    prompt = (
        f"Reset stream {plan.name!r} ({where}{paused}) to the start? The next CRMExport run "
        f"sends all {rows:,} source rows again; {open_count} open ExportErrors rows stay "
        "open. Type yes to go on: "
    )
    try:
        answer = input(prompt)
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def register(commands: Commands) -> None:
    errors = commands.choices.get("errors")
    if errors is None:  # pragma: no cover - status_commands registers it first
        raise RuntimeError("register status_commands before record_commands")
    actions = errors.add_subparsers(dest="errors_action", metavar="ACTION")
    skip = actions.add_parser(
        "skip",
        **documented(
            "close ExportErrors rows as skipped (never retried), with your OS user, the "
            "time and --reason; a stream paused at one of them is released and steps over "
            "the record at its next run. Works while the daemon runs",
            ["crm-export errors skip 42 43 --reason 'test data'"],
            {
                EXIT_OK: "done (rows already closed are reported, not touched)",
                EXIT_FAILED: "an id does not exist",
                EXIT_CONFIG: "the config is invalid",
            },
        ),
    )
    skip.add_argument("ids", nargs="+", type=int, metavar="ID", help="ExportErrors.id")
    skip.add_argument("--reason", metavar="TEXT", help="why (kept with the rows)")
    skip.set_defaults(func=cmd_skip)

    retry = actions.add_parser(
        "retry",
        **documented(
            "re-export these records now, from their source rows as they are, through the "
            "same path as CRMExport_ExportError, and print each one's outcome (needs the "
            "runner lock: refused while the daemon holds it)",
            [
                "crm-export errors retry 42 43",
                "crm-export errors retry --code INVALID_EMAIL_ADDRESS",
                "crm-export errors retry --stream contacts --wait 60",
            ],
            {
                EXIT_OK: "every open record named went through, or its source row is gone",
                EXIT_FAILED: "some failed again, or another runner is active",
                EXIT_CONFIG: "the config is invalid, or nothing was named",
            },
        ),
    )
    retry.add_argument("ids", nargs="*", type=int, metavar="ID", help="ExportErrors.id")
    retry.add_argument("--stream", help="every open row of this stream")
    retry.add_argument("--code", help="every open row with this error code")
    retry.add_argument("--reason", metavar="TEXT", help="why (kept in operator_actions)")
    retry.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long for another runner to release the state database",
    )
    retry.set_defaults(func=cmd_retry)
    for sub in (skip, retry):
        config_option(sub, top=False)

    stream = commands.add_parser(
        "stream",
        **documented(
            "act on a whole stream",
            [
                "crm-export stream reset contacts --to-start",
                "crm-export stream resync contacts",
            ],
            {EXIT_OK: "done", EXIT_FAILED: "not done", EXIT_CONFIG: "invalid config or stream"},
        ),
    )
    stream_actions = stream.add_subparsers(dest="stream_action", required=True, metavar="ACTION")
    reset = stream_actions.add_parser(
        "reset",
        **documented(
            "re-export a stream from the beginning: clear its position and pause, so that "
            "the next CRMExport run reads every source row again (upserts by external ID: "
            "nothing is duplicated); open ExportErrors rows stay open, and the run resolves "
            "those that go through. Works while the daemon runs",
            [
                "crm-export stream reset contacts --to-start",
                "crm-export stream reset contacts --to-start --yes --reason 'new mapping'",
            ],
            {
                EXIT_OK: "reset",
                EXIT_FAILED: "not confirmed",
                EXIT_CONFIG: "the config is invalid, or the stream is unknown",
            },
        ),
    )
    config_option(reset, top=False)
    reset.add_argument("name", metavar="NAME", help="the stream's name")
    reset.add_argument(
        "--to-start", action="store_true", required=True, help="back to the first row"
    )
    reset.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    reset.add_argument("--reason", metavar="TEXT", help="why (kept in operator_actions)")
    reset.set_defaults(func=cmd_reset)

    resync = stream_actions.add_parser(
        "resync",
        **documented(
            "make the next CRMExport run start over from the first row and SEND every row "
            "again, whatever Salesforce is known to hold (unlike reset, which re-reads every "
            "row but sends only those whose payload changed): for records edited or deleted "
            "in Salesforce by someone else, or an org refreshed from a sandbox. The run "
            "applies it in one transaction of its own, so a run in progress is never undercut",
            ["crm-export stream resync contacts --reason 'org refreshed'"],
            {EXIT_OK: "requested", EXIT_CONFIG: "the config is invalid, or the stream is unknown"},
        ),
    )
    config_option(resync, top=False)
    resync.add_argument("name", metavar="NAME", help="the stream's name")
    resync.add_argument("--reason", metavar="TEXT", help="why (kept in operator_actions)")
    resync.set_defaults(func=cmd_resync)
