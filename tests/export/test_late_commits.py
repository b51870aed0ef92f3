"""PostgreSQL sources: no committed row is ever skipped by the position, even when writers
commit out of order (long transactions) or stamp order_by from a clock that is behind."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from crm_export.config import load_config
from crm_export.jobs import JOBS
from crm_export.ports import JobId, RunOutcome
from crm_export.sandbox.testing import SandboxHandle

pytestmark = pytest.mark.postgres


def write_config(tmp_path: Path, url: str, sandbox: SandboxHandle) -> Path:
    path = tmp_path / "crm-export.toml"
    path.write_text(f"""
[database]
url = "{url}"

[salesforce]
login_url = "{sandbox.base_url}"
auth = "client_credentials"
client_id = "{sandbox.client_id}"
client_secret_env = "SF_CLIENT_SECRET"
ca_bundle = "{sandbox.ca_path}"
timeout_seconds = 10

[export]
pause_on_error = true
batch_size = 50

[[streams]]
name = "contacts"
table = "contacts"
key = "id"
order_by = "updated_at"
sobject = "Contact"
external_id_field = "External_Id__c"

[streams.fields]
LastName = "last_name"
""")
    return path


def test_rows_committed_behind_the_position_still_reach_the_org(
    tmp_path: Path, postgres_state_url: str, sandbox: SandboxHandle
) -> None:
    engine = sa.create_engine(postgres_state_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE contacts (id bigserial PRIMARY KEY, last_name text NOT NULL, "
            "updated_at timestamptz NOT NULL DEFAULT now())"
        )
    config = load_config(
        write_config(tmp_path, postgres_state_url, sandbox),
        environ={"SF_CLIENT_SECRET": sandbox.client_secret},
    )
    stop = threading.Event()
    written: list[int] = []
    lock = threading.Lock()

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            with engine.begin() as conn:
                # now() is the transaction's start: a transaction that runs long commits a
                # row ordered before the rows of shorter ones that committed meanwhile. Some
                # writers also stamp the row from a clock that is a few seconds behind.
                skew = "now() - interval '2 seconds'" if rng.random() < 0.3 else "now()"
                new_id = conn.exec_driver_sql(
                    f"INSERT INTO contacts (last_name, updated_at) "
                    f"VALUES ('Writer{seed}', {skew}) RETURNING id"
                ).scalar_one()
                time.sleep(rng.choice([0.0, 0.01, 0.05, 0.4]))
            with lock:
                written.append(new_id)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    late = 0
    try:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            with capture_logs() as logs:
                [result] = JOBS[JobId.EXPORT](config, None)
            assert result.outcome is RunOutcome.COMPLETED, result.error
            late += sum(e["count"] for e in logs if e["event"] == "late_rows")
    finally:
        stop.set()
        for t in threads:
            t.join()
    # The writers are done; two more runs pick up the last late rows and then find nothing.
    for _ in range(2):
        [result] = JOBS[JobId.EXPORT](config, None)
        assert result.outcome is RunOutcome.COMPLETED
    engine.dispose()

    in_org = [r["External_Id__c"] for r in sandbox.records("Contact")]
    assert len(in_org) == len(set(in_org))  # one record per external ID
    assert {str(i) for i in written} - set(in_org) == set()  # nothing skipped
    assert late > 0, "the writers never committed behind the position: the test proved nothing"


def two_stream_config(tmp_path: Path, url: str, sandbox: SandboxHandle) -> Path:
    """One table stream and one query stream over the same rows (the query's keys offset, so
    both land in the org side by side), both on their default late-commit protection: the
    xmin rescan for the table, the lookback window (600 s) for the query."""
    path = write_config(tmp_path, url, sandbox)
    path.write_text(
        path.read_text().replace('name = "contacts"', 'name = "by_table"')
        + f"""
[[streams]]
name = "by_query"
query = "SELECT id + {QUERY_OFFSET} AS id, last_name, updated_at FROM contacts"
key = "id"
order_by = "updated_at"
sobject = "Contact"
external_id_field = "External_Id__c"

