"""How a sync becomes visible: one Delta commit per table, readers see the old version or the new.

A table's commit is atomic: the data files are put in the table's directory first (unreferenced,
so no reader sees them; vacuum removes them if the commit never comes), then one log entry names
them. A snapshot, and rows for keys no current file holds, are committed by adding the staged
files as they are (encoded once, by pyarrow); a merge, and a replacement of rows some current
file holds, go through delta-rs's own merge and predicate overwrite. A scoped table
(``TableSpec.scope``) is shared by several sources: its snapshot replaces only its scope's rows
(the files holding only its rows are removed and the staged files added, in one commit; where a
compaction merged scopes into one file, a delta-rs overwrite with the predicate
``scope = value``), its first commit appends (another source may create the table at the same
moment), merges and ``replace_keys`` match within the scope.

Several tables are committed one after another in the order the caller gives, so the caller
orders them to be safe at every boundary (e.g. an export's rows before the record that says it
is archived). A process killed between two commits leaves every table at its old version or its
new one, and the next sync redoes what is missing: ``replace_keys`` and ``merge`` commits are
idempotent, ``snapshot`` commits replace the whole table.

Each commit records, in the Delta log's commit info, the asset, the run and ``synced_at``: that
is where "last sync per asset" is read from (the DuckDB file is derived and disposable).
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, WriterProperties, write_deltalake
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import DeltaError, TableNotFoundError
from deltalake.transaction import AddAction, RemoveAction, create_table_with_add_actions

from resources.lake import faults
from resources.lake.errors import LakeError
from resources.lake.location import Location
from resources.lake.spec import TableSpec
from resources.lake.staging import BATCH_ROWS, StagedTable

logger = logging.getLogger(__name__)

META_PREFIX = "posthog_pipeline."


@dataclass(frozen=True)
class Committed:
    """One table's commit: the version it made (None when there was nothing to commit)."""

    name: str
    version: int | None
    rows_written: int
    table_uri: str


def table_uri(location: Location, schema: str, table: str) -> str:
    return location.join(schema, table)


def open_table(location: Location, uri: str, version: int | None = None) -> DeltaTable | None:
    """The Delta table at ``uri`` (its latest version unless ``version``), None if none yet."""
    try:
        return DeltaTable(uri, version=version, storage_options=location.storage_options)
    except TableNotFoundError:
        return None


def commit_properties(asset: str | None, run_id: str | None, synced_at: datetime,
                      rows_written: int) -> CommitProperties:
    meta = {
        f"{META_PREFIX}synced_at": synced_at.isoformat(),
        f"{META_PREFIX}rows_written": str(rows_written),
    }
    if asset:
        meta[f"{META_PREFIX}asset"] = asset
    if run_id:
        meta[f"{META_PREFIX}run_id"] = run_id
    return CommitProperties(custom_metadata=meta)


def writer_properties(row_group_rows: int = BATCH_ROWS) -> WriterProperties:
    """How delta-rs writes a table's files (a merge, an overwrite, a compaction): row groups of
    at most `row_group_rows`, as staging writes them. Its default, a million rows to a row
    group, is more than DuckDB may hold here (the history's changes are computed within
    128 MB, and DuckDB reads a row group's column at once)."""
    return WriterProperties(max_row_group_size=row_group_rows, compression="ZSTD")


def commit(location: Location, schema: str, staged: StagedTable, *, asset: str | None,
           run_id: str | None, configuration: dict[str, str] | None = None) -> Committed:
    """Commit one staged table to its Delta table as its spec's mode says; one log entry."""
    spec = staged.spec
    uri = table_uri(location, schema, spec.name)
    props = commit_properties(asset, run_id, staged.synced_at, staged.rows_written)
    faults.point(f"before_commit:{spec.name}")
    try:
        version = _write(location, uri, spec, staged, props, configuration)
    except LakeError:
        raise
    except Exception as exc:
        raise LakeError(f"{spec.name}: the Delta commit to {uri} failed: {exc}") from exc
    faults.point(f"after_commit:{spec.name}")
    return Committed(spec.name, version, staged.rows_written, uri)


