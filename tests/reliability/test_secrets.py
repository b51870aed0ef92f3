"""Secrets never leak (issue 5 §5): a planted secret is nowhere in what crm-export writes.

Each scenario plants distinctive secrets (the client secret, through the environment or a
file; a session id; a password in the PostgreSQL state URL, or in the query string of a
state or source URL, issue 14 §3), runs ``crm-export job`` as a
process at log level debug against the sandbox org over real HTTPS, makes it fail in one
way or another, and then greps everything an operator or a log shipper can see: the
process's stdout and stderr, every column of ExportErrors and export_runs, and the output of
``errors --csv``, ``errors --json``, ``errors`` and ``status --json``. The access tokens the
sandbox issued are searched for too.
"""

from __future__ import annotations

import socket
import tomllib
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from crm_export.sandbox.testing import SandboxHandle, running_sandbox
from crm_export.store import advisory_runner_lock
from tests.harness import (
    CONTACTS_DDL,
    Org,
    Stream,
    contact_rows,
    job_env,
    run_cli,
    sql,
    sqlite_url,
    write_config,
    write_contacts,
)

CLIENT_SECRET = "Planted-Client-Secret-7f3a9c"
WRONG_SECRET = "Planted-Wrong-Secret-51d0e2"
DB_PASSWORD = "Planted-Db-Password-c81b"
QUERY_PASSWORD = "Planted-Query-Password-4e9d"
CLIENT_ID = "crm-export-sandbox"


@pytest.fixture
def sandbox() -> Iterator[SandboxHandle]:
    org_text = (resources.files("crm_export.sandbox") / "default_org.toml").read_text()
    org = tomllib.loads(org_text)
    org["clients"][CLIENT_ID]["client_secret"] = CLIENT_SECRET
    with running_sandbox(org=org, seed=5) as handle:
        yield handle


def issued_tokens(sandbox: SandboxHandle) -> set[str]:
    # The admin API does not list tokens; the in-process server's own store does.
    return set(sandbox.server.state.tokens._tokens)


def with_password(state_url: str) -> str:
    if not state_url.startswith("postgresql"):
        return state_url
    # Trust authentication ignores the password, so it can be planted and still connect.
    url = make_url(state_url).set(password=DB_PASSWORD)
    return url.render_as_string(hide_password=False)


def with_query_password(url: str) -> str:
    # libpq also reads ?password=; trust authentication ignores it, so the URL still connects.
    planted = make_url(url).update_query_dict({"password": QUERY_PASSWORD})
    return planted.render_as_string(hide_password=False)


def unreachable_postgres(database: str) -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free once closed: nothing listens there
    return with_query_password(f"postgresql+psycopg://crm@127.0.0.1:{port}/{database}")


def write_postgres_contacts(url: str, rows: list[dict[str, object]]) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(CONTACTS_DDL.format(name="contacts"))
            conn.execute(
                sa.text(
                    "INSERT INTO contacts (id, first_name, last_name, email, title, updated_at)"
                    " VALUES (:id, :first_name, :last_name, :email, :title, :updated_at)"
                ),
                rows,
            )
    finally:
        engine.dispose()


def make_config(
    tmp_path: Path,
    sandbox: SandboxHandle,
    state_url: str,
    *,
    salesforce: dict[str, str] | None = None,
) -> Path:
    source = tmp_path / "app.db"
    write_contacts(source, contact_rows(range(1, 31), reject_every=7).rows)
    config = write_config(
        tmp_path / "crm-export.toml",
        state_url=state_url,
        org=Org(sandbox.base_url, sandbox.ca_path, CLIENT_ID, CLIENT_SECRET),
        streams=[Stream("contacts", sqlite_url(source))],
        pause_on_error=False,
        batch_size=10,
        log_level="debug",
    )
    if salesforce:
        text = config.read_text(encoding="utf-8")
        lines = [line for line in text.splitlines() if not _replaced(line, salesforce)]
        text = "\n".join(lines).replace(
            "[salesforce]\n", "[salesforce]\n" + "".join(f"{v}\n" for v in salesforce.values())
        )
        config.write_text(text, encoding="utf-8")
    return config


