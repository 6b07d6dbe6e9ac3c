"""`posthog_definitions`: the pipeline inside an existing Dagster project, merged with its own
assets, behaves as the standalone project does."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg

from pipelines.definitions import defs as standalone
from pipelines.factory import posthog_definitions
from tests.helpers import start_sim

ROOT = Path(__file__).resolve().parents[1]

HOST_PROJECT = '''
import dagster as dg

from pipelines.factory import posthog_definitions
from resources.lake import LakeResource


@dg.asset(deps=[dg.AssetKey("posthog_groups")], group_name="analytics")
def companies_per_type(lake: LakeResource) -> dg.MaterializeResult:
    """The host project's own asset, reading what the PostHog assets landed."""
    rows = lake.get_lake().query(
        "SELECT group_type, count(*) FROM posthog.groups GROUP BY ALL ORDER BY 1")
    return dg.MaterializeResult(metadata={"per_type": dg.MetadataValue.json(dict(rows))})


defs = dg.Definitions.merge(
    posthog_definitions(
        host=dg.EnvVar("ACME_POSTHOG_HOST"),
        project_id=dg.EnvVar("ACME_POSTHOG_PROJECT"),
        api_key=dg.EnvVar("ACME_POSTHOG_KEY"),
        lake_root=dg.EnvVar("ACME_LAKE"),
        duckdb_database=dg.EnvVar("ACME_WAREHOUSE"),
    ),
    dg.Definitions(assets=[companies_per_type]),
)
'''


def test_factory_definitions_match_the_standalone_project():
    built = posthog_definitions(project_id="1", api_key="phx_factory_test_key")

    def keys(d: dg.Definitions) -> set[str]:
        return {k.to_user_string() for k in d.resolve_asset_graph().get_all_asset_keys()}

    assert keys(built) == keys(standalone)
    assert {s.name for s in built.schedules} == {s.name for s in standalone.schedules}
    assert {s.name for s in built.sensors} == {s.name for s in standalone.sensors}
    assert set(built.resources) == {"posthog", "lake"}
    # a host project with its own executor takes ours out (merge refuses two executors)
    assert posthog_definitions(project_id="1", api_key="k", include_executor=False).executor \
        is None


def test_factory_in_a_separate_code_location_materializes_against_the_simulator(tmp_path):
    groups = (40, 7)
    project = tmp_path / "acme"
    project.mkdir()
    (project / "acme_defs.py").write_text(textwrap.dedent(HOST_PROJECT))
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with start_sim(tmp_path, groups_per_type=groups, n_exports=3) as env:
        run_env = {k: v for k, v in os.environ.items()
                   if not k.startswith(("POSTHOG_", "LAKE_", "DUCKDB_", "PIPELINE_"))}
        run_env.update(
            ACME_POSTHOG_HOST=env.sim.api_url, ACME_POSTHOG_PROJECT=str(env.sim.project_id),
            ACME_POSTHOG_KEY=env.sim.api_key, ACME_LAKE=str(tmp_path / "lake"),
            ACME_WAREHOUSE=str(tmp_path / "wh.duckdb"), DAGSTER_HOME=str(home),
            PYTHONPATH=os.pathsep.join([str(project), str(ROOT)]),
        )
        out = subprocess.run(
            [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "acme_defs",
             "--select", "*"],
            check=False, cwd=project, env=run_env, capture_output=True, text=True,
            timeout=600,
        )
    assert out.returncode == 0, out.stderr[-4000:]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for asset in ("posthog_group_types", "posthog_groups", "posthog_exports",
                      "posthog_export_contents"):
            assert instance.get_latest_materialization_event(dg.AssetKey(asset)), asset
        own = instance.get_latest_materialization_event(dg.AssetKey("companies_per_type"))
        per_type = own.asset_materialization.metadata["per_type"].data
    # the host project's asset read what the PostHog assets landed in the same run
    assert sorted(per_type.values()) == sorted(groups)
