"""A client of a running sandbox's admin API (``/_sandbox``), over verified HTTPS."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests

from crm_export.sandbox import STATE_FILE_NAME, default_state_dir

__all__ = ["STATE_FILE_NAME", "AdminClient", "SandboxAdminError", "default_state_dir"]


def verified_session(ca_path: str) -> requests.Session:
    """A session that trusts only the sandbox CA.

    ``trust_env`` is off because REQUESTS_CA_BUNDLE would silently replace ``verify``.
    """
    session = requests.Session()
    session.verify = ca_path
    session.trust_env = False
    return session


class SandboxAdminError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        problems = body.get("problems") if isinstance(body, dict) else None
        detail = body.get("error") if isinstance(body, dict) else body
        lines = [f"sandbox admin API answered {status}: {detail}"]
        lines += [f"  - {p}" for p in problems or []]
        super().__init__("\n".join(lines))


class AdminClient:
    def __init__(self, base_url: str, ca_path: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.ca_path = ca_path
        self.timeout = timeout

    @classmethod
    def from_state_dir(cls, state_dir: Path | None = None) -> AdminClient:
        """The sandbox that ``crm-export sandbox serve`` is running with this state dir."""
        path = (state_dir or default_state_dir()) / STATE_FILE_NAME
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"no running sandbox found ({path} is missing): start one with "
                "`crm-export sandbox serve`, or pass --url and --ca"
            ) from exc
        return cls(info["base_url"], info["ca_path"])

    def request(self, method: str, path: str, body: Any = None) -> Any:
        with verified_session(self.ca_path) as session:
            response = session.request(
                method,
                f"{self.base_url}/_sandbox{path}",
                data=json.dumps(body) if body is not None else None,
                headers={"Content-Type": "application/json"},
                timeout=self.timeout,
            )
        try:
            data = response.json()
        except ValueError:
            data = response.text
        if response.status_code >= 300:
            raise SandboxAdminError(response.status_code, data)
        return data

    def info(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/info")
        return result

    def records(self, sobject: str | None = None, limit: int | None = None) -> Any:
        """The stored records of ``sobject``, or ``{sobject: [records]}`` for all; at most
        ``limit`` of each object, in the order they were created."""
        query = "" if limit is None else f"?limit={limit}"
        if sobject is None:
            return self.request("GET", f"/records{query}")
        return self.request("GET", f"/records/{sobject}{query}")

    def insert_records(self, sobject: str, records: list[Mapping[str, Any]]) -> list[str]:
        """Store records as given, bypassing every rule; returns their ids."""
        result = self.request("POST", f"/records/{sobject}", list(records))
        return list(result["ids"])

    def counters(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/counters")
        return result

    def writes(self, since: int = 0) -> list[dict[str, Any]]:
        return list(self.request("GET", f"/writes?since={since}"))

    def rejections(self, since: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """Rejected records after ``since``; with ``limit``, only the newest ones."""
        query = "" if limit is None else f"&limit={limit}"
        return list(self.request("GET", f"/rejections?since={since}{query}"))

    def jobs(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/jobs"))

    def faults(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/faults")
        return result

    def set_faults(
        self, changes: Mapping[str, Any] | None = None, **options: Any
    ) -> dict[str, Any]:
        """Merge fault options into the current ones; ``None`` resets an option."""
        result: dict[str, Any] = self.request("PUT", "/faults", {**(changes or {}), **options})
        return result

    def clear_faults(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("DELETE", "/faults")
        return result

    def org(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/org")
        return result

    def set_org(
        self,
        org: str | Path | Mapping[str, Any] | None = None,
        *,
        patch: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Replace the org model with ``org``, or merge-patch it with ``patch``.

        ``patch`` follows JSON merge patch: e.g. ``{"objects": {"Contact": {"validation_rules":
        {"Email_Not_Example_Invalid": {"active": False}}}}}`` turns one rule off.
        """
        from crm_export.sandbox.org import load_org_source

        if (org is None) == (patch is None):
            raise ValueError("pass exactly one of org or patch")
        if patch is not None:
            result: dict[str, Any] = self.request("PATCH", "/org", dict(patch))
            return result
        replaced: dict[str, Any] = self.request("PUT", "/org", load_org_source(org))
        return replaced

    def reset(self) -> None:
        self.request("POST", "/reset")
