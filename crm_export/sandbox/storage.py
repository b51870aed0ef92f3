"""Record storage: in memory, optionally written through to a SQLite file.

All records live in memory (with lazy indexes for external-id and unique lookups); a
``--data`` file only makes them survive a restart. Every change goes through a
:class:`Transaction` that holds the store's lock and keeps an undo log, so an
allOrNone request can roll back everything it wrote.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from crm_export.private_files import create_private_file
from crm_export.sandbox.ids import make_id

Record = dict[str, Any]
_IndexKey = tuple[str, str, bool]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id TEXT PRIMARY KEY,
    sobject TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS id_counters (
    prefix TEXT PRIMARY KEY,
    last INTEGER NOT NULL
);
"""


def index_value(value: Any, case_sensitive: bool) -> Any:
    if isinstance(value, str) and not case_sensitive:
        return value.casefold()
    return value


class RecordStore:
    def __init__(self, path: Path | None = None) -> None:
        # Re-entrant: a request holds it for its whole transaction and reads inside it.
        self.lock = threading.RLock()
        self._records: dict[str, dict[str, Record]] = {}
        self._indexes: dict[_IndexKey, dict[Any, set[str]]] = {}
        self._counters: dict[str, int] = {}
        self._path = path
        self._db: sqlite3.Connection | None = None
        if path is not None:
            # Rehearsal records are the user's real data: readable by its owner only.
            create_private_file(path)
            self._db = sqlite3.connect(path, check_same_thread=False)
            with self._db:
                self._db.executescript(_SCHEMA)
            for record_id, sobject, data in self._db.execute(
                "SELECT id, sobject, data FROM records ORDER BY rowid"
            ):
                self._records.setdefault(sobject, {})[record_id] = json.loads(data)
            self._counters = dict(self._db.execute("SELECT prefix, last FROM id_counters"))

    @property
    def path(self) -> Path | None:
        return self._path

    def close(self) -> None:
        with self.lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # ---- reads (callers that need a consistent view hold ``lock``)

    def sobjects(self) -> list[str]:
        with self.lock:
            return sorted(name for name, records in self._records.items() if records)

    def all(self, sobject: str) -> list[Record]:
        with self.lock:
            return [dict(r) for r in self._records.get(sobject, {}).values()]

    def count(self, sobject: str) -> int:
        with self.lock:
            return len(self._records.get(sobject, {}))

    def get(self, sobject: str, record_id: str) -> Record | None:
        with self.lock:
            record = self._records.get(sobject, {}).get(record_id)
            return dict(record) if record is not None else None

    def find(self, sobject: str, field: str, value: Any, *, case_sensitive: bool) -> list[Record]:
        """Records of ``sobject`` whose ``field`` equals ``value`` (case-folded unless told)."""
        if value is None:
            return []
        with self.lock:
            index = self._index(sobject, field, case_sensitive)
            ids = index.get(index_value(value, case_sensitive), set())
            records = self._records.get(sobject, {})
            return [dict(records[i]) for i in sorted(ids)]

    def peek_id(self, prefix: str) -> str:
        with self.lock:
            return make_id(prefix, self._counters.get(prefix, 0) + 1)

    def next_id(self, prefix: str) -> str:
        with self.lock:
            n = self._counters.get(prefix, 0) + 1
            self._counters[prefix] = n
            return make_id(prefix, n)

    def _index(self, sobject: str, field: str, case_sensitive: bool) -> dict[Any, set[str]]:
        key = (sobject, field, case_sensitive)
        index = self._indexes.get(key)
        if index is None:
            index = {}
            for record_id, record in self._records.get(sobject, {}).items():
                value = record.get(field)
                if value is not None:
                    index.setdefault(index_value(value, case_sensitive), set()).add(record_id)
            self._indexes[key] = index
        return index

    def _reindex(
        self, sobject: str, record_id: str, old: Record | None, new: Record | None
    ) -> None:
        for (obj, field, case_sensitive), index in self._indexes.items():
            if obj != sobject:
                continue
            old_value = old.get(field) if old else None
            new_value = new.get(field) if new else None
            if old_value == new_value:
                continue
            if old_value is not None:
                bucket = index.get(index_value(old_value, case_sensitive))
                if bucket is not None:
                    bucket.discard(record_id)
            if new_value is not None:
                index.setdefault(index_value(new_value, case_sensitive), set()).add(record_id)

    # ---- writes

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Hold the lock for a unit of work; it commits on exit unless rolled back or raising."""
        with self.lock:
            tx = Transaction(self)
            try:
                yield tx
            except BaseException:
                tx.rollback()
                raise
            if not tx.done:
                tx.commit()

    def _apply(self, sobject: str, record_id: str, record: Record | None) -> Record | None:
        records = self._records.setdefault(sobject, {})
        old = records.get(record_id)
        if record is None:
            records.pop(record_id, None)
        else:
            records[record_id] = record
        self._reindex(sobject, record_id, old, record)
        return old

    def _persist(self, dirty: dict[tuple[str, str], Record | None]) -> None:
        if self._db is None:
            return
        with self._db:
            for (sobject, record_id), record in dirty.items():
                if record is None:
                    self._db.execute("DELETE FROM records WHERE id = ?", (record_id,))
                else:
                    self._db.execute(
                        "INSERT OR REPLACE INTO records (id, sobject, data) VALUES (?, ?, ?)",
                        (record_id, sobject, json.dumps(record)),
                    )
            self._db.executemany(
                "INSERT OR REPLACE INTO id_counters (prefix, last) VALUES (?, ?)",
                list(self._counters.items()),
            )

    def insert_raw(self, sobject: str, records: list[Record]) -> None:
        with self.transaction() as tx:
            for record in records:
                tx.put(sobject, record)

    def clear(self) -> None:
        with self.lock:
            self._records.clear()
            self._indexes.clear()
            self._counters.clear()
            if self._db is not None:
                with self._db:
                    self._db.execute("DELETE FROM records")
                    self._db.execute("DELETE FROM id_counters")


class Transaction:
    """Changes applied at once to the in-memory view, undone on rollback."""

    def __init__(self, store: RecordStore) -> None:
        self.store = store
        self._undo: list[tuple[str, str, Record | None]] = []
        self._dirty: dict[tuple[str, str], Record | None] = {}
        self.done = False
        # Entries the caller wants published only if this transaction commits.
        self.on_commit: list[Any] = []

    def put(self, sobject: str, record: Record) -> None:
        record_id = record["Id"]
        old = self.store._apply(sobject, record_id, dict(record))
        self._undo.append((sobject, record_id, old))
        self._dirty[(sobject, record_id)] = dict(record)

    def delete(self, sobject: str, record_id: str) -> None:
        old = self.store._apply(sobject, record_id, None)
        self._undo.append((sobject, record_id, old))
        self._dirty[(sobject, record_id)] = None

    def savepoint(self) -> int:
        return len(self._undo)

    def rollback_to(self, savepoint: int) -> None:
        while len(self._undo) > savepoint:
            sobject, record_id, old = self._undo.pop()
            self.store._apply(sobject, record_id, old)
            if old is None:
                self._dirty[(sobject, record_id)] = None
            else:
                self._dirty[(sobject, record_id)] = old

    def rollback(self) -> None:
        self.rollback_to(0)
        self._dirty.clear()
        self.on_commit.clear()
        self.done = True

    def commit(self) -> None:
        self.store._persist(self._dirty)
        self.done = True
