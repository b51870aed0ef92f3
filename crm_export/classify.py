"""Error classification, as tables.

Two questions get asked about every Salesforce error:

* a record's ``statusCode`` in an upsert result: retry it soon, hand it to a person
  (ExportErrors, then pause or skip), or stop the run because every record would fail alike;
* a failed request (HTTP status, ``errorCode``, and for a 400 whether its message names a
  record's value): which exception class it becomes, which in turn decides retry
  (``TransientError``), stop (``TerminalError``), or a split of the request to find the record
  (``RequestPayloadError``).

Both are answered by looking rows up in the tables below, never by a chain of ifs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from crm_export import errors
from crm_export.ports import RecordError


class ErrorClass(StrEnum):
    TRANSIENT = "transient"  # retry within the run, with backoff
    RECORD = "record"  # needs a person: ExportErrors, then pause or skip
    CONFIGURATION = "configuration"  # every record would fail alike: stop the run


# Codes not listed are RECORD: an unknown per-record code is safest in front of a person.
RECORD_CODES: Mapping[str, ErrorClass] = {
    # Transient: nothing is wrong with the record itself.
    "UNABLE_TO_LOCK_ROW": ErrorClass.TRANSIENT,
    "ALL_OR_NONE_OPERATION_ROLLED_BACK": ErrorClass.TRANSIENT,
    "REQUEST_LIMIT_EXCEEDED": ErrorClass.TRANSIENT,
    "SERVER_UNAVAILABLE": ErrorClass.TRANSIENT,
    "UNKNOWN_EXCEPTION": ErrorClass.TRANSIENT,
    # Configuration: the mapping, the object or the integration user is wrong for every record.
    "INVALID_FIELD": ErrorClass.CONFIGURATION,
    "INVALID_TYPE": ErrorClass.CONFIGURATION,
    "NOT_FOUND": ErrorClass.CONFIGURATION,
    "INSUFFICIENT_ACCESS": ErrorClass.CONFIGURATION,
    "API_DISABLED_FOR_ORG": ErrorClass.CONFIGURATION,
    "STORAGE_LIMIT_EXCEEDED": ErrorClass.CONFIGURATION,
    "INVALID_SESSION_ID": ErrorClass.CONFIGURATION,
    # Record: named here so the table documents what a person will see.
    "FIELD_CUSTOM_VALIDATION_EXCEPTION": ErrorClass.RECORD,
    "REQUIRED_FIELD_MISSING": ErrorClass.RECORD,
    "INSUFFICIENT_ACCESS_OR_READONLY": ErrorClass.RECORD,
    "INSUFFICIENT_ACCESS_ON_CROSS_REFERENCE_ENTITY": ErrorClass.RECORD,
    "INVALID_FIELD_FOR_INSERT_UPDATE": ErrorClass.RECORD,
    "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY": ErrorClass.RECORD,
    "CANNOT_EXECUTE_FLOW_TRIGGER": ErrorClass.RECORD,
    "DUPLICATES_DETECTED": ErrorClass.RECORD,
    "DUPLICATE_VALUE": ErrorClass.RECORD,
    "DUPLICATE_EXTERNAL_ID": ErrorClass.RECORD,
    "INVALID_EMAIL_ADDRESS": ErrorClass.RECORD,
    "STRING_TOO_LONG": ErrorClass.RECORD,
    "INVALID_CROSS_REFERENCE_KEY": ErrorClass.RECORD,
    "ENTITY_IS_DELETED": ErrorClass.RECORD,
    "ENTITY_IS_LOCKED": ErrorClass.RECORD,
    "MALFORMED_ID": ErrorClass.RECORD,
    "NUMBER_OUTSIDE_VALID_RANGE": ErrorClass.RECORD,
    "INVALID_TYPE_ON_FIELD_IN_RECORD": ErrorClass.RECORD,
    # A record the export core found standing alone behind a whole-request 400 (below).
    "JSON_PARSER_ERROR": ErrorClass.RECORD,
    "FIELD_INTEGRITY_EXCEPTION": ErrorClass.RECORD,
    "FIELD_FILTER_VALIDATION_EXCEPTION": ErrorClass.RECORD,
    "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST": ErrorClass.RECORD,
    "INACTIVE_OWNER_OR_USER": ErrorClass.RECORD,
}

# (code, text in the message) -> class. A trigger that hit a lock surfaces as a trigger
# failure whose message carries the lock code; it clears on retry like the lock itself.
# INVALID_FIELD names a field of every record, except when it names a lookup's value: a parent
# that does not exist is this record's problem (salesforce-api.md D).
RECORD_MESSAGE_OVERRIDES: tuple[tuple[str, str, ErrorClass], ...] = (
    ("CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY", "UNABLE_TO_LOCK_ROW", ErrorClass.TRANSIENT),
    ("INVALID_FIELD", "Foreign key external ID: ", ErrorClass.RECORD),
)


@dataclass(frozen=True)
class MissingParent:
    """The parent a record's lookup names, which Salesforce did not find."""

    sobject: str
    external_id_field: str
    external_id: str


