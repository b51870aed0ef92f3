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
from crm_export.ports import RunOutcome
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
                [result] = JOBS["CRMExport"](config, None)
            assert result.outcome is RunOutcome.COMPLETED, result.error
            late += sum(e["count"] for e in logs if e["event"] == "late_rows")
    finally:
        stop.set()
        for t in threads:
            t.join()
    # The writers are done; two more runs pick up the last late rows and then find nothing.
    for _ in range(2):
        [result] = JOBS["CRMExport"](config, None)
        assert result.outcome is RunOutcome.COMPLETED
    engine.dispose()

    in_org = [r["External_Id__c"] for r in sandbox.records("Contact")]
    assert len(in_org) == len(set(in_org))  # one record per external ID
    assert {str(i) for i in written} - set(in_org) == set()  # nothing skipped
    assert late > 0, "the writers never committed behind the position: the test proved nothing"
