"""The DuckDB warehouse: a view per lake table over its current Delta version's Parquet files.

The warehouse is derived: the lake commits first, then the views are pointed at the tables'
current files. It never decides what a sync keeps. If another process holds the DuckDB file
(a notebook, a BI tool) for longer than ``BUSY_TIMEOUT``, the refresh is skipped with a
warning: the data is committed in the lake, and the next refresh (any sync's, or
``posthog-pipeline rebuild-views``) points every view at its table's current version.

A view lists its table's current files, which compaction (``maintenance.py``) keeps few; no
DuckDB extension is needed for a local lake (an S3 lake's files are read through the pyarrow
filesystem registered on the connection, see ``location.py``).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from resources.lake.errors import LakeBusyError, LakeError, identifier, literal, quote
from resources.lake.location import Location
from resources.lake.spec import json_columns_of
from resources.lake.staging import read_parquet_sql

logger = logging.getLogger(__name__)

BUSY_TIMEOUT = 10.0  # seconds a view refresh waits for another process to let go of the file
READ_TIMEOUT = 30.0  # seconds a read waits for a writer


@dataclass(frozen=True)
class TableView:
    """What a view needs: the table's name, its current files, stored schema and description."""

    name: str
    files: Sequence[str]
    schema: pa.Schema
    description: str = ""
    version: int | None = None


_DUCKDB_TYPES = {
    pa.int64(): "BIGINT", pa.int32(): "INTEGER", pa.int16(): "SMALLINT", pa.int8(): "TINYINT",
    pa.float64(): "DOUBLE", pa.float32(): "FLOAT", pa.bool_(): "BOOLEAN",
    pa.string(): "VARCHAR", pa.large_string(): "VARCHAR", pa.binary(): "BLOB",
    pa.date32(): "DATE",
}


def _duckdb_type(arrow_type: pa.DataType) -> str:
    if pa.types.is_timestamp(arrow_type):
        return "TIMESTAMPTZ" if arrow_type.tz else "TIMESTAMP"
    if pa.types.is_string_view(arrow_type):
        return "VARCHAR"
    try:
        return _DUCKDB_TYPES[arrow_type]
    except KeyError:
        raise LakeError(f"no DuckDB type for Arrow type {arrow_type}") from None


def empty_relation(schema: pa.Schema) -> str:
    """SQL for a relation with ``schema``'s columns and no rows."""
    columns = ", ".join(f"CAST(NULL AS {_duckdb_type(f.type)}) AS {quote(f.name)}"
                        for f in schema)
    return f"(SELECT {columns} WHERE false)"


def view_sql(schema_name: str, view: TableView) -> str:
    """CREATE OR REPLACE VIEW over the table's current files; JSON columns typed JSON."""
    json_columns = set(json_columns_of(view.schema))
    select = ", ".join(
        f"CAST({quote(f.name)} AS JSON) AS {quote(f.name)}" if f.name in json_columns
        else f"CAST({quote(f.name)} AS {_duckdb_type(f.type)}) AS {quote(f.name)}"
        for f in view.schema
    )
    if view.files:
        source = read_parquet_sql(view.files)
    else:
        source = empty_relation(view.schema)
    return (f"CREATE OR REPLACE VIEW {quote(schema_name)}.{quote(view.name)} AS "
            f"SELECT {select} FROM {source}")


class Warehouse:
    """The DuckDB file with schema ``schema`` holding a view per lake table."""

    def __init__(self, path: Path, schema: str, location: Location) -> None:
        self.path = path
        self.schema = identifier(schema, "schema name")
        self.location = location

    def connect(self, *, read_only: bool, timeout: float = READ_TIMEOUT
                ) -> duckdb.DuckDBPyConnection:
        """A connection that can read the lake's files; retries a lock held by another process
        for up to ``timeout`` seconds, then raises LakeBusyError."""
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            try:
                con = duckdb.connect(str(self.path), read_only=read_only)
                return self.location.register(con)
            except (duckdb.IOException, duckdb.ConnectionException) as e:
                if not _is_lock_conflict(e):
                    raise LakeError(f"DUCKDB_DATABASE {self.path} cannot be opened: {e}") from e
                if time.monotonic() >= deadline:
                    raise LakeBusyError(
                        f"DUCKDB_DATABASE {self.path} is held by another process (gave up "
                        f"after {timeout:.0f}s): {e}"
                    ) from e
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.25)

    def refresh(self, views: Sequence[TableView], *, timeout: float = BUSY_TIMEOUT) -> bool:
        """Point the views at their tables' current files, in one transaction.

        Returns False (after a warning) if another process holds the file: the lake already
        holds the data; the next refresh catches up."""
        try:
            con = self.connect(read_only=False, timeout=timeout)
        except LakeBusyError as exc:
            logger.warning(
                "The lake is committed, but the DuckDB views were not refreshed: %s. Close the "
                "other connection; the next sync, or `posthog-pipeline rebuild-views`, points "
                "the views at the new data.", exc.description)
            return False
        try:
            con.execute("BEGIN TRANSACTION")
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(self.schema)}")
            for view in views:
                con.execute(view_sql(self.schema, view))
                if view.description:
                    con.execute(f"COMMENT ON VIEW {quote(self.schema)}.{quote(view.name)} "
                                f"IS {literal(view.description)}")
            con.execute("COMMIT")
        except BaseException:
            try:
                con.execute("ROLLBACK")
            except duckdb.Error:
                pass
            raise
        finally:
            con.close()
        return True

    def query_table(self, sql: str, params: Sequence[Any] | None = None, *,
                    max_rows: int | None = None) -> tuple[list[str], list[tuple], bool]:
        """(column names, rows, truncated) of one read-only statement; at most ``max_rows``."""
        if not self.path.exists():
            raise LakeError(f"DUCKDB_DATABASE {self.path} does not exist: run a sync first")
        con = self.connect(read_only=True)
        try:
            cursor = con.execute(sql, params) if params is not None else con.execute(sql)
            if cursor.description is None:
                return [], [], False
            columns = [d[0] for d in cursor.description]
            if max_rows is None:
                return columns, cursor.fetchall(), False
            rows = cursor.fetchmany(max_rows + 1)
            return columns, rows[:max_rows], len(rows) > max_rows
        except duckdb.Error as e:
            raise LakeError(f"query failed: {e}") from e
        finally:
            con.close()


def _is_lock_conflict(exc: Exception) -> bool:
    text = str(exc)
    # The second message is DuckDB refusing a read-write and a read-only connection to the same
    # file inside one process; it clears as soon as the other connection closes.
    return "Could not set lock" in text or "different configuration" in text
