"""What describe makes certain before anything is sent: a mapping the object cannot take,
and values the org would refuse.

Pure, except ``Presend``, which asks the sink for each stream's describe once per run. The
rest takes a describe result and a mapping or a payload.

A row is rejected before sending only where describe leaves no doubt, because a false
rejection halts a pause-mode stream on a record Salesforce would have taken:

- text longer than the field's ``length``, counted after trimming (Salesforce trims leading
  and trailing white space) and in code points (never more than Salesforce's UTF-16 count);
- a value a restricted picklist does not list, compared without case (Salesforce matches
  picklist values case-insensitively);
- text a checkbox, number, date or date/time field cannot read at all ("maybe", "abc",
  "not-a-date"); numbers, booleans and odd-but-parseable text are left to Salesforce;
- NULL (or "", which Salesforce stores as NULL) in a field that is neither nillable nor
  defaulted on create: a create cannot leave it empty, and an update cannot set it to NULL
  (Salesforce's Required Fields rule).

Never for a rule describe does not state exactly (email syntax, validation rules, lookups).

Each rejection carries the statusCode Salesforce itself answers for that value, and its
message in Salesforce's words (the value quoted in full), so that SQL on ``error_code`` and
``error_message`` means the same whichever side caught it; the message then says it was
caught before sending. A value the JSON parser cannot read gets JSON_PARSER_ERROR: that is
what the org answers for it over REST (for the whole request; ``sending`` then isolates the
record under the same code). INVALID_TYPE_ON_FIELD_IN_RECORD is the per-record code of the
Bulk and SOAP APIs, which crm-export does not use, so it would split one fault in two codes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from crm_export.errors import OrgMismatchError
from crm_export.mapping import FieldMap, MappingError
from crm_export.ports import FieldDescribe, RecordError, Sink, SObjectDescribe

from .outcome import FloodGuard
from .plan import StreamPlan

STRING_TOO_LONG = "STRING_TOO_LONG"
BAD_PICKLIST = "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
REQUIRED_FIELD_MISSING = "REQUIRED_FIELD_MISSING"
UNREADABLE = "JSON_PARSER_ERROR"

# Field types whose values are text, with a length (DescribeFieldResult.type).
TEXT_TYPES = frozenset(
    {
        "string",
        "textarea",
        "email",
        "phone",
        "url",
        "picklist",
        "multipicklist",
        "combobox",
        "encryptedstring",
    }
)
NUMBER_TYPES = frozenset({"int", "double", "currency", "percent"})
DATE_TYPES = frozenset({"date", "datetime"})
# The texts a checkbox certainly reads (boolean: "true (or 1), or false (or 0)").
BOOLEAN_TEXTS = frozenset({"true", "false", "1", "0"})
_DATE_SHAPE = re.compile(r"\s*[+-]?\d{4,}-\d{1,2}-\d{1,2}")


@dataclass(frozen=True)
class MappingProblem:
    """Something the stream's mapping asks of the object that the object cannot do.

    ``key`` is the config key under the stream (``fields.Foo__c``, ``external_id_field``,
    ``lookups.AccountId.external_id_field``, ``sobject``); ``fatal`` when every request
    would be refused, so the exporter stops the stream before sending anything.
    """

    key: str
    code: str
    message: str
    fatal: bool = False


def mapping_problems(
    fmap: FieldMap,
    describe: SObjectDescribe | None,
    parents: Mapping[str, SObjectDescribe | None] | None = None,
) -> list[MappingProblem]:
    """Every problem of ``fmap`` against its object's ``describe``; the lookups' parents are
    checked too when their describes are given (``parents``, keyed by object name)."""
    if describe is None:
        return [
            MappingProblem(
                "sobject",
                "NO_SUCH_OBJECT",
                f"the org has no object {fmap.sobject} (or the integration user cannot see it)",
                fatal=True,
            )
        ]
    problems = _external_id_problems(fmap, describe)
    for sf_field, _ in fmap.fields:
        problems += _field_problems(describe, f"fields.{sf_field}", sf_field)
    for lookup in fmap.lookups:
        where = f"lookups.{lookup.field}"
        field_problems = _field_problems(describe, where, lookup.field)
        problems += field_problems
        if field_problems and field_problems[0].fatal:
            continue
        problems += _lookup_problems(
            describe, where, lookup.field, lookup.relationship, lookup.sobject
        )
        if parents is not None:
            problems += _parent_problems(
                where, lookup.sobject, lookup.external_id_field, parents.get(lookup.sobject)
            )
    problems += _unmapped_required(fmap, describe)
    return problems


def _external_id_problems(fmap: FieldMap, describe: SObjectDescribe) -> list[MappingProblem]:
    key, name = "external_id_field", fmap.external_id_field
    fdef = describe.field(name)
    if fdef is None:
        return [_missing(describe, key, name)]
    if not (fdef.external_id or fdef.id_lookup):
        return [
            MappingProblem(
                key,
                "NOT_EXTERNAL_ID",
                f"{describe.name}.{fdef.name} is not an External ID field, so no upsert can "
                "match records by it; mark it External ID (and Unique) in Setup",
                fatal=True,
            )
        ]
    if not fdef.unique and fdef.name.casefold() != "id":
        return [
            MappingProblem(
                key,
                "NOT_UNIQUE",
                f"{describe.name}.{fdef.name} is not Unique: two records may share a value, "
                "and every upsert of that value then fails with DUPLICATE_EXTERNAL_ID; "
                "mark it Unique in Setup",
            )
        ]
    return []


def _missing(describe: SObjectDescribe, key: str, name: str) -> MappingProblem:
    return MappingProblem(
        key,
        "NO_SUCH_FIELD",
        f"{describe.name} has no field {name} (or the integration user cannot see it)",
        fatal=True,
    )


def _field_problems(describe: SObjectDescribe, key: str, name: str) -> list[MappingProblem]:
    fdef = describe.field(name)
    if fdef is None:
        return [_missing(describe, key, name)]
    what = f"{describe.name}.{fdef.name}"
    if not fdef.createable and not fdef.updateable:
        return [
            MappingProblem(
                key,
                "NOT_WRITABLE",
                f"{what} can be neither created nor updated by the integration user (read-only,"
                " a formula, or no edit access): every record fails with "
                "INVALID_FIELD_FOR_INSERT_UPDATE",
            )
        ]
    if not fdef.createable:
        return [
            MappingProblem(
                key,
                "NOT_CREATEABLE",
                f"{what} cannot be set on create: every new record fails with "
                "INVALID_FIELD_FOR_INSERT_UPDATE",
            )
        ]
    if not fdef.updateable:
        return [
            MappingProblem(
                key,
                "NOT_UPDATEABLE",
                f"{what} cannot be updated: every record that exists already fails with "
                "INVALID_FIELD_FOR_INSERT_UPDATE",
            )
        ]
    return []


def _lookup_problems(
    describe: SObjectDescribe, where: str, name: str, relationship: str, target: str
) -> list[MappingProblem]:
    fdef = describe.field(name)
    assert fdef is not None
    what = f"{describe.name}.{fdef.name}"
    if fdef.type != "reference":
        return [
            MappingProblem(
                where, "NOT_A_LOOKUP", f"{what} is a {fdef.type}, not a lookup", fatal=True
            )
        ]
    if (fdef.relationship_name or "").casefold() != relationship.casefold():
        return [
            MappingProblem(
                f"{where}.relationship",
                "NO_SUCH_RELATIONSHIP",
                f"{what}'s relationship is named {fdef.relationship_name}, not {relationship}",
                fatal=True,
            )
        ]
    if fdef.reference_to and target.casefold() not in {t.casefold() for t in fdef.reference_to}:
        return [
            MappingProblem(
                f"{where}.sobject",
                "WRONG_LOOKUP_TARGET",
                f"{what} points to {', '.join(fdef.reference_to)}, not {target}",
                fatal=True,
            )
        ]
    return []


def _parent_problems(
    where: str, sobject: str, external_id_field: str, parent: SObjectDescribe | None
) -> list[MappingProblem]:
    if parent is None:
        return [
            MappingProblem(
                f"{where}.sobject",
                "NO_SUCH_OBJECT",
                f"the org has no object {sobject} (or the integration user cannot see it)",
            )
        ]
    fdef = parent.field(external_id_field)
    key = f"{where}.external_id_field"
    if fdef is None:
        return [MappingProblem(key, "NO_SUCH_FIELD", f"{sobject} has no field {external_id_field}")]
    if not (fdef.external_id or fdef.id_lookup):
        return [
            MappingProblem(
                key,
                "NOT_EXTERNAL_ID",
                f"{sobject}.{fdef.name} is not an External ID field, so a child cannot name "
                "its parent by it: every record with a parent fails with INVALID_FIELD",
            )
        ]
    return []


def _unmapped_required(fmap: FieldMap, describe: SObjectDescribe) -> list[MappingProblem]:
    mapped = {fmap.external_id_field.casefold()}
    mapped |= {sf.casefold() for sf, _ in fmap.fields}
    mapped |= {lookup.field.casefold() for lookup in fmap.lookups}
    required = [
        f.name for f in describe.fields if f.required_on_create and f.name.casefold() not in mapped
    ]
    if not required:
        return []
    return [
        MappingProblem(
            "fields",
            "REQUIRED_NOT_MAPPED",
            f"{describe.name} requires {', '.join(required)} (not nillable, no default), and "
            "the stream does not map it: every new record fails with REQUIRED_FIELD_MISSING "
            "(records that exist already are updated)",
        )
    ]


class RowCheck:
    """The pre-send rules for one stream's payloads (see the module's docstring)."""

    def __init__(self, fmap: FieldMap, describe: SObjectDescribe) -> None:
        self.sobject = describe.name
        names = [fmap.external_id_field, *(sf for sf, _ in fmap.fields)]
        names += [lookup.field for lookup in fmap.lookups]
        self._fields: dict[str, FieldDescribe] = {}
        for name in names:
            fdef = describe.field(name)
            if fdef is not None:
                self._fields[name] = fdef

    def problems(self, payload: Mapping[str, Any]) -> list[RecordError]:
        """Every value of ``payload`` the org would refuse, in payload order."""
        found = []
        for name, value in payload.items():
            fdef = self._fields.get(name)
            if fdef is not None and not isinstance(value, Mapping):
                error = self._judge(fdef, value)
                if error is not None:
                    found.append(error)
        return found

    def _judge(self, fdef: FieldDescribe, value: Any) -> RecordError | None:
        if value is None or value == "":
            if fdef.nillable or fdef.defaulted_on_create:
                return None
            return self._error(
                fdef,
                REQUIRED_FIELD_MISSING,
                f"Required fields are missing: [{fdef.name}]",
                "is required and has no default",
            )
        if not isinstance(value, str):
            return None
        if fdef.type in TEXT_TYPES:
            return self._text(fdef, value)
        if fdef.type == "boolean" and value.strip().lower() not in BOOLEAN_TEXTS:
            return self._unreadable(fdef, value, "is a checkbox (true or false)")
        if fdef.type in NUMBER_TYPES and not _is_number(value):
            return self._unreadable(fdef, value, f"is a number ({fdef.type})")
        if fdef.type in DATE_TYPES and _DATE_SHAPE.match(value) is None:
            shape = "YYYY-MM-DD" if fdef.type == "date" else "ISO 8601"
            return self._unreadable(fdef, value, f"is a {fdef.type} ({shape})")
        return None

    def _text(self, fdef: FieldDescribe, value: str) -> RecordError | None:
        trimmed = value.strip()
        if fdef.length and len(trimmed) > fdef.length:
            return self._error(
                fdef,
                STRING_TOO_LONG,
                f"{fdef.label}: data value too large: {trimmed} (max length={fdef.length})",
                f"holds at most {fdef.length} characters; this value has {len(trimmed)}",
            )
        if fdef.restricted_picklist and fdef.picklist_values:
            allowed = {v.casefold() for v in fdef.picklist_values}
            parts = trimmed.split(";") if fdef.type == "multipicklist" else [trimmed]
            bad = [p for p in parts if p.strip().casefold() not in allowed]
            if bad:
                return self._error(
                    fdef,
                    BAD_PICKLIST,
                    f"{fdef.label}: bad value for restricted picklist field: {bad[0]}",
                    f"allows only {', '.join(fdef.picklist_values)}",
                )
        return None

    def _unreadable(self, fdef: FieldDescribe, value: str, why: str) -> RecordError:
        return self._error(
            fdef,
            UNREADABLE,
            f"Cannot deserialize instance of {fdef.type} from VALUE_STRING value {value}",
            why,
        )

    def _error(self, fdef: FieldDescribe, code: str, message: str, why: str) -> RecordError:
        return RecordError(
            code,
            f"{message} (caught by crm-export before sending: {self.sobject}.{fdef.name} {why})",
            (fdef.name,),
        )


def _is_number(text: str) -> bool:
    try:
        Decimal(text.strip())
    except InvalidOperation:
        return False
    return True


class BatchCheck:
    """``RowCheck`` over one batch, in source order: ``max_identical_errors`` rows in a row
    refused alike are a flood (a column in the wrong format, say), which stops the run as
    configuration before the batch is acknowledged, as a flood of refused requests does."""

    def __init__(self, check: RowCheck, limit: int) -> None:
        self.check = check
        self.flood = FloodGuard(limit)

    def __call__(self, payload: dict[str, Any]) -> dict[str, Any]:
        problems = self.check.problems(payload)
        self.flood.note(problems[0] if problems else None)
        if problems:
            raise MappingError(problems[0])
        return payload


class Presend:
    """Each stream's describe, asked once per run, and what it makes certain.

    ``batch_check`` fails a stream whose mapping names a field (or object) the org does not
    have, or an external ID field that is none, before any of its rows is sent: every
    request would be refused alike. The ``OrgMismatchError`` names the config key.
    """

    def __init__(self, sink: Sink, max_identical_errors: int) -> None:
        self.sink = sink
        self.limit = max_identical_errors
        self._checks: dict[str, RowCheck] = {}

    def batch_check(self, plan: StreamPlan) -> BatchCheck:
        check = self._checks.get(plan.name)
        if check is None:
            describe = self.sink.describe(plan.fmap.sobject)
            fatal = [p for p in mapping_problems(plan.fmap, describe) if p.fatal]
            if fatal:
                raise mismatch(plan, fatal)
            assert describe is not None
            check = self._checks[plan.name] = RowCheck(plan.fmap, describe)
        return BatchCheck(check, self.limit)


def mismatch(plan: StreamPlan, problems: Sequence[MappingProblem]) -> OrgMismatchError:
    where = plan.config_path or f'stream "{plan.name}"'
    first, rest = problems[0], problems[1:]
    message = first.message + "".join(f"; also {where}.{p.key}: {p.message}" for p in rest)
    return OrgMismatchError(
        f"{where}.{first.key}", f"{message}. Nothing was sent; fix the mapping, then run again."
    )
