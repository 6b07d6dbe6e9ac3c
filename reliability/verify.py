"""Oracles for the reliability suite: the warehouse equals the simulator, snapshots are whole,
nothing is written outside LAKE_ROOT / DUCKDB_DATABASE, and the API key is nowhere.

Every function raises AssertionError with a precise message on the first difference and
returns counts (rows compared, files compared) for the suite's table.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from assets.tables import parse_ts
from assets.tabular import CSV_FORMAT, TABULAR_FORMATS
from resources.lake import Location
from tests.helpers import exact_json, exact_json_of, expected_export_rows, read_stored

# fields the pipeline types as columns; anything else the API sends must land in `extra`
_GROUP_FIELDS = {"group_type_index", "group_key", "group_properties", "created_at"}
_EXPORT_FIELDS = {"id", "dashboard", "insight", "export_format", "created_at", "has_content",
                  "export_context", "filename", "expires_after", "exception", "user_access_level"}
# a large tabular export is compared by row count and its first and last rows
_FULL_ROW_COMPARE_BYTES = 8 * 1024 * 1024


@dataclass
class Counts:
    rows: int = 0
    files: int = 0

    def __iadd__(self, other: Counts) -> Counts:
        self.rows += other.rows
        self.files += other.files
        return self


def _ts(value: str | None) -> str | None:
    if value is None:
        return None
    return parse_ts(value).strftime("%Y-%m-%dT%H:%M:%S.%f")


def _connect(database: Path, lake_root: Path | str | None = None,
             project_id: int | None = None) -> duckdb.DuckDBPyConnection:
    # the Lake's own read path retries lock conflicts; the oracle runs when nothing writes.
    # An S3 lake's views read s3:// files: the connection gets the lake's filesystem.
    if project_id is None:
        con = duckdb.connect(str(database), read_only=True)
        if lake_root is not None:
            Location.parse(str(lake_root)).register(con)
    else:  # posthog.<table> shows one project's rows: views over the warehouse's, filtered
        con = duckdb.connect()
        if lake_root is not None:
            Location.parse(str(lake_root)).register(con)
        con.execute(f"ATTACH {_sql_text(str(database))} AS wh (READ_ONLY)")
        con.execute("CREATE SCHEMA posthog")
        for (name,) in con.execute("SELECT view_name FROM duckdb_views() WHERE database_name "
                                   "= 'wh' AND schema_name = 'posthog'").fetchall():
            con.execute(f'CREATE VIEW posthog."{name}" AS SELECT * FROM wh.posthog."{name}" '
                        f"WHERE project_id = {int(project_id)}")
    return con


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _extra_of(obj: dict, typed: set[str]) -> dict | None:
    extra = {k: v for k, v in obj.items() if k not in typed}
    return extra or None


def verify_exact(sim: Any, lake_root: Path, database: Path, project_id: int | None = None
                 ) -> Counts:
    """Every table the sync writes equals the simulator's dataset; every archived file too.
    With `project_id`: that project's rows equal its dataset on the simulator."""
    ds = sim.dataset if project_id is None else sim.datasets[project_id]
    counts = Counts()
    con = _connect(database, lake_root, project_id)
    try:
        # ---- group types
        types = con.execute(
            "SELECT group_type_index, group_type, name_singular, name_plural "
            "FROM posthog.group_types ORDER BY 1"
        ).fetchall()
        want_types = [(t["group_type_index"], t["group_type"], t["name_singular"],
                       t["name_plural"]) for t in ds.group_types()]
        assert [tuple(r) for r in types] == want_types, f"group_types differ: {types}"
        counts.rows += len(types)

        # ---- groups: every key once, every property, created_at, unknown fields in `extra`
        total, distinct = con.execute(
            "SELECT count(*), count(DISTINCT (group_type_index, group_key)) FROM posthog.groups"
        ).fetchone()
        assert total == distinct, f"posthog.groups has {total - distinct} duplicated rows"
        cur = con.execute(
            "SELECT group_type_index, group_key, group_properties::VARCHAR, "
            "strftime(created_at AT TIME ZONE 'UTC', '%Y-%m-%dT%H:%M:%S.%f'), extra::VARCHAR "
            "FROM posthog.groups"
        )
        landed: dict[tuple[int, str], tuple] = {}
        while batch := cur.fetchmany(20_000):
            for i, k, p, c, x in batch:
                landed[(i, k)] = (p, c, x)
        expected = 0
        for t in ds.group_types():
            for g in ds.iter_groups(t["group_type_index"]):
                expected += 1
                key = (g["group_type_index"], g["group_key"])
                got = landed.pop(key, None)
                assert got is not None, f"group {key!r} was lost"
                props, created, extra = got
                # the same JSON value exactly (numbers, key order, strings), any spelling; a null
                # or missing bag is NULL
                assert exact_json(props) == exact_json_of(g.get("group_properties")), (
                    f"group {key!r}: properties differ")
                assert created == _ts(g.get("created_at")), f"group {key!r}: created_at differs"
                want_extra = _extra_of(g, _GROUP_FIELDS)
                if want_extra is not None:
                    assert extra is not None and json.loads(extra) == want_extra, (
                        f"group {key!r}: unknown fields not kept in extra")
        assert not landed, f"{len(landed)} groups landed that PostHog does not hold: " \
                           f"{list(landed)[:3]!r}"
        counts.rows += expected

        # ---- exports metadata: every visible export, every field
        exports = {r[0]: r for r in con.execute(
            "SELECT id, dashboard, insight, export_format, export_context::VARCHAR, filename, "
            "strftime(expires_after AT TIME ZONE 'UTC', '%Y-%m-%dT%H:%M:%S.%f'), "
            "strftime(created_at AT TIME ZONE 'UTC', '%Y-%m-%dT%H:%M:%S.%f'), extra::VARCHAR, "
            "listed, has_content, exception FROM posthog.exports"
        ).fetchall()}
        (n_rows, n_ids), = con.execute(
            "SELECT count(*), count(DISTINCT id) FROM posthog.exports").fetchall()
        assert n_rows == n_ids, "posthog.exports has duplicated ids"
        visible = ds.exports(user_id=1)
        for e in visible:
            row = exports.get(e["id"])
            assert row is not None, f"export {e['id']} was lost"
            assert row[1:4] == (e["dashboard"], e["insight"], e["export_format"]), e["id"]
            ctx = json.loads(row[4]) if row[4] is not None else None
            assert ctx == e["export_context"], f"export {e['id']}: export_context differs"
            assert row[5] == e["filename"], f"export {e['id']}: filename differs"
            assert row[6] == _ts(e["expires_after"]), f"export {e['id']}: expires_after differs"
            assert row[7] == _ts(e["created_at"]), f"export {e['id']}: created_at differs"
            want_extra = _extra_of(e, _EXPORT_FIELDS)
            if want_extra is not None:
                assert row[8] is not None and json.loads(row[8]) == want_extra, (
                    f"export {e['id']}: unknown fields not kept in extra")
            assert row[9] is True, f"export {e['id']} is listed but landed as unlisted"
            # video exports get content while the sync polls them, and a pending export is
            # declared stuck by PostHog after 10 minutes: both change with time, not the sync
            if not e["export_format"].startswith("video/"):
                assert row[10] == e["has_content"], f"export {e['id']}: has_content differs"
                if e["has_content"] or (e["exception"] or "").find("without throwing") < 0:
                    assert row[11] == e["exception"], f"export {e['id']}: exception differs"
        counts.rows += len(visible)

        # ---- archived files: every export with content, byte for byte, inside LAKE_ROOT
        contents = con.execute(
            "SELECT export_id, sha256, size_bytes, stored_path, export_format "
            "FROM posthog.export_contents"
        ).fetchall()
        by_id = {r[0]: r for r in contents}
        assert len(by_id) == len(contents), "posthog.export_contents has duplicated export ids"
        want_ids = {e["id"] for e in visible if not e["export_format"].startswith("video/")
                    and ds.export_content_length(e["id"]) is not None}
        missing = want_ids - by_id.keys()
        assert not missing, f"exports with content not archived: {sorted(missing)[:10]}"
        for export_id, sha256, size, stored_path, _fmt in contents:
            data = read_stored(lake_root, stored_path)
            digest = hashlib.sha256(data)
            n = len(data)
            want = ds.export_content_sha256(export_id)
            assert digest.hexdigest() == want == sha256, f"export {export_id}: sha256 differs"
            assert n == size == ds.export_content_length(export_id), (
                f"export {export_id}: size differs")
            counts.files += 1
        counts.rows += len(contents)

        # ---- CSV/XLSX rows (header order, cell text), JSON Lines records, JSON array elements
        for export_id, *_rest, fmt in contents:
            if fmt not in TABULAR_FORMATS:
                continue
            counts.rows += _verify_rows(con, ds, export_id, fmt)
    finally:
        con.close()
    return counts


