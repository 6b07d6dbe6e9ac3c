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
        predicate = " AND ".join(f"(t.{k} IS NOT DISTINCT FROM s.{k})" for k in spec.key)
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
        predicate=f"{column} IN ({', '.join(_sql_value(v) for v in values)})",
        storage_options=options, commit_properties=props,
    )
    return _version(location, uri)


def _version(location: Location, uri: str) -> int:
    table = open_table(location, uri)
    assert table is not None
    return table.version()


def _sql_value(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise LakeError(f"replace_keys supports integer or text keys, not {value!r}")
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("'", "''") + "'"
