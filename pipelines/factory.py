"""`posthog_definitions(...)`: the whole pipeline as one `dg.Definitions`, for this project's
own code location (pipelines/definitions.py) or to merge into an existing Dagster project."""

from __future__ import annotations

import dagster as dg

from assets.checks import (
    posthog_export_contents_sha256,
    posthog_exports_expiring_unarchived,
    posthog_groups_unique_key,
)
from assets.exports import posthog_export_contents, posthog_exports, posthog_requested_exports
from assets.groups import (
    posthog_group_property_definitions,
    posthog_group_property_values,
    posthog_group_types,
    posthog_groups,
)
from assets.members import posthog_explicit_members
from pipelines.executor import posthog_executor
from pipelines.jobs import ALL_JOBS
from pipelines.schedules import ALL_SCHEDULES
from pipelines.sensors import ALL_SENSORS
from resources.lake import LakeResource, default_state_dir
from resources.posthog import PostHogResource

ASSETS = [
    posthog_group_types,
    posthog_groups,
    posthog_group_property_definitions,
    posthog_group_property_values,
    posthog_requested_exports,
    posthog_exports,
    posthog_export_contents,
    posthog_explicit_members,
]
ASSET_CHECKS = [
    posthog_groups_unique_key,
    posthog_export_contents_sha256,
    posthog_exports_expiring_unarchived,
]

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
    include_executor: bool = True,
) -> dg.Definitions:
    """Every PostHog asset, check, job, schedule and sensor with the `posthog` and `lake`
    resources, configured by the arguments (pass secrets as `dg.EnvVar`, never literals).

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
    return dg.Definitions(
        assets=ASSETS,
        asset_checks=ASSET_CHECKS,
        jobs=ALL_JOBS,
        executor=posthog_executor(posthog, lake) if include_executor else None,
        schedules=ALL_SCHEDULES,
        sensors=ALL_SENSORS,
        resources={"posthog": posthog, "lake": lake},
    )
