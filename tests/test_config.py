"""The config file loader: what a user sees when the file is right, and when it is wrong."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from crm_export.config import (
    CONFIG_KEYS,
    ExportConfig,
    LoggingConfig,
    RetryConfig,
    SandboxConfig,
    ScheduleConfig,
    load_config,
)
from crm_export.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.toml"
BAD_DIR = Path(__file__).parent / "configs" / "bad"
BAD_CONFIGS = sorted(BAD_DIR.glob("*.toml"))

# Planted in the environment, in files and in bad configs: it must never be printed.
PLANTED = "PLANTED-SECRET-VALUE"
ENV = {"SF_CLIENT_SECRET": PLANTED}

MINIMAL = """
[salesforce]
login_url = "https://acme.my.salesforce.com"
client_id = "3MVG9example"
client_secret_env = "SF_CLIENT_SECRET"

[[streams]]
name = "contacts"
table = "contacts"
key = "id"
order_by = "updated_at"
sobject = "Contact"
external_id_field = "External_Id__c"

[streams.fields]
LastName = "last_name"
"""

FAKE_PEM_KEY = (
    "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----"
)


def write(directory: Path, text: str, name: str = "crm-export.toml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, ENV if environ is None else environ)
    return caught.value.problems


# The corpus of bad configs -------------------------------------------------------------------


def test_the_corpus_covers_at_least_twenty_mistakes() -> None:
    assert len(BAD_CONFIGS) >= 20


@pytest.mark.parametrize("path", BAD_CONFIGS, ids=[p.stem for p in BAD_CONFIGS])
def test_bad_config_names_the_key_and_nothing_else_is_reported(path: Path) -> None:
    expected = [
        line.removeprefix("# expect: ")
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.startswith("# expect: ")
    ]
    assert expected, f"{path.name} has no '# expect:' line"

    with pytest.raises(ConfigError) as caught:
        load_config(path, ENV)
    error = caught.value

    assert error.path == str(path)
    for text in expected:
        assert any(text in problem for problem in error.problems), (text, error.problems)
    # Each bad config has exactly the mistake it is about: nothing else is reported.
    unexpected = [p for p in error.problems if not any(text in p for text in expected)]
    assert not unexpected
    assert PLANTED not in str(error)


# Good configs --------------------------------------------------------------------------------


def test_the_shipped_example_loads() -> None:
    salesforce = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))["salesforce"]
    environ = {v: f"value of {v}" for k, v in salesforce.items() if k.endswith("_env")}

    config = load_config(EXAMPLE, environ)

    assert config.path == EXAMPLE
    assert config.database.url == f"sqlite:///{ROOT}/crm_export.db"
    assert config.salesforce.client_secret is not None
    assert config.salesforce.client_secret.reveal() == "value of SF_CLIENT_SECRET"
    contacts, accounts = config.streams
    assert (contacts.name, contacts.table, contacts.sobject) == ("contacts", "contacts", "Contact")
    assert contacts.fields == (
        ("FirstName", "first_name"),
        ("LastName", "last_name"),
        ("Email", "email"),
    )
    [(field, account)] = contacts.lookups.items()
    assert (field, account.sobject, account.external_id_field, account.column) == (
        "AccountId",
        "Account",
        "External_Id__c",
        "account_id",
    )
    assert contacts.pause_on_error is True  # from [export]
    assert accounts.pause_on_error is False  # the stream's own override
    assert accounts.table is None
    assert accounts.query is not None and accounts.query.startswith("SELECT a.id")
    assert accounts.source_url == config.database.url


def test_the_example_documents_every_key() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    for section, keys in CONFIG_KEYS.items():
        header = f"[[{section}]]" if section == "streams" else f"[{section}]"
        assert header in text
        for key in keys:
            # Set, shown commented out with its default, or (fields) written as a table.
            pattern = rf"^(#? ?{key} = |\[{section}\.{key}\])"
            assert re.search(pattern, text, re.MULTILINE), f"{section}.{key}"


def test_a_minimal_config_gets_the_documented_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL), ENV)

    assert config.database.url == f"sqlite:///{tmp_path}/crm_export.db"
    assert config.export == ExportConfig()
    assert config.export.pause_on_error is True
    assert config.export.batch_size == 200
    assert config.retry == RetryConfig()
    assert config.schedule == ScheduleConfig()
    assert config.schedule.reexport_cron == "0 2 * * *"
    assert config.logging == LoggingConfig()
    assert config.sandbox == SandboxConfig()
    sf = config.salesforce
    assert (sf.auth, sf.api_version, sf.timeout_seconds, sf.max_reauth) == (
        "client_credentials",
        "64.0",
        30.0,
        2,
    )
    (stream,) = config.streams
    assert stream.pause_on_error is True
    assert stream.source_url == config.database.url
    assert stream.fields == (("LastName", "last_name"),)


def test_each_auth_mode_loads_with_its_own_credentials(tmp_path: Path) -> None:
    write(tmp_path, FAKE_PEM_KEY + "\n", "jwt.key")
    base = MINIMAL.split("[[streams]]")[1]
    modes = {
        "password": 'auth = "password"\nclient_id = "c"\nclient_secret_env = "SF_CLIENT_SECRET"\n'
        'username = "me@acme.com"\npassword_env = "SF_PASSWORD"',
        "jwt": 'auth = "jwt"\nclient_id = "c"\nusername = "me@acme.com"\n'
        'private_key_file = "jwt.key"',
        "session": 'auth = "session"\nsession_id_env = "SF_SESSION"\n'
        'instance_url = "https://acme.my.salesforce.com/"',
    }
    environ = {**ENV, "SF_PASSWORD": "pw", "SF_SESSION": "00D!session"}
    loaded = {
        mode: load_config(
            write(tmp_path, f"[salesforce]\n{keys}\n\n[[streams]]{base}", f"{mode}.toml"),
            environ,
        ).salesforce
        for mode, keys in modes.items()
    }

    assert loaded["password"].password is not None
    assert loaded["password"].password.reveal() == "pw"
    assert loaded["jwt"].private_key is not None
    assert loaded["jwt"].private_key.reveal() == FAKE_PEM_KEY  # trailing newline dropped
    assert loaded["session"].session_id is not None
    assert loaded["session"].session_id.reveal() == "00D!session"
    assert loaded["session"].instance_url == "https://acme.my.salesforce.com"


def test_a_jwt_key_from_an_env_file_with_escaped_newlines_is_usable(tmp_path: Path) -> None:
    # docker --env-file and CI variables hold one line, so the PEM comes with literal \n.
    text = MINIMAL.replace(
        'client_secret_env = "SF_CLIENT_SECRET"',
        'auth = "jwt"\nusername = "me@acme.com"\nprivate_key_env = "SF_KEY"',
    )
    environ = {"SF_KEY": FAKE_PEM_KEY.replace("\n", "\\n")}
    key = load_config(write(tmp_path, text), environ).salesforce.private_key

    assert key is not None
    assert key.reveal() == FAKE_PEM_KEY
    assert key.source == "env SF_KEY"


def test_sandbox_mode_needs_no_salesforce_credentials(tmp_path: Path) -> None:
    text = "[sandbox]\nenabled = true\n\n[salesforce]\n" + MINIMAL.split("[salesforce]")[1]
    config = load_config(write(tmp_path, text), environ={})  # SF_CLIENT_SECRET not set

    assert config.sandbox.enabled is True
    assert config.salesforce.client_secret is None


def test_sandbox_mode_still_checks_types(tmp_path: Path) -> None:
    text = '[sandbox]\nenabled = true\n\n[salesforce]\ntimeout_seconds = "30"\n' + (
        "[[streams]]" + MINIMAL.split("[[streams]]")[1]
    )
    assert problems_of(write(tmp_path, text), {}) == [
        "salesforce.timeout_seconds: must be a number, got a string"
    ]


def test_a_query_keeps_semicolons_inside_strings_and_loses_the_trailing_one(
    tmp_path: Path,
) -> None:
    query = "WITH c AS (SELECT * FROM contacts WHERE note <> 'a;b') SELECT * FROM c; -- done"
    text = MINIMAL.replace('table = "contacts"', f'query = "{query}"')
    (stream,) = load_config(write(tmp_path, text), ENV).streams

    assert stream.query == "WITH c AS (SELECT * FROM contacts WHERE note <> 'a;b') SELECT * FROM c"


def test_postgresql_with_psycopg_is_accepted_and_other_drivers_are_not(tmp_path: Path) -> None:
    good = '[database]\nurl = "postgresql+psycopg://crm@db.internal/crm"\n' + MINIMAL
    assert load_config(write(tmp_path, good), ENV).database.url == (
        "postgresql+psycopg://crm@db.internal/crm"
    )
    bad = good.replace("+psycopg", "+psycopg2")
    assert problems_of(write(tmp_path, bad)) == [
        "database.url: unsupported driver 'psycopg2': write postgresql+psycopg://..."
    ]


def test_a_sqlite_file_path_may_hold_a_space_but_a_url_may_not_end_with_one(
    tmp_path: Path,
) -> None:
    url = "sqlite:////var/lib/crm export/state.db"
    good = f'[database]\nurl = "{url}"\n' + MINIMAL
    assert load_config(write(tmp_path, good), ENV).database.url == url
    assert problems_of(write(tmp_path, good.replace('state.db"', 'state.db "'))) == [
        "database.url: must not contain whitespace or control characters: a space at the end"
    ]


# Several problems at once --------------------------------------------------------------------


def test_every_problem_in_the_file_is_reported_at_once(tmp_path: Path) -> None:
    text = (
        "[export]\nbatch_size = 500\npause_on_eror = false\n\n"
        '[schedule]\ntimezone = "Mars/Olympus"\n'
        + MINIMAL.replace('key = "id"', 'key = "id; --"').replace(
            '"SF_CLIENT_SECRET"', '"SF_UNSET"'
        )
    )
    path = write(tmp_path, text)

    with pytest.raises(ConfigError) as caught:
        load_config(path, ENV)

    message = str(caught.value)
    assert message.startswith(f"invalid config {path}:\n")
    for key in (
        "salesforce.client_secret_env: environment variable SF_UNSET is not set",
        "export.batch_size: must be between 1 and 200, got 500",
        "export.pause_on_eror: unknown key; did you mean 'pause_on_error'?",
        "schedule.timezone: 'Mars/Olympus' is not an IANA time zone",
        'streams[0] ("contacts").key: must be a plain column name',
    ):
        assert f"\n  - {key}" in message
    assert len(caught.value.problems) == 5


# Secrets -------------------------------------------------------------------------------------


def test_secret_values_never_show_in_the_loaded_config(tmp_path: Path) -> None:
    write(tmp_path, f"{PLANTED}-from-file\n", "client_secret")
    text = MINIMAL.replace(
        'client_secret_env = "SF_CLIENT_SECRET"', 'client_secret_file = "client_secret"'
    )
    config = load_config(write(tmp_path, text), ENV)

    secret = config.salesforce.client_secret
    assert secret is not None
    assert secret.reveal() == f"{PLANTED}-from-file"  # the trailing newline is not the secret
    assert secret.source == f"file {tmp_path / 'client_secret'}"
    for shown in (repr(config), str(config), f"{config.salesforce}", repr(secret)):
        assert PLANTED not in shown


def test_secret_values_never_show_in_errors(tmp_path: Path) -> None:
    # A JWT key file that holds something else, next to another mistake.
    write(tmp_path, PLANTED, "not-a-key.pem")
    text = MINIMAL.replace(
        'client_secret_env = "SF_CLIENT_SECRET"',
        'auth = "jwt"\nusername = "me@acme.com"\nprivate_key_file = "not-a-key.pem"\n'
        "timeout_seconds = 0",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), ENV)

    assert "salesforce.private_key_file: holds no PEM text for the private key" in str(caught.value)
    assert "salesforce.timeout_seconds: must be greater than 0, got 0" in str(caught.value)
    assert PLANTED not in str(caught.value)
    assert PLANTED not in repr(caught.value)


def test_a_database_password_is_masked_in_the_config_repr(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://crm:{PLANTED}@db.internal/crm"
    text = f'[database]\nurl = "{url}"\n' + MINIMAL.replace(
        'table = "contacts"', f'table = "contacts"\nsource_url = "{url}?password={PLANTED}"'
    )
    config = load_config(write(tmp_path, text), ENV)

    assert config.database.url == url  # still there to connect with
    assert PLANTED not in repr(config)
    assert "postgresql+psycopg://crm:***@db.internal/crm" in repr(config)


# Loading without the secrets (status, errors, db) --------------------------------------------

# The mistakes that lie in the secret's value, not in the file: without secrets they are not
# looked at, because the variable or file is not read at all.
SECRET_VALUE_MISTAKES = ("secret_env_not_set", "secret_file_missing", "jwt_certificate_not_key")
# The mistakes in the secret keys themselves: reported with or without secrets.
SECRET_KEY_MISTAKES = (
    "secret_value_in_env_key",
    "secret_env_and_file",
    "inline_secret",
    "missing_credential_for_mode",
    "credential_unused_by_mode",
)


@pytest.mark.parametrize("mistake", SECRET_VALUE_MISTAKES)
def test_without_secrets_the_secret_is_neither_required_nor_read(mistake: str) -> None:
    path = BAD_DIR / f"{mistake}.toml"

    config = load_config(path, {}, secrets=False)

    sf = config.salesforce
    assert (sf.client_secret, sf.password, sf.private_key, sf.session_id) == (None,) * 4
    with pytest.raises(ConfigError):  # the same file, when the command needs the secret
        load_config(path, {})


@pytest.mark.parametrize("mistake", SECRET_KEY_MISTAKES)
def test_without_secrets_the_secret_keys_are_still_checked(mistake: str) -> None:
    path = BAD_DIR / f"{mistake}.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(path, ENV, secrets=False)
    for text in _expected_lines(path):
        assert any(text in problem for problem in caught.value.problems), text
    assert PLANTED not in str(caught.value)


def test_without_secrets_a_secret_of_another_auth_mode_is_still_an_error(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        'client_secret_env = "SF_CLIENT_SECRET"',
        'client_secret_env = "SF_CLIENT_SECRET"\nsession_id_file = "/run/secrets/sf_session"',
    )
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), {}, secrets=False)
    assert caught.value.problems == [
        'salesforce.session_id_file: not used with auth = "client_credentials"; remove it, '
        'or set auth = "session" if that is the flow you meant'
    ]


# Where the file is, and what paths in it mean ------------------------------------------------


def test_crm_export_config_names_the_file_when_no_path_is_given(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    config = load_config(None, {**ENV, "CRM_EXPORT_CONFIG": str(path)})
    assert config.path == path


def test_an_explicit_path_wins_over_crm_export_config(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    config = load_config(path, {**ENV, "CRM_EXPORT_CONFIG": str(tmp_path / "other.toml")})
    assert config.path == path


def test_no_path_and_no_crm_export_config_says_how_to_give_one() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, ENV)
    assert "pass --config PATH or set CRM_EXPORT_CONFIG" in str(caught.value)


def test_a_missing_file_is_a_clear_problem(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"CRM_EXPORT_CONFIG": str(missing)})
    assert caught.value.path == str(missing)
    assert caught.value.problems[0].startswith("file not found (named by CRM_EXPORT_CONFIG)")
    # The hint names what an installed copy has, not a file only the repository holds.
    assert "crm-export config example > crm-export.toml" in caught.value.problems[0]


def test_relative_paths_resolve_next_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "etc dir"  # a space, to prove the SQLite URL survives it
    write(
        conf_dir / "certs",
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        "ca.pem",
    )
    write(conf_dir, "secret\n", "sf_secret")
    write(conf_dir, "[org]\n", "org.toml")
    text = (
        '[database]\nurl = "sqlite:///state/crm.db"\n\n'
        '[sandbox]\norg_file = "org.toml"\ndata_file = "records.db"\n\n'
        + MINIMAL.replace(
            'client_secret_env = "SF_CLIENT_SECRET"',
            'client_secret_file = "sf_secret"\nca_bundle = "certs/ca.pem"',
        ).replace('table = "contacts"', 'table = "contacts"\nsource_url = "sqlite:///../app.db"')
    )
    path = write(conf_dir, text)
    monkeypatch.chdir(tmp_path)  # not the config's directory

    config = load_config(path.relative_to(tmp_path), {})

    assert config.path == path
    assert make_url(config.database.url).database == str(conf_dir / "state" / "crm.db")
    assert make_url(config.streams[0].source_url).database == str(conf_dir / ".." / "app.db")
    assert config.salesforce.ca_bundle == conf_dir / "certs" / "ca.pem"
    assert config.salesforce.client_secret is not None
    assert config.salesforce.client_secret.reveal() == "secret"
    assert config.sandbox.org_file == conf_dir / "org.toml"
    assert config.sandbox.data_file == conf_dir / "records.db"


@pytest.mark.parametrize(
    "url", ["sqlite:////var/lib/crm-export/state.db", "sqlite://", "sqlite:///:memory:"]
)
def test_absolute_and_in_memory_sqlite_urls_are_kept(tmp_path: Path, url: str) -> None:
    text = f'[database]\nurl = "{url}"\n' + MINIMAL
    assert load_config(write(tmp_path, text), ENV).database.url == url


def test_loading_writes_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, '[database]\nurl = "sqlite:///state.db"\n' + MINIMAL)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}

    load_config(path, ENV)

    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before
    assert not (tmp_path / "state.db").exists()


# The corpus through the real command line ----------------------------------------------------

# The mistakes issue 5 lists by name; `crm-export run` is checked on these (the daemon loads
# the config through its own path), `crm-export job` on the whole corpus.
ISSUE_LIST = (
    "syntax_error",
    "unknown_key_in_section",
    "string_for_number",
    "stream_missing_key",
    "unknown_auth_mode",
    "secret_env_not_set",
    "batch_size_zero",
    "batch_size_500",
    "bad_cron",
    "key_with_quote",
    "table_with_semicolon",
)


def _expected_lines(path: Path) -> list[str]:
    return [
        line.removeprefix("# expect: ")
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.startswith("# expect: ")
    ]


def _run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRM_EXPORT", "SF_"))}
    env["SF_CLIENT_SECRET"] = PLANTED
    return subprocess.run(
        [sys.executable, "-m", "crm_export", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _assert_each_exits_2_naming_its_keys(commands: list[list[str]], cwd: Path) -> None:
    """Run each command (its last argument is the config) and check crm-export's answer."""
    # Two at a time: each is a short process, and the machine may be busy.
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = list(pool.map(lambda args: _run_cli(args, cwd), commands))
    for args, result in zip(commands, done, strict=True):
        path = Path(args[-1])
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert result.stderr.startswith(f"crm-export: invalid config {path}:\n"), result.stderr
        for text in _expected_lines(path):
            assert text in result.stderr, (args, text, result.stderr)
        assert result.stdout == ""
        assert PLANTED not in result.stdout + result.stderr


