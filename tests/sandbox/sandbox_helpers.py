"""Helpers shared by the sandbox tests (``from tests.sandbox.sandbox_helpers import ...``)."""

from __future__ import annotations

from typing import Any

from simple_salesforce import Salesforce

VERSION = "64.0"


def contact(ext_id: str, **fields: Any) -> dict[str, Any]:
    return {"attributes": {"type": "Contact"}, "External_Id__c": ext_id, **fields}


def upsert_contacts(
    sf: Salesforce, records: list[dict[str, Any]], all_or_none: bool = False
) -> Any:
    return sf.restful(
        "composite/sobjects/Contact/External_Id__c",
        method="PATCH",
        json={"allOrNone": all_or_none, "records": records},
    )
