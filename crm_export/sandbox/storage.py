"""Record storage: in memory, or in a SQLite file (``--data``) with no copy in memory.

Without a file, records live in dicts with lazy indexes, as fast as it gets. With one, the
file is the store: records, id counters and the keys that lookups need (external IDs, unique
fields, any field looked up by value) are tables, so memory stays flat however many records
a rehearsal loads, and the records survive a restart.

Every change goes through a :class:`Transaction` that holds the store's lock. Changes are
visible at once to reads inside it and undone on rollback (an allOrNone request that fails
writes nothing): in memory through an undo log, in the file through a SQLite transaction.
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


def index_value(value: Any, case_sensitive: bool) -> Any:
    if isinstance(value, str) and not case_sensitive:
        return value.casefold()
    return value


class RecordStore:
    """The records of one sandbox org; pass ``path`` to keep them in that SQLite file."""

    def __init__(self, path: Path | None = None) -> None:
        # Re-entrant: a request holds it for its whole transaction and reads inside it.
        self.lock = threading.RLock()
        self._path = path
        self._backend: _Backend = _SqliteBackend(path) if path is not None else _MemoryBackend()

    @property
    def path(self) -> Path | None:
        return self._path

    def close(self) -> None:
        with self.lock:
            self._backend.close()

    # ---- reads (callers that need a consistent view hold ``lock``)

    def sobjects(self) -> list[str]:
        with self.lock:
            return self._backend.sobjects()

    def all(self, sobject: str) -> list[Record]:
        with self.lock:
            return self._backend.all(sobject)

    def count(self, sobject: str) -> int:
        with self.lock:
            return self._backend.count(sobject)

    def get(self, sobject: str, record_id: str) -> Record | None:
        with self.lock:
            return self._backend.get(sobject, record_id)

    def find(self, sobject: str, field: str, value: Any, *, case_sensitive: bool) -> list[Record]:
        """Records of ``sobject`` whose ``field`` equals ``value`` (case-folded unless told)."""
        if value is None:
            return []
        with self.lock:
            return self._backend.find(sobject, field, value, case_sensitive)

    def peek_id(self, prefix: str) -> str:
        with self.lock:
            return make_id(prefix, self._backend.counters.get(prefix, 0) + 1)

    def next_id(self, prefix: str) -> str:
        with self.lock:
            counters = self._backend.counters
            counters[prefix] = counters.get(prefix, 0) + 1
            self._backend.save_counters()
            return make_id(prefix, counters[prefix])

    # ---- writes

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Hold the lock for a unit of work; it commits on exit unless rolled back or raising."""
        with self.lock:
            tx = Transaction(self, self._backend)
            try:
                yield tx
            except BaseException:
                if not tx.done:
                    tx.rollback()
                raise
            if not tx.done:
                tx.commit()

    def insert_raw(self, sobject: str, records: list[Record]) -> None:
        with self.transaction() as tx:
            for record in records:
                tx.put(sobject, record)

    def clear(self) -> None:
        with self.lock:
            self._backend.clear()


class Transaction:
    """Changes applied at once to what the store reads, undone on rollback."""

    def __init__(self, store: RecordStore, backend: _Backend) -> None:
        self.store = store
        self._backend = backend
        self._undo: list[tuple[str, str, Record | None]] = []
        self._savepoint = backend.begin()
        self.done = False
        # Entries the caller wants published only if this transaction commits.
        self.on_commit: list[Any] = []

    def put(self, sobject: str, record: Record) -> None:
        old = self._backend.write(sobject, record["Id"], dict(record))
        self._undo.append((sobject, record["Id"], old))

    def delete(self, sobject: str, record_id: str) -> None:
        old = self._backend.write(sobject, record_id, None)
        self._undo.append((sobject, record_id, old))

    def rollback(self) -> None:
        self._backend.rollback(self._savepoint, self._undo)
        self._undo.clear()
        self.on_commit.clear()
        self.done = True

    def commit(self) -> None:
        self._backend.commit(self._savepoint)
        self.done = True


class _Backend:
    """Where records are kept; every method is called with the store's lock held."""

    counters: dict[str, int]

    def close(self) -> None:
        return None

    def sobjects(self) -> list[str]:
        raise NotImplementedError

    def all(self, sobject: str) -> list[Record]:
        raise NotImplementedError

    def count(self, sobject: str) -> int:
        raise NotImplementedError

    def get(self, sobject: str, record_id: str) -> Record | None:
        raise NotImplementedError

    def find(self, sobject: str, field: str, value: Any, case_sensitive: bool) -> list[Record]:
        raise NotImplementedError

    def save_counters(self) -> None:
        return None

    def begin(self) -> Any:
        """Start a (possibly nested) transaction; returns what rollback and commit need."""
        raise NotImplementedError

    def write(self, sobject: str, record_id: str, record: Record | None) -> Record | None:
        """Store ``record`` (None deletes it); returns the one it replaced, if any."""
        raise NotImplementedError

    def rollback(self, savepoint: Any, undo: list[tuple[str, str, Record | None]]) -> None:
        raise NotImplementedError

    def commit(self, savepoint: Any) -> None:
        raise NotImplementedError

    def clear(self) -> None:
        raise NotImplementedError


