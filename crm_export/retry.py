"""Backoff policy: exponential with full jitter, bounded in attempts and in elapsed time.

It sits beside the export loop rather than inside it: the sink uses it for request-level
failures and the core for record-level transient errors.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from crm_export.errors import RetriesExhaustedError, TransientError

T = TypeVar("T")


class StopRequested(Exception):
    """A shutdown was requested while waiting; the caller unwinds without committing more."""


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """Real time. ``sleep`` wakes early, raising ``StopRequested``, when ``stop`` is set."""

    def __init__(self, stop: threading.Event | None = None) -> None:
        self.stop = stop or threading.Event()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise StopRequested()


@dataclass(frozen=True)
class Backoff:
    max_attempts: int
    max_elapsed: float
    initial: float
    cap: float

    def delay(self, attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based).

        Full jitter spreads retrying clients out; a server's Retry-After is a floor, because
        asking again sooner is certain to fail.
        """
        ceiling = min(self.cap, self.initial * 2 ** (attempt - 1))
        wait = rng.uniform(0, ceiling)
        if retry_after is not None:
            wait = max(wait, retry_after)
        return wait


def call_with_retries(
    fn: Callable[[], T],
    backoff: Backoff,
    clock: Clock,
    rng: random.Random,
    on_retry: Callable[[int, float, TransientError], None] | None = None,
) -> T:
    """Call ``fn`` until it returns, retrying ``TransientError`` within the budget.

    Raises ``RetriesExhaustedError`` (itself transient: the next run resumes) when either bound
    is reached; anything else propagates at once.
    """
    started = clock.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except TransientError as exc:
            elapsed = clock.monotonic() - started
            if attempt >= backoff.max_attempts:
                raise RetriesExhaustedError(
                    f"gave up after {attempt} attempts and {elapsed:.0f}s "
                    f"([retry] max_attempts = {backoff.max_attempts}): {exc}",
                    retry_after=exc.retry_after,
                ) from exc
            wait = backoff.delay(attempt, rng, exc.retry_after)
            if elapsed + wait > backoff.max_elapsed:
                raise RetriesExhaustedError(
                    f"gave up after {attempt} attempts and {elapsed:.0f}s "
                    f"(retry budget {backoff.max_elapsed:g}s, [retry] max_elapsed_seconds): "
                    f"{exc}",
                    retry_after=exc.retry_after,
                ) from exc
            if on_retry is not None:
                on_retry(attempt, wait, exc)
            clock.sleep(wait)
