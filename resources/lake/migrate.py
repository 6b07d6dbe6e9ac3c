"""The one-off move of a lake in the old snapshot format (Parquet snapshot directories and JSON
pointers under ``<schema>/_current/``) to Delta tables: ``posthog-pipeline migrate-lake``.

The old ``<schema>/`` directory is first renamed to ``<schema>.old-format-<time>/`` (kept as the
backup; delete it once satisfied), then every table its pointers name is written as a Delta
table with its rows as they were (``synced_at`` included). A snapshot table with a history
(``groups``) gets its type-2 history by replaying the retained snapshots oldest first.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
from deltalake import write_deltalake

from resources.lake.commit import commit_properties
from resources.lake.errors import LakeError
from resources.lake.history import commit_history
from resources.lake.lake import OLD_FORMAT_MARKER, Lake
from resources.lake.spec import SYNCED_AT, TableSpec
from resources.lake.staging import StagedTable, read_files


def migrate(lake: Lake, specs: Sequence[TableSpec], scope: int | str | None = None
            ) -> dict[str, int]:
    """Rewrite an old-format local lake as Delta tables; rows per table written. A table with
    a scope column gets ``scope`` in it for every row (the one source the old lake had)."""
    if scope is None and any(s.scope is not None for s in specs):
        raise LakeError("the tables have a scope column: say which value the old rows get")
    if not lake.location.is_local:
        raise LakeError("only a local lake can be in the old format; nothing to migrate")
    root = Path(lake.location.uri)
    old = root / lake.schema
    if not (old / OLD_FORMAT_MARKER).is_dir():
        raise LakeError(f"LAKE_ROOT {root} holds no old-format lake ({lake.schema}/"
                        f"{OLD_FORMAT_MARKER}/ is missing): nothing to migrate")
    backup = root / f"{lake.schema}.old-format-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    os.rename(old, backup)
    by_name = {s.name: s for s in specs}
    written: dict[str, int] = {}
    # archived files keep their stored paths: move them back under the schema
    if (backup / "export_files").is_dir():
        old.mkdir(parents=True, exist_ok=True)
        os.rename(backup / "export_files", old / "export_files")
    for pointer_path in sorted((backup / OLD_FORMAT_MARKER).glob("*.json")):
        pointer = json.loads(pointer_path.read_text())
        spec = by_name.get(pointer["table"])
        if spec is None:
            continue  # a table this version no longer has
        files = [_moved(root, backup, lake.schema, f) for f in pointer["files"]]
        if spec.history:
            history = pointer.get("history") or [{"synced_at": pointer["synced_at"],
                                                  "files": pointer["files"]}]
            for entry in history:
                staged = _staged(lake, spec, [_moved(root, backup, lake.schema, f)
                                              for f in entry["files"]],
                                 datetime.fromisoformat(entry["synced_at"]), scope)
                commit_history(lake.location, lake.schema, staged, lake.tmp_dir("staging"),
                               asset="migrate-lake", run_id=None)
                staged.discard()
        written[spec.name] = _write_table(lake, spec, files,
                                          datetime.fromisoformat(pointer["synced_at"]), scope)
    lake.refresh_views()
    return written


def _moved(root: Path, backup: Path, schema: str, relative: str) -> Path:
    parts = Path(relative).parts
    if not parts or parts[0] != schema or ".." in parts:
        raise LakeError(f"unexpected file {relative!r} in an old-format pointer")
    return backup.joinpath(*parts[1:])


def _read(spec: TableSpec, files: Sequence[Path]) -> pa.Table:
    schema = spec.full_schema
    if not files:
        return schema.empty_table()
    con = duckdb.connect()
    try:
        return read_files(con, files, schema)
    finally:
        con.close()


def _staged(lake: Lake, spec: TableSpec, files: Sequence[Path], synced_at: datetime,
            scope: int | str | None) -> StagedTable:
    staged = StagedTable(spec, lake.tmp_dir("staging"), synced_at,
                         scope_value=scope if spec.scope is not None else None)
    staged.write_batch(_read(spec, files).drop_columns([SYNCED_AT]))
    staged.close()
    return staged


def _write_table(lake: Lake, spec: TableSpec, files: Sequence[Path], synced_at: datetime,
                 scope: int | str | None) -> int:
    table = _read(spec, files)
    if spec.scope is not None:
        column = table.schema.get_field_index(spec.scope)
        table = table.set_column(column, table.schema.field(column), pa.array(
            [scope] * table.num_rows, table.schema.field(column).type))
    write_deltalake(
        lake.table_uri(spec.name), table, mode="overwrite", schema_mode="overwrite",
        description=spec.description or None,
        configuration=lake.maintenance.table_configuration(),
        commit_properties=commit_properties("migrate-lake", None, synced_at, table.num_rows),
    )
    return table.num_rows
