"""Jobs for tests/test_definitions.py's preflight test, reconstructable by module and name."""

import dagster as dg

from pipelines.factory import posthog_definitions


def definitions(lake_root: str) -> dg.Definitions:
    jobs = [
        dg.define_asset_job("checks_only",
                            selection=dg.AssetSelection.checks_for_assets("posthog_groups")),
        dg.define_asset_job("groups_only", selection=["posthog_group_types"]),
    ]
    built = posthog_definitions(project_id="", api_key="", lake_root=lake_root)
    return dg.Definitions.merge(built, dg.Definitions(jobs=jobs))
