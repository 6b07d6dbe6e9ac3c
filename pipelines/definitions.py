"""The one Dagster Definitions object: assets, checks, jobs, schedules, sensors, resources.

This is the only place environment variables are wired. An unset optional variable falls back
to the contract's default; an unset required one reaches the resource as "" and fails the run
with a message naming the variable.
"""

import os

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
from pipelines.jobs import ALL_JOBS
from pipelines.schedules import ALL_SCHEDULES
from pipelines.sensors import ALL_SENSORS
from resources.lake import LakeResource, default_state_dir
from resources.posthog import PostHogResource

# One process runs every step of a run, one step after another (Dagster's in-process executor).
# The steps do their own overlapping where PostHog allows it: group types crawl side by side and
# export contents download 4 at a time, so the shared rate budget, not the executor, is the limit.
# A process per step bought nothing here: it cost about 5 s of start-up per run, a third more CPU
# and four times the memory (four 300 MB processes instead of one; see README, Performance).
# The multiprocess executor stays one line of run config away, for a self-hosted PostHog without
# rate limits on a machine with cores to spare:
#     execution: {config: {multiprocess: {max_concurrent: 4}}}
# The rate budget is kept across processes either way.
EXECUTOR = dg.executor(
    name="posthog_executor",
    config_schema=dg.Field(
        dg.Selector({
            "in_process": dg.in_process_executor.config_schema.as_field(),
            "multiprocess": dg.multiprocess_executor.config_schema.as_field(),
        }),
        default_value={"in_process": {}},
        description="in_process (the default): every step in the run's process, one at a time. "
        "multiprocess: each step in its own process, several at once.",
    ),
    requirements=lambda config: dg.multi_or_in_process_executor.get_requirements(config),
)(lambda init_context: dg.multi_or_in_process_executor.executor_creation_fn(init_context))


def _env(name: str, default: str) -> str | dg.EnvVar:
    """`EnvVar(name)` when the variable is set (resolved at run time), else the default."""
    return dg.EnvVar(name) if os.environ.get(name) not in (None, "") else default


# locks, staged rows, downloads and the rate budget: local disk, never the (maybe S3) lake
_DEFAULT_STATE_DIR = default_state_dir(os.environ.get("DUCKDB_DATABASE") or "data/warehouse.duckdb")

defs = dg.Definitions(
    assets=[
        posthog_group_types,
        posthog_groups,
        posthog_group_property_definitions,
        posthog_group_property_values,
        posthog_requested_exports,
        posthog_exports,
        posthog_export_contents,
        posthog_explicit_members,
    ],
    asset_checks=[
        posthog_groups_unique_key,
        posthog_export_contents_sha256,
        posthog_exports_expiring_unarchived,
    ],
    jobs=ALL_JOBS,
    executor=EXECUTOR,
    schedules=ALL_SCHEDULES,
    sensors=ALL_SENSORS,
    resources={
        "posthog": PostHogResource(
            host=_env("POSTHOG_HOST", "https://us.posthog.com"),
            project_id=_env("POSTHOG_PROJECT_ID", ""),
            personal_api_key=_env("POSTHOG_PERSONAL_API_KEY", ""),
            requests_per_minute=_env("POSTHOG_REQUESTS_PER_MINUTE", "480"),
            requests_per_hour=_env("POSTHOG_REQUESTS_PER_HOUR", "4800"),
            rate_limit_windows=_env("POSTHOG_RATE_LIMIT_WINDOWS", ""),
            budget_url=_env("POSTHOG_BUDGET_URL", ""),
            state_dir=_env("PIPELINE_STATE_DIR", _DEFAULT_STATE_DIR),
        ),
        "lake": LakeResource(
            lake_root=_env("LAKE_ROOT", "data/lake"),
            duckdb_database=_env("DUCKDB_DATABASE", "data/warehouse.duckdb"),
            state_dir=_env("PIPELINE_STATE_DIR", _DEFAULT_STATE_DIR),
            retention_hours=_env("LAKE_RETENTION_HOURS", "168"),
        ),
    },
)