class _MemoryBackend(_Backend):
    def __init__(self) -> None:
        self._records: dict[str, dict[str, Record]] = {}
        self._indexes: dict[_IndexKey, dict[Any, set[str]]] = {}
        self.counters = {}

    def sobjects(self) -> list[str]:
        return sorted(name for name, records in self._records.items() if records)

    def all(self, sobject: str) -> list[Record]:
        return [dict(r) for r in self._records.get(sobject, {}).values()]

    def count(self, sobject: str) -> int:
        return len(self._records.get(sobject, {}))

    def get(self, sobject: str, record_id: str) -> Record | None:
        record = self._records.get(sobject, {}).get(record_id)
        return dict(record) if record is not None else None

    def find(self, sobject: str, field: str, value: Any, case_sensitive: bool) -> list[Record]:
        index = self._index(sobject, field, case_sensitive)
        ids = index.get(index_value(value, case_sensitive), set())
        records = self._records.get(sobject, {})
        return [dict(records[i]) for i in sorted(ids)]

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

    def begin(self) -> None:
        return None

    def write(self, sobject: str, record_id: str, record: Record | None) -> Record | None:
        records = self._records.setdefault(sobject, {})
        old = records.get(record_id)
        if record is None:
            records.pop(record_id, None)
        else:
            records[record_id] = record
        for (obj, field, case_sensitive), index in self._indexes.items():
            if obj != sobject:
                continue
            old_value = old.get(field) if old else None
            new_value = record.get(field) if record else None
            if old_value == new_value:
                continue
            if old_value is not None:
                bucket = index.get(index_value(old_value, case_sensitive))
                if bucket is not None:
                    bucket.discard(record_id)
            if new_value is not None:
                index.setdefault(index_value(new_value, case_sensitive), set()).add(record_id)
        return old

    def rollback(self, savepoint: Any, undo: list[tuple[str, str, Record | None]]) -> None:
        for sobject, record_id, old in reversed(undo):
            self.write(sobject, record_id, old)

    def commit(self, savepoint: Any) -> None:
        return None

    def clear(self) -> None:
        self._records.clear()
        self._indexes.clear()
        self.counters.clear()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id TEXT PRIMARY KEY,
    sobject TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_sobject ON records (sobject);
