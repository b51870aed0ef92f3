"""Source row -> Salesforce payload. Pure: no I/O, no clock."""

from __future__ import annotations

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

# Salesforce rejects text fields over 131,072 characters (long text area maximum).
MAX_TEXT_LENGTH = 131_072


@dataclass(frozen=True)
class FieldMap:
    sobject: str
    external_id_field: str
    key_column: str
    fields: tuple[tuple[str, str], ...]  # (Salesforce field, source column)


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
            RecordError(NULL_KEY, f"key column {fmap.key_column!r} is NULL", (fmap.key_column,))
        )
    external_id = _convert(fmap.key_column, fmap.external_id_field, row.key)
    payload: dict[str, Any] = {fmap.external_id_field: str(external_id)}
    for sf_field, column in fmap.fields:
        payload[sf_field] = _convert(column, sf_field, row.values.get(column))
    return payload


def _convert(column: str, sf_field: str, value: SourceValue) -> Any:
    converter = _CONVERTERS.get(type(value))
    if converter is None:
        for base, fn in _CONVERTERS.items():
            if isinstance(value, base):
                converter = fn
                break
    if converter is None:
        return str(value)
    try:
        return converter(value)
    except ValueError as exc:
        raise MappingError(
            RecordError(INVALID_VALUE, f"column {column!r} (-> {sf_field}): {exc}", (sf_field,))
        ) from exc


def _text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("text contains a NUL character, which Salesforce rejects")
    if len(value) > MAX_TEXT_LENGTH:
        raise ValueError(f"text of {len(value)} characters exceeds {MAX_TEXT_LENGTH}")
    return value


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
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


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
    date: lambda v: v.isoformat(),
    time: _time,
}