def test_every_bad_config_exits_2_through_the_cli_and_creates_no_state_database(
    tmp_path: Path,
) -> None:
    # A copy of the corpus, so that the default state database (crm_export.db next to the
    # file) would show up here if anything created it; the relative paths inside still work.
    shutil.copytree(Path(__file__).parent / "configs", tmp_path / "configs")
    bad = tmp_path / "configs" / "bad"
    before = sorted(p.name for p in tmp_path.rglob("*"))
    commands = [["job", "CRMExport", "--config", str(p)] for p in sorted(bad.glob("*.toml"))]
    commands += [["run", "--config", str(bad / f"{name}.toml")] for name in ISSUE_LIST]

    _assert_each_exits_2_naming_its_keys(commands, tmp_path)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_a_bad_config_leaves_a_postgresql_state_database_without_tables(
    tmp_path: Path, postgres_server: Any, request: pytest.FixtureRequest
) -> None:
    name = f"crm_export_badcfg_{os.getpid()}"
    url = postgres_server.create(name)
    request.addfinalizer(lambda: postgres_server.drop(name))
    for mistake in ("batch_size_zero", "unknown_auth_mode", "bad_cron", "key_with_quote"):
        text = (BAD_DIR / f"{mistake}.toml").read_text(encoding="utf-8")
        path = write(tmp_path, f'[database]\nurl = "{url}"\n\n{text}', f"{mistake}.toml")
        for args in (["job", "CRMExport"], ["run"]):
            result = _run_cli([*args, "--config", str(path)], tmp_path)
            assert result.returncode == 2, result.stderr
            for line in _expected_lines(path):
                assert line in result.stderr
    engine = sa.create_engine(url)
    try:
        assert sa.inspect(engine).get_table_names() == []
    finally:
        engine.dispose()


