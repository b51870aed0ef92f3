"""CRMExport_ExportError for one stream: every open ExportErrors row, from its source row now.

A record that goes through is resolved; one that fails again bumps its episode's attempts;
one whose source row is gone is closed as ``source_deleted``. When the record the stream is
paused at goes through (or is gone), the pause is released.

Every row is sent, whatever its fingerprint (the exporter runs this job with ``compare``
off): it exists to ask Salesforce again about records it refused, and only Salesforce's
answer may close an ExportErrors row. Its failures never halt it, so they count as
``failed``, never ``paused``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import structlog

from crm_export.mapping import NULL_KEY
from crm_export.ports import UNCHANGED, Position, SourceRow
from crm_export.retry import StopRequested

from .outcome import BatchOutcome
from .plan import null_key_name
from .stream_run import StreamRun

log = structlog.get_logger("crm_export.export")

# How many source rows one page of the re-export's search for NULL-key rows reads.
NULL_KEY_SCAN_PAGE = 1000


def reexport(run: StreamRun, only: Collection[int] | None = None) -> None:
    """Every open ExportErrors row of the stream; with ``only``, those of these ids alone
    (``crm-export errors retry``)."""
    plan, store = run.plan, run.store
    state = store.load_state(plan.name)
    paused_key = state.paused.record_key if state.paused else None
    after_id = 0
    while not run.should_stop():
        errors = store.open_errors(plan.name, after_id, run.policy.batch_size)
        if not errors:
            return
        after_id = errors[-1].id
        if only is not None:
            errors = [e for e in errors if e.id in only]
            if not errors:
                continue
        keys = [e.record_key for e in errors if e.error_code != NULL_KEY]
        found = store.read_by_keys(plan.source, keys)
        gone = [k for k in keys if k not in found]
        rows = [found[k] for k in keys if k in found]
        names = [e.record_key for e in errors if e.error_code == NULL_KEY]
        still_null, fixed = _search_null_keys(run, names) if names else ([], [])
        sent = rows + still_null
        outcome = run.send(sent, all_or_none=False) if sent else BatchOutcome()
        exported = {r.record_key for r in outcome.exported}
        released = paused_key is not None and (paused_key in gone or paused_key in exported)
        changes: dict[str, Any] = {
            "source_deleted_keys": gone,
            "resolved_keys": [r.record_key for r in outcome.exported] + fixed,
        }
        if released:
            assert paused_key is not None
            changes["pause"] = None
            changes["position"] = (
                run.step_over(state.position, found[paused_key])
                if paused_key in found
                else UNCHANGED
            )
        run.acknowledge(sent, outcome, move_position=False, **changes)
        if released:
            log.info("pause_released", stream=plan.name, key=paused_key)
            paused_key = None
    raise StopRequested()


def _search_null_keys(run: StreamRun, names: Sequence[str]) -> tuple[list[SourceRow], list[str]]:
    """Rows still named by these NULL-key errors (one each), and the names with no such
    row left: those rows were given a key or deleted.

    A NULL key cannot be looked up, so this reads the whole source (only while such
    errors are open). A row given a key but no new order value sits behind the position,
    where the reading loop will not meet it again, so the rows that now hold its place in
    the order are sent too: the one that was fixed is among them, and the others are
    sent again harmlessly (upsert by external ID).
    """
    plan = run.plan
    wanted = set(names)
    still: dict[str, SourceRow] = {}
    by_place: dict[str, list[SourceRow]] = {}
    after: Position | None = None
    while not run.should_stop():
        page = run.store.read_batch(plan.source, after, NULL_KEY_SCAN_PAGE)
        for row in page:
            place = null_key_name(plan.source.key, plan.source.order_by, row.order_value)
            if place not in wanted:
                continue
            if row.key is None:
                still.setdefault(place, row)
            else:
                by_place.setdefault(place, []).append(row)
        if len(page) < NULL_KEY_SCAN_PAGE:
            break
        after = page[-1].position
    if run.should_stop():
        raise StopRequested()
    fixed = [n for n in dict.fromkeys(names) if n not in still]
    refill = [row for name in fixed for row in by_place.get(name, [])]
    return list(still.values()) + refill, fixed
