"""The API budget governor: the line, at most one call past it, the deferred outcome, and
reading the org's usage from Salesforce's answers."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from crm_export.budget import ApiBudget, forecast
from crm_export.errors import ApiBudgetReached
from crm_export.export import Exporter, ExportPolicy, StreamPlan
from crm_export.mapping import FieldMap
from crm_export.ports import ApiUsage, RunOutcome, SourceRow, StreamSource
from crm_export.salesforce import CallKind, call_kind, usage_from_header, usage_from_limits
from crm_export.testing import FakeClock, InMemorySink, InMemoryStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def row(key: int) -> SourceRow:
    at = T0 + timedelta(minutes=key)
    return SourceRow(key, at, {"last_name": f"N{key}"})


def plan(name: str = "contacts") -> StreamPlan:
    return StreamPlan(
        name=name,
        fmap=FieldMap("Contact", "External_Id__c", "id", (("LastName", "last_name"),)),
        source=StreamSource(name, "id", "updated_at", ("last_name",), "x", "c"),
        pause_on_error=True,
    )


def exporter_for(store: InMemoryStore, sink: InMemorySink) -> Exporter:
    return Exporter(store, sink, ExportPolicy(batch_size=10), FakeClock(), rng=random.Random(1))


@pytest.mark.parametrize(
    ("header", "usage"),
    [
        ("api-usage=18/5000", ApiUsage(18, 5000)),
        ("api-usage=10018/100000; api-bursts=1/750", ApiUsage(10018, 100000)),
        ("api-usage=25/5000; per-app-api-usage=17/250(appName=sample-app)", ApiUsage(25, 5000)),
        ("api-bursts=0/750; api-usage=7/15000", ApiUsage(7, 15000)),
        ("garbage", None),
        ("api-usage=3/0", None),
        ("", None),
        (None, None),
    ],
)
def test_sforce_limit_info_in_every_form(header: str | None, usage: ApiUsage | None) -> None:
    assert usage_from_header(header) == usage


def test_limits_daily_api_requests() -> None:
    body = {"DailyApiRequests": {"Max": 15000, "Remaining": 14998}, "DataStorageMB": {}}
    assert usage_from_limits(body) == ApiUsage(2, 15000)
    assert usage_from_limits({"DailyApiRequests": {"Max": "x"}}) is None
    assert usage_from_limits([]) is None


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("https://acme.my.salesforce.com/services/oauth2/token", CallKind.LOGIN),
        ("https://127.0.0.1:8443/services/Soap/u/64.0", CallKind.LOGIN),
        ("https://acme.my.salesforce.com/services/data/", CallKind.FREE),
        ("https://acme.my.salesforce.com/services/data", CallKind.FREE),
        ("https://acme.my.salesforce.com/services/data/v64.0/limits/", CallKind.API),
        ("https://x/services/data/v64.0/composite/sobjects/Contact/Ext__c", CallKind.API),
    ],
)
def test_what_salesforce_charges(url: str, kind: CallKind) -> None:
    assert call_kind(url) is kind


def test_the_line_is_a_share_of_the_allocation() -> None:
    assert ApiBudget(80).line(15000) == 12000
    assert ApiBudget(80).line(99) == 79
    assert ApiBudget(100).line(15000) is None
    assert ApiBudget(80).reached(ApiUsage(12000, 15000))
    assert not ApiBudget(80).reached(ApiUsage(11999, 15000))
    assert not ApiBudget(100).reached(ApiUsage(15000, 15000))


def test_a_hint_at_the_line_reads_limits_once_and_a_fresh_answer_does_not() -> None:
    budget = ApiBudget(80)
    reads: list[int] = []

    def limits_now_low() -> None:
        reads.append(1)
        budget.seen(ApiUsage(10, 100))

    budget.hint(ApiUsage(90, 100))
    budget.before_call(limits_now_low)  # usage fell below the line: go
    assert reads == [1]
    budget.seen(ApiUsage(80, 100))
    with pytest.raises(ApiBudgetReached, match="80 of its 100 daily calls"):
        budget.before_call(limits_now_low)
    assert reads == [1]  # a fresh answer is believed, no second /limits


def test_the_line_hit_mid_run_defers_with_at_most_one_call_past_it() -> None:
    rows = [row(i) for i in range(1, 101)]  # 10 batches of 10
    store = InMemoryStore({"contacts": rows})
    sink = InMemorySink(api_limit=100, max_api_usage_percent=50)
    sink.org_used = 46  # the org's other integrations
    result = exporter_for(store, sink).export_stream(plan())

    assert result.outcome is RunOutcome.DEFERRED
    assert result.error is None and result.deferred and "50 of its 100" in result.deferred
    # Calls 47..50 (the describe of Contact, then three upserts): the answer to the 4th
    # said 50, the line: no 5th call.
    assert sink.api_calls == 4 and sink.org_used == 50
    assert len(sink.requests) == 3
    assert store.load_state("contacts").position == rows[29].position
    assert store.errors == []
    assert store.runs[0].outcome is RunOutcome.DEFERRED
    assert store.runs[0].usage == ApiUsage(50, 100)


def test_later_runs_ask_limits_once_and_resume_below_the_line() -> None:
    rows = [row(i) for i in range(1, 31)]
    store = InMemoryStore({"contacts": rows})
    first = InMemorySink(api_limit=100, max_api_usage_percent=50)
    first.org_used = 48  # the describe brings it to 49, one upsert of 10 rows to the line
    assert exporter_for(store, first).export_stream(plan()).outcome is RunOutcome.DEFERRED

    # Next job, still over: one /limits call, nothing sent, both streams deferred.
    still = InMemorySink(api_limit=100, max_api_usage_percent=50)
    still.org_used = 60
    exporter = exporter_for(store, still)
    results = [exporter.export_stream(plan()), exporter.export_stream(plan())]
    assert [r.outcome for r in results] == [RunOutcome.DEFERRED] * 2
    assert (still.limits_reads, still.api_calls, len(still.requests)) == (1, 1, 0)

    # The rolling 24 hours freed calls: one /limits call, then the rest goes.
    later = InMemorySink(api_limit=100, max_api_usage_percent=50)
    later.org_used = 5
    result = exporter_for(store, later).export_stream(plan())
    assert result.outcome is RunOutcome.COMPLETED
    assert later.limits_reads == 1
    assert sorted(later.records, key=int) == [str(i) for i in range(11, 31)]


def test_rows_that_need_no_call_go_through_even_at_the_line() -> None:
    store = InMemoryStore({"contacts": [row(i) for i in range(1, 6)]})
    sink = InMemorySink(api_limit=100, max_api_usage_percent=50)
    exporter_for(store, sink).export_stream(plan())
    store.rows["contacts"] = [
        SourceRow(r.key, r.order_value + timedelta(days=1), r.values)
        for r in store.rows["contacts"]
    ]
    sink.org_used = 99
    result = exporter_for(store, sink).export_stream(plan())
    assert result.outcome is RunOutcome.COMPLETED and result.counts.unchanged == 5


def test_the_org_refusing_for_its_spent_allocation_defers_too() -> None:
    store = InMemoryStore({"contacts": [row(i) for i in range(1, 31)]})
    sink = InMemorySink(api_limit=20, max_api_usage_percent=100)  # no line of our own
    sink.org_used = 19
    result = exporter_for(store, sink).export_stream(plan())
    assert result.outcome is RunOutcome.DEFERRED
    assert "allocation is spent" in (result.deferred or "")
    assert sink.api_calls == 1 and store.errors == []


def test_forecast_of_collections_and_bulk_calls() -> None:
    assert forecast(0, 200) == forecast(0, 200).__class__(0, 0, 0)
    small = forecast(450, 200)
    assert (small.collections, small.bulk) == (3, 3 + 1 + 2)
    big = forecast(250_000, 200)
    # Jobs of 100,000 + 100,000 + 50,000: 3 + 10 polls + 2 results each, 5 polls for the last.
    assert (big.collections, big.bulk) == (1250, 15 + 15 + 10)
