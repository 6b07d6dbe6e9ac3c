"""The code location: what the UI shows (assets, checks, jobs, schedules, sensor) and how
schedules and the sensor behave."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest

import pipelines.sensors as sensors
from pipelines.definitions import defs
from resources.lake import LakeResource

CONTRACT_ASSETS = {
    "posthog_group_types",
    "posthog_groups",
    "posthog_group_property_definitions",
    "posthog_group_property_values",
    "posthog_exports",
    "posthog_export_contents",
    "posthog_explicit_members",
    "posthog_requested_exports",
}


def test_definitions_load_with_every_asset_check_job_schedule_and_sensor():
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == CONTRACT_ASSETS
    assert {c.name for c in graph.asset_check_keys} == {
        "posthog_groups_unique_key",
        "posthog_export_contents_sha256",
        "posthog_exports_expiring_unarchived",
    }
    for name in ("posthog_sync_job", "posthog_groups_job", "posthog_exports_job",
                 "posthog_requested_exports_job", "delete_explicit_members_job"):
        assert defs.resolve_job_def(name)
    for asset in defs.assets:
        spec = next(iter(asset.specs))
        assert spec.group_name == "posthog" and "Endpoint:" in (spec.description or "")


def test_runs_execute_in_process_by_default_and_multiprocess_on_request():
    job = defs.resolve_job_def("posthog_sync_job")
    executor = job.executor_def
    assert executor.config_schema.as_field().default_value == {"in_process": {}}
    assert executor.get_requirements({"in_process": {}}) == []
    assert executor.get_requirements({"multiprocess": {"max_concurrent": 4}})
    # export steps go first in a run that also crawls groups: exports expire, groups don't
    priority = {
        node.name: int(node.tags.get("dagster/priority", 0)) for node in job.graph.node_dict.values()
    }
    assert priority["posthog_exports"] > priority["posthog_groups"]
    assert priority["posthog_export_contents"] > priority["posthog_groups"]


def test_schedules_run_exports_hourly_and_groups_daily_and_start_stopped():
    exports = defs.resolve_schedule_def("posthog_exports_hourly")
    groups = defs.resolve_schedule_def("posthog_groups_daily")
    assert exports.cron_schedule == "17 * * * *" and exports.job_name == "posthog_exports_job"
    assert groups.cron_schedule == "0 3 * * *" and groups.job_name == "posthog_groups_job"
    assert exports.default_status == dg.DefaultScheduleStatus.STOPPED
    # the guarded delete job is never scheduled
    scheduled = {s.job_name for s in defs.schedules}
    assert "delete_explicit_members_job" not in scheduled


def test_sensor_skips_on_an_empty_lake(tmp_path):
    lake = LakeResource(lake_root=str(tmp_path / "lake"), duckdb_database=str(tmp_path / "w.db"))
    context = dg.build_sensor_context(instance=dg.DagsterInstance.ephemeral(),
                                      resources={"lake": lake})
    result = sensors.posthog_expiring_exports_sensor(context)
    assert isinstance(result, dg.SkipReason)


def test_sensor_requests_a_run_for_exports_expiring_unarchived(sim_env, monkeypatch):
    # only metadata synced: exports with content exist, none archived yet
    assert sim_env.sync(select=["posthog_exports"]).success
    context = dg.build_sensor_context(instance=dg.DagsterInstance.ephemeral(),
                                      resources={"lake": sim_env.resources()["lake"]})
    monkeypatch.setattr(sensors, "EXPIRY_HORIZON", timedelta(days=8))
    result = sensors.posthog_expiring_exports_sensor(context)
    assert isinstance(result, dg.SensorResult) and len(result.run_requests) == 1
    # once archived, nothing is left to rescue
    assert sim_env.sync(select=["posthog_export_contents"]).success
    assert isinstance(sensors.posthog_expiring_exports_sensor(context), dg.SkipReason)


@pytest.mark.parametrize("fmt", ["text/csv", "application/vnd.ms-excel"])
def test_requested_export_format_is_validated_before_any_request(sim_env, fmt):
    config = {"ops": {"posthog_requested_exports": {"config": {
        "requests": [{"export_format": fmt,
                      "insight": next(iter(sim_env.sim.dataset.insights()))}]}}}}
    result = sim_env.sync(select=["posthog_requested_exports"], run_config=config,
                          raise_on_error=False)
    if fmt == "text/csv":
        assert result.success
    else:
        assert not result.success
        assert not [r for r in sim_env.sim.request_log if r.method == "POST"]


def test_requested_exports_schedule_reads_its_yaml_file(tmp_path, monkeypatch):
    schedule = defs.resolve_schedule_def("posthog_requested_exports_daily")
    monkeypatch.delenv("POSTHOG_EXPORT_REQUESTS_FILE", raising=False)
    skipped = schedule.evaluate_tick(dg.build_schedule_context())
    assert skipped.skip_message and "POSTHOG_EXPORT_REQUESTS_FILE" in skipped.skip_message
    monkeypatch.setenv("POSTHOG_EXPORT_REQUESTS_FILE", "export_requests.example.yaml")
    tick = schedule.evaluate_tick(dg.build_schedule_context())
    [run] = tick.run_requests
    requests = run.run_config["ops"]["posthog_requested_exports"]["config"]["requests"]
    assert [r["export_format"] for r in requests] == [
        "text/csv", "image/png",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("just a string")
    monkeypatch.setenv("POSTHOG_EXPORT_REQUESTS_FILE", str(bad))
    with pytest.raises(dg.DagsterError) as raised:
        schedule.evaluate_tick(dg.build_schedule_context())
    assert "expected a list of requests" in str(raised.value.__cause__)


def test_run_process_uses_malloc_for_arrow_and_loads_no_pyarrow_dataset():
    """What keeps a run's memory down (README, Performance): Arrow allocates from malloc, which
    each step's end trims, and pyarrow.dataset (16 MB, and pandas with it where installed) is
    never imported."""
    code = (
        "import sys, pipelines.definitions, pyarrow as pa\n"
        "from resources.lake import Lake\n"
        "pa.array([1, 2])\n"
        "print(pa.default_memory_pool().backend_name, 'pyarrow.dataset' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.split() == ["system", "False"]


def test_demo_records_its_run_where_the_ui_reads_it(tmp_path):
    """The quick start's next step is the UI: `demo` records its run in `.dagster_home` (unless
    DAGSTER_HOME is set), the DAGSTER_HOME `python3 run.py ui` starts the UI with."""
    import sqlite3

    from pipelines.cli import demo_dagster_home

    assert demo_dagster_home({"DAGSTER_HOME": "/x/home"}, tmp_path) == Path("/x/home")
    assert demo_dagster_home({}, tmp_path) == tmp_path / ".dagster_home"
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    env.update(LAKE_ROOT=str(tmp_path / "lake"), DUCKDB_DATABASE=str(tmp_path / "wh.duckdb"))
    out = subprocess.run(
        [str(Path(sys.executable).parent / "posthog-pipeline"), "demo", "--groups", "30,5",
         "--exports", "4"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    home = tmp_path / ".dagster_home"
    assert f"DAGSTER_HOME={home}" in out.stdout
    with sqlite3.connect(home / "history" / "runs.db") as db:
        assert db.execute("SELECT status FROM runs").fetchall() == [("SUCCESS",)]


def test_definitions_every_step_calling_posthog_is_in_the_posthog_pool():
    """The steps that take the posthog resource, and only they, are in the pool that
    deploy/dagster.yaml limits (so runs for many projects queue their PostHog steps)."""
    from resources.posthog import POSTHOG_POOL

    nodes = [*defs.resolve_implicit_global_asset_job_def().graph.node_defs,
             *defs.resolve_job_def("delete_explicit_members_job").graph.node_defs]
    calling = {n.name for n in nodes if "posthog" in n.required_resource_keys}
    pooled = {n.name for n in nodes if n.pool == POSTHOG_POOL}
    assert calling == pooled
    assert CONTRACT_ASSETS <= calling
    assert not any(n.pool for n in nodes if n.name not in calling)
