"""store.urls: what kind of database a URL names."""

from __future__ import annotations

from crm_export.store.urls import is_memory_sqlite, is_sqlite


def test_what_counts_as_sqlite_and_as_in_memory() -> None:
    assert is_sqlite("sqlite:///state.db") and is_sqlite("sqlite://")
    assert not is_sqlite("postgresql+psycopg://u@h/db")
    for memory in ("sqlite://", "sqlite:///:memory:", "sqlite:///file:x?mode=memory&uri=true"):
        assert is_memory_sqlite(memory), memory
    assert not is_memory_sqlite("sqlite:///state.db")
    assert not is_memory_sqlite("postgresql+psycopg://u@h/db")
