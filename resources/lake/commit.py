"""How a sync becomes visible: one Delta commit per table, readers see the old version or the new.

A table's commit is atomic (delta-rs writes the data files, then one log entry names them);
several tables are committed one after another in the order the caller gives, so the caller
orders them to be safe at every boundary (e.g. an export's rows before the record that says it
is archived). A process killed between two commits leaves every table at its old version or its
new one, and the next sync redoes what is missing: ``replace_keys`` and ``merge`` commits are
idempotent, ``snapshot`` commits replace the whole table.

Each commit records, in the Delta log's commit info, the asset, the run and ``synced_at``: that
is where "last sync per asset" is read from (the DuckDB file is derived and disposable).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import TableNotFoundError

from resources.lake import faults
from resources.lake.errors import LakeError
from resources.lake.location import Location
from resources.lake.spec import TableSpec
from resources.lake.staging import StagedTable

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
    options = location.storage_options
    existing = open_table(location, uri)
    require_scope_column(location, spec, existing, uri)
    scoped = scope_predicate(spec, staged.scope_value)
    if spec.mode == "snapshot" and existing is not None and scoped:
        # this scope's rows are replaced; every other scope's stay as they were
        write_deltalake(
            existing, staged.batches(), mode="overwrite", schema_mode="merge", predicate=scoped,
            storage_options=options, commit_properties=props,
        )
        return _version(location, uri)
    if existing is None and scoped:
        # Append, not overwrite: another source's sync may create the table meanwhile, and an
        # overwrite would then replace its rows; appending our scope's rows is right either way.
        write_deltalake(
            uri, staged.batches(), mode="append", description=spec.description or None,
            storage_options=options, configuration=configuration, commit_properties=props,
        )
        return _version(location, uri)
    if spec.mode == "snapshot" or existing is None:
        # a snapshot replaces the table; a keyed table's first commit creates it
        write_deltalake(
            uri, staged.batches(), mode="overwrite", schema_mode="overwrite",
            description=spec.description or None, storage_options=options,
            configuration=configuration if existing is None else None, commit_properties=props,
        )
        return _version(location, uri)
    if spec.mode == "merge":
        if not staged.rows_written:
            return None
        predicate = " AND ".join(f"(t.{k} IS NOT DISTINCT FROM s.{k})" for k in spec.match_key)
        (
            existing.merge(staged.batches(), predicate, source_alias="s", target_alias="t",
                           merge_schema=True, commit_properties=props)
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
    write_deltalake(
        existing, staged.batches(), mode="overwrite", schema_mode="merge",
        predicate=" AND ".join(filter(None, [
            scoped, f"{column} IN ({', '.join(_sql_value(v) for v in values)})"])),
        storage_options=options, commit_properties=props,
    )
    return _version(location, uri)


def require_scope_column(location: Location, spec: TableSpec, existing: DeltaTable | None,
                         uri: str) -> None:
    """Refuse a scoped commit to a table written before it was scoped (its rows would mix)."""
    if spec.scope is not None and existing is not None \
            and spec.scope not in existing.schema().to_arrow().names:
        raise LakeError(
            f"{spec.name}: the table at {uri} has no {spec.scope} column (written before "
            f"tables were scoped); migrate it first (Lake.add_scope with its one project id)")


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
                    storage_options=location.storage_options, commit_properties=props)
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
