"""Declarative record predicates, the condition language of validation rules and triggers.

A predicate is a table: a leaf ``{field, op, value | other_field, ignore_case}`` or a
combination ``{all = [...]}``, ``{any = [...]}``, ``{not = {...}}``. Like a Salesforce
validation rule, the rule *fires* (rejects the record) when its predicate is true.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

Record = Mapping[str, Any]
Predicate = Callable[[Record], bool]

UNARY_OPS = frozenset({"is_empty", "not_empty"})
BINARY_OPS = frozenset(
    {
        "eq",
        "ne",
        "lt",
        "le",
        "gt",
        "ge",
        "in",
        "not_in",
        "contains",
        "starts_with",
        "ends_with",
        "matches",
    }
)


def shown(value: Any) -> str:
    """``value`` as its user wrote it in JSON or TOML, for an error message: never a repr."""
    if isinstance(value, str):
        return f"'{value}'"
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except ValueError:
        return str(value)


@dataclass(frozen=True)
class PredicateError(Exception):
    problem: str

    def __str__(self) -> str:
        return self.problem


def _is_empty(value: Any) -> bool:
    return value is None or value == ""


def _fold(value: Any, ignore_case: bool) -> Any:
    if ignore_case and isinstance(value, str):
        return value.casefold()
    return value


def _compare(op: str, left: Any, right: Any) -> bool:
    if op == "eq":
        return bool(left == right)
    if op == "ne":
        return bool(left != right)
    if left is None or right is None:
        return False
    if op in {"in", "not_in"}:
        return (left in right) == (op == "in")
    if op in {"contains", "starts_with", "ends_with"}:
        if not isinstance(left, str):
            return False
        text = str(right)
        if op == "contains":
            return text in left
        return left.startswith(text) if op == "starts_with" else left.endswith(text)
    try:
        if op == "lt":
            return bool(left < right)
        if op == "le":
            return bool(left <= right)
        if op == "gt":
            return bool(left > right)
        if op == "ge":
            return bool(left >= right)
    except TypeError:
        return False
    raise PredicateError(f"unknown op {shown(op)}")


def compile_predicate(
    spec: Any, resolve_field: Callable[[str], str | None], where: str
) -> tuple[Predicate, Any]:
    """Compile ``spec``; ``resolve_field`` maps a field name to its canonical spelling.

    Returns the predicate and the spec with field names made canonical, or raises
    ``PredicateError`` naming ``where``.
    """
    if not isinstance(spec, Mapping):
        raise PredicateError(f"{where}: a predicate must be a table, got {shown(spec)}")
    combinators = [key for key in ("all", "any", "not") if key in spec]
    if combinators:
        if len(spec) != 1:
            raise PredicateError(
                f"{where}: {shown(combinators[0])} must be the only key of its table"
            )
        key = combinators[0]
        if key == "not":
            inner, inner_spec = compile_predicate(spec["not"], resolve_field, f"{where}.not")
            return (lambda record: not inner(record)), {"not": inner_spec}
        items = spec[key]
        if not isinstance(items, list) or not items:
            raise PredicateError(f"{where}.{key}: must be a non-empty list of predicates")
        compiled = [
            compile_predicate(item, resolve_field, f"{where}.{key}[{i}]")
            for i, item in enumerate(items)
        ]
        parts = [c[0] for c in compiled]
        specs = [c[1] for c in compiled]
        if key == "all":
            return (lambda record: all(p(record) for p in parts)), {"all": specs}
        return (lambda record: any(p(record) for p in parts)), {"any": specs}
    return _compile_leaf(spec, resolve_field, where)


def _compile_leaf(
    spec: Mapping[str, Any], resolve_field: Callable[[str], str | None], where: str
) -> tuple[Predicate, Any]:
    unknown = set(spec) - {"field", "op", "value", "other_field", "ignore_case"}
    if unknown:
        raise PredicateError(f"{where}: unknown keys {sorted(unknown)}")
    raw_field = spec.get("field")
    op = spec.get("op")
    if not isinstance(raw_field, str):
        raise PredicateError(f"{where}: 'field' is required")
    field = resolve_field(raw_field)
    if field is None:
        raise PredicateError(f"{where}: no field {shown(raw_field)}")
    if op not in UNARY_OPS | BINARY_OPS:
        known = ", ".join(sorted(UNARY_OPS | BINARY_OPS))
        raise PredicateError(f"{where}: 'op' must be one of {known}, got {shown(op)}")
    ignore_case = bool(spec.get("ignore_case", False))
    canonical: dict[str, Any] = {"field": field, "op": op}
    if ignore_case:
        canonical["ignore_case"] = True

    if op in UNARY_OPS:
        want_empty = op == "is_empty"
        return (lambda record: _is_empty(record.get(field)) == want_empty), canonical

    if "other_field" in spec:
        other = resolve_field(str(spec["other_field"]))
        if other is None:
            raise PredicateError(f"{where}: no field {shown(spec['other_field'])}")
        canonical["other_field"] = other

        def compare_fields(record: Record) -> bool:
            return _compare(
                str(op),
                _fold(record.get(field), ignore_case),
                _fold(record.get(other), ignore_case),
            )

        return compare_fields, canonical

    if "value" not in spec:
        raise PredicateError(f"{where}: op {shown(op)} needs 'value' or 'other_field'")
    value = spec["value"]
    canonical["value"] = value
    if op in {"in", "not_in"}:
        if not isinstance(value, list):
            raise PredicateError(f"{where}: op {shown(op)} needs a list value")
        folded: Any = [_fold(v, ignore_case) for v in value]
    elif op == "matches":
        try:
            pattern = re.compile(str(value), re.IGNORECASE if ignore_case else 0)
        except re.error as exc:
            raise PredicateError(f"{where}: bad regex {shown(value)}: {exc}") from exc

        def matches(record: Record) -> bool:
            current = record.get(field)
            return isinstance(current, str) and pattern.search(current) is not None

        return matches, canonical
    else:
        folded = _fold(value, ignore_case)

    def compare_value(record: Record) -> bool:
        return _compare(str(op), _fold(record.get(field), ignore_case), folded)

    return compare_value, canonical
