"""Parents set through a relationship: by external id, polymorphic lookups, and the errors."""

from __future__ import annotations

from typing import Any

import pytest
from simple_salesforce.exceptions import SalesforceMalformedRequest

from crm_export.sandbox.testing import SandboxHandle
from tests.sandbox.sandbox_helpers import Salesforce, contact, error_body, upsert_contacts

NOT_FOUND = {
    "statusCode": "INVALID_FIELD",
    "message": "Foreign key external ID: A-9 not found for field External_Id__c in entity Account",
    "fields": [],
}


def account(sf: Salesforce, ext_id: str, name: str = "Acme") -> str:
    return str(
        sf.Account.upsert(f"External_Id__c/{ext_id}", {"Name": name}, raw_response=True).json()[
            "id"
        ]
    )


def collection(sf: Salesforce, sobject: str, records: list[dict[str, Any]]) -> Any:
    return sf.restful(
        f"composite/sobjects/{sobject}/External_Id__c",
        method="PATCH",
        json={"allOrNone": False, "records": records},
    )


def test_a_nested_external_id_stores_the_parents_id(sandbox: SandboxHandle, sf: Salesforce) -> None:
    account_id = account(sf, "A-1")
    results = upsert_contacts(
        sf,
        [
            contact("C-1", LastName="Kid", Account={"External_Id__c": "A-1"}),
            contact("C-2", LastName="Orphan", Account={"External_Id__c": "A-9"}),
        ],
    )
    assert results[0]["success"] is True
    assert results[1] == {"success": False, "errors": [NOT_FOUND]}
    [stored] = sandbox.records("Contact")
    assert stored["AccountId"] == account_id
    assert "Account" not in stored

    opportunity = collection(
        sf,
        "Opportunity",
        [
            {
                "attributes": {"type": "Opportunity"},
                "External_Id__c": "O-1",
                "Name": "Big deal",
                "StageName": "Prospecting",
                "CloseDate": "2026-12-31",
                "Account": {"External_Id__c": "a-1"},
            }
        ],
    )
    assert opportunity[0]["success"] is True
    assert sandbox.records("Opportunity")[0]["AccountId"] == account_id


def test_a_missing_parent_in_a_single_upsert_is_a_400_record_error(sf: Salesforce) -> None:
    with pytest.raises(SalesforceMalformedRequest) as missing:
        sf.Contact.upsert(
            "External_Id__c/C-1", {"LastName": "Orphan", "Account": {"External_Id__c": "A-9"}}
        )
    assert error_body(missing.value) == [
        {
            "message": NOT_FOUND["message"],
            "errorCode": "INVALID_FIELD",
            "fields": [],
        }
    ]


def test_a_relationship_through_a_field_that_is_not_an_external_id(sf: Salesforce) -> None:
    account(sf, "A-1")
    results = upsert_contacts(
        sf,
        [
            contact("C-1", LastName="Kid", Account={"Name": "Acme"}),
            contact("C-2", LastName="Kid", Account={"External_Id__c": "A-1", "Name": "Acme"}),
            contact("C-3", LastName="Fine"),
        ],
    )
    assert results[0]["errors"] == [
        {
            "statusCode": "INVALID_FIELD",
            "message": "Field name provided, Name is not an External ID or indexed field for "
            "Account",
            "fields": [],
        }
    ]
    assert results[1]["errors"] == [
        {
            "statusCode": "INVALID_FIELD",
            "message": "More than 1 field provided in an external foreign key reference in "
            "entity: Account",
            "fields": [],
        }
    ]
    # Those are the records' errors: the rest of the request is saved.
    assert results[2]["success"] is True


def test_clearing_a_lookup_with_null(sandbox: SandboxHandle, sf: Salesforce) -> None:
    account(sf, "A-1")
    upsert_contacts(sf, [contact("C-1", LastName="Kid", Account={"External_Id__c": "A-1"})])
    upsert_contacts(sf, [contact("C-1", AccountId=None)])
    assert sandbox.records("Contact")[0]["AccountId"] is None


