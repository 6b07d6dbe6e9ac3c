"""Group types, groups, and group property definitions and values."""


import json
from collections import Counter
from datetime import UTC, datetime

import dagster as dg
from pydantic import Field

from assets._streams import Progress, asset_sync, interleave
from assets.metadata import sync_metadata
from assets.project import SINGLE, Project
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
    table_metadata,
)
from resources.errors import PostHogAPIError
from resources.lake import BATCH_BYTES, LakeResource
from resources.posthog import POSTHOG_POOL, PostHogResource, parse_groups_source
from resources.posthog_client import RawGroup
from resources.posthog_query import (
    MAX_QUERY_ROWS,
    QueryGroups,
    TypePlan,
    plan_source,
    query_requests,
    rest_requests,
)

KINDS = {"posthog", "parquet", "duckdb"}


class SyncConfig(dg.Config):
    lock_timeout_seconds: float = Field(
        default=900.0,
        description="How long to wait for another sync of the same asset to finish before failing.",
    )
    max_row_drop: float = Field(
        default=0.5,
        description="A sync whose snapshot would drop more than this share of a table's rows "
        "(e.g. a listing that came back short) fails before anything is committed; 1.0 accepts "
        "any drop.",
    )


class GroupsConfig(SyncConfig):
    type_concurrency: int = Field(
        default=5, description="Group types crawled at once over REST (each type is one cursor "
        "chain); types listed through the query API go one query at a time."
    )
    groups_source: str = Field(
        default="",
        description="rest (GET groups/, 100 groups a request), query (HogQL through POST query/, "
        "up to `query_page_rows` a request, in the query API's own rate bucket; needs "
        "query:read) or auto (query for each type where it saves at least "
        "`auto_min_saved_requests` requests, when the key has query:read; REST otherwise). "
        "Empty: the posthog resource's groups_source (POSTHOG_GROUPS_SOURCE, default auto).",
    )
    query_page_rows: int = Field(
        default=MAX_QUERY_ROWS,
        description="Groups per query page (1..50,000, PostHog's MAX_SELECT_RETURNED_ROWS).",
    )
    auto_min_saved_requests: int = Field(
        default=10,
        description="auto takes the query API for a group type only when that saves at least "
        "this many requests (10: types of about 1,000 groups or more); smaller types stay on "
        "REST and leave the query bucket (120/hour, shared with the team's other queries) alone.",
    )


class PropertyValuesConfig(SyncConfig):
    keys: list[str] = Field(
        default_factory=list,
        description="Property keys to fetch value counts for, in every group type. Empty: every "
        "key of each type's definitions (non-numerical first, up to `max_keys_per_type`).",
    )
    max_keys_per_type: int | None = Field(
        default=None,
        description="Opt-in cap on keys per group type when `keys` is empty (1 request each); "
        "unset: every defined key.",
    )
    concurrency: int = Field(default=4, description="property_values requests in flight at once.")


def _group_types(context: dg.AssetExecutionContext, store, client, project: Project
                 ) -> dict[int, str | None]:
    """Group type names by index. When this run has just published the project's group types
    (a full sync, or the groups job) they are read from the lake: the same list, one request
    fewer for each asset that needs it. Otherwise (the asset materialized on its own) they are
    listed."""
    last = store.last_commit(GROUP_TYPES.name,
                             asset=project.key(GROUP_TYPES_ASSET).to_user_string())
    if last is not None and last.get("run_id") == context.run.run_id:
        rows = store.read_current(GROUP_TYPES, columns=["group_type_index", "group_type"])
        return {r["group_type_index"]: r["group_type"] for r in rows.to_pylist()}
    return {t["group_type_index"]: t.get("group_type") for t in client.list_group_types()}


GROUP_TYPES_ASSET = "posthog_group_types"


