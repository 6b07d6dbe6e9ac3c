"""The one Dagster Definitions object of this code location: `posthog_definitions` (the
factory in pipelines/factory.py) configured from the environment.

This is the only place environment variables are wired. An unset optional variable falls back
to the contract's default; an unset required one reaches the resource as "" and fails the run
before its first PostHog step, with one message naming every missing or malformed variable.
"""

import os

import dagster as dg

from pipelines.factory import posthog_definitions
from resources.lake import default_state_dir
from resources.projects import projects_from_env


def _env(name: str, default: str) -> str | dg.EnvVar:
    """`EnvVar(name)` when the variable is set (resolved at run time), else the default."""
    return dg.EnvVar(name) if os.environ.get(name) not in (None, "") else default


# locks, staged rows, downloads and the rate budget: local disk, never the (maybe S3) lake
_DEFAULT_STATE_DIR = default_state_dir(os.environ.get("DUCKDB_DATABASE") or "data/warehouse.duckdb")

# several projects (POSTHOG_PROJECT_ID=123,456 or POSTHOG_PROJECTS_FILE) make one copy of the
# assets per project; one project keeps today's variables and asset keys
_PROJECTS = projects_from_env(os.environ)

defs = posthog_definitions(
    host=_env("POSTHOG_HOST", "https://us.posthog.com"),
    project_id=_env("POSTHOG_PROJECT_ID", ""),
    api_key=_env("POSTHOG_PERSONAL_API_KEY", ""),
    requests_per_minute=_env("POSTHOG_REQUESTS_PER_MINUTE", "480"),
    requests_per_hour=_env("POSTHOG_REQUESTS_PER_HOUR", "4800"),
    rate_limit_windows=_env("POSTHOG_RATE_LIMIT_WINDOWS", ""),
    query_requests_per_hour=_env("POSTHOG_QUERY_REQUESTS_PER_HOUR", "120"),
    groups_source=_env("POSTHOG_GROUPS_SOURCE", "auto"),
    budget_url=_env("POSTHOG_BUDGET_URL", ""),
    state_dir=_env("PIPELINE_STATE_DIR", _DEFAULT_STATE_DIR),
    lake_root=_env("LAKE_ROOT", "data/lake"),
    duckdb_database=_env("DUCKDB_DATABASE", "data/warehouse.duckdb"),
    retention_hours=_env("LAKE_RETENTION_HOURS", "168"),
    projects=_PROJECTS if len(_PROJECTS) > 1 or os.environ.get("POSTHOG_PROJECTS_FILE") else None,
)
