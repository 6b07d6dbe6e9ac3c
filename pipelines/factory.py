"""`posthog_definitions(...)`: the whole pipeline as one `dg.Definitions`, for this project's
own code location (pipelines/definitions.py) or to merge into an existing Dagster project."""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from assets.checks import project_checks
from assets.exports import export_assets
from assets.groups import group_assets
from assets.members import member_assets
from assets.project import Project, projects_of
from pipelines.executor import posthog_executor
from pipelines.jobs import posthog_jobs
from pipelines.schedules import posthog_schedules
from pipelines.sensors import posthog_sensors
from resources.lake import LakeResource, default_state_dir
from resources.posthog import PostHogResource
from resources.projects import ProjectConfig


def project_assets(project: Project) -> list[dg.AssetsDefinition]:
    """Every asset of one project."""
    return [*group_assets(project), *export_assets(project), *member_assets(project)]

Setting = str | dg.EnvVar


def posthog_definitions(
    *,
    project_id: Setting,
    api_key: Setting,
    host: Setting = "https://us.posthog.com",
    lake_root: Setting = "data/lake",
    duckdb_database: Setting = "data/warehouse.duckdb",
    state_dir: Setting | None = None,
    requests_per_minute: Setting = "480",
    requests_per_hour: Setting = "4800",
    rate_limit_windows: Setting = "",
    query_requests_per_hour: Setting = "120",
    groups_source: Setting = "auto",
    budget_url: Setting = "",
    retention_hours: Setting = "168",
    projects: Sequence[ProjectConfig] | None = None,
    include_executor: bool = True,
) -> dg.Definitions:
    """Every PostHog asset, check, job, schedule and sensor with the `posthog` and `lake`
    resources, configured by the arguments (pass secrets as `dg.EnvVar`, never literals).

    `projects` (resources/projects.py) syncs several projects, each under its own key prefix
    and group (assets/project.py); `host`, `project_id` and `api_key` are then unused. Unset:
    the one project of `host`, `project_id` and `api_key`.

    `state_dir` (locks, staging, the rate budget) defaults to `state/` beside the DuckDB file.
    `include_executor=False` leaves the executor to the project this is merged into (Definitions
    merge refuses two executors); configuration problems are then reported by each PostHog step
    instead of once, before the run.
    """
    if state_dir is None:
        state_dir = default_state_dir(
            duckdb_database.get_value() or "data/warehouse.duckdb"
            if isinstance(duckdb_database, dg.EnvVar) else duckdb_database
        )
    posthog = PostHogResource(
        host=host,
        project_id=project_id,
        personal_api_key=api_key,
        requests_per_minute=requests_per_minute,
        requests_per_hour=requests_per_hour,
        rate_limit_windows=rate_limit_windows,
        query_requests_per_hour=query_requests_per_hour,
        groups_source=groups_source,
        budget_url=budget_url,
        state_dir=state_dir,
    )
    lake = LakeResource(
        lake_root=lake_root,
        duckdb_database=duckdb_database,
        state_dir=state_dir,
        retention_hours=retention_hours,
    )
    graph = projects_of(projects)
    return dg.Definitions(
        assets=[asset for project in graph for asset in project_assets(project)],
        asset_checks=[check for project in graph for check in project_checks(project)],
        jobs=posthog_jobs(graph),
        executor=posthog_executor(posthog, lake, graph) if include_executor else None,
        schedules=posthog_schedules(graph),
        sensors=posthog_sensors(graph),
        resources={"posthog": posthog, "lake": lake},
    )
