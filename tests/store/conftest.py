"""Fixtures of the store tests (the databases themselves come from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from crm_export.store import SqlStore
from tests.store.store_kit import Clock


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def timed_store(state_url: str, clock: Clock) -> Iterator[SqlStore]:
    with SqlStore(state_url, clock=clock) as s:
        yield s
