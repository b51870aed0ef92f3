"""Stream positions as the state database keeps them: tagged JSON text.

A position is the (order_by, key) of the last row acknowledged, of whatever type the source
column has; tagged JSON lets every such value (an int beyond 64 bits, a Decimal, a datetime
with its offset, bytes, a UUID) round-trip exactly, in a column people can still read.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

from crm_export.ports import Position, SourceValue

__all__ = ["decode_value", "encode_value", "position_columns", "position_from_columns"]


def encode_value(value: SourceValue) -> str:
    """Encode a source value as tagged JSON text, e.g. ``{"type": "int", "value": 42}``.

    Floats, Decimals, dates and times are kept as text so nothing is lost to JSON numbers.
    """
    tag: str
    payload: Any
    if value is None:
        tag, payload = "null", None
    elif isinstance(value, bool):  # before int: bool is an int
        tag, payload = "bool", value
    elif isinstance(value, int):
        tag, payload = "int", value
    elif isinstance(value, float):
        tag, payload = "float", repr(value)
    elif isinstance(value, Decimal):
        tag, payload = "decimal", str(value)
    elif isinstance(value, str):
        tag, payload = "str", value
    elif isinstance(value, datetime):  # before date: datetime is a date
        tag, payload = "datetime", value.isoformat()
    elif isinstance(value, date):
        tag, payload = "date", value.isoformat()
    elif isinstance(value, time):
        tag, payload = "time", value.isoformat()
    elif isinstance(value, bytes | bytearray | memoryview):
        tag, payload = "bytes", bytes(value).hex()
    elif isinstance(value, uuid.UUID):
        tag, payload = "uuid", str(value)
    else:
        raise TypeError(f"cannot store a position value of type {type(value).__name__}")
    return json.dumps({"type": tag, "value": payload}, ensure_ascii=False)


def decode_value(text: str) -> SourceValue:
    """Inverse of ``encode_value``."""
    data = json.loads(text)
    tag, payload = data["type"], data["value"]
    decoders: dict[str, Callable[[Any], SourceValue]] = {
        "null": lambda _: None,
        "bool": bool,
        "int": int,
        "float": float,
        "decimal": Decimal,
        "str": str,
        "datetime": datetime.fromisoformat,
        "date": date.fromisoformat,
        "time": time.fromisoformat,
        "bytes": bytes.fromhex,
        "uuid": uuid.UUID,
    }
    if tag not in decoders:
        raise ValueError(f"unknown position value type {tag!r} in {text!r}")
    return decoders[tag](payload)


def position_columns(position: Position | None) -> dict[str, Any]:
    """The stream_state columns that hold ``position``."""
    if position is None:
        return {"position_order": None, "position_key": None}
    return {
        "position_order": encode_value(position.order_value),
        "position_key": encode_value(position.key),
    }


def position_from_columns(order_text: str | None, key_text: str) -> Position | None:
    """Inverse of ``position_columns``: None for a stream that has not moved yet."""
    if order_text is None:
        return None
    return Position(decode_value(order_text), decode_value(key_text))
