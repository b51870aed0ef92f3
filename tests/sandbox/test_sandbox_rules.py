"""The org's rules: field definitions, permissions, lookups, validation rules and triggers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests
from simple_salesforce.exceptions import SalesforceMalformedRequest

from crm_export.sandbox.org import OrgError, load_org
from crm_export.sandbox.testing import SandboxHandle, running_sandbox
from tests.sandbox.sandbox_helpers import VERSION, Salesforce, contact, error_body, upsert_contacts


def only_error(sf: Salesforce, **fields: Any) -> dict[str, Any]:
    """The single error the default org gives one Contact with ``fields``."""
    results = upsert_contacts(sf, [contact("R-1", **fields)])
    assert results[0]["success"] is False, results
    errors: list[dict[str, Any]] = results[0]["errors"]
    assert len(errors) == 1, errors
    return errors[0]


def test_string_too_long(sf: Salesforce) -> None:
    assert only_error(sf, LastName="x" * 81) == {
        "statusCode": "STRING_TOO_LONG",
        "message": f"Last Name: data value too large: {'x' * 81} (max length=80)",
        "fields": ["LastName"],
    }


def test_invalid_email(sf: Salesforce) -> None:
    assert only_error(sf, LastName="A", Email="not-an-email") == {
        "statusCode": "INVALID_EMAIL_ADDRESS",
        "message": "Email: invalid email address: not-an-email",
        "fields": ["Email"],
    }


def test_restricted_picklist(sf: Salesforce) -> None:
    error = only_error(sf, LastName="A", LeadSource="Carrier Pigeon")
    assert error["statusCode"] == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    assert error["fields"] == ["LeadSource"]


def request_error(sf: Salesforce, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The request-level error the default org gives a Collections upsert of ``records``."""
    with pytest.raises(SalesforceMalformedRequest) as refused:
        upsert_contacts(sf, records)
    [error] = error_body(refused.value)
    return dict(error)


def where(records: list[dict[str, Any]], key: str) -> str:
    """Where the entry of ``key`` begins in the body requests sends for ``records`` (one line):
    at the comma before it."""
    text = json.dumps({"allOrNone": False, "records": records})
    comma = text.rindex(",", 0, text.index(f'"{key}":'))
    return f"[line:1, column:{comma + 1}]"


@pytest.mark.parametrize(
    ("fields", "wanted"),
    [
        ({"Birthdate": "not-a-date"}, "date from VALUE_STRING value not-a-date"),
        ({"Birthdate": "2026-02-30"}, "date from VALUE_STRING value 2026-02-30"),
        ({"Birthdate": 20260101}, "date from VALUE_NUMBER_INT value 20260101"),
        ({"HasOptedOutOfEmail": "maybe"}, "boolean from VALUE_STRING value maybe"),
        ({"HasOptedOutOfEmail": "TRUE"}, "boolean from VALUE_STRING value TRUE"),
        ({"HasOptedOutOfEmail": 1}, "boolean from VALUE_NUMBER_INT value 1"),
        ({"Description": {"a": 1}}, "textarea from START_OBJECT value {"),
    ],
)
def test_a_value_the_parser_cannot_read_fails_the_whole_request(
    sandbox: SandboxHandle, sf: Salesforce, fields: dict[str, Any], wanted: str
) -> None:
    # Two good records around the bad one: none is processed, none is written.
    records = [contact("R-1", LastName="A"), contact("R-2", LastName="B", **fields)]
    records.append(contact("R-3", LastName="C"))
    error = request_error(sf, records)
    assert error["errorCode"] == "JSON_PARSER_ERROR"
    assert error["message"].startswith(f"Cannot deserialize instance of {wanted} ")
    [key] = fields
    assert error["message"].endswith(
        f" or request may be missing a required field at {where(records, key)}"
    )
    assert sandbox.records("Contact") == [] and sandbox.rejections() == []


def test_an_array_for_a_text_field_has_its_own_wording(sf: Salesforce) -> None:
    records = [contact("R-1", LastName="A", LeadSource=["Web", "Other"])]
    assert request_error(sf, records) == {
        "errorCode": "JSON_PARSER_ERROR",
        "message": "Cannot deserialize instance of picklist from START_ARRAY value "
        + where(records, "LeadSource"),
    }