def _replaced(line: str, salesforce: dict[str, str]) -> bool:
    return any(line.startswith(f"{key} =") for key in salesforce)


def everything_visible(
    tmp_path: Path, config: Path, state_url: str, outputs: list[str], env: dict[str, str]
) -> str:
    """All an operator (or a log shipper) can read after the runs, as one text."""
    texts = list(outputs)
    for table in ("ExportErrors", "export_runs", "stream_state"):
        texts += [repr(row) for row in sql(state_url, f"SELECT * FROM {table}")]
    csv_path = tmp_path / "errors.csv"
    for args in (
        ["errors", "--all", "--csv", str(csv_path)],
        ["errors", "--all", "--json"],
        ["errors", "--all"],
        ["status", "--json"],
        ["status"],
    ):
        done = run_cli(*args, "--config", str(config), env=env)
        assert done.returncode == 0, done.stderr
        texts += [done.stdout, done.stderr]
    texts.append(csv_path.read_text(encoding="utf-8"))
    return "\n".join(texts)


def assert_nothing_leaked(text: str, sandbox: SandboxHandle, *secrets: str) -> None:
    tokens = issued_tokens(sandbox)
    for secret in [*secrets, *tokens]:
        assert secret not in text, f"a secret leaked: {secret[:6]}..."
        # Also the part after the org id, in case a token is cut at its "!".
        assert secret.split("!")[-1] not in text


def test_rejected_records_and_debug_logs_keep_the_client_secret_and_tokens_hidden(
    tmp_path: Path, sandbox: SandboxHandle, state_url: str
) -> None:
    state = with_password(state_url)
    config = make_config(tmp_path, sandbox, state)
    env = job_env(CLIENT_SECRET)

    first = run_cli("job", "CRMExport", "--config", str(config), env=env)
    again = run_cli("job", "CRMExport_ExportError", "--config", str(config), env=env)

    assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
    assert "record_failed" in first.stderr  # the failures were logged, at debug level
    assert issued_tokens(sandbox)  # there were tokens to leak
    outputs = [first.stdout, first.stderr, again.stdout, again.stderr]
    text = everything_visible(tmp_path, config, state, outputs, env)
    assert "FIELD_CUSTOM_VALIDATION_EXCEPTION" in text  # the errors are there, not the secrets
    assert_nothing_leaked(text, sandbox, CLIENT_SECRET, DB_PASSWORD)


def test_a_client_secret_from_a_file_stays_hidden_when_it_is_wrong(
    tmp_path: Path, sandbox: SandboxHandle, state_url: str
) -> None:
    secret_file = tmp_path / "client_secret"
    secret_file.write_text(WRONG_SECRET + "\n", encoding="utf-8")
    config = make_config(
        tmp_path,
        sandbox,
        state_url,
        salesforce={"client_secret_env": f'client_secret_file = "{secret_file}"'},
    )
    env = job_env("unused")

    done = run_cli("job", "CRMExport", "--config", str(config), env=env)

    assert done.returncode == 1
    assert "invalid_client" in done.stdout
    text = everything_visible(tmp_path, config, state_url, [done.stdout, done.stderr], env)
    assert "invalid_client" in sql(state_url, "SELECT error FROM export_runs")[0]["error"]
    assert_nothing_leaked(text, sandbox, WRONG_SECRET, CLIENT_SECRET)


def test_an_outage_that_fails_the_run_leaks_nothing(
    tmp_path: Path, sandbox: SandboxHandle, state_url: str
) -> None:
    state = with_password(state_url)
    config = make_config(tmp_path, sandbox, state)
    env = job_env(CLIENT_SECRET)
    sandbox.set_faults({"outage_seconds": 120})

    done = run_cli("job", "CRMExport", "--config", str(config), env=env)

    sandbox.clear_faults()
    assert done.returncode == 1, done.stdout + done.stderr
    assert "CRMExport contacts: failed" in done.stdout
    text = everything_visible(tmp_path, config, state, [done.stdout, done.stderr], env)
    assert_nothing_leaked(text, sandbox, CLIENT_SECRET, DB_PASSWORD)


