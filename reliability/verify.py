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

from assets.tables import parse_ts
from assets.tabular import CSV_FORMAT, XLSX_FORMAT
from tests.helpers import expected_export_rows

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


def _connect(database: Path) -> duckdb.DuckDBPyConnection:
    # the Lake's own read path retries lock conflicts; the oracle runs when nothing writes
    return duckdb.connect(str(database), read_only=True)


def _extra_of(obj: dict, typed: set[str]) -> dict | None:
    extra = {k: v for k, v in obj.items() if k not in typed}
    return extra or None


def verify_exact(sim: Any, lake_root: Path, database: Path) -> Counts:
    """Every table the sync writes equals the simulator's dataset; every archived file too."""
    ds = sim.dataset
    counts = Counts()
    con = _connect(database)
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
                want_props = g.get("group_properties")
                assert json.loads(props) == (want_props if want_props is not None else {}), (
                    f"group {key!r}: properties differ")
                assert props == json.dumps(want_props if want_props is not None else {},
                                           ensure_ascii=False, separators=(",", ":")), (
                    f"group {key!r}: properties are not json's text")
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
        root = lake_root.resolve()
        for export_id, sha256, size, stored_path, _fmt in contents:
            path = (lake_root / stored_path).resolve()
            assert path.is_relative_to(root), f"export {export_id} stored outside LAKE_ROOT"
            digest = hashlib.sha256()
            n = 0
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
                    n += len(chunk)
            want = ds.export_content_sha256(export_id)
            assert digest.hexdigest() == want == sha256, f"export {export_id}: sha256 differs"
            assert n == size == ds.export_content_length(export_id), (
                f"export {export_id}: size differs")
            counts.files += 1
        counts.rows += len(contents)

        # ---- CSV/XLSX rows: header order and cell text kept, one row per data row
        for export_id, *_rest, fmt in contents:
            if fmt not in (CSV_FORMAT, XLSX_FORMAT):
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

_DATA_FILE = re.compile(r"/snapshot_id=[^/]+/part-\d{5}\.parquet$")


def verify_snapshots(lake_root: Path, database: Path, *, allowed_rows: dict[str, set[int]]
                     | None = None) -> int:
    """After a crash: the warehouse opens; every view reads only published data files of one
    snapshot named by the lake (no staging, temp or .part file); its row count is the
    snapshot's. Returns the number of tables checked."""
    con = duckdb.connect(str(database), read_only=True)
    try:
        views = con.execute(
            "SELECT view_name, sql FROM duckdb_views() WHERE schema_name = 'posthog'"
        ).fetchall()
        manifests = _all_manifests(lake_root)
        for name, sql in views:
            paths = re.findall(r"'([^']+\.parquet)'", sql)
            assert paths, f"view posthog.{name} reads no files"
            for p in paths:
                plain = p.replace("[", "").replace("]", "")
                assert _DATA_FILE.search(plain), f"view posthog.{name} reads {plain}"
                assert "_staging" not in plain and "_tmp" not in plain, plain
                assert Path(plain).exists(), f"view posthog.{name}: {plain} is missing"
            rows, = con.execute(f'SELECT count(*) FROM posthog."{name}"').fetchone()
            files = {p.replace("[", "").replace("]", "") for p in paths}
            # the file set is exactly one published snapshot (or, for history views and
            # append tables, a union of published snapshots)
            rel = {os.path.relpath(f, lake_root.absolute()) for f in files}
            known = manifests.get(name) or manifests.get(name.removesuffix("_history")) or []
            unions = [set(m["files"]) for m in known]
            if not name.endswith("_history"):
                match = [m for m in known if set(m["files"]) == rel]
                assert match, f"view posthog.{name} does not read one published snapshot"
                assert rows == match[0]["rows"], (
                    f"view posthog.{name}: {rows} rows, its snapshot says {match[0]['rows']}")
                if allowed_rows and name in allowed_rows:
                    assert rows in allowed_rows[name], (
                        f"posthog.{name} shows {rows} rows; expected one of {allowed_rows[name]}")
            else:
                assert rel <= set().union(*unions), f"view posthog.{name} reads unknown files"
        return len(views)
    finally:
        con.close()


def _all_manifests(lake_root: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    base = lake_root / "posthog" / "_manifests"
    if not base.is_dir():
        return out
    for table_dir in base.iterdir():
        for path in table_dir.glob("*.json"):
            try:
                out.setdefault(table_dir.name, []).append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
    return out


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