def test_the_first_unreadable_value_in_the_body_is_the_one_reported(sf: Salesforce) -> None:
    records = [
        contact("R-1", LastName="A", HasOptedOutOfEmail="yes"),
        contact("R-2", LastName="B", Birthdate="tomorrow"),
    ]
    assert "boolean from VALUE_STRING value yes" in request_error(sf, records)["message"]


def test_the_location_counts_lines_of_a_pretty_printed_body(
    sandbox: SandboxHandle, session: requests.Session
) -> None:
    body = "\n".join(
        [
            "{",
            '  "allOrNone": false,',
            '  "records": [',
            "    {",
            '      "attributes": {"type": "Contact"},',
            '      "External_Id__c": "R-1",',
            '      "Birthdate": "soon"',
            "    }",
            "  ]",
            "}",
        ]
    )
    answer = session.patch(
        f"{sandbox.base_url}/services/data/v{VERSION}/composite/sobjects/Contact/External_Id__c",
        data=body,
        headers={
            "Authorization": f"Bearer {sandbox.access_token()}",
            "Content-Type": "application/json",
        },
    )
    assert answer.status_code == 400
    # The entry begins at the comma that ends the line before it.
    assert answer.json()[0]["message"].endswith(" at [line:6, column:30]")


@pytest.mark.parametrize(
    "fields",
    [
        {"Birthdate": "1990-05-17", "HasOptedOutOfEmail": "true"},
        {"HasOptedOutOfEmail": False, "Birthdate": ""},
    ],
)
def test_values_the_parser_reads_go_through(sf: Salesforce, fields: dict[str, Any]) -> None:
    [result] = upsert_contacts(sf, [contact("R-1", LastName="A", **fields)])
    assert result["success"] is True, result


def test_numbers_read_from_numeric_text_but_not_from_words(
    sandbox: SandboxHandle, sf: Salesforce
) -> None:
    def account(ext_id: str, revenue: Any) -> dict[str, Any]:
        return {
            "attributes": {"type": "Account"},
            "External_Id__c": ext_id,
            "Name": ext_id,
            "AnnualRevenue": revenue,
        }

    def upsert(record: dict[str, Any]) -> Any:
        return sf.restful(
            "composite/sobjects/Account/External_Id__c",
            method="PATCH",
            json={"allOrNone": False, "records": [record]},
        )

    assert upsert(account("A-1", "12.5"))[0]["success"] is True
    assert upsert(account("A-2", 7))[0]["success"] is True
    assert {a["External_Id__c"]: a["AnnualRevenue"] for a in sandbox.records("Account")} == {
        "A-1": 12.5,
        "A-2": 7.0,
    }
    with pytest.raises(SalesforceMalformedRequest) as refused:
        upsert(account("A-3", "abc"))
    assert error_body(refused.value)[0]["message"].startswith(
        "Cannot deserialize instance of currency from VALUE_STRING value abc "
    )


def test_single_upsert_refuses_an_unreadable_value_the_same_way(sf: Salesforce) -> None:
    with pytest.raises(SalesforceMalformedRequest) as refused:
        sf.Contact.upsert("External_Id__c/R-1", {"LastName": "A", "Birthdate": "not-a-date"})
    [error] = error_body(refused.value)
    assert error["errorCode"] == "JSON_PARSER_ERROR"
    # The body is {"LastName": "A", "Birthdate": ...}: the entry starts at the comma.
    assert error["message"] == (
        "Cannot deserialize instance of date from VALUE_STRING value not-a-date or request "
        "may be missing a required field at [line:1, column:17]"
    )


def test_field_the_integration_user_cannot_write(sf: Salesforce) -> None:
    assert only_error(sf, LastName="A", Lifetime_Value__c=10) == {
        "statusCode": "INVALID_FIELD_FOR_INSERT_UPDATE",
        "message": "Unable to create/update fields: Lifetime_Value__c. Please check the security "
        "settings of this field and verify that it is read/write for your profile or permission "
        "set.",
        "fields": ["Lifetime_Value__c"],
    }


