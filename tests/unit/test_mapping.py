from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from crm_export.mapping import FieldMap, Lookup, MappingError, build_payload, relationship_name
from crm_export.ports import SourceRow

FMAP = FieldMap("Contact", "External_Id__c", "id", (("LastName", "last_name"), ("X__c", "x")))


def payload(x: object, key: object = 42) -> dict[str, object]:
    return build_payload(FMAP, SourceRow(key, 1, {"last_name": "Smith", "x": x}))


def test_payload_carries_the_external_id_as_text_and_each_mapped_field() -> None:
    assert payload(None) == {"External_Id__c": "42", "LastName": "Smith", "X__c": None}


@pytest.mark.parametrize(
    ("value", "sent"),
    [
        (datetime(2026, 3, 1, 12, 30, 5, 123456, tzinfo=UTC), "2026-03-01T12:30:05.123Z"),
        (
            datetime(2026, 3, 1, 14, 30, tzinfo=timezone(timedelta(hours=2))),
            "2026-03-01T12:30:00.000Z",
        ),
        (datetime(2026, 3, 1, 12, 30), "2026-03-01T12:30:00.000Z"),
        (date(2026, 3, 1), "2026-03-01"),
        (Decimal("12.50"), 12.5),
        (Decimal("7"), 7),
        (True, True),
        (b"caf\xc3\xa9", "café"),
    ],
)
def test_values_are_sent_in_salesforce_formats(value: object, sent: object) -> None:
    assert payload(value)["X__c"] == sent


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (float("nan"), "nan is not a number"),
        (float("inf"), "inf is not a number"),
        (Decimal("NaN"), "NaN is not a number"),
        (b"\xff\xfe", "not valid UTF-8"),
        ("a\x00b", "NUL"),
        ("x" * 200_000, "exceeds"),
    ],
)
def test_unsendable_values_name_the_column(value: object, words: str) -> None:
    with pytest.raises(MappingError) as info:
        payload(value)
    assert info.value.error.code == "CRM_EXPORT_INVALID_VALUE"
    assert "'x'" in info.value.error.message and words in info.value.error.message
    assert info.value.error.fields == ("X__c",)


def test_null_key_is_a_record_error() -> None:
    with pytest.raises(MappingError) as info:
        payload("v", key=None)
    assert info.value.error.code == "CRM_EXPORT_NULL_KEY"


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (datetime(1, 1, 1), "0001-01-01T00:00:00 is outside the dates Salesforce accepts"),
        (date(9999, 12, 31), "9999-12-31 is outside the dates Salesforce accepts"),
        # Converting to UTC would leave the calendar: no crash, a clear error.
        (datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=2))), "outside the dates"),
        (datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-2))), "outside the dates"),
    ],
)
def test_dates_salesforce_cannot_hold_name_the_column(value: object, words: str) -> None:
    with pytest.raises(MappingError) as info:
        payload(value)
    assert info.value.error.code == "CRM_EXPORT_INVALID_VALUE"
    assert words in info.value.error.message and "'x'" in info.value.error.message


def test_early_years_keep_four_digits() -> None:
    assert payload(datetime(1700, 1, 1, 0, 0, 1))["X__c"] == "1700-01-01T00:00:01.000Z"
    assert payload(date(4000, 12, 31))["X__c"] == "4000-12-31"


def test_structured_values_go_out_as_json_text() -> None:
    assert payload({"b": 1, "a": [1, "x"]})["X__c"] == '{"a": [1, "x"], "b": 1}'
    assert payload(["a", "b"])["X__c"] == '["a", "b"]'


@pytest.mark.parametrize("key", ["", "   "])
def test_a_blank_key_is_refused_by_name(key: str) -> None:
    with pytest.raises(MappingError) as info:
        payload("v", key=key)
    assert info.value.error.code == "CRM_EXPORT_INVALID_VALUE"
    assert "key column 'id' is blank" in info.value.error.message


ACCOUNT = Lookup.derive("AccountId", "Account", "External_Id__c", "account_id")
CHILD = FieldMap("Contact", "External_Id__c", "id", (("LastName", "last_name"),), (ACCOUNT,))


def child_payload(account: object) -> dict[str, object]:
    return build_payload(CHILD, SourceRow(7, 1, {"last_name": "Smith", "account_id": account}))


def test_a_lookup_names_the_parent_by_its_external_id_rendered_as_the_parent_renders_it() -> None:
    assert child_payload("A-1")["Account"] == {"External_Id__c": "A-1"}
    # The parent stream sends its integer key 42 as "42", and so does the child.
    parent = build_payload(FieldMap("Account", "External_Id__c", "id", ()), SourceRow(42, 1, {}))
    assert (
        child_payload(42)["Account"]
        == {"External_Id__c": parent["External_Id__c"]}
        == {"External_Id__c": "42"}
    )
    assert child_payload(Decimal("42"))["Account"] == {"External_Id__c": "42"}
    assert "AccountId" not in child_payload("A-1")


def test_a_null_parent_column_clears_the_lookup_field() -> None:
    sent = child_payload(None)
    assert sent["AccountId"] is None and "Account" not in sent


def test_a_polymorphic_lookup_says_which_object_the_parent_is() -> None:
    who = Lookup.derive("WhoId", "Contact", "External_Id__c", "contact_id")
    task = FieldMap("Task", "External_Id__c", "id", (), (who,))
    sent = build_payload(task, SourceRow(1, 1, {"contact_id": "C-9"}))
    assert sent["Who"] == {"attributes": {"type": "Contact"}, "External_Id__c": "C-9"}


@pytest.mark.parametrize(
    ("field", "relationship"),
    [("AccountId", "Account"), ("Parent_Account__c", "Parent_Account__r"), ("WhoId", "Who")],
)
def test_relationship_names_are_derived_as_salesforce_names_them(
    field: str, relationship: str
) -> None:
    assert relationship_name(field) == relationship


def test_a_blank_parent_key_is_a_record_error_naming_the_column() -> None:
    with pytest.raises(MappingError) as info:
        child_payload("  ")
    assert info.value.error.code == "CRM_EXPORT_INVALID_VALUE"
    assert "'account_id'" in info.value.error.message