def test_a_session_id_stays_hidden_in_session_mode(
    tmp_path: Path, sandbox: SandboxHandle, state_url: str
) -> None:
    session_id = sandbox.access_token()
    config = make_config(
        tmp_path,
        sandbox,
        state_url,
        salesforce={
            "auth": 'auth = "session"',
            "client_id": "",
            "client_secret_env": 'session_id_env = "SF_SESSION_ID"',
            "login_url": f'instance_url = "{sandbox.base_url}"',
        },
    )
    env = job_env("unused", SF_SESSION_ID=session_id)

    done = run_cli("job", "CRMExport", "--config", str(config), env=env)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "CRMExport contacts: completed" in done.stdout
    text = everything_visible(tmp_path, config, state_url, [done.stdout, done.stderr], env)
    assert_nothing_leaked(text, sandbox, session_id, CLIENT_SECRET)


@pytest.mark.postgres
def test_a_password_in_a_database_urls_query_string_is_masked_everywhere(
    tmp_path: Path, sandbox: SandboxHandle, postgres_state_url: str
) -> None:
    # The state database, and a source in it, each reached with ?password= in the URL; a
    # second source and, later, the state database itself are unreachable.
    write_postgres_contacts(postgres_state_url, contact_rows(range(1, 21), reject_every=7).rows)
    state = with_query_password(postgres_state_url)
    org = Org(sandbox.base_url, sandbox.ca_path, CLIENT_ID, CLIENT_SECRET)
    config = write_config(
        tmp_path / "crm-export.toml",
        state_url=state,
        org=org,
        streams=[
            Stream("contacts", with_query_password(postgres_state_url)),
            Stream("offline", unreachable_postgres("crm")),
        ],
        pause_on_error=False,
        batch_size=10,
        log_level="debug",
    )
    env = job_env(CLIENT_SECRET)

    done = run_cli("job", "CRMExport", "--config", str(config), env=env)

    assert done.returncode == 1, done.stdout + done.stderr  # the offline stream failed
    assert "CRMExport contacts: completed" in done.stdout, done.stdout + done.stderr
    [offline] = sql(postgres_state_url, "SELECT error FROM export_runs WHERE stream = 'offline'")
    assert "the source database at postgresql+psycopg://crm@127.0.0.1:" in offline["error"]
    assert "password=***" in offline["error"] and "is unavailable" in offline["error"]
    outputs = [done.stdout, done.stderr]

    # Another runner holds the lock: the refusal describes the lock, URL and all.
    holder = advisory_runner_lock(state)
    assert holder.acquire()
    try:
        refused = run_cli("job", "CRMExport", "--config", str(config), env=env)
    finally:
        holder.release()
    assert refused.returncode == 1 and "another runner is active" in refused.stderr
    assert holder.description in refused.stderr
    outputs += [refused.stdout, refused.stderr, holder.description]

    # The state database is down: every command says which one, and only that.
    down = write_config(
        tmp_path / "down.toml",
        state_url=unreachable_postgres("state"),
        org=org,
        streams=[Stream("contacts", with_query_password(postgres_state_url))],
        log_level="debug",
    )
    for args in (["job", "CRMExport"], ["run"], ["status"], ["errors"], ["db", "current"]):
        failed = run_cli(*args, "--config", str(down), env=env)
        assert failed.returncode == 1, (args, failed.stdout + failed.stderr)
        assert "is unavailable" in failed.stderr and "password=***" in failed.stderr, args
        outputs += [failed.stdout, failed.stderr]

    text = everything_visible(tmp_path, config, postgres_state_url, outputs, env)
    assert "FIELD_CUSTOM_VALIDATION_EXCEPTION" in text  # the errors are there, not the secrets
    assert_nothing_leaked(text, sandbox, QUERY_PASSWORD, CLIENT_SECRET)
