"""A sync's rows, streamed to local Parquet files before the lake commits them.

Rows arrive over minutes (a crawl of a million groups); they are written as they come, to
zstd Parquet files in the local state directory, so memory stays flat and nothing reaches the
lake until the commit. Those files are the table's data files: the commit moves (or uploads)
them into the Delta table and names them in one log entry (see ``commit.py``), so a sync's rows
are encoded once. A table with a key is deduplicated at close (the last row written wins).
"""

from __future__ import annotations

import ctypes
import gc
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Literal

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from resources.lake.errors import LakeError, literal, quote
from resources.lake.spec import SYNCED_AT, SYNCED_AT_TYPE, TableSpec

# Rows given as dicts are turned into Arrow this many at a time: as Python objects a row takes
# several times its Arrow size, so the dicts are kept few while a row group fills.
_ROWS_AS_DICTS = 2_000
# Rows per staged batch and row group: 5,000 groups (3.5 MB of properties) kept the groups
# step's working set 10 MB under what 10,000 did, at the same speed. Wide rows end a row group
# sooner, at BATCH_BYTES of Arrow data: every later reader of the files (the history, a
# dedupe, DuckDB's views) holds a row group's column at a time, and 5,000 groups of 40 KB of
# properties each would be 200 MB.
BATCH_ROWS = 5_000
BATCH_BYTES = 8 << 20
ROWS_PER_FILE = 500_000
_KEYS_PER_PASS = 250_000  # count_distinct_keys: keys hashed per pass (memory, not time)
# read_parquet globs every path; a one-character class matches the character literally
_GLOB_CHARS = re.compile(r"([*?\[])")


def release_memory() -> None:
    """Give freed memory back to the OS. Every step of a run shares one process, and the
    allocators (Python's, glibc's, Arrow's) otherwise keep what one step used for the next:
    trimming after each step keeps the run's peak at its largest step's instead of their sum."""
    gc.collect()
    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL(None).malloc_trim(0)  # glibc; elsewhere there is nothing to trim
    except (OSError, AttributeError):
        pass