# Sources that do not exist ------------------------------------------------------------------

BAD_SOURCE_DIR = Path(__file__).parent / "configs" / "bad_source"


def test_a_missing_source_table_column_or_file_exits_2_naming_the_key_and_touches_nothing(
    tmp_path: Path,
) -> None:
    corpus = tmp_path / "bad_source"
    shutil.copytree(BAD_SOURCE_DIR, corpus)
    source = corpus / "source.db"
    with sqlite3.connect(source) as db:
        db.execute(
            "CREATE TABLE contacts (id INTEGER PRIMARY KEY, first_name TEXT, last_name TEXT,"
            " email TEXT, updated_at TEXT)"
        )
        db.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT)")
        # For the lookback checks, which look at an order value: a version number and a
        # timestamp as SQLite keeps it (text).
        db.execute(
            "CREATE TABLE members (id INTEGER PRIMARY KEY, name TEXT, version INTEGER, "
            "changed_at TEXT)"
        )
        db.execute("INSERT INTO members VALUES (1, 'Smith', 7, '2026-01-01 10:00:00')")
    db.close()
    before = {p.name: p.stat().st_mtime_ns for p in corpus.iterdir()}
    configs = sorted(corpus.glob("*.toml"))
    assert len(configs) >= 7

    commands = [
        [*cmd, "--config", str(p)] for p in configs for cmd in (["job", "CRMExport"], ["run"])
    ]
    _assert_each_exits_2_naming_its_keys(commands, tmp_path)
    # No state database, no source file created, the source file itself unchanged.
    assert {p.name: p.stat().st_mtime_ns for p in corpus.iterdir()} == before