def _write(location: Location, uri: str, spec: TableSpec, staged: StagedTable,
           props: CommitProperties, configuration: dict[str, str] | None) -> int | None:
    existing = open_table(location, uri)
    require_scope_column(location, spec, existing, uri)
    scoped = scope_predicate(spec, staged.scope_value)
    if spec.mode == "snapshot" and existing is not None and scoped:
        # this scope's rows are replaced; every other scope's stay as they were. When each file
        # holding this scope holds nothing else (always, but after a compaction merged several
        # scopes' files), the commit removes those files and adds the staged ones as they are;
        # otherwise delta-rs rewrites what the other scopes keep (a predicate overwrite).
        own = _files_only_of(existing, spec.scope, staged.scope_value)  # type: ignore[arg-type]
        if own is not None:
            return add_files(location, uri, staged.files, spec, props, mode="append",
                             existing=existing, remove=own)
        write_deltalake(
            existing, staged.batches(), mode="overwrite", schema_mode="merge", predicate=scoped,
            storage_options=location.storage_options, commit_properties=props,
            writer_properties=writer_properties(staged.rows_per_batch()),
        )
        return _version(location, uri)
    if existing is None and scoped:
        # Append, not overwrite: another source's sync may create the table meanwhile, and an
        # overwrite would then replace its rows; appending our scope's rows is right either way
        # (a creation that lost the race fails and is redone, see lake._on_conflict_retry).
        return add_files(location, uri, staged.files, spec, props, mode="append",
                         existing=None, configuration=configuration)
    if spec.mode == "snapshot" or existing is None:
        # an unscoped snapshot replaces the table; a keyed table's first commit creates it
        return add_files(location, uri, staged.files, spec, props, mode="overwrite",
                         existing=existing, configuration=configuration)
    if spec.mode == "merge":
        if not staged.rows_written:
            return None
        predicate = " AND ".join(f"(t.{k} IS NOT DISTINCT FROM s.{k})" for k in spec.match_key)
        (
            existing.merge(staged.batches(), predicate, source_alias="s", target_alias="t",
                           merge_schema=True, commit_properties=props,
                           writer_properties=writer_properties(staged.rows_per_batch()))
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute()
        )
        return _version(location, uri)
    # replace_keys: the rows of every key value this sync covers are replaced by its rows
    values = staged.key_values()
    if not values:
        return None
    (column,) = spec.key
    if not _may_hold(existing, column, values):
        # the common case (rows of exports archived for the first time): nothing to replace
        return add_files(location, uri, staged.files, spec, props, mode="append",
                         existing=existing)
    write_deltalake(
        existing, staged.batches(), mode="overwrite", schema_mode="merge",
        predicate=" AND ".join(filter(None, [
            scoped, f"{column} IN ({', '.join(_sql_value(v) for v in values)})"])),
        storage_options=location.storage_options, commit_properties=props,
        writer_properties=writer_properties(staged.rows_per_batch()),
    )
    return _version(location, uri)


