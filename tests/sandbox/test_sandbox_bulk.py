"""Bulk API 2.0 ingest through simple-salesforce's ``sf.bulk2``."""

from __future__ import annotations

import csv
import io
import time

import pytest
import requests
from simple_salesforce.exceptions import SalesforceOperationError

from crm_export.sandbox.bulk import MAX_UPLOAD_BASE64_BYTES, base64_size
from crm_export.sandbox.faults import FaultsError, parse_faults
from crm_export.sandbox.testing import SandboxHandle
from tests.sandbox.sandbox_helpers import VERSION, Salesforce, bulk2_job_id


def rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_bulk_upsert_end_to_end_with_result_files(sandbox: SandboxHandle, sf: Salesforce) -> None:
    sf.Contact.upsert("External_Id__c/B-1", {"LastName": "Existing"})
    records = [
        {"External_Id__c": "B-1", "LastName": "Updated", "Title": "VP"},
        {"External_Id__c": "B-2", "LastName": "New", "Title": ""},
        {"External_Id__c": "B-3", "LastName": "", "Title": "No name"},
        {"External_Id__c": "B-4", "LastName": "TriggerFail", "Title": "x"},
    ]
    [result] = sf.bulk2.Contact.upsert(records=records, external_id_field="External_Id__c", wait=0)
    assert result["numberRecordsProcessed"] == 4
    assert result["numberRecordsFailed"] == 2
    assert result["numberRecordsTotal"] == 4
    job_id = bulk2_job_id(result)
    assert job_id.startswith("750")

    successful = rows(sf.bulk2.Contact.get_successful_records(job_id))
    assert {(r["External_Id__c"], r["sf__Created"]) for r in successful} == {
        ("B-1", "false"),
        ("B-2", "true"),
    }
    assert all(r["sf__Id"].startswith("003") for r in successful)

    failed = {r["External_Id__c"]: r for r in rows(sf.bulk2.Contact.get_failed_records(job_id))}
    assert failed["B-3"]["sf__Error"] == (
        "REQUIRED_FIELD_MISSING:Required fields are missing: [LastName]:LastName --"
    )
    assert failed["B-3"]["sf__Id"] == ""
    assert failed["B-4"]["sf__Error"].startswith(
        "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY:ContactTrigger: execution of BeforeInsert"
    )
    assert sf.bulk2.Contact.get_unprocessed_records(job_id).strip() != ""  # the header row
    assert rows(sf.bulk2.Contact.get_unprocessed_records(job_id)) == []

    stored = {r["External_Id__c"]: r for r in sandbox.records("Contact")}
    assert stored["B-1"]["LastName"] == "Updated" and stored["B-1"]["Title"] == "VP"
    assert "Title" not in stored["B-2"]  # an empty cell leaves the field alone
    writes = [w for w in sandbox.writes() if w.get("job_id") == job_id]
    assert {w["action"] for w in writes} == {"created", "updated"}


def test_bulk_empty_cell_keeps_and_na_nulls(sandbox: SandboxHandle, sf: Salesforce) -> None:
    sf.Contact.upsert("External_Id__c/B-1", {"LastName": "L", "Title": "Keep", "Phone": "123"})
    csv_text = "External_Id__c,Title,Phone\nB-1,,#N/A\n"
    path = sandbox.server.state_dir / "contacts.csv"
    path.write_text(csv_text)
    sf.bulk2.Contact.upsert(csv_file=str(path), external_id_field="External_Id__c", wait=0)
    [stored] = sandbox.records("Contact")
    assert stored["Title"] == "Keep"
    assert stored["Phone"] is None


def test_bulk_insert_update_and_delete(sandbox: SandboxHandle, sf: Salesforce) -> None:
    [inserted] = sf.bulk2.Account.insert(
        records=[
            {"Name": "One", "External_Id__c": "A-1"},
            {"Name": "Two", "External_Id__c": "A-2"},
        ],
        wait=0,
    )
    assert inserted["numberRecordsFailed"] == 0
    ids = {r["External_Id__c"]: r["Id"] for r in sandbox.records("Account")}

    [again] = sf.bulk2.Account.insert(records=[{"Name": "Dup", "External_Id__c": "A-1"}], wait=0)
    assert again["numberRecordsFailed"] == 1
    [dup] = rows(sf.bulk2.Account.get_failed_records(bulk2_job_id(again)))
    assert dup["sf__Error"].startswith("DUPLICATE_VALUE:duplicate value found: External_Id__c")

    sf.bulk2.Account.update(records=[{"Id": ids["A-1"], "Name": "Renamed"}], wait=0)
    assert {r["Name"] for r in sandbox.records("Account")} == {"Renamed", "Two"}

    [deleted] = sf.bulk2.Account.delete(records=[{"Id": ids["A-2"]}], wait=0)
    assert deleted["numberRecordsFailed"] == 0
    assert [r["Name"] for r in sandbox.records("Account")] == ["Renamed"]
    assert sandbox.counters()["records"]["deleted"] == 1


