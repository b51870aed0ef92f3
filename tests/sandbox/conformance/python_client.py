"""Runs the conformance scenario through unmodified simple-salesforce 1.12.

The same steps as run.mjs (jsforce), normalised to the same shapes, so that one list of
expectations (scenario.json) checks both clients.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any

import requests
from simple_salesforce.exceptions import SalesforceError

from tests.sandbox.sandbox_helpers import Salesforce

VERSION = "64.0"


def _strip(record: dict[str, Any]) -> dict[str, Any]:
    return {
        key: _strip(value) if isinstance(value, dict) else value
        for key, value in record.items()
        if key != "attributes"
    }


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


class SimpleSalesforceClient:
    def __init__(self, base_url: str, token: str, session: requests.Session) -> None:
        self.base_url = base_url
        self.token = token
        self.session = session
        self.sf: Salesforce | None = None

    @property
    def _sf(self) -> Salesforce:
        assert self.sf is not None, "login first"
        return self.sf

    def login(self) -> dict[str, Any]:
        # Access-token login: instance URL + token, no login call.
        self.sf = Salesforce(
            instance_url=self.base_url,
            session_id=self.token,
            session=self.session,
            version=VERSION,
        )
        return {"connected": bool(self.sf.session_id)}

    def identity(self) -> dict[str, Any]:
        # simple-salesforce has no identity(); its oauth2() reaches the UserInfo endpoint.
        info = self._sf.oauth2("userinfo")
        assert info is not None
        return {
            "username": info["preferred_username"],
            "organization_id": info["organization_id"],
            "user_id": info["user_id"],
        }

    def create(self, sobject: str, record: dict[str, Any]) -> dict[str, Any]:
        result = getattr(self._sf, sobject).create(record)
        return {
            "success": result["success"],
            "errors": result["errors"],
            "id_prefix": result["id"][:3],
        }

    def query(self, soql: str) -> dict[str, Any]:
        result = self._sf.query(soql)
        return {
            "totalSize": result["totalSize"],
            "done": result["done"],
            "records": [_strip(dict(r)) for r in result["records"]],
        }

    def describe(self, sobject: str) -> dict[str, Any]:
        described = getattr(self._sf, sobject).describe()
        return {
            "name": described["name"],
            "keyPrefix": described["keyPrefix"],
            "fields": {f["name"]: f for f in described["fields"]},
        }

    def upsert_collection(
        self, sobject: str, external_id: str, all_or_none: bool, records: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        # simple-salesforce has no Collections call; restful() sends it (its issue #235).
        typed = [{"attributes": {"type": sobject}, **r} for r in records]
        results = self._sf.restful(
            f"composite/sobjects/{sobject}/{external_id}",
            method="PATCH",
            json={"allOrNone": all_or_none, "records": typed},
        )
        assert results is not None
        return [
            {
                "success": r["success"],
                **({"created": r["created"]} if "created" in r else {}),
                "errors": r["errors"],
            }
            for r in results
        ]

    def limits(self) -> dict[str, Any]:
        return dict(self._sf.limits())

    def bulk_upsert(
        self, sobject: str, external_id: str, records: list[dict[str, Any]]
    ) -> dict[str, Any]:
        handler = getattr(self._sf.bulk2, sobject)
        [job] = handler.upsert(records=records, external_id_field=external_id, wait=0)
        return {
            "numberRecordsProcessed": job["numberRecordsProcessed"],
            "numberRecordsFailed": job["numberRecordsFailed"],
            "successful": _rows(handler.get_successful_records(job["job_id"])),
            "failed": _rows(handler.get_failed_records(job["job_id"])),
        }


def run(client: SimpleSalesforceClient, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for step in steps:
        op: Callable[..., Any] = getattr(client, step["op"])
        try:
            out.append({"name": step["name"], "result": op(**step.get("args", {}))})
        except SalesforceError as exc:
            out.append(
                {"name": step["name"], "error": {"status": exc.status, "content": exc.content}}
            )
    return out
