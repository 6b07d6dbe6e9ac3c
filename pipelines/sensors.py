"""Sensors: catch exports about to expire without archived content, between hourly ticks; and
the automation condition sensor for the PostHog assets."""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import dagster as dg

from assets.exports import expiring_unarchived
from assets.project import SINGLE, Project
from resources.lake import LakeResource

EXPIRY_HORIZON = timedelta(hours=6)


@dg.sensor(job_name="posthog_exports_job", minimum_interval_seconds=600)
def posthog_expiring_exports_sensor(
    context: dg.SensorEvaluationContext, lake: LakeResource
) -> dg.SensorResult | dg.SkipReason:
    """Runs the exports job when an export with content expires within 6 hours unarchived.

    It reads only the lake (no API calls), so it costs nothing from the rate budget.
    """
    rows = expiring_unarchived(lake.get_lake(), datetime.now(UTC) + EXPIRY_HORIZON)
    if not rows:
        return dg.SkipReason("No export with content expires within 6 hours unarchived.")
    ids = [r[1] for r in rows]
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"expiring-{ids[0]}-{ids[-1]}-{len(ids)}",
                                    tags={"posthog/expiring_exports": str(len(ids))})]
    )


def posthog_sensors(projects: Sequence[Project] = (SINGLE,)) -> list:
    # Declarative automation for the assets that carry an automation condition (the export
    # archive follows new export metadata at once). Off until switched on, as the schedules
    # are; one sensor for this code's assets, so a project that merges them keeps its own
    # default sensor.
    automation = dg.AutomationConditionSensorDefinition(
        "posthog_automation_sensor",
        target=dg.AssetSelection.groups(*(p.group_name for p in projects)),
        default_status=dg.DefaultSensorStatus.STOPPED,
        minimum_interval_seconds=60,
        description="Evaluates the PostHog assets' automation conditions: archives export "
        "contents as soon as new export metadata lands.",
    )
    return [posthog_expiring_exports_sensor, automation]
