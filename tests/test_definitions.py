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


@pytest.mark.parametrize("bad_lake", [False, True])
def test_materialize_with_no_configuration_fails_once_naming_every_variable(tmp_path, bad_lake):
    """The contract command with POSTHOG_HOST, POSTHOG_PROJECT_ID and POSTHOG_PERSONAL_API_KEY
    all unset (and LAKE_ROOT malformed too): one short failure before any step runs, naming
    every variable, no stack trace."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTHOG_")}
    env.update(LAKE_ROOT="ftp://bucket/lake" if bad_lake else str(tmp_path / "lake"),
               DUCKDB_DATABASE=str(tmp_path / "wh.duckdb"), DAGSTER_HOME=str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    out = subprocess.run(
        [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "pipelines.definitions",
         "--select", "*"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
        cwd=Path(__file__).resolve().parents[1],
    )
    text = out.stdout + out.stderr
    assert out.returncode != 0
    for name in ("POSTHOG_HOST", "POSTHOG_PROJECT_ID", "POSTHOG_PERSONAL_API_KEY",
                 *(["LAKE_ROOT"] if bad_lake else [])):
        assert name in text
    assert f"Configuration: {3 if bad_lake else 2} problems" in text
    assert "Stack Trace" not in text and "Traceback" not in text
    assert text.count("STEP_FAILURE") == 1 and "STEP_START" not in text
    assert len(text.splitlines()) <= 25, text
    # nothing ran, so nothing was written
    assert not (tmp_path / "lake").exists()


def test_every_asset_shows_its_described_columns_before_any_run():
    """`dagster/column_schema` on every asset definition: the catalog lists the columns (with
    DuckDB types and descriptions) of the table the asset lands, without a run."""
    from assets.tables import ALL_TABLES

    tables = {f"posthog.{t.name}": t for t in ALL_TABLES}
    for asset in defs.assets:
        spec = next(iter(asset.specs))
        schema = spec.metadata["dagster/column_schema"]
        assert isinstance(schema, dg.TableSchema), spec.key
        assert all(c.description for c in schema.columns), spec.key
        table = spec.metadata.get("dagster/table_name")
        if table is not None:
            assert [c.name for c in schema.columns] == tables[table].full_schema.names
    groups = next(a for a in defs.assets if a.key.to_user_string() == "posthog_groups")
    schema = next(iter(groups.specs)).metadata["dagster/column_schema"]
    columns = {c.name: c for c in schema.columns}
    assert columns["group_properties"].type == "JSON"
    assert columns["created_at"].type == "TIMESTAMPTZ"
    assert columns["group_key"].constraints.nullable is False


def test_export_archive_follows_new_export_metadata_and_is_late_after_six_hours():
    key = dg.AssetKey("posthog_export_contents")
    policy = defs.resolve_asset_graph().get(key).freshness_policy
    assert isinstance(policy, dg.FreshnessPolicy)
    assert policy.fail_window.to_timedelta() == timedelta(hours=6)
    assert policy.warn_window.to_timedelta() == timedelta(hours=2)
    automation = defs.resolve_sensor_def("posthog_automation_sensor")
    assert automation.default_status == dg.DefaultSensorStatus.STOPPED

    instance = dg.DagsterInstance.ephemeral()
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert result.total_requested == 0  # no export metadata yet: nothing to archive
    instance.report_runless_asset_event(dg.AssetMaterialization("posthog_exports"))
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance,
                                               cursor=result.cursor)
    assert result.total_requested == 1 and result.get_num_requested(key) == 1
    instance.report_runless_asset_event(dg.AssetMaterialization("posthog_export_contents"))
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance,
                                               cursor=result.cursor)
    assert result.total_requested == 0  # archived since: nothing new


def _preflight_job(name: str):
    import os as _os

    from tests._preflight_jobs import definitions

    return definitions(_os.environ["PREFLIGHT_LAKE_ROOT"]).resolve_job_def(name)


def checks_only_job():
    return _preflight_job("checks_only")


def groups_only_job():
    return _preflight_job("groups_only")


@pytest.mark.parametrize(("job", "passes"), [(checks_only_job, True), (groups_only_job, False)])
def test_preflight_checks_only_what_the_runs_steps_use(tmp_path, monkeypatch, job, passes):
    """No key configured: a run of lake-only asset checks is not failed for it; a run with a
    PostHog step is, before the step starts."""
    monkeypatch.setenv("PREFLIGHT_LAKE_ROOT", str(tmp_path / "lake"))
    monkeypatch.setenv("DUCKDB_DATABASE", str(tmp_path / "wh.duckdb"))
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = dg.execute_job(dg.reconstructable(job), instance=instance)
        failures = [e for e in result.all_events if e.is_step_failure]
    if passes:
        assert not [f for f in failures if "POSTHOG_" in str(f.event_specific_data.error)]
    else:
        [failure] = failures
        assert "POSTHOG_PERSONAL_API_KEY" in failure.event_specific_data.error.message
        assert not [e for e in result.all_events if e.is_step_start]


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
