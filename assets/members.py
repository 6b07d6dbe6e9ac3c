"""Explicit project members (a legacy PostHog endpoint) and the guarded delete job."""


from datetime import UTC, datetime

import dagster as dg
from pydantic import Field

from assets._streams import asset_sync
from assets.groups import KINDS, SyncConfig
from assets.metadata import sync_metadata
from assets.project import SINGLE, Project
from assets.tables import EXPLICIT_MEMBERS, explicit_member_row, table_metadata
from resources.errors import PostHogEndpointMissingError
from resources.lake import LakeResource
from resources.posthog import POSTHOG_POOL, PostHogResource


def member_assets(project: Project = SINGLE) -> list[dg.AssetsDefinition]:
    """The explicit members asset of one project (see assets/project.py)."""

    @dg.asset(name="posthog_explicit_members", key_prefix=project.prefix,
              group_name=project.group_name, pool=POSTHOG_POOL, kinds=KINDS,
              metadata={**table_metadata(EXPLICIT_MEMBERS), **project.metadata})
    def posthog_explicit_members(
        context: dg.AssetExecutionContext, config: SyncConfig, posthog: PostHogResource,
        lake: LakeResource,
    ) -> dg.MaterializeResult:
        """Explicit project members; an empty table where PostHog no longer has the endpoint
        (current cloud). Endpoint: GET /api/projects/:id/explicit_members/"""
        return sync_explicit_members(context, config, posthog, lake, project)

    return [posthog_explicit_members]


def sync_explicit_members(context: dg.AssetExecutionContext, config: SyncConfig,
                          posthog: PostHogResource, lake: LakeResource, project: Project
                          ) -> dg.MaterializeResult:
    synced_at = datetime.now(UTC)
    reason = None
    with asset_sync(context, config, posthog, lake, project) as (store, client):
        try:
            rows = [explicit_member_row(m) for m in client.list_explicit_members()]
        except PostHogEndpointMissingError:
            rows = []
            reason = (
                "This PostHog has no explicit_members endpoint (it was removed with the move to "
                "role-based access control); the table is empty by design."
            )
            context.log.info(reason)
        with store.writer(EXPLICIT_MEMBERS, synced_at=synced_at) as writer:
            writer.write_rows(rows)
        published = store.publish([writer], run_id=context.run.run_id,
                                  asset=context.asset_key.to_user_string(),
                                  # a PostHog without the endpoint has none, by design
                                  max_drop=config.max_row_drop if reason is None else 1.0)
    extra = {"endpoint_available": reason is None}
    if reason:
        extra["why_empty"] = reason
    return dg.MaterializeResult(
        metadata=sync_metadata(
            client.stats, published, preview=rows, extra=extra)
    )


class DeleteMembersConfig(dg.Config):
    user_uuids: list[str] = Field(
        default_factory=list, description="User uuids whose explicit membership to delete."
    )
    confirm: bool = Field(
        default=False,
        description="Must be true to delete; otherwise this is a dry run that only says what it "
        "would do.",
    )


@dg.op(pool=POSTHOG_POOL)
def delete_explicit_members(
    context: dg.OpExecutionContext, config: DeleteMembersConfig, posthog: PostHogResource
) -> dg.Output[list[str]]:
    """Deletes explicit project members. Endpoint: DELETE /api/projects/:id/explicit_members/:uuid/"""
    if not config.user_uuids:
        context.log.info("No user_uuids given: nothing to delete.")
        return dg.Output([], metadata={"deleted": 0, "dry_run": not config.confirm})
    if not config.confirm:
        for user_uuid in config.user_uuids:
            context.log.info("DRY RUN: would delete explicit member %s", user_uuid)
        context.log.info(
            "Dry run: nothing was deleted. Set `confirm: true` in this op's config to delete "
            "these %d member(s).", len(config.user_uuids)
        )
        return dg.Output([], metadata={"deleted": 0, "dry_run": True,
                                       "would_delete": dg.MetadataValue.json(config.user_uuids)})
    deleted: list[str] = []
    with posthog.get_client(logger=context.log) as client:
        for user_uuid in config.user_uuids:
            client.delete_explicit_member(user_uuid)
            context.log.info("Deleted explicit member %s", user_uuid)
            deleted.append(user_uuid)
    return dg.Output(deleted, metadata={"deleted": len(deleted), "dry_run": False,
                                        "deleted_uuids": dg.MetadataValue.json(deleted)})


@dg.job(description="Deletes explicit project members: a dry run unless `confirm: true`. "
        "Never scheduled.")
def delete_explicit_members_job() -> None:
    delete_explicit_members()
