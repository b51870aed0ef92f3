"""Reading a REST record body: field names, and parents named by a nested relationship.

``{"LastName": "Kid", "Account": {"External_Id__c": "A-1"}}`` becomes the values a
:class:`~crm_export.sandbox.dml.Saver` saves: ``{"LastName": "Kid", "AccountId":
ByExternalId(Account, External_Id__c, "A-1")}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from crm_export.sandbox.dml import (
    BadForeignKey,
    ByExternalId,
    RecordError,
    RequestError,
    json_text,
)
from crm_export.sandbox.org import FieldDef, OrgModel, SObjectDef


def parse_payload(org: OrgModel, sobj: SObjectDef, payload: Mapping[str, Any]) -> dict[str, Any]:
    """Map a JSON record's keys to canonical field names; unknown keys are a request error."""
    values: dict[str, Any] = {}
    for key, value in payload.items():
        if key == "attributes":
            continue
        fdef = sobj.field(key)
        if fdef is not None:
            values[fdef.name] = value
            continue
        ref = sobj.relationship(key)
        if ref is not None and (value is None or isinstance(value, Mapping)):
            values[ref.name] = None if value is None else foreign_key(org, sobj, ref, key, value)
            continue
        raise RequestError(
            400, "INVALID_FIELD", f"No such column '{key}' on sobject of type {sobj.name}"
        )
    return values


def foreign_key(
    org: OrgModel, sobj: SObjectDef, ref: FieldDef, key: str, nested: Mapping[str, Any]
) -> ByExternalId | BadForeignKey:
    """The parent a nested ``{"Account": {"External_Id__c": "A-1"}}`` names.

    Salesforce resolves it while saving the record, so a parent it cannot use is that
    record's error; only a body it cannot read at all is the request's.
    """
    attributes = nested.get("attributes")
    type_name = attributes.get("type") if isinstance(attributes, Mapping) else None
    if type_name is not None:
        target = org.sobject(str(type_name))
        if target is None or target.name not in ref.reference_to:
            return BadForeignKey(
                RecordError(
                    "INVALID_FIELD",
                    f"The relationship {key} cannot refer to an entity of type "
                    f"{json_text(type_name)}",
                )
            )
    elif ref.polymorphic:
        return BadForeignKey(
            RecordError(
                "INVALID_FIELD",
                f"The polymorphic relationship {key} needs attributes.type "
                f"(one of {', '.join(ref.reference_to)})",
            )
        )
    else:
        target = org.sobject(ref.reference_to[0])
    assert target is not None
    lookup_keys = [k for k in nested if k != "attributes"]
    if not lookup_keys:
        raise RequestError(
            400, "INVALID_FIELD", f"The relationship {key} names no field of {target.name}"
        )
    if len(lookup_keys) > 1:
        return BadForeignKey(
            RecordError(
                "INVALID_FIELD",
                "More than 1 field provided in an external foreign key reference in entity: "
                + target.name,
            )
        )
    via = target.field(lookup_keys[0])
    if via is None:
        raise RequestError(
            400,
            "INVALID_FIELD",
            f"No such column '{lookup_keys[0]}' on sobject of type {target.name}",
        )
    if not (via.external_id or via.id_lookup or via.name == "Id"):
        return BadForeignKey(
            RecordError(
                "INVALID_FIELD",
                f"Field name provided, {via.name} is not an External ID or indexed field "
                f"for {target.name}",
            )
        )
    return ByExternalId(target, via, nested[lookup_keys[0]])
