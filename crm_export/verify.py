"""Verify what landed: each source row against its record in Salesforce, as Salesforce
stores it. Pure: the SOQL to read records back, how a value is stored, what differs, and
how a row's state (acknowledged or not) decides what a difference means.

How Salesforce stores a value, as far as the comparison needs it (sources in docs/):

- text: leading and trailing white space is trimmed, and "" is stored as NULL;
- picklists: values are matched without case, and stored as the picklist defines them, so
  case alone is no difference; a multi-select picklist is a set of ";"-separated values;
- numbers: the API stores what it is sent, beyond the field's decimal places (no rounding),
  as a double: compared as numbers, within a double's precision;
- date/times: a precision of one second, in UTC: compared as instants, to the second;
- checkboxes: NULL is false;
- record Ids: the 15 and 18 character forms are the same record;
- a lookup set by the parent's external ID is read back through the relationship
  (``Account.External_Id__c``); external IDs match without case unless case-sensitive.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote

from crm_export.mapping import FieldMap, Lookup
from crm_export.ports import FieldDescribe, SObjectDescribe

# Under the REST API's limit of 16,384 bytes for the URI and headers together (Salesforce
# Help 000386264), with room for the rest of the request.
MAX_QUERY_BYTES = 8000
# Records per query: every answer then fits in one page (2,000 records).
MAX_KEYS = 200

TEXT_TYPES = frozenset(
    {"string", "textarea", "email", "phone", "url", "combobox", "encryptedstring"}
)
NUMBER_TYPES = frozenset({"int", "double", "currency", "percent"})


def soql_literal(value: str) -> str:
    """A SOQL string literal (quote and backslash escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def select_fields(fmap: FieldMap, describe: SObjectDescribe) -> list[str]:
    """What a query reads back: Id, the external ID, each mapped field (by the name describe
    gives it) and each lookup's parent external ID through its relationship."""
    names = ["Id", _name(describe, fmap.external_id_field)]
    names += [_name(describe, sf) for sf, _ in fmap.fields]
    names += [
        f"{lookup.relationship}.{lookup.external_id_field}"
        for lookup in fmap.lookups
        if not lookup.polymorphic
    ]
    return list(dict.fromkeys(names))


def _name(describe: SObjectDescribe, name: str) -> str:
    fdef = describe.field(name)
    return fdef.name if fdef is not None else name


def queries(
    fmap: FieldMap,
    describe: SObjectDescribe,
    external_ids: Sequence[str],
    *,
    max_bytes: int = MAX_QUERY_BYTES,
    max_keys: int = MAX_KEYS,
) -> list[str]:
    """SOQL reading back the records of ``external_ids``, batched so that each query,
    URL-encoded, stays under ``max_bytes`` and asks for at most ``max_keys`` records."""
    head = (
        f"SELECT {', '.join(select_fields(fmap, describe))} FROM {describe.name} "
        f"WHERE {_name(describe, fmap.external_id_field)} IN ("
    )
    batches: list[str] = []
    current: list[str] = []
    size = len(quote(head + ")"))
    for value in dict.fromkeys(external_ids):
        literal = soql_literal(value)
        cost = len(quote(literal)) + len(quote(", "))
        if current and (size + cost > max_bytes or len(current) >= max_keys):
            batches.append(head + ", ".join(current) + ")")
            current, size = [], len(quote(head + ")"))
        current.append(literal)
        size += cost
    if current:
        batches.append(head + ", ".join(current) + ")")
    return batches


def fold_id(fdef: FieldDescribe | None, value: Any) -> str:
    """An external ID as records are matched by it."""
    text = "" if value is None else str(value).strip()
    return text if fdef is not None and fdef.case_sensitive else text.casefold()


# -- how a value is stored -----------------------------------------------------------------


def stored(fdef: FieldDescribe, value: Any) -> Any:
    """``value`` (sent, or read back) as Salesforce keeps it, comparable with ``==``
    (numbers excepted: see ``same``)."""
    if isinstance(value, str) and fdef.type not in ("boolean",):
        value = value.strip()
    if value is None or value == "":
        return False if fdef.type == "boolean" else None
    kind = fdef.type
    if kind == "boolean":
        if isinstance(value, str):
            return value.lower() in ("true", "1")
        return bool(value)
    if kind in NUMBER_TYPES:
        return _number(value)
    if kind == "date":
        return str(value)[:10]
    if kind == "datetime":
        return _instant(str(value))
    if kind == "picklist":
        return str(value).casefold()
    if kind == "multipicklist":
        return frozenset(p.strip().casefold() for p in str(value).split(";") if p.strip())
    if kind in ("reference", "id"):
        return str(value)[:15]
    return str(value)


def _number(value: Any) -> Any:
    try:
        return float(Decimal(str(value)))
    except (InvalidOperation, ValueError):
        return str(value)


def _instant(text: str) -> Any:
    cleaned = text.replace("Z", "+00:00")
    if len(cleaned) >= 5 and cleaned[-5] in "+-" and cleaned[-3] != ":":
        cleaned = cleaned[:-2] + ":" + cleaned[-2:]  # Salesforce writes +0000
    try:
        moment = datetime.fromisoformat(cleaned)
    except ValueError:
        return text
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(microsecond=0)


def same(fdef: FieldDescribe, expected: Any, actual: Any) -> bool:
    a, b = stored(fdef, expected), stored(fdef, actual)
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)
    return bool(a == b)


