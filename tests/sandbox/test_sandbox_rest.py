"""REST endpoints through unmodified simple-salesforce: upserts, limits, describe, query."""

from __future__ import annotations

import pytest
import requests
from simple_salesforce.exceptions import (
    SalesforceMalformedRequest,
    SalesforceMoreThanOneRecord,
    SalesforceResourceNotFound,
)
from simple_salesforce.format import format_external_id

from crm_export.sandbox.ids import looks_like_id
from crm_export.sandbox.testing import SandboxHandle
from tests.sandbox.sandbox_helpers import VERSION, Salesforce, contact, error_body, upsert_contacts

ROLLED_BACK = {
    "statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
    "message": "Record rolled back because not all records were valid and the request was "
    "using AllOrNone header",
    "fields": [],
}
MISSING_LAST_NAME = {
    "statusCode": "REQUIRED_FIELD_MISSING",
    "message": "Required fields are missing: [LastName]",
    "fields": ["LastName"],
}


def test_collections_upsert_creates_then_updates_in_request_order(
    sandbox: SandboxHandle, sf: Salesforce
) -> None:
    first = upsert_contacts(sf, [contact("C-1", LastName="Smith"), contact("C-2", LastName="Doe")])
    assert [r["created"] for r in first] == [True, True]
    assert all(r["success"] and r["errors"] == [] for r in first)
    assert first[0]["id"].startswith("003") and len(first[0]["id"]) == 18
    assert looks_like_id(first[0]["id"])

    second = upsert_contacts(sf, [contact("C-2", Title="CTO"), contact("C-3", LastName="New")])
    assert [r["created"] for r in second] == [False, True]
    assert second[0]["id"] == first[1]["id"]
    stored = {r["External_Id__c"]: r for r in sandbox.records("Contact")}
    assert stored["C-2"]["Title"] == "CTO" and stored["C-2"]["LastName"] == "Doe"


def test_collections_all_or_none_false_commits_each_record_alone(
    sandbox: SandboxHandle, sf: Salesforce
) -> None:
    results = upsert_contacts(sf, [contact("C-1", LastName="Ok"), contact("C-2")])
    assert results[0]["success"] is True
    assert results[1] == {"success": False, "errors": [MISSING_LAST_NAME]}
    assert [r["External_Id__c"] for r in sandbox.records("Contact")] == ["C-1"]


def test_collections_all_or_none_true_commits_nothing_if_one_fails(
    sandbox: SandboxHandle, sf: Salesforce
) -> None:
    upsert_contacts(sf, [contact("C-0", LastName="Before")])
    results = upsert_contacts(
        sf,
        [contact("C-0", LastName="Changed"), contact("C-1", LastName="Ok"), contact("C-2")],
        all_or_none=True,
    )
    assert results == [
        {"success": False, "errors": [ROLLED_BACK]},
        {"success": False, "errors": [ROLLED_BACK]},
        {"success": False, "errors": [MISSING_LAST_NAME]},
    ]
    records = sandbox.records("Contact")
    assert [(r["External_Id__c"], r["LastName"]) for r in records] == [("C-0", "Before")]
    assert len(sandbox.writes()) == 1  # only the first call's create


def test_collections_same_external_id_twice_fails_both(sf: Salesforce) -> None:
    results = upsert_contacts(
        sf,
        [contact("C-1", LastName="A"), contact("c-1", LastName="B"), contact("C-2", LastName="C")],
    )
    # External ids are case-insensitive, as in Salesforce; every record sharing one fails.
    assert results[0]["errors"] == [
        {
            "statusCode": "DUPLICATE_VALUE",
            "message": "Duplicate external id specified: C-1",
            "fields": ["External_Id__c"],
        }
    ]
    assert results[1]["errors"][0]["message"] == "Duplicate external id specified: c-1"
    assert results[1]["errors"][0]["fields"] == ["External_Id__c"]
    assert results[2]["success"] is True