def test_a_polymorphic_lookup_names_the_parents_type(
    sandbox: SandboxHandle, sf: Salesforce
) -> None:
    [kid] = upsert_contacts(sf, [contact("C-1", LastName="Kid")])
    lead = sf.Lead.upsert("External_Id__c/L-1", {"LastName": "Prospect", "Company": "Initech"})
    assert lead == 201
    account_id = account(sf, "A-1")

    def task(ext_id: str, **fields: Any) -> dict[str, Any]:
        return {"attributes": {"type": "Task"}, "External_Id__c": ext_id, **fields}

    results = collection(
        sf,
        "Task",
        [
            task(
                "T-1",
                Subject="Call",
                Who={"attributes": {"type": "Contact"}, "External_Id__c": "C-1"},
                What={"attributes": {"type": "Account"}, "External_Id__c": "A-1"},
            ),
            task(
                "T-2",
                Subject="Email",
                Who={"attributes": {"type": "Lead"}, "External_Id__c": "L-1"},
            ),
            task("T-3", Subject="No type", Who={"External_Id__c": "C-1"}),
            task(
                "T-4",
                Subject="Wrong type",
                Who={"attributes": {"type": "Account"}, "External_Id__c": "A-1"},
            ),
        ],
    )
    assert [r["success"] for r in results] == [True, True, False, False]
    assert [r["errors"][0]["statusCode"] for r in results[2:]] == ["INVALID_FIELD"] * 2
    tasks = {t["External_Id__c"]: t for t in sandbox.records("Task")}
    assert tasks["T-1"]["WhoId"] == kid["id"] and tasks["T-1"]["WhatId"] == account_id
    assert tasks["T-2"]["WhoId"].startswith("00Q")
    # Defaults of the standard picklists, as in a new org.
    assert (tasks["T-1"]["Status"], tasks["T-1"]["Priority"]) == ("Not Started", "Normal")

    rows = sf.query("SELECT Subject, Who.Name, Who.Type FROM Task ORDER BY Subject")["records"]
    assert [(r["Subject"], r["Who"]["Name"], r["Who"]["Type"]) for r in rows] == [
        ("Call", "Kid", "Contact"),
        ("Email", "Prospect", "Lead"),
    ]
    assert rows[0]["Who"]["attributes"]["type"] == "Name"


def test_describe_of_reference_fields_and_child_relationships(sf: Salesforce) -> None:
    contact_fields = {f["name"]: f for f in sf.Contact.describe()["fields"]}
    account_id = contact_fields["AccountId"]
    assert account_id["referenceTo"] == ["Account"]
    assert account_id["relationshipName"] == "Account"
    assert account_id["length"] == 18 and account_id["soapType"] == "tns:ID"
    assert account_id["polymorphicForeignKey"] is False

    who = {f["name"]: f for f in sf.Task.describe()["fields"]}["WhoId"]
    assert who["referenceTo"] == ["Contact", "Lead"]
    assert who["polymorphicForeignKey"] is True and who["relationshipName"] == "Who"

    children = {
        (c["childSObject"], c["field"]): c for c in sf.Account.describe()["childRelationships"]
    }
    assert children[("Contact", "AccountId")]["relationshipName"] == "Contacts"
    assert children[("Opportunity", "AccountId")]["relationshipName"] == "Opportunities"
    assert children[("Contact", "AccountId")]["cascadeDelete"] is True
    assert ("Task", "WhatId") in children

    stage = {f["name"]: f for f in sf.Opportunity.describe()["fields"]}["StageName"]
    assert stage["restrictedPicklist"] is True and stage["nillable"] is False
    assert [v["value"] for v in stage["picklistValues"]][-2:] == ["Closed Won", "Closed Lost"]
