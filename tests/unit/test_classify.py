from __future__ import annotations

import pytest

from crm_export import errors
from crm_export.classify import (
    ErrorClass,
    MissingParent,
    classify_record_error,
    missing_parent,
    request_error_class,
)
from crm_export.ports import RecordError


@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        ("UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access", ErrorClass.TRANSIENT),
        ("ALL_OR_NONE_OPERATION_ROLLED_BACK", "Record rolled back", ErrorClass.TRANSIENT),
        ("FIELD_CUSTOM_VALIDATION_EXCEPTION", "Email must be real", ErrorClass.RECORD),
        ("REQUIRED_FIELD_MISSING", "Required fields are missing: [LastName]", ErrorClass.RECORD),
        ("CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY", "ContactTrigger: NullPointer", ErrorClass.RECORD),
        (
            "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY",
            "ContactTrigger: execution caused by: UNABLE_TO_LOCK_ROW",
            ErrorClass.TRANSIENT,
        ),
        ("DUPLICATE_VALUE", "duplicate value found", ErrorClass.RECORD),
        ("INVALID_FIELD", "No such column 'Foo__c' on sobject", ErrorClass.CONFIGURATION),
        ("SOMETHING_NEW_FROM_SALESFORCE", "?", ErrorClass.RECORD),
    ],
)
def test_record_error_classes(code: str, message: str, expected: ErrorClass) -> None:
    assert classify_record_error(RecordError(code, message)) is expected


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (401, "INVALID_SESSION_ID", errors.SessionExpiredError),
        (403, "REQUEST_LIMIT_EXCEEDED", errors.RequestLimitError),
        (403, "INSUFFICIENT_ACCESS", errors.SalesforceConfigurationError),
        (404, "NOT_FOUND", errors.SalesforceConfigurationError),
        (400, "INVALID_FIELD", errors.SalesforceConfigurationError),
        (410, None, errors.SalesforceConfigurationError),
        (429, None, errors.ServerError),
        (500, "UNKNOWN_EXCEPTION", errors.ServerError),
        (502, None, errors.ServerError),
        (503, None, errors.ServerError),
    ],
)
def test_request_error_classes(status: int, code: str | None, expected: type) -> None:
    cls = request_error_class(status, code)
    assert cls is expected
    # Retry policy reads only the marker class.
    transient = issubclass(cls, errors.TransientError)
    assert transient != issubclass(cls, errors.TerminalError)


NOT_A_DATE = (
    "Cannot deserialize instance of date from VALUE_STRING value not-a-date or request may be "
    "missing a required field at [line:1, column:129]"
)


@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        # A value of some record: split the request to find it.
        ("JSON_PARSER_ERROR", NOT_A_DATE, errors.RequestPayloadError),
        (
            "JSON_PARSER_ERROR",
            "Cannot deserialize instance of multipicklist from START_ARRAY value [line:1, "
            "column:51]",
            errors.RequestPayloadError,
        ),
        ("MALFORMED_ID", "Contact ID: id value of incorrect type: xyz", errors.RequestPayloadError),
        (
            "INVALID_FIELD",
            "Foreign key external ID: A-1 not found for field External_Id__c in entity Account",
            errors.RequestPayloadError,
        ),
        # A field of every record, or a body we built wrong: configuration, no split.
        (
            "INVALID_FIELD",
            "No such column 'Foo__c' on sobject of type Contact",
            errors.SalesforceConfigurationError,
        ),
        (
            "JSON_PARSER_ERROR",
            "No such column 'Quantitay__c' on sobject of type OBO_Line_Item__c at [line:53, "
            "column:23]",
            errors.SalesforceConfigurationError,
        ),
        (
            "JSON_PARSER_ERROR",
            "Unexpected character ('}' (code 125)): was expecting double-quote to start field "
            "name at [line:1, column:2]",
            errors.SalesforceConfigurationError,
        ),
        ("EXCEEDED_ID_LIMIT", "record limit reached", errors.SalesforceConfigurationError),
    ],
)
def test_a_400_that_names_a_value_is_a_payload_error(
    code: str, message: str, expected: type
) -> None:
    assert request_error_class(400, code, message) is expected
    # Only a 400 is refused for its payload.
    assert request_error_class(403, code, message) is not errors.RequestPayloadError


def test_a_lookup_whose_parent_is_missing_is_a_record_error_not_configuration() -> None:
    missing = RecordError(
        "INVALID_FIELD",
        "Foreign key external ID: A-1 not found for field External_Id__c in entity Account",
    )
    assert classify_record_error(missing) is ErrorClass.RECORD
    assert classify_record_error(RecordError("JSON_PARSER_ERROR", NOT_A_DATE)) is ErrorClass.RECORD


def test_a_missing_parent_is_read_from_salesforces_message() -> None:
    error = RecordError(
        "INVALID_FIELD",
        "Foreign key external ID: A-9 not found for field External_Id__c in entity Account",
    )
    assert missing_parent(error) == MissingParent("Account", "External_Id__c", "A-9")
    assert classify_record_error(error) is ErrorClass.RECORD
    # An unknown field is INVALID_FIELD too, but names no parent: configuration.
    unknown = RecordError("INVALID_FIELD", "No such column 'Foo__c' on sobject of type Contact")
    assert missing_parent(unknown) is None
    assert classify_record_error(unknown) is ErrorClass.CONFIGURATION


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        # The daily allocation is spent: retrying within the run only spends what is not
        # there, so the run is deferred (neither retried nor failed).
        ("TotalRequests Limit exceeded.", errors.ApiBudgetReached),
        # A concurrency cap clears in seconds: retried with backoff.
        ("ConcurrentPerOrgLongTxn Limit exceeded.", errors.RequestLimitError),
        (
            "ConcurrentRequests (Concurrent API Requests) Limit exceeded.",
            errors.RequestLimitError,
        ),
    ],
)
def test_request_limits_apart_by_their_message(message: str, expected: type) -> None:
    cls = request_error_class(403, "REQUEST_LIMIT_EXCEEDED", message)
    assert cls is expected
    if cls is errors.ApiBudgetReached:
        assert not issubclass(cls, errors.TransientError | errors.TerminalError)
