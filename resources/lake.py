"""The Parquet lake under LAKE_ROOT and the DuckDB warehouse over it.

The lake knows tables, snapshots and files, never PostHog. Layout under ``root`` (``<s>`` is the
warehouse schema, ``posthog`` by default)::

    <s>/<table>/snapshot_id=<id>/part-00000.parquet   immutable data files (zstd)
    <s>/<table>/_staging/<id>/ and <id>.lock          a live writer's files, until publish
    <s>/_manifests/<table>/<id>.json                  what a snapshot holds
    <s>/_current/<table>.json                         the pointer: the table's live snapshot
    <s>/export_files/sha256/<aa>/<bb>/<sha256>        content-addressed bytes
    _state/locks/<name>.lock                          inter-process locks
    _tmp/                                             temp files (downloads)

Publish protocol, all of it under one inter-process lock (``_state/locks/.publish.lock``) so that
concurrent publishes serialise and GC never sees another publish half done:

1. rename each writer's staging dir to its snapshot dir (atomic, same filesystem);
2. compute the table's file list (append: the current pointer's files + the new ones) and write
   the manifest (temp + fsync + ``os.replace``);
3. ``os.replace`` the pointers, then in ONE DuckDB transaction recreate the views and append to
   ``<s>_meta.sync_log``; on any failure before COMMIT the old pointers are put back;
4. garbage-collect snapshot dirs and manifests no pointer references, and staging dirs whose
   writer's lock is free (its process is gone). GC failures only log.

A process killed at any point leaves the old pointer or the new one, and views only ever list
files named by a pointer, so readers see a complete snapshot. If a kill lands between the pointer
and the COMMIT, the next publish (or ``rebuild_views``) notices the drift and repoints the view.

``synced_at``: writers stream rows before publish, so the value is fixed when the writer is made
(``lake.writer(spec, synced_at=...)``, default now) and every row carries it.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import hashlib
import json
import logging
import os
import random
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import dagster as dg
import duckdb
import filelock
import pyarrow as pa
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

# Rows given as dicts are turned into Arrow this many at a time: as Python objects a row takes
# several times its Arrow size, so the dicts are kept few while a row group (`batch_rows`) fills.
_ROWS_AS_DICTS = 2_000

SYNCED_AT = "synced_at"
SYNCED_AT_TYPE = pa.timestamp("us", tz="UTC")
DUCKDB_LOCK_TIMEOUT = 30.0  # seconds to keep retrying a DuckDB file-lock conflict
PUBLISH_LOCK_TIMEOUT = 600.0  # seconds to wait for another process's publish
STALE_AFTER = 3600.0  # seconds after which a temp file nobody writes to is debris
MANIFEST_FORMAT = 1

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SNAPSHOT_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z_.-]{0,63}")
_GLOB_CHARS = re.compile(r"([*?\[])")


class LakeError(dg.Failure):
    """The lake or the warehouse cannot do what was asked.

    A ``dg.Failure``, so a run shows the message itself (e.g. an unwritable LAKE_ROOT) as the
    step failure's headline instead of a traceback.
    """

    def __init__(self, message: str = "") -> None:
        super().__init__(description=message)

    def __reduce__(self):
        return (type(self), (self.description,))


class LakeBusyError(LakeError):
    """Another process holds a lock the lake needs."""


def _identifier(name: str, what: str) -> str:
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise LakeError(f"invalid {what} {name!r}: must match [a-z_][a-z0-9_]*")
    return name


def _quote(name: str) -> str:
    # Every name reaching SQL was validated by _identifier; quoting also covers keywords (user).
    return '"' + _identifier(name, "identifier") + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _parquet_literal(path: Path) -> str:
    # read_parquet globs every path; a one-character class matches the character literally.
    return _literal(_GLOB_CHARS.sub(r"[\1]", str(path)))


def _utc(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise LakeError(f"{what} must be timezone-aware, got {value!r}")
    return value.astimezone(UTC)


def new_snapshot_id() -> str:
    """A snapshot id that sorts by creation time and is unique across processes."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{secrets.token_hex(4)}"


def release_memory() -> None:
    """Give freed memory back to the OS. Every step of a run shares one process, and the
    allocators (Python's, glibc's, Arrow's) otherwise keep what one step used for the next:
    trimming after each step, and before a dedupe starts DuckDB, keeps the run's peak at its
    largest step's instead of their sum."""
    gc.collect()
    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL(None).malloc_trim(0)  # glibc; elsewhere there is nothing to trim
    except (OSError, AttributeError):
        pass


def _read_parquet_files(files: Sequence[Path], known: pa.Schema | None,
                        columns: list[str] | None) -> pa.Table:
    """The files as one table, `columns` only. Its schema is the files' schemas unified, after
    `known` (the table's spec) when given; a column a file lacks is null there.

    Each file is opened once, for its schema and its rows. With ParquetFile, not through
    pyarrow.dataset: importing pyarrow.dataset costs every run process 16 MB, and imports pandas
    (50 MB more) wherever it is installed."""
    with ExitStack() as stack:
        parquets = [stack.enter_context(pq.ParquetFile(path)) for path in files]
        schema = pa.unify_schemas([parquet.schema_arrow for parquet in parquets])
        if known is not None:
            schema = pa.unify_schemas([known, schema])
        wanted = schema if columns is None else pa.schema([schema.field(c) for c in columns])
        tables = []
        for parquet in parquets:
            present = set(parquet.schema_arrow.names)
            table = parquet.read(columns=[c for c in wanted.names if c in present])
            tables.append(pa.table(
                [table.column(f.name).cast(f.type) if f.name in present
                 else pa.nulls(table.num_rows, f.type) for f in wanted],
                schema=wanted,
            ))
    return pa.concat_tables(tables)