def test_collections_request_level_errors(sf: Salesforce) -> None:
    with pytest.raises(SalesforceMalformedRequest) as too_many:
        upsert_contacts(sf, [contact(f"C-{i}", LastName="X") for i in range(201)])
    assert error_body(too_many.value)[0]["errorCode"] == "EXCEEDED_ID_LIMIT"

    with pytest.raises(SalesforceMalformedRequest) as bad_field:
        upsert_contacts(sf, [contact("C-1", LastName="X", Foo__c="y")])
    assert error_body(bad_field.value) == [
        {
            "message": "No such column 'Foo__c' on sobject of type Contact",
            "errorCode": "INVALID_FIELD",
        }
    ]

    with pytest.raises(SalesforceMalformedRequest) as no_type:
        upsert_contacts(sf, [{"External_Id__c": "C-1", "LastName": "X"}])
    assert error_body(no_type.value)[0]["errorCode"] == "INVALID_TYPE"

    with pytest.raises(SalesforceResourceNotFound) as unknown_object:
        sf.restful(
            "composite/sobjects/Widget__c/External_Id__c",
            method="PATCH",
            json={"allOrNone": False, "records": []},
        )
    assert error_body(unknown_object.value) == [
        {"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}
    ]


def test_single_upsert_201_then_200_with_the_same_id(sf: Salesforce) -> None:
    contacts = sf.Contact
    created = contacts.upsert("External_Id__c/S-1", {"LastName": "One"}, raw_response=True)
    assert created.status_code == 201
    body = created.json()
    assert body["success"] is True and body["created"] is True and body["errors"] == []
    updated = contacts.upsert("External_Id__c/S-1", {"Title": "Boss"}, raw_response=True)
    assert updated.status_code == 200
    assert updated.json() == {"id": body["id"], "success": True, "errors": [], "created": False}
    assert contacts.api_usage["api-usage"].used == 2  # the token call is not counted


def test_single_upsert_record_error_is_400_with_an_errorcode_array(sf: Salesforce) -> None:
    with pytest.raises(SalesforceMalformedRequest) as failed:
        sf.Contact.upsert("External_Id__c/S-1", {"FirstName": "No last name"})
    assert failed.value.status == 400
    assert error_body(failed.value) == [
        {
            "message": "Required fields are missing: [LastName]",
            "errorCode": "REQUIRED_FIELD_MISSING",
            "fields": ["LastName"],
        }
    ]


def test_single_upsert_on_a_shared_external_id_is_300(
    sandbox: SandboxHandle, sf: Salesforce
) -> None:
    # The org makes the field external but not unique, so two records may share a value.
    sandbox.set_org(
        patch={"objects": {"Contact": {"fields": {"External_Id__c": {"unique": False}}}}}
    )
    ids = sandbox.insert_records(
        "Contact",
        [{"External_Id__c": "DUP", "LastName": "A"}, {"External_Id__c": "DUP", "LastName": "B"}],
    )
    with pytest.raises(SalesforceMoreThanOneRecord) as multiple:
        sf.Contact.upsert("External_Id__c/DUP", {"LastName": "C"})
    assert multiple.value.status == 300
    assert sorted(error_body(multiple.value)) == sorted(
        f"/services/data/v{VERSION}/sobjects/Contact/{i}" for i in ids
    )
    results = upsert_contacts(sf, [contact("DUP", LastName="C")])
    # The field's label, then the ids as a Java list: no Python repr.
    assert results[0]["errors"] == [
        {
            "statusCode": "DUPLICATE_EXTERNAL_ID",
            "message": f"External ID: more than one record found for external id field: "
            f"[{ids[0]}, {ids[1]}]",
            "fields": ["External_Id__c"],
        }
    ]


def test_single_upsert_unknown_object_or_external_field_is_404(sf: Salesforce) -> None:
    with pytest.raises(SalesforceResourceNotFound):
        sf.Widget__c.upsert("External_Id__c/X", {"Name": "x"})
    with pytest.raises(SalesforceResourceNotFound) as not_external:
        sf.Contact.upsert("LastName/Smith", {"FirstName": "x"})
    assert error_body(not_external.value)[0]["errorCode"] == "NOT_FOUND"


def test_single_upsert_of_an_encoded_value_with_a_slash(
    sandbox: SandboxHandle, sf: Salesforce
) -> None:
    status = sf.Contact.upsert(format_external_id("External_Id__c", "A/B 1"), {"LastName": "Slash"})
    assert status == 201
    assert sandbox.records("Contact")[0]["External_Id__c"] == "A/B 1"


def test_limits_follow_the_api_usage_counter(sf: Salesforce) -> None:
    first = sf.limits()["DailyApiRequests"]
    second = sf.limits()["DailyApiRequests"]
    assert first["Max"] == 5_000_000
    assert first["Remaining"] - second["Remaining"] == 1
    assert sf.api_usage["api-usage"].used == first["Max"] - second["Remaining"]


def test_describe_shows_fields_with_their_properties(sf: Salesforce) -> None:
    described = sf.Contact.describe()
    assert described["name"] == "Contact" and described["keyPrefix"] == "003"
    fields = {f["name"]: f for f in described["fields"]}
    assert fields["LastName"]["length"] == 80 and fields["LastName"]["nillable"] is False
    ext = fields["External_Id__c"]
    assert ext["externalId"] is True and ext["unique"] is True and ext["length"] == 255
    assert fields["Lifetime_Value__c"]["updateable"] is False
    assert fields["AccountId"]["referenceTo"] == ["Account"]
    assert fields["LeadSource"]["picklistValues"][0]["value"] == "Web"
    assert sf.Account.describe()["keyPrefix"] == "001"


def test_query_filters_orders_and_limits(sf: Salesforce) -> None:
    upsert_contacts(
        sf,
        [
            contact("Q-1", LastName="Alpha", Title="CEO"),
            contact("Q-2", LastName="Beta", Title="CTO"),
            contact("Q-3", LastName="Gamma", Title="CEO"),
        ],
    )
    result = sf.query(
        "SELECT LastName, Title FROM Contact WHERE Title = 'ceo' ORDER BY LastName DESC LIMIT 5"
    )
    assert result["totalSize"] == 2 and result["done"] is True
    assert [r["LastName"] for r in result["records"]] == ["Gamma", "Alpha"]
    assert result["records"][0]["attributes"]["type"] == "Contact"
    assert result["records"][0]["attributes"]["url"].startswith(
        f"/services/data/v{VERSION}/sobjects/Contact/003"
    )
    in_list = sf.query(
        "SELECT External_Id__c FROM Contact WHERE External_Id__c IN ('Q-1', 'Q-2') "
        "OR (LastName = 'Gamma' AND Title != 'CTO') ORDER BY External_Id__c"
    )
    assert [r["External_Id__c"] for r in in_list["records"]] == ["Q-1", "Q-2", "Q-3"]
    assert sf.query("SELECT COUNT() FROM Contact WHERE LastName LIKE 'b%'")["totalSize"] == 1


def test_query_reads_a_parent_field_through_the_relationship(sf: Salesforce) -> None:
    sf.Account.upsert("External_Id__c/A-1", {"Name": "Acme"})
    upsert_contacts(sf, [contact("C-1", LastName="Kid", Account={"External_Id__c": "A-1"})])
    rows = sf.query("SELECT LastName, Account.Name FROM Contact")["records"]
    assert rows[0]["Account"]["Name"] == "Acme"


def test_malformed_and_invalid_queries_are_400(sf: Salesforce) -> None:
    with pytest.raises(SalesforceMalformedRequest) as malformed:
        sf.query("SELECT FROM Contact")
    assert error_body(malformed.value)[0]["errorCode"] == "MALFORMED_QUERY"
    with pytest.raises(SalesforceMalformedRequest) as stray:
        sf.query("SELECT Id FROM Contact WHERE LastName = 'x' #")
    assert error_body(stray.value)[0]["message"] == "unexpected token: '#'"
    with pytest.raises(SalesforceMalformedRequest) as bad_field:
        sf.query("SELECT Nope__c FROM Contact")
    assert error_body(bad_field.value)[0]["errorCode"] == "INVALID_FIELD"
    with pytest.raises(SalesforceMalformedRequest) as bad_object:
        sf.query("SELECT Id FROM Nope__c")
    assert error_body(bad_object.value)[0]["errorCode"] == "INVALID_TYPE"


def test_served_api_versions_and_a_trailing_slash_are_accepted(
    sandbox: SandboxHandle, session: requests.Session
) -> None:
    headers = {"Authorization": f"Bearer {sandbox.access_token()}"}
    for version in ("52.0", "64.0", "66.0"):  # 99.0: see test_sandbox_versions.py
        response = session.get(
            f"{sandbox.base_url}/services/data/v{version}/limits/", headers=headers
        )
        assert response.status_code == 200
        no_slash = session.get(
            f"{sandbox.base_url}/services/data/v{version}/limits", headers=headers
        )
        assert no_slash.status_code == 200
        assert no_slash.headers["Sforce-Limit-Info"].startswith("api-usage=")
