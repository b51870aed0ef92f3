"""What describe makes certain before sending: mapping problems, and values the org would
refuse (pure), then the exporter acting on them (in-memory twins)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from crm_export.export import Exporter, ExportPolicy, StreamPlan
from crm_export.export.presend import RowCheck, mapping_problems
from crm_export.mapping import FieldMap, Lookup
from crm_export.ports import FieldDescribe, RunOutcome, SObjectDescribe, SourceRow, StreamSource
from crm_export.testing import FakeClock, InMemorySink, InMemoryStore, describe_of

CONTACT = describe_of(
    "Contact",
    FieldDescribe("LastName", "string", label="Last Name", length=80, nillable=False),
    FieldDescribe("FirstName", "string", label="First Name", length=40),
    FieldDescribe(
        "LeadSource",
        "picklist",
        label="Lead Source",
        length=255,
        restricted_picklist=True,
        picklist_values=("Web", "Phone Inquiry"),
    ),
    FieldDescribe("Industry__c", "picklist", length=255, picklist_values=("Tech",)),
    FieldDescribe("Birthdate", "date"),
    FieldDescribe("LastSeen__c", "datetime"),
    FieldDescribe("Score__c", "double"),
    FieldDescribe("HasOptedOutOfEmail", "boolean", nillable=False, defaulted_on_create=True),
    FieldDescribe("Email", "email", length=80),
    FieldDescribe("Lifetime_Value__c", "currency", createable=False, updateable=False),
    FieldDescribe("Legacy__c", "string", length=10, updateable=False),
    FieldDescribe("External_Id__c", "string", length=20, external_id=True, unique=True),
    FieldDescribe("Code__c", "string", length=20),
    FieldDescribe("Region__c", "string", length=20, nillable=False),
    FieldDescribe(
        "AccountId", "reference", length=18, reference_to=("Account",), relationship_name="Account"
    ),
)
ACCOUNT = describe_of(
    "Account",
    FieldDescribe("Name", "string", length=255, nillable=False),
    FieldDescribe("External_Id__c", "string", length=255, external_id=True, unique=True),
)


def fmap(*fields: str, external_id: str = "External_Id__c", **lookups: Lookup) -> FieldMap:
    return FieldMap(
        "Contact",
        external_id,
        "id",
        tuple((f, f.lower()) for f in fields) or (("LastName", "last_name"), ("Region__c", "r")),
        tuple(lookups.values()),
    )


def codes(fm: FieldMap, **parents: SObjectDescribe | None) -> dict[str, str]:
    found = mapping_problems(fm, CONTACT, parents or None)
    return {p.key: p.code for p in found}


def test_a_clean_mapping_has_no_problems() -> None:
    assert codes(fmap("LastName", "Region__c", "Email")) == {}


def test_fields_that_do_not_exist_or_cannot_be_written_are_named_by_key() -> None:
    found = mapping_problems(
        fmap("LastName", "Region__c", "Nope__c", "Lifetime_Value__c", "Legacy__c"), CONTACT
    )
    by_key = {p.key: p for p in found}
    assert by_key["fields.Nope__c"].code == "NO_SUCH_FIELD" and by_key["fields.Nope__c"].fatal
    assert "Contact has no field Nope__c" in by_key["fields.Nope__c"].message
    assert by_key["fields.Lifetime_Value__c"].code == "NOT_WRITABLE"
    assert by_key["fields.Legacy__c"].code == "NOT_UPDATEABLE"
    assert not by_key["fields.Legacy__c"].fatal
    # Field names are case-insensitive in Salesforce.
    assert codes(fmap("lastname", "region__c")) == {}


def test_the_external_id_field_must_be_an_external_id_and_unique() -> None:
    assert codes(fmap(external_id="Code__c")) == {"external_id_field": "NOT_EXTERNAL_ID"}
    assert codes(fmap(external_id="Missing__c")) == {"external_id_field": "NO_SUCH_FIELD"}
    not_unique = describe_of(
        "Contact",
        FieldDescribe("LastName", "string", length=80),
        FieldDescribe("External_Id__c", "string", external_id=True),
    )
    [problem] = mapping_problems(fmap("LastName"), not_unique)
    assert (problem.key, problem.code, problem.fatal) == ("external_id_field", "NOT_UNIQUE", False)
    assert "DUPLICATE_EXTERNAL_ID" in problem.message


def test_required_fields_that_are_not_mapped() -> None:
    [problem] = mapping_problems(fmap("LastName", "Email"), CONTACT)
    assert (problem.key, problem.code) == ("fields", "REQUIRED_NOT_MAPPED")
    assert "Region__c" in problem.message and "LastName" not in problem.message
    # A boolean is not nillable but has a default: not required. Nor is Id.
    assert "HasOptedOutOfEmail" not in problem.message and "Id" not in problem.message.split()


def test_an_unknown_object() -> None:
    [problem] = mapping_problems(fmap("LastName"), None)
    assert (problem.key, problem.code, problem.fatal) == ("sobject", "NO_SUCH_OBJECT", True)


def test_lookups_are_checked_against_the_child_and_the_parent() -> None:
    good = Lookup.derive("AccountId", "Account", "External_Id__c", "account_id")
    assert codes(fmap("LastName", "Region__c", a=good), Account=ACCOUNT) == {}
    by_name = Lookup.derive("AccountId", "Account", "Name", "account_name")
    assert codes(fmap("LastName", "Region__c", a=by_name), Account=ACCOUNT) == {
        "lookups.AccountId.external_id_field": "NOT_EXTERNAL_ID"
    }
    wrong = Lookup.derive("AccountId", "Opportunity", "External_Id__c", "o")
    assert codes(fmap("LastName", "Region__c", a=wrong)) == {
        "lookups.AccountId.sobject": "WRONG_LOOKUP_TARGET"
    }
    not_a_lookup = Lookup.derive("Code__c", "Account", "External_Id__c", "c", "Account")
    assert codes(fmap("LastName", "Region__c", a=not_a_lookup)) == {
        "lookups.Code__c": "NOT_A_LOOKUP"
    }
    missing = Lookup.derive("Parent__c", "Account", "External_Id__c", "p")
    assert codes(fmap("LastName", "Region__c", a=missing)) == {"lookups.Parent__c": "NO_SUCH_FIELD"}
    # The lookup field itself counts as mapped for the required-field check.
    assert codes(fmap("LastName", "Region__c", a=good), Account=None) == {
        "lookups.AccountId.sobject": "NO_SUCH_OBJECT"
    }


def judge(**payload: object) -> list[tuple[str, str]]:
    fields = tuple((name, name) for name in payload)
    check = RowCheck(FieldMap("Contact", "External_Id__c", "id", fields), CONTACT)
    return [(e.code, e.fields[0]) for e in check.problems(payload)]


def test_text_over_the_field_length_is_string_too_long_as_salesforce_says_it() -> None:
    check = RowCheck(fmap("LastName"), CONTACT)
    [error] = check.problems({"LastName": "x" * 81})
    assert error.code == "STRING_TOO_LONG" and error.fields == ("LastName",)
    assert error.message.startswith("Last Name: data value too large: ")
    assert "(max length=80)" in error.message
    assert "caught by crm-export before sending" in error.message
    # Salesforce trims leading and trailing white space: no false rejection for it.
    assert judge(LastName=" " + "x" * 80 + "  ") == []
    assert judge(LastName="x" * 80) == []
    # The external ID field is a field like any other.
    assert judge(External_Id__c="K" * 21) == [("STRING_TOO_LONG", "External_Id__c")]


def test_restricted_picklists_take_their_values_only_without_regard_to_case() -> None:
    assert judge(LeadSource="Fax") == [("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", "LeadSource")]
    assert judge(LeadSource="web") == []
    assert judge(LeadSource=" Phone Inquiry ") == []
    assert judge(Industry__c="Anything") == []  # not restricted


def test_text_a_typed_field_cannot_read_is_the_parser_error_salesforce_gives() -> None:
    check = RowCheck(fmap("Birthdate"), CONTACT)
    [error] = check.problems({"Birthdate": "not-a-date"})
    assert error.code == "JSON_PARSER_ERROR"
    assert error.message.startswith(
        "Cannot deserialize instance of date from VALUE_STRING value not-a-date"
    )
    assert judge(Birthdate="2026-01-31", LastSeen__c="2026-01-31T10:00:00.000Z") == []
    assert judge(LastSeen__c="yesterday") == [("JSON_PARSER_ERROR", "LastSeen__c")]
    assert judge(Score__c="abc") == [("JSON_PARSER_ERROR", "Score__c")]
    assert judge(Score__c="12.5", HasOptedOutOfEmail="TRUE") == []
    assert judge(HasOptedOutOfEmail="maybe") == [("JSON_PARSER_ERROR", "HasOptedOutOfEmail")]
    # What describe does not make certain is left to Salesforce: numbers for a date (which
    # may be read as epoch milliseconds), an impossible but well-shaped date, email syntax.
    assert judge(Birthdate=20260131, Email="not-an-email") == []
    assert judge(Birthdate="2026-02-30") == []


def test_null_in_a_required_field_without_default_is_required_field_missing() -> None:
    assert judge(LastName=None) == [("REQUIRED_FIELD_MISSING", "LastName")]
    assert judge(LastName="") == [("REQUIRED_FIELD_MISSING", "LastName")]
    [error] = RowCheck(fmap("LastName"), CONTACT).problems({"LastName": None})
    assert error.message.startswith("Required fields are missing: [LastName]")
    # Not nillable but defaulted (a checkbox): Salesforce fills it on create.
    assert judge(HasOptedOutOfEmail=None, FirstName=None) == []


T0 = datetime(2026, 1, 1, tzinfo=UTC)


def source_row(key: int, last_name: str) -> SourceRow:
    at = T0 + timedelta(minutes=key)
    return SourceRow(key, at, {"lastname": last_name, "region__c": "EU"})


def run(
    rows: list[SourceRow], fm: FieldMap, *, pause: bool, flood: int = 50
) -> tuple[InMemoryStore, InMemorySink, RunOutcome, str | None, str | None]:
    store = InMemoryStore({"contacts": rows})
    sink = InMemorySink(describes=[CONTACT])
    policy = ExportPolicy(max_identical_errors=flood)
    exporter = Exporter(store, sink, policy, FakeClock(), rng=random.Random(1))
    plan = StreamPlan(
        "contacts",
        fm,
        StreamSource("contacts", "id", "updated_at", fm.columns, "sqlite://", "c"),
        pause_on_error=pause,
        config_path='streams[0] ("contacts")',
    )
    result = exporter.export_stream(plan)
    exporter.export_stream(plan)  # the same Exporter (one job run): no second describe
    return store, sink, result.outcome, result.config_key, result.error


def test_a_stream_mapping_a_missing_field_fails_before_anything_is_sent() -> None:
    fm = fmap("LastName", "Region__c", "Nope__c")
    store, sink, outcome, key, error = run([source_row(1, "Ada")], fm, pause=True)
    assert outcome is RunOutcome.FAILED
    assert key == 'streams[0] ("contacts").fields.Nope__c'
    assert error is not None and "Contact has no field Nope__c" in error
    assert sink.requests == [] and store.errors == []
    assert store.load_state("contacts").position is None


@pytest.mark.parametrize("pause", [True, False])
def test_a_row_caught_before_sending_is_a_record_error_under_salesforce_s_code(
    pause: bool,
) -> None:
    rows = [source_row(1, "Ada"), source_row(2, "x" * 81), source_row(3, "Grace")]
    store, sink, outcome, _, _ = run(rows, fmap("LastName", "Region__c"), pause=pause)
    [error] = store.errors
    assert (error.record_key, error.error_code) == ("2", "STRING_TOO_LONG")
    assert "caught by crm-export before sending" in error.error_message
    sent = [key for _, keys in sink.requests for key in keys]
    assert "2" not in sent  # the org never saw it
    if pause:
        assert outcome is RunOutcome.PAUSED and sink.writes == ["1"]
        assert store.load_state("contacts").paused is not None
    else:
        assert outcome is RunOutcome.COMPLETED and sink.writes == ["1", "3"]
    # The object is described once for the exporter's life (a job run), not per batch.
    assert sink.described == ["Contact"]


def test_rows_caught_alike_many_in_a_row_are_a_flood_that_records_nothing() -> None:
    rows = [source_row(i, "x" * 81) for i in range(1, 21)]
    store, sink, outcome, key, error = run(
        rows, fmap("LastName", "Region__c"), pause=False, flood=5
    )
    assert outcome is RunOutcome.FAILED and key is None
    assert error is not None and "5 records in a row failed with STRING_TOO_LONG" in error
    # Stopped before the batch was acknowledged: no ExportErrors flood, nothing sent.
    assert store.errors == [] and sink.requests == []
