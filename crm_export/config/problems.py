"""pydantic's validation errors, said the way crm-export says config problems.

Each problem is ``key.path: message``. Our own checks already speak our words (see
``checks.problem``); pydantic's built-in error types are translated by the table below,
which reads the field's declared bounds and choices. Input values are shown only for
numbers and choices, never for strings that may be secrets.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any, Final, get_args

import annotated_types
from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from crm_export.config.checks import STREAM_NAME
from crm_export.config.models import CONFIG_KEYS, LOOKUP_KEYS, SECTIONS
from crm_export.config.wording import kind, show, stream_key_path, suggest


def describe(exc: ValidationError, document: Mapping[str, Any]) -> list[str]:
    """One line per problem, each naming its key path as the user wrote the file."""
    return [f"{_key_path(e, document)}: {_message(e)}" for e in exc.errors(include_url=False)]


def _key_path(error: ErrorDetails, document: Mapping[str, Any]) -> str:
    loc = [str(part) for part in error["loc"]]
    named = (error.get("ctx") or {}).get("key")
    if named:  # the check names the file key itself (a secret's *_env or *_file)
        loc[-1] = named
    index = error["loc"][1] if len(error["loc"]) > 1 else None
    if loc[0] == "streams" and isinstance(index, int):
        return stream_key_path(index, _stream_name(document, index), *loc[2:])
    return ".".join(loc)


def _stream_name(document: Mapping[str, Any], index: int) -> str | None:
    stream = document["streams"][index]
    name = stream.get("name") if isinstance(stream, dict) else None
    return name if isinstance(name, str) and STREAM_NAME.fullmatch(name) else None


def _field(loc: tuple[int | str, ...]) -> FieldInfo | None:
    """The model field at ``loc`` (for its bounds, choices and note), if it is one."""
    model = SECTIONS.get(str(loc[0]))
    key = loc[2] if loc[0] == "streams" and len(loc) > 2 else loc[1] if len(loc) > 1 else None
    return None if model is None or key is None else model.model_fields.get(str(key))


def _message(error: ErrorDetails) -> str:
    words = _WORDS.get(error["type"])
    if words is None:
        return error["msg"]  # our own checks, already in our words
    return words(error, _field(error["loc"]))


# The words for pydantic's error types -------------------------------------------------------

_Words = Callable[[ErrorDetails, FieldInfo | None], str]


def _bounds(field: FieldInfo | None) -> dict[str, Any]:
    bounds: dict[str, Any] = {}
    for m in field.metadata if field else ():
        if isinstance(m, annotated_types.Ge):
            bounds["ge"] = m.ge
        elif isinstance(m, annotated_types.Gt):
            bounds["gt"] = m.gt
        elif isinstance(m, annotated_types.Le):
            bounds["le"] = m.le
    return bounds


def _note(field: FieldInfo | None) -> str:
    return f" ({field.description})" if field and field.description else ""


def _out_of_bounds(error: ErrorDetails, field: FieldInfo | None) -> str:
    bounds, got = _bounds(field), f"got {error['input']}"
    if error["type"] in ("greater_than", "finite_number"):  # the seconds: no upper note
        return f"must be greater than {bounds.get('gt', 0)}, {got}"
    note = _note(field)
    if "ge" in bounds and "le" in bounds:
        return f"must be between {bounds['ge']} and {bounds['le']}, {got}{note}"
    if error["type"] == "greater_than_equal":
        return f"must be at least {bounds.get('ge')}, {got}{note}"
    return f"must be at most {bounds.get('le')}, {got}{note}"


def _whole_number(error: ErrorDetails, field: FieldInfo | None) -> str:
    value = error["input"]
    hint = f" (write {int(value)})" if isinstance(value, float) and value.is_integer() else ""
    return f"must be a whole number, got {kind(value)}{hint}"


def _boolean(error: ErrorDetails, field: FieldInfo | None) -> str:
    value = error["input"]
    hint = ""
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        hint = f" (write {value.strip().lower()} without quotes)"
    return f"must be true or false, got {kind(value)}{hint}"


def _string(error: ErrorDetails, field: FieldInfo | None) -> str:
    return f"must be a string (in quotes), got {kind(error['input'])}"


def _choice(error: ErrorDetails, field: FieldInfo | None) -> str:
    value = error["input"]
    if not isinstance(value, str):
        return _string(error, field)
    choices = [str(c) for c in get_args(field.annotation)] if field else []
    listed = ", ".join(f'"{c}"' for c in choices)
    return f"must be one of {listed}, got {show(value)}{suggest(value, choices)}"


def _table(error: ErrorDetails, field: FieldInfo | None) -> str:
    section = error["loc"][0]
    return f"must be a table ([{section}]), got {kind(error['input'])}"


def _unknown(error: ErrorDetails, field: FieldInfo | None) -> str:
    loc = error["loc"]
    if len(loc) == 1:
        return _unknown_key(str(loc[0]), "", CONFIG_KEYS.keys())
    if loc[0] == "streams" and len(loc) == 5 and loc[2] == "lookups":
        return "unknown key" + suggest(str(loc[-1]), LOOKUP_KEYS)
    section = str(loc[0])
    return _unknown_key(str(loc[-1]), section, CONFIG_KEYS[section])


def _unknown_key(key: str, section: str, known: Collection[str]) -> str:
    # Sections other than this table's own.
    homes = [s for s, keys in CONFIG_KEYS.items() if key in keys and s != section]
    if homes:
        where = "[[streams]]" if homes[0] == "streams" else f"[{homes[0]}]"
        # The usual cause is TOML itself: every key after a [header] belongs to that table.
        after = " (keys after a [header] belong to that header's table)" if section else ""
        return f"unknown key here; it belongs under {where}{after}"
    return "unknown " + ("key" if section else "section") + suggest(key, known)


_WORDS: Final[Mapping[str, _Words]] = {
    "missing": lambda error, field: "missing (required)",
    "extra_forbidden": _unknown,
    "model_type": _table,
    "model_attributes_type": _table,
    "string_type": _string,
    "bool_type": _boolean,
    "int_type": _whole_number,
    "float_type": lambda error, field: f"must be a number, got {kind(error['input'])}",
    "literal_error": _choice,
    "greater_than": _out_of_bounds,
    "greater_than_equal": _out_of_bounds,
    "less_than_equal": _out_of_bounds,
    "finite_number": _out_of_bounds,
}