def add_files(location: Location, uri: str, files: list[Path], spec: TableSpec,
              props: CommitProperties, *, mode: str, existing: DeltaTable | None,
              configuration: dict[str, str] | None = None,
              remove: list[RemoveAction] | None = None) -> int:
    """Put local Parquet files into the table and commit them in one log entry (``overwrite``
    also removes every current file from the new version; ``remove``, with ``append``, the
    files named). Creating the table, ``append`` fails if another commit created it first."""
    moved: list[tuple[Path, str]] = []
    try:
        actions: list[AddAction | RemoveAction] = []
        for path in files:
            action, target = _put(location, uri, path, spec)
            actions.append(action)
            moved.append((path, target))
        schema = DeltaSchema.from_arrow(spec.full_schema)
        if existing is None:
            try:
                create_table_with_add_actions(
                    uri, schema, actions, mode="error" if mode == "append" else "overwrite",
                    description=spec.description or None,
                    configuration=configuration, storage_options=location.storage_options,
                    commit_properties=props)
            except DeltaError as exc:
                if mode != "append" or "already exists" not in str(exc):
                    raise
                # another source's commit created the table since we looked: append to it
                created = open_table(location, uri)
                assert created is not None
                created.create_write_transaction(actions, mode="append", schema=schema,
                                                 commit_properties=props)
        else:
            existing.create_write_transaction([*actions, *(remove or [])], mode=mode,
                                              schema=schema, commit_properties=props)
    except BaseException:
        # the commit did not happen: the staged files go back where they were, so that a
        # retry (a concurrent commit won, see lake._on_conflict_retry) commits them again
        _put_back(location, moved)
        raise
    return _version(location, uri)


def _put_back(location: Location, moved: list[tuple[Path, str]]) -> None:
    if not location.is_local:
        return  # uploaded copies: the staged files are still there
    for path, target in moved:
        try:
            if not path.exists():
                os.replace(target, path)
        except OSError:
            logger.warning("could not move %s back to %s", target, path)


def _put(location: Location, uri: str, path: Path, spec: TableSpec) -> tuple[AddAction, str]:
    """Move (local) or upload (S3) one staged file into the table; its add action and the
    file's path in the table."""
    name = f"part-{uuid.uuid4()}.zstd.parquet"
    metadata = pq.read_metadata(path)
    size = path.stat().st_size
    target = location.fs_path(f"{uri}/{name}")
    if location.is_local:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(path, target)
        except OSError:  # another filesystem: copy, then the staged file goes with its dir
            shutil.copyfile(path, target)
        with open(target, "rb") as f:
            os.fsync(f.fileno())
    else:
        with path.open("rb") as src, location.filesystem.open_output_stream(target) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return AddAction(name, size, {}, int(os.stat(target).st_mtime * 1000) if location.is_local
                     else int(datetime.now().timestamp() * 1000), True,
                     _stats(metadata, spec)), target


def _stats(metadata: pq.FileMetaData, spec: TableSpec) -> str:
    """Delta file statistics: the row count, and min/max/null count of the scope and key
    columns (what replace_keys, merges and scoped overwrites use to skip files)."""
    mins: dict = {}
    maxs: dict = {}
    nulls: dict = {}
    names = metadata.schema.names
    for column in spec.match_key:
        i = names.index(column)
        lo = hi = None
        count = 0
        for g in range(metadata.num_row_groups):
            stats = metadata.row_group(g).column(i).statistics
            if stats is None or not stats.has_min_max:
                lo = hi = None
                break
            lo = stats.min if lo is None else min(lo, stats.min)
            hi = stats.max if hi is None else max(hi, stats.max)
            count += stats.null_count or 0
        if lo is not None and isinstance(lo, int | str):
            mins[column], maxs[column], nulls[column] = lo, hi, count
    stats = {"numRecords": metadata.num_rows}
    if mins:
        stats.update(minValues=mins, maxValues=maxs, nullCount=nulls)
    return json.dumps(stats)


def _files_only_of(table: DeltaTable, column: str, value: int | str
                   ) -> list[RemoveAction] | None:
    """Remove actions for the files that may hold ``value`` in ``column``, when each of them
    holds nothing else (by its statistics); None when one may hold other values too."""
    actions = pa.table(table.get_add_actions(flatten=True))
    lo_name, hi_name, nulls_name = f"min.{column}", f"max.{column}", f"null_count.{column}"
    if actions.num_rows and not {lo_name, hi_name, nulls_name} <= set(actions.column_names):
        return None
    removes = []
    now = int(time.time() * 1000)
    for row in actions.to_pylist():
        lo, hi, nulls = row[lo_name], row[hi_name], row[nulls_name]
        if lo is None or hi is None:
            if row["num_records"] and nulls != row["num_records"]:
                return None  # no statistics: it may hold anything
            continue  # only nulls (or empty): none of this scope's rows
        if not lo <= value <= hi:
            continue
        if lo != hi or nulls:
            return None
        removes.append(RemoveAction(path=row["path"], data_change=True, deletion_timestamp=now,
                                    size=row["size_bytes"], partition_values={}))
    return removes


