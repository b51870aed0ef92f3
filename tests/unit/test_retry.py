from __future__ import annotations

import random

import pytest
import requests

from crm_export.config import RetryConfig
from crm_export.errors import (
    NetworkError,
    RetriesExhaustedError,
    SalesforceConfigurationError,
    ServerError,
    TransientError,
)
from crm_export.retry import Backoff, call_with_retries
from crm_export.salesforce import network_error
from crm_export.testing import FakeClock


class Failing:
    """A call that raises ``exc`` the first ``times`` times, then answers "ok"."""

    def __init__(self, times: int, exc: Exception) -> None:
        self.times = times
        self.exc = exc
        self.calls = {"n": 0}

    def __call__(self) -> str:
        self.calls["n"] += 1
        if self.calls["n"] <= self.times:
            raise self.exc
        return "ok"


def test_full_jitter_stays_under_an_exponential_ceiling_and_the_cap() -> None:
    backoff = Backoff(max_attempts=10, max_elapsed=1e9, initial=1.0, cap=8.0)
    rng = random.Random(7)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)]:
        waits = [backoff.delay(attempt, rng) for _ in range(200)]
        assert all(0 <= w <= ceiling for w in waits)
        assert max(waits) > ceiling * 0.8  # jitter spreads over the whole range


def test_retry_after_is_a_floor() -> None:
    backoff = Backoff(max_attempts=5, max_elapsed=100, initial=0.1, cap=0.2)
    assert backoff.delay(1, random.Random(1), retry_after=7.0) == 7.0


def test_transient_errors_are_retried_until_success() -> None:
    clock = FakeClock()
    fn = Failing(3, ServerError("503"))
    assert call_with_retries(fn, Backoff(5, 100, 1, 10), clock, random.Random(1)) == "ok"
    assert len(clock.sleeps) == 3


def test_attempts_are_bounded() -> None:
    clock = FakeClock()
    fn = Failing(99, ServerError("503"))
    with pytest.raises(RetriesExhaustedError, match="after 4 attempts"):
        call_with_retries(fn, Backoff(4, 1e9, 1, 10), clock, random.Random(1))
    assert fn.calls["n"] == 4


def test_elapsed_time_is_bounded() -> None:
    clock = FakeClock()
    fn = Failing(99, ServerError("503", retry_after=30))
    with pytest.raises(RetriesExhaustedError, match="retry budget 100s"):
        call_with_retries(fn, Backoff(1000, 100, 1, 10), clock, random.Random(1))
    assert clock.now <= 100


def test_terminal_errors_are_not_retried() -> None:
    clock = FakeClock()
    fn = Failing(1, SalesforceConfigurationError("invalid_client"))
    with pytest.raises(SalesforceConfigurationError):
        call_with_retries(fn, Backoff(5, 100, 1, 10), clock, random.Random(1))
    assert clock.sleeps == []


def test_the_message_names_the_bound_that_ran_out() -> None:
    with pytest.raises(RetriesExhaustedError, match=r"\[retry\] max_attempts = 3"):
        call_with_retries(
            Failing(99, ServerError("HTTP 503")),
            Backoff(3, 1e9, 1, 10),
            FakeClock(),
            random.Random(1),
        )
    with pytest.raises(RetriesExhaustedError, match=r"\[retry\] max_elapsed_seconds\): HTTP 503"):
        call_with_retries(
            Failing(99, ServerError("HTTP 503", retry_after=30)),
            Backoff(1000, 100, 1, 10),
            FakeClock(),
            random.Random(1),
        )


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (requests.exceptions.ChunkedEncodingError("Connection broken: IncompleteRead"), "reset"),
        (requests.exceptions.ConnectionError("[Errno 104] Connection reset by peer"), "reset"),
        (requests.exceptions.ConnectionError("[Errno 111] Connection refused"), "refused"),
        (requests.exceptions.ReadTimeout("read timed out"), "timeout_seconds"),
    ],
)
def test_a_connection_that_breaks_is_a_network_error_an_operator_can_read(
    exc: requests.RequestException, words: str
) -> None:
    error = network_error(exc, "https://acme.my.salesforce.com")
    # Transient, so it is retried and never becomes a record error.
    assert isinstance(error, NetworkError)
    assert words in str(error) and "acme.my.salesforce.com" in str(error)


@pytest.mark.parametrize(
    "exc",
    [
        requests.exceptions.InvalidURL("Invalid URL 'https://acme.my.salesforce.com /x'"),
        requests.exceptions.MissingSchema("No scheme supplied"),
        requests.exceptions.InvalidHeader("Invalid leading whitespace in header value"),
    ],
)
def test_a_request_that_cannot_be_built_is_never_retried(exc: requests.RequestException) -> None:
    error = network_error(exc, "https://acme.my.salesforce.com ")
    # Terminal: the run stops at once with a message, instead of 300 s of retries.
    assert isinstance(error, SalesforceConfigurationError)
    assert not isinstance(error, TransientError)
    assert "salesforce.login_url" in str(error)


# With full jitter, 8 attempts wait 61 s on average in all (half of 1+2+4+...+32+60), so a
# default of 8 gave up during a 60 s outage about half the time, long before the 300 s
# max_elapsed_seconds that an operator reads as the budget. The default is 12.
def test_the_default_retry_budget_rides_out_a_60_second_outage() -> None:
    defaults = RetryConfig()
    backoff = Backoff(
        defaults.max_attempts,
        defaults.max_elapsed_seconds,
        defaults.initial_backoff_seconds,
        defaults.max_backoff_seconds,
    )
    gave_up = 0
    for seed in range(200):
        clock = FakeClock()

        def during_the_outage(clock: FakeClock = clock) -> str:
            clock.now += 0.2  # each attempt takes a moment too
            if clock.now < 60:
                raise ServerError("HTTP 503 Service Unavailable")
            return "ok"

        try:
            call_with_retries(during_the_outage, backoff, clock, random.Random(seed))
        except RetriesExhaustedError:
            gave_up += 1
    assert gave_up == 0, f"gave up during the outage in {gave_up} of 200 runs"
