"""Jobs: the full sync, the groups and exports halves, and the guarded member deletion; each
over every configured project (assets/project.py)."""

from collections.abc import Sequence

import dagster as dg

from assets.members import delete_explicit_members_job
from assets.project import SINGLE, Project

GROUP_ASSETS = ("posthog_group_types", "posthog_groups", "posthog_group_property_definitions",
                "posthog_group_property_values")
EXPORT_ASSETS = ("posthog_exports", "posthog_export_contents")


def _keys(projects: Sequence[Project], names: Sequence[str]) -> list[dg.AssetKey]:
    return [project.key(name) for project in projects for name in names]


def posthog_jobs(projects: Sequence[Project] = (SINGLE,)) -> list:
    """The jobs, each selecting its assets in every project."""
    return [
        dg.define_asset_job(
            "posthog_sync_job",
            selection=dg.AssetSelection.groups(*(p.group_name for p in projects)),
            description="Full sync: every PostHog asset"
            + (" of every project." if len(projects) > 1 else "."),
        ),
        dg.define_asset_job(
            "posthog_groups_job",
            selection=dg.AssetSelection.assets(*_keys(projects, GROUP_ASSETS)),
            description="Group types, groups (a new snapshot), property definitions and values.",
        ),
        dg.define_asset_job(
            "posthog_exports_job",
            selection=dg.AssetSelection.assets(*_keys(projects, EXPORT_ASSETS)),
            description="Export metadata, then archive every export content not archived yet.",
        ),
        dg.define_asset_job(
            "posthog_requested_exports_job",
            selection=dg.AssetSelection.assets(
                *_keys(projects, ("posthog_requested_exports", *EXPORT_ASSETS))),
            description="Create the configured exports, wait for them, then archive them.",
        ),
        delete_explicit_members_job,
    ]
