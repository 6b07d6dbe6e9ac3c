"""Tests for resources/lake.py against real Parquet files and a real DuckDB file."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from resources.lake import (
    Lake,
    LakeBusyError,
    LakeError,
    LakeResource,
    TableSpec,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

GROUPS = TableSpec(
    name="groups",
    schema=pa.schema(
        [
            ("group_key", pa.string()),
            ("group_properties", pa.string()),
            ("created_at", pa.timestamp("us", tz="UTC")),
        ]
    ),
    json_columns=("group_properties",),
    history_view="groups_history",
    description="groups in the latest snapshot",
)
EVENTS = TableSpec(
    name="events",
    schema=pa.schema([("id", pa.int64()), ("name", pa.string())]),
    mode="append",
)
STATE = TableSpec(name="state", schema=pa.schema([("id", pa.int64())]))


def make_lake(tmp_path: Path, **kwargs) -> Lake:
    return Lake(tmp_path / "lake", tmp_path / "wh.duckdb", **kwargs)


def query(lake: Lake, sql: str, *, timezone: str | None = None) -> list[tuple]:
    con = duckdb.connect(str(lake.warehouse), read_only=True)
    try:
        if timezone:
            con.execute(f"SET TimeZone = '{timezone}'")
        return con.execute(sql).fetchall()
    finally:
        con.close()


def publish_rows(lake: Lake, spec: TableSpec, rows: list[dict], synced_at: datetime = T0):
    with lake.writer(spec, synced_at=synced_at) as w:
        w.write_rows(rows)
    return lake.publish([w], synced_at=synced_at, run_id="r1", asset="a")[0]


def group(key: str, **props) -> dict:
    return {"group_key": key, "group_properties": json.dumps(props), "created_at": T0}


def snapshot_dirs(lake: Lake, table: str) -> list[str]:
    return sorted(p.name for p in (lake.root / "posthog" / table).glob("snapshot_id=*"))


def test_lake_replace_publish_is_queryable(tmp_path):
    lake = make_lake(tmp_path)
    publish_rows(lake, GROUPS, [group("a"), group("b")])
    published = publish_rows(lake, GROUPS, [group("c")], T0 + timedelta(hours=1))

    assert query(lake, "SELECT group_key, synced_at FROM posthog.groups") == [
        ("c", T0 + timedelta(hours=1))
    ]
    assert published.rows == 1 and published.rows_written == 1
    assert [lake.root / f for f in published.files] == lake.current_files("groups")
    assert published.files[0].startswith(f"posthog/groups/snapshot_id={published.snapshot_id}/")
    assert lake.read_current("groups", ["group_key"]).to_pylist() == [{"group_key": "c"}]
    tables = query(lake, "SELECT table_name, rows, snapshot_id FROM posthog_meta.tables")
    assert tables == [("groups", 1, published.snapshot_id)]
    comment = query(lake, "SELECT comment FROM duckdb_views() WHERE view_name = 'groups'")
    assert comment == [("groups in the latest snapshot",)]


def test_lake_empty_snapshot_has_schema(tmp_path):
    lake = make_lake(tmp_path)
    published = publish_rows(lake, GROUPS, [])
    assert published.rows == 0 and len(published.files) == 1
    assert query(lake, "SELECT count(*) FROM posthog.groups") == [(0,)]
    assert [c[0] for c in query(lake, "DESCRIBE posthog.groups")] == [
        "group_key",
        "group_properties",
        "created_at",
        "synced_at",
    ]


def test_lake_append_accumulates_across_publishes(tmp_path):
    lake = make_lake(tmp_path)
    publish_rows(lake, EVENTS, [{"id": 1, "name": "x"}], T0)
    publish_rows(lake, EVENTS, [{"id": 2}], T0 + timedelta(days=1))
    last = publish_rows(lake, EVENTS, [{"id": 3, "name": "z"}], T0 + timedelta(days=2))

    rows = query(lake, "SELECT id, name, synced_at FROM posthog.events ORDER BY id")
    assert rows == [
        (1, "x", T0),
        (2, None, T0 + timedelta(days=1)),
        (3, "z", T0 + timedelta(days=2)),
    ]
    assert last.rows == 3 and last.rows_written == 1 and len(last.files) == 3
    assert len(snapshot_dirs(lake, "events")) == 3  # every snapshot still referenced


def test_lake_history_view_keeps_last_n_snapshots_and_gc_removes_older(tmp_path):
    lake = make_lake(tmp_path, history_snapshots=3)
    ids = []
    for i in range(5):
        ids.append(publish_rows(lake, GROUPS, [group(f"k{i}")], T0 + timedelta(days=i)).snapshot_id)

    history = query(
        lake, "SELECT synced_at, group_key FROM posthog.groups_history ORDER BY synced_at"
    )
    assert history == [(T0 + timedelta(days=i), f"k{i}") for i in (2, 3, 4)]
    assert query(lake, "SELECT group_key FROM posthog.groups") == [("k4",)]
    assert snapshot_dirs(lake, "groups") == [f"snapshot_id={i}" for i in ids[2:]]
    manifests = sorted(p.stem for p in (lake.root / "posthog/_manifests/groups").glob("*.json"))
    assert manifests == ids[2:]


def test_lake_json_column_is_queryable_with_arrow_operators(tmp_path):
    lake = make_lake(tmp_path)
    publish_rows(lake, GROUPS, [group("a", plan="pro", seats={"n": 5}), group("b")])
    types = dict((c[0], c[1]) for c in query(lake, "DESCRIBE posthog.groups"))
    assert types["group_properties"] == "JSON"
    rows = query(
        lake,
        "SELECT group_key, group_properties->>'plan', group_properties->'seats'->>'n' "
        "FROM posthog.groups ORDER BY group_key",
    )
    assert rows == [("a", "pro", "5"), ("b", None, None)]


def test_lake_timestamps_are_timestamptz_whatever_the_session_timezone(tmp_path):
    lake = make_lake(tmp_path)
    publish_rows(lake, GROUPS, [group("a")])
    types = dict((c[0], c[1]) for c in query(lake, "DESCRIBE posthog.groups"))
    assert types["created_at"] == types["synced_at"] == "TIMESTAMP WITH TIME ZONE"
    for tz in ("UTC", "Asia/Tokyo", "America/Los_Angeles"):
        rows = query(
            lake,
            "SELECT epoch(created_at), created_at = TIMESTAMPTZ '2024-05-01 12:00:00+00' "
            "FROM posthog.groups",
            timezone=tz,
        )
        assert rows == [(T0.timestamp(), True)]


def test_lake_failing_writer_keeps_previous_snapshot_and_leaves_no_debris(tmp_path):
    lake = make_lake(tmp_path)
    publish_rows(lake, GROUPS, [group("old")])

    def rows():
        yield group("new")
        raise RuntimeError("API died")

    with pytest.raises(RuntimeError), lake.writer(GROUPS) as w:
        w.write_rows(rows())
    assert not w.staging_dir.exists()
    assert query(lake, "SELECT group_key FROM posthog.groups") == [("old",)]
    with pytest.raises(LakeError, match="aborted"):
        lake.publish([w])

    publish_rows(lake, GROUPS, [group("next")])
    assert query(lake, "SELECT group_key FROM posthog.groups") == [("next",)]
    assert list((lake.root / "posthog/groups/_staging").iterdir()) == []


def test_lake_writer_rejects_unknown_keys_and_bad_values(tmp_path):
    lake = make_lake(tmp_path)
    with lake.writer(GROUPS) as w, pytest.raises(LakeError, match="unknown column.*surprise"):
        w.write_rows([{"group_key": "a", "surprise": 1}])
    w = lake.writer(EVENTS, synced_at=T0)
    w.write_rows([{"id": "not a number"}])
    with pytest.raises(LakeError, match="does not fit the schema"):
        w.close()
    w.abort()
    with pytest.raises(LakeError, match="timezone-aware"):
        lake.writer(EVENTS, synced_at=datetime(2024, 1, 1))
    w = lake.writer(EVENTS, synced_at=T0)
    with pytest.raises(LakeError, match="differs"):
        lake.publish([w], synced_at=T0 + timedelta(seconds=1))
    w.abort()


def test_lake_write_batch_matches_columns_by_name(tmp_path):
    lake = make_lake(tmp_path)
    with lake.writer(EVENTS, synced_at=T0) as w:
        w.write_rows([{"id": 1, "name": "rows"}])
        w.write_batch(pa.table({"name": ["batch"], "id": pa.array([2], pa.int32())}))
        w.write_batch(pa.RecordBatch.from_pydict({"id": [3]}))
        with pytest.raises(LakeError, match="unknown column"):
            w.write_batch(pa.table({"id": [4], "extra": [1]}))
    lake.publish([w])
    assert query(lake, "SELECT id, name FROM posthog.events ORDER BY id") == [
        (1, "rows"),
        (2, "batch"),
        (3, None),
    ]


def test_lake_rotates_files_every_rows_per_file(tmp_path):
    lake = make_lake(tmp_path, rows_per_file=1000, batch_rows=300)
    published = publish_rows(lake, EVENTS, [{"id": i} for i in range(2500)])
    assert [Path(f).name for f in published.files] == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    assert query(lake, "SELECT count(*), count(DISTINCT id) FROM posthog.events") == [(2500, 2500)]


def test_lake_publish_failure_before_commit_keeps_old_view(tmp_path, monkeypatch):
    lake = make_lake(tmp_path)
    old = publish_rows(lake, GROUPS, [group("old")])

    def crash(*args, **kwargs):
        raise OSError("disk vanished")

    monkeypatch.setattr(Lake, "_write_pointer", crash)
    with pytest.raises(OSError, match="disk vanished"):
        publish_rows(lake, GROUPS, [group("new")])
    monkeypatch.undo()

    assert query(lake, "SELECT group_key FROM posthog.groups") == [("old",)]
    assert lake.current_files("groups") == [lake.root / f for f in old.files]
    assert snapshot_dirs(lake, "groups") == [f"snapshot_id={old.snapshot_id}"]


def test_lake_duckdb_failure_restores_old_pointer(tmp_path, monkeypatch):
    lake = make_lake(tmp_path)
    old = publish_rows(lake, GROUPS, [group("old")])
    monkeypatch.setattr(Lake, "_create_views", lambda *a: (_ for _ in ()).throw(LakeError("x")))
    with pytest.raises(LakeError):
        publish_rows(lake, GROUPS, [group("new")])
    monkeypatch.undo()
    assert lake.current_files("groups") == [lake.root / f for f in old.files]
    assert query(lake, "SELECT group_key FROM posthog.groups") == [("old",)]


KILL_SCRIPT = """
import os, sys
from datetime import UTC, datetime
sys.path.insert(0, {repo!r})
from resources.lake import Lake
from tests.test_lake import GROUPS, group
lake = Lake({root!r}, {db!r})
if {stage!r} == "pointer":
    Lake._write_pointer = lambda *a: os._exit(9)
