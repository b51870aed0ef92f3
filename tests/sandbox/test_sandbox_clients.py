"""What real clients call besides upserts: identity, system objects, create, Collections
create/update/delete, query columns, through unmodified simple-salesforce."""

from __future__ import annotations

from typing import Any

import pytest
import requests
from simple_salesforce.exceptions import SalesforceMalformedRequest

from crm_export.sandbox.testing import SandboxHandle
from tests.sandbox.sandbox_helpers import VERSION, Salesforce, contact, error_body, upsert_contacts

ORG_ID = "00DSb0000000001EAA"


def test_userinfo_and_the_identity_url_name_the_integration_user(
    sandbox: SandboxHandle, sf: Salesforce, session: requests.Session
) -> None:
    info = sf.oauth2("userinfo")
    assert info is not None
    assert info["preferred_username"] == "integration@sandbox.local"
    assert info["organization_id"] == ORG_ID
    user_id = info["user_id"]
    assert user_id.startswith("005") and len(user_id) == 18
    assert info["sub"] == f"{sandbox.base_url}/id/{ORG_ID}/{user_id}"
    assert info["urls"]["rest"] == f"{sandbox.base_url}/services/data/v{{version}}/"

    # jsforce's identity(): the version's resources name the Identity URL, which answers JSON.
    resources = sf.restful("")
    assert resources is not None
    assert resources["identity"] == info["sub"]
    assert resources["sobjects"] == f"/services/data/v{VERSION}/sobjects"
    headers = {"Authorization": f"Bearer {sf.session_id}"}
    identity = session.get(resources["identity"], params={"format": "json"}, headers=headers)
    assert identity.status_code == 200
    assert identity.json()["username"] == "integration@sandbox.local"
    assert identity.json()["user_id"] == user_id
    other = session.get(f"{sandbox.base_url}/id/{ORG_ID}/005Sb0000000009AAA", headers=headers)
    assert (other.status_code, other.text) == (404, "Bad_Id")


def test_organization_and_user_are_queryable_describable_and_read_only(sf: Salesforce) -> None:
    [org] = sf.query("SELECT Id, Name, IsSandbox FROM Organization")["records"]
    assert (org["Id"], org["Name"], org["IsSandbox"]) == (ORG_ID, "crm-export sandbox org", True)
    # The fields the Salesforce CLI reads about an org it logs in to.
    cli = sf.query(
        "SELECT Name, InstanceName, IsSandbox, TrialExpirationDate, NamespacePrefix, "
        "OrganizationType FROM Organization"
    )
    assert cli["records"][0]["TrialExpirationDate"] is None
    users = sf.query("SELECT Id, Username FROM User WHERE Username = 'integration@sandbox.local'")
    assert users["totalSize"] == 1
    user_id = users["records"][0]["Id"]
    assert sf.User.get(user_id)["Username"] == "integration@sandbox.local"

    described = sf.User.describe()
    assert (described["keyPrefix"], described["createable"], described["queryable"]) == (
        "005",
        False,
        True,
    )
    assert {f["name"]: f for f in described["fields"]}["Username"]["idLookup"] is True
    assert sf.Organization.describe()["keyPrefix"] == "00D"

    with pytest.raises(SalesforceMalformedRequest) as refused:
        sf.User.create({"Username": "x@y.z", "LastName": "X", "Alias": "x", "Email": "x@y.z"})
    assert error_body(refused.value) == [
        {
            "message": "entity type cannot be inserted: User",
            "errorCode": "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY",
            "fields": [],
        }
    ]
    renamed = sf.restful(
        "composite/sobjects",
        method="PATCH",
        json={"records": [{"attributes": {"type": "User"}, "Id": user_id, "LastName": "New"}]},
    )
    assert renamed is not None
    assert renamed[0]["errors"][0]["message"] == "entity type cannot be updated: User"
    deleted = sf.restful("composite/sobjects", method="DELETE", params={"ids": user_id})
    assert deleted is not None
    [gone] = deleted
    assert gone["errors"][0]["statusCode"] == "INSUFFICIENT_ACCESS_OR_READONLY"
    assert sf.query("SELECT LastName FROM User")["records"][0]["LastName"] == "Integration"


def test_create_answers_201_and_applies_the_rules(sandbox: SandboxHandle, sf: Salesforce) -> None:
    created = sf.Contact.create({"LastName": "New", "External_Id__c": "C-1"})
    assert created["success"] is True and created["errors"] == []
    assert "created" not in created and created["id"].startswith("003")
    assert sandbox.records("Contact")[0]["LastName"] == "New"

    with pytest.raises(SalesforceMalformedRequest) as duplicate:
        sf.Contact.create({"LastName": "Again", "External_Id__c": "c-1"})
    assert error_body(duplicate.value)[0]["errorCode"] == "DUPLICATE_VALUE"
    with pytest.raises(SalesforceMalformedRequest) as with_id:
        sf.Contact.create({"Id": created["id"], "LastName": "Again"})
    assert error_body(with_id.value) == [
        {
            "message": "cannot specify Id in an insert call",
            "errorCode": "INVALID_FIELD_FOR_INSERT_UPDATE",
            "fields": ["Id"],
        }
    ]


