"""Bulk API 2.0 CSV, pure: the rows a job uploads and its result files read back."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime

from crm_export.export import bulk_csv
from crm_export.mapping import FieldMap, Lookup, build_payload
from crm_export.ports import RecordError, SourceRow

FMAP = FieldMap(
    sobject="Contact",
    external_id_field="External_Id__c",
    key_column="id",
    fields=(
        ("LastName", "last_name"),
        ("Title", "title"),
        ("Birthdate", "birthdate"),
        ("Last_Seen__c", "seen"),
        ("HasOptedOutOfEmail", "opted_out"),
        ("Score__c", "score"),
    ),
    lookups=(Lookup.derive("AccountId", "Account", "External_Id__c", "account_id"),),
)


def line_for(**values: object) -> list[str]:
    row = SourceRow(values.pop("id", 1), "2026-01-01", values)
    text = bulk_csv.csv_line(bulk_csv.row_cells(FMAP, build_payload(FMAP, row)))
    return next(csv.reader(io.StringIO(text)))


def test_the_header_names_fields_then_each_lookup_by_relationship_and_by_field() -> None:
    assert bulk_csv.header(FMAP) == [
        "External_Id__c",
        "LastName",
        "Title",
        "Birthdate",
        "Last_Seen__c",
        "HasOptedOutOfEmail",
        "Score__c",
        "Account.External_Id__c",
        "AccountId",
    ]


def test_values_are_written_as_bulk_csv_reads_them() -> None:
    cells = line_for(
        id=42,
        last_name='Smith, "Jr"',
        title="CEO",
        birthdate=date(1980, 2, 29),
        seen=datetime(2026, 5, 1, 12, 30, tzinfo=UTC),
        opted_out=True,
        score=0.00001,
        account_id="A-1",
    )
    assert cells == [
        "42",
        'Smith, "Jr"',  # quoted and escaped by the CSV writer, read back whole
        "CEO",
        "1980-02-29",
        "2026-05-01T12:30:00.000Z",
        "true",
        "0.00001",  # no exponent
        "A-1",
        "",  # the lookup field itself is left alone: the relationship column sets it
    ]


def test_null_clears_a_field_and_a_lookup_like_json_null() -> None:
    cells = line_for(last_name="Smith", title=None, opted_out=False, account_id=None)
    by_name = dict(zip(bulk_csv.header(FMAP), cells, strict=True))
    assert by_name["Title"] == "#N/A"
    assert by_name["Birthdate"] == "#N/A"  # NULL in the source: cleared, never "left alone"
    assert by_name["HasOptedOutOfEmail"] == "false"
    # Collections sends "AccountId": null; Bulk the same, in the field's own column.
    assert (by_name["Account.External_Id__c"], by_name["AccountId"]) == ("", "#N/A")
    # An empty string is null to Salesforce on both paths.
    assert bulk_csv.cell("") == "#N/A"


def test_polymorphic_lookups_stay_on_collections() -> None:
    polymorphic = FieldMap(
        "Task",
        "External_Id__c",
        "id",
        (("Subject", "subject"),),
        (Lookup.derive("WhoId", "Contact", "External_Id__c", "contact_id"),),
    )
    assert bulk_csv.bulk_ready(polymorphic) == "the lookup WhoId is polymorphic"
    assert bulk_csv.bulk_ready(FMAP) is None


def test_sf_error_is_split_as_collections_reports_errors() -> None:
    assert bulk_csv.split_error(
        "REQUIRED_FIELD_MISSING:Required fields are missing: [LastName]:LastName --"
    ) == RecordError(
        "REQUIRED_FIELD_MISSING", "Required fields are missing: [LastName]", ("LastName",)
    )
    assert bulk_csv.split_error(
        "INVALID_CROSS_REFERENCE_KEY:invalid cross reference id:--"
    ) == RecordError("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id")
    assert bulk_csv.split_error(
        "FIELD_CUSTOM_VALIDATION_EXCEPTION:Bad: really:Email, Title --"
    ) == RecordError("FIELD_CUSTOM_VALIDATION_EXCEPTION", "Bad: really", ("Email", "Title"))
    assert bulk_csv.split_error("something odd") == RecordError("BULK_ERROR", "something odd")


def test_result_files_map_back_by_the_external_id_column() -> None:
    failed = (
        '"sf__Id","sf__Error","LastName","External_Id__c","Title"\n'
        '"","FIELD_CUSTOM_VALIDATION_EXCEPTION:No.:Title --","Smith","7","#N/A"\n'
        '"003x","UNABLE_TO_LOCK_ROW:unable to obtain exclusive access to this record:--",'
        '"Jones","8",""\n'
    )
    rows = list(bulk_csv.read_results(failed, "external_id__c"))
    assert [r.external_id for r in rows] == ["7", "8"]
    assert rows[0].error == RecordError("FIELD_CUSTOM_VALIDATION_EXCEPTION", "No.", ("Title",))
    # What was uploaded, as ExportErrors shows it: #N/A as null, empty cells left out.
    assert rows[0].cells == {"LastName": "Smith", "External_Id__c": "7", "Title": None}
    assert rows[1].error is not None and rows[1].error.code == "UNABLE_TO_LOCK_ROW"

    ok = '"sf__Id","sf__Created","External_Id__c"\n"003a","true","9"\n'
    [row] = bulk_csv.read_results(ok, "External_Id__c")
    assert (row.external_id, row.error) == ("9", None)
    assert list(bulk_csv.read_results("", "External_Id__c")) == []


def test_a_quoted_cell_may_span_lines_in_a_result_file() -> None:
    text = (
        '"sf__Id","sf__Error","External_Id__c","Description"\r\n"","X:bad:--","5","two\nlines"\r\n'
    )
    [row] = bulk_csv.read_results(text, "External_Id__c")
    assert row.cells["Description"] == "two\nlines" and row.external_id == "5"
