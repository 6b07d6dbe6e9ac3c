"""Jobs: the full sync, the groups and exports halves, and the guarded member deletion."""

import dagster as dg

from assets.members import delete_explicit_members_job

posthog_sync_job = dg.define_asset_job(
    "posthog_sync_job",
    selection=dg.AssetSelection.groups("posthog"),
    description="Full sync: every PostHog asset.",
)

posthog_groups_job = dg.define_asset_job(
    "posthog_groups_job",
    selection=dg.AssetSelection.assets(
        "posthog_group_types",
        "posthog_groups",
        "posthog_group_property_definitions",
        "posthog_group_property_values",
    ),
    description="Group types, groups (a new snapshot), property definitions and values.",
)

posthog_exports_job = dg.define_asset_job(
    "posthog_exports_job",
    selection=dg.AssetSelection.assets("posthog_exports", "posthog_export_contents"),
    description="Export metadata, then archive every export content not archived yet.",
)

posthog_requested_exports_job = dg.define_asset_job(
    "posthog_requested_exports_job",
    selection=dg.AssetSelection.assets(
        "posthog_requested_exports", "posthog_exports", "posthog_export_contents"
    ),
    description="Create the configured exports, wait for them, then archive them.",
)

ALL_JOBS = [
    posthog_sync_job,
    posthog_groups_job,
    posthog_exports_job,
    posthog_requested_exports_job,
    delete_explicit_members_job,
]