def collections(sf: Salesforce, method: str, **kwargs: Any) -> Any:
    return sf.restful("composite/sobjects", method=method, **kwargs)


def test_collections_create_update_and_delete(sandbox: SandboxHandle, sf: Salesforce) -> None:
    created = collections(
        sf,
        "POST",
        json={
            "allOrNone": False,
            "records": [
                {"attributes": {"type": "Account"}, "Name": "Acme", "External_Id__c": "A-1"},
                {"attributes": {"type": "Contact"}, "LastName": "Kid"},
                {"attributes": {"type": "Contact"}, "FirstName": "No last name"},
            ],
        },
    )
    assert [r["success"] for r in created] == [True, True, False]
    assert created[2]["errors"][0]["statusCode"] == "REQUIRED_FIELD_MISSING"
    account_id, contact_id = created[0]["id"], created[1]["id"]

    updated = collections(
        sf,
        "PATCH",
        json={
            "allOrNone": False,
            "records": [
                {"attributes": {"type": "Contact"}, "Id": contact_id, "AccountId": account_id},
                {"attributes": {"type": "Contact"}, "Id": "003Sb00000000ZZZZZ", "Title": "x"},
            ],
        },
    )
    assert updated[0] == {"id": contact_id, "success": True, "errors": []}
    assert updated[1]["success"] is False
    assert sandbox.records("Contact")[0]["AccountId"] == account_id

    # Deleting the account deletes its contact (cascadeDelete), as in Salesforce.
    deleted = collections(sf, "DELETE", params={"ids": f"{account_id},001RM000003oLrB000"})
    assert deleted == [
        {"id": account_id, "success": True, "errors": []},
        {
            "success": False,
            "errors": [
                {
                    "statusCode": "MALFORMED_ID",
                    "message": "malformed id 001RM000003oLrB000",
                    "fields": [],
                }
            ],
        },
    ]
    assert sandbox.records("Account") == [] and sandbox.records("Contact") == []


def test_collections_all_or_none_rolls_every_record_back(
    sandbox: SandboxHandle, sf: Salesforce
) -> None:
    results = collections(
        sf,
        "POST",
        json={
            "allOrNone": True,
            "records": [
                {"attributes": {"type": "Contact"}, "LastName": "Fine"},
                {"attributes": {"type": "Contact"}, "LastName": "x" * 81},
            ],
        },
    )
    assert results[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert results[1]["errors"][0]["statusCode"] == "STRING_TOO_LONG"
    assert sandbox.records("Contact") == []

    [kept] = upsert_contacts(sf, [contact("C-1", LastName="Kept")])
    deleted = collections(
        sf, "DELETE", params={"ids": f"{kept['id']},003Sb00000000ZZAAA", "allOrNone": "true"}
    )
    assert deleted[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert [r["LastName"] for r in sandbox.records("Contact")] == ["Kept"]


def test_count_limit_offset_and_order_by(sf: Salesforce) -> None:
    upsert_contacts(sf, [contact(f"C-{i}", LastName=name) for i, name in enumerate("DACB")])
    assert sf.query("SELECT COUNT() FROM Contact")["totalSize"] == 4
    page = sf.query("SELECT LastName FROM Contact ORDER BY LastName LIMIT 2 OFFSET 1")
    assert [r["LastName"] for r in page["records"]] == ["B", "C"]


def test_query_columns_in_the_shape_the_salesforce_cli_reads(sf: Salesforce) -> None:
    sf.Account.upsert("External_Id__c/A-1", {"Name": "Acme"})
    columns = sf.restful(
        "query", params={"q": "SELECT Id, LastName, Account.Name FROM Contact", "columns": "true"}
    )
    assert columns is not None
    assert columns["entityName"] == "Contact" and columns["idSelected"] is True
    names = [(c["columnName"], c["displayName"]) for c in columns["columnMetadata"]]
    assert names == [("Id", "Id"), ("LastName", "LastName"), ("Account", "Account")]
    [joined] = columns["columnMetadata"][2]["joinColumns"]
    assert (joined["columnName"], joined["displayName"], joined["aggregate"]) == (
        "Name",
        "Account.Name",
        False,
    )
    assert columns["columnMetadata"][1]["textType"] is True
