"""Source row -> Salesforce payload. Pure: no I/O, no clock."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

from crm_export.ports import RecordError, SourceRow, SourceValue

# Our own codes, for records rejected before they reach Salesforce. The prefix keeps them
# apart from Salesforce statusCodes in ExportErrors.error_code.
NULL_KEY = "CRM_EXPORT_NULL_KEY"
INVALID_VALUE = "CRM_EXPORT_INVALID_VALUE"
NULL_ORDER_BY = "CRM_EXPORT_NULL_ORDER_BY"

# Salesforce refuses Date and DateTime values outside these years, with a message that
# names neither the column nor the row; saying so before sending names both.
MIN_YEAR, MAX_YEAR = 1700, 4000

# Salesforce rejects text fields over 131,072 characters (long text area maximum).
MAX_TEXT_LENGTH = 131_072


# Standard lookups that may point at more than one object. Salesforce needs to be told which
# object a nested external ID belongs to for these; custom lookups always have one target.
POLYMORPHIC_LOOKUPS = frozenset({"WhoId", "WhatId", "OwnerId"})


@dataclass(frozen=True)
class Lookup:
    """A lookup field set through the parent's external ID, e.g. Contact.AccountId from
    ``account_id``: Salesforce resolves the parent itself, so no record Id is needed."""

    field: str  # AccountId
    relationship: str  # Account: the name the nested object is sent under
    sobject: str  # the parent's object
    external_id_field: str  # the parent's external ID field
    column: str  # the source column holding the parent's key
    polymorphic: bool = False

    @classmethod
    def derive(
        cls,
        field: str,
        sobject: str,
        external_id_field: str,
        column: str,
        relationship: str | None = None,
    ) -> Lookup:
        return cls(
            field=field,
            relationship=relationship or relationship_name(field),
            sobject=sobject,
            external_id_field=external_id_field,
            column=column,
            polymorphic=field in POLYMORPHIC_LOOKUPS,
        )


def relationship_name(lookup_field: str) -> str:
    """Salesforce's relationship name of a lookup field: AccountId -> Account,
    Parent__c -> Parent__r."""
    if lookup_field.endswith("__c"):
        return lookup_field.removesuffix("__c") + "__r"
    return lookup_field.removesuffix("Id") if lookup_field.endswith("Id") else lookup_field


@dataclass(frozen=True)
class FieldMap:
    sobject: str
    external_id_field: str
    key_column: str
    fields: tuple[tuple[str, str], ...]  # (Salesforce field, source column)
    lookups: tuple[Lookup, ...] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        """The source columns the payload reads (besides the key), each once."""
        named = [c for _, c in self.fields] + [lookup.column for lookup in self.lookups]
        return tuple(dict.fromkeys(named))


class MappingError(Exception):
    def __init__(self, error: RecordError) -> None:
        super().__init__(error.message)
        self.error = error


def build_payload(fmap: FieldMap, row: SourceRow) -> dict[str, Any]:
    """The JSON object upserted for ``row``, external ID included.

    Raises ``MappingError`` naming the column when a value cannot be sent faithfully.
    """
    if row.key is None:
        raise MappingError(
            RecordError(
                NULL_KEY,
                f"key column {fmap.key_column!r} is NULL, so the row has no external ID to be "
                f"upserted by; give the row a key",
                (fmap.key_column,),
            )
        )
    external_id = external_id_text(fmap.key_column, fmap.external_id_field, row.key)
    if not external_id.strip():
        # Salesforce reads a blank external ID as no value at all, and fails the upsert.
        raise MappingError(
            RecordError(
                INVALID_VALUE,
                f"key column {fmap.key_column!r} is blank, so the row has no external ID to be "
                "upserted by; give the row a key",
                (fmap.key_column,),
            )
        )
    payload: dict[str, Any] = {fmap.external_id_field: external_id}
    for sf_field, column in fmap.fields:
        payload[sf_field] = _convert(column, sf_field, row.values.get(column))
    for lookup in fmap.lookups:
        payload.update(_lookup_value(lookup, row.values.get(lookup.column)))
    return payload


def external_id_text(column: str, sf_field: str, key: SourceValue) -> str:
    """A key as an external ID value. A parent's key is rendered the same way in its own
    stream and in its children's lookups (an integer 42 is "42" on both sides), or the
    children would point at a record that does not exist."""
    return str(_convert(column, sf_field, key))


def _lookup_value(lookup: Lookup, key: SourceValue) -> dict[str, Any]:
    if key is None:
        # Sending the lookup field itself as null clears it; a null relationship does not.
        return {lookup.field: None}
    parent: dict[str, Any] = {}
    if lookup.polymorphic:
        parent["attributes"] = {"type": lookup.sobject}
    parent[lookup.external_id_field] = external_id_text(lookup.column, lookup.field, key)
    if not parent[lookup.external_id_field].strip():
        raise MappingError(
            RecordError(
                INVALID_VALUE,
                f"column {lookup.column!r} (-> {lookup.field}) is blank, so it names no "
                f"{lookup.sobject}; set it to the parent's key, or NULL to clear the lookup",
                (lookup.field,),
            )
        )
    return {lookup.relationship: parent}


def _convert(column: str, sf_field: str, value: SourceValue) -> Any:
    converter = _CONVERTERS.get(type(value))
    if converter is None:
        for base, fn in _CONVERTERS.items():
            if isinstance(value, base):
                converter = fn
                break
    if converter is None:
        # UUIDs, intervals, driver-specific types: their text, checked like any text.
        converter = _as_text
    try:
        return converter(value)
    except (ValueError, OverflowError) as exc:
        raise MappingError(
            RecordError(INVALID_VALUE, f"column {column!r} (-> {sf_field}): {exc}", (sf_field,))
        ) from exc


def _text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("text contains a NUL character, which Salesforce rejects")
    if len(value) > MAX_TEXT_LENGTH:
        raise ValueError(f"text of {len(value)} characters exceeds {MAX_TEXT_LENGTH}")
    return value


def _as_text(value: object) -> str:
    return _text(str(value))


def _bytes(value: bytes) -> str:
    try:
        return _text(value.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"text is not valid UTF-8 (byte {exc.start})") from exc


def _float(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{value} is not a number Salesforce can store")
    return value


def _decimal(value: Decimal) -> int | float:
    if not value.is_finite():
        raise ValueError(f"{value} is not a number Salesforce can store")
    return int(value) if value == value.to_integral_value() else float(value)


def _datetime(value: datetime) -> str:
    # Naive timestamps are taken as UTC: the documented convention for source tables.
    if value.tzinfo is not None:
        try:
            value = value.astimezone(UTC)
        except OverflowError as exc:
            shown = value.isoformat()
            raise ValueError(f"{shown} is outside the dates Salesforce accepts") from exc
    _check_year(value)
    # Not strftime: it writes year 1 as "1", which is no ISO 8601 date.
    return value.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def _date(value: date) -> str:
    _check_year(value)
    return value.isoformat()


def _check_year(value: date) -> None:
    if not MIN_YEAR <= value.year <= MAX_YEAR:
        raise ValueError(
            f"{value.isoformat()} is outside the dates Salesforce accepts "
            f"(years {MIN_YEAR} to {MAX_YEAR})"
        )


def _structured(value: dict[str, Any] | list[Any] | tuple[Any, ...]) -> str:
    # JSON and array columns (PostgreSQL) go out as JSON text, not as Python's repr.
    return _text(json.dumps(value, default=str, ensure_ascii=False, sort_keys=True))


def _time(value: time) -> str:
    return value.strftime("%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


_CONVERTERS: Mapping[type, Any] = {
    type(None): lambda v: None,
    bool: lambda v: v,
    int: lambda v: v,
    float: _float,
    Decimal: _decimal,
    str: _text,
    bytes: _bytes,
    datetime: _datetime,
    date: _date,
    time: _time,
    dict: _structured,
    list: _structured,
    tuple: _structured,
}
