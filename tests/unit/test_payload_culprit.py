"""Which record a whole-request 400 is about, read from Salesforce's answer and the body sent."""

from __future__ import annotations

import json
from typing import Any

from crm_export.salesforce import culprit_index


def body(*records: dict[str, Any], indent: int | None = None) -> bytes:
    typed = [{"attributes": {"type": "Contact"}, **r} for r in records]
    return json.dumps({"allOrNone": False, "records": typed}, indent=indent).encode()


def refusal(value: str, line: int, column: int) -> str:
    return (
        f"Cannot deserialize instance of date from VALUE_STRING value {value} or request may "
        f"be missing a required field at [line:{line}, column:{column}]"
    )


def place(text: bytes, needle: str) -> tuple[int, int]:
    """Line and column (from 1) of the comma before ``needle``: where its entry begins."""
    decoded = text.decode()
    offset = decoded.rindex(",", 0, decoded.index(needle))
    line = decoded.count("\n", 0, offset) + 1
    return line, offset - (decoded.rfind("\n", 0, offset) + 1) + 1


RECORDS = [
    {"External_Id__c": "1", "LastName": "A", "Birthdate": "1990-01-01"},
    {"External_Id__c": "2", "LastName": "B", "Birthdate": "soon"},
    {"External_Id__c": "3", "LastName": "soon", "Birthdate": "later"},
]


def test_the_record_holding_the_place_and_the_value_is_the_culprit() -> None:
    sent = body(*RECORDS)
    assert culprit_index(sent, refusal("soon", *place(sent, '"Birthdate": "soon"'))) == 1
    assert culprit_index(sent, refusal("later", *place(sent, '"Birthdate": "later"'))) == 2


def test_a_pretty_printed_body_is_read_by_line() -> None:
    sent = body(*RECORDS, indent=2)
    line, column = place(sent, '"Birthdate": "later"')
    assert line > 1
    assert culprit_index(sent, refusal("later", line, column)) == 2


def test_a_place_that_does_not_hold_the_value_blames_nobody() -> None:
    sent = body(*RECORDS)
    # Record 1 is where the place points, but "later" is not one of its values.
    assert culprit_index(sent, refusal("later", *place(sent, '"Birthdate": "soon"'))) is None
    # Between two records, past the end, or no place at all.
    between = sent.decode().index("}, {") + 2
    assert culprit_index(sent, refusal("soon", 1, between)) is None
    assert culprit_index(sent, refusal("soon", 9, 1)) is None
    assert culprit_index(sent, "Cannot deserialize instance of date from VALUE_STRING") is None
    assert culprit_index(None, refusal("soon", 1, 10)) is None


def test_numbers_and_arrays_are_matched_as_salesforce_quotes_them() -> None:
    sent = body({"External_Id__c": "1", "Birthdate": 20260101}, {"External_Id__c": "2"})
    line, column = place(sent, '"Birthdate": 20260101')
    message = refusal("20260101", line, column).replace("VALUE_STRING", "VALUE_NUMBER_INT")
    assert culprit_index(sent, message) == 0
    sent = body({"External_Id__c": "1"}, {"External_Id__c": "2", "LeadSource": ["Web"]})
    line, column = place(sent, '"LeadSource"')
    array = "Cannot deserialize instance of picklist from START_ARRAY value "
    array += f"[line:{line}, column:{column}]"
    assert culprit_index(sent, array) == 1
