"""Groups through PostHog's query API: HogQL over the `groups` table, keyset pages of up to
50,000 rows, in the query API's own throttle bucket.

`POST /api/projects/:id/query/` with `{"query": {"kind": "HogQLQuery", "query": ..., "values":
{...}}}` (scope `query:read`; posthog/api/query.py). HogQL's `groups` table has `index`, `key`,
`created_at`, `updated_at` and `properties`, the latest row per group
(posthog/hogql/database/schema/groups.py). A SELECT returns at most MAX_SELECT_RETURNED_ROWS =
50000 rows with an explicit LIMIT (posthog/hogql/constants.py), and with one PostHog runs no
has-more paginator, so `hasMore` is not set (HogQLQueryRunner._calculate,
posthog/hogql_queries/hogql_query_runner.py): a page shorter than the LIMIT is the last.
OFFSET is refused for personal API keys (posthog/hogql/user_query_validator.py), and would be
slow anyway: pages are keyset pages over (created_at DESC, key DESC), the order and cursor of
the REST listing (ee/clickhouse/views/groups.py), so a group created mid-crawl lands above the
cursor and is left for the next sync, as with REST, and none is read twice or skipped.

Values go in as HogQL placeholders (`{name}`, HogQLQuery.values), never spliced into the text:
a group key may hold quotes, backslashes or newlines.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec

from resources import jsontext
from resources.budget import QUERY
from resources.errors import PostHogPaginationError
from resources.posthog_client import PostHogClient, RawGroup

__all__ = [
    "GROUPS_COUNT_HOGQL",
    "GROUPS_PAGE_HOGQL",
    "MAX_QUERY_ROWS",
    "REST_PAGE_SIZE",
    "QueryGroups",
    "TypePlan",
    "plan_source",
    "query_requests",
    "rest_requests",
]

# posthog/hogql/constants.py MAX_SELECT_RETURNED_ROWS
MAX_QUERY_ROWS = 50_000
# the REST listing's fixed page size (ee/clickhouse/views/groups.py)
REST_PAGE_SIZE = 100

# One query counts every type's groups: the count that tells `auto` which path saves requests.
GROUPS_COUNT_HOGQL = "SELECT index, count() FROM groups GROUP BY index ORDER BY index LIMIT 10"

# Only the three columns a row needs; the first page has no cursor condition.
_SELECT = "SELECT key, created_at, properties FROM groups WHERE index = {group_type_index}"
_AFTER = (
    " AND (created_at < toDateTime({after_created_at})"
    " OR (created_at = toDateTime({after_created_at}) AND key < {after_key}))"
)
_ORDER = " ORDER BY created_at DESC, key DESC LIMIT {limit}"


def GROUPS_PAGE_HOGQL(*, first: bool, limit: int) -> str:  # noqa: N802 - a constant's template
    """The page query: the first page, or the one after a (created_at, key) cursor."""
    return _SELECT + ("" if first else _AFTER) + _ORDER.format(limit=int(limit))


def rest_requests(groups: int) -> int:
    """GET groups/ requests for a type of `groups` groups (an empty type still takes one)."""
    return max(1, math.ceil(groups / REST_PAGE_SIZE))


def query_requests(groups: int, limit: int = MAX_QUERY_ROWS) -> int:
    """Query requests for `groups` groups: a page shorter than `limit` ends the walk, so a
    multiple of `limit` takes one more (empty) page."""
    return groups // limit + 1


@dataclass(frozen=True)
class TypePlan:
    """Which path one group type takes, and why."""

    index: int
    source: str  # "rest" | "query"
    groups: int | None  # from the count query; None when it was not run
    rest_requests: int | None
    query_requests: int | None


def plan_source(index: int, groups: int, *, limit: int, min_saved: int) -> TypePlan:
    """`auto` for one type: the query API when it saves at least `min_saved` requests."""
    rest, query = rest_requests(groups), query_requests(groups, limit)
    source = "query" if rest - query >= max(1, min_saved) else "rest"
    return TypePlan(index, source, groups, rest, query)


class _QueryPage(msgspec.Struct):
    """The parts of PostHog's HogQLQueryResponse we read; the rest of the envelope (columns,
    types, hogql, clickhouse, timings, limit, offset, ...) is skipped unread."""

    results: list[tuple[str, str, str | None]]
    hasMore: bool | None = None  # noqa: N815 - PostHog's field name


class _CountPage(msgspec.Struct):
    results: list[tuple[int, int]]


_PAGE = msgspec.json.Decoder(_QueryPage)
_COUNT = msgspec.json.Decoder(_CountPage)


def _decoder(typed: msgspec.json.Decoder):
    def decode(content: bytes) -> Any:
        try:
            return typed.decode(content)
        except msgspec.MsgspecError:
            # not JSON (a truncated body: ValueError, retried) or not that shape (returned as
            # read, and refused by the caller with what came back)
            return jsontext.loads(content)

    return decode


class QueryGroups:
    """Group listings and counts through one client's query API bucket."""

    def __init__(self, client: PostHogClient) -> None:
        self._client = client
        self._t = client._t  # noqa: SLF001 - the same package's transport
        self.path = client._path("query/")  # noqa: SLF001
        self.requests: dict[int, int] = {}  # query pages fetched per group type

    def _query(self, hogql: str, values: dict[str, Any], decode) -> Any:
        body: dict[str, Any] = {"kind": "HogQLQuery", "query": hogql}
        if values:
            body["values"] = values
        return self._t.call(
            "POST", self.path, endpoint="query/", json_body={"query": body},
            decode=decode, bucket=QUERY,
        )

    def count_groups(self) -> dict[int, int]:
        """Groups per type index, in one query."""
        page = self._query(GROUPS_COUNT_HOGQL, {}, _decoder(_COUNT))
        if not isinstance(page, _CountPage):
            raise PostHogPaginationError(
                f"POST {self.path} (group counts) returned no [index, count] rows: "
                f"{str(page)[:200]}"
            )
        self._client.stats.add(pages=1)
        return {int(index): int(n) for index, n in page.results}

    def iter_group_pages(
        self, *, group_type_index: int, limit: int = MAX_QUERY_ROWS, slice_rows: int = 5_000
    ) -> Iterator[list[RawGroup]]:
        """Every group of one type as `RawGroup`s whose properties are the warehouse's JSON
        text (json's exact spelling, as the REST path lands them), handed out `slice_rows` at a
        time from pages of up to `limit`. Only one page is held: its rows become `RawGroup`s a
        slice at a time (the decoded rows of a slice are let go as it is handed out), and the
        next page is fetched when the caller asks for more. `requests[index]` counts the pages.
        """
        if isinstance(group_type_index, bool) or not isinstance(group_type_index, int):
            raise TypeError("group_type_index must be an int")
        if not 1 <= limit <= MAX_QUERY_ROWS:
            raise ValueError(f"limit must be 1..{MAX_QUERY_ROWS} (PostHog's row cap)")
        decode = _decoder(_PAGE)
        values: dict[str, Any] = {"group_type_index": group_type_index}
        first = True
        cursor: tuple[str, str] | None = None
        while True:
            hogql = GROUPS_PAGE_HOGQL(first=first, limit=limit)
            if cursor is not None:
                values["after_created_at"], values["after_key"] = cursor
            page = self._query(hogql, values, decode)
            self.requests[group_type_index] = self.requests.get(group_type_index, 0) + 1
            if not isinstance(page, _QueryPage):
                raise PostHogPaginationError(
                    f"POST {self.path} (groups of type {group_type_index}) returned no "
                    f"[key, created_at, properties] rows: {str(page)[:200]}"
                )
            rows = page.results
            del page
            n = len(rows)
            if n > limit:
                raise PostHogPaginationError(
                    f"POST {self.path}: {n} rows for LIMIT {limit}; refusing a page that does "
                    "not match its query."
                )
            self._client.stats.add(pages=1, items=n)
            last = (rows[-1][1], rows[-1][0]) if rows else None
            if cursor is not None and last == cursor:
                raise PostHogPaginationError(
                    f"POST {self.path}: the keyset page after {cursor!r} repeated it; stopping "
                    "rather than loop."
                )
            for start in range(0, n, slice_rows):
                end = min(start + slice_rows, n)
                groups = [
                    RawGroup(group_type_index, key, msgspec.Raw(_properties_text(props)), created)
                    for key, created, props in rows[start:end]
                ]
                rows[start:end] = [None] * (end - start)  # let the decoded rows go
                yield groups
                del groups
            del rows
            if n < limit or last is None:
                return
            first, cursor = False, last


def _properties_text(text: str | None) -> bytes:
    """A group's properties as json writes them (`jsontext`): ClickHouse holds the text the
    ingestion wrote, so it is used as it is only when it already is json's exact text."""
    if not text or text == "null":
        return b"{}"  # a group stored without properties lands as {} (as groups/ serves it)
    raw = text.encode()
    if jsontext.is_canonical(raw):
        return raw
    value = jsontext.loads(raw)
    return jsontext.dumps(value if value is not None else {}).encode()
