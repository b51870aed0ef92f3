"""The PostgreSQL runner lock: an advisory lock that dies with its connection."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from crm_export.store import advisory_runner_lock


@pytest.mark.postgres
def test_one_runner_holds_the_advisory_lock(postgres_state_url: str) -> None:
    first, second = (
        advisory_runner_lock(postgres_state_url),
        advisory_runner_lock(postgres_state_url),
    )
    try:
        assert first.acquire() is True
        assert first.acquire() is True  # re-entrant for its holder
        assert second.acquire() is False
        assert first.alive() is True and second.alive() is False

        # The server ends the holder's session (crash, network cut): the lock goes with it.
        admin = sa.create_engine(postgres_state_url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.exec_driver_sql(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks"
                    " WHERE locktype = 'advisory' AND pid <> pg_backend_pid()"
                    # pg_locks is the whole server's: only this test's database, or the
                    # runner of any other test session on the server would lose its lock.
                    " AND database = (SELECT oid FROM pg_database"
                    " WHERE datname = current_database())"
                )
        finally:
            admin.dispose()
        assert first.alive() is False
        assert second.acquire() is True
        first.release()
        assert second.alive() is True
    finally:
        first.release()
        second.release()
