"""Schedules: exports hourly (CSV/XLSX contents expire after 7 days), groups daily, and the
configured export requests daily."""

import os
from collections.abc import Sequence
from pathlib import Path

import dagster as dg
import yaml

from assets.project import SINGLE, Project

EXPORT_REQUESTS_ENV = "POSTHOG_EXPORT_REQUESTS_FILE"

posthog_exports_hourly = dg.ScheduleDefinition(
    name="posthog_exports_hourly",
    job_name="posthog_exports_job",
    cron_schedule="17 * * * *",
    execution_timezone="UTC",
    description="Archive new exports every hour, well before PostHog deletes them.",
)

posthog_groups_daily = dg.ScheduleDefinition(
    name="posthog_groups_daily",
    job_name="posthog_groups_job",
    cron_schedule="0 3 * * *",
    execution_timezone="UTC",
    description="A fresh groups snapshot every day (the API has no 'changed since' filter).",
)


def load_export_requests(path: str | Path) -> list[dict]:
    """The export requests in a YAML file: a list of {export_format, insight|dashboard|export_context}
    (and, with several projects, the `project_id` each is made in)."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{EXPORT_REQUESTS_ENV}={path}: cannot read the export requests: {exc}") from None
    requests = data.get("requests") if isinstance(data, dict) else data
    if not isinstance(requests, list) or not all(isinstance(r, dict) for r in requests):
        raise ValueError(
            f"{EXPORT_REQUESTS_ENV}={path}: expected a list of requests, e.g. "
            "[{export_format: text/csv, insight: 42}]"
        )
    return requests


def requested_exports_schedule(projects: Sequence[Project] = (SINGLE,)) -> dg.ScheduleDefinition:
    """Creates the file's export requests daily, each in its project (with several projects,
    a request names its `project_id`; insights and dashboards belong to one project)."""

    @dg.schedule(
        job_name="posthog_requested_exports_job",
        cron_schedule="30 5 * * *",
        execution_timezone="UTC",
        name="posthog_requested_exports_daily",
        description=f"Create the exports listed in the YAML file named by {EXPORT_REQUESTS_ENV}, "
        "wait for them, and archive them.",
    )
    def posthog_requested_exports_daily(context: dg.ScheduleEvaluationContext):
        path = os.environ.get(EXPORT_REQUESTS_ENV)
        if not path:
            return dg.SkipReason(f"{EXPORT_REQUESTS_ENV} is not set: no exports to create.")
        requests = load_export_requests(path)
        if not requests:
            return dg.SkipReason(f"{path} lists no export requests.")
        return dg.RunRequest(run_config={"ops": requests_by_op(requests, projects, path)},
                             tags={"posthog/export_requests": str(len(requests))})

    return posthog_requested_exports_daily


def requests_by_op(requests: list[dict], projects: Sequence[Project], path: str | Path) -> dict:
    """Run config of each project's posthog_requested_exports op: the requests made in it."""
    if not any(p.several for p in projects):
        return {"posthog_requested_exports": {"config": {"requests": requests}}}
    by_id = {p.config.project_id: p for p in projects if p.config is not None}
    ops: dict[str, dict] = {}
    for n, request in enumerate(requests, 1):
        request = dict(request)
        project_id = str(request.pop("project_id", "") or "")
        if project_id not in by_id:
            raise ValueError(
                f"{EXPORT_REQUESTS_ENV}={path}: request {n} needs a project_id, one of "
                f"{', '.join(sorted(by_id))} (several projects are configured)")
        op = "__".join(by_id[project_id].key("posthog_requested_exports").path)
        ops.setdefault(op, {"config": {"requests": []}})["config"]["requests"].append(request)
    return ops


def posthog_schedules(projects: Sequence[Project] = (SINGLE,)) -> list:
    return [posthog_exports_hourly, posthog_groups_daily, requested_exports_schedule(projects)]
