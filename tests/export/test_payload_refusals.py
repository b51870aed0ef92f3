"""A value the org's JSON parser cannot read (a date that is no date) makes a real org refuse
the whole request. End to end, over HTTPS against the sandbox org, on SQLite and PostgreSQL
state: crm-export finds the record, logs it, and exports the rest; a value wrong in every
record still stops the run, within a bounded number of calls.

Text with no date shape at all is caught before sending (describe says the field is a date:
tests/export/test_caught_before_sending.py); these tests use dates of the right shape that
do not exist (2026-02-30), which only the org refuses, so that the split stays tested end to
end."""

from __future__ import annotations

from crm_export.ports import RunOutcome
from tests.export.export_scenario import Scenario

WITH_BIRTHDATE = {"LastName": "last_name", "Email": "email", "Birthdate": "birthdate"}


def composite_calls(scenario: Scenario) -> int:
    return int(scenario.sandbox.counters()["calls"].get("composite_upsert", 0))


def test_skip_mode_logs_each_bad_date_and_exports_the_rest_of_its_batch(
    scenario: Scenario,
) -> None:
    bad = {7: "2026-13-01", 150: "1999-12-32", 333: "2026-02-30"}
    for key in range(1, 451):
        scenario.add(key, birthdate=bad.get(key, "1990-05-17"))
    result = scenario.run(pause_on_error=False, fields=WITH_BIRTHDATE)

    assert result.outcome is RunOutcome.COMPLETED
    assert (result.counts.read, result.counts.exported, result.counts.failed) == (450, 447, 3)
    contacts = scenario.contacts()
    assert set(contacts) == {str(k) for k in range(1, 451)} - {str(k) for k in bad}
    assert contacts["8"]["Birthdate"] == "1990-05-17"
    assert scenario.open_errors() == {str(k): ("JSON_PARSER_ERROR", 1) for k in bad}
    rows = scenario.sql(
        "SELECT record_key, external_id, error_message, payload FROM ExportErrors ORDER BY id"
    )
    for row in rows:
        value = bad[int(row["record_key"])]
        assert row["external_id"] == row["record_key"]
        assert row["error_message"].startswith(
            f"Cannot deserialize instance of date from VALUE_STRING value {value} or request "
        )
        assert f'"Birthdate": "{value}"' in row["payload"]
    # Three batches, and one more call for each bad record: the org's answer names it, so
    # the others are simply sent again. Every one of them is in the run's API calls.
    assert composite_calls(scenario) == 3 + 3
    [run] = scenario.sql("SELECT api_calls FROM export_runs")
    assert run["api_calls"] == result.counts.api_calls >= 3 + 3

    # The daily re-export sends each alone: still refused, one more attempt; fixed, resolved.
    scenario.run("CRMExport_ExportError", pause_on_error=False, fields=WITH_BIRTHDATE)
    assert scenario.open_errors() == {str(k): ("JSON_PARSER_ERROR", 2) for k in bad}
    scenario.update(150, birthdate="1999-12-31")
    scenario.run("CRMExport_ExportError", pause_on_error=False, fields=WITH_BIRTHDATE)
    assert set(scenario.open_errors()) == {"7", "333"}
    assert scenario.contacts()["150"]["Birthdate"] == "1999-12-31"


def test_pause_mode_halts_at_the_bad_date_and_writes_nothing_after_it(scenario: Scenario) -> None:
    for key in range(1, 11):
        scenario.add(key, birthdate="2026-04-31" if key == 4 else None)
    first = scenario.run(fields=WITH_BIRTHDATE)

    assert first.outcome is RunOutcome.PAUSED
    assert first.paused is not None and first.paused.record_key == "4"
    assert first.paused.error_code == "JSON_PARSER_ERROR"
    # The org's own write log: the records before it, in order, and nothing after it.
    assert scenario.written() == ["1", "2", "3"]
    assert scenario.open_errors() == {"4": ("JSON_PARSER_ERROR", 1)}
    assert composite_calls(scenario) == 2  # refused, then the three before it

    second = scenario.run(fields=WITH_BIRTHDATE)
    assert second.outcome is RunOutcome.PAUSED
    assert scenario.written() == ["1", "2", "3"]
    assert scenario.open_errors() == {"4": ("JSON_PARSER_ERROR", 2)}

    scenario.update(4, birthdate="2001-04-01")
    third = scenario.run(fields=WITH_BIRTHDATE)
    assert third.outcome is RunOutcome.COMPLETED
    assert scenario.written() == [str(k) for k in range(1, 11)]
    assert [e["status"] for e in scenario.export_errors()] == ["resolved"]


def test_a_date_column_in_the_wrong_format_everywhere_stops_the_run_in_bounded_calls(
    scenario: Scenario,
) -> None:
    # Every row holds a date the org cannot read: the mapping (or the source) is wrong.
    for key in range(1, 201):
        scenario.add(key, birthdate=f"1990-{key % 28 + 1:02d}-33")
    result = scenario.run(pause_on_error=False, fields=WITH_BIRTHDATE, max_identical_errors=20)

    assert result.outcome is RunOutcome.FAILED
    assert "20 records in a row failed with JSON_PARSER_ERROR" in (result.error or "")
    assert scenario.export_errors() == [] and scenario.contacts() == {}
    [state] = scenario.sql("SELECT position_key FROM stream_state") or [{"position_key": None}]
    assert state["position_key"] is None
    # The batch, then one call for each of the 19 records found before the 20th: not one
    # call per record of the batch (200).
    assert composite_calls(scenario) == 1 + 19


def test_an_unknown_field_is_never_split_nor_even_sent(scenario: Scenario) -> None:
    scenario.add_many(range(1, 201))
    fields = {"LastName": "last_name", "Shoe_Size__c": "first_name"}
    result = scenario.run(pause_on_error=False, fields=fields)
    assert result.outcome is RunOutcome.FAILED
    # Describe says the object has no such field: the stream stops before any call.
    assert result.config_key == 'streams[0] ("contacts").fields.Shoe_Size__c'
    assert "Contact has no field Shoe_Size__c" in (result.error or "")
    assert composite_calls(scenario) == 0
