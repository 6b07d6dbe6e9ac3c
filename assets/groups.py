"""Group types, groups, and group property definitions and values."""


from collections import Counter
from datetime import UTC, datetime

import dagster as dg
from pydantic import Field

from assets._streams import Progress, asset_sync, interleave
from assets.metadata import sync_metadata
from assets.tables import (
    GROUP_PROPERTY_DEFINITIONS,
    GROUP_PROPERTY_VALUES,
    GROUP_TYPES,
    GROUPS,
    GroupColumns,
    group_row,
    group_type_row,
    property_definition_row,
    property_value_row,
)
from resources.lake import LakeResource
from resources.posthog import POSTHOG_POOL, PostHogResource
from resources.posthog_client import RawGroup

KINDS = {"posthog", "parquet", "duckdb"}


class SyncConfig(dg.Config):
    lock_timeout_seconds: float = Field(
        default=900.0,
        description="How long to wait for another sync of the same asset to finish before failing.",
    )


class GroupsConfig(SyncConfig):
    type_concurrency: int = Field(
        default=5, description="Group types crawled at once (each type is one cursor chain)."
    )


class PropertyValuesConfig(SyncConfig):
    keys: list[str] = Field(
        default_factory=list,
        description="Property keys to fetch value counts for, in every group type. Empty: the "
        "first `max_keys_per_type` non-numerical keys of each type's definitions.",
    )
    max_keys_per_type: int = Field(
        default=25, description="Cap on keys per group type when `keys` is empty (1 request each)."
    )
    concurrency: int = Field(default=4, description="property_values requests in flight at once.")


def _group_types(context: dg.AssetExecutionContext, store, client) -> dict[int, str | None]:
    """Group type names by index. When this run has just published posthog.group_types (a full
    sync, or the groups job) they are read from the lake: the same list, one request fewer for
    each asset that needs it. Otherwise (the asset materialized on its own) they are listed."""
    snapshot = store.current_snapshot(GROUP_TYPES.name)
    if snapshot is not None and snapshot.get("run_id") == context.run.run_id:
        rows = store.read_current(GROUP_TYPES, columns=["group_type_index", "group_type"])
        return {r["group_type_index"]: r["group_type"] for r in rows.to_pylist()}
    return {t["group_type_index"]: t.get("group_type") for t in client.list_group_types()}


@dg.asset(group_name="posthog", pool=POSTHOG_POOL, kinds=KINDS,
          metadata={"dagster/table_name": "posthog.group_types"})
def posthog_group_types(
    context: dg.AssetExecutionContext, config: SyncConfig, posthog: PostHogResource,
    lake: LakeResource,
) -> dg.MaterializeResult:
    """Group types of the project. Endpoint: GET /api/projects/:id/groups_types/"""
    synced_at = datetime.now(UTC)
    with asset_sync(context, config, posthog, lake) as (store, client):
        rows = [group_type_row(t) for t in client.list_group_types()]
        with store.writer(GROUP_TYPES, synced_at=synced_at) as writer:
            writer.write_rows(rows)
        published = store.publish([writer], run_id=context.run.run_id, asset="posthog_group_types")
    return dg.MaterializeResult(metadata=sync_metadata(
            client.stats, published, preview=rows))


@dg.asset(group_name="posthog", pool=POSTHOG_POOL, kinds=KINDS, deps=[posthog_group_types],
          metadata={"dagster/table_name": "posthog.groups"})
def posthog_groups(
    context: dg.AssetExecutionContext, config: GroupsConfig, posthog: PostHogResource,
    lake: LakeResource,
) -> dg.MaterializeResult:
    """Every group of every type, as a full snapshot; the last N snapshots stay in
    `posthog.groups_history`. Endpoint: GET /api/projects/:id/groups/?group_type_index=N"""
    synced_at = datetime.now(UTC)
    per_type: Counter[str] = Counter()
    preview: list[dict] = []
    with asset_sync(context, config, posthog, lake) as (store, client):
        types = _group_types(context, store, client)
        sources = {
            index: (
                lambda index=index: client.iter_group_pages(
                    group_type_index=index, raw_properties=True
                )
            )
            for index in types
        }
        # the last snapshot's size makes a good guess at this one's, for the time left
        previous_rows = store.read_current(GROUPS, columns=["group_type_index"]).num_rows
        with store.writer(GROUPS, synced_at=synced_at) as writer, \
                Progress(context.log, "groups", stats=client.stats, unit="groups",
                         expected_total=previous_rows or None,
                         requests_per_second=client.budget_rate) as progress:
            gathered = GroupColumns()  # pages of RawGroup, written as Arrow batches
            for index, page in interleave(sources, max_workers=config.type_concurrency):
                if page and isinstance(page[0], RawGroup):
                    gathered.add(page, types[index])
                    if len(gathered) >= _BATCH_ROWS:
                        _write_gathered(writer, gathered, preview)
                else:  # a page read as dicts; the rows stay in the order they came
                    _write_gathered(writer, gathered, preview)
                    rows = [group_row(g, types[index]) for g in page]
                    writer.write_rows(rows)
                    preview.extend(rows[: max(0, 10 - len(preview))])
                per_type[f"{index}:{types[index]}"] += len(page)
                progress.update(groups=writer.rows_written + len(gathered))
            _write_gathered(writer, gathered, preview)
        published = store.publish([writer], run_id=context.run.run_id, asset="posthog_groups")
        progress.update(force=True, groups=published[0].rows)
    return dg.MaterializeResult(
        metadata=sync_metadata(
            client.stats, published, preview=preview,
            extra={
                "rows_by_group_type": dg.MetadataValue.json(dict(per_type)),
                "duplicates_dropped": writer.duplicates_dropped,
            },
        )
    )