def count_distinct_keys(first_row: Callable[[str], tuple], source: str, key: str
                        ) -> tuple[int, int]:
    """(rows, distinct keys) of ``source`` (SQL after FROM), ``key`` a list of quoted columns;
    ``first_row`` runs a query and returns its first row.

    Distinct 64-bit hashes prove distinct keys in a fraction of the memory (a million keys:
    16 MB of hashes, not 100 MB of strings); only a collision or a real duplicate makes it
    compare the keys themselves.
    """
    total, hashes = first_row(f"SELECT count(*), count(DISTINCT hash({key})) FROM {source}")
    if total == hashes:
        return total, total
    (distinct,) = first_row(f"SELECT count(*) FROM (SELECT DISTINCT {key} FROM {source})")
    return total, distinct


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _write_json_atomic(path: Path, obj: Any) -> None:
    _write_atomic(path, json.dumps(obj, indent=1, sort_keys=True).encode())


def _is_lock_conflict(exc: Exception) -> bool:
    text = str(exc)
    # The second message is DuckDB refusing a read-write and a read-only connection to the same
    # file inside one process; it clears as soon as the other connection closes.
    return "Could not set lock" in text or "different configuration" in text


def _schema_fingerprint(schema: pa.Schema) -> str:
    return hashlib.sha256(schema.serialize().to_pybytes()).hexdigest()[:16]


@dataclass(frozen=True)
class TableSpec:
    """A lake table: its name, explicit schema, JSON columns and how snapshots combine."""

    name: str
    schema: pa.Schema
    json_columns: tuple[str, ...] = ()
    mode: Literal["replace", "append"] = "replace"
    history_view: str | None = None
    description: str = ""
    unique_key: tuple[str, ...] = ()  # documented in the manifest; checks enforce it

    def __post_init__(self) -> None:
        _identifier(self.name, "table name")
        object.__setattr__(self, "json_columns", tuple(self.json_columns))
        object.__setattr__(self, "unique_key", tuple(self.unique_key))
        if not isinstance(self.schema, pa.Schema):
            raise LakeError(f"{self.name}: schema must be a pyarrow.Schema")
        names = self.schema.names
        if len(set(names)) != len(names):
            raise LakeError(f"{self.name}: duplicate column names")
        for column in names:
            _identifier(column, f"column name in {self.name}")
        for column in self.json_columns:
            if column not in names:
                raise LakeError(f"{self.name}: JSON column {column!r} is not in the schema")
            column_type = self.schema.field(column).type
            if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
                raise LakeError(f"{self.name}: JSON column {column!r} must be a string column")
        for column in self.unique_key:
            if column not in names:
                raise LakeError(f"{self.name}: unique key column {column!r} is not in the schema")
        if SYNCED_AT in names and self.schema.field(SYNCED_AT).type != SYNCED_AT_TYPE:
            raise LakeError(f"{self.name}: {SYNCED_AT} must be {SYNCED_AT_TYPE}")
        if self.mode not in ("replace", "append"):
            raise LakeError(f"{self.name}: mode must be 'replace' or 'append', not {self.mode!r}")
        if self.history_view is not None:
            _identifier(self.history_view, "history view name")
            if self.mode != "replace":
                raise LakeError(f"{self.name}: a history view needs mode='replace'")
            if self.history_view == self.name:
                raise LakeError(f"{self.name}: the history view needs its own name")

    @cached_property
    def full_schema(self) -> pa.Schema:
        """The schema as stored: the spec's columns plus ``synced_at`` if the spec lacks it."""
        if SYNCED_AT in self.schema.names:
            return self.schema
        return self.schema.append(pa.field(SYNCED_AT, SYNCED_AT_TYPE))


@dataclass(frozen=True)
class PublishedTable:
    """One table as a publish left it."""

    name: str
    snapshot_id: str
    rows: int  # rows in the table now (append: all snapshots so far)
    files: list[str]  # every file the view reads, relative to the lake root
    synced_at: datetime
    rows_written: int = 0  # rows this publish added
    new_files: list[str] = field(default_factory=list)


