"""Salesforce-style record ids: a 3-character key prefix, a body, and the 3-character checksum.

The checksum is the real one, so tools that convert 15- to 18-character ids agree with ours.
"""

from __future__ import annotations

import re

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_CHECKSUM_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
# Characters 4-5 of a real id name the pod; "Sb" marks ids this sandbox made.
_POD = "Sb"
_ID_RE = re.compile(r"^[0-9A-Za-z]{15}([0-9A-Za-z]{3})?$")


def _base62(n: int) -> str:
    if n == 0:
        return "0"
    digits = []
    while n:
        n, rem = divmod(n, 62)
        digits.append(_BASE62[rem])
    return "".join(reversed(digits))


def checksum_suffix(id15: str) -> str:
    suffix = []
    for chunk in range(3):
        bits = 0
        for i, ch in enumerate(id15[chunk * 5 : chunk * 5 + 5]):
            if "A" <= ch <= "Z":
                bits |= 1 << i
        suffix.append(_CHECKSUM_ALPHABET[bits])
    return "".join(suffix)


def make_id(prefix: str, n: int) -> str:
    """The ``n``-th id of a key prefix, 18 characters long."""
    id15 = f"{prefix}{_POD}00{_base62(n).rjust(8, '0')}"
    return id15 + checksum_suffix(id15)


def looks_like_id(value: str) -> bool:
    return bool(_ID_RE.match(value))


def to_18(value: str) -> str:
    """The 18-character form of a 15- or 18-character id."""
    if len(value) == 15:
        return value + checksum_suffix(value)
    return value