def test_bulk_lookup_column_by_parent_external_id(sandbox: SandboxHandle, sf: Salesforce) -> None:
    account = sf.Account.upsert("External_Id__c/A-1", {"Name": "Acme"}, raw_response=True).json()
    sf.bulk2.Contact.upsert(
        records=[
            {"External_Id__c": "C-1", "LastName": "K", "Account.External_Id__c": "A-1"},
            {"External_Id__c": "C-2", "LastName": "K", "Account.External_Id__c": "A-9"},
        ],
        external_id_field="External_Id__c",
        wait=0,
    )
    [stored] = sandbox.records("Contact")
    assert stored["AccountId"] == account["id"]
    [rejected] = sandbox.rejections()
    assert rejected["errors"][0]["statusCode"] == "INVALID_FIELD"


def test_a_job_with_an_unknown_column_fails_and_leaves_rows_unprocessed(sf: Salesforce) -> None:
    with pytest.raises(SalesforceOperationError) as failed:
        sf.bulk2.Contact.upsert(
            records=[{"External_Id__c": "C-1", "LastName": "K", "Nope__c": "x"}],
            external_id_field="External_Id__c",
            wait=0,
        )
    assert "InvalidBatch : Field name not found : Nope__c" in str(failed.value)
    jobs = sf.restful("jobs/ingest")
    assert jobs is not None
    [job] = [j for j in jobs["records"] if j["state"] == "Failed"]
    unprocessed = rows(sf.bulk2.Contact.get_unprocessed_records(job["id"]))
    assert unprocessed == [{"External_Id__c": "C-1", "LastName": "K", "Nope__c": "x"}]


def test_job_states_and_abort_over_raw_http(
    sandbox: SandboxHandle, session: requests.Session
) -> None:
    base = f"{sandbox.base_url}/services/data/v{VERSION}/jobs/ingest"
    headers = {"Authorization": f"Bearer {sandbox.access_token()}"}
    created = session.post(
        base,
        json={"object": "Contact", "operation": "insert", "contentType": "CSV", "lineEnding": "LF"},
        headers=headers,
    )
    assert created.status_code == 200
    job = created.json()
    assert job["state"] == "Open" and job["contentUrl"].endswith(
        f"/jobs/ingest/{job['id']}/batches"
    )
    upload = session.put(
        f"{base}/{job['id']}/batches",
        data=b"LastName\nA\n",
        headers={**headers, "Content-Type": "text/csv"},
    )
    assert upload.status_code == 201 and upload.content == b""
    aborted = session.patch(f"{base}/{job['id']}", json={"state": "Aborted"}, headers=headers)
    assert aborted.json()["state"] == "Aborted"
    # Result paths match whatever the case and with or without a trailing slash.
    unprocessed = session.get(f"{base}/{job['id']}/unprocessedRecords/", headers=headers)
    assert unprocessed.text.splitlines() == ['"LastName"', '"A"']
    assert session.get(f"{base}/{job['id']}/UNPROCESSEDRECORDS", headers=headers).ok
    assert sandbox.records("Contact") == []
    bad = session.post(base, json={"object": "Contact", "operation": "upsert"}, headers=headers)
    assert bad.status_code == 400 and bad.json()[0]["errorCode"] == "INVALIDJOB"


def test_slow_bulk_jobs_stay_in_progress(sandbox: SandboxHandle, session: requests.Session) -> None:
    sandbox.set_faults(bulk_job_seconds=0.4)
    base = f"{sandbox.base_url}/services/data/v{VERSION}/jobs/ingest"
    headers = {"Authorization": f"Bearer {sandbox.access_token()}"}
    job = session.post(base, json={"object": "Contact", "operation": "insert"}, headers=headers)
    job_id = job.json()["id"]
    session.put(f"{base}/{job_id}/batches", data=b"LastName\nA\n", headers=headers)
    closed = session.patch(f"{base}/{job_id}", json={"state": "UploadComplete"}, headers=headers)
    assert closed.json()["state"] == "UploadComplete"
    assert session.get(f"{base}/{job_id}", headers=headers).json()["state"] == "InProgress"
    time.sleep(0.5)
    done = session.get(f"{base}/{job_id}", headers=headers).json()
    assert done["state"] == "JobComplete" and done["numberRecordsProcessed"] == 1