_MISSING_PARENT = re.compile(
    r"^Foreign key external ID: (?P<value>.*) not found for field (?P<field>\S+) "
    r"in entity (?P<sobject>\S+?)\.?$"
)


def missing_parent(error: RecordError) -> MissingParent | None:
    """The parent a record waits for, when its error is Salesforce's "Foreign key external
    ID: A-9 not found for field External_Id__c in entity Account": the parent is not in
    Salesforce (yet). A record error, never a configuration one: it clears by itself once
    the parent arrives, so it is retried every run and never counts as a flood."""
    if error.code != "INVALID_FIELD":
        return None
    match = _MISSING_PARENT.match(error.message)
    if match is None:
        return None
    return MissingParent(match["sobject"], match["field"], match["value"])


def classify_record_error(error: RecordError) -> ErrorClass:
    for code, text, cls in RECORD_MESSAGE_OVERRIDES:
        if error.code == code and text in error.message:
            return cls
    return RECORD_CODES.get(error.code, ErrorClass.RECORD)


# Request-level failures. Lookup order: a payload 400 (below), then (status, errorCode), then
# (status, None), then the status family (e.g. 500 for any 5XX).
RequestRule = type[errors.CrmExportError]

# Whole-request 400s whose message names a value of some record, not a field of every record:
# the same request fails again, the same records without that one go through, so the export
# core splits the request to find it (RequestPayloadError). Any other 400 is configuration:
# "No such column 'Foo__c' on sobject of type Contact" names a field, true of every record.
#
# | errorCode         | message names                                   | source                 |
# | JSON_PARSER_ERROR | "Cannot deserialize instance of <type> from     | salesforce-api.md D;   |
# |                   |  <TOKEN> value <v> ... at [line:L, column:C]"   | docs/sandbox.md        |
# | MALFORMED_ID      | "<Object> ID: id value of incorrect type: <v>"  | salesforce-api.md B3   |
# | INVALID_FIELD     | "Foreign key external ID: <v> not found for     | salesforce-api.md D    |
# |                   |  field <F> in entity <Object>"                  |                        |
PAYLOAD_400S: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("JSON_PARSER_ERROR", re.compile(r"^Cannot deserialize instance of \S+ from [A-Z_]+ value")),
    ("MALFORMED_ID", re.compile(r"id value of incorrect type: ")),
    ("INVALID_FIELD", re.compile(r"^Foreign key external ID: .* not found for field ")),
)

REQUEST_RULES: Mapping[tuple[int, str | None], RequestRule] = {
    (401, "INVALID_SESSION_ID"): errors.SessionExpiredError,
    (401, None): errors.SessionExpiredError,
    (403, "REQUEST_LIMIT_EXCEEDED"): errors.RequestLimitError,
    (403, None): errors.SalesforceConfigurationError,
    (404, None): errors.SalesforceConfigurationError,
    (400, None): errors.SalesforceConfigurationError,
    (405, None): errors.SalesforceConfigurationError,
    (410, None): errors.SalesforceConfigurationError,
    (429, None): errors.ServerError,
    (300, None): errors.SalesforceConfigurationError,
    (500, None): errors.ServerError,
}

# (status, errorCode, text in the message) -> class, looked up before REQUEST_RULES. The
# daily allocation spent and a concurrency cap share one code (salesforce-api.md B3); only
# the concurrency cap clears within a run, so the spent allocation defers the run instead.
REQUEST_MESSAGE_RULES: tuple[tuple[int, str, str, RequestRule], ...] = (
    (403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests", errors.ApiBudgetReached),
)

# Hints that turn a terse code into something a person can act on.
REQUEST_HINTS: Mapping[int, str] = {
    400: "the request does not fit this org: check the stream's sobject, fields and api_version",
    403: "the integration user lacks access: check its profile or permission sets",
    404: "unknown object, field or API version: check sobject, external_id_field and fields",
    410: "this API version is retired: raise salesforce.api_version",
}


def request_error_class(status: int, error_code: str | None, message: str = "") -> RequestRule:
    if status == 400 and any(
        error_code == code and pattern.search(message) for code, pattern in PAYLOAD_400S
    ):
        return errors.RequestPayloadError
    for rule_status, code, text, cls in REQUEST_MESSAGE_RULES:
        if status == rule_status and error_code == code and text in message:
            return cls
    for key in ((status, error_code), (status, None), (status // 100 * 100, None)):
        rule = REQUEST_RULES.get(key)
        if rule is not None:
            return rule
    return errors.ServerError
