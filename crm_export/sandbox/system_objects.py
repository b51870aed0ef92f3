"""The objects every org has: Organization and User.

Their records come from the org file's [org] and [users] tables, not from the record store;
the integration user can read them but not change them. Shaped like Salesforce's own
objects (a subset of their fields).
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crm_export.sandbox.org import OrgModel, SObjectDef, User


_SYSTEM_STAMPS = {
    "CreatedDate": "2026-01-01T00:00:00.000+0000",
    "LastModifiedDate": "2026-01-01T00:00:00.000+0000",
    "SystemModstamp": "2026-01-01T00:00:00.000+0000",
}


def _user_record(user: User) -> dict[str, Any]:
    local = user.username.partition("@")[0]
    last_name = re.sub(r"[^0-9A-Za-z]+", " ", local).strip().title() or user.username
    return {
        "Id": user.user_id,
        "Username": user.username,
        "LastName": last_name,
        "FirstName": None,
        "Name": last_name,
        "Alias": local[:8],
        "Email": user.username,
        "IsActive": True,
        "UserType": "Standard",
        "TimeZoneSidKey": "GMT",
        "LanguageLocaleKey": "en_US",
        **_SYSTEM_STAMPS,
    }


SYSTEM_OBJECTS: dict[str, dict[str, Any]] = {
    "Organization": {
        "label_plural": "Organizations",
        "key_prefix": "00D",
        "fields": {
            "Name": {"type": "string", "length": 80, "required": True},
            "OrganizationType": {"type": "picklist", "label": "Edition"},
            "IsSandbox": {"type": "boolean"},
            "InstanceName": {"type": "string", "length": 5},
            "NamespacePrefix": {"type": "string", "length": 15},
            "TrialExpirationDate": {"type": "datetime"},
            "LanguageLocaleKey": {"type": "picklist", "label": "Locale"},
            "TimeZoneSidKey": {"type": "picklist", "label": "Default Time Zone"},
        },
    },
    "User": {
        "key_prefix": "005",
        "fields": {
            "Username": {"type": "string", "length": 80, "required": True, "unique": True},
            "LastName": {"type": "string", "length": 80, "required": True},
            "FirstName": {"type": "string", "length": 40},
            "Name": {"type": "string", "label": "Full Name", "length": 121},
            "Alias": {"type": "string", "length": 8, "required": True},
            "Email": {"type": "email", "length": 128, "required": True},
            "IsActive": {"type": "boolean", "label": "Active"},
            "UserType": {"type": "picklist", "label": "User Type"},
            "TimeZoneSidKey": {"type": "picklist", "label": "Time Zone"},
            "LanguageLocaleKey": {"type": "picklist", "label": "Language"},
        },
    },
}
_READ_ONLY_FIELDS = {"Organization": {"Name"}, "User": {"Name", "UserType"}}
_ID_LOOKUP_FIELDS = {"User": {"Username", "Email"}}


def read_only(sobj: SObjectDef) -> SObjectDef:
    """The system object as the integration user sees it: readable, never writable."""
    locked = _READ_ONLY_FIELDS.get(sobj.name, set())
    lookups = _ID_LOOKUP_FIELDS.get(sobj.name, set())
    fields = {
        name: dataclasses.replace(
            fdef,
            createable=fdef.createable and name not in locked,
            updateable=fdef.updateable and name not in locked,
            id_lookup=name in lookups,
        )
        for name, fdef in sobj.fields.items()
    }
    return dataclasses.replace(
        sobj, fields=fields, createable=False, updateable=False, deletable=False
    )


def system_records(org: OrgModel, sobject: str) -> list[dict[str, Any]]:
    """The records the org itself holds: its Organization row and one User per user."""
    if sobject == "Organization":
        return [
            {
                "Id": org.org_id,
                "Name": org.name,
                "OrganizationType": "Developer Edition",
                "IsSandbox": True,
                "InstanceName": "SB0",
                "NamespacePrefix": None,
                "TrialExpirationDate": None,
                "LanguageLocaleKey": "en_US",
                "TimeZoneSidKey": "GMT",
                **_SYSTEM_STAMPS,
            }
        ]
    if sobject == "User":
        return [_user_record(user) for user in org.users.values()]
    return []
