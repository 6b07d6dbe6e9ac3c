"""Scoped lake tables (TableSpec.scope): several sources (PostHog projects) in one table, each
sync replacing only its own scope's rows, in one Delta commit; history per scope; migrating an
unscoped table."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from resources.lake import Lake, LakeError, TableSpec
from tests.test_lake import GROUPS, T0, make_lake, query


def scoped(spec: TableSpec) -> TableSpec:
    schema = pa.schema([("project_id", pa.int64()), *spec.schema])
    return TableSpec(name=spec.name, schema=schema, json_columns=spec.json_columns,
                     mode=spec.mode, key=spec.key, history=spec.history,
                     description=spec.description, scope="project_id")


SGROUPS = scoped(GROUPS)
SROWS = TableSpec(name="rows", schema=pa.schema([("project_id", pa.int64()),
                                                 ("export_id", pa.int64()), ("n", pa.int64())]),
                  mode="replace_keys", key=("export_id",), scope="project_id")
SITEMS = TableSpec(name="items", schema=pa.schema([("project_id", pa.int64()), ("id", pa.int64()),
                                                   ("name", pa.string())]),
                   mode="merge", key=("id",), scope="project_id")


def group(key: str, **props) -> dict:
    return {"group_key": key, "group_properties": json.dumps(props, separators=(",", ":")),
            "created_at": T0}


def publish(lake: Lake, spec: TableSpec, project: int, rows: list[dict], at=T0):
    with lake.writer(spec, synced_at=at, scope=project) as w:
        w.write_rows(rows)
    return lake.publish([w], run_id=f"run-{project}", asset="a")[0]


def test_scope_snapshot_replaces_only_its_projects_rows_in_one_commit(tmp_path: Path) -> None:
    lake = make_lake(tmp_path)
    publish(lake, SGROUPS, 1, [group("a", plan="pro"), group("b")])
    publish(lake, SGROUPS, 2, [group("a", plan="free")])  # the same key in another project
    before = lake.table("groups").version()
    publish(lake, SGROUPS, 1, [group("c")], T0 + timedelta(hours=1))
    assert lake.table("groups").version() == before + 1
    assert query(lake, "SELECT project_id, group_key, group_properties::VARCHAR "
                       "FROM posthog.groups ORDER BY 1, 2") == [
        (1, "c", "{}"), (2, "a", '{"plan":"free"}')]
    # an empty snapshot of project 2 empties project 2 only
    publish(lake, SGROUPS, 2, [], T0 + timedelta(hours=2))
    assert query(lake, "SELECT project_id, group_key FROM posthog.groups") == [(1, "c")]


def test_scope_history_is_kept_per_project(tmp_path: Path) -> None:
    lake = make_lake(tmp_path)
    publish(lake, SGROUPS, 1, [group("a", v=1)])
    publish(lake, SGROUPS, 2, [group("a", v=1)])
    t1 = T0 + timedelta(hours=1)
    publish(lake, SGROUPS, 1, [group("a", v=2)], t1)  # project 1 changes; 2 does not sync
    rows = query(lake, "SELECT project_id, group_key, group_properties::VARCHAR, valid_from, "
                       "valid_to FROM posthog.groups_history ORDER BY 1, 4")
    assert rows == [
        (1, "a", '{"v":1}', T0, t1),
        (1, "a", '{"v":2}', t1, None),
        (2, "a", '{"v":1}', T0, None),  # untouched by project 1's sync
    ]
    t2 = T0 + timedelta(hours=2)
    publish(lake, SGROUPS, 2, [], t2)  # project 2's group vanished: closed, project 1 kept open
    assert query(lake, "SELECT project_id, valid_to FROM posthog.groups_history "
                       "WHERE valid_from = TIMESTAMPTZ '2024-05-01 12:00:00+00' ORDER BY 1") == [
        (1, t1), (2, t2)]
    assert query(lake, "SELECT count(*) FROM posthog.groups_history WHERE valid_to IS NULL") \
        == [(1,)]


def test_scope_merge_and_replace_keys_match_within_the_project(tmp_path: Path) -> None:
    lake = make_lake(tmp_path)
    publish(lake, SITEMS, 1, [{"id": 7, "name": "one"}])
    publish(lake, SITEMS, 2, [{"id": 7, "name": "two"}])
    publish(lake, SITEMS, 1, [{"id": 7, "name": "one again"}])
    assert query(lake, "SELECT project_id, id, name FROM posthog.items ORDER BY 1") == [
        (1, 7, "one again"), (2, 7, "two")]
    publish(lake, SROWS, 1, [{"export_id": 5, "n": 1}, {"export_id": 5, "n": 2}])
    publish(lake, SROWS, 2, [{"export_id": 5, "n": 9}])
    publish(lake, SROWS, 1, [{"export_id": 5, "n": 3}])  # redone: replaces project 1's only
    assert query(lake, "SELECT project_id, n FROM posthog.rows ORDER BY 1, 2") == [(1, 3), (2, 9)]


def test_scope_writer_fills_the_column_and_refuses_another_projects_row(tmp_path: Path) -> None:
    lake = make_lake(tmp_path)
    with pytest.raises(LakeError, match="scope value"):
        lake.writer(SGROUPS)
    with pytest.raises(LakeError, match="scope value"):
        lake.writer(GROUPS, scope=1)
    with lake.writer(SGROUPS, synced_at=T0, scope=1) as w:
        w.write_rows([group("a") | {"project_id": 1}])
    lake.publish([w])
    with pytest.raises(LakeError, match="not this sync's 1"):
        with lake.writer(SGROUPS, synced_at=T0, scope=1) as w:
            w.write_rows([group("b") | {"project_id": 2}])
        lake.publish([w])
    assert query(lake, "SELECT project_id, group_key FROM posthog.groups") == [(1, "a")]


def test_scope_an_unscoped_lake_is_migrated_with_its_project_id(tmp_path: Path) -> None:
    lake = make_lake(tmp_path)
    with lake.writer(GROUPS, synced_at=T0) as w:  # a lake from before projects
        w.write_rows([group("a", v=1), group("b")])
    lake.publish([w])
    with pytest.raises(LakeError, match="migrate"):
        publish(lake, SGROUPS, 2, [group("x")])
    assert lake.add_scope(SGROUPS, 1) == ["groups_history", "groups"]
    assert lake.add_scope(SGROUPS, 1) == []  # done once
    publish(lake, SGROUPS, 2, [group("x")], T0 + timedelta(hours=1))
    publish(lake, SGROUPS, 1, [group("a", v=2), group("b")], T0 + timedelta(hours=1))
    assert query(lake, "SELECT project_id, group_key, group_properties::VARCHAR "
                       "FROM posthog.groups ORDER BY 1, 2") == [
        (1, "a", '{"v":2}'), (1, "b", "{}"), (2, "x", "{}")]
    # history: project 1's old version closed, continuing from before the migration
    assert query(lake, "SELECT project_id, group_key, valid_to IS NULL FROM "
                       "posthog.groups_history ORDER BY 1, 2, valid_from") == [
        (1, "a", False), (1, "a", True), (1, "b", True), (2, "x", True)]
    table = DeltaTable(str(Path(lake.root) / "posthog" / "groups"))
    assert table.schema().to_arrow().names[0] == "project_id"


def test_scope_spec_validation() -> None:
    with pytest.raises(LakeError, match="not in the schema"):
        TableSpec(name="t", schema=pa.schema([("id", pa.int64())]), scope="project_id")
    with pytest.raises(LakeError, match="integer or text"):
        TableSpec(name="t", schema=pa.schema([("p", pa.float64())]), scope="p")
    assert SGROUPS.match_key == ("project_id", "group_key")
    assert SGROUPS.history_spec.scope == "project_id"


def test_scope_on_s3_two_projects_one_replaced(tmp_path: Path, s3_bucket, monkeypatch) -> None:
    for name, value in s3_bucket.env().items():
        monkeypatch.setenv(name, value)
    lake = Lake(s3_bucket.uri("lake"), tmp_path / "wh.duckdb", tmp_path / "state")
    publish(lake, SGROUPS, 1, [group("a"), group("b")])
    publish(lake, SGROUPS, 2, [group("a")])
    publish(lake, SGROUPS, 1, [group("b", v=2)], T0 + timedelta(hours=1))
    assert lake.query("SELECT project_id, group_key, group_properties::VARCHAR "
                       "FROM posthog.groups ORDER BY 1, 2") == [(1, "b", '{"v":2}'), (2, "a", "{}")]
    assert lake.query("SELECT count(*) FROM posthog.groups_history") == [(4,)]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_scope_two_projects_committing_at_once_both_land_exactly(
    tmp_path: Path, where: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes sync different projects into one table at the same moments: a commit that
    loses the race is redone (none fails), the first commits create the table without either
    replacing the other's rows, and each project's rows and history are exact."""
    import multiprocessing

    from tests.lake_workers import scoped_groups_spec, sync_project_repeatedly

    lake_root, env = str(tmp_path / "lake"), {}
    if where == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        lake_root, env = bucket.uri("lake"), bucket.env()
        for name, value in env.items():
            monkeypatch.setenv(name, value)
    ctx = multiprocessing.get_context("spawn")
    ready, go = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=sync_project_repeatedly,
                         args=(str(tmp_path), p, 5, ready, go, lake_root, env))
             for p in (1, 2)]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.get(timeout=120)
    go.set()
    for proc in procs:
        proc.join(timeout=300)
    assert [proc.exitcode for proc in procs] == [0, 0]
    lake = Lake(lake_root, tmp_path / "wh.duckdb", tmp_path / "state")
    lake.register(scoped_groups_spec())
    lake.refresh_views()
    assert lake.query("SELECT project_id, count(*), min(group_properties::VARCHAR), "
                       "max(group_properties::VARCHAR) FROM posthog.groups GROUP BY 1 "
                       "ORDER BY 1") == [(1, 50, '{"i":4}', '{"i":4}'),
                                         (2, 50, '{"i":4}', '{"i":4}')]
    assert lake.query("SELECT project_id, count(*), count(*) FILTER (valid_to IS NULL) "
                       "FROM posthog.groups_history GROUP BY 1 ORDER BY 1") == [
        (1, 250, 50), (2, 250, 50)]


def test_scope_snapshot_swaps_its_own_files_and_rewrites_only_mixed_ones(tmp_path: Path) -> None:
    """A project's snapshot commit removes the files holding only its rows and adds its staged
    files untouched (the other project's files stay the same files); once a compaction has
    merged both projects' rows into one file, the commit rewrites what the other keeps."""
    lake = make_lake(tmp_path)
    publish(lake, SGROUPS, 1, [group("a"), group("b")])
    publish(lake, SGROUPS, 2, [group("x")])

    def files() -> set[str]:
        return set(lake.table("groups").file_uris())

    of_2 = files()
    publish(lake, SGROUPS, 1, [group("c")], T0 + timedelta(hours=1))
    kept = of_2 & files()
    assert len(kept) == 1  # project 2's file, the same file
    lake.table("groups").optimize.compact()
    (mixed,) = files()
    publish(lake, SGROUPS, 1, [group("d")], T0 + timedelta(hours=2))
    assert mixed not in files()
    assert query(lake, "SELECT project_id, group_key FROM posthog.groups ORDER BY 1, 2") == [
        (1, "d"), (2, "x")]