def test_unique_field_duplicate_value(sandbox: SandboxHandle, sf: Salesforce) -> None:
    # Email is not unique in the default org; make it so for this test.
    sandbox.set_org(patch={"objects": {"Contact": {"fields": {"Email": {"unique": True}}}}})
    first = upsert_contacts(sf, [contact("U-1", LastName="A", Email="same@x.org")])
    second = upsert_contacts(sf, [contact("U-2", LastName="B", Email="SAME@x.org")])
    assert second[0]["errors"] == [
        {
            "statusCode": "DUPLICATE_VALUE",
            "message": "duplicate value found: Email duplicates value on record with id: "
            + first[0]["id"],
            "fields": ["Email"],
        }
    ]


def test_validation_rules(sf: Salesforce) -> None:
    assert only_error(sf, LastName="A", Email="someone@EXAMPLE.invalid") == {
        "statusCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION",
        "message": "Email addresses at example.invalid are not accepted.",
        "fields": ["Email"],
    }
    assert only_error(sf, LastName="A", Title="DO NOT EXPORT") == {
        "statusCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION",
        "message": "This contact is marked DO NOT EXPORT.",
        "fields": ["Title"],
    }


def test_trigger_fails_inserts_and_updates(sf: Salesforce) -> None:
    assert only_error(sf, LastName="TriggerFail") == {
        "statusCode": "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY",
        "message": "ContactTrigger: execution of BeforeInsert caused by: "
        "System.NullPointerException: Attempt to de-reference a null object",
        "fields": [],
    }
    upsert_contacts(sf, [contact("T-1", LastName="Fine")])
    updated = upsert_contacts(sf, [contact("T-1", LastName="TriggerFail")])
    assert updated[0]["errors"][0]["message"].startswith(
        "ContactTrigger: execution of BeforeUpdate caused by:"
    )


def test_lookup_by_the_accounts_external_id(sandbox: SandboxHandle, sf: Salesforce) -> None:
    account_id = sf.Account.upsert(
        "External_Id__c/A-1", {"Name": "Acme"}, raw_response=True
    ).json()["id"]
    ok = upsert_contacts(sf, [contact("C-1", LastName="Kid", Account={"External_Id__c": "a-1"})])
    assert ok[0]["success"] is True
    assert sandbox.records("Contact")[0]["AccountId"] == account_id

    missing = only_error(sf, LastName="Kid", Account={"External_Id__c": "A-404"})
    assert missing == {
        "statusCode": "INVALID_FIELD",
        "message": "Foreign key external ID: A-404 not found for field External_Id__c in entity "
        "Account",
        "fields": [],
    }


def test_lookup_by_salesforce_id(sf: Salesforce) -> None:
    account_id = sf.Account.upsert(
        "External_Id__c/A-1", {"Name": "Acme"}, raw_response=True
    ).json()["id"]
    assert upsert_contacts(sf, [contact("C-1", LastName="K", AccountId=account_id)])[0]["success"]
    gone = only_error(sf, LastName="K", AccountId="001Sb0000000999AAA")
    assert gone["statusCode"] == "INVALID_CROSS_REFERENCE_KEY"
    assert only_error(sf, LastName="K", AccountId="not-an-id")["statusCode"] == "MALFORMED_ID"


def test_relax_a_validation_rule_mid_test(sandbox: SandboxHandle, sf: Salesforce) -> None:
    assert only_error(sf, LastName="A", Title="DO NOT EXPORT")["statusCode"] == (
        "FIELD_CUSTOM_VALIDATION_EXCEPTION"
    )
    sandbox.set_org(
        patch={
            "objects": {
                "Contact": {"validation_rules": {"Title_Not_Do_Not_Export": {"active": False}}}
            }
        }
    )
    assert upsert_contacts(sf, [contact("R-1", LastName="A", Title="DO NOT EXPORT")])[0]["success"]


