"""How config problems show what they are about: key paths, value types, close matches.

Values are shown only where they cannot be a secret (a time zone, a cron expression, a
column name); anything else is described by its TOML type.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def stream_key_path(index: int, name: str | None, *keys: str) -> str:
    """How problems name a stream's key: ``streams[1] ("contacts").fields.Email``.

    Public so that later checks against the database report in the same words.
    """
    where = f"streams[{index}]"
    if name:
        where += f' ("{name}")'
    return ".".join((where, *keys))


def kind(value: object) -> str:
    """A TOML value's type, in TOML's words (values are not quoted: they may be secrets)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return "a date/time"


def show(value: str, limit: int = 60) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


def suggest(value: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    if not close:  # "INFO" for "info"
        close = difflib.get_close_matches(value.lower(), list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
