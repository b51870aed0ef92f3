"""The checks of related objects: a stream's ``[streams.lookups]`` against its own keys, and
the streams' dependencies (``depends_on``, and those implied by lookups) against each other.

A lookup sets a lookup field through the parent's external ID; the parent must be written
first, so a child stream runs after every stream that exports its parents' object.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError

from crm_export.config.checks import _SF_NAME, Problems, problem
from crm_export.config.wording import kind, suggest
from crm_export.stream_order import DependencyCycle, dependency_order

if TYPE_CHECKING:
    from crm_export.config.models import StreamConfig

LOOKUP_EXAMPLE = (
    'AccountId = { sobject = "Account", external_id_field = "External_Id__c", '
    'column = "account_id" }'
)


def lookups_table(
    raw: object,
    model: type[BaseModel],
    context: Any,
    *,
    fields: Sequence[tuple[str, str]],
    external_id: str | None,
) -> dict[str, Any]:
    """``[streams.lookups]`` as {lookup field: ``model``}, every entry's problems reported at
    once, each at its own key (pydantic would stop at the first entry that is not a table)."""
    if isinstance(raw, Mapping) and all(isinstance(v, BaseModel) for v in raw.values()):
        return dict(raw)  # built in code
    if not isinstance(raw, Mapping):
        raise problem(
            "lookups_type",
            f"must be a table of lookup fields, e.g. {LOOKUP_EXAMPLE}; got {kind(raw)}",
        )
    found = Problems()
    lookups: dict[str, Any] = {}
    mapped = {field.lower(): field for field, _ in fields}
    seen: dict[str, str] = {}
    for field, value in raw.items():
        clash = _clash(field, mapped, seen, external_id)
        if clash is not None:
            found.add(clash, field)
        elif not _SF_NAME.fullmatch(field):
            found.add(
                problem(
                    "lookup_name",
                    "is not a Salesforce field API name (letters, digits and _, starting "
                    "with a letter)",
                ),
                field,
            )
        elif not isinstance(value, Mapping):
            found.add(
                problem(
                    "lookup_type",
                    f"must be a table naming the parent, e.g. {LOOKUP_EXAMPLE}; got {kind(value)}",
                ),
                field,
            )
        else:
            try:
                lookups[field] = model.model_validate(value, context=context)
            except ValidationError as exc:
                found.add_all(exc, field)
    found.raise_if_any()
    return lookups


def stream_names(raw: object) -> tuple[str, ...]:
    """``depends_on`` as a tuple of names (TOML gives a list)."""
    if isinstance(raw, tuple):
        return raw
    if not isinstance(raw, list) or not all(isinstance(n, str) and n.strip() for n in raw):
        raise problem(
            "depends_on_type",
            f'must be an array of stream names, e.g. depends_on = ["accounts"]; got {kind(raw)}',
        )
    return tuple(raw)


def _clash(
    field: str, mapped: Mapping[str, str], seen: dict[str, str], external_id: str | None
) -> PydanticCustomError | None:
    """Why ``field`` cannot be a lookup of this stream, if it cannot."""
    folded = field.lower()  # Salesforce API names ignore case
    if folded in seen:
        return problem("lookup_twice", f"is the same field as lookups.{seen[folded]}")
    seen[folded] = field
    if folded in mapped:
        return problem(
            "lookup_in_fields",
            f"is also mapped in fields ({mapped[folded]}); a lookup field is set through "
            "its parent's external ID, so map it in one place only: remove it from "
            "[streams.fields]",
        )
    if external_id is not None and folded == external_id.lower():
        return problem(
            "lookup_on_external_id",
            "is the stream's own external_id_field, which crm-export fills from key; a "
            "lookup must be a field that points at another record",
        )
    if folded == "id":
        return problem("lookup_is_id", "Id is the record's own id, not a lookup field")
    return None


def dependencies(streams: Sequence[StreamConfig]) -> dict[str, list[str]]:
    """stream -> the streams it runs after: its ``depends_on``, and every other stream that
    exports the object one of its lookups points at."""
    exporters: dict[str, list[str]] = {}
    for stream in streams:
        exporters.setdefault(stream.sobject.lower(), []).append(stream.name)
    needs: dict[str, list[str]] = {}
    for stream in streams:
        parents = list(stream.depends_on)
        for lookup in stream.lookups.values():
            parents += [p for p in exporters.get(lookup.sobject.lower(), []) if p != stream.name]
        needs[stream.name] = list(dict.fromkeys(parents))
    return needs


def dependency_problems(streams: Sequence[StreamConfig], raw: Sequence[Any]) -> Problems:
    """``depends_on`` entries that name no stream, and a cycle, each at the stream's key."""
    found = Problems()
    names = [s.name for s in streams]
    for index, stream in enumerate(streams):
        for other in stream.depends_on:
            if other not in names:
                found.add(_unknown_stream(other, names), index, "depends_on")
    if found.errors:
        return found
    try:
        dependency_order(names, dependencies(streams))
    except DependencyCycle as cycle:
        first = names.index(cycle.cycle[0])
        explicit = "depends_on" in raw[first] if isinstance(raw[first], Mapping) else False
        found.add(
            problem(
                "dependency_cycle",
                f"a dependency cycle: {cycle} (through depends_on, and lookups into an object "
                "another stream exports); parents must be exported before their children, so "
                "one of these must not wait for the other",
            ),
            first,
            "depends_on" if explicit else "lookups",
        )
    return found


def _unknown_stream(name: str, names: Sequence[str]) -> PydanticCustomError:
    return problem(
        "depends_on_unknown",
        f"names no stream: {name!r}{suggest(name, names)} (streams: {', '.join(names)})",
    )