CUSTOM_ORG = """
[users."u@x"]
password = "pw"

[clients.app]
client_secret = "s"
run_as = "u@x"

[objects.Invoice__c]
label = "Invoice"

[objects.Invoice__c.fields.Number__c]
external_id = true
unique = true
case_sensitive = true

[objects.Invoice__c.fields.Amount__c]
type = "double"
required = true

[objects.Invoice__c.fields.Status__c]
type = "picklist"
values = ["Draft", "Sent"]

[objects.Invoice__c.validation_rules.Big_Draft]
error_message = "Drafts over 1000 need a number starting with INV-"
when = { all = [
  { field = "Status__c", op = "eq", value = "Draft" },
  { field = "Amount__c", op = "gt", value = 1000 },
  { not = { field = "Number__c", op = "matches", value = "^INV-" } },
] }

[objects.Invoice__c.triggers.InvoiceTrigger]
events = ["update"]
timing = "after"
exception = "System.LimitException: Too many SOQL queries: 101"
when = { any = [
  { field = "Amount__c", op = "lt", value = 0 },
  { field = "Status__c", op = "is_empty" },
] }
"""


def test_a_custom_org_file_with_combined_predicates() -> None:
    with running_sandbox(org=CUSTOM_ORG) as sandbox, sandbox.requests_session() as session:
        assert (sandbox.client_id, sandbox.username) == ("app", "u@x")
        sf = Salesforce(
            instance_url=sandbox.base_url,
            session_id=sandbox.access_token(),
            session=session,
            version=VERSION,
        )
        invoices = sf.Invoice__c
        assert invoices.describe()["keyPrefix"] == "a00"
        with pytest.raises(SalesforceMalformedRequest) as rule:
            invoices.upsert("Number__c/X-1", {"Amount__c": 5000, "Status__c": "Draft"})
        assert error_body(rule.value)[0]["errorCode"] == "FIELD_CUSTOM_VALIDATION_EXCEPTION"
        assert invoices.upsert("Number__c/INV-1", {"Amount__c": 5000, "Status__c": "Draft"}) == 201
        # Case-sensitive external id: a different record.
        assert invoices.upsert("Number__c/inv-1", {"Amount__c": 1, "Status__c": "Sent"}) == 201
        with pytest.raises(SalesforceMalformedRequest) as trigger:
            invoices.upsert("Number__c/INV-1", {"Amount__c": -1})
        assert error_body(trigger.value)[0]["message"].startswith(
            "InvoiceTrigger: execution of AfterUpdate caused by: System.LimitException"
        )
        assert [r["Amount__c"] for r in sandbox.records("Invoice__c")] == [5000.0, 1.0]


def test_an_invalid_org_reports_every_problem_with_its_key() -> None:
    with pytest.raises(OrgError) as invalid:
        load_org(
            {
                "clients": {"c": {"run_as": "nobody"}},
                "objects": {
                    "Thing__c": {
                        "fields": {"Ref__c": {"type": "reference", "reference_to": "Gone__c"}},
                        "validation_rules": {"R": {"error_message": "m", "when": {"op": "eq"}}},
                    },
                    "Other__c": {"fields": {"X__c": {"type": "blob"}}},
                },
            }
        )
    text = "\n".join(invalid.value.problems)
    assert "clients.c.client_secret: required" in text
    assert "clients.c.run_as: no user 'nobody'" in text
    assert "objects.Thing__c.fields.Ref__c.reference_to: no object 'Gone__c'" in text
    assert "objects.Thing__c.validation_rules.R.when: 'field' is required" in text
    assert "objects.Other__c.fields.X__c.type" in text


def test_set_org_rejects_an_invalid_patch_and_keeps_the_old_org(sandbox: SandboxHandle) -> None:
    from crm_export.sandbox.admin_client import SandboxAdminError

    with pytest.raises(SandboxAdminError) as rejected:
        sandbox.set_org(patch={"objects": {"Contact": {"fields": {"LastName": {"length": -1}}}}})
    assert rejected.value.status == 400
    assert "objects.Contact.fields.LastName.length" in str(rejected.value)
    assert sandbox.org()["objects"]["Contact"]["fields"]["LastName"]["length"] == 80


def test_a_missing_org_file_is_reported_as_unreadable(tmp_path: Path) -> None:
    with pytest.raises(OrgError) as missing:
        load_org(str(tmp_path / "nope.toml"))
    assert missing.value.problems == [
        f"{tmp_path / 'nope.toml'}: cannot read: No such file or directory"
    ]