class SnapshotWriter:
    """Streams one table's rows into Parquet files in a staging dir until the lake publishes it."""

    def __init__(self, lake: Lake, spec: TableSpec, snapshot_id: str, synced_at: datetime) -> None:
        self.spec = spec
        self.snapshot_id = snapshot_id
        self.synced_at = synced_at
        self.rows_written = 0
        self.bytes_written = 0
        self.duplicates_dropped = 0
        self._lake = lake
        self._schema = spec.full_schema
        self._data_schema = pa.schema([f for f in self._schema if f.name != SYNCED_AT])
        self._allowed = frozenset(spec.schema.names)
        self._synced_at_scalar = pa.scalar(synced_at, type=SYNCED_AT_TYPE)
        self.staging_dir = lake._table_dir(spec.name) / "_staging" / snapshot_id
        # The lock tells GC in other processes that this staging dir is alive; the OS drops it
        # when the process dies, so leftovers of killed writers are recognisable.
        alive_path = self.staging_dir.with_name(f"{snapshot_id}.lock")
        self._alive = filelock.FileLock(alive_path, timeout=0)
        self.staging_dir.parent.mkdir(parents=True, exist_ok=True)
        self._alive.acquire()
        self.staging_dir.mkdir()
        self._buffer: list[dict] = []
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._parquet: pq.ParquetWriter | None = None
        self._rows_in_part = 0
        self.files: list[str] = []  # part file names inside the snapshot dir
        self._state: Literal["open", "closed", "published", "aborted"] = "open"

    def __enter__(self) -> SnapshotWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif self._state == "open":
            self.close()

    def write_rows(self, rows: Iterable[dict]) -> None:
        """Buffer rows (missing keys are null; unknown keys are an error), flushing every batch."""
        self._require_open()
        allowed = self._allowed
        buffer = self._buffer
        limit = min(_ROWS_AS_DICTS, self._lake.batch_rows)
        for row in rows:
            if not row.keys() <= allowed:
                unknown = sorted(set(row) - allowed)
                raise LakeError(f"{self.spec.name}: unknown column(s) {unknown}; not in the schema")
            buffer.append(row)
            if len(buffer) >= limit:
                self._flush_rows()

    def write_batch(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Write Arrow data; columns are matched by name, cast to the schema, missing ones null."""
        self._require_open()
        table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
        unknown = sorted(set(table.column_names) - self._allowed)
        if unknown:
            raise LakeError(f"{self.spec.name}: unknown column(s) {unknown}; not in the schema")
        columns = []
        for f in self._data_schema:
            if f.name in table.column_names:
                try:
                    columns.append(table.column(f.name).cast(f.type))
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
                    raise LakeError(f"{self.spec.name}.{f.name}: cannot cast: {e}") from e
            else:
                columns.append(pa.nulls(table.num_rows, f.type))
        table = pa.Table.from_arrays(columns, schema=self._data_schema)
        self._flush_rows()  # keep row order across write_rows and write_batch
        for chunk in table.to_batches(max_chunksize=self._lake.batch_rows):
            self._stage(chunk)

    def close(self) -> None:
        """Finish the files (a 0-row file if nothing was written); the lake publishes them."""
        if self._state != "open":
            return
        self._flush_rows()
        self._drain()
        if not self.files:
            self._open_part()
        self._close_part()
        if self.spec.unique_key and self.spec.mode == "replace" and self.rows_written:
            release_memory()
            self._dedupe()
        for name in self.files:
            with open(self.staging_dir / name, "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(self.staging_dir)
        self._state = "closed"

    def _dedupe(self) -> None:
        """Keep one row per unique key (the last one written), out of core in DuckDB.

        A listing can serve a row twice (e.g. a group created mid-crawl); counting distinct keys
        over the staged files is cheap, and the files are rewritten only when there are dupes.
        """
        key = ", ".join(_quote(k) for k in self.spec.unique_key)
        files = "[" + ", ".join(_parquet_literal(self.staging_dir / n) for n in self.files) + "]"
        con = duckdb.connect()
        try:
            con.execute(f"SET temp_directory = {_literal(str(self.staging_dir / '.spill'))}")
            con.execute("SET memory_limit = '128MB'")
            con.execute("SET threads = 1")
            total, distinct = count_distinct_keys(
                lambda sql: con.execute(sql).fetchall()[0], f"read_parquet({files})", key
            )
            self.duplicates_dropped = total - distinct
            if total == distinct:
                return
            columns = ", ".join(_quote(f.name) for f in self._schema)
            # a relation streams batches; a DB-API result would copy every row once more
            reader = con.sql(
                f"SELECT {columns} FROM (SELECT *, row_number() OVER (PARTITION BY {key} "
                "ORDER BY filename DESC, file_row_number DESC) AS rn__ "
                f"FROM read_parquet({files}, filename = true, file_row_number = true)) "
                "WHERE rn__ = 1"
            ).to_arrow_reader(self._lake.batch_rows)
            old_files, self.files = self.files, []
            self.rows_written = 0
            self.bytes_written = 0
            for name in old_files:
                os.replace(self.staging_dir / name, self.staging_dir / f"{name}.dup")
            for batch in reader:
                self._write(pa.RecordBatch.from_arrays(
                    [batch.column(i).cast(f.type) for i, f in enumerate(self._schema)],
                    schema=self._schema,
                ))
            if not self.files:
                self._open_part()
            self._close_part()
            for name in old_files:
                (self.staging_dir / f"{name}.dup").unlink()
        finally:
            con.close()
            shutil.rmtree(self.staging_dir / ".spill", ignore_errors=True)

    def abort(self) -> None:
        """Drop everything written; a published snapshot is never touched."""
        if self._state in ("published", "aborted"):
            return
        self._state = "aborted"
        if self._parquet is not None:
            try:
                self._parquet.close()
            except Exception:  # the files are being thrown away anyway
                pass
            self._parquet = None
        self._buffer.clear()
        self._pending.clear()
        shutil.rmtree(self.staging_dir, ignore_errors=True)
        self._release()

    def _require_open(self) -> None:
        if self._state != "open":
            raise LakeError(f"{self.spec.name}: writer is {self._state}")

    def _flush_rows(self) -> None:
        if not self._buffer:
            return
        try:
            batch = pa.RecordBatch.from_pylist(self._buffer, schema=self._data_schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as e:
            raise LakeError(f"{self.spec.name}: a row does not fit the schema: {e}") from e
        self._buffer.clear()  # in place: write_rows holds a reference to this list
        self._stage(batch)

    def _stage(self, batch: pa.RecordBatch) -> None:
        """Hold Arrow batches until there is a row group's worth (`batch_rows`), then write."""
        self._pending.append(batch)
        self._pending_rows += batch.num_rows
        if self._pending_rows >= self._lake.batch_rows:
            self._drain()

    def _drain(self) -> None:
        if self._pending:
            table = pa.Table.from_batches(self._pending, schema=self._data_schema)
            self._pending.clear()
            self._pending_rows = 0
            self._write(table)

    def _write(self, data: pa.RecordBatch | pa.Table) -> None:
        n = data.num_rows
        if n == 0:
            return
        synced_at = pa.repeat(self._synced_at_scalar, n)
        arrays = [synced_at if f.name == SYNCED_AT else data.column(f.name) for f in self._schema]
        table = pa.Table.from_arrays(arrays, schema=self._schema)
        per_file = self._lake.rows_per_file
        offset = 0
        while offset < n:
            if self._parquet is None:
                self._open_part()
            take = min(n - offset, per_file - self._rows_in_part)
            # one row group per call: `batch_rows` rows, however many batches they came in
            self._parquet.write_table(table.slice(offset, take), row_group_size=take)
            offset += take
            self._rows_in_part += take
            self.rows_written += take
            if self._rows_in_part >= per_file:
                self._close_part()

    def _open_part(self) -> None:
        name = f"part-{len(self.files):05d}.parquet"
        self._parquet = pq.ParquetWriter(self.staging_dir / name, self._schema, compression="zstd")
        self.files.append(name)
        self._rows_in_part = 0

    def _close_part(self) -> None:
        if self._parquet is None:
            return
        self._parquet.close()
        self._parquet = None
        self.bytes_written += (self.staging_dir / self.files[-1]).stat().st_size

    def _release(self) -> None:
        self._alive.release()
        Path(self._alive.lock_file).unlink(missing_ok=True)


class Lake:
    """A Parquet lake of snapshotted tables, published as views in a DuckDB warehouse."""

    def __init__(
        self,
        root: str | Path,
        warehouse: str | Path,
        *,
        schema: str = "posthog",
        history_snapshots: int = 7,
        rows_per_file: int = 500_000,
        batch_rows: int = 10_000,
    ) -> None:
        self.root = Path(root).expanduser().absolute()
        self.warehouse = Path(warehouse).expanduser().absolute()
        self.schema = _identifier(schema, "schema name")
        self.meta_schema = _identifier(f"{schema}_meta", "schema name")
        if history_snapshots < 1 or rows_per_file < 1 or batch_rows < 1:
            raise LakeError("history_snapshots, rows_per_file and batch_rows must be >= 1")
        self.history_snapshots = history_snapshots
        self.rows_per_file = rows_per_file
        self.batch_rows = batch_rows
        self._specs: dict[str, TableSpec] = {}

    # -- paths -------------------------------------------------------------------------------

    def _base(self) -> Path:
        return self.root / self.schema

    def _table_dir(self, table: str) -> Path:
        return self._base() / _identifier(table, "table name")

    def _pointer_path(self, table: str) -> Path:
        return self._base() / "_current" / f"{_identifier(table, 'table name')}.json"

    def _manifest_path(self, table: str, snapshot_id: str) -> Path:
        directory = self._base() / "_manifests" / _identifier(table, "table name")
        return directory / f"{snapshot_id}.json"

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def tmp_dir(self) -> Path:
        """``root/_tmp/``, created: temp files (downloads) live here, on the lake's filesystem."""
        path = self.root / "_tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- writing -----------------------------------------------------------------------------

    def writer(
        self,
        spec: TableSpec,
        *,
        synced_at: datetime | None = None,
        snapshot_id: str | None = None,
    ) -> SnapshotWriter:
        """A writer for a new snapshot of ``spec``; every row gets ``synced_at`` (default now)."""
        if not isinstance(spec, TableSpec):
            raise LakeError("writer() needs a TableSpec")
        snapshot_id = snapshot_id or new_snapshot_id()
        if not _SNAPSHOT_ID.fullmatch(snapshot_id):
            raise LakeError(f"invalid snapshot id {snapshot_id!r}")
        synced_at = _utc(synced_at, "synced_at") if synced_at else datetime.now(UTC)
        self._specs[spec.name] = spec
        return SnapshotWriter(self, spec, snapshot_id, synced_at)

    def register(self, *specs: TableSpec) -> None:
        """Make specs known so ``read_current`` can return their empty table before a publish."""
        for spec in specs:
            self._specs[spec.name] = spec

    # -- publishing --------------------------------------------------------------------------

    def publish(
        self,
        writers: Sequence[SnapshotWriter],
        *,
        synced_at: datetime | None = None,
        run_id: str | None = None,
        asset: str | None = None,
    ) -> list[PublishedTable]:
        """Make the writers' snapshots current, atomically per table, and repoint the views."""
        writers = list(writers)
        if not writers:
            return []
        names = [w.spec.name for w in writers]
        if len(set(names)) != len(names):
            raise LakeError(f"one writer per table per publish, got {names}")
        for w in writers:
            if w._lake is not self:
                raise LakeError(f"{w.spec.name}: writer belongs to another Lake")
            if w._state not in ("open", "closed"):
                raise LakeError(f"{w.spec.name}: writer is {w._state}")
            if synced_at is not None and _utc(synced_at, "synced_at") != w.synced_at:
                raise LakeError(
                    f"{w.spec.name}: publish synced_at {synced_at} differs from the writer's "
                    f"{w.synced_at}; pass synced_at to lake.writer()"
                )
        for w in writers:
            w.close()
        published_at = datetime.now(UTC)
        with self._publish_lock():
            results = self._publish_locked(writers, published_at, run_id, asset)
            self._gc(names)
        return results

    def _publish_locked(
        self,
        writers: list[SnapshotWriter],
        published_at: datetime,
        run_id: str | None,
        asset: str | None,
    ) -> list[PublishedTable]:
        renamed: list[Path] = []
        manifests: list[Path] = []
        replaced: list[tuple[Path, bytes | None]] = []
        committed = False
        try:
            pointers = []
            for w in writers:
                final = self._table_dir(w.spec.name) / f"snapshot_id={w.snapshot_id}"
                os.rename(w.staging_dir, final)
                renamed.append(final)
                _fsync_dir(final.parent)
                pointer = self._next_pointer(w, final, published_at, run_id, asset)
                manifest = self._manifest_path(w.spec.name, w.snapshot_id)
                _write_json_atomic(manifest, {k: v for k, v in pointer.items() if k != "history"})
                manifests.append(manifest)
                pointers.append(pointer)
            for pointer in pointers:
                path = self._pointer_path(pointer["table"])
                old = path.read_bytes() if path.exists() else None
                self._write_pointer(path, pointer)
                replaced.append((path, old))
            log_rows = [
                (
                    p["table"],
                    p["snapshot_id"],
                    datetime.fromisoformat(p["synced_at"]),
                    p["rows"],
                    p["rows_written"],
                    len(p["files"]),
                    asset,
                    run_id,
                    published_at,
                )
                for p in pointers
            ]
            self._commit_views({p["table"] for p in pointers}, log_rows, heal=True)
            committed = True
        finally:
            if not committed:
                self._roll_back(replaced, manifests, renamed)
                for w in writers:
                    w.abort()
        for w in writers:
            w._state = "published"
            w._release()
        return [
            PublishedTable(
                name=p["table"],
                snapshot_id=p["snapshot_id"],
                rows=p["rows"],
                files=list(p["files"]),
                synced_at=datetime.fromisoformat(p["synced_at"]),
                rows_written=p["rows_written"],
                new_files=list(p["new_files"]),
            )
            for p in pointers
        ]

    def _write_pointer(self, path: Path, pointer: dict) -> None:
        _write_json_atomic(path, pointer)

    def _roll_back(
        self,
        replaced: list[tuple[Path, bytes | None]],
        manifests: list[Path],
        renamed: list[Path],
    ) -> None:
        # Undo in reverse so the pointers name the old snapshots again before their files go.
        for path, old in reversed(replaced):
            try:
                if old is None:
                    path.unlink(missing_ok=True)
                else:
                    _write_atomic(path, old)
            except OSError:
                logger.exception("could not restore pointer %s; run rebuild_views", path)
        for path in manifests:
            path.unlink(missing_ok=True)
        for path in renamed:
            shutil.rmtree(path, ignore_errors=True)

    def _next_pointer(
        self,
        w: SnapshotWriter,
        final: Path,
        published_at: datetime,
        run_id: str | None,
        asset: str | None,
    ) -> dict:
        spec = w.spec
        prev = self._read_pointer(spec.name)
        new_files = [self._rel(final / name) for name in w.files]
        if spec.mode == "append" and prev is not None:
            files = list(prev["files"]) + new_files
            rows = int(prev["rows"]) + w.rows_written
        else:
            files, rows = new_files, w.rows_written
        pointer: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "table": spec.name,
            "snapshot_id": w.snapshot_id,
            "mode": spec.mode,
            "columns": spec.full_schema.names,
            "json_columns": list(spec.json_columns),
            "unique_key": list(spec.unique_key),
            "schema_fingerprint": _schema_fingerprint(spec.full_schema),
            "description": spec.description,
            "history_view": spec.history_view,
            "synced_at": w.synced_at.isoformat(),
            "published_at": published_at.isoformat(),
            "rows": rows,
            "rows_written": w.rows_written,
            "bytes_written": w.bytes_written,
            "files": files,
            "new_files": new_files,
            "asset": asset,
            "run_id": run_id,
        }
        if spec.history_view:
            history = list(prev.get("history") or []) if prev else []
            if prev and not history:
                history = [self._history_entry(prev)]
            history.append(self._history_entry(pointer))
            pointer["history"] = history[-self.history_snapshots :]
        return pointer

    @staticmethod
    def _history_entry(pointer: dict) -> dict:
        keys = ("snapshot_id", "synced_at", "rows", "files")
        return {k: pointer[k] for k in keys}

    @contextmanager
    def _publish_lock(self) -> Iterator[None]:
        path = self._locks_dir() / ".publish.lock"
        lock = filelock.FileLock(path, timeout=PUBLISH_LOCK_TIMEOUT)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise LakeBusyError(
                f"another process has been publishing to LAKE_ROOT {self.root} for over "
                f"{PUBLISH_LOCK_TIMEOUT:.0f}s (lock {path})"
            ) from None
        try:
            yield
        finally:
            lock.release()

    # -- the warehouse -----------------------------------------------------------------------

    def _connect(self, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
        if not read_only:
            self.warehouse.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + DUCKDB_LOCK_TIMEOUT
        delay = 0.02
        while True:
            try:
                return duckdb.connect(str(self.warehouse), read_only=read_only)
            except (duckdb.IOException, duckdb.ConnectionException) as e:
                if not _is_lock_conflict(e):
                    raise LakeError(
                        f"DUCKDB_DATABASE {self.warehouse} cannot be opened: {e}"
                    ) from e
                if time.monotonic() >= deadline:
                    raise LakeBusyError(
                        f"DUCKDB_DATABASE {self.warehouse} is locked by another process "
                        f"(gave up after {DUCKDB_LOCK_TIMEOUT:.0f}s): {e}"
                    ) from e
                logger.debug("DuckDB file busy, retrying in %.2fs: %s", delay, e)
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.25)

    def _writer_turn_path(self) -> Path:
        return self.root / "_state" / "locks" / ".warehouse-writer.lock"

    @contextmanager
    def _writer_turn(self) -> Iterator[None]:
        """Writer priority on the DuckDB file: while held, new readers wait (see _await_writer).

        DuckDB lets one process write and refuses the file to everyone else meanwhile, and
        readers that keep the file open back to back would otherwise starve a publish.
        """
        self._locks_dir()
        lock = filelock.FileLock(self._writer_turn_path(), timeout=PUBLISH_LOCK_TIMEOUT)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise LakeBusyError(f"another process is writing {self.warehouse}") from None
        try:
            yield
        finally:
            lock.release()

    def _await_writer(self) -> None:
        """A reader lets a waiting or active warehouse writer go first (bounded wait)."""
        path = self._writer_turn_path()
        if not path.exists():
            return
        lock = filelock.FileLock(path, timeout=DUCKDB_LOCK_TIMEOUT)
        try:
            lock.acquire()
        except (filelock.Timeout, OSError):
            return  # a read-only LAKE_ROOT, or a stuck writer: DuckDB's own lock decides
        lock.release()

    def _commit_views(self, tables: set[str], log_rows: list[tuple], *, heal: bool) -> None:
        """Recreate views for ``tables`` (and any view that drifted from its pointer) at once."""
        with self._writer_turn():
            self._commit_views_locked(tables, log_rows, heal=heal)

    def _commit_views_locked(self, tables: set[str], log_rows: list[tuple], *, heal: bool
                             ) -> None:
        pointers = self._read_all_pointers()
        con = self._connect()
        try:
            con.execute("BEGIN TRANSACTION")
            self._ensure_meta(con)
            if heal:
                q = f"SELECT table_name, snapshot_id FROM {_quote(self.meta_schema)}.tables"
                known = dict(con.execute(q).fetchall())
                for name, pointer in pointers.items():
                    if name in tables or known.get(name) == pointer["snapshot_id"]:
                        continue
                    missing = self._missing_files(pointer)
                    if missing:
                        logger.warning("view %s drifted but %s is missing", name, missing[0])
                        continue
                    logger.warning("repointing view %s to its lake snapshot", name)
                    tables = tables | {name}
            for name in sorted(tables):
                self._create_views(con, pointers[name])
            if log_rows:
                con.executemany(
                    f"INSERT INTO {_quote(self.meta_schema)}.sync_log "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    log_rows,
                )
            con.execute("COMMIT")
        except BaseException:
            try:
                con.execute("ROLLBACK")
            except duckdb.Error:
                pass
            raise
        finally:
            con.close()

    def _ensure_meta(self, con: duckdb.DuckDBPyConnection) -> None:
        meta = _quote(self.meta_schema)
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(self.schema)}")
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {meta}")
        con.execute(
            f"CREATE TABLE IF NOT EXISTS {meta}.sync_log (table_name VARCHAR, snapshot_id VARCHAR, "
            "synced_at TIMESTAMPTZ, rows BIGINT, rows_written BIGINT, files INTEGER, "
            "asset VARCHAR, run_id VARCHAR, published_at TIMESTAMPTZ)"
        )
        con.execute(
            f"CREATE TABLE IF NOT EXISTS {meta}.tables (table_name VARCHAR, mode VARCHAR, "
            "snapshot_id VARCHAR, rows BIGINT, files INTEGER, synced_at TIMESTAMPTZ, "
            "published_at TIMESTAMPTZ, history_view VARCHAR, history_snapshots INTEGER, "
            "description VARCHAR)"
        )

    def _pointer_files(self, pointer: dict) -> list[str]:
        files = list(pointer["files"])
        for entry in pointer.get("history") or []:
            files.extend(entry["files"])
        return files

    def _missing_files(self, pointer: dict) -> list[str]:
        return [f for f in self._pointer_files(pointer) if not (self.root / f).exists()]

    def _view_sql(self, view: str, pointer: dict, files: list[str]) -> str:
        json_columns = set(pointer["json_columns"])
        select = ", ".join(
            f"CAST({_quote(c)} AS JSON) AS {_quote(c)}" if c in json_columns else _quote(c)
            for c in pointer["columns"]
        )
        paths = ", ".join(_parquet_literal(self.root / f) for f in files)
        return (
            f"CREATE OR REPLACE VIEW {_quote(self.schema)}.{_quote(view)} AS SELECT {select} "
            f"FROM read_parquet([{paths}], union_by_name = true)"
        )

    def _create_views(self, con: duckdb.DuckDBPyConnection, pointer: dict) -> None:
        name = _identifier(pointer["table"], "table name")
        con.execute(self._view_sql(name, pointer, pointer["files"]))
        if pointer.get("description"):
            con.execute(
                f"COMMENT ON VIEW {_quote(self.schema)}.{_quote(name)} "
                f"IS {_literal(pointer['description'])}"
            )
        history = pointer.get("history") or []
        if pointer.get("history_view") and history:
            view = _identifier(pointer["history_view"], "history view name")
            files = [f for entry in history for f in entry["files"]]
            con.execute(self._view_sql(view, pointer, files))
        meta = _quote(self.meta_schema)
        con.execute(f"DELETE FROM {meta}.tables WHERE table_name = ?", [name])
        con.execute(
            f"INSERT INTO {meta}.tables VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                name,
                pointer["mode"],
                pointer["snapshot_id"],
                pointer["rows"],
                len(pointer["files"]),
                datetime.fromisoformat(pointer["synced_at"]),
                datetime.fromisoformat(pointer["published_at"]),
                pointer.get("history_view"),
                len(history) if pointer.get("history_view") else None,
                pointer.get("description") or "",
            ],
        )

    def rebuild_views(self) -> None:
        """Recreate every view from the lake's pointers (after deleting or moving the warehouse)."""
        with self._publish_lock():
            pointers = self._read_all_pointers()
            for name, pointer in pointers.items():
                missing = self._missing_files(pointer)
                if missing:
                    raise LakeError(f"{name}: snapshot file {missing[0]} is missing from LAKE_ROOT")
            self._commit_views(set(pointers), [], heal=False)

    def sync_log(self) -> list[dict]:
        """Rows of ``<schema>_meta.sync_log``, oldest first ([] before the first publish).

        The column is ``table_name`` in SQL (``table`` is a keyword); the dicts say ``table``.
        """
        if not self._has_meta():
            return []
        columns, rows, _ = self.query_table(
            f"SELECT * FROM {_quote(self.meta_schema)}.sync_log ORDER BY published_at, table_name"
        )
        columns = ["table" if c == "table_name" else c for c in columns]
        return [dict(zip(columns, row, strict=True)) for row in rows]

    def last_sync_by_asset(self) -> list[dict]:
        """The latest sync_log entry per asset: asset, synced_at, run_id, published_at."""
        latest: dict[str, dict] = {}
        for row in self.sync_log():
            if row["asset"]:
                latest[row["asset"]] = row
        keys = ("asset", "synced_at", "run_id", "published_at")
        return [{k: row[k] for k in keys} for _, row in sorted(latest.items())]

    def table_status(self) -> list[dict]:
        """Every published table from the lake's pointers: table, rows, files, snapshot, times."""
        return [
            {
                "table": name,
                "mode": p["mode"],
                "rows": p["rows"],
                "files": len(p["files"]),
                "snapshot_id": p["snapshot_id"],
                "synced_at": datetime.fromisoformat(p["synced_at"]),
                "published_at": datetime.fromisoformat(p["published_at"]),
                "history_view": p.get("history_view"),
            }
            for name, p in self._read_all_pointers().items()
        ]

    def has_table(self, table: str) -> bool:
        """Whether ``table`` has been published (so its view exists)."""
        return self._pointer_path(table).exists()

    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple]:
        """Run one read-only statement against the warehouse and return all rows."""
        return self.query_table(sql, params)[1]

    def query_table(
        self, sql: str, params: Sequence[Any] | None = None, *, max_rows: int | None = None
    ) -> tuple[list[str], list[tuple], bool]:
        """(column names, rows, truncated) of one read-only statement; at most ``max_rows``."""
        if not self.warehouse.exists():
            raise LakeError(f"DUCKDB_DATABASE {self.warehouse} does not exist: run a sync first")
        self._await_writer()
        con = self._connect(read_only=True)
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

    def _has_meta(self) -> bool:
        if not self.warehouse.exists():
            return False
        rows = self.query(
            "SELECT 1 FROM duckdb_tables() WHERE schema_name = ? AND table_name = 'sync_log'",
            [self.meta_schema],
        )
        return bool(rows)

    # -- reading the lake --------------------------------------------------------------------

    def _read_pointer(self, table: str) -> dict | None:
        path = self._pointer_path(table)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None

    def _read_all_pointers(self) -> dict[str, dict]:
        directory = self._base() / "_current"
        if not directory.is_dir():
            return {}
        pointers = {}
        for path in sorted(directory.glob("*.json")):
            if _IDENTIFIER.fullmatch(path.stem):
                pointers[path.stem] = json.loads(path.read_text())
        return pointers

    def current_snapshot(self, table: str) -> dict | None:
        """The current snapshot's manifest of ``table`` (None if never published): its
        ``snapshot_id``, ``rows``, ``synced_at``, and the ``asset`` and ``run_id`` that wrote it."""
        return self._read_pointer(table)

    def current_files(self, table: str) -> list[Path]:
        """Absolute paths of the files in ``table``'s current snapshot ([] if never published)."""
        pointer = self._read_pointer(table)
        return [self.root / f for f in pointer["files"]] if pointer else []

    def read_current(self, table: str | TableSpec, columns: list[str] | None = None) -> pa.Table:
        """The current snapshot as one Arrow table; for small state tables only."""
        spec = table if isinstance(table, TableSpec) else self._specs.get(table)
        name = table.name if isinstance(table, TableSpec) else table
        for attempt in range(3):
            files = self.current_files(name)
            if not files:
                if spec is None:
                    # Never published and never seen: no schema to offer, only the names asked for.
                    return pa.table({c: pa.nulls(0) for c in columns or []})
                empty = spec.full_schema.empty_table()
                return empty.select(columns) if columns is not None else empty
            try:
                return _read_parquet_files(
                    files, spec.full_schema if spec is not None else None, columns)
            except FileNotFoundError:
                # A concurrent publish replaced the snapshot and collected these files.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    # -- content-addressed storage -----------------------------------------------------------

    def content_path(self, sha256: str) -> tuple[Path, str]:
        """(absolute path, path relative to root) where content with this sha256 is stored."""
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
            raise LakeError(f"invalid sha256 {sha256!r}: need 64 lowercase hex characters")
        stored = f"{self.schema}/export_files/sha256/{sha256[:2]}/{sha256[2:4]}/{sha256}"
        return self.root / stored, stored

    def store_content(self, tmp_file: Path, sha256: str) -> str:
        """Move a fully written temp file to its content-addressed path; returns stored_path."""
        path, stored = self.content_path(sha256)
        tmp_file = Path(tmp_file)
        if path.exists():
            tmp_file.unlink(missing_ok=True)
            return stored
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp_file, "rb") as f:
            os.fsync(f.fileno())
        try:
            os.replace(tmp_file, path)
        except OSError as e:
            if e.errno != errno.EXDEV:  # the temp file lives on another filesystem
                raise
            staged = path.with_name(f".{sha256}.{secrets.token_hex(4)}.tmp")
            shutil.copyfile(tmp_file, staged)
            with open(staged, "rb") as f:
                os.fsync(f.fileno())
            os.replace(staged, path)
            tmp_file.unlink(missing_ok=True)
        _fsync_dir(path.parent)
        return stored

    # -- locks -------------------------------------------------------------------------------

    def _locks_dir(self) -> Path:
        path = self.root / "_state" / "locks"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @contextmanager
    def lock(self, name: str, *, timeout: float = 0) -> Iterator[None]:
        """An inter-process lock; raises LakeBusyError if it is not free within ``timeout`` s."""
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).lstrip(".")[:100] or "_"
        path = self._locks_dir() / f"{safe}.lock"
        lock = filelock.FileLock(path, timeout=timeout)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise LakeBusyError(f"another sync of {name} is running (lock {path})") from None
        try:
            yield
        finally:
            lock.release()

    # -- garbage collection ------------------------------------------------------------------

    def _gc(self, tables: Iterable[str]) -> None:
        """Delete what no pointer references; runs under the publish lock, failures only log."""
        for table in tables:
            try:
                self._gc_table(table)
            except Exception:
                logger.exception("garbage collection of %s failed", table)
        try:
            self._gc_tmp()
        except Exception:
            logger.exception("garbage collection of %s failed", self.root / "_tmp")

    def _gc_table(self, table: str) -> None:
        pointer = self._read_pointer(table)
        if pointer is None:
            return
        history = pointer.get("history") or []
        keep_ids = {pointer["snapshot_id"]} | {entry["snapshot_id"] for entry in history}
        keep_dirs = {Path(f).parent.name for f in self._pointer_files(pointer)}
        table_dir = self._table_dir(table)
        for path in table_dir.iterdir():
            if path.name.startswith("snapshot_id=") and path.name not in keep_dirs:
                logger.debug("removing unreferenced snapshot %s", path)
                shutil.rmtree(path)
        staging = table_dir / "_staging"
        if staging.is_dir():
            # A staging dir, or a lock file whose dir a killed publish already renamed.
            for name in {p.name.removesuffix(".lock") for p in staging.iterdir()}:
                self._gc_staging(staging / name)
        manifests = self._base() / "_manifests" / table
        if manifests.is_dir():
            for path in manifests.iterdir():
                if path.suffix == ".json" and path.stem not in keep_ids:
                    path.unlink(missing_ok=True)
                elif path.suffix == ".tmp" and _age(path) > STALE_AFTER:
                    path.unlink(missing_ok=True)

    def _gc_staging(self, path: Path) -> None:
        lock_path = path.with_name(f"{path.name}.lock")
        lock = filelock.FileLock(lock_path, timeout=0)
        try:
            lock.acquire()
        except filelock.Timeout:
            return  # its writer is alive
        try:
            if path.exists():
                logger.debug("removing staging dir left by a dead writer: %s", path)
                shutil.rmtree(path)
        finally:
            lock.release()
            lock_path.unlink(missing_ok=True)

    def _gc_tmp(self) -> None:
        for directory in (self.root / "_tmp", self._base() / "_current"):
            if not directory.is_dir():
                continue
            for path in directory.iterdir():
                is_debris = directory.name == "_tmp" or path.suffix == ".tmp"
                if is_debris and path.is_file() and _age(path) > STALE_AFTER:
                    path.unlink(missing_ok=True)


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _check_duckdb_file(path: Path) -> None:
    if path.is_dir():
        raise LakeError(f"DUCKDB_DATABASE {path} is a directory, not a DuckDB database")
    try:
        con = duckdb.connect(str(path), read_only=True)
    except (duckdb.IOException, duckdb.ConnectionException) as e:
        if _is_lock_conflict(e):
            # A live writer proves it is a DuckDB file; publish retries the lock itself.
            return
        if "not a valid DuckDB database" in str(e):
            raise LakeError(f"DUCKDB_DATABASE {path} is not a DuckDB database") from None
        raise LakeError(f"DUCKDB_DATABASE {path} cannot be opened: {e}") from None
    except duckdb.Error as e:
        raise LakeError(f"DUCKDB_DATABASE {path} cannot be opened: {e}") from None
    con.close()


def _probe_writable(directory: Path) -> None:
    fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=directory)
    os.close(fd)
    os.unlink(probe)


class LakeResource(dg.ConfigurableResource):
    """The Parquet lake under LAKE_ROOT and the DuckDB warehouse over it."""

    lake_root: str = "data/lake"
    duckdb_database: str = "data/warehouse.duckdb"
    history_snapshots: int = 7

    def get_lake(self) -> Lake:
        """A Lake over the configured paths, after checking both are usable."""
        root = Path(self.lake_root).expanduser()
        try:
            root.mkdir(parents=True, exist_ok=True)
            _probe_writable(root)
        except OSError as e:
            raise LakeError(
                f"LAKE_ROOT {str(root)!r} is not a writable directory: {e.strerror or e}"
            ) from None
        database = Path(self.duckdb_database).expanduser()
        try:
            database.parent.mkdir(parents=True, exist_ok=True)
            _probe_writable(database.parent)
        except OSError as e:
            raise LakeError(
                f"DUCKDB_DATABASE {str(database)!r}: its directory is not writable: "
                f"{e.strerror or e}"
            ) from None
        if database.exists():
            _check_duckdb_file(database)
        return Lake(root, database, history_snapshots=self.history_snapshots)