def group_assets(project: Project = SINGLE) -> list[dg.AssetsDefinition]:
    """The group assets of one project (see assets/project.py)."""

    def spec(table, **kw) -> dict:
        return {"key_prefix": project.prefix, "group_name": project.group_name,
                "pool": POSTHOG_POOL, "kinds": KINDS,
                "metadata": {**table_metadata(table), **project.metadata}, **kw}

    @dg.asset(name=GROUP_TYPES_ASSET, **spec(GROUP_TYPES))
    def posthog_group_types(
        context: dg.AssetExecutionContext, config: SyncConfig, posthog: PostHogResource,
        lake: LakeResource,
    ) -> dg.MaterializeResult:
        """Group types of the project. Endpoint: GET /api/projects/:id/groups_types/"""
        return sync_group_types(context, config, posthog, lake, project)

    @dg.asset(name="posthog_groups", deps=[posthog_group_types], **spec(GROUPS))
    def posthog_groups(
        context: dg.AssetExecutionContext, config: GroupsConfig, posthog: PostHogResource,
        lake: LakeResource,
    ) -> dg.MaterializeResult:
        """Every group of every type, as a full snapshot, with its history in
        `posthog.groups_history`. Endpoint: GET /api/projects/:id/groups/?group_type_index=N,
        or POST /api/projects/:id/query/ (HogQL over `groups`, keyset pages of up to 50,000)."""
        return sync_groups(context, config, posthog, lake, project)

    @dg.asset(name="posthog_group_property_definitions", deps=[posthog_group_types],
              **spec(GROUP_PROPERTY_DEFINITIONS))
    def posthog_group_property_definitions(
        context: dg.AssetExecutionContext, config: SyncConfig, posthog: PostHogResource,
        lake: LakeResource,
    ) -> dg.MaterializeResult:
        """Property definitions of each group type. Endpoint:
        GET /api/projects/:id/property_definitions/?type=group&group_type_index=N"""
        return sync_property_definitions(context, config, posthog, lake, project)

    @dg.asset(name="posthog_group_property_values", deps=[posthog_group_property_definitions],
              **spec(GROUP_PROPERTY_VALUES))
    def posthog_group_property_values(
        context: dg.AssetExecutionContext, config: PropertyValuesConfig,
        posthog: PostHogResource, lake: LakeResource,
    ) -> dg.MaterializeResult:
        """Top 20 values (with counts) of chosen property keys per group type. Endpoint:
        GET /api/projects/:id/groups/property_values/?group_type_index=N&key=K"""
        return sync_property_values(context, config, posthog, lake, project)

    return [posthog_group_types, posthog_groups, posthog_group_property_definitions,
            posthog_group_property_values]


def sync_group_types(context: dg.AssetExecutionContext, config: SyncConfig,
                     posthog: PostHogResource, lake: LakeResource, project: Project
                     ) -> dg.MaterializeResult:
    synced_at = datetime.now(UTC)
    with asset_sync(context, config, posthog, lake, project) as (store, client):
        rows = [group_type_row(t) for t in client.list_group_types()]
        with store.writer(GROUP_TYPES, synced_at=synced_at) as writer:
            writer.write_rows(rows)
        published = store.publish([writer], run_id=context.run.run_id,
                                  asset=context.asset_key.to_user_string(),
                                  max_drop=config.max_row_drop)
    return dg.MaterializeResult(metadata=sync_metadata(
            client.stats, published, preview=rows))


