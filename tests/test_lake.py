"""The lake (resources/lake/): real Delta tables on local disk, a real DuckDB warehouse file."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from resources.lake import Lake, LakeError, LakeResource, Maintenance, TableSpec
from resources.lake import warehouse as warehouse_module

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

GROUPS = TableSpec(
    name="groups",
    schema=pa.schema([
        ("group_key", pa.string()),
        ("group_properties", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]),
    json_columns=("group_properties",),
    key=("group_key",),
    history="groups_history",
    description="groups in the latest snapshot",
)
ROWS = TableSpec(
    name="rows", schema=pa.schema([("export_id", pa.int64()), ("n", pa.int64())]),
    mode="replace_keys", key=("export_id",),
)
ITEMS = TableSpec(
    name="items", schema=pa.schema([("id", pa.int64()), ("name", pa.string())]),
    mode="merge", key=("id",),
)
STATE = TableSpec(name="state", schema=pa.schema([("id", pa.int64())]))


def make_lake(tmp_path: Path, **kwargs) -> Lake:
    return Lake(tmp_path / "lake", tmp_path / "wh.duckdb", tmp_path / "state", **kwargs)


def query(lake: Lake, sql: str, *, timezone: str | None = None) -> list[tuple]:
    con = duckdb.connect(str(lake.warehouse_path), read_only=True)
    try:
        if timezone:
            con.execute(f"SET TimeZone = '{timezone}'")
        return con.execute(sql).fetchall()
    finally:
        con.close()


def publish_rows(lake: Lake, spec: TableSpec, rows: list[dict], synced_at: datetime = T0,
                 **kwargs):
    with lake.writer(spec, synced_at=synced_at) as w:
        w.write_rows(rows)
    return lake.publish([w], run_id="r1", asset="a", **kwargs)[0]


def group(key: str, **props) -> dict:
    return {"group_key": key, "group_properties": json.dumps(props), "created_at": T0}


def data_files(lake: Lake, table: str) -> list[Path]:
    return sorted((Path(lake.root) / "posthog" / table).glob("*.parquet"))


def test_lake_snapshot_is_one_delta_commit_and_a_typed_view(tmp_path):
    lake = make_lake(tmp_path)
    first = publish_rows(lake, GROUPS, [group("a", plan="pro", seats={"n": 5}), group("b")])
    second = publish_rows(lake, GROUPS, [group("c")], T0 + timedelta(hours=1))
    assert second.version == first.version + 1 and second.rows == 1
    assert query(lake, "SELECT group_key FROM posthog.groups") == [("c",)]
    types = dict((c[0], c[1]) for c in query(lake, "DESCRIBE posthog.groups"))
    assert types["group_properties"] == "JSON"
    assert types["created_at"] == types["synced_at"] == "TIMESTAMP WITH TIME ZONE"
    # the superseded version stays readable (time travel) until retention has passed
    old = DeltaTable(lake.table_uri("groups"), version=first.version)
    rows = duckdb.sql(f"SELECT group_key, group_properties::JSON->>'plan' FROM read_parquet("
                      f"{old.file_uris()}) ORDER BY 1").fetchall()
    assert rows == [("a", "pro"), ("b", None)]
    # and the commit says which sync made it
    assert lake.current_snapshot("groups")["run_id"] == "r1"
    assert lake.last_sync_by_asset() == [{"asset": "a", "synced_at": T0 + timedelta(hours=1),
                                          "run_id": "r1"}]


def test_lake_timestamps_are_timestamptz_whatever_the_session_timezone(tmp_path):
    lake = make_lake(tmp_path)
    publish_rows(lake, GROUPS, [group("a")])
    for tz in ("UTC", "Asia/Tokyo", "America/Los_Angeles"):
        rows = query(lake, "SELECT epoch(created_at), created_at = "
                     "TIMESTAMPTZ '2024-05-01 12:00:00+00' FROM posthog.groups", timezone=tz)
        assert rows == [(T0.timestamp(), True)]


def test_lake_empty_snapshot_has_its_schema(tmp_path):
    lake = make_lake(tmp_path)
    publish_rows(lake, STATE, [])
    assert query(lake, "SELECT count(*) FROM posthog.state") == [(0,)]
    assert lake.read_current(STATE).column_names == ["id", "synced_at"]


def test_lake_history_is_type_2_and_grows_only_with_changes(tmp_path):
    lake = make_lake(tmp_path)
    t1, t2, t3 = T0, T0 + timedelta(days=1), T0 + timedelta(days=2)
    publish_rows(lake, GROUPS, [group("a", plan="free"), group("b", plan="free")], t1)
    publish_rows(lake, GROUPS, [group("a", plan="free"), group("b", plan="free")], t2)
    assert query(lake, "SELECT count(*) FROM posthog.groups_history") == [(2,)]
    published = publish_rows(lake, GROUPS, [group("a", plan="paid"), group("c")], t3)
    assert published.extra["history_rows_written"] == 3  # a changed, b deleted, c new
    rows = query(lake, "SELECT group_key, group_properties->>'plan', valid_from, valid_to "
                 "FROM posthog.groups_history ORDER BY group_key, valid_from")
    assert rows == [
        ("a", "free", t1, t3), ("a", "paid", t3, None),
        ("b", "free", t1, t3),
        ("c", None, t3, None),
    ]
    moved = query(lake, "SELECT min(valid_from) FROM posthog.groups_history "
                  "WHERE group_key = 'a' AND group_properties->>'plan' = 'paid'")
    assert moved == [(t3,)]


def test_lake_snapshot_keeps_the_last_row_per_key(tmp_path):
    lake = make_lake(tmp_path)
    published = publish_rows(lake, GROUPS, [group("a", v=1), group("b"), group("a", v=2)])
    assert published.rows == 2
    assert query(lake, "SELECT group_properties->>'v' FROM posthog.groups "
                 "WHERE group_key = 'a'") == [("2",)]


def test_lake_replace_keys_redone_never_duplicates(tmp_path):
    lake = make_lake(tmp_path)
    publish_rows(lake, ROWS, [{"export_id": 1, "n": i} for i in range(3)])
    publish_rows(lake, ROWS, [{"export_id": 2, "n": 0}])
    # the same export again (a sync redone after a kill): replaced, not appended
    publish_rows(lake, ROWS, [{"export_id": 1, "n": i} for i in range(3)])
    assert query(lake, "SELECT export_id, count(*) FROM posthog.rows GROUP BY 1 ORDER BY 1") \
        == [(1, 3), (2, 1)]
    # a covered key with no rows now loses its rows
    with lake.writer(ROWS) as w:
        w.cover([2])
    lake.publish([w])
    assert query(lake, "SELECT DISTINCT export_id FROM posthog.rows") == [(1,)]


def test_lake_merge_upserts_on_the_key(tmp_path):
    lake = make_lake(tmp_path)
    publish_rows(lake, ITEMS, [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])
    publish_rows(lake, ITEMS, [{"id": 2, "name": "B"}, {"id": 3, "name": "c"}])
    assert query(lake, "SELECT id, name FROM posthog.items ORDER BY id") == [
        (1, "a"), (2, "B"), (3, "c")]


def test_lake_failing_writer_leaves_the_table_and_no_staged_files(tmp_path):
    lake = make_lake(tmp_path)
    publish_rows(lake, STATE, [{"id": 1}])
    with pytest.raises(RuntimeError), lake.writer(STATE) as w:
        w.write_rows([{"id": 2}])
        raise RuntimeError("crawl failed")
    assert query(lake, "SELECT id FROM posthog.state") == [(1,)]
    assert not any(lake.tmp_dir("staging").iterdir())
    with pytest.raises(LakeError, match="unknown column"), lake.writer(STATE) as w:
        w.write_rows([{"id": 1, "nope": 2}])


def test_lake_reader_holding_the_warehouse_never_costs_a_sync_its_data(tmp_path, monkeypatch,
                                                                        caplog):
    """A notebook holds the DuckDB file through a whole publish: the commit stands, the step
    warns, and the views catch up at the next refresh."""
    lake = make_lake(tmp_path)
    publish_rows(lake, STATE, [{"id": 1}])
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
         "print('held', flush=True); time.sleep(60)", str(lake.warehouse_path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(warehouse_module, "BUSY_TIMEOUT", 0.5)
        with caplog.at_level(logging.WARNING):
            published = publish_rows(lake, STATE, [{"id": 2}], T0 + timedelta(hours=1))
        assert published.rows == 1
        assert "views were not refreshed" in caplog.text and "rebuild-views" in caplog.text
        assert lake.read_current(STATE, ["id"]).to_pylist() == [{"id": 2}]
    finally:
        holder.kill()
        holder.wait()
    assert query(lake, "SELECT id FROM posthog.state") == [(1,)]  # stale, not lost
    lake.rebuild_views()
    assert query(lake, "SELECT id FROM posthog.state") == [(2,)]


def test_lake_file_counts_stay_bounded_over_many_syncs(tmp_path):
    lake = make_lake(tmp_path, maintenance=Maintenance(retention=timedelta(0), compact_files=4))
    for i in range(40):
        publish_rows(lake, ROWS, [{"export_id": i, "n": 0}], T0 + timedelta(minutes=i))
        publish_rows(lake, STATE, [{"id": i}], T0 + timedelta(minutes=i))
    assert query(lake, "SELECT count(*) FROM posthog.rows") == [(40,)]
    for table in ("rows", "state"):
        assert len(data_files(lake, table)) <= 5
        assert len(DeltaTable(lake.table_uri(table)).file_uris()) <= 5


def test_lake_compaction_keeps_row_groups_small_in_bytes(tmp_path):
    """delta-rs's compaction would put every row in one row group; it is given the rows that
    hold about 8 MB (50 KB rows: some 160), as staging writes them."""
    from resources.lake import BATCH_BYTES

    wide = TableSpec(name="wide", schema=pa.schema([("id", pa.int64()), ("blob", pa.string())]),
                     mode="merge", key=("id",))
    lake = make_lake(tmp_path, maintenance=Maintenance(retention=timedelta(0), compact_files=3))
    for i in range(5):  # a merge adds a file each time; the fourth is compacted
        publish_rows(lake, wide, [{"id": i * 200 + j, "blob": f"{j:05d}" * 10_000}
                                  for j in range(200)], T0 + timedelta(minutes=i))
    assert query(lake, "SELECT count(*), count(DISTINCT id) FROM posthog.wide") == [(1000, 1000)]
    files = DeltaTable(lake.table_uri("wide")).file_uris()
    assert len(files) <= 3
    groups = [pq.read_metadata(f).row_group(g) for f in files
              for g in range(pq.read_metadata(f).num_row_groups)]
    assert len(groups) >= 1000 * 50_000 // BATCH_BYTES
    assert all(g.total_byte_size < 1.5 * BATCH_BYTES for g in groups)


def test_lake_rebuild_views_recreates_a_deleted_warehouse(tmp_path):
    lake = make_lake(tmp_path)
    publish_rows(lake, GROUPS, [group("a")])
    publish_rows(lake, STATE, [{"id": 7}])
    lake.warehouse_path.unlink()
    lake.rebuild_views()
    assert query(lake, "SELECT count(*) FROM posthog.groups_history") == [(1,)]
    assert query(lake, "SELECT id FROM posthog.state") == [(7,)]
    assert sorted(t["table"] for t in lake.table_status()) == ["groups", "groups_history",
                                                               "state"]


def test_lake_root_with_quotes_spaces_and_glob_characters_works(tmp_path):
    lake = Lake(tmp_path / "it's a lake*? #ü", tmp_path / "o'neil.duckdb", tmp_path / "st")
    (tmp_path / "it's a lakeXY #ü").mkdir()  # what the glob characters would match unescaped
    publish_rows(lake, GROUPS, [group("a")])
    assert query(lake, "SELECT group_key FROM posthog.groups") == [("a",)]
    assert lake.read_current(GROUPS, ["group_key"]).to_pylist() == [{"group_key": "a"}]
    with pytest.raises(LakeError, match=r"contains \[ \].*delta-rs"):
        Lake(tmp_path / "[a]", tmp_path / "w.duckdb")


def test_lake_read_current_reads_files_of_an_older_schema(tmp_path):
    lake = make_lake(tmp_path)
    publish_rows(lake, ITEMS, [{"id": 1, "name": "a"}])
    wider = TableSpec(name="items", mode="merge", key=("id",), schema=pa.schema(
        [("id", pa.int64()), ("name", pa.string()), ("kind", pa.string())]))
    publish_rows(lake, wider, [{"id": 3, "name": "c", "kind": "k"}], T0 + timedelta(hours=1))
    both = lake.read_current(wider)
    assert both.column_names == ["id", "name", "kind", "synced_at"]
    assert sorted(both.select(["id", "kind"]).to_pylist(), key=lambda r: r["id"]) == [
        {"id": 1, "kind": None}, {"id": 3, "kind": "k"}]


@pytest.mark.parametrize("kwargs", [
    {"name": "bad-name"}, {"name": "x; DROP"}, {"json_columns": ("nope",)},
    {"mode": "merge"}, {"key": ("nope",)},
])
def test_table_spec_rejects_unsafe_or_incomplete_specs(kwargs):
    base = {"name": "t", "schema": pa.schema([("a", pa.string())])}
    with pytest.raises(LakeError):
        TableSpec(**(base | kwargs))


def test_lake_store_content_is_content_addressed_and_refuses_bad_hashes(tmp_path):
    import hashlib

    lake = make_lake(tmp_path)
    tmp = lake.new_tmp_file()
    tmp.write_bytes(b"hello")
    sha = hashlib.sha256(b"hello").hexdigest()
    stored = lake.store_content(tmp, sha)
    assert stored == f"posthog/export_files/sha256/{sha[:2]}/{sha[2:4]}/{sha}"
    with lake.open_content(stored) as fh:
        assert fh.read() == b"hello"
    assert lake.files.verify(stored, sha, 5) is None
    assert "does not match" in lake.files.verify(stored, sha, 6)
    for bad in ("../../etc/passwd", "A" * 64, "ab"):
        with pytest.raises(LakeError, match="sha256"):
            lake.store_content(tmp, bad)
    with pytest.raises(LakeError, match="not inside"):
        lake.open_content("../outside")


def test_lake_resource_errors_name_the_variables(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    lake_root, database = str(tmp_path / "lake"), str(tmp_path / "w.duckdb")
    with pytest.raises(LakeError, match="LAKE_ROOT"):
        LakeResource(lake_root=str(blocker / "lake"), duckdb_database=database).get_lake()
    with pytest.raises(LakeError, match="DUCKDB_DATABASE.*directory"):
        LakeResource(lake_root=lake_root, duckdb_database=str(blocker / "w.duckdb")).get_lake()
    corrupt = tmp_path / "corrupt.duckdb"
    corrupt.write_bytes(os.urandom(8192))
    with pytest.raises(LakeError, match="DUCKDB_DATABASE .* is not a DuckDB database"):
        LakeResource(lake_root=lake_root, duckdb_database=str(corrupt)).get_lake()
    with pytest.raises(LakeError, match="only a local path or s3"):
        LakeResource(lake_root="gs://bucket/x", duckdb_database=database).get_lake()


def test_lake_resource_read_only_creates_nothing(tmp_path):
    before = sorted(tmp_path.rglob("*"))
    lake = LakeResource(lake_root=str(tmp_path / "lake"),
                        duckdb_database=str(tmp_path / "db" / "w.duckdb")).get_lake(create=False)
    assert lake.tables() == [] and lake.table_status() == []
    assert sorted(tmp_path.rglob("*")) == before


def _old_format_lake(root: Path) -> None:
    """A lake as the snapshot format before Delta left it: Parquet files and JSON pointers."""
    base = root / "posthog"
    (base / "_current").mkdir(parents=True)
    ts = pa.timestamp("us", tz="UTC")

    def snapshot(table: str, sid: str, rows: dict, types: dict, synced_at: datetime) -> str:
        directory = base / table / f"snapshot_id={sid}"
        directory.mkdir(parents=True)
        data = pa.table({**rows, "synced_at": [synced_at] * len(next(iter(rows.values())))},
                        schema=pa.schema([*types.items(), ("synced_at", ts)]))
        pq.write_table(data, directory / "part-00000.parquet")
        return f"posthog/{table}/snapshot_id={sid}/part-00000.parquet"

    group_types = {"group_type_index": pa.int64(), "group_type": pa.string(),
                   "group_key": pa.string(), "group_properties": pa.string()}
    s1 = snapshot("groups", "s1", {"group_type_index": [0, 0], "group_type": ["org", "org"],
                                   "group_key": ["a", "b"],
                                   "group_properties": ['{"plan":"free"}', "{}"]},
                  group_types, T0)
    s2 = snapshot("groups", "s2", {"group_type_index": [0], "group_type": ["org"],
                                   "group_key": ["a"], "group_properties": ['{"plan":"paid"}']},
                  group_types, T0 + timedelta(days=1))
    history = [{"snapshot_id": "s1", "synced_at": T0.isoformat(), "rows": 2, "files": [s1]},
               {"snapshot_id": "s2", "synced_at": (T0 + timedelta(days=1)).isoformat(),
                "rows": 1, "files": [s2]}]
    (base / "_current" / "groups.json").write_text(json.dumps({
        "table": "groups", "files": [s2], "synced_at": history[-1]["synced_at"],
        "history": history}))
    r1 = snapshot("export_rows", "r1", {"export_id": [5, 5], "row_number": [1, 2],
                                        "row": ['{"a":"1"}', '{"a":"2"}']},
                  {"export_id": pa.int64(), "row_number": pa.int64(), "row": pa.string()}, T0)
    (base / "_current" / "export_rows.json").write_text(json.dumps({
        "table": "export_rows", "files": [r1], "synced_at": T0.isoformat()}))
    (base / "export_files" / "sha256" / "ab").mkdir(parents=True)
    (base / "export_files" / "sha256" / "ab" / "file").write_bytes(b"kept")


def test_lake_refuses_an_old_format_lake_and_migrate_lake_moves_it(tmp_path):
    _old_format_lake(tmp_path / "lake")
    env = {**os.environ, "LAKE_ROOT": str(tmp_path / "lake"),
           "DUCKDB_DATABASE": str(tmp_path / "wh.duckdb"),
           "PIPELINE_STATE_DIR": str(tmp_path / "state")}
    resource = LakeResource(lake_root=env["LAKE_ROOT"], duckdb_database=env["DUCKDB_DATABASE"],
                            state_dir=env["PIPELINE_STATE_DIR"])
    with pytest.raises(LakeError, match="old snapshot format.*posthog-pipeline migrate-lake"):
        resource.get_lake()
    cli = [sys.executable, "-m", "pipelines.cli"]
    env.pop("POSTHOG_PROJECT_ID", None)
    unnamed = subprocess.run([*cli, "migrate-lake"], env=env, capture_output=True, text=True,
                             timeout=120)
    assert unnamed.returncode == 1 and "--project-id" in unnamed.stderr
    done = subprocess.run([*cli, "migrate-lake", "--project-id", "7"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "groups: 1 rows" in done.stdout and "export_rows: 2 rows" in done.stdout
    lake = resource.get_lake()
    assert query(lake, "SELECT project_id, group_key, group_properties->>'plan', valid_from, "
                 "valid_to FROM posthog.groups_history ORDER BY group_key, valid_from") == [
        (7, "a", "free", T0, T0 + timedelta(days=1)),
        (7, "a", "paid", T0 + timedelta(days=1), None),
        (7, "b", None, T0, T0 + timedelta(days=1))]
    assert query(lake, "SELECT project_id, group_key, synced_at FROM posthog.groups") == [
        (7, "a", T0 + timedelta(days=1))]
    assert query(lake, "SELECT project_id, count(*) FROM posthog.export_rows GROUP BY 1") == [
        (7, 2)]
    assert (tmp_path / "lake" / "posthog" / "export_files" / "sha256" / "ab" / "file").exists()
    assert list((tmp_path / "lake").glob("posthog.old-format-*/_current/groups.json"))
    again = subprocess.run([*cli, "migrate-lake", "--project-id", "7"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "nothing to migrate" in again.stdout, again.stderr


def test_lake_lock_is_exclusive_across_processes(tmp_path):
    lake = make_lake(tmp_path)
    code = ("import sys, time; from resources.lake import Lake; "
            "lake = Lake(sys.argv[1], sys.argv[2], sys.argv[3]); "
            "cm = lake.lock('posthog_groups'); cm.__enter__(); print('locked', flush=True); "
            "time.sleep(30)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "lake"),
                               str(lake.warehouse_path), str(lake.state_dir)],
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        with pytest.raises(LakeError, match="another sync of posthog_groups"):
            with lake.lock("posthog_groups", timeout=0.2):
                pass
        assert time.monotonic() - started < 5
    finally:
        holder.kill()
        holder.wait()
    with lake.lock("posthog_groups", timeout=5):
        pass


def test_lake_snapshot_that_drops_too_many_rows_fails_before_any_commit(tmp_path):
    lake = make_lake(tmp_path)
    publish_rows(lake, GROUPS, [group(str(i)) for i in range(10)])
    version = lake.table("groups").version()
    with lake.writer(GROUPS) as w:
        w.write_rows([group("0"), group("1"), group("2")])
    with pytest.raises(LakeError, match=r"3 rows where the table holds 10, a drop of 70%.*"
                                        r"max_row_drop: 1\.0"):
        lake.publish([w], max_drop=0.5)
    assert lake.table("groups").version() == version  # nor its history
    assert query(lake, "SELECT count(*) FROM posthog.groups") == [(10,)]
    assert query(lake, "SELECT count(*) FROM posthog.groups_history") == [(10,)]
    published = publish_rows(lake, GROUPS, [group("0")], max_drop=1.0)
    assert published.rows == 1


@pytest.mark.parametrize("width", [10, 100_000])
def test_lake_snapshot_keeps_the_last_row_of_a_key_written_twice_however_wide(tmp_path, width):
    """A listing can serve a group twice. The later row wins; at 100 KB a row (100 MB in all),
    finding the replaced rows on the key alone stays within DuckDB's 128 MB, where a window
    over whole rows ran out of memory."""
    lake = make_lake(tmp_path)
    rows = [group(f"k{i % 950}", n=i, blob="x" * width) for i in range(1_000)]
    published = publish_rows(lake, GROUPS, rows)
    assert published.rows == 950
    with lake.writer(GROUPS) as w:
        w.write_rows(rows)
        w.close()
        assert w.duplicates_dropped == 50
        w.abort()
    landed = dict(query(lake, "SELECT group_key, group_properties->>'n' FROM posthog.groups"))
    assert landed == {f"k{j}": str(j + 950 if j < 50 else j) for j in range(950)}


@pytest.mark.parametrize("per_pass", [1_000_000, 7, 1])
def test_count_distinct_keys_is_exact_in_any_number_of_passes(monkeypatch, per_pass):
    from resources.lake import staging

    monkeypatch.setattr(staging, "_KEYS_PER_PASS", per_pass)
    con = duckdb.connect()
    con.execute("CREATE TABLE t AS SELECT i % 37 AS a, (i % 5)::VARCHAR AS b "
                "FROM range(100) r(i)")
    con.execute("CREATE TABLE u AS SELECT i AS a, 'x' AS b FROM range(50) r(i)")
    def first_row(sql):
        return con.execute(sql).fetchall()[0]

    # 100 rows; (i % 37, i % 5) repeats every 185 rows, so all 100 are distinct keys
    assert staging.count_distinct_keys(first_row, "t", "a, b") == (100, 100)
    assert staging.count_distinct_keys(first_row, "t", "a") == (100, 37)
    assert staging.count_distinct_keys(first_row, "u", "b") == (50, 1)
    assert staging.count_distinct_keys(first_row, "(SELECT * FROM u WHERE false)", "a") == (0, 0)