def _open_job(base: str, session: requests.Session, headers: dict[str, str]) -> str:
    job = session.post(base, json={"object": "Contact", "operation": "insert"}, headers=headers)
    return str(job.json()["id"])


def test_a_job_takes_one_upload(sandbox: SandboxHandle, session: requests.Session) -> None:
    base = f"{sandbox.base_url}/services/data/v{VERSION}/jobs/ingest"
    headers = {"Authorization": f"Bearer {sandbox.access_token()}"}
    job_id = _open_job(base, session, headers)
    for data in (b"LastName\nA\n", b"LastName\nB\n"):
        assert (
            session.put(f"{base}/{job_id}/batches", data=data, headers=headers).status_code == 201
        )
    closed = session.patch(f"{base}/{job_id}", json={"state": "UploadComplete"}, headers=headers)
    assert closed.status_code == 400
    assert closed.json() == [
        {
            "message": f"Found multipe contents for job: <{job_id[:15]}>, please 'Close' / "
            "'Abort' / 'Delete' the current Job then create a new Job and make sure you only "
            "do 'PUT' once on a given Job.",
            "errorCode": "INVALIDJOB",
        }
    ]
    assert session.get(f"{base}/{job_id}", headers=headers).json()["state"] == "Open"
    aborted = session.patch(f"{base}/{job_id}", json={"state": "Aborted"}, headers=headers)
    assert aborted.json()["state"] == "Aborted"
    assert sandbox.records("Contact") == []


def test_results_only_once_the_job_is_final(
    sandbox: SandboxHandle, session: requests.Session
) -> None:
    sandbox.set_faults(bulk_job_seconds=30)
    base = f"{sandbox.base_url}/services/data/v{VERSION}/jobs/ingest"
    headers = {"Authorization": f"Bearer {sandbox.access_token()}"}
    job_id = _open_job(base, session, headers)
    session.put(f"{base}/{job_id}/batches", data=b"LastName\nA\n", headers=headers)
    session.patch(f"{base}/{job_id}", json={"state": "UploadComplete"}, headers=headers)
    for kind in ("successfulResults", "failedResults", "unprocessedrecords"):
        early = session.get(f"{base}/{job_id}/{kind}", headers=headers)
        assert early.status_code == 400
        assert early.json()[0]["errorCode"] == "INVALIDJOBSTATE"
    aborted = session.patch(f"{base}/{job_id}", json={"state": "Aborted"}, headers=headers)
    assert aborted.json()["state"] == "Aborted"
    late = session.get(f"{base}/{job_id}/unprocessedrecords", headers=headers)
    assert late.text.splitlines() == ['"LastName"', '"A"']


