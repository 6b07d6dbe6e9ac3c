"""The lake: Delta tables under LAKE_ROOT, the DuckDB warehouse over them, archived files.

Layout under the root (``<s>`` is the warehouse schema, ``posthog``)::

    <s>/<table>/                          a Delta table (``_delta_log/`` and Parquet files)
    <s>/export_files/sha256/<aa>/<bb>/<h> content-addressed archived files

and, in the local state directory (never in object storage)::

    tmp/            staged rows and downloads, until committed
    locks/          inter-process locks (one sync per asset at a time)

The lake knows tables, versions and files, never PostHog.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import duckdb
import filelock
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
from deltalake import DeltaTable
from deltalake.exceptions import CommitFailedError

from resources.lake import commit as commits
from resources.lake.errors import LakeBusyError, LakeError, identifier, quote
from resources.lake.filestore import FileStore
from resources.lake.history import commit_history
from resources.lake.location import Location
from resources.lake.maintenance import Maintenance
from resources.lake.spec import TableSpec
from resources.lake.staging import (
    BATCH_ROWS,
    StagedTable,
    columns_of,
    read_files,
    read_parquet_sql,
    remove_dead_leftovers,
    row_group_rows,
)
from resources.lake.warehouse import TableView, Warehouse

logger = logging.getLogger(__name__)

# The format this lake replaced (snapshot directories and JSON pointers), recognised to refuse
# it with the command that migrates it.
OLD_FORMAT_MARKER = "_current"
META = commits.META_PREFIX


@dataclass(frozen=True)
class PublishedTable:
    """One table as a publish left it."""

    name: str
    version: int | None
    rows: int  # rows in the table's current version
    files: list[str]  # the current version's data files (URIs)
    synced_at: datetime
    rows_written: int = 0  # rows this publish wrote
    uri: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def snapshot_id(self) -> str:
        return "" if self.version is None else str(self.version)


class Lake:
    """Delta tables under a root (local or S3), views in a DuckDB file, state on local disk."""

    def __init__(
        self,
        root: str | Path | Location,
        warehouse: str | Path,
        state_dir: str | Path | None = None,
        *,
        schema: str = "posthog",
        maintenance: Maintenance | None = None,
        batch_rows: int = BATCH_ROWS,
    ) -> None:
        self.location = root if isinstance(root, Location) else Location.parse(str(root))
        self.warehouse_path = Path(warehouse).expanduser().absolute()
        self.state_dir = (Path(state_dir).expanduser().absolute() if state_dir
                          else self.warehouse_path.parent / "state")
        self.schema = identifier(schema, "schema name")
        self.maintenance = maintenance or Maintenance()
        self.batch_rows = batch_rows
        self.warehouse = Warehouse(self.warehouse_path, self.schema, self.location)
        self.files = FileStore(self.location, self.schema)
        self._specs: dict[str, TableSpec] = {}

    @property
    def root(self) -> str:
        """LAKE_ROOT as a URI or absolute path (for messages and metadata)."""
        return self.location.uri

    def table_uri(self, table: str) -> str:
        return commits.table_uri(self.location, self.schema, identifier(table, "table name"))

    # -- writing -----------------------------------------------------------------------------

    def register(self, *specs: TableSpec) -> None:
        """Make specs known so ``read_current`` can return their empty table before a commit."""
        for spec in specs:
            self._specs[spec.name] = spec

    def writer(self, spec: TableSpec, *, synced_at: datetime | None = None,
               scope: int | str | None = None) -> StagedTable:
        """Stage a sync's rows of ``spec``; every row gets ``synced_at`` (default now) and, for a
        table with a scope column, ``scope`` (the commit then touches only that scope's rows)."""
        if not isinstance(spec, TableSpec):
            raise LakeError("writer() needs a TableSpec")
        if synced_at is None:
            synced_at = datetime.now(UTC)
        elif synced_at.tzinfo is None or synced_at.utcoffset() is None:
            raise LakeError(f"synced_at must be timezone-aware, got {synced_at!r}")
        self._specs[spec.name] = spec
        self.check_format()
        return StagedTable(spec, self.tmp_dir("staging"), synced_at.astimezone(UTC),
                           batch_rows=self.batch_rows, scope_value=scope)

    def publish(self, writers: Sequence[StagedTable], *, run_id: str | None = None,
                asset: str | None = None, max_drop: float = 1.0) -> list[PublishedTable]:
        """Commit each writer's rows to its Delta table, in the order given, then refresh the
        views. A table's history (if it has one) is committed just before the table.

        ``max_drop``: a snapshot that would drop more than this share of its table's rows fails
        before anything of this publish is committed (a listing that came back short must not
        replace the table)."""
        writers = list(writers)
        names = [w.spec.name for w in writers]
        if len(set(names)) != len(names):
            raise LakeError(f"one writer per table per publish, got {names}")
        published: list[PublishedTable] = []
        try:
            for w in writers:
                for spec in (w.spec.history_spec, w.spec):
                    if spec is not None and spec.scope is not None:
                        uri = self.table_uri(spec.name)
                        commits.require_scope_column(
                            self.location, spec, commits.open_table(self.location, uri), uri)
            for w in writers:
                w.close()
            for w in writers:
                self._guard_volume(w, max_drop)
            for w in writers:
                extra: dict[str, Any] = {}
                if w.spec.history:
                    done = _on_conflict_retry(w.spec.history, lambda w=w: commit_history(
                        self.location, self.schema, w, self.tmp_dir("staging"), asset=asset,
                        run_id=run_id, configuration=self.maintenance.table_configuration()))
                    extra["history_rows_written"] = done.rows_written
                    self._maintain(w.spec.history)
                done = _on_conflict_retry(w.spec.name, lambda w=w: commits.commit(
                    self.location, self.schema, w, asset=asset, run_id=run_id,
                    configuration=self.maintenance.table_configuration()))
                self._maintain(w.spec.name)
                table = self.table(w.spec.name)
                published.append(PublishedTable(
                    name=w.spec.name, version=table.version() if table else None,
                    rows=_row_count(table), files=self.location.data_files(table) if table else [],
                    synced_at=w.synced_at, rows_written=w.rows_written, uri=done.table_uri,
                    extra=extra,
                ))
                w.discard()
        finally:
            for w in writers:
                w.abort()
        self.refresh_views()
        return published

    def add_scope(self, spec: TableSpec, value: int | str) -> list[str]:
        """Migrate a lake written before ``spec`` was scoped: the table (and its history) get
        the scope column, every existing row set to ``value``. Returns the tables changed."""
        if spec.scope is None:
            raise LakeError(f"{spec.name} has no scope column")
        changed = [s.name for s in (spec.history_spec, spec) if s is not None
                   and commits.add_scope_column(self.location, self.schema, s, value)]
        if changed:
            self.refresh_views()
        return changed

    def _guard_volume(self, staged: StagedTable, max_drop: float) -> None:
        if staged.spec.mode != "snapshot" or max_drop >= 1.0:
            return
        scoped = staged.scope_value is not None
        current = (self.rows_in_scope(staged.spec, staged.scope_value) if scoped  # type: ignore[arg-type]
                   else _row_count(self.table(staged.spec.name)))
        new = staged.rows_written
        where = f" for {staged.spec.scope} {staged.scope_value}" if scoped else ""
        if current and new < current * (1.0 - max_drop):
            raise LakeError(
                f"{staged.spec.name}: this sync has {new:,} rows{where} where the table holds "
                f"{current:,}, a drop of {1 - new / current:.0%}, more than the {max_drop:.0%} "
                "a sync may drop (max_row_drop). Nothing was committed; readers keep the "
                "current version. If PostHog really holds that much less now, materialize "
                "again with the run config max_row_drop: 1.0 for this asset.")

    def _maintain(self, name: str) -> None:
        table = self.table(name)
        if table is not None:
            self.maintenance.run(table, row_group_rows=lambda: self._row_group_rows(table))

    def _row_group_rows(self, table: DeltaTable) -> int:
        """Rows to a row group when delta-rs rewrites the table: about 8 MB of its rows."""
        con = self.location.register(duckdb.connect())
        try:
            return row_group_rows(con, self.location.data_files(table))
        finally:
            con.close()

    # -- reading the lake --------------------------------------------------------------------

    def check_format(self) -> None:
        """Refuse a LAKE_ROOT in the format this lake replaced, naming the command to migrate."""
        if self.location.is_local and (Path(self.location.uri) / self.schema
                                       / OLD_FORMAT_MARKER).is_dir():
            raise LakeError(
                f"LAKE_ROOT {self.root} holds a lake in the old snapshot format (it has "
                f"{self.schema}/{OLD_FORMAT_MARKER}/). Migrate it to Delta Lake tables once with "
                "`posthog-pipeline migrate-lake` (it keeps a backup), then sync again."
            )

    def tables(self) -> list[str]:
        """Names of the Delta tables in the lake."""
        fs = self.location.filesystem
        base = self.location.fs_path(self.location.join(self.schema))
        try:
            infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        except (FileNotFoundError, OSError):
            return []
        names = []
        for info in infos:
            if info.type != pafs.FileType.Directory:
                continue
            name = info.base_name
            if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
                continue
            log = fs.get_file_info(f"{info.path}/_delta_log")
            if log.type == pafs.FileType.Directory or self.table(name) is not None:
                names.append(name)
        return sorted(names)

    def table(self, name: str, version: int | None = None) -> DeltaTable | None:
        """The Delta table (its latest version unless ``version``), None if it does not exist."""
        return commits.open_table(self.location, self.table_uri(name), version)

    def has_table(self, name: str) -> bool:
        return self.table(name) is not None

    def read_current(self, table: str | TableSpec, columns: list[str] | None = None, *,
                     scope: int | str | None = None) -> pa.Table:
        """The table's current version as one Arrow table (only the rows of ``scope`` when
        given, for a table with a scope column); for small state tables only."""
        spec = table if isinstance(table, TableSpec) else self._specs.get(table)
        if scope is not None and (spec is None or spec.scope is None):
            raise LakeError(f"{spec.name if spec else table} has no scope column to read by")
        name = table.name if isinstance(table, TableSpec) else table
        schema = spec.full_schema if spec is not None else None
        delta = self.table(name)
        files = self.location.data_files(delta) if delta is not None else []
        if schema is None:
            if delta is None:
                return pa.table({c: pa.nulls(0) for c in columns or []})
            schema = pa.schema(delta.schema().to_arrow())
        wanted = schema if columns is None else pa.schema([schema.field(c) for c in columns])
        if not files:
            return wanted.empty_table()
        con = self.location.register(duckdb.connect())
        try:
            return read_files(con, files, wanted,
                              None if scope is None else (spec.scope, scope))  # type: ignore[union-attr]
        finally:
            con.close()

    def rows_in_scope(self, spec: TableSpec, scope: int | str) -> int:
        """How many rows of ``spec``'s current version hold ``scope`` in its scope column."""
        delta = self.table(spec.name)
        files = self.location.data_files(delta) if delta is not None else []
        if not files or spec.scope is None:
            return 0
        con = self.location.register(duckdb.connect())
        try:
            source = read_parquet_sql(files)
            if spec.scope not in columns_of(con, source):
                return 0
            return con.execute(f"SELECT count(*) FROM {source} WHERE {quote(spec.scope)} = ?",
                               [scope]).fetchone()[0]
        finally:
            con.close()

    def last_commit(self, name: str, *, asset: str | None = None) -> dict[str, Any] | None:
        """The latest commit a sync made to ``name`` (maintenance commits skipped), of ``asset``
        when given (among the table's last 50 commits): version, synced_at, asset, run_id,
        rows_written; None if there is none."""
        table = self.table(name)
        if table is None:
            return None
        return next((c for c in _sync_commits(table) if asset in (None, c["asset"])), None)

    def current_snapshot(self, name: str) -> dict[str, Any] | None:
        """The table's current version: ``snapshot_id`` (the version), ``rows``, and the
        ``synced_at``, ``asset`` and ``run_id`` of the sync that last wrote it."""
        table = self.table(name)
        if table is None:
            return None
        last = next(iter(_sync_commits(table)), {})
        return {"snapshot_id": str(table.version()), "version": table.version(),
                "rows": _row_count(table), **last}

    def table_status(self) -> list[dict[str, Any]]:
        """Every table: rows, data files, version, and its last sync's synced_at, asset, run."""
        status = []
        for name in self.tables():
            table = self.table(name)
            if table is None:
                continue
            last = next(iter(_sync_commits(table)), {})
            status.append({
                "table": name, "rows": _row_count(table), "files": len(table.file_uris()),
                "version": table.version(), "snapshot_id": str(table.version()),
                "synced_at": last.get("synced_at"), "asset": last.get("asset"),
                "run_id": last.get("run_id"),
            })
        return status

    def last_sync_by_asset(self) -> list[dict[str, Any]]:
        """The latest sync commit per asset, from the Delta logs: asset, synced_at, run_id
        (each project's assets are their own, so every table's recent commits are read)."""
        latest: dict[str, dict] = {}
        for name in self.tables():
            table = self.table(name)
            for c in _sync_commits(table) if table is not None else ():
                asset = c.get("asset")
                if asset and (asset not in latest or c["synced_at"] > latest[asset]["synced_at"]):
                    latest[asset] = c
        keys = ("asset", "synced_at", "run_id")
        return [{k: row.get(k) for k in keys} for _, row in sorted(latest.items())]

    # -- the warehouse -----------------------------------------------------------------------

    def refresh_views(self) -> bool:
        """Point every view at its table's current version (False if the file was busy)."""
        views = []
        for name in self.tables():
            table = self.table(name)
            if table is None:
                continue
            views.append(TableView(
                name=name, files=self.location.data_files(table),
                schema=pa.schema(table.schema().to_arrow()),
                description=table.metadata().description or "", version=table.version()))
        return self.warehouse.refresh(views)

    def rebuild_views(self) -> None:
        """Recreate every view from the lake (after deleting, moving or restoring the file)."""
        self.check_format()
        if not self.refresh_views():
            raise LakeBusyError(f"DUCKDB_DATABASE {self.warehouse_path} is held by another "
                                "process; close it and run rebuild-views again")

    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple]:
        """Run one read-only statement against the warehouse and return all rows."""
        return self.query_table(sql, params)[1]

    def query_table(self, sql: str, params: Sequence[Any] | None = None, *,
                    max_rows: int | None = None) -> tuple[list[str], list[tuple], bool]:
        """(column names, rows, truncated) of one read-only statement; at most ``max_rows``."""
        return self.warehouse.query_table(sql, params, max_rows=max_rows)

    # -- archived files ----------------------------------------------------------------------

    def store_content(self, tmp_file: Path, sha256: str) -> str:
        """Put a downloaded file in the content-addressed store; returns its stored_path."""
        return self.files.store(tmp_file, sha256)

    def open_content(self, stored_path: str) -> BinaryIO:
        return self.files.open(stored_path)

    # -- local state -------------------------------------------------------------------------

    def tmp_dir(self, kind: str = "downloads") -> Path:
        """A local directory for temp files (staged rows, downloads), created."""
        path = self.state_dir / "tmp" / kind
        path.mkdir(parents=True, exist_ok=True)
        return path

    def new_tmp_file(self) -> Path:
        """A fresh local temp file name for a download (removed later if its process dies)."""
        return self.tmp_dir() / f"{os.getpid()}-{uuid.uuid4().hex}.part"

    def remove_dead_leftovers(self) -> int:
        """Remove staged rows and downloads left by killed processes; how many."""
        return sum(remove_dead_leftovers(self.state_dir / "tmp" / kind)
                   for kind in ("staging", "downloads"))

    @contextmanager
    def lock(self, name: str, *, timeout: float = 0) -> Iterator[None]:
        """An inter-process lock; raises LakeBusyError if it is not free within ``timeout`` s."""
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).lstrip(".")[:100] or "_"
        directory = self.state_dir / "locks"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{safe}.lock"
        lock = filelock.FileLock(path, timeout=timeout)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise LakeBusyError(f"another sync of {name} is running (lock {path})") from None
        try:
            yield
        finally:
            lock.release()

    def clean_tmp(self) -> None:
        """Remove staged files left by killed processes (call with no sync running)."""
        shutil.rmtree(self.state_dir / "tmp", ignore_errors=True)


