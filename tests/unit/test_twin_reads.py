"""The in-memory sink's describe and query follow SalesforceSink's contract."""

from __future__ import annotations

from crm_export.ports import FieldDescribe
from crm_export.testing import InMemorySink, describe_of


def test_describe_gives_what_it_was_given_none_for_a_missing_object_and_counts_calls() -> None:
    contact = describe_of("Contact", FieldDescribe("LastName", "string", length=80))
    sink = InMemorySink(describes=[contact])
    sink.missing.add("Nope__c")
    assert sink.describe("contact") is contact
    assert sink.describe("Nope__c") is None
    # Not given one: every field exists, so tests of other policy need not describe.
    anything = sink.describe("Account")
    assert anything is not None and anything.field("Whatever__c") is not None
    assert sink.api_calls == 3


def test_query_reads_back_what_was_upserted_by_external_id() -> None:
    sink = InMemorySink()
    sink.upsert(
        "Contact",
        "External_Id__c",
        [
            {"External_Id__c": "C-1", "LastName": "O'Hara", "Account": {"External_Id__c": "A"}},
            {"External_Id__c": "C-2", "LastName": "Smith", "AccountId": None},
        ],
        all_or_none=False,
    )
    found = sink.query(
        "SELECT External_Id__c, LastName, Account.External_Id__c FROM Contact "
        "WHERE External_Id__c IN ('c-1', 'C-2', 'C-3')"
    )
    by_id = {r["External_Id__c"]: r for r in found}
    assert by_id["C-1"]["Account"] == {"External_Id__c": "A"}
    assert by_id["C-2"]["Account"] is None
    assert sink.query("SELECT Id FROM Account WHERE External_Id__c IN ('C-1')") == []