else:
    Lake._commit_views = lambda *a, **k: os._exit(9)
w = lake.writer(GROUPS, synced_at=datetime.now(UTC))
w.write_rows([group("new")])
lake.publish([w])
"""


@pytest.mark.parametrize("stage", ["pointer", "commit"])
def test_lake_killed_publish_leaves_old_or_new_view_and_is_cleaned(tmp_path, stage):
    lake = make_lake(tmp_path)
    old = publish_rows(lake, GROUPS, [group("old")])
    repo = str(Path(__file__).parents[1])
    script = KILL_SCRIPT.format(repo=repo, root=str(lake.root), db=str(lake.warehouse), stage=stage)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr

    # The view still shows the old complete snapshot.
    assert query(lake, "SELECT group_key FROM posthog.groups") == [("old",)]
    if stage == "pointer":
        assert lake.current_files("groups") == [lake.root / f for f in old.files]
    else:
        # Killed between pointer and COMMIT: the lake moved on; the next publish heals the view.
        assert lake.current_files("groups") != [lake.root / f for f in old.files]
        publish_rows(lake, EVENTS, [{"id": 1}])
        assert query(lake, "SELECT group_key FROM posthog.groups") == [("new",)]
    latest = publish_rows(lake, GROUPS, [group("latest")])
    assert query(lake, "SELECT group_key FROM posthog.groups") == [("latest",)]
    # Only snapshots the history view still reads remain; the killed run's debris is gone.
    history = query(lake, "SELECT count(*) FROM posthog.groups_history")[0][0]
    assert history == (2 if stage == "pointer" else 3)
    assert len(snapshot_dirs(lake, "groups")) == history
    assert list((lake.root / "posthog/groups/_staging").iterdir()) == []


def test_lake_gc_removes_dead_writers_staging_but_not_live_ones(tmp_path):
    lake = make_lake(tmp_path)
    live = lake.writer(GROUPS)
    live.write_rows([group("a")])
    dead = lake.root / "posthog/groups/_staging/20200101T000000000000-deadbeef"
    dead.mkdir(parents=True)
    (dead / "part-00000.parquet").write_bytes(b"half a file")
    stale_tmp = lake.tmp_dir() / "download.part"
    stale_tmp.write_bytes(b"x")
    os.utime(stale_tmp, (time.time() - 7200, time.time() - 7200))

    publish_rows(lake, GROUPS, [group("b")])
    assert not dead.exists() and not stale_tmp.exists()
    assert live.staging_dir.exists()
    lake.publish([live])
    assert query(lake, "SELECT group_key FROM posthog.groups") == [("a",)]


MEMORY_SCRIPT = """
import resource, sys
from datetime import UTC, datetime
sys.path.insert(0, {repo!r})
import pyarrow as pa
from resources.lake import Lake, TableSpec
spec = TableSpec(name="big", schema=pa.schema([("id", pa.int64()), ("k", pa.string())]))
lake = Lake({root!r}, {db!r})
with lake.writer(spec, synced_at=datetime.now(UTC)) as w:
    w.write_rows([{{"id": 0, "k": "warm-up"}}])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    w.write_rows({{"id": i, "k": "g%d" % (i % 1000)}} for i in range(1, 1_000_000))
