"""Every wrong value in every key is said in crm-export's words, at that key.

pydantic checks the types; its own English ("Input should be a valid integer") must never
reach the user, and a value that may be a secret must never be quoted back.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from crm_export.config import CONFIG_KEYS, load_config
from crm_export.errors import ConfigError

PLANTED = "PLANTED-SECRET-VALUE"
ENV = {"SF_CLIENT_SECRET": "s3cret"}

# One value of each TOML type; the string is the planted secret.
VALUES = {
    "string": f'"{PLANTED}"',
    "integer": "7",
    "float": "2.5",
    "boolean": "true",
    "array": "[1, 2]",
    "table": "{ a = 1 }",
    "date/time": "1979-05-27T07:32:00Z",
}
# Keys whose value may be a secret (a pasted secret, a URL with a password).
MAY_BE_SECRET = {
    ("database", "url"),
    ("streams", "source_url"),
    *(("salesforce", k) for k in CONFIG_KEYS["salesforce"] if k.endswith("_env")),
}
PYDANTIC_ENGLISH = re.compile(r"Input should|Field required|Extra inputs|Value error|valid dict")

SALESFORCE = """[salesforce]
login_url = "https://acme.my.salesforce.com"
client_id = "3MVG9example"
client_secret_env = "SF_CLIENT_SECRET"
"""
STREAM = """[[streams]]
name = "contacts"
table = "contacts"
key = "id"
order_by = "updated_at"
sobject = "Contact"
external_id_field = "External_Id__c"
"""
FIELDS = '[streams.fields]\nLastName = "last_name"\n'


def config_with(section: str, key: str, value: str) -> str:
    """A valid config in which ``section.key`` is set to ``value`` (replacing its own)."""
    line = f"{key} = {value}\n"
    if section == "streams":
        stream = "".join(s + "\n" for s in STREAM.splitlines() if not s.startswith(f"{key} ="))
        fields = "" if key == "fields" else FIELDS
        return SALESFORCE + "\n" + stream + line + "\n" + fields
    if section == "salesforce":
        own = [s for s in SALESFORCE.splitlines()[1:] if not s.startswith(f"{key} =")]
        return "[salesforce]\n" + "\n".join(own) + "\n" + line + "\n" + STREAM + "\n" + FIELDS
    return f"[{section}]\n{line}\n{SALESFORCE}\n{STREAM}\n{FIELDS}"


CASES = [
    (section, key, kind)
    for section, keys in CONFIG_KEYS.items()
    for key in sorted(keys)
    for kind in VALUES
]


@pytest.mark.parametrize(
    ("section", "key", "kind"), CASES, ids=[f"{s}.{k}={t}" for s, k, t in CASES]
)
def test_a_wrong_value_is_said_in_our_words_at_its_key(
    tmp_path: Path, section: str, key: str, kind: str
) -> None:
    path = tmp_path / "crm-export.toml"
    path.write_text(config_with(section, key, VALUES[kind]), encoding="utf-8")
    try:
        load_config(path, ENV)
    except ConfigError as exc:
        problems = exc.problems
    else:
        return  # that value is fine for that key

    where = f"{section}.{key}"
    if section == "streams":  # a stream whose name is wrong is known by its index only
        where = f"streams[0].{key}" if key == "name" else f'streams[0] ("contacts").{key}'
    stem = key.removesuffix("_env").removesuffix("_file")
    for problem in problems:
        assert not PYDANTIC_ENGLISH.search(problem), problem
        # At the key itself, or (a secret, the stream's fields) at a key of the same name.
        assert problem.startswith((where, where.replace(key, stem))), (problem, problems)
        if (section, key) in MAY_BE_SECRET:
            assert PLANTED not in problem, problem


def test_values_of_every_type_are_tried() -> None:
    # The cases above rest on TOML giving these types; a typo in VALUES would weaken them.
    import tomllib

    parsed = {k: tomllib.loads(f"v = {v}")["v"] for k, v in VALUES.items()}
    assert [type(v) for v in parsed.values()] == [str, int, float, bool, list, dict, dt.datetime]
