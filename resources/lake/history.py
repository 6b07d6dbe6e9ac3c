"""Type-2 history of a snapshot table: one row per version of a row, kept for good.

At each snapshot commit the new rows are compared with the history's open versions
(``valid_to IS NULL``) on the table's key, by a 64-bit hash of the other columns (a collision,
about 2^-64 per changed row, would hide one change). Changed and new rows open a version
(``valid_from`` = the sync's ``synced_at``); changed and vanished rows close theirs
(``valid_to`` = the same instant). One Delta merge commits both; nothing is committed when
nothing changed, so the history grows only with changes.

The history is committed *before* its snapshot table: a kill between the two leaves the
snapshot table at its old version and the history already knowing the new one; the next sync
compares against that history and adds exactly what changed since.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from resources.lake import faults
from resources.lake.commit import (
    Committed,
    add_files,
    commit_properties,
    open_table,
    table_uri,
    writer_properties,
)
from resources.lake.errors import LakeError, literal, quote
from resources.lake.location import Location
from resources.lake.spec import SYNCED_AT, VALID_FROM, VALID_TO, TableSpec
from resources.lake.staging import (
    BATCH_BYTES,
    BATCH_ROWS,
    StagedTable,
    parquet_list,
    read_parquet_sql,
)

# DuckDB's memory (it spills the rest) to write the first history, and to compute the changes
# after it; more when a row group needs it (see _bound)
_FIRST_MEMORY = 48 << 20
_CHANGES_MEMORY = 128 << 20


def commit_history(location: Location, schema: str, staged: StagedTable, work_dir: Path, *,
                   asset: str | None, run_id: str | None,
                   configuration: dict[str, str] | None = None) -> Committed:
    """Merge the staged snapshot's changes into its history table (one commit, or none)."""
    spec = staged.spec
    history = spec.history_spec
    assert history is not None
    uri = table_uri(location, schema, history.name)
    at = staged.synced_at
    existing = open_table(location, uri)
    if existing is None:
        path = work_dir / f"history-{spec.name}-{os.getpid()}-{uuid.uuid4().hex[:12]}.parquet"
        _write_first(location, staged, history, path, work_dir / f"history-{spec.name}.spill")
        rows = pq.read_metadata(path).num_rows
        props = commit_properties(asset, run_id, at, rows)
        faults.point(f"before_commit:{history.name}")
        try:
            # a scoped history may be created by another source's sync at the same moment:
            # append (see commit._write), an overwrite would replace its rows
            version = add_files(location, uri, [path], history, props,
                                mode="overwrite" if spec.scope is None else "append",
                                existing=None, configuration=configuration)
        finally:
            path.unlink(missing_ok=True)
        faults.point(f"after_commit:{history.name}")
        return Committed(history.name, version, rows, uri)
    # matched on the scope too, and only this sync's scope's open versions are compared
    key = [quote(k) for k in spec.match_key]
    tracked = [quote(f.name) for f in spec.schema if f.name not in spec.match_key
               and f.name != SYNCED_AT]
    in_scope = (f" AND {quote(spec.scope)} = {literal(str(staged.scope_value))}"
                if spec.scope is not None else "")
    columns = [quote(f.name) for f in history.full_schema]
    new = f"read_parquet({parquet_list(staged.files)})" if staged.files else None
    spill = work_dir / f"history-{spec.name}.spill"
    con = location.register(duckdb.connect())
    try:
        _bound(con, spill, [*location.data_files(existing), *staged.files], _CHANGES_MEMORY)
        at_sql = f"{literal(at.isoformat())}::TIMESTAMPTZ"
        empty_new = (f"(SELECT {', '.join(quote(f.name) for f in spec.full_schema)} "
                     f"FROM {_open_source(con, location, existing, history)} WHERE false)")
        new = new or empty_new
        open_rows = (f"(SELECT * FROM {_open_source(con, location, existing, history)} "
                     f"WHERE {quote(VALID_TO)} IS NULL{in_scope})")
        keys = ", ".join(key)
        con.execute(
            "CREATE TEMP TABLE changed AS SELECT "
            + ", ".join(f"coalesce(n.{k}, o.{k}) AS {k}" for k in key)
            + f", o.{quote(VALID_FROM)} AS old_from, n.h IS NOT NULL AS in_new "
            f"FROM (SELECT {keys}, hash({', '.join(tracked)}) AS h FROM {new}) n "
            f"FULL OUTER JOIN (SELECT {keys}, {quote(VALID_FROM)}, "
            f"hash({', '.join(tracked)}) AS h FROM {open_rows}) o "
            f"USING ({keys}) WHERE n.h IS DISTINCT FROM o.h"
        )
        (changes,) = con.execute("SELECT count(*) FROM changed").fetchall()[0]
        if not changes:
            return Committed(history.name, None, 0, uri)
        on = " AND ".join(f"x.{k} IS NOT DISTINCT FROM c.{k}" for k in key)
        opened = (f"SELECT x.* EXCLUDE ({quote(SYNCED_AT)}), {at_sql} AS {quote(VALID_FROM)}, "
                  f"NULL::TIMESTAMPTZ AS {quote(VALID_TO)}, x.{quote(SYNCED_AT)} "
                  f"FROM {new} x SEMI JOIN (SELECT * FROM changed WHERE in_new) c ON {on}")
        closed = (f"SELECT x.* REPLACE ({at_sql} AS {quote(VALID_TO)}) FROM {open_rows} x "
                  f"SEMI JOIN (SELECT * FROM changed WHERE old_from IS NOT NULL) c "
                  f"ON {on} AND x.{quote(VALID_FROM)} = c.old_from")
        source = con.sql(f"SELECT {', '.join(columns)} FROM ({opened}) "
                         f"UNION ALL BY NAME SELECT {', '.join(columns)} FROM ({closed})")
        predicate = " AND ".join(
            f"(t.{k} IS NOT DISTINCT FROM s.{k})" for k in (*spec.match_key, VALID_FROM))
        props = commit_properties(asset, run_id, at, changes)
        rows = staged.rows_per_batch()
        faults.point(f"before_commit:{history.name}")
        (
            existing.merge(_cast(source, history, rows), predicate, source_alias="s",
                           target_alias="t", merge_schema=True, commit_properties=props,
                           writer_properties=writer_properties(rows))
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute()
        )
        faults.point(f"after_commit:{history.name}")
        return Committed(history.name, open_table(location, uri).version(), changes, uri)
    except duckdb.Error as exc:
        raise LakeError(f"{history.name}: computing the history's changes failed: {exc}") from exc
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)


