"""Read archived export files as rows: CSV/XLSX as (column name -> cell text), header order
kept; JSON Lines one row per record, a JSON array one row per element (the value as the row)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import sys
from collections.abc import Callable, Iterator, Sequence
from json.encoder import encode_basestring
from pathlib import Path
from typing import BinaryIO

import orjson

from resources import jsontext

CSV_FORMAT = "text/csv"
XLSX_FORMAT = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
JSON_FORMAT = "application/json"
JSONL_FORMAT = "application/x-ndjson"
TABULAR_FORMATS = frozenset({CSV_FORMAT, XLSX_FORMAT, JSON_FORMAT, JSONL_FORMAT})

Source = Path | Callable[[], BinaryIO]


def unique_header(header: Sequence[str]) -> list[str]:
    """Column names made unique (`a`, `a_2`, ...) so no cell is lost when rows become objects."""
    seen: dict[str, int] = {}
    out: list[str] = []
    for raw in header:
        name = raw if raw != "" else "column"
        if name in seen:
            seen[name] += 1
            candidate = f"{name}_{seen[name]}"
            while candidate in seen:
                seen[name] += 1
                candidate = f"{name}_{seen[name]}"
            name = candidate
        seen.setdefault(name, 1)
        out.append(name)
    return out


def _as_json_objects(rows: Iterator[list[str | None]]) -> Iterator[str]:
    """Each data row as the text of a JSON object (column name -> cell text, header order).

    The same text `json.dumps(dict, separators=(",", ":"), ensure_ascii=False)` gives, written
    by orjson (a CSV export can hold 300k rows; orjson escapes strings exactly as json does, and
    the cells are only strings and None). Where orjson refuses (a lone surrogate, which no
    UTF-8 file can hold) the row is built from the cells with json's own string encoder.
    """
    try:
        header = unique_header([c or "" for c in next(rows)])
    except StopIteration:
        return
    keys = [encode_basestring(name) + ":" for name in header]
    width = len(header)
    dumps = orjson.dumps
    for cells in rows:
        if len(cells) > width:
            # a ragged row: keep the surplus cells under positional names rather than drop them
            header = unique_header(header + [f"column_{i + 1}" for i in range(width, len(cells))])
            keys = [encode_basestring(name) + ":" for name in header]
            width = len(header)
        try:
            if len(cells) < width:
                yield dumps(dict(zip(header, cells + [None] * (width - len(cells))))).decode()
            else:
                yield dumps(dict(zip(header, cells))).decode()
        except TypeError:  # orjson.JSONEncodeError
            parts = [k + ("null" if c is None else encode_basestring(c))
                     for k, c in zip(keys, cells)]
            parts.extend(k + "null" for k in keys[len(cells):])
            yield "{" + ",".join(parts) + "}"


def _open(source: Source) -> BinaryIO:
    return source.open("rb") if isinstance(source, Path) else source()


def _csv_rows(source: Source) -> Iterator[list[str | None]]:
    # the csv module refuses a cell over 128 KiB by default (process-wide); any size is data
    if csv.field_size_limit() < sys.maxsize:
        csv.field_size_limit(sys.maxsize)
    # utf-8-sig: PostHog writes plain UTF-8, but a BOM from elsewhere must not end up in a column name
    with _open(source) as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as fh:
        yield from csv.reader(fh)


def _cell_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    return str(value)


def _xlsx_rows(source: Source) -> Iterator[list[str | None]]:
    # a file object, not the path: archived files have no extension and openpyxl judges by it
    with _open(source) as fh:
        yield from _workbook_rows(fh)


def _workbook_rows(fh: BinaryIO) -> Iterator[list[str | None]]:
    import openpyxl  # only XLSX exports need it

    workbook = openpyxl.load_workbook(fh, read_only=True, data_only=True)
    try:
        sheet = workbook.worksheets[0]
        for values in sheet.iter_rows(values_only=True):
            cells = [_cell_text(v) for v in values]
            while cells and cells[-1] is None:
                cells.pop()
            if cells:
                yield cells
    finally:
        workbook.close()


def _jsonl_rows(source: Source) -> Iterator[str]:
    """Each JSON Lines record as its JSON text (numbers exact, key order kept); blank lines are
    not records, and a line that is not JSON fails the whole file."""
    with _open(source) as fh:
        for line in fh:
            if line.strip():
                yield jsontext.dumps(jsontext.loads(line))


def _json_document_rows(source: Source) -> Iterator[str]:
    """A JSON array: one row per element; any other JSON document: one row, the document."""
    with _open(source) as fh:
        document = jsontext.loads(fh.read())
    for value in document if isinstance(document, list) else [document]:
        yield jsontext.dumps(value)


def iter_json_rows(source: Source, export_format: str) -> Iterator[str]:
    """Data rows of a CSV or XLSX file as JSON object text, header order kept (the header row is
    not a row); of a JSON Lines file, each record; of a JSON file, each element of its array.
    ``source`` is a local path or a function opening the file for binary reading."""
    if export_format == CSV_FORMAT:
        return _as_json_objects(_csv_rows(source))
    if export_format == XLSX_FORMAT:
        return _as_json_objects(_xlsx_rows(source))
    if export_format == JSONL_FORMAT:
        return _jsonl_rows(source)
    if export_format == JSON_FORMAT:
        return _json_document_rows(source)
    raise ValueError(f"not a tabular export format: {export_format!r}")
