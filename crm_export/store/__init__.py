"""The SQL store: every SQL statement crm-export runs lives in this package.

``SqlStore`` implements ``ports.Store`` over SQLAlchemy Core. It talks to two kinds of
database:

* the **state database** (SQLite by default, PostgreSQL in production): export runs, stream
  positions and pauses, and the ExportErrors table people query by hand;
* the **source databases** named by each stream's ``source_url`` (any SQLAlchemy URL, possibly
  the state database itself), which are only ever read.

One module per concern: ``urls`` (showing and telling apart database URLs), ``engines``
(engines and what their errors mean), ``positions`` (how a position is stored), ``sources``
(reading the sources), ``state`` (runs, stream state, ExportErrors, the batch
acknowledgement), ``operator`` (the queries behind ``status`` and ``errors``), ``actions``
(what operators do: skip, reset, and the audit trail), ``locks``
(runner, run and migration locks), ``schema`` (table metadata), ``migrations`` (Alembic),
and ``sql_store`` (``SqlStore``, composed from the parts).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Where each name re-exported here lives. They are imported on first use (PEP 562), so that
# importing one light part (config.py wants store.urls) does not load every engine, lock
# and SQL dialect of the package, and no part can end up in a circle through this file.
_EXPORTS = {
    "INTERRUPTED_MESSAGE": "state",
    "IN_CHUNK": "statements",
    "AdvisoryRunnerLock": "locks",
    "FileRunnerLock": "locks",
    "NoLock": "locks",
    "RunnerLock": "locks",
    "SqlStore": "sql_store",
    "advisory_runner_lock": "locks",
    "begin_write": "engines",
    "create_source_engine": "engines",
    "create_state_engine": "engines",
    "decode_value": "positions",
    "encode_value": "positions",
    "holder_id": "locks",
    "is_memory_sqlite": "urls",
    "is_sqlite": "urls",
    "lock_for_migration": "locks",
    "preflight_source": "sources",
    "redact_url": "urls",
    "runner_lock": "locks",
    "state_database_errors": "engines",
}

__all__ = [
    "INTERRUPTED_MESSAGE",
    "IN_CHUNK",
    "AdvisoryRunnerLock",
    "FileRunnerLock",
    "NoLock",
    "RunnerLock",
    "SqlStore",
    "advisory_runner_lock",
    "begin_write",
    "create_source_engine",
    "create_state_engine",
    "decode_value",
    "encode_value",
    "holder_id",
    "is_memory_sqlite",
    "is_sqlite",
    "lock_for_migration",
    "preflight_source",
    "redact_url",
    "runner_lock",
    "state_database_errors",
]

if TYPE_CHECKING:
    from crm_export.store.engines import (
        begin_write,
        create_source_engine,
        create_state_engine,
        state_database_errors,
    )
    from crm_export.store.locks import (
        AdvisoryRunnerLock,
        FileRunnerLock,
        NoLock,
        RunnerLock,
        advisory_runner_lock,
        holder_id,
        lock_for_migration,
        runner_lock,
    )
    from crm_export.store.positions import decode_value, encode_value
    from crm_export.store.sources import preflight_source
    from crm_export.store.sql_store import SqlStore
    from crm_export.store.state import INTERRUPTED_MESSAGE
    from crm_export.store.statements import IN_CHUNK
    from crm_export.store.urls import is_memory_sqlite, is_sqlite, redact_url


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        # Also how ``from crm_export.store import migrations`` finds the submodule instead.
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