def sync_groups(context: dg.AssetExecutionContext, config: GroupsConfig,
                posthog: PostHogResource, lake: LakeResource, project: Project
                ) -> dg.MaterializeResult:
    synced_at = datetime.now(UTC)
    per_type: Counter[str] = Counter()
    pages_by_type: Counter[int] = Counter()
    preview: list[dict] = []
    source = parse_groups_source(
        config.groups_source or posthog.groups_source,
        "groups_source" if config.groups_source else "POSTHOG_GROUPS_SOURCE",
    )
    if not 1 <= config.query_page_rows <= MAX_QUERY_ROWS:
        raise dg.Failure(f"query_page_rows must be 1..{MAX_QUERY_ROWS:,} (PostHog's row cap).")
    with asset_sync(context, config, posthog, lake, project) as (store, client):
        types = _group_types(context, store, client, project)
        queries = QueryGroups(client)
        # the last snapshot's size per type: a guess at this one's, for the time left, and
        # what lets `auto` skip the count query for types far too small for the query API
        previous = Counter(
            store.read_current(GROUPS, columns=["group_type_index"]).column(0).to_pylist())
        plans, missing_scope = _plan(context, queries, types, source, config, previous)
        rest_types = [i for i in types if plans[i].source == "rest"]
        query_types = [i for i in types if plans[i].source == "query"]
        sources = {
            index: (
                lambda index=index: client.iter_group_pages(
                    group_type_index=index, raw_properties=True, group_type=types[index]
                )
            )
            for index in rest_types
        }
        previous_rows = sum(previous.values())
        with store.writer(GROUPS, synced_at=synced_at) as writer, \
                Progress(context.log, "groups", stats=client.stats, unit="groups",
                         expected_total=previous_rows or None,
                         requests_per_second=client.budget_rate) as progress:
            gathered = GroupColumns()  # pages of RawGroup, written as Arrow batches
            for index, page in interleave(sources, max_workers=config.type_concurrency):
                if page and isinstance(page[0], RawGroup):
                    gathered.add(page, types[index])
                    if len(gathered) >= _BATCH_ROWS or gathered.nbytes >= BATCH_BYTES:
                        _write_gathered(writer, gathered, preview)
                else:  # a page read as dicts; the rows stay in the order they came
                    _write_gathered(writer, gathered, preview)
                    rows = [group_row(g, types[index]) for g in page]
                    writer.write_rows(rows)
                    preview.extend(rows[: max(0, 10 - len(preview))])
                per_type[f"{index}:{types[index]}"] += len(page)
                pages_by_type[index] += 1
                progress.update(groups=writer.rows_written + len(gathered))
            _write_gathered(writer, gathered, preview)
            # One query at a time per key, as PostHog asks of the query API: the types take
            # turns page by page, and a slice is written (and let go) before the next is read.
            for index, part in queries.iter_pages_of_types(query_types,
                                                           limit=config.query_page_rows):
                gathered.add(part, types[index])
                _write_gathered(writer, gathered, preview)
                per_type[f"{index}:{types[index]}"] += len(part)
                del part
                progress.update(groups=writer.rows_written)
            for index in query_types:
                pages_by_type[index] = queries.requests.get(index, 0)
            paths = {}
            for index in types:
                name = f"{index}:{types[index]}"
                paths[name] = {"source": plans[index].source, "groups": per_type[name],
                               "requests": pages_by_type[index]}
                context.log.info(
                    "groups: type %s took the %s path: %s groups in %s %s request%s",
                    name, "query API" if plans[index].source == "query" else "REST",
                    f"{per_type[name]:,}", f"{pages_by_type[index]:,}",
                    "query" if plans[index].source == "query" else "REST",
                    "" if pages_by_type[index] == 1 else "s",
                )
            if missing_scope:
                _log_scope_savings(context, paths, config.query_page_rows)
        published = store.publish([writer], run_id=context.run.run_id,
                                  asset=context.asset_key.to_user_string(),
                                  max_drop=config.max_row_drop)
        progress.update(force=True, groups=published[0].rows)
    return dg.MaterializeResult(
        metadata=sync_metadata(
            client.stats, published, preview=preview,
            extra={
                "rows_by_group_type": dg.MetadataValue.json(dict(per_type)),
                "groups_source": source,
                "path_by_group_type": dg.MetadataValue.json(paths),
                "requests_by_bucket": dg.MetadataValue.json(
                    dict(sorted(client.stats.by_bucket.items()))
                ),
                "duplicates_dropped": writer.duplicates_dropped,
            },
        )
    )


def _plan(context: dg.AssetExecutionContext, queries: QueryGroups, types: dict[int, str | None],
          source: str, config: GroupsConfig, previous: Counter[int]
          ) -> tuple[dict[int, TypePlan], bool]:
    """Which path each group type takes; and whether `auto` fell back for a missing scope."""
    if source != "auto" or not types:
        return {i: TypePlan(i, source, None, None, None) for i in types}, False
    # The query bucket is small (120 an hour, shared with the team's other queries), so the
    # count query is not spent when the last snapshot held every type, each so small that
    # even twice its size would stay on REST (a type it did not hold may be new and large).
    if all(previous[i] and plan_source(i, 2 * previous[i], limit=config.query_page_rows,
                                       min_saved=config.auto_min_saved_requests).source == "rest"
           for i in types):
        context.log.info(
            "groups: every type held few groups at the last sync (%s): REST, no count query "
            "spent from the query API's bucket",
            ", ".join(f"{i}:{types[i]} {previous[i]:,}" for i in types))
        return {i: TypePlan(i, "rest", None, None, None) for i in types}, False
    try:
        counts = queries.count_groups()
    except PostHogAPIError as e:
        if e.status not in (400, 403):
            raise
        rest = {i: TypePlan(i, "rest", None, None, None) for i in types}
        if e.status == 403:  # the key lacks query:read: said once, with the savings, at the end
            return rest, True
        context.log.warning(
            "groups: the query API refused the group count (%s %s); listing every type "
            "through REST", e.status, e.detail or e.code or "",
        )
        return rest, False
    plans = {}
    for index in types:
        plan = plan_source(index, counts.get(index, 0), limit=config.query_page_rows,
                           min_saved=config.auto_min_saved_requests)
        plans[index] = plan
        context.log.info(
            "groups: type %s:%s has %s groups: %s (%s query request%s against %s REST)",
            index, types[index], f"{plan.groups:,}",
            "query API" if plan.source == "query" else "REST",
            f"{plan.query_requests:,}", "" if plan.query_requests == 1 else "s",
            f"{plan.rest_requests:,}",
        )
    return plans, False