# groups gathered before they become one Arrow batch: Arrow's per-call cost is paid per batch
_BATCH_ROWS = 2_000


def _write_gathered(writer, gathered: GroupColumns, preview: list[dict]) -> None:
    if not len(gathered):
        return
    batch = gathered.take()
    if len(preview) < 10:
        preview.extend(batch.slice(0, 10 - len(preview)).to_pylist())
    writer.write_batch(batch)


@dg.asset(group_name="posthog", pool=POSTHOG_POOL, kinds=KINDS, deps=[posthog_group_types],
          metadata={"dagster/table_name": "posthog.group_property_definitions"})
def posthog_group_property_definitions(
    context: dg.AssetExecutionContext, config: SyncConfig, posthog: PostHogResource,
    lake: LakeResource,
) -> dg.MaterializeResult:
    """Property definitions of each group type. Endpoint:
    GET /api/projects/:id/property_definitions/?type=group&group_type_index=N"""
    synced_at = datetime.now(UTC)
    preview: list[dict] = []
    with asset_sync(context, config, posthog, lake) as (store, client):
        types = _group_types(context, store, client)
        with store.writer(GROUP_PROPERTY_DEFINITIONS, synced_at=synced_at) as writer:
            for index, group_type in types.items():
                rows = [
                    property_definition_row(d, index, group_type)
                    for d in client.iter_group_property_definitions(group_type_index=index)
                ]
                writer.write_rows(rows)
                preview.extend(rows[: max(0, 10 - len(preview))])
        published = store.publish(
            [writer], run_id=context.run.run_id, asset="posthog_group_property_definitions"
        )
    return dg.MaterializeResult(metadata=sync_metadata(
            client.stats, published, preview=preview))


def _keys_to_fetch(store, config: PropertyValuesConfig, types: dict[int, str | None]
                   ) -> dict[int, list[str]]:
    if config.keys:
        return {index: list(config.keys) for index in types}
    definitions = store.read_current(
        GROUP_PROPERTY_DEFINITIONS, columns=["group_type_index", "name", "is_numerical"]
    ).to_pylist()
    chosen: dict[int, list[str]] = {index: [] for index in types}
    # categorical (non-numerical) keys first: their top-20 values are what people filter on
    for d in sorted(definitions, key=lambda d: (bool(d["is_numerical"]), d["name"] or "")):
        keys = chosen.get(d["group_type_index"])
        if keys is not None and d["name"] and len(keys) < config.max_keys_per_type:
            keys.append(d["name"])
    return chosen


@dg.asset(group_name="posthog", pool=POSTHOG_POOL, kinds=KINDS,
          deps=[posthog_group_property_definitions],
          metadata={"dagster/table_name": "posthog.group_property_values"})
def posthog_group_property_values(
    context: dg.AssetExecutionContext, config: PropertyValuesConfig, posthog: PostHogResource,
    lake: LakeResource,
) -> dg.MaterializeResult:
    """Top 20 values (with counts) of chosen property keys per group type. Endpoint:
    GET /api/projects/:id/groups/property_values/?group_type_index=N&key=K"""
    synced_at = datetime.now(UTC)
    preview: list[dict] = []
    with asset_sync(context, config, posthog, lake) as (store, client):
        types = _group_types(context, store, client)
        keys = _keys_to_fetch(store, config, types)
        sources = {
            (index, key): (
                lambda index=index, key=key: [
                    client.get_group_property_values(group_type_index=index, key=key)
                ]
            )
            for index, index_keys in keys.items()
            for key in index_keys
        }
        with store.writer(GROUP_PROPERTY_VALUES, synced_at=synced_at) as writer:
            for (index, key), values in interleave(sources, max_workers=config.concurrency):
                rows = [property_value_row(v, index, types[index], key) for v in values]
                writer.write_rows(rows)
                preview.extend(rows[: max(0, 10 - len(preview))])
        published = store.publish(
            [writer], run_id=context.run.run_id, asset="posthog_group_property_values"
        )
    return dg.MaterializeResult(
        metadata=sync_metadata(
            client.stats, published, preview=preview,
            extra={"keys_fetched": sum(len(k) for k in keys.values())},
        )
    )
