"""POST /api/projects/:id/query/: the HogQL queries a groups sync sends, and nothing else.

PostHog runs any HogQL here (posthog/api/query.py QueryViewSet.create -> HogQLQueryRunner,
posthog/hogql_queries/hogql_query_runner.py). The simulator parses exactly two shapes, strictly
(the text, whitespace aside, and the placeholder values with their types), and answers anything
else as PostHog answers a query it cannot run: 400 `validation_error` (ExposedHogQLError ->
`ValidationError(str(e), code_name)` in posthog/api/query.py).

1. `SELECT index, count() FROM groups GROUP BY index ORDER BY index LIMIT n`
2. `SELECT key, created_at, properties FROM groups WHERE index = {group_type_index}
   [AND (created_at < toDateTime({after_created_at})
         OR (created_at = toDateTime({after_created_at}) AND key < {after_key}))]
   ORDER BY created_at DESC, key DESC LIMIT n`

HogQL's `groups` table: `index`, `key`, `created_at`, `updated_at`, `properties`, one row per
group (posthog/hogql/database/schema/groups.py). `properties` is the JSON text ClickHouse holds.
A LIMIT above MAX_SELECT_RETURNED_ROWS = 50000 is capped to it (posthog/hogql/constants.py).
With an explicit LIMIT no has-more paginator runs, so `hasMore`, `limit` and `offset` are null
(HogQLQueryRunner._calculate). OFFSET is refused for personal API keys with
posthog/hogql/user_query_validator.py's message. Values come through HogQLQuery.values as
placeholders (`to_query` in hogql_query_runner.py).

Not confirmed in PostHog's source: how a DateTime64 value is spelled in `results` (here as the
REST listing spells created_at: ISO 8601, UTC, `Z`, microseconds when not zero), and HogQL's
`toDateTime(string)` reading it to the microsecond (an unreadable one is NULL: no rows).
"""
from __future__ import annotations

import datetime as _dt
import re
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:  # pragma: no cover
    from .server import ApiApp, Ctx, Response

MAX_SELECT_RETURNED_ROWS = 50_000

# posthog/hogql/user_query_validator.py OFFSET_NOT_ALLOWED_MESSAGE
OFFSET_NOT_ALLOWED_MESSAGE = (
    "OFFSET is not supported on queries made with a personal API key. "
    "For pagination, use keyset pagination on the `timestamp` column, e.g. "
    "`WHERE timestamp > :last_seen_timestamp ORDER BY timestamp LIMIT N`. "
    "For bulk data extraction, use batch exports: https://posthog.com/docs/cdp/batch-exports"
)

_COUNT_RE = re.compile(
    r"SELECT index, count\(\) FROM groups GROUP BY index ORDER BY index LIMIT ([0-9]+)"
)
_PAGE_RE = re.compile(
    r"SELECT key, created_at, properties FROM groups WHERE index = \{group_type_index\}"
    r"( AND \(created_at < toDateTime\(\{after_created_at\}\)"
    r" OR \(created_at = toDateTime\(\{after_created_at\}\) AND key < \{after_key\}\)\))?"
    r" ORDER BY created_at DESC, key DESC LIMIT ([0-9]+)"
)
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


def _unsupported(detail: str) -> "Response":
    from .server import validation

    return validation(detail, None, endpoint="query")


def _envelope(query: str, columns: list[str], types: list[list[str]], rows: list) -> dict:
    # HogQLQueryResponse (posthog/schema.py) as QueryViewSet.create dumps it (by_alias)
    return {
        "clickhouse": None, "columns": columns, "error": None, "explain": None,
        "hasMore": None, "hogql": query, "limit": None, "metadata": None, "modifiers": {},
        "offset": None, "query": query, "query_status": None, "results": rows,
        "timings": [], "types": types, "is_cached": False, "timezone": "UTC",
    }


def _parse_ts_us(value: str) -> int | None:
    try:
        d = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if d.tzinfo is None:
        d = d.replace(tzinfo=_dt.timezone.utc)
    return (d - _EPOCH) // _dt.timedelta(microseconds=1)


def handle(app: "ApiApp", ctx: "Ctx") -> "Response":
    """The query endpoint (POST; the key holds query:read and passed the query bucket)."""
    from .server import error, json_response, loads_body

    try:
        body = loads_body(ctx.body or b"")
    except ValueError as e:
        return error(400, "validation_error", "parse_error", f"JSON parse error - {e}",
                     endpoint="query")
    query = body.get("query") if isinstance(body, dict) else None
    if not isinstance(query, dict):
        return _unsupported("Invalid data. 'query' must be an object such as "
                            '{"kind": "HogQLQuery", "query": "SELECT ..."}.')
    if query.get("kind") != "HogQLQuery":
        return _unsupported(f"posthog-sim serves only HogQLQuery, not {query.get('kind')!r}.")
    text = query.get("query")
    values = query.get("values") or {}
    if not isinstance(text, str) or not isinstance(values, dict):
        return _unsupported(
            "HogQLQuery needs 'query' (a string) and optional 'values' (an object).")
    norm = " ".join(text.split())
    if re.search(r"\bOFFSET\b", norm, re.IGNORECASE):
        return _unsupported(OFFSET_NOT_ALLOWED_MESSAGE)
    m = _COUNT_RE.fullmatch(norm)
    if m and not values:
        return json_response(200, _count(app, norm, int(m.group(1))), "query")
    m = _PAGE_RE.fullmatch(norm)
    if m:
        page = _page(app, norm, values, after=m.group(1) is not None, limit=int(m.group(2)))
        if page is not None:
            return json_response(200, page, "query")
    return _unsupported(
        "posthog-sim does not support this query: it answers only the group count and the "
        "keyset page of groups a sync sends (posthog_sim/query.py)."
    )


def _count(app: "ApiApp", query: str, limit: int) -> dict:
    ds = app.ds
    rows = [[i, ds.group_count(i)] for i in range(ds.n_types) if ds._valid_type(i)]
    rows = rows[: min(limit, MAX_SELECT_RETURNED_ROWS)]
    return _envelope(query, ["index", "count()"], [["index", "Int64"], ["count()", "UInt64"]], rows)


def _page(app: "ApiApp", query: str, values: dict[str, Any], *, after: bool, limit: int
          ) -> dict | None:
    wanted = {"group_type_index"} | ({"after_created_at", "after_key"} if after else set())
    if set(values) != wanted:
        return None
    index = values["group_type_index"]
    if isinstance(index, bool) or not isinstance(index, int):
        return None
    cursor = None
    if after:
        created, key = values["after_created_at"], values["after_key"]
        if not isinstance(created, str) or not isinstance(key, str):
            return None
        us = _parse_ts_us(created)
        if us is None:  # toDateTime(...) is NULL: the comparison matches nothing
            return _envelope(query, _COLUMNS, _TYPES, [])
        cursor = (us, key)
    limit = min(limit, MAX_SELECT_RETURNED_ROWS)
    ds = app.ds
    rows: list[list] = []
    if ds._valid_type(index) and limit > 0:
        from .dataset import iso_us

        for c, k, ref in ds._iter_from(index, cursor):
            g = ds._materialise(index, ref, c, k)
            # ClickHouse holds the properties as the text ingestion wrote: compact JSON
            rows.append([k, iso_us(c), orjson.dumps(g.get("group_properties") or {}).decode()])
            if len(rows) >= limit:
                break
    return _envelope(query, _COLUMNS, _TYPES, rows)


_COLUMNS = ["key", "created_at", "properties"]
_TYPES = [["key", "String"], ["created_at", "DateTime64(6, 'UTC')"], ["properties", "String"]]
