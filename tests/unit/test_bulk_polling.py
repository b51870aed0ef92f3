"""When crm-export polls a Bulk job: the first poll scaled to the job, then backing off."""

from __future__ import annotations

from crm_export.export.bulk import first_poll_delay, next_poll_delay


def test_the_first_poll_waits_longer_for_a_larger_job_up_to_the_cap() -> None:
    # One bulk_poll_initial_seconds for each internal batch of 10,000 records.
    assert first_poll_delay(1, 1.0, 30.0) == 1.0
    assert first_poll_delay(10_000, 1.0, 30.0) == 1.0
    assert first_poll_delay(10_001, 1.0, 30.0) == 2.0
    assert first_poll_delay(100_000, 1.0, 30.0) == 10.0
    assert first_poll_delay(1_000_000, 1.0, 30.0) == 30.0


def test_later_polls_follow_the_jobs_progress_within_the_bounds() -> None:
    # 40,000 of 100,000 in 10 s: 60,000 more take about 15 s, plus a margin.
    assert next_poll_delay(10.0, 40_000, 100_000, 10.0, 1.0, 30.0) == 16.5
    # Nothing processed yet: twice the last wait, capped at bulk_poll_max_seconds.
    assert next_poll_delay(4.0, 0, 100_000, 4.0, 1.0, 30.0) == 8.0
    assert next_poll_delay(20.0, 0, 100_000, 40.0, 1.0, 30.0) == 30.0
    # Almost done: never sooner than bulk_poll_initial_seconds.
    assert next_poll_delay(10.0, 99_990, 100_000, 10.0, 1.0, 30.0) == 1.0
    # Slow progress: never later than the cap.
    assert next_poll_delay(10.0, 1_000, 100_000, 60.0, 1.0, 30.0) == 30.0