def _verify_rows(con: duckdb.DuckDBPyConnection, ds: Any, export_id: int, fmt: str) -> int:
    length = ds.export_content_length(export_id)
    if length > _FULL_ROW_COMPARE_BYTES and fmt == CSV_FORMAT:
        # stream the expected CSV: count rows, compare the first and last
        text = io.TextIOWrapper(io.BufferedReader(_IterStream(ds.export_content_iter(export_id))),
                                encoding="utf-8-sig", newline="")
        reader = csv.reader(text)
        header = next(reader)
        first = last = None
        n = 0
        for r in reader:
            n += 1
            if first is None:
                first = dict(zip(header, r, strict=False))
            last = dict(zip(header, r, strict=False))
        got_n, = con.execute("SELECT count(*) FROM posthog.export_rows WHERE export_id = ?",
                             [export_id]).fetchone()
        assert got_n == n, f"export {export_id}: {got_n} rows landed, file has {n}"
        ends = con.execute(
            "SELECT row::VARCHAR FROM posthog.export_rows WHERE export_id = ? "
            "AND row_number IN (1, ?) ORDER BY row_number", [export_id, n]).fetchall()
        assert [json.loads(r[0]) for r in ends] == [first, last], f"export {export_id}: rows differ"
        return n
    want = expected_export_rows(ds.export_content(export_id), fmt)
    rows = con.execute(
        "SELECT row_number, row::VARCHAR FROM posthog.export_rows WHERE export_id = ? "
        "ORDER BY row_number", [export_id]).fetchall()
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1)), f"export {export_id}: numbering"
    got = [json.loads(r[1]) for r in rows]
    assert got == want, f"export {export_id}: rows differ"
    assert [list(r) for r in got] == [list(r) for r in want], f"export {export_id}: column order"
    return len(rows)


