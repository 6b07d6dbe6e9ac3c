"""End to end: real Dagster runs against the simulator over real HTTP, real Parquet and DuckDB.

After a sync the warehouse must equal the simulator's dataset exactly; faults must not change
that; a failed sync must leave the previous snapshot readable.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from assets.tabular import CSV_FORMAT, TABULAR_FORMATS
from posthog_sim import FaultSpec
from tests.helpers import (
    exact_json,
    exact_json_of,
    expected_export_rows,
    expected_groups,
    failure_text,
    landed_groups,
    read_stored,
    start_sim,
)

ROOT = Path(__file__).resolve().parents[1]


def _parse_ts(value: str | None) -> str | None:
    if value is None:
        return None
    from assets.tables import parse_ts

    return parse_ts(value).strftime("%Y-%m-%dT%H:%M:%S.%f")


def assert_warehouse_equals_simulator(env) -> None:
    sim = env.sim
    ds = sim.dataset

    # group types: every field, typed
    types = env.query(
        "SELECT group_type_index, group_type, name_singular, name_plural, detail_dashboard, "
        "default_columns::VARCHAR FROM posthog.group_types ORDER BY 1"
    )
    assert [
        (t["group_type_index"], t["group_type"], t["name_singular"], t["name_plural"],
         t["detail_dashboard"],
         json.dumps(t["default_columns"], separators=(",", ":"))
         if t["default_columns"] is not None else None)
        for t in ds.group_types()
    ] == [tuple(r) for r in types]

    # groups: every group of every type, properties equal as JSON, created_at equal
    expected = expected_groups(sim)
    landed = landed_groups(env)
    assert landed.keys() == expected.keys()
    for key, group in expected.items():
        assert landed[key]["group_properties"] == group.get("group_properties"), key
        assert landed[key]["created_at"] == _parse_ts(group["created_at"]), key
    # and as JSON text: the same value exactly (every number, key order, strings), whatever the
    # spelling (most pages keep PostHog's own text, see RawGroup); a null bag is NULL
    texts = dict(((i, k), p) for i, k, p in env.query(
        "SELECT group_type_index, group_key, group_properties::VARCHAR FROM posthog.groups"))
    for key, group in expected.items():
        assert exact_json(texts[key]) == exact_json_of(group.get("group_properties")), key

    # exports metadata: every visible export, every contract field
    exports = {
        r[0]: r for r in env.query(
            "SELECT id, dashboard, insight, export_format, has_content, "
            "export_context::VARCHAR, filename, exception, "
            "strftime(expires_after AT TIME ZONE 'UTC', '%Y-%m-%dT%H:%M:%S.%f'), listed "
            "FROM posthog.exports"
        )
    }
    visible = ds.exports(user_id=1)
    assert {e["id"] for e in visible} <= exports.keys()
    for e in visible:
        row = exports[e["id"]]
        assert row[1:5] == (e["dashboard"], e["insight"], e["export_format"], e["has_content"]) \
            or (e["export_format"].startswith("video/") and row[4] in (True, False))
        ctx = json.loads(row[5]) if row[5] is not None else None
        assert ctx == e["export_context"]
        assert row[6] == e["filename"]
        assert row[8] == _parse_ts(e["expires_after"])

    # archived bytes: byte-for-byte what PostHog served, under LAKE_ROOT
    contents = env.query(
        "SELECT export_id, sha256, size_bytes, stored_path, export_format "
        "FROM posthog.export_contents"
    )
    by_id = {r[0]: r for r in contents}
    with_content = [e for e in visible if ds.export_content(e["id"]) is not None
                    and not e["export_format"].startswith("video/")]
    assert {e["id"] for e in with_content} <= by_id.keys()
    for export_id, sha256, size, stored_path, _ in contents:
        data = read_stored(env.lake_root, stored_path)  # asserts it is inside the lake
        assert data == ds.export_content(export_id)
        assert hashlib.sha256(data).hexdigest() == sha256 and len(data) == size

    # CSV/XLSX rows (header order and cell text kept), JSON Lines records, JSON array elements
    for export_id, *_rest, fmt in contents:
        if fmt not in TABULAR_FORMATS:
            continue
        rows = env.query(
            "SELECT row::VARCHAR FROM posthog.export_rows WHERE export_id = ? ORDER BY row_number",
            [export_id],
        )
        landed_rows = [json.loads(r[0]) for r in rows]
        want = expected_export_rows(ds.export_content(export_id), fmt)
        assert landed_rows == want, export_id
        assert [list(r.keys()) for r in landed_rows] == [list(r.keys()) for r in want]


def test_sync_lands_exactly_the_simulators_data(sim_env):
    result = sim_env.sync()
    assert result.success
    assert_warehouse_equals_simulator(sim_env)
    # the group types are listed once per run: the three assets that need them after
    # posthog_group_types read the snapshot it just published
    assert sim_env.sim.stats()["requests"]["groups_types"] == 1
    # group property definitions (and PostHog's 2 virtual ones per type) and values landed for
    # every type
    defs_count = sim_env.query("SELECT count(*) FROM posthog.group_property_definitions")[0][0]
    expected_defs = sum(len(sim_env.sim.dataset.property_definitions(t["group_type_index"])) + 2
                        for t in sim_env.sim.dataset.group_types())
    assert defs_count == expected_defs
    assert sim_env.query("SELECT count(*) FROM posthog.group_property_values")[0][0] > 0
    # explicit members: empty by design on current PostHog, and says why
    assert sim_env.query("SELECT count(*) FROM posthog.explicit_members")[0][0] == 0
    meta = result.asset_materializations_for_node("posthog_explicit_members")[0].metadata
    assert "why_empty" in meta
    # every materialization reports rows, requests, retries, 429s, bytes and a preview
    groups_meta = result.asset_materializations_for_node("posthog_groups")[0].metadata
    for key in ("dagster/row_count", "pages", "requests", "retries", "throttled_429s",
                "content_bytes_downloaded", "preview"):
        assert key in groups_meta
    assert groups_meta["dagster/row_count"].value == len(expected_groups(sim_env.sim))
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks["posthog_groups_unique_key"] and checks["posthog_export_contents_sha256"]


def test_second_sync_downloads_zero_content_bytes(sim_env):
    assert sim_env.sync().success
    sim_env.sim.clear_log()
    result = sim_env.sync()
    assert result.success
    meta = result.asset_materializations_for_node("posthog_export_contents")[0].metadata
    assert meta["content_bytes_downloaded"].value == 0
    assert not [r for r in sim_env.sim.request_log if r.server == "storage" or "/content" in r.path]
    assert_warehouse_equals_simulator(sim_env)
    # nothing changed: groups_history holds one open version per group, from the first sync
    (versions, open_, starts), = sim_env.query(
        "SELECT count(*), count(*) FILTER (valid_to IS NULL), count(DISTINCT valid_from) "
        "FROM posthog.groups_history")
    assert versions == open_ == len(expected_groups(sim_env.sim)) and starts == 1


def test_groups_history_is_a_type_2_history_of_changes(sim_env):
    """A group that changes gets a new version; the old one is closed at the same instant."""
    assert sim_env.sync(select=["posthog_group_types", "posthog_groups"]).success
    sim_env.sim.dataset.insert_group(0, "acme-co", {"plan": "free"})
    first = sim_env.sync(select=["posthog_group_types", "posthog_groups"])
    sim_env.sim.dataset.insert_group(0, "acme-co", {"plan": "paid"})
    second = sim_env.sync(select=["posthog_group_types", "posthog_groups"])
    assert first.success and second.success
    versions = sim_env.query(
        "SELECT group_properties->>'plan', valid_from, valid_to FROM posthog.groups_history "
        "WHERE group_key = 'acme-co' ORDER BY valid_from")
    assert [v[0] for v in versions] == ["free", "paid"]
    assert versions[0][2] == versions[1][1] and versions[1][2] is None
    # the README's question: when did it move from free to paid?
    (moved,), = sim_env.query(
        "SELECT min(valid_from) FROM posthog.groups_history "
        "WHERE group_key = 'acme-co' AND group_properties->>'plan' = 'paid'")
    assert moved == versions[1][1]
    # every other group kept its single version; groups equals the open versions
    (changed,), = sim_env.query(
        "SELECT count(*) FROM (SELECT group_type_index, group_key FROM posthog.groups_history "
        "GROUP BY ALL HAVING count(*) > 1)")
    assert changed == 1
    assert sim_env.query(
        "SELECT count(*) FROM (SELECT group_type_index, group_key, group_properties::VARCHAR "
        "FROM posthog.groups EXCEPT SELECT group_type_index, group_key, group_properties::VARCHAR"
        " FROM posthog.groups_history WHERE valid_to IS NULL)") == [(0,)]


def test_sync_with_random_faults_is_exact_and_fetches_once(tmp_path):
    faults = FaultSpec(seed=11, rate=0.15, slow_seconds=0.3)
    with start_sim(tmp_path, groups_per_type=(900, 310), n_exports=25, faults=faults) as env:
        result = env.sync()
        assert result.success
        assert_warehouse_equals_simulator(env)
        log = env.sim.request_log
        assert any(r.fault for r in log), "the fault injector injected nothing"
        ok_group_pages = [r.query for r in log
                          if r.server == "api" and r.path.rstrip("/").endswith("/groups")
                          and r.status == 200 and not r.fault]
        # every page served successfully exactly once per sync (a retry only follows a failure)
        assert len(ok_group_pages) == len(set(ok_group_pages))
        ok_downloads = [r.path for r in log if r.server == "storage" and r.status == 200
                        and not r.fault]
        assert len(ok_downloads) == len(set(ok_downloads))
        meta = result.asset_materializations_for_node("posthog_groups")[0].metadata
        assert meta["retries"].value > 0


def test_failed_sync_leaves_previous_snapshot_and_next_sync_succeeds(sim_env):
    assert sim_env.sync().success
    before = landed_groups(sim_env)
    sim_env.sim.dataset.insert_group(0, "new-group-after-first-sync", {"plan": "new"})
    sim_env.sim.inject("500", r"/groups/$", times=10_000)
    failed = sim_env.sync(select=["posthog_groups"], raise_on_error=False)
    assert not failed.success
    assert "GET /api/projects/1/groups/" in failure_text(failed)
    assert landed_groups(sim_env) == before
    sim_env.sim.clear_faults()
    assert sim_env.sync(select=["posthog_groups"]).success
    after = landed_groups(sim_env)
    assert (0, "new-group-after-first-sync") in after
    assert after.keys() == expected_groups(sim_env.sim).keys()
    assert list((sim_env.state_dir / "tmp" / "staging").glob("*")) == []


def test_key_never_reaches_another_origin(tmp_path):
    with start_sim(tmp_path, groups_per_type=(350,), n_exports=8,
                   next_link="foreign_origin") as env:
        assert env.sync(select=["posthog_group_types", "posthog_groups", "posthog_exports",
                                "posthog_export_contents"]).success
        log = env.sim.request_log
        assert not [r for r in log if r.server == "foreign"]
        assert not [r for r in log if r.server == "storage" and r.authorization]
        assert any(r.server == "storage" for r in log)
        assert len(landed_groups(env)) == 350


@pytest.mark.parametrize("mode", ["loop", "outside_api"])
def test_hostile_next_link_fails_loudly(tmp_path, mode):
    with start_sim(tmp_path, groups_per_type=(350,), n_exports=0, next_link=mode) as env:
        result = env.sync(select=["posthog_group_types", "posthog_groups"], raise_on_error=False)
        assert not result.success
        message = failure_text(result)
        assert "next" in message.lower() or "cursor" in message.lower()
        assert env.sim.api_key not in message


def test_delete_job_deletes_nothing_without_confirmation(tmp_path):
    from pipelines.definitions import defs

    with start_sim(tmp_path, groups_per_type=(5,), n_exports=0,
                   explicit_members="legacy") as env:
        members = list(env.sim.dataset.explicit_members)
        uuid = members[0]["user"]["uuid"]
        job = defs.resolve_job_def("delete_explicit_members_job")
        config = {"ops": {"delete_explicit_members": {"config": {"user_uuids": [uuid]}}}}
        dry = job.execute_in_process(run_config=config, resources=env.resources())
        assert dry.success
        assert not [r for r in env.sim.request_log if r.method == "DELETE"]
        config["ops"]["delete_explicit_members"]["config"]["confirm"] = True
        real = job.execute_in_process(run_config=config, resources=env.resources())
        assert real.success
        deletes = [r for r in env.sim.request_log if r.method == "DELETE"]
        assert len(deletes) == 1 and uuid in deletes[0].path
        # the members table syncs from the legacy endpoint too
        assert env.sync(select=["posthog_explicit_members"]).success
        assert env.query("SELECT count(*) FROM posthog.explicit_members")[0][0] == len(members) - 1


def test_dagster_cli_full_sync_and_sql_command(sim_env):
    """The contract's command, exactly as users type it, in a real multi-process Dagster run."""
    env = {
        **os.environ,
        "POSTHOG_HOST": sim_env.sim.api_url,
        "POSTHOG_PROJECT_ID": str(sim_env.sim.project_id),
        "POSTHOG_PERSONAL_API_KEY": sim_env.sim.api_key,
        "LAKE_ROOT": str(sim_env.lake_root),
        "DUCKDB_DATABASE": str(sim_env.database),
        "DAGSTER_HOME": str(sim_env.tmp / "dagster_home"),
    }
    (sim_env.tmp / "dagster_home").mkdir()
    bindir = Path(sys.executable).parent
    run = subprocess.run(
        [str(bindir / "dagster"), "asset", "materialize", "-m", "pipelines.definitions",
         "--select", "*"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert sim_env.sim.api_key not in run.stdout + run.stderr
    assert_warehouse_equals_simulator(sim_env)
    sql = subprocess.run(
        [str(bindir / "posthog-pipeline"), "sql",
         "SELECT group_type_index, count(*) AS n FROM posthog.groups GROUP BY 1 ORDER BY 1"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert sql.returncode == 0, sql.stderr
    assert "450" in sql.stdout and "230" in sql.stdout
    status = subprocess.run([str(bindir / "posthog-pipeline"), "status"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert "groups" in status.stdout and "Last sync per asset" in status.stdout


def test_rate_limited_sync_stays_inside_the_budget_with_no_429(tmp_path):
    """Scaled windows (30 per 3 s, 80 per 12 s): the whole sync gets no 429 and is exact."""
    with start_sim(tmp_path, groups_per_type=(2500, 1200), n_exports=12,
                   rate_limits=((30, 3.0), (80, 12.0))) as env:
        # the REST listing is what the general budget paces (auto would take the query API)
        result = env.sync(rate_limit_windows="30/3,80/12", groups_source="rest")
        assert result.success
        assert env.sim.stats()["throttled_429"] == 0
        assert not [r for r in env.sim.request_log if r.status == 429]
        meta = result.asset_materializations_for_node("posthog_groups")[0].metadata
        assert meta["throttled_429s"].value == 0
        assert meta["seconds_waiting_for_rate_budget"].value > 0
        assert len(landed_groups(env)) == 3700


def test_requested_exports_are_created_waited_on_and_archived(sim_env):
    """POST exports/ for the configured list, poll until content or exception, then archive."""
    requests = [
        {"export_format": "text/csv",
         "export_context": {"source": {"kind": "HogQLQuery", "query": "select 1"}}},
        {"export_format": "image/png", "insight": next(iter(sim_env.sim.dataset.insights()))},
        {"export_format": "video/webm",
         "export_context": {"session_recording_id": "0190-abc", "timestamp": 1, "duration": 5}},
        {"export_format": "text/csv",
         "export_context": {"source": {"kind": "HogQLQuery", "query": "select throwError('x')"}}},
    ]
    config = {"ops": {"posthog_requested_exports": {"config": {
        "requests": requests, "poll_interval_seconds": 0.05}}}}
    result = sim_env.sync(select=["posthog_requested_exports", "posthog_exports",
                                  "posthog_export_contents"], run_config=config)
    assert result.success
    meta = result.asset_materializations_for_node("posthog_requested_exports")[0].metadata
    assert meta["exports_requested"].value == 4 and meta["exports_failed"].value == 1
    posts = [r for r in sim_env.sim.request_log if r.method == "POST"]
    assert len(posts) == 4
    created = sim_env.query(
        "SELECT e.id, e.export_format, a.state FROM posthog.exports e "
        "JOIN posthog.export_archive a ON a.export_id = e.id ORDER BY e.id DESC LIMIT 4"
    )
    states = sorted((fmt, state) for _, fmt, state in created)
    assert states == sorted([("text/csv", "archived"), ("image/png", "archived"),
                             ("video/webm", "archived"), ("text/csv", "failed")])
    for export_id, sha256, stored_path in sim_env.query(
            "SELECT export_id, sha256, stored_path FROM posthog.export_contents"):
        data = read_stored(sim_env.lake_root, stored_path)
        assert data == sim_env.sim.dataset.export_content(export_id)


def test_legacy_property_definitions_endpoint_is_used_when_the_new_one_is_missing(tmp_path):
    with start_sim(tmp_path, groups_per_type=(120, 40), n_exports=0,
                   property_definitions="legacy") as env:
        assert env.sync(select=["posthog_group_types",
                                "posthog_group_property_definitions"]).success
        landed = env.query("SELECT group_type_index, name FROM posthog.group_property_definitions")
        legacy = env.sim.dataset.legacy_property_definitions()
        assert sorted(landed) == sorted((int(i), d["name"]) for i, defs in legacy.items()
                                        for d in defs)


def test_groups_listing_that_comes_back_short_fails_before_the_commit(sim_env):
    """PostHog answers with a group type gone (or an empty groups_types): the sync fails before
    the shrunken snapshot becomes visible, saying what to do; the run config accepts it."""
    assert sim_env.sync(select=["posthog_group_types", "posthog_groups"]).success
    before = landed_groups(sim_env)
    sim_env.sim.dataset.delete_group_type(0)  # 450 of the 697 groups
    failed = sim_env.sync(select=["posthog_group_types", "posthog_groups"],
                          raise_on_error=False)
    assert not failed.success
    text = failure_text(failed)
    assert "a drop of" in text and "max_row_drop: 1.0" in text, text[:1500]
    assert landed_groups(sim_env) == before
    accepted = sim_env.sync(select=["posthog_group_types", "posthog_groups"], run_config={
        "ops": {op: {"config": {"max_row_drop": 1.0}}
                for op in ("posthog_group_types", "posthog_groups")}})
    assert accepted.success
    assert len(landed_groups(sim_env)) == len(before) - 450
