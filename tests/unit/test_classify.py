from __future__ import annotations

import pytest

from crm_export import errors
from crm_export.classify import ErrorClass, classify_record_error, request_error_class
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