def _write_first(location: Location, staged: StagedTable, history: TableSpec, path: Path,
                 spill: Path) -> None:
    """The first history: every staged row opens a version (``valid_from`` = the sync's
    ``synced_at``), written by DuckDB within 48 MB (a COPY at DuckDB's default 128 MB was a
    1M sync's peak, +43 MB), in row groups bounded as staging bounds them."""
    columns = [quote(f.name) for f in history.full_schema]
    at_sql = f"{literal(staged.synced_at.isoformat())}::TIMESTAMPTZ"
    select = ", ".join(
        f"{at_sql} AS {c}" if c == quote(VALID_FROM) else
        f"NULL::TIMESTAMPTZ AS {c}" if c == quote(VALID_TO) else c for c in columns)
    from resources.lake.warehouse import empty_relation

    source = (f"read_parquet({parquet_list(staged.files)})" if staged.files else
              f"(SELECT * FROM {empty_relation(staged.spec.full_schema)})")
    con = location.register(duckdb.connect())
    try:
        _bound(con, spill, staged.files, _FIRST_MEMORY)
        con.execute(f"COPY (SELECT {select} FROM {source}) TO {literal(str(path))} "
                    f"(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {BATCH_ROWS}, "
                    f"ROW_GROUP_SIZE_BYTES {BATCH_BYTES})")
    except duckdb.Error as exc:
        raise LakeError(f"{history.name}: writing the first history failed: {exc}") from exc
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)


def _bound(con, spill: Path, files: list[str] | list[Path], memory: int) -> None:
    """One thread, spilling to `spill` past `memory`, or past more when a file has a row group
    so large that DuckDB could not hold one of its columns in `memory` (DuckDB reads a row
    group's column at once: a row of megabytes of properties, or a file delta-rs wrote before
    it was told to keep row groups small, a million rows in one)."""
    if files:
        (largest,) = con.execute(
            "SELECT coalesce(max(total_compressed_size + total_uncompressed_size), 0) "
            f"FROM parquet_metadata({parquet_list(files)})").fetchone()
        memory = max(memory, 2 * int(largest) + memory // 2)
    con.execute(f"SET temp_directory = {literal(str(spill))}")
    con.execute(f"SET memory_limit = '{memory}B'")
    con.execute("SET threads = 1")
    con.execute("SET preserve_insertion_order = false")


def _open_source(con, location: Location, existing, history: TableSpec) -> str:
    """SQL for the history table's current rows (an empty relation before its first commit)."""
    files = location.data_files(existing) if existing is not None else []
    if files:
        return read_parquet_sql(files)
    from resources.lake.warehouse import empty_relation

    return empty_relation(history.full_schema)


def _cast(relation, spec: TableSpec, batch_rows: int):
    """The relation's batches of `batch_rows` in the spec's exact Arrow schema (DuckDB's types
    differ a little: JSON metadata, string views)."""
    schema = spec.full_schema
    reader = relation.to_arrow_reader(batch_rows)

    def batches():
        for batch in reader:
            yield pa.RecordBatch.from_arrays(
                [batch.column(f.name).cast(f.type) for f in schema], schema=schema)

    return pa.RecordBatchReader.from_batches(schema, batches())