def test_a_job_is_processed_on_the_orgs_clock_not_per_request(
    sandbox: SandboxHandle, session: requests.Session
) -> None:
    # 6 rows at 20 a second in batches of 2: 0.3 s of processing, a batch every 0.1 s.
    sandbox.set_faults(bulk_batch_records=2, bulk_records_per_second=20)
    base = f"{sandbox.base_url}/services/data/v{VERSION}/jobs/ingest"
    headers = {"Authorization": f"Bearer {sandbox.access_token()}"}
    job_id = _open_job(base, session, headers)
    session.put(f"{base}/{job_id}/batches", data=b"LastName\nA\nB\nC\nD\nE\nF\n", headers=headers)
    session.patch(f"{base}/{job_id}", json={"state": "UploadComplete"}, headers=headers)
    closed = time.monotonic()
    seen: list[int] = []
    # Polling as fast as possible does not hurry the job: what it processed follows the
    # time since it was closed, a whole internal batch at a time.
    while True:
        before = time.monotonic() - closed
        info = session.get(f"{base}/{job_id}", headers=headers).json()
        after = time.monotonic() - closed
        processed = info["numberRecordsProcessed"]
        assert processed <= min(6, int(after * 20))
        assert processed >= min(6, int(before * 20) // 2 * 2) - 2
        assert processed % 2 == 0
        seen.append(processed)
        if info["state"] == "JobComplete":
            break
        assert info["state"] == "InProgress"
        early = session.get(f"{base}/{job_id}/successfulResults", headers=headers)
        if early.status_code != 400:  # it finished in between: results only then
            final = session.get(f"{base}/{job_id}", headers=headers).json()
            assert early.ok and final["state"] == "JobComplete"
        assert after < 5, "the job never finished"
    assert seen == sorted(seen) and seen[-1] == 6
    assert len(seen) > 4  # many more polls than batches, and the job still took its time
    assert 0 in seen or 2 in seen
    assert sorted(r["LastName"] for r in sandbox.records("Contact")) == list("ABCDEF")


def test_a_job_goes_on_while_nobody_polls(
    sandbox: SandboxHandle, session: requests.Session
) -> None:
    sandbox.set_faults(bulk_batch_records=2, bulk_records_per_second=40)
    base = f"{sandbox.base_url}/services/data/v{VERSION}/jobs/ingest"
    headers = {"Authorization": f"Bearer {sandbox.access_token()}"}
    job_id = _open_job(base, session, headers)
    session.put(f"{base}/{job_id}/batches", data=b"LastName\nA\nB\nC\nD\nE\n", headers=headers)
    session.patch(f"{base}/{job_id}", json={"state": "UploadComplete"}, headers=headers)
    time.sleep(0.3)  # 5 rows at 40 a second take 0.125 s
    # One request after the job's time is up finds it done: three batches, one poll.
    done = session.get(f"{base}/{job_id}", headers=headers).json()
    assert (done["state"], done["numberRecordsProcessed"]) == ("JobComplete", 5)
    assert len(rows(session.get(f"{base}/{job_id}/successfulResults", headers=headers).text)) == 5


def test_the_processing_rate_must_be_positive(sandbox: SandboxHandle) -> None:
    with pytest.raises(FaultsError, match="bulk_records_per_second"):
        parse_faults({"bulk_records_per_second": 0})


def test_a_job_in_several_internal_batches_through_simple_salesforce(
    sandbox: SandboxHandle, sf: Salesforce
) -> None:
    sandbox.set_faults(bulk_batch_records=3)
    records = [{"External_Id__c": f"B-{i}", "LastName": f"L{i}"} for i in range(7)]
    records[4]["LastName"] = ""
    [result] = sf.bulk2.Contact.upsert(records=records, external_id_field="External_Id__c", wait=0)
    assert (result["numberRecordsProcessed"], result["numberRecordsFailed"]) == (7, 1)
    assert len(rows(sf.bulk2.Contact.get_successful_records(bulk2_job_id(result)))) == 6
    assert len(sandbox.records("Contact")) == 6


def test_a_missing_parent_fails_alike_in_bulk_and_in_collections(
    sandbox: SandboxHandle, sf: Salesforce
) -> None:
    answer = sf.restful(
        "composite/sobjects/Contact/External_Id__c",
        method="PATCH",
        json={
            "allOrNone": False,
            "records": [
                {
                    "attributes": {"type": "Contact"},
                    "External_Id__c": "C-1",
                    "LastName": "K",
                    "Account": {"External_Id__c": "A-9"},
                }
            ],
        },
    )
    assert answer is not None
    [collections] = answer
    [error] = collections["errors"]
    [result] = sf.bulk2.Contact.upsert(
        records=[{"External_Id__c": "C-2", "LastName": "K", "Account.External_Id__c": "A-9"}],
        external_id_field="External_Id__c",
        wait=0,
    )
    [failed] = rows(sf.bulk2.Contact.get_failed_records(bulk2_job_id(result)))
    # CODE:message:fields -- , or CODE:message:-- when no field is named (reference B6).
    fields = "".join(f"{f} " for f in error["fields"])
    assert failed["sf__Error"] == f"{error['statusCode']}:{error['message']}:{fields}--"
    assert "Foreign key external ID: A-9 not found for field External_Id__c" in failed["sf__Error"]


def test_the_upload_limit_is_150_mb_once_base64_encoded() -> None:
    # About 112 MB of CSV fits; the raw 150 MB the sandbox once took does not.
    assert base64_size(112 * 1024 * 1024) <= MAX_UPLOAD_BASE64_BYTES
    assert base64_size(113 * 1024 * 1024) > MAX_UPLOAD_BASE64_BYTES
    assert base64_size(150 * 1024 * 1024) > MAX_UPLOAD_BASE64_BYTES
    assert (base64_size(1), base64_size(3), base64_size(4)) == (4, 4, 8)