# Scoped tables are written by the syncs of several sources (projects) at once: a commit that
# lost the race to another's (delta-rs: "a concurrent transaction added new data") is redone on
# the new version. Every commit here may be redone: a scoped overwrite replaces the same rows,
# merges and replace_keys are idempotent, and the history recomputes its changes.
_CONFLICT_RETRIES = 8


def _on_conflict_retry(name: str, commit_fn):
    for attempt in range(_CONFLICT_RETRIES + 1):
        try:
            return commit_fn()
        except Exception as exc:
            conflict = exc if isinstance(exc, CommitFailedError) else exc.__cause__
            if not isinstance(conflict, CommitFailedError) or attempt == _CONFLICT_RETRIES:
                raise
            delay = min(2.0, 0.05 * 2 ** attempt) * (0.5 + random.random())
            logger.info("%s: a concurrent commit won; committing again in %.2fs (%s)",
                        name, delay, str(conflict).splitlines()[0])
            time.sleep(delay)
    raise AssertionError("unreachable")


def _row_count(table: DeltaTable | None) -> int:
    if table is None:
        return 0
    actions = pa.table(table.get_add_actions(flatten=True))
    if actions.num_rows == 0:
        return 0
    return int(pc.sum(actions.column("num_records")).as_py() or 0)


def _sync_commits(table: DeltaTable) -> Iterator[dict[str, Any]]:
    """The table's commits made by a sync, newest first, with what they recorded."""
    for entry in table.history(limit=50):
        synced_at = entry.get(f"{META}synced_at")
        if not synced_at:
            continue
        yield {
            "version": entry.get("version"),
            "synced_at": datetime.fromisoformat(synced_at),
            "asset": entry.get(f"{META}asset"),
            "run_id": entry.get(f"{META}run_id"),
            "rows_written": int(entry.get(f"{META}rows_written") or 0),
        }
