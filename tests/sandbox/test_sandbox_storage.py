"""Both record stores, memory and the --data SQLite file, keep the same promises: allOrNone
writes nothing when a record fails, lookups by external ID ignore case, unique fields hold,
and the file keeps records and ids across a restart without loading them into memory.

The whole sandbox suite also runs on the file store with CRM_EXPORT_TEST_SANDBOX_STORE=sqlite.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from simple_salesforce.exceptions import SalesforceResourceNotFound

from crm_export.sandbox.storage import RecordStore
from crm_export.sandbox.testing import SandboxHandle, running_sandbox
from tests.sandbox.sandbox_helpers import VERSION, Salesforce, contact, upsert_contacts


@pytest.fixture(params=["memory", "file"])
def org(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SandboxHandle]:
    data = tmp_path / "org.sqlite" if request.param == "file" else None
    with running_sandbox(data=data) as handle:
        yield handle


def _sf(sandbox: SandboxHandle, session: requests.Session) -> Salesforce:
    return Salesforce(
        instance_url=sandbox.base_url,
        session_id=sandbox.access_token(),
        session=session,
        version=VERSION,
    )


def test_all_or_none_writes_nothing_when_one_record_fails(org: SandboxHandle) -> None:
    with org.requests_session() as session:
        sf = _sf(org, session)
        upsert_contacts(sf, [contact("C-1", LastName="Before")])
        results = upsert_contacts(
            sf,
            [contact("C-1", LastName="After"), contact("C-2", LastName="New"), contact("C-3")],
            all_or_none=True,
        )
        assert [r["success"] for r in results] == [False, False, False]
        [stored] = org.records("Contact")
        assert stored["LastName"] == "Before"
        # The rolled-back record's key is not left behind in a lookup index.
        with pytest.raises(SalesforceResourceNotFound):
            sf.Contact.get_by_custom_id("External_Id__c", "C-2")
    assert org.counters()["records"]["created"] == 1


def test_lookups_ignore_case_and_updates_keep_their_place(org: SandboxHandle) -> None:
    with org.requests_session() as session:
        sf = _sf(org, session)
        upsert_contacts(sf, [contact("C-1", LastName="A"), contact("C-2", LastName="B")])
        [result] = upsert_contacts(sf, [contact("c-1", LastName="A2")])
        assert result["created"] is False
        assert [r["LastName"] for r in org.records("Contact")] == ["A2", "B"]
        found = sf.Contact.get_by_custom_id("External_Id__c", "C-1")
        assert found["LastName"] == "A2"


def test_the_file_keeps_records_and_ids_across_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "org.sqlite"
    with running_sandbox(data=data) as sandbox, sandbox.requests_session() as session:
        sf = _sf(sandbox, session)
        [first] = upsert_contacts(sf, [contact("C-1", LastName="A")])
        # An id handed out to a rolled-back record is never handed out again.
        upsert_contacts(sf, [contact("C-2", LastName="B"), contact("C-3")], all_or_none=True)
    with running_sandbox(data=data) as sandbox, sandbox.requests_session() as session:
        sf = _sf(sandbox, session)
        assert sf.Contact.get_by_custom_id("External_Id__c", "c-1")["Id"] == first["id"]
        [second] = upsert_contacts(sf, [contact("C-4", LastName="D")])
        assert second["id"] > first["id"]
        assert second["id"] != sf.Contact.get_by_custom_id("External_Id__c", "C-1")["Id"]


def test_the_file_store_reads_from_the_file_not_from_memory(tmp_path: Path) -> None:
    path = tmp_path / "org.sqlite"
    store = RecordStore(path)
    store.insert_raw("Contact", [{"Id": "003000000000001AAA", "External_Id__c": "X"}])
    store.close()
    # Another process's store sees it at once: nothing is cached in memory.
    other = RecordStore(path)
    writer = RecordStore(path)
    writer.insert_raw("Contact", [{"Id": "003000000000002AAA", "External_Id__c": "Y"}])
    assert [r["Id"] for r in other.find("Contact", "External_Id__c", "y", case_sensitive=False)]
    assert other.count("Contact") == 2
    other.close()
    writer.close()
