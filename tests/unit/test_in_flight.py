"""Calls in flight (skip mode), paged reads and streams side by side, on the core's twins.

The order of answers is forced here (a sink that holds one call until others are answered),
which the sandbox cannot do deterministically; tests/export/test_in_flight.py runs the same
guarantees over HTTPS.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from crm_export.errors import RetriesExhaustedError
from crm_export.export import Exporter, ExportPolicy, StreamPlan
from crm_export.export.in_flight import SendWindow
from crm_export.export.parallel import run_streams
from crm_export.mapping import FieldMap
from crm_export.ports import RunOutcome, SourceRow, StreamSource, UpsertResult
from crm_export.testing import FakeClock, InMemorySink, InMemoryStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def row(key: int, last_name: str = "Smith", minutes: int | None = None) -> SourceRow:
    at = T0 + timedelta(minutes=key if minutes is None else minutes)
    return SourceRow(key, at, {"last_name": last_name, "updated_at": at})


def plan(pause: bool = False) -> StreamPlan:
    return StreamPlan(
        name="contacts",
        fmap=FieldMap("Contact", "External_Id__c", "id", (("LastName", "last_name"),)),
        source=StreamSource("contacts", "id", "updated_at", ("last_name",), "sqlite://", "c"),
        pause_on_error=pause,
    )


# -- the window's policy, directly ----------------------------------------------------------


def test_the_window_holds_at_most_its_size() -> None:
    window: SendWindow[str] = SendWindow(2)
    window.sent({"1"}, "a")
    window.sent({"2"}, "b")
    assert not window.may_send({"3"})
    with pytest.raises(ValueError):
        window.sent({"3"}, "c")


def test_a_batch_waits_while_one_of_its_keys_is_unacknowledged() -> None:
    window: SendWindow[str] = SendWindow(4)
    window.sent({"1", "2"}, "a")
    assert not window.may_send({"2", "3"})
    window.answered("a")
    assert not window.may_send({"2", "3"})  # answered is not enough: acknowledged frees it
    window.acknowledged("a")
    assert window.may_send({"2", "3"})


def test_keys_that_differ_only_in_case_are_one_record_to_the_window() -> None:
    # External_Id__c is case-insensitive in Salesforce: "K-1" and "k-1" are one record, so
    # the later row waits as for an identical key.
    window: SendWindow[str] = SendWindow(4)
    window.sent({"K-1"}, "a")
    assert not window.may_send({"k-1"})
    window.answered("a")
    window.acknowledged("a")
    assert window.may_send({"k-1"})


def test_only_the_answered_prefix_may_be_acknowledged_in_order() -> None:
    window: SendWindow[str] = SendWindow(4)
    for name, key in (("a", "1"), ("b", "2"), ("c", "3")):
        window.sent({key}, name)
    window.answered("b")
    window.answered("c")
    assert window.ackable() == []  # "a" is still out: nothing behind it may be acknowledged
    with pytest.raises(ValueError):
        window.acknowledged("b")
    window.answered("a")
    assert window.ackable() == ["a", "b", "c"]
    window.acknowledged("a")
    assert window.pending() == ["b", "c"]


# -- the core with calls in flight ----------------------------------------------------------


class HeldSink(InMemorySink):
    """The twin, answering the call that holds ``held`` only once ``after`` other calls were
    answered (or failing it then with ``fail``): a slow call in the middle of the window."""

    def __init__(
        self,
        held: str,
        after: int,
        fail: bool = False,
        held_name: str | None = None,
        patience: float = 2.0,
    ) -> None:
        super().__init__()
        self.held, self.after, self.fail, self.held_name = held, after, fail, held_name
        self.answered = 0
        self.patience = patience
        self.in_flight = 0
        self.most_in_flight = 0
        self._cond = threading.Condition()

    def upsert(
        self,
        sobject: str,
        external_id_field: str,
        records: Sequence[Mapping[str, Any]],
        *,
        all_or_none: bool,
    ) -> list[UpsertResult]:
        holds = any(
            str(r[external_id_field]) == self.held and self.held_name in (None, r.get("LastName"))
            for r in records
        )
        with self._cond:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if holds:
                with self._cond:
                    # Bounded: with nothing else in flight the others never come.
                    self._cond.wait_for(lambda: self.answered >= self.after, timeout=self.patience)
                if self.fail:
                    self._charge()  # the call went out, and its retries were spent
                    raise RetriesExhaustedError("HTTP 503 from the org, retries spent")
            else:
                time.sleep(0.01)
            return super().upsert(sobject, external_id_field, records, all_or_none=all_or_none)
        finally:
            with self._cond:
                self.in_flight -= 1
                self.answered += 1
                self._cond.notify_all()


def exporter(store: InMemoryStore, sink: InMemorySink, in_flight: int, **kw: Any) -> Exporter:
    policy = ExportPolicy(batch_size=2, max_in_flight=in_flight, **kw)
    return Exporter(store, sink, policy, FakeClock(), rng=random.Random(1))


def test_the_position_never_passes_a_batch_in_flight_that_failed() -> None:
    # Batches of 2: [1,2] [3,4] [5,6] [7,8]...; the call with 3 fails after [5,6] and [7,8]
    # were answered.
    store = InMemoryStore({"contacts": [row(i) for i in range(1, 11)]})
    sink = HeldSink("3", after=3, fail=True)
    result = exporter(store, sink, 4).export_stream(plan())
    assert result.outcome is RunOutcome.FAILED
    position = store.load_state("contacts").position
    assert position is not None and position.key == 2  # only [1,2] is acknowledged
    assert result.counts.exported == 2
    # Every call is counted, those of the batches answered behind the failed one too: the
    # describe, [1,2], the failed one and the three behind it.
    assert store.runs[0].counts.api_calls == sink.api_calls == 6
    assert len(sink.described) + len(sink.requests) + 1 == 6
    # The next run sends again from 3 on: at most the window, and nothing is lost.
    again = exporter(store, InMemorySink(), 4).export_stream(plan())
    assert again.outcome is RunOutcome.COMPLETED
    assert again.counts.exported == 8
    assert store.load_state("contacts").position.key == 10  # type: ignore[union-attr]


def test_batches_answered_out_of_order_are_acknowledged_in_order() -> None:
    store = InMemoryStore({"contacts": [row(i) for i in range(1, 11)]})
    sink = HeldSink("3", after=2)
    result = exporter(store, sink, 4).export_stream(plan())
    assert result.outcome is RunOutcome.COMPLETED
    assert sink.most_in_flight > 1  # the calls really overlapped
    assert sink.writes.index("5") < sink.writes.index("3")  # answered out of order
    assert result.counts.exported == 10
    assert store.runs[0].counts.api_calls == sink.api_calls == 6  # the describe, 5 batches
    assert store.load_state("contacts").position.key == 10  # type: ignore[union-attr]


def test_a_later_row_of_a_key_in_flight_waits_for_it() -> None:
    # Key 3 is held in the first call until the two behind it are answered (or for 0.3 s);
    # its later version is in the third. Without the wait, the later version would reach
    # the org first and the older one overwrite it.
    rows = [row(3, "Old", minutes=1), row(1, minutes=2), row(2, minutes=3), row(4, minutes=4)]
    rows += [row(3, "New", minutes=5), row(5, minutes=6)]
    store = InMemoryStore({"contacts": rows})
    sink = HeldSink("3", after=2, held_name="Old", patience=0.3)
    result = exporter(store, sink, 4).export_stream(plan())
    assert result.outcome is RunOutcome.COMPLETED
    assert sink.records["3"]["LastName"] == "New"
    assert sink.writes.index("4") < sink.writes.index("3")  # the old one was held behind


def test_pause_mode_keeps_one_call_in_flight() -> None:
    store = InMemoryStore({"contacts": [row(i) for i in range(1, 11)]})
    sink = HeldSink("3", after=1)  # would wait for a call behind it, if there were one
    result = exporter(store, sink, 4).export_stream(plan(pause=True))
    assert result.outcome is RunOutcome.COMPLETED
    assert sink.most_in_flight == 1
    assert sink.writes == [str(i) for i in range(1, 11)]


class CountingReads(InMemoryStore):
    def __init__(self, rows: list[SourceRow]) -> None:
        super().__init__({"contacts": rows})
        self.reads: list[int] = []

    def read_batch(self, source: StreamSource, after: Any, limit: int) -> list[SourceRow]:
        self.reads.append(limit)
        return super().read_batch(source, after, limit)


@pytest.mark.parametrize("in_flight", [1, 4])
def test_the_source_is_read_in_pages_of_many_batches(in_flight: int) -> None:
    store = CountingReads([row(i) for i in range(1, 26)])
    sink = InMemorySink()
    result = exporter(store, sink, in_flight, read_page_rows=10).export_stream(plan())
    assert result.outcome is RunOutcome.COMPLETED
    assert sink.writes == [str(i) for i in range(1, 26)]
    # 25 rows in batches of 2: 13 calls, but 3 pages of 10 rows (the last one short).
    assert len(sink.requests) == 13
    assert store.reads == [10, 10, 10]
    assert result.counts.api_calls == 14  # and the describe


def test_a_page_is_whole_batches() -> None:
    assert ExportPolicy(batch_size=200, read_page_rows=10_000).page_rows() == 10_000
    assert ExportPolicy(batch_size=300, read_page_rows=1000).page_rows() == 900
    assert ExportPolicy(batch_size=200, read_page_rows=50).page_rows() == 200


# -- streams side by side -------------------------------------------------------------------


def test_a_stream_starts_only_after_the_streams_it_depends_on_finished() -> None:
    events: list[str] = []
    lock = threading.Lock()
    running = 0
    most = 0

    def run(name: str) -> str:
        nonlocal running, most
        with lock:
            events.append(f"start {name}")
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1
            events.append(f"end {name}")
        return name.upper()

    names = ["accounts", "leads", "contacts", "cases"]
    depends = {"contacts": ["accounts"], "cases": ["contacts"]}
    assert run_streams(names, depends, run, 3) == ["ACCOUNTS", "LEADS", "CONTACTS", "CASES"]
    assert events.index("end accounts") < events.index("start contacts")
    assert events.index("end contacts") < events.index("start cases")
    assert most == 2  # accounts and leads together; never more than the graph allows


def test_streams_side_by_side_stay_within_the_limit() -> None:
    lock = threading.Lock()
    running = most = 0

    def run(name: str) -> str:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.03)
        with lock:
            running -= 1
        return name

    names = [f"s{i}" for i in range(6)]
    assert run_streams(names, {}, run, 2) == names
    assert most == 2


def test_an_error_in_one_stream_starts_no_other_and_is_raised() -> None:
    started: list[str] = []

    def run(name: str) -> str:
        started.append(name)
        if name == "a":
            raise RuntimeError("broken")
        return name

    with pytest.raises(RuntimeError, match="broken"):
        run_streams(["a", "b", "c"], {"b": ["a"], "c": ["b"]}, run, 4)
    assert started == ["a"]
