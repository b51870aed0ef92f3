"""Helpers of the store tests: a hand-moved clock, record failures and a contacts source."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from crm_export.ports import RecordError, RecordFailure, SourceRow, StreamSource
from crm_export.store import SqlStore

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
CreateSourceTable = Callable[..., None]  # the create_source_table fixture (tests/conftest.py)


class Clock:
    """A clock the test moves by hand, so timestamps can be asserted exactly."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def tick(self, minutes: int = 1) -> datetime:
        self.now += timedelta(minutes=minutes)
        return self.now


def failure(key: str, code: str = "REQUIRED_FIELD_MISSING", message: str = "boom") -> RecordFailure:
    return RecordFailure(
        record_key=key,
        sobject="Contact",
        external_id="Legacy_Id__c",
        error=RecordError(code, message, ("LastName", "Email")),
        payload={"Legacy_Id__c": key, "LastName": None},
    )


def contacts(url: str, **kw: Any) -> StreamSource:
    fields: dict[str, Any] = {
        "name": "contacts",
        "key": "id",
        "order_by": "updated",
        "columns": ("id", "name"),
        "source_url": url,
        "table": "contacts",
    }
    fields.update(kw)
    return StreamSource(**fields)


def read_all(store: SqlStore, source: StreamSource, limit: int) -> list[list[SourceRow]]:
    """Page through the source the way the core does, batch by batch."""
    batches, after = [], None
    while batch := store.read_batch(source, after, limit):
        batches.append(batch)
        after = batch[-1].position
        assert len(batches) < 100, "read_batch does not advance"
    return batches


BIG = 3_000_000_000  # beyond INTEGER: binds must not be cast to a 32-bit type


def contacts_table(create: CreateSourceTable, url: str, rows: list[dict[str, Any]]) -> None:
    create(
        url,
        "contacts",
        {"id": sa.BigInteger(), "updated": sa.Integer(), "name": sa.String(50)},
        rows,
        primary_key="id",
    )
