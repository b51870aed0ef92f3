"""[metrics] listen: off by default, a host and a port when set (the bad values are in the
tests/configs/bad corpus)."""

from __future__ import annotations

from pathlib import Path

import pytest

from crm_export.config import load_config

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
ENV = {"SF_CLIENT_SECRET": "a-client-secret"}


def test_nothing_listens_unless_configured(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text(MINIMAL)
    assert load_config(tmp_path / "c.toml", ENV).metrics.address is None


@pytest.mark.parametrize(
    ("listen", "address"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("0.0.0.0:9464", ("0.0.0.0", 9464)),
        ("[::1]:9464", ("::1", 9464)),
        ("metrics.internal:9100", ("metrics.internal", 9100)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),  # any free port (the daemon logs which)
    ],
)
def test_a_listen_address_is_a_host_and_a_port(
    tmp_path: Path, listen: str, address: tuple[str, int]
) -> None:
    (tmp_path / "c.toml").write_text(MINIMAL + f'\n[metrics]\nlisten = "{listen}"\n')
    assert load_config(tmp_path / "c.toml", ENV).metrics.address == address