def count_distinct_keys(first_row: Callable[[str], tuple], source: str, key: str
                        ) -> tuple[int, int]:
    """(rows, distinct keys) of ``source`` (SQL after FROM), ``key`` a list of quoted columns;
    ``first_row`` runs a query and returns its first row.

    Distinct 64-bit hashes prove distinct keys in a fraction of the memory (a million keys:
    16 MB of hashes, not 100 MB of strings); only a collision or a real duplicate makes it
    compare the keys themselves.

    The hashes are counted in passes of at most ``_KEYS_PER_PASS`` rows (``hash % passes``: a
    key's rows all fall in one pass, so the sum is exact). DuckDB's hash table for a million
    keys was the run's peak: +47 MB, twice per groups sync (the dedupe before the commit and
    the unique-key check after it); four passes of a quarter of the keys cost +19 MB and a few
    tenths of a second more scanning.
    """
    (total,) = first_row(f"SELECT count(*) FROM {source}")
    passes = max(1, -(-total // _KEYS_PER_PASS))

    def where(expr: str, i: int) -> str:
        return f" WHERE {expr} % {passes} = {i}" if passes > 1 else ""

    hashes = sum(first_row(f"SELECT count(DISTINCT h) FROM (SELECT hash({key}) AS h FROM "
                           f"{source}){where('h', i)}")[0] for i in range(passes))
    if total == hashes:
        return total, total
    distinct = sum(first_row(f"SELECT count(*) FROM (SELECT DISTINCT {key} FROM {source}"
                             f"{where(f'hash({key})', i)})")[0] for i in range(passes))
    return total, distinct


def parquet_list(paths: Iterable[str | Path]) -> str:
    """A DuckDB list literal of file paths, glob characters escaped (read_parquet globs)."""
    escaped = [literal(_GLOB_CHARS.sub(r"[\1]", str(path))) for path in paths]
    return "[" + ", ".join(escaped) + "]"


def rows_within(rows: int, nbytes: int, most: int = BATCH_ROWS) -> int:
    """How many rows of `rows` that take `nbytes` (uncompressed) hold about BATCH_BYTES: at
    least 1, at most `most`."""
    if not rows or not nbytes:
        return most
    return max(1, min(most, rows * BATCH_BYTES // nbytes))


def row_group_rows(con: duckdb.DuckDBPyConnection, files: list[str]) -> int:
    """`rows_within` for Parquet files (their footers read by DuckDB, which `con` must be able
    to read them with): the rows to a row group when they are written again."""
    if not files:
        return BATCH_ROWS
    rows, nbytes = con.execute(
        "SELECT sum(row_group_num_rows), sum(row_group_bytes) FROM (SELECT DISTINCT file_name, "
        f"row_group_id, row_group_num_rows, row_group_bytes FROM parquet_metadata("
        f"{parquet_list(files)}))").fetchone()
    return rows_within(rows or 0, nbytes or 0)


def read_parquet_sql(paths: Iterable[str | Path]) -> str:
    """SQL reading Parquet files as one relation, columns matched by name: files written under
    an older schema read beside newer ones (a column a file lacks is null)."""
    return f"read_parquet({parquet_list(paths)}, union_by_name = true)"


def columns_of(con: duckdb.DuckDBPyConnection, source: str) -> set[str]:
    """The column names of a relation's SQL (such as `read_parquet_sql`'s)."""
    return {row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}


def _parquet_writer(path: Path, schema: pa.Schema) -> pq.ParquetWriter:
    # the table's own data files: zstd, and statistics for every column (Delta's file skipping)
    return pq.ParquetWriter(path, schema, compression="zstd")


def read_files(con: duckdb.DuckDBPyConnection, files: Iterable[str | Path],
               schema: pa.Schema, where: tuple[str, int | str] | None = None) -> pa.Table:
    """Parquet files (of any older schema) as one table of ``schema``: a column a file lacks is
    null, every column cast to its type; ``where`` = (column, value) keeps the rows holding
    that value. ``con`` must be able to read the files' paths."""
    source = read_parquet_sql(files)
    present = columns_of(con, source)
    select = ", ".join(quote(f.name) if f.name in present else f"NULL AS {quote(f.name)}"
                       for f in schema)
    if where is None:
        result = con.sql(f"SELECT {select} FROM {source}").to_arrow_table()
    elif where[0] not in present:
        result = con.sql(f"SELECT {select} FROM {source} LIMIT 0").to_arrow_table()
    else:
        result = con.sql(f"SELECT {select} FROM {source} WHERE {quote(where[0])} = $value",
                         params={"value": where[1]}).to_arrow_table()
    return pa.table([result.column(i).cast(f.type) for i, f in enumerate(schema)], schema=schema)


def remove_dead_leftovers(directory: Path) -> int:
    """Remove entries ``<name>-<pid>-<hex>[.part]`` whose process is gone; how many."""
    removed = 0
    if not directory.is_dir():
        return 0
    for path in directory.iterdir():
        match = re.fullmatch(r".*?-?(\d+)-[0-9a-f]{12,32}(\.part)?", path.name)
        if not match or _alive(int(match.group(1))):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StagedTable:
    """One table's rows for one sync, in local Parquet files until the lake commits them."""

    def __init__(self, spec: TableSpec, directory: Path, synced_at: datetime, *,
                 batch_rows: int = BATCH_ROWS, rows_per_file: int = ROWS_PER_FILE,
                 scope_value: int | str | None = None) -> None:
        if (spec.scope is None) != (scope_value is None):
            raise LakeError(f"{spec.name}: a writer needs a scope value exactly when the table "
                            f"has a scope column (scope={spec.scope!r}, value={scope_value!r})")
        self.spec = spec
        self.scope_value = scope_value
        self.synced_at = synced_at
        # the pid in the name lets a later sync remove what a killed process left
        self.directory = directory / f"{spec.name}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.directory.mkdir(parents=True)
        self.rows_written = 0
        self.duplicates_dropped = 0
        self._batch_rows = batch_rows
        self._rows_per_file = rows_per_file
        self._rows_in_file = 0
        self._prefix = "part"
        self._schema = spec.full_schema
        self._data_schema = pa.schema([f for f in self._schema if f.name != SYNCED_AT])
        self._allowed = frozenset(spec.schema.names)
        self._synced_at = pa.scalar(synced_at, type=SYNCED_AT_TYPE)
        self._scope = (pa.scalar(scope_value, type=spec.schema.field(spec.scope).type)
                       if spec.scope is not None else None)
        self._buffer: list[dict] = []
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._pending_bytes = 0
        self._parquet: pq.ParquetWriter | None = None
        self.files: list[Path] = []
        self.covered: set = set()  # key values replaced even without rows (``replace_keys``)
        self.state: Literal["open", "closed", "committed", "aborted"] = "open"

    def __enter__(self) -> StagedTable:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif self.state == "open":
            self.close()

    # -- writing -----------------------------------------------------------------------------

    def write_rows(self, rows: Iterable[dict]) -> None:
        """Buffer rows (missing keys are null; unknown keys are an error)."""
        self._require_open()
        allowed = self._allowed
        buffer = self._buffer
        limit = min(_ROWS_AS_DICTS, self._batch_rows)
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
        for chunk in table.to_batches(max_chunksize=self._batch_rows):
            self._stage(chunk)

    def close(self) -> None:
        """Finish the files, deduplicated on the key for a snapshot table."""
        if self.state != "open":
            return
        self._flush_rows()
        self._drain()
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None
        if self.spec.key and self.spec.mode == "snapshot" and self.rows_written:
            release_memory()
            self._dedupe()
        self.state = "closed"

    def abort(self) -> None:
        """Drop everything staged."""
        if self.state in ("committed", "aborted"):
            return
        self.state = "aborted"
        if self._parquet is not None:
            try:
                self._parquet.close()
            except Exception:  # the files are being thrown away anyway
                pass
            self._parquet = None
        self._buffer.clear()
        self._pending.clear()
        shutil.rmtree(self.directory, ignore_errors=True)

    def discard(self) -> None:
        """The lake committed the rows: the staged files are no longer needed."""
        self.state = "committed"
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- reading back ------------------------------------------------------------------------

    def rows_per_batch(self) -> int:
        """How many of the staged rows hold about BATCH_BYTES (at most `batch_rows`): the rows
        to read back at a time, fewer when they are wide."""
        rows = size = 0
        for path in self.files:
            metadata = pq.read_metadata(path)
            rows += metadata.num_rows
            size += sum(metadata.row_group(i).total_byte_size
                        for i in range(metadata.num_row_groups))
        return rows_within(rows, size, self._batch_rows)

    def batches(self) -> pa.RecordBatchReader:
        """The staged rows as one stream (the schema's columns, in the order written)."""
        schema = self._schema
        batch_rows = self.rows_per_batch()

        def read() -> Iterator[pa.RecordBatch]:
            for path in self.files:
                with pq.ParquetFile(path) as parquet:
                    yield from parquet.iter_batches(batch_size=batch_rows)

        return pa.RecordBatchReader.from_batches(schema, read())

    def cover(self, values: Iterable) -> None:
        """Replace these key values at the commit even if no row has them (``replace_keys``)."""
        self.covered.update(values)

    def key_values(self) -> list:
        """The key values the commit replaces: those of the staged rows and ``cover``'s."""
        (column,) = self.spec.key
        values: set = set(self.covered)
        for path in self.files:
            with pq.ParquetFile(path) as parquet:
                values.update(parquet.read(columns=[column]).column(column).to_pylist())
        return sorted(v for v in values if v is not None)

    # -- internals ---------------------------------------------------------------------------

    def _require_open(self) -> None:
        if self.state != "open":
            raise LakeError(f"{self.spec.name}: writer is {self.state}")

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
        self._pending.append(batch)
        self._pending_rows += batch.num_rows
        self._pending_bytes += batch.nbytes
        if self._pending_rows >= self._batch_rows or self._pending_bytes >= BATCH_BYTES:
            self._drain()

    def _drain(self) -> None:
        if self._pending:
            table = pa.Table.from_batches(self._pending, schema=self._data_schema)
            self._pending.clear()
            self._pending_rows = 0
            self._pending_bytes = 0
            self._write(table)

    def _write(self, data: pa.Table) -> None:
        n = data.num_rows
        if n == 0:
            return
        synced_at = pa.repeat(self._synced_at, n)
        arrays = [synced_at if f.name == SYNCED_AT else data.column(f.name) for f in self._schema]
        if self._scope is not None:
            # every row is this sync's scope: filled in, or refused when a row says otherwise
            column = self._schema.get_field_index(self.spec.scope)
            given = data.column(self.spec.scope)
            if given.null_count < n and not pc.all(
                    pc.or_kleene(pc.is_null(given), pc.equal(given, self._scope))).as_py():
                raise LakeError(f"{self.spec.name}: a row's {self.spec.scope} is not this "
                                f"sync's {self.scope_value!r}")
            arrays[column] = pa.repeat(self._scope, n)
        table = pa.Table.from_arrays(arrays, schema=self._schema)
        # rows per row group: the table's, unless they hold more than BATCH_BYTES
        group_rows = rows_within(n, table.nbytes, n)
        offset = 0
        while offset < n:
            if self._parquet is None:
                path = self.directory / f"{self._prefix}-{len(self.files):05d}.parquet"
                self._parquet = _parquet_writer(path, self._schema)
                self.files.append(path)
                self._rows_in_file = 0
            take = min(n - offset, self._rows_per_file - self._rows_in_file)
            # `batch_rows` rows (or BATCH_BYTES) to a row group, however many batches they
            # came in
            self._parquet.write_table(table.slice(offset, take), row_group_size=group_rows)
            offset += take
            self._rows_in_file += take
            self.rows_written += take
            if self._rows_in_file >= self._rows_per_file:
                self._parquet.close()
                self._parquet = None

    def _dedupe(self) -> None:
        """Keep one row per key (the last one written), out of core in DuckDB.

        A listing can serve a row twice (e.g. a group created mid-crawl); counting distinct keys
        is cheap, and the files are rewritten only when there are duplicates.
        """
        key = ", ".join(quote(k) for k in self.spec.key)
        files = parquet_list(self.files)
        con = duckdb.connect()
        try:
            con.execute(f"SET temp_directory = {literal(str(self.directory / '.spill'))}")
            con.execute("SET memory_limit = '128MB'")
            con.execute("SET threads = 1")
            total, distinct = count_distinct_keys(
                lambda sql: con.execute(sql).fetchall()[0], f"read_parquet({files})", key
            )
            self.duplicates_dropped = total - distinct
            if total == distinct:
                return
            columns = ", ".join(f"x.{quote(f.name)}" for f in self._schema)
            source = f"read_parquet({files}, filename = true, file_row_number = true)"
            # the rows a later one of the same key replaces, found on the key alone (a wide row
            # never goes through the window), then every other row read as it stands
            replaced = (f"SELECT filename, file_row_number FROM (SELECT filename, "
                        f"file_row_number, row_number() OVER (PARTITION BY {key} ORDER BY "
                        f"filename DESC, file_row_number DESC) AS rn__ FROM {source}) "
                        "WHERE rn__ > 1")
            reader = con.sql(
                f"SELECT {columns} FROM {source} x ANTI JOIN ({replaced}) r "
                "ON x.filename = r.filename AND x.file_row_number = r.file_row_number"
            ).to_arrow_reader(self.rows_per_batch())
            old_files, self.files = self.files, []
            self._prefix = "dedup"  # new files beside the old ones, which DuckDB is reading
            self.rows_written = 0
            for batch in reader:
                self._write(pa.Table.from_batches([pa.RecordBatch.from_arrays(
                    [batch.column(i).cast(f.type) for i, f in enumerate(self._schema)],
                    schema=self._schema)]).drop_columns([SYNCED_AT]))
            if self._parquet is not None:
                self._parquet.close()
                self._parquet = None
            for old in old_files:
                os.unlink(old)
        finally:
            con.close()
            shutil.rmtree(self.directory / ".spill", ignore_errors=True)
