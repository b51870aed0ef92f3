"""Bulk API 2.0 CSV: the rows a job uploads, and its result files read back.

One NULL policy on both paths: a payload value None (JSON null in Collections) is ``#N/A``
here, which Salesforce reads as "set the field to null"; an empty cell would mean "leave the
field as it is" (salesforce-api.md B6). An empty string is sent as ``#N/A`` too: Salesforce
stores an empty text value as null, so that is what Collections' ``""`` does. A lookup set by
the parent's external ID is the column ``Account.External_Id__c``; clearing it sends
``#N/A`` in the lookup field's own column (``AccountId``), as Collections sends
``"AccountId": null``. Values are what the payload already holds: dates ``YYYY-MM-DD``,
datetimes ``YYYY-MM-DDTHH:MM:SS.sssZ`` (both forms Bulk CSV accepts), booleans ``true`` and
``false``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from crm_export.mapping import FieldMap
from crm_export.ports import RecordError

NULL_CELL = "#N/A"
ERROR_COLUMN = "sf__Error"
# Upload at most 100 MB of CSV: Salesforce takes 150 MB after base64, which adds about 50%
# (upload-job-data: "upload data that does not exceed 100 MB").
MAX_UPLOAD_BYTES = 100 * 1024 * 1024


def header(fmap: FieldMap) -> list[str]:
    """The job's columns: the external ID, the mapped fields, then each lookup's
    ``Relationship.ExternalId`` column and its field (for clearing it)."""
    columns = [fmap.external_id_field, *(f for f, _ in fmap.fields)]
    for lookup in fmap.lookups:
        columns += [f"{lookup.relationship}.{lookup.external_id_field}", lookup.field]
    return list(dict.fromkeys(columns))


def bulk_ready(fmap: FieldMap) -> str | None:
    """Why this mapping cannot go through Bulk CSV, or None. A polymorphic lookup names its
    parent's type in a nested ``attributes``, which a CSV column header cannot carry here."""
    for lookup in fmap.lookups:
        if lookup.polymorphic:
            return f"the lookup {lookup.field} is polymorphic"
    return None


def cell(value: Any) -> str:
    if value is None or value == "":
        return NULL_CELL
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, float):
        # Plain digits: no exponent, which a number field may not read.
        return format(Decimal(repr(value)), "f")
    return str(value)


def row_cells(fmap: FieldMap, payload: Mapping[str, Any]) -> list[str]:
    """One CSV row for the payload ``build_payload`` made (the same Collections sends)."""
    cells = [cell(payload[fmap.external_id_field])]
    cells += [cell(payload.get(f)) for f, _ in fmap.fields]
    for lookup in fmap.lookups:
        parent = payload.get(lookup.relationship)
        if isinstance(parent, Mapping):
            cells += [cell(parent.get(lookup.external_id_field)), ""]
        else:
            cells += ["", NULL_CELL]  # the lookup field itself is cleared
    return cells


def csv_line(cells: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(cells)
    return out.getvalue()


def header_line(fmap: FieldMap) -> str:
    return csv_line(header(fmap))


@dataclass(frozen=True)
class ResultRow:
    """One row of a result file: the record's external ID, its error (None: accepted),
    and the cells as uploaded (what ExportErrors shows as the payload)."""

    external_id: str
    error: RecordError | None
    cells: dict[str, str | None]


def read_results(
    text: str, external_id_field: str, *, with_cells: bool = True
) -> Iterator[ResultRow]:
    """The rows of a successfulResults, failedResults or unprocessedrecords CSV. Columns
    are matched by name (sf__ columns first, then the uploaded ones, in any order);
    ``with_cells`` off leaves ``cells`` empty (a job's successes need only their key)."""
    reader = csv.reader(_lines(text))
    names = next(reader, None)
    if not names:
        return
    wanted = external_id_field.casefold()
    try:
        key_at = next(i for i, n in enumerate(names) if n.casefold() == wanted)
    except StopIteration:
        raise ValueError(f"the result file has no {external_id_field} column") from None
    error_at = names.index(ERROR_COLUMN) if ERROR_COLUMN in names else None
    for row in reader:
        if not row:
            continue
        error = split_error(row[error_at]) if error_at is not None else None
        cells = {
            n: (None if v == NULL_CELL else v)
            for n, v in zip(names, row, strict=False)
            if with_cells and not n.startswith("sf__") and v != ""
        }
        yield ResultRow(row[key_at], error, cells)


def _lines(text: str) -> Iterator[str]:
    """The lines of ``text``, ends kept (a quoted cell may span lines), one at a time: an
    io.StringIO of a 100,000-row result file would hold a second copy of it, four bytes a
    character."""
    start = 0
    while start < len(text):
        end = text.find("\n", start)
        if end < 0:
            yield text[start:]
            return
        yield text[start : end + 1]
        start = end + 1


def split_error(text: str) -> RecordError:
    """An ``sf__Error`` cell, ``CODE:message:fields --``, as Collections reports an error:
    ``REQUIRED_FIELD_MISSING:Required fields are missing: [LastName]:LastName --`` is code
    REQUIRED_FIELD_MISSING, message "Required fields are missing: [LastName]", fields
    (LastName,). The message may hold colons; the fields come after the last one."""
    text = text.strip()
    code, sep, rest = text.partition(":")
    if not sep or not code or " " in code:
        return RecordError("UNKNOWN_EXCEPTION" if not text else "BULK_ERROR", text)
    fields: tuple[str, ...] = ()
    if rest.endswith("--"):
        message, colon, names = rest[:-2].rstrip().rpartition(":")
        if colon:
            fields = tuple(n.strip() for n in names.split(",") if n.strip())
        else:
            message = names
    else:
        message = rest
    return RecordError(code, message.strip(), fields)