class _IterStream(io.RawIOBase):
    def __init__(self, chunks):
        self._chunks = iter(chunks)
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._buf:
            self._buf = next(self._chunks, b"")
            if not self._buf:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


# ------------------------------------------------------------------ snapshot integrity


def _version_files(location: Location, uri: str, version: int | None = None
                   ) -> tuple[set[str], int]:
    """(data files, rows) of one Delta version (the latest if None) of a lake table."""
    table = DeltaTable(uri, version=version, storage_options=location.storage_options)
    actions = pa.table(table.get_add_actions(flatten=True))
    rows = sum(actions.column("num_records").to_pylist()) if actions.num_rows else 0
    return set(location.data_files(table)), rows


def _has_table(location: Location, uri: str) -> bool:
    try:
        DeltaTable(uri, storage_options=location.storage_options)
    except TableNotFoundError:
        return False
    return True


def verify_snapshots(lake_root: Path | str, database: Path, *,
                     allowed_rows: dict[str, set[int]] | None = None) -> int:
    """After a crash: the warehouse opens, and every view reads exactly the files of one
    committed Delta version of its table (the old one or a new one, never a mix, never a
    staged file), with that version's row count; every archived tabular export has all its
    rows. Returns the number of tables checked."""
    location = Location.parse(str(lake_root))
    con = _connect(database, lake_root)
    try:
        views = con.execute(
            "SELECT view_name, sql FROM duckdb_views() WHERE schema_name = 'posthog'"
        ).fetchall()
        for name, sql in views:
            paths = {p.replace("[", "").replace("]", "")
                     for p in re.findall(r"'([^']+\.parquet)'", sql)}
            for p in paths:
                assert p.startswith(location.join("posthog", name) + "/"), p
                if location.is_local:
                    assert Path(p).exists(), f"view posthog.{name}: {p} is missing"
            uri = location.join("posthog", name)
            latest = DeltaTable(uri, storage_options=location.storage_options).version()
            match = None
            for version in range(latest, max(-1, latest - 60), -1):
                files, rows = _version_files(location, uri, version)
                if files == paths:
                    match = (version, rows)
                    break
            assert match is not None, f"view posthog.{name} does not read one Delta version"
            (count,) = con.execute(f'SELECT count(*) FROM posthog."{name}"').fetchone()
            assert count == match[1], (
                f"view posthog.{name}: {count} rows, its Delta version says {match[1]}")
            if allowed_rows and name in allowed_rows:
                assert count in allowed_rows[name], (
                    f"posthog.{name} shows {count} rows; expected one of {allowed_rows[name]}")
        verify_archived_exports_have_their_rows(lake_root)
        return len(views)
    finally:
        con.close()