lake.publish([w])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) // 1024, w.rows_written)
"""


def test_lake_million_rows_stream_with_flat_memory(tmp_path):
    lake = make_lake(tmp_path)
    script = MEMORY_SCRIPT.format(
        repo=str(Path(__file__).parents[1]), root=str(lake.root), db=str(lake.warehouse)
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rss_growth_mb, rows = map(int, proc.stdout.split())
    assert rows == 1_000_000
    assert rss_growth_mb < 150
    assert query(lake, "SELECT count(*), max(id) FROM posthog.big") == [(1_000_000, 999_999)]


def test_lake_store_content_is_content_addressed_and_refuses_bad_hashes(tmp_path):
    lake = make_lake(tmp_path)
    sha = "ab" * 32
    tmp = lake.tmp_dir() / "dl"
    tmp.write_bytes(b"bytes")
    stored = lake.store_content(tmp, sha)
    assert stored == f"posthog/export_files/sha256/ab/ab/{sha}"
    assert (lake.root / stored).read_bytes() == b"bytes" and not tmp.exists()
    again = lake.tmp_dir() / "dl2"
    again.write_bytes(b"bytes")
    assert lake.store_content(again, sha) == stored and not again.exists()
    for bad in ["../../etc/passwd", "AB" * 32, "ab" * 31, "ab" * 31 + "/.", sha + "\n", ""]:
        with pytest.raises(LakeError, match="invalid sha256"):
            lake.content_path(bad)
        with pytest.raises(LakeError, match="invalid sha256"):
            lake.store_content(again, bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lake"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": 'groups"; DROP TABLE x; --'},
        {"name": "Groups"},
        {"name": "1groups"},
        {"schema": pa.schema([("bad col", pa.string())])},
        {"schema": pa.schema([('a"b', pa.string())])},
        {"json_columns": ("missing",)},
        {"history_view": "x-y"},
        {"mode": "append", "history_view": "h"},
    ],
)
def test_table_spec_rejects_unsafe_identifiers(kwargs):
    base = {"name": "t", "schema": pa.schema([("a", pa.string())])}
    with pytest.raises(LakeError):
        TableSpec(**(base | kwargs))


def test_lake_rejects_unsafe_schema_and_snapshot_ids(tmp_path):
    with pytest.raises(LakeError):
        Lake(tmp_path, tmp_path / "w.duckdb", schema="posthog; DROP")
    with pytest.raises(LakeError, match="snapshot id"):
        make_lake(tmp_path).writer(STATE, snapshot_id="../../escape")


def test_lake_root_with_quotes_and_glob_characters_works(tmp_path):
    lake = Lake(tmp_path / "it's [a] lake*?", tmp_path / "o'neil.duckdb")
    # A sibling that the glob characters would match if they were not escaped.
    (tmp_path / "it's a lakeXY").mkdir()
    publish_rows(lake, GROUPS, [group("a")])
    publish_rows(lake, EVENTS, [{"id": 1}])
    rows = query(lake, "SELECT group_key, group_properties->>'x' FROM posthog.groups")
    assert rows == [("a", None)]
    assert query(lake, "SELECT count(*) FROM posthog.events") == [(1,)]


def test_lake_rebuild_views_recreates_a_deleted_warehouse(tmp_path):
    lake = make_lake(tmp_path, history_snapshots=2)
    publish_rows(lake, GROUPS, [group("a")])
    publish_rows(lake, GROUPS, [group("b")], T0 + timedelta(days=1))
    publish_rows(lake, EVENTS, [{"id": 1}])
    lake.warehouse.unlink()

    lake.rebuild_views()
    assert query(lake, "SELECT group_key FROM posthog.groups") == [("b",)]
    assert query(lake, "SELECT count(*) FROM posthog.groups_history") == [(2,)]
    assert query(lake, "SELECT count(*) FROM posthog.events") == [(1,)]
    assert sorted(r[0] for r in query(lake, "SELECT table_name FROM posthog_meta.tables")) == [
        "events",
        "groups",
    ]


def test_lake_sync_log_records_each_publish(tmp_path):
    lake = make_lake(tmp_path)
    assert lake.sync_log() == []
    with lake.writer(GROUPS, synced_at=T0) as g, lake.writer(EVENTS, synced_at=T0) as e:
        g.write_rows([group("a"), group("b")])
        e.write_rows([{"id": 1}])
    lake.publish([g, e], synced_at=T0, run_id="run-1", asset="posthog_groups")
    log = lake.sync_log()
    assert [(r["table"], r["rows"], r["files"], r["run_id"], r["asset"]) for r in log] == [
        ("events", 1, 1, "run-1", "posthog_groups"),
        ("groups", 2, 1, "run-1", "posthog_groups"),
    ]
    assert log[0]["synced_at"] == T0 and log[0]["snapshot_id"] == e.snapshot_id


def test_lake_read_current_of_unpublished_table(tmp_path):
    lake = make_lake(tmp_path)
    assert lake.current_files("state") == []
    assert lake.read_current("state").to_pylist() == []
    assert lake.read_current("state", ["id"]).column_names == ["id"]
    empty = lake.read_current(STATE)
    assert empty.num_rows == 0 and empty.schema.names == ["id", "synced_at"]


def test_lake_lock_is_exclusive_across_lock_objects(tmp_path):
    lake = make_lake(tmp_path)
    with lake.lock("posthog_groups/../x"):
        with pytest.raises(LakeBusyError, match="another sync of posthog_groups/../x is running"):
            with lake.lock("posthog_groups/../x"):
                pass
    with lake.lock("posthog_groups/../x"):
        pass
    assert all(p.parent == lake.root / "_state/locks" for p in lake.root.rglob("*.lock"))


# -- multiple processes -----------------------------------------------------------------------


def _publisher(root: str, db: str, table: str, worker: int, n: int, errors) -> None:
    try:
        lake = Lake(root, db)
        spec = EVENTS if table == "events" else TableSpec(name=table, schema=EVENTS.schema)
        for i in range(n):
            with lake.writer(spec) as w:
                w.write_rows([{"id": worker * 1000 + i, "name": f"w{worker}"}] * 10)
            lake.publish([w])
    except BaseException as e:  # reported to the parent
        errors.put(f"{worker}: {type(e).__name__}: {e}")


def _reader(db: str, stop, counts, errors) -> None:
    seen, conflicts = set(), 0
    while not stop.is_set():
        try:
            con = duckdb.connect(db, read_only=True)
        except duckdb.IOException as e:
            if "Could not set lock" not in str(e):
                errors.put(f"reader: {e}")
            conflicts += 1
            time.sleep(0.005)
            continue
        try:
            seen.add(con.execute("SELECT count(*) FROM posthog.events").fetchone()[0])
        except Exception as e:
            errors.put(f"reader: {type(e).__name__}: {e}")
        finally:
            con.close()
        time.sleep(0.01)  # a reader that never lets go starves writers: DuckDB has no queue
    counts.put((sorted(seen), conflicts))


def _drain(queue) -> list:
    items = []
    while not queue.empty():
        items.append(queue.get())
    return items


def test_lake_concurrent_publishes_from_processes_stay_consistent(tmp_path):
    lake = make_lake(tmp_path)
    publish_rows(lake, EVENTS, [])
    ctx = mp.get_context("spawn")
    errors, counts, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    reader = ctx.Process(target=_reader, args=(str(lake.warehouse), stop, counts, errors))
    reader.start()
    jobs = [("events", 1), ("events", 2), ("other", 3), ("other", 4)]
    procs = [
        ctx.Process(
            target=_publisher, args=(str(lake.root), str(lake.warehouse), t, w, 5, errors)
        )
        for t, w in jobs
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    stop.set()
    reader.join(60)
    seen, conflicts = counts.get(timeout=10)
    assert _drain(errors) == []
    assert all(p.exitcode == 0 for p in procs)

    # Append: every one of the 2 x 5 publishes of 10 rows landed exactly once.
    assert query(lake, "SELECT count(*), count(DISTINCT id) FROM posthog.events") == [(100, 10)]
    assert set(seen) <= set(range(0, 101, 10)), seen  # never a partial snapshot
    # Replace: the last publish wins and the view agrees with the lake's pointer.
    assert query(lake, "SELECT count(*) FROM posthog.other") == [(10,)]
    other = lake.read_current("other")
    assert other.num_rows == 10
    assert len(snapshot_dirs(lake, "other")) == 1
    assert list((lake.root / "posthog/other/_staging").iterdir()) == []
    log = lake.sync_log()
    assert len(log) == 1 + 20
    print(f"reader saw counts {seen} with {conflicts} lock conflicts")


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
        LakeResource(lake_root=str(tmp_path / "lake"), duckdb_database=str(corrupt)).get_lake()

    lake = LakeResource(
        lake_root=str(tmp_path / "lake"), duckdb_database=str(tmp_path / "db/w.duckdb")
    ).get_lake()
    publish_rows(lake, STATE, [{"id": 1}])
    again = LakeResource(
        lake_root=str(tmp_path / "lake"), duckdb_database=str(tmp_path / "db/w.duckdb")
    ).get_lake()
    assert again.read_current("state", ["id"]).to_pylist() == [{"id": 1}]


def test_lake_publish_gives_up_on_a_held_warehouse_with_a_clear_error(tmp_path, monkeypatch):
    import resources.lake as lake_module

    monkeypatch.setattr(lake_module, "DUCKDB_LOCK_TIMEOUT", 0.5)
    lake = make_lake(tmp_path)
    publish_rows(lake, STATE, [{"id": 1}])
    ctx = mp.get_context("spawn")
    ready, done = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_read_only, args=(str(lake.warehouse), ready, done))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(LakeBusyError, match="DUCKDB_DATABASE .* locked by another process"):
            publish_rows(lake, STATE, [{"id": 2}])
    finally:
        done.set()
        holder.join(30)
    assert lake.read_current("state", ["id"]).to_pylist() == [{"id": 1}]
    publish_rows(lake, STATE, [{"id": 3}])
    assert query(lake, "SELECT id FROM posthog.state") == [(3,)]


def _hold_read_only(db: str, ready, done) -> None:
    con = duckdb.connect(db, read_only=True)
    ready.set()
    done.wait(30)
    con.close()


KEYED = TableSpec(
    name="keyed",
    schema=pa.schema([("kind", pa.int64()), ("key", pa.string()), ("value", pa.string())]),
    unique_key=("kind", "key"),
)


def test_lake_unique_key_keeps_the_last_row_written_per_key(tmp_path):
    lake = make_lake(tmp_path, batch_rows=3, rows_per_file=4)
    rows = [{"kind": i % 2, "key": f"k{i}", "value": "first"} for i in range(10)]
    rows += [{"kind": 0, "key": "k2", "value": "second"}, {"kind": 1, "key": "k9", "value": "x"}]
    rows += [{"kind": 1, "key": "k2", "value": "other kind, same key"}]
    with lake.writer(KEYED, synced_at=T0) as w:
        w.write_rows(rows)
    published = lake.publish([w])[0]
    assert w.duplicates_dropped == 2 and published.rows == 11
    landed = dict(((k, key), v) for k, key, v in query(lake, "SELECT * EXCLUDE synced_at FROM posthog.keyed"))
    assert landed[(0, "k2")] == "second" and landed[(1, "k9")] == "x"
    assert landed[(1, "k2")] == "other kind, same key" and len(landed) == 11
    assert query(lake, "SELECT DISTINCT synced_at FROM posthog.keyed") == [(T0,)]
    staged = list((lake.root / "posthog" / "keyed").rglob("*.dup"))
    assert staged == []


def test_lake_unique_key_without_duplicates_leaves_files_alone(tmp_path):
    lake = make_lake(tmp_path, rows_per_file=4)
    with lake.writer(KEYED, synced_at=T0) as w:
        w.write_rows({"kind": 0, "key": f"k{i}", "value": "v"} for i in range(10))
    published = lake.publish([w])[0]
    assert w.duplicates_dropped == 0 and published.rows == 10 and len(published.files) == 3


@pytest.mark.parametrize("duplicate", [False, True])
def test_groups_unique_key_check_counts_duplicates_and_null_keys(tmp_path, duplicate):
    from assets.checks import posthog_groups_unique_key

    warehouse = tmp_path / "w.duckdb"
    con = duckdb.connect(str(warehouse))
    con.execute("CREATE SCHEMA posthog")
    con.execute("CREATE TABLE posthog.groups (group_type_index INT, group_key VARCHAR)")
    con.execute("INSERT INTO posthog.groups VALUES (0, 'a'), (1, 'a'), (0, 'b')")
    if duplicate:
        con.execute("INSERT INTO posthog.groups VALUES (0, 'a'), (2, NULL)")
    con.close()
    lake = LakeResource(lake_root=str(tmp_path / "lake"), duckdb_database=str(warehouse))
    result = posthog_groups_unique_key(lake=lake)
    assert result.passed is (not duplicate)
    assert result.metadata["duplicates"].value == (1 if duplicate else 0)
    assert result.metadata["null_keys"].value == (1 if duplicate else 0)


def test_lake_read_current_across_files_of_older_schemas(tmp_path):
    """An append table keeps files written before a column was added: read_current reads them
    all, the old rows null in the new column, whatever columns are asked for."""
    lake = make_lake(tmp_path)
    publish_rows(lake, EVENTS, [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])
    wider = TableSpec(name="events", mode="append", schema=pa.schema(
        [("id", pa.int64()), ("name", pa.string()), ("kind", pa.string())]))
    publish_rows(lake, wider, [{"id": 3, "name": "c", "kind": "k"}], T0 + timedelta(hours=1))
    assert len(lake.current_files("events")) == 2

    both = lake.read_current(wider)
    assert both.column_names == ["id", "name", "kind", "synced_at"]
    assert sorted(both.select(["id", "name", "kind"]).to_pylist(), key=lambda r: r["id"]) == [
        {"id": 1, "name": "a", "kind": None},
        {"id": 2, "name": "b", "kind": None},
        {"id": 3, "name": "c", "kind": "k"},
    ]
    assert lake.read_current(wider, ["kind"]).column("kind").null_count == 2
    assert lake.read_current(wider, ["id"]).num_rows == 3
    with pytest.raises(KeyError):
        lake.read_current(wider, ["nope"])