CREATE TABLE IF NOT EXISTS id_counters (
    prefix TEXT PRIMARY KEY,
    last INTEGER NOT NULL
);
-- The fields looked up by value, each with its key rows: the JSON of the value, casefolded
-- for a case-insensitive field.
CREATE TABLE IF NOT EXISTS indexed_fields (
    sobject TEXT NOT NULL,
    field TEXT NOT NULL,
    case_sensitive INTEGER NOT NULL,
    PRIMARY KEY (sobject, field, case_sensitive)
);
CREATE TABLE IF NOT EXISTS record_keys (
    sobject TEXT NOT NULL,
    field TEXT NOT NULL,
    case_sensitive INTEGER NOT NULL,
    value TEXT NOT NULL,
    id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS record_keys_by_value
    ON record_keys (sobject, field, case_sensitive, value);
CREATE INDEX IF NOT EXISTS record_keys_by_id ON record_keys (id);
"""


def _key(value: Any, case_sensitive: bool) -> str:
    return json.dumps(index_value(value, case_sensitive))


class _SqliteBackend(_Backend):
    def __init__(self, path: Path) -> None:
        # Rehearsal records are the user's real data: readable by its owner only.
        create_private_file(path)
        # Autocommit mode: transactions are begun and ended here, nested as savepoints.
        self._db: sqlite3.Connection | None = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None
        )
        # A rehearsal's file need not survive a power cut, only a restart: WAL without a
        # sync per commit keeps a 200-record call from waiting on the disk.
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        self.counters = dict(self.db.execute("SELECT prefix, last FROM id_counters"))
        self._depth = 0
        self._load_indexed()

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the sandbox's record store is closed")
        return self._db

    def _load_indexed(self) -> None:
        self._indexed: dict[str, set[tuple[str, bool]]] = {}
        for sobject, field, case_sensitive in self.db.execute(
            "SELECT sobject, field, case_sensitive FROM indexed_fields"
        ):
            self._indexed.setdefault(sobject, set()).add((field, bool(case_sensitive)))

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def sobjects(self) -> list[str]:
        rows = self.db.execute("SELECT DISTINCT sobject FROM records ORDER BY sobject")
        return [name for (name,) in rows]

    def all(self, sobject: str) -> list[Record]:
        rows = self.db.execute(
            "SELECT data FROM records WHERE sobject = ? ORDER BY rowid", (sobject,)
        )
        return [json.loads(data) for (data,) in rows]

    def count(self, sobject: str) -> int:
        [(n,)] = self.db.execute("SELECT count(*) FROM records WHERE sobject = ?", (sobject,))
        return int(n)

    def get(self, sobject: str, record_id: str) -> Record | None:
        row = self.db.execute(
            "SELECT data FROM records WHERE id = ? AND sobject = ?", (record_id, sobject)
        ).fetchone()
        return json.loads(row[0]) if row else None

    def find(self, sobject: str, field: str, value: Any, case_sensitive: bool) -> list[Record]:
        self._ensure_index(sobject, field, case_sensitive)
        rows = self.db.execute(
            "SELECT r.data FROM record_keys k JOIN records r ON r.id = k.id "
            "WHERE k.sobject = ? AND k.field = ? AND k.case_sensitive = ? AND k.value = ? "
            "ORDER BY k.id",
            (sobject, field, int(case_sensitive), _key(value, case_sensitive)),
        )
        return [json.loads(data) for (data,) in rows]

    def _ensure_index(self, sobject: str, field: str, case_sensitive: bool) -> None:
        if (field, case_sensitive) in self._indexed.get(sobject, set()):
            return
        with self._transaction():
            rows = self.db.execute("SELECT id, data FROM records WHERE sobject = ?", (sobject,))
            keys = []
            for record_id, data in rows:
                value = json.loads(data).get(field)
                if value is not None:
                    keys.append(
                        (
                            sobject,
                            field,
                            int(case_sensitive),
                            _key(value, case_sensitive),
                            record_id,
                        )
                    )
            self.db.executemany("INSERT INTO record_keys VALUES (?, ?, ?, ?, ?)", keys)
            self.db.execute(
                "INSERT OR IGNORE INTO indexed_fields VALUES (?, ?, ?)",
                (sobject, field, int(case_sensitive)),
            )
        self._indexed.setdefault(sobject, set()).add((field, case_sensitive))

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        savepoint = self.begin()
        try:
            yield
        except BaseException:
            self.rollback(savepoint, [])
            raise
        self.commit(savepoint)

    def save_counters(self) -> None:
        if self._depth == 0:
            self._write_counters()

    def _write_counters(self) -> None:
        self.db.executemany(
            "INSERT OR REPLACE INTO id_counters (prefix, last) VALUES (?, ?)",
            list(self.counters.items()),
        )

    def begin(self) -> str:
        self._depth += 1
        name = f"sp{self._depth}"
        self.db.execute(f"SAVEPOINT {name}")
        return name

    def write(self, sobject: str, record_id: str, record: Record | None) -> Record | None:
        # SQLite undoes a rollback itself: no old record is needed for an undo log.
        self.db.execute("DELETE FROM record_keys WHERE id = ?", (record_id,))
        if record is None:
            self.db.execute("DELETE FROM records WHERE id = ?", (record_id,))
            return None
        # An upsert, not a replace: the row keeps its place, so records list in insert order.
        self.db.execute(
            "INSERT INTO records (id, sobject, data) VALUES (?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET sobject = excluded.sobject, data = excluded.data",
            (record_id, sobject, json.dumps(record)),
        )
        keys = [
            (sobject, field, int(case_sensitive), _key(record[field], case_sensitive), record_id)
            for field, case_sensitive in self._indexed.get(sobject, set())
            if record.get(field) is not None
        ]
        self.db.executemany("INSERT INTO record_keys VALUES (?, ?, ?, ?, ?)", keys)
        return None

    def rollback(self, savepoint: Any, undo: list[tuple[str, str, Record | None]]) -> None:
        self.db.execute(f"ROLLBACK TO {savepoint}")
        self.db.execute(f"RELEASE {savepoint}")
        self._depth -= 1
        # An index built inside the transaction is gone with it.
        self._load_indexed()

    def commit(self, savepoint: Any) -> None:
        if self._depth == 1:
            # Ids handed out stay handed out, even those of a rolled-back write.
            self._write_counters()
        self.db.execute(f"RELEASE {savepoint}")
        self._depth -= 1

    def clear(self) -> None:
        with self._transaction():
            for table in ("records", "record_keys", "indexed_fields", "id_counters"):
                self.db.execute(f"DELETE FROM {table}")
        self.counters.clear()
        self._indexed.clear()
