"""Verify's pure parts: the SOQL it reads records back with, how Salesforce stores a value,
and what a difference means for a row acknowledged or not."""

from __future__ import annotations

from urllib.parse import quote

from crm_export.mapping import FieldMap, Lookup
from crm_export.ports import FieldDescribe
from crm_export.testing import describe_of
from crm_export.verify import Findings, differences, queries, same, soql_literal

CONTACT = describe_of(
    "Contact",
    FieldDescribe("LastName", "string", length=80),
    FieldDescribe("External_Id__c", "string", external_id=True, unique=True),
    FieldDescribe("AccountId", "reference", reference_to=("Account",), relationship_name="Account"),
)
FMAP = FieldMap(
    "Contact",
    "external_id__c",
    "id",
    (("lastname", "last_name"),),
    (Lookup.derive("AccountId", "Account", "External_Id__c", "account"),),
)


def f(kind: str, **kw: object) -> FieldDescribe:
    return FieldDescribe("X", kind, **kw)  # type: ignore[arg-type]


def test_queries_read_every_mapped_field_and_stay_under_the_uri_limit() -> None:
    keys = [f"K-{i:05d}" for i in range(1000)] + ["O'Hara\\x"]
    batches = queries(FMAP, CONTACT, keys, max_bytes=2000)
    assert all(len(quote(q)) <= 2000 for q in batches)
    assert batches[0].startswith(
        "SELECT Id, External_Id__c, LastName, Account.External_Id__c FROM Contact "
        "WHERE External_Id__c IN ('K-00000', 'K-00001', "
    )
    asked = [v for q in batches for v in q.split(" IN (", 1)[1].rstrip(")").split(", ")]
    assert len(asked) == 1001 and asked[-1] == soql_literal("O'Hara\\x") == "'O\\'Hara\\\\x'"
    assert max(len(q.split(", ")) for q in batches) <= 200 + 3
    assert len(queries(FMAP, CONTACT, keys)) == 6  # 200 a query by default


def test_values_compare_as_salesforce_stores_them() -> None:
    assert same(f("string"), "  Ada ", "Ada") and same(f("string"), "", None)
    assert not same(f("string"), "ada", "Ada")  # text keeps its case
    assert same(f("picklist"), "web", "Web")  # picklists do not
    assert same(f("multipicklist"), "A;b", "B; a")
    assert same(f("double"), 12.5, "12.50") and same(f("currency"), 0.1 + 0.2, 0.3)
    assert not same(f("double"), 12.345, 12.35)  # the API does not round to the scale
    assert same(f("int"), 5, 5.0)
    assert same(f("boolean"), None, False) and same(f("boolean"), "true", True)
    assert same(f("date"), "2026-01-31", "2026-01-31")
    assert same(f("datetime"), "2026-01-31T10:00:00.123Z", "2026-01-31T10:00:00.000+0000")
    assert not same(f("datetime"), "2026-01-31T10:00:01Z", "2026-01-31T10:00:00.000+0000")
    assert same(f("reference"), "001000000000001", "001000000000001AAA")


def test_differences_name_the_fields_and_read_lookups_through_the_relationship() -> None:
    payload = {"External_Id__c": "7", "lastname": "Smith", "Account": {"External_Id__c": "a-1"}}
    record = {"Id": "003", "LastName": "Smith", "Account": {"External_Id__c": "A-1"}}
    assert differences(FMAP, CONTACT, payload, record) == []
    edited = {**record, "LastName": "Smyth", "Account": None}
    found = differences(FMAP, CONTACT, payload, edited)
    assert [(d.field, d.expected, d.actual) for d in found] == [
        ("LastName", "Smith", "Smyth"),
        ("Account.External_Id__c", "a-1", None),
    ]
    cleared = {"External_Id__c": "7", "lastname": "Smith", "AccountId": None}
    assert differences(FMAP, CONTACT, cleared, {**record, "Account": None}) == []


def test_what_a_row_s_state_makes_of_what_salesforce_holds() -> None:
    findings = Findings()
    record = [{"Id": "003"}]
    findings.judge("ok", True, record, [])
    findings.judge("gone", True, [], None)
    findings.judge("edited", True, record, [differences(FMAP, CONTACT, {"lastname": "A"}, {})][0])
    findings.judge("landed", False, record, [])  # as the source row is now, never acked
    findings.judge("older", False, record, differences(FMAP, CONTACT, {"lastname": "A"}, {}))
    findings.judge("new", False, [], None)
    findings.judge("twice", True, record * 2, [])
    assert findings.matched == 2 and findings.missing == ["gone"]
    assert [d["record_key"] for d in findings.differs] == ["edited"]
    assert findings.unacknowledged == ["landed"] and findings.pending == ["older", "new"]
    assert findings.duplicates == ["twice"] and findings.problems == 4