def _may_hold(table: DeltaTable, column: str, values: list) -> bool:
    """Whether any current file may hold one of ``values`` in ``column`` (by its statistics;
    a file without them may hold anything)."""
    actions = pa.table(table.get_add_actions(flatten=True))
    if actions.num_rows == 0:
        return False
    lo_name, hi_name = f"min.{column}", f"max.{column}"
    if lo_name not in actions.column_names or hi_name not in actions.column_names:
        return True
    lows, highs = actions.column(lo_name).to_pylist(), actions.column(hi_name).to_pylist()
    ordered = sorted(values)
    for lo, hi in zip(lows, highs, strict=True):
        if lo is None or hi is None:
            return True
        i = bisect.bisect_left(ordered, lo)
        if i < len(ordered) and ordered[i] <= hi:
            return True
    return False


def require_scope_column(location: Location, spec: TableSpec, existing: DeltaTable | None,
                         uri: str) -> None:
    """Refuse a scoped commit to a table written before it was scoped (its rows would mix)."""
    if spec.scope is not None and existing is not None \
            and spec.scope not in existing.schema().to_arrow().names:
        raise LakeError(
            f"{spec.name}: the table at {uri} has no {spec.scope} column (written before "
            f"tables were scoped); migrate it first: `posthog-pipeline migrate-lake "
            f"--project-id <id>` (the project it was synced from)")


def add_scope_column(location: Location, schema: str, spec: TableSpec, value: int | str, *,
                     run_id: str | None = None) -> bool:
    """Give a table written before it was scoped its scope column, every row set to ``value``
    (the one source it held), in one overwrite commit; False when there is nothing to do (no
    table yet, or it has the column already). Time travel keeps the unscoped versions."""
    import pyarrow as pa

    assert spec.scope is not None
    uri = table_uri(location, schema, spec.name)
    existing = open_table(location, uri)
    if existing is None or spec.scope in existing.schema().to_arrow().names:
        return False
    target = spec.full_schema
    scope_type = target.field(spec.scope).type
    dataset = existing.to_pyarrow_dataset()

    def batches():
        for batch in dataset.to_batches():
            columns = []
            for field in target:
                if field.name == spec.scope:
                    columns.append(pa.array([value] * batch.num_rows, type=scope_type))
                elif field.name in batch.schema.names:
                    columns.append(batch.column(field.name).cast(field.type))
                else:
                    columns.append(pa.nulls(batch.num_rows, field.type))
            yield pa.RecordBatch.from_arrays(columns, schema=target)

    rows = existing.to_pyarrow_dataset().count_rows()
    props = CommitProperties(custom_metadata={
        f"{META_PREFIX}operation": f"add scope column {spec.scope} = {value}",
        f"{META_PREFIX}rows_written": str(rows),
        **({f"{META_PREFIX}run_id": run_id} if run_id else {}),
    })
    write_deltalake(existing, pa.RecordBatchReader.from_batches(target, batches()),
                    mode="overwrite", schema_mode="overwrite",
                    storage_options=location.storage_options, commit_properties=props,
                    writer_properties=writer_properties())
    return True


def scope_predicate(spec: TableSpec, value: int | str | None) -> str | None:
    """``scope = value`` as a Delta predicate, None for an unscoped table."""
    if spec.scope is None:
        return None
    return f"{spec.scope} = {_sql_value(value)}"


def _version(location: Location, uri: str) -> int:
    table = open_table(location, uri)
    assert table is not None
    return table.version()


def _sql_value(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise LakeError(f"keys and scopes must be integer or text, not {value!r}")
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("'", "''") + "'"