# -- comparing one record ----------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    field: str
    expected: Any  # as sent (the payload's value)
    actual: Any  # as Salesforce holds it


def differences(
    fmap: FieldMap,
    describe: SObjectDescribe,
    payload: Mapping[str, Any],
    record: Mapping[str, Any],
) -> list[Difference]:
    """Every mapped field whose stored value differs from what ``payload`` sends."""
    found = []
    for sf_field, _ in fmap.fields:
        fdef = describe.field(sf_field)
        if fdef is None:
            continue
        expected, actual = payload.get(sf_field), record.get(fdef.name)
        if not same(fdef, expected, actual):
            found.append(Difference(fdef.name, expected, actual))
    for lookup in fmap.lookups:
        difference = _lookup_difference(lookup, payload, record)
        if difference is not None:
            found.append(difference)
    return found


def _lookup_difference(
    lookup: Lookup, payload: Mapping[str, Any], record: Mapping[str, Any]
) -> Difference | None:
    if lookup.polymorphic:
        return None  # read back only through TYPEOF, which verify does not send
    parent = payload.get(lookup.relationship)
    expected = parent.get(lookup.external_id_field) if isinstance(parent, Mapping) else None
    held = record.get(lookup.relationship)
    actual = held.get(lookup.external_id_field) if isinstance(held, Mapping) else None
    if fold_id(None, expected) == fold_id(None, actual):
        return None
    return Difference(f"{lookup.relationship}.{lookup.external_id_field}", expected, actual)


# -- what a difference means -------------------------------------------------------------


@dataclass
class Findings:
    """One stream's verification. ``missing``, ``differs``, ``unacknowledged`` and
    ``duplicates`` are problems; ``pending`` rows are not (yet) expected in Salesforce."""

    checked: int = 0
    matched: int = 0
    missing: list[str] = field(default_factory=list)
    differs: list[dict[str, Any]] = field(default_factory=list)
    unacknowledged: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)

    @property
    def problems(self) -> int:
        return (
            len(self.missing) + len(self.differs) + len(self.unacknowledged) + len(self.duplicates)
        )

    def judge(
        self,
        record_key: str,
        acknowledged: bool,
        found: Sequence[Mapping[str, Any]],
        diffs: Sequence[Difference] | None,
    ) -> None:
        """Record one row. ``acknowledged``: crm-export recorded it as exported (at or
        before the position and without an open or skipped error, or resolved since);
        ``found``: the records Salesforce holds under its external ID; ``diffs`` against
        the first of them (None when the row cannot be sent at all)."""
        self.checked += 1
        if len(found) > 1:
            self.duplicates.append(record_key)
        if acknowledged:
            if not found:
                self.missing.append(record_key)
            elif diffs:
                self.differs.append(
                    {
                        "record_key": record_key,
                        "id": found[0].get("Id"),
                        "fields": [
                            {"field": d.field, "expected": d.expected, "actual": d.actual}
                            for d in diffs
                        ],
                    }
                )
            else:
                self.matched += 1
        elif found and diffs == []:
            # Salesforce holds the row as it is now, yet crm-export has no record of having
            # sent it: a run that died between sending and acknowledging, a run in
            # progress, or a record someone else wrote with the same values.
            self.unacknowledged.append(record_key)
        else:
            self.pending.append(record_key)