def _log_scope_savings(context: dg.AssetExecutionContext, paths: dict[str, dict],
                       limit: int) -> None:
    groups = sum(p["groups"] for p in paths.values())
    rest = sum(rest_requests(p["groups"]) for p in paths.values())
    query = sum(query_requests(p["groups"], limit) for p in paths.values())
    context.log.info(
        "groups: the key has no query:read scope, so groups went through REST: %s groups in "
        "%s requests of the 4,800/hour budget (about %s at PostHog's limits). With query:read "
        "they would take about %s query requests, in the query API's own bucket (120/hour).",
        f"{groups:,}", f"{rest:,}", _hours(rest / 4800), f"{query:,}",
    )


def _hours(hours: float) -> str:
    return f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.0f} min"


# groups gathered before they become one Arrow batch: Arrow's per-call cost is paid per batch
_BATCH_ROWS = 2_000


def _write_gathered(writer, gathered: GroupColumns, preview: list[dict]) -> None:
    if not len(gathered):
        return
    batch = gathered.take()
    if len(preview) < 10:
        preview.extend(batch.slice(0, 10 - len(preview)).to_pylist())
    writer.write_batch(batch)


def sync_property_definitions(context: dg.AssetExecutionContext, config: SyncConfig,
                              posthog: PostHogResource, lake: LakeResource, project: Project
                              ) -> dg.MaterializeResult:
    synced_at = datetime.now(UTC)
    preview: list[dict] = []
    with asset_sync(context, config, posthog, lake, project) as (store, client):
        types = _group_types(context, store, client, project)
        with store.writer(GROUP_PROPERTY_DEFINITIONS, synced_at=synced_at) as writer:
            for index, group_type in types.items():
                rows = [
                    property_definition_row(d, index, group_type)
                    for d in client.iter_group_property_definitions(group_type_index=index)
                ]
                writer.write_rows(rows)
                preview.extend(rows[: max(0, 10 - len(preview))])
        published = store.publish(
            [writer], run_id=context.run.run_id, asset=context.asset_key.to_user_string(),
            max_drop=config.max_row_drop,
        )
    return dg.MaterializeResult(metadata=sync_metadata(
            client.stats, published, preview=preview))


def _keys_to_fetch(store, config: PropertyValuesConfig, types: dict[int, str | None]
                   ) -> dict[int, list[str]]:
    if config.keys:
        return {index: list(config.keys) for index in types}
    definitions = store.read_current(
        GROUP_PROPERTY_DEFINITIONS, columns=["group_type_index", "name", "is_numerical", "extra"]
    ).to_pylist()
    chosen: dict[int, list[str]] = {index: [] for index in types}
    # categorical (non-numerical) keys first: their top-20 values are what people filter on
    for d in sorted(definitions, key=lambda d: (bool(d["is_numerical"]), d["name"] or "")):
        if d["extra"] and json.loads(d["extra"]).get("virtual") is True:
            continue  # computed by PostHog at query time (revenue): no group holds a value
        keys = chosen.get(d["group_type_index"])
        if keys is not None and d["name"] and (
                config.max_keys_per_type is None or len(keys) < config.max_keys_per_type):
            keys.append(d["name"])
    return chosen


def sync_property_values(context: dg.AssetExecutionContext, config: PropertyValuesConfig,
                         posthog: PostHogResource, lake: LakeResource, project: Project
                         ) -> dg.MaterializeResult:
    synced_at = datetime.now(UTC)
    preview: list[dict] = []
    with asset_sync(context, config, posthog, lake, project) as (store, client):
        types = _group_types(context, store, client, project)
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
            [writer], run_id=context.run.run_id, asset=context.asset_key.to_user_string(),
            # no volume guard: how many rows land follows the keys this run's config asks for
        )
    return dg.MaterializeResult(
        metadata=sync_metadata(
            client.stats, published, preview=preview,
            extra={"keys_fetched": sum(len(k) for k in keys.values())},
        )
    )