[streams.fields]
LastName = "last_name"
"""
    )
    return path


QUERY_OFFSET = 1_000_000
HOT_ROWS = 12  # updates pick among these often, so writers wait on each other's row locks


def test_out_of_order_commits_reach_the_org_with_their_last_value_for_tables_and_queries(
    tmp_path: Path, postgres_state_url: str, sandbox: SandboxHandle
) -> None:
    engine = sa.create_engine(postgres_state_url, pool_size=10)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE contacts (id bigserial PRIMARY KEY, last_name text NOT NULL, "
            "updated_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.exec_driver_sql(
            "INSERT INTO contacts (last_name) SELECT 'Seed' || n FROM generate_series(1, 40) n"
        )
    config = load_config(
        two_stream_config(tmp_path, postgres_state_url, sandbox),
        environ={"SF_CLIENT_SECRET": sandbox.client_secret},
    )
    stop = threading.Event()
    versions: dict[int, int] = {i: 1 for i in range(1, 41)}  # committed versions per row
    lock = threading.Lock()
    counter = iter(range(1, 10**9))

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            conn = engine.connect()
            tx = conn.begin()
            try:
                value = f"W{seed}-{next(counter)}"
                if rng.random() < 0.4:
                    row_id = conn.exec_driver_sql(
                        "INSERT INTO contacts (last_name) VALUES (%(v)s) RETURNING id",
                        {"v": value},
                    ).scalar_one()
                else:
                    top = HOT_ROWS if rng.random() < 0.5 else 40
                    row_id = rng.randint(1, top)
                    # now() is the transaction's start: a transaction that waited on this
                    # row's lock, or ran long, commits a value ordered before rows that
                    # committed meanwhile.
                    conn.exec_driver_sql(
                        "UPDATE contacts SET last_name = %(v)s, updated_at = now() "
                        "WHERE id = %(id)s",
                        {"v": value, "id": row_id},
                    )
                time.sleep(rng.choice([0.0, 0.0, 0.05, 0.3, 1.0, 2.0, 3.0]))
                if rng.random() < 0.15:
                    tx.rollback()  # never committed: must never reach the org
                    continue
                tx.commit()
                with lock:
                    versions[row_id] = versions.get(row_id, 0) + 1
            finally:
                conn.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    late = {"by_table": 0, "by_query": 0}
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for result in JOBS[JobId.EXPORT](config, None):
                assert result.outcome is RunOutcome.COMPLETED, result.error
                late[result.stream] += result.counts.late
    finally:
        stop.set()
        for t in threads:
            t.join()
    # The writers are done; one more run picks up what committed late during the last one.
    for result in JOBS[JobId.EXPORT](config, None):
        assert result.outcome is RunOutcome.COMPLETED
        late[result.stream] += result.counts.late
    with engine.connect() as conn:
        truth: dict[int, str] = dict(
            conn.exec_driver_sql("SELECT id, last_name FROM contacts").all()
        )
    engine.dispose()
    in_org = {r["External_Id__c"]: r["LastName"] for r in sandbox.records("Contact")}
    for name, offset in (("by_table", 0), ("by_query", QUERY_OFFSET)):
        want = {str(k + offset): v for k, v in truth.items()}
        got = {k: v for k, v in in_org.items() if (int(k) >= QUERY_OFFSET) == (offset > 0)}
        stale = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
        assert stale == {}, f"{name}: {len(stale)} of {len(want)} rows stale or missing"
        assert set(got) == set(want)  # nothing that never committed
        assert late[name] > 0, f"{name}: nothing committed behind the position: proved nothing"
    # No write carried a payload the org already had: at most one write per committed
    # version of a row (an unchanged re-read would be one more).
    writes: dict[str, int] = {}
    for w in sandbox.writes():
        writes[w["external_id"]] = writes.get(w["external_id"], 0) + 1
    for key, count in versions.items():
        for ext in (str(key), str(key + QUERY_OFFSET)):
            assert writes.get(ext, 0) <= count, (ext, writes.get(ext), count)
    # And re-reading costs nothing: the query stream's window re-reads every row (all are
    # within 600 s), none changed, so no call is made.
    quiet = {r.stream: r for r in JOBS[JobId.EXPORT](config, None)}
    assert quiet["by_query"].counts.unchanged == len(truth)
    assert sum(r.counts.api_calls for r in quiet.values()) == 0
