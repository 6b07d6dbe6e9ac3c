"""Schedules: exports hourly (CSV/XLSX contents expire after 7 days), groups daily, and the
configured export requests daily."""

import os
from pathlib import Path

import dagster as dg
import yaml

from pipelines.jobs import posthog_exports_job, posthog_groups_job, posthog_requested_exports_job

EXPORT_REQUESTS_ENV = "POSTHOG_EXPORT_REQUESTS_FILE"

posthog_exports_hourly = dg.ScheduleDefinition(
    name="posthog_exports_hourly",
    job=posthog_exports_job,
    cron_schedule="17 * * * *",
    execution_timezone="UTC",
    description="Archive new exports every hour, well before PostHog deletes them.",
)

posthog_groups_daily = dg.ScheduleDefinition(
    name="posthog_groups_daily",
    job=posthog_groups_job,
    cron_schedule="0 3 * * *",
    execution_timezone="UTC",
    description="A fresh groups snapshot every day (the API has no 'changed since' filter).",
)


def load_export_requests(path: str | Path) -> list[dict]:
    """The export requests in a YAML file: a list of {export_format, insight|dashboard|export_context}."""
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


@dg.schedule(
    job=posthog_requested_exports_job,
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
    return dg.RunRequest(
        run_config={"ops": {"posthog_requested_exports": {"config": {"requests": requests}}}},
        tags={"posthog/export_requests": str(len(requests))},
    )


ALL_SCHEDULES = [posthog_exports_hourly, posthog_groups_daily, posthog_requested_exports_daily]
