"""Schedules: exports hourly (CSV/XLSX contents expire after 7 days), groups daily."""

import dagster as dg

from pipelines.jobs import posthog_exports_job, posthog_groups_job

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

ALL_SCHEDULES = [posthog_exports_hourly, posthog_groups_daily]