def verify_archived_exports_have_their_rows(lake_root: Path | str) -> int:
    """In the lake's current versions: every archived CSV/XLSX export's rows are all in
    export_rows (the rows commit before the record that says archived). Returns exports seen."""
    from assets.tabular import TABULAR_FORMATS, iter_json_rows

    location = Location.parse(str(lake_root))
    contents_uri, rows_uri = (location.join("posthog", t) for t in ("export_contents",
                                                                      "export_rows"))
    if not _has_table(location, contents_uri):
        return 0
    contents_files, _ = _version_files(location, contents_uri)
    if not contents_files:
        return 0
    con = location.register(duckdb.connect())
    try:
        archived = con.execute(
            "SELECT project_id, export_id, export_format, stored_path "
            f"FROM read_parquet({sorted(contents_files)})"
        ).fetchall()
        rows_by_export: dict[tuple[int, int], int] = {}
        if _has_table(location, rows_uri):
            files, _ = _version_files(location, rows_uri)
            if files:
                rows_by_export = {(p, e): n for p, e, n in con.execute(
                    "SELECT project_id, export_id, count(*) "
                    f"FROM read_parquet({sorted(files)}) GROUP BY 1, 2"
                ).fetchall()}
    finally:
        con.close()
    for project_id, export_id, fmt, stored_path in archived:
        if fmt in TABULAR_FORMATS:
            data = read_stored(lake_root, stored_path)
            expected = sum(1 for _ in iter_json_rows(lambda d=data: io.BytesIO(d), fmt))
            got = rows_by_export.get((project_id, export_id), 0)
            assert got == expected, (
                f"project {project_id}'s export {export_id} is archived with {got} of its "
                f"{expected} rows")
    return len(archived)


# ------------------------------------------------------------------ writes and secrets


def files_under(directory: Path) -> set[Path]:
    return {p for p in directory.rglob("*") if p.is_file() or p.is_symlink()} \
        if directory.exists() else set()


def find_secret(key: str, *, paths: list[Path] = (), texts: dict[str, str] | None = None
                ) -> list[str]:
    """Where `key` appears: files under `paths` (binary scan, so Parquet, DuckDB, SQLite and
    Dagster's event log are covered) and named texts (stdout, stderr, exception messages)."""
    needle = key.encode()
    hits = []
    for root in paths:
        for path in sorted(files_under(Path(root))):
            try:
                with open(path, "rb") as fh:
                    tail = b""
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        if needle in tail + chunk:
                            hits.append(str(path))
                            break
                        tail = chunk[-len(needle):]
            except OSError:
                continue
    for name, text in (texts or {}).items():
        if key in (text or ""):
            hits.append(name)
    return hits


def tree_snapshot(directory: Path) -> set[str]:
    """Every path under `directory` (for "nothing written outside" checks)."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(directory):
        for n in dirnames + filenames:
            out.add(os.path.join(dirpath, n))
    return out
