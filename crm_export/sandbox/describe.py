"""The shapes of ``describe``: DescribeGlobal, DescribeSObjectResult and its fields.

Attribute meanings follow Salesforce's DescribeSObjectResult and DescribeFieldResult
reference (see docs/sandbox.md); the sandbox fills the ones it can know from the org model.
"""

from __future__ import annotations

from typing import Any

from crm_export.sandbox.org import SYSTEM_FIELDS, TEXT_TYPES, FieldDef, OrgModel, SObjectDef

# How each field type travels in the SOAP API (DescribeFieldResult.soapType).
_SOAP_TYPES = {
    "id": "tns:ID",
    "reference": "tns:ID",
    "boolean": "xsd:boolean",
    "int": "xsd:int",
    "double": "xsd:double",
    "currency": "xsd:double",
    "percent": "xsd:double",
    "date": "xsd:date",
    "datetime": "xsd:dateTime",
}
# Long text areas cannot be filtered, sorted or grouped on.
_LONG_TEXT = 255


def object_summary(sobj: SObjectDef, version: str) -> dict[str, Any]:
    """One object as ``GET /sobjects`` lists it."""
    base = f"/services/data/v{version}/sobjects/{sobj.name}"
    return {
        "activateable": False,
        "createable": sobj.createable,
        "custom": sobj.custom,
        "customSetting": False,
        "deletable": sobj.deletable,
        "deprecatedAndHidden": False,
        "feedEnabled": False,
        "hasSubtypes": False,
        "isInterface": False,
        "isSubtype": False,
        "keyPrefix": sobj.key_prefix,
        "label": sobj.label,
        "labelPlural": sobj.label_plural,
        "layoutable": True,
        "mergeable": False,
        "mruEnabled": False,
        "name": sobj.name,
        "queryable": True,
        "replicateable": True,
        "retrieveable": True,
        "searchable": True,
        "triggerable": sobj.createable,
        "undeletable": False,
        "updateable": sobj.updateable,
        "urls": {"sobject": base, "describe": f"{base}/describe", "rowTemplate": f"{base}/{{ID}}"},
    }


def describe_object(org: OrgModel, sobj: SObjectDef, version: str) -> dict[str, Any]:
    """``GET /sobjects/{O}/describe``."""
    return {
        **object_summary(sobj, version),
        "childRelationships": child_relationships(org, sobj),
        "fields": [describe_field(sobj, fdef) for fdef in sobj.fields.values()],
        "recordTypeInfos": [],
        "supportedScopes": [{"label": "All", "name": "everything"}],
    }


def child_relationships(org: OrgModel, parent: SObjectDef) -> list[dict[str, Any]]:
    """Every lookup of every object that can point to ``parent``."""
    children = []
    for child in org.objects.values():
        for fdef in child.fields.values():
            if parent.name not in fdef.reference_to:
                continue
            children.append(
                {
                    "cascadeDelete": fdef.cascade_delete,
                    "childSObject": child.name,
                    "deprecatedAndHidden": False,
                    "field": fdef.name,
                    "junctionIdListNames": [],
                    "junctionReferenceTo": [],
                    "relationshipName": _child_relationship_name(child, fdef),
                    "restrictedDelete": False,
                }
            )
    return children


def _child_relationship_name(child: SObjectDef, fdef: FieldDef) -> str:
    plural = "".join(part for part in child.label_plural.split() if part.isalnum())
    # Custom lookups get a __r child relationship, as Salesforce names them by default.
    return f"{plural}__r" if fdef.name.endswith("__c") else plural


def describe_field(sobj: SObjectDef, fdef: FieldDef) -> dict[str, Any]:
    ftype = fdef.type
    system = fdef.name in SYSTEM_FIELDS
    is_text = ftype in TEXT_TYPES
    length = 18 if ftype in {"id", "reference"} else (fdef.length or 0) if is_text else 0
    long_text = ftype == "textarea" and length > _LONG_TEXT
    numeric = ftype in {"double", "currency", "percent"}
    return {
        "aggregatable": not long_text and ftype not in {"boolean", "multipicklist"},
        "autoNumber": False,
        "byteLength": length * 3 if is_text else length,
        "calculated": False,
        "cascadeDelete": fdef.cascade_delete,
        "caseSensitive": fdef.case_sensitive,
        "createable": fdef.createable,
        "custom": fdef.name.endswith("__c"),
        "defaultValue": fdef.default,
        "defaultedOnCreate": system or fdef.default is not None or ftype == "boolean",
        "dependentPicklist": False,
        "deprecatedAndHidden": False,
        "digits": 0,
        "externalId": fdef.external_id,
        "filterable": not long_text,
        "groupable": not long_text and not numeric and ftype not in {"datetime", "multipicklist"},
        "htmlFormatted": False,
        "idLookup": fdef.name == "Id" or fdef.external_id or fdef.id_lookup,
        "inlineHelpText": None,
        "label": fdef.label,
        "length": length,
        "name": fdef.name,
        "nameField": fdef.name == "Name",
        "namePointing": fdef.polymorphic,
        "nillable": not (system or fdef.required or ftype == "boolean"),
        "permissionable": not (system or fdef.required),
        "picklistValues": [
            {
                "active": True,
                "defaultValue": value == fdef.default,
                "label": value,
                "validFor": None,
                "value": value,
            }
            for value in fdef.values
        ],
        "polymorphicForeignKey": fdef.polymorphic,
        "precision": 18 if numeric else 0,
        "referenceTo": list(fdef.reference_to),
        "relationshipName": fdef.relationship_name,
        "relationshipOrder": None,
        "restrictedDelete": False,
        "restrictedPicklist": fdef.restricted,
        "scale": 2 if ftype == "currency" else 0,
        "soapType": _SOAP_TYPES.get(ftype, "xsd:string"),
        "sortable": not long_text and ftype != "multipicklist",
        "type": ftype,
        "unique": fdef.unique,
        "updateable": fdef.updateable,
        "writeRequiresMasterRead": False,
    }
