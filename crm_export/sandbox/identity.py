"""Who a token belongs to: the Identity URL, the OpenID Connect UserInfo endpoint, and the
resources of an API version (which point a client such as jsforce to the Identity URL).

Shapes from Salesforce Help, "Identity URLs" and "OpenID Connect UserInfo Endpoint", and
the REST API's "Resources by Version" (see docs/sandbox.md).
"""

from __future__ import annotations

from typing import Any

from crm_export.sandbox.org import OrgModel


def identity_url(base_url: str, org: OrgModel, user_id: str) -> str:
    return f"{base_url}/id/{org.org_id}/{user_id}"


def _user(org: OrgModel, user_id: str) -> dict[str, Any]:
    return next((u for u in org.system_records("User") if u["Id"] == user_id), {})


def _urls(base_url: str, org: OrgModel, user_id: str) -> dict[str, str]:
    # Salesforce leaves "{version}" in these for the client to fill in.
    rest = f"{base_url}/services/data/v{{version}}/"
    return {
        "enterprise": f"{base_url}/services/Soap/c/{{version}}/{org.org_id}",
        "metadata": f"{base_url}/services/Soap/m/{{version}}/{org.org_id}",
        "partner": f"{base_url}/services/Soap/u/{{version}}/{org.org_id}",
        "rest": rest,
        "sobjects": f"{rest}sobjects/",
        "search": f"{rest}search/",
        "query": f"{rest}query/",
        "recent": f"{rest}recent/",
        "tooling_rest": f"{rest}tooling/",
        "profile": f"{base_url}/{user_id}",
        "custom_domain": base_url,
    }


def identity(base_url: str, org: OrgModel, user_id: str) -> dict[str, Any]:
    """``GET /id/{orgId}/{userId}``."""
    user = _user(org, user_id)
    return {
        "id": identity_url(base_url, org, user_id),
        "asserted_user": True,
        "user_id": user_id,
        "organization_id": org.org_id,
        "username": user.get("Username"),
        "nick_name": user.get("Alias"),
        "display_name": user.get("Name"),
        "email": user.get("Email"),
        "email_verified": True,
        "first_name": user.get("FirstName"),
        "last_name": user.get("LastName"),
        "timezone": user.get("TimeZoneSidKey"),
        "photos": {},
        "urls": _urls(base_url, org, user_id),
        "active": bool(user.get("IsActive")),
        "user_type": "STANDARD",
        "language": user.get("LanguageLocaleKey"),
        "locale": user.get("LanguageLocaleKey"),
        "utcOffset": 0,
        "last_modified_date": user.get("LastModifiedDate"),
        "is_app_installed": True,
    }


def userinfo(base_url: str, org: OrgModel, user_id: str) -> dict[str, Any]:
    """``GET /services/oauth2/userinfo``: the OpenID Connect claims."""
    user = _user(org, user_id)
    return {
        "sub": identity_url(base_url, org, user_id),
        "user_id": user_id,
        "organization_id": org.org_id,
        "preferred_username": user.get("Username"),
        "nickname": user.get("Alias"),
        "name": user.get("Name"),
        "email": user.get("Email"),
        "email_verified": True,
        "given_name": user.get("FirstName"),
        "family_name": user.get("LastName"),
        "zoneinfo": user.get("TimeZoneSidKey"),
        "photos": {},
        "profile": f"{base_url}/{user_id}",
        "picture": None,
        "address": {},
        "is_salesforce_integration_user": False,
        "urls": _urls(base_url, org, user_id),
        "active": bool(user.get("IsActive")),
        "user_type": "STANDARD",
        "language": user.get("LanguageLocaleKey"),
        "locale": user.get("LanguageLocaleKey"),
        "utcOffset": 0,
        "updated_at": user.get("LastModifiedDate"),
        "is_app_installed": True,
    }


def version_resources(base_url: str, org: OrgModel, user_id: str, version: str) -> dict[str, str]:
    """``GET /services/data/vXX.X``: the resources the sandbox serves for that version."""
    base = f"/services/data/v{version}"
    return {
        "sobjects": f"{base}/sobjects",
        "query": f"{base}/query",
        "queryAll": f"{base}/queryAll",
        "limits": f"{base}/limits",
        "composite": f"{base}/composite",
        "jobs": f"{base}/jobs",
        "identity": identity_url(base_url, org, user_id),
    }
