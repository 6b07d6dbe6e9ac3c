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

A page's body is kept in a temporary file, not in memory, and parsed from there (ijson), so the
rows held are a slice of it, never the page; while it is parsed, the server answers the next
type's query (one query in flight at a time).

Values go in as HogQL placeholders (`{name}`, HogQLQuery.values), never spliced into the text:
a group key may hold quotes, backslashes or newlines.
"""

from __future__ import annotations

import contextlib
import math
import random
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any

import httpx
import ijson
import msgspec

from resources import jsontext
from resources.budget import QUERY
from resources.errors import PostHogPaginationError, PostHogRetryError
from resources.posthog_client import PostHogClient, RawGroup
from resources.posthog_transport import Call, Outcome

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
# A slice of a page handed to the caller ends at this much properties text, however few its rows:
# PostHog does not bound a group's properties, and 5,000 groups of 40 KB would be 200 MB.
SLICE_BYTES = 8 << 20
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


class _CountPage(msgspec.Struct):
    results: list[tuple[int, int]]


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
        self, *, group_type_index: int, limit: int = MAX_QUERY_ROWS, slice_rows: int = 5_000,
        slice_bytes: int = SLICE_BYTES,
    ) -> Iterator[list[RawGroup]]:
        """Every group of one type (see `iter_pages_of_types`)."""
        for _, part in self.iter_pages_of_types([group_type_index], limit=limit,
                                                slice_rows=slice_rows, slice_bytes=slice_bytes):
            yield part

    def iter_pages_of_types(
        self, indexes: Sequence[int], *, limit: int = MAX_QUERY_ROWS, slice_rows: int = 5_000,
        slice_bytes: int = SLICE_BYTES,
    ) -> Iterator[tuple[int, list[RawGroup]]]:
        """Every group of the given types as (type index, `RawGroup`s) whose properties are the
        warehouse's JSON text (json's exact spelling, as the REST path lands them), handed out
        `slice_rows` at a time (fewer when their properties pass `slice_bytes`) from pages of
        up to `limit` rows.

        One query is in flight at a time, as PostHog asks of the query API, and the server is
        not left idle while a page is parsed: the types take turns page by page, and the next
        type's page (its cursor is already known) is asked for as soon as this one has arrived.
        A page's body goes to a temporary file as it arrives (a 50,000-row page is some 35 MB
        of JSON), and is parsed from there (ijson): only the rows of the slice being gathered
        are held, never the page. A body broken off in transfer is asked for again; a body
        that arrived whole but does not parse gives up its rows up to the break, and the next
        query starts after the last row read, which the keyset makes exact. Only a page read to
        its end with fewer than `limit` rows ends a type. `requests[index]` counts the queries
        sent.
        """
        for index in indexes:
            if isinstance(index, bool) or not isinstance(index, int):
                raise TypeError("group_type_index must be an int")
        if not 1 <= limit <= MAX_QUERY_ROWS:
            raise ValueError(f"limit must be 1..{MAX_QUERY_ROWS} (PostHog's row cap)")
        cursors: dict[int, tuple[str, str] | None] = dict.fromkeys(indexes)
        turns = list(cursors)  # the types with pages left, in the order they take turns
        failures = 0
        pool = ThreadPoolExecutor(1, thread_name_prefix="posthog-query-page")
        asked: tuple[int, Future] | None = None

        def ask(index: int) -> tuple[int, Future]:
            return index, pool.submit(self._fetch_page, index, cursors[index], limit)

        def failed(index: int, what: str, exc: Exception) -> None:
            nonlocal failures
            failures += 1
            cause = f"{type(exc).__name__}: {str(exc)[:200]}"
            if failures > self._t.max_retries:
                raise PostHogRetryError(
                    method="POST", path=self.path, attempts=failures,
                    last_cause=f"a query page {what} ({cause})",
                ) from None
            delay = min(self._t.retry_base_delay * 2 ** (failures - 1), self._t.retry_max_delay)
            delay = delay / 2 + random.uniform(0.0, delay / 2)
            self._client.stats.add(retries=1)
            self._t.log.info(
                "POST %s (groups of type %d): the page %s (%s); querying again after the last "
                "row read, retry %d/%d in %.2fs",
                self.path, index, what, cause, failures, self._t.max_retries, delay,
            )
            self._t.sleep(delay)

        try:
            if turns:
                asked = ask(turns[0])
            while asked is not None:
                index, page = asked
                asked = None
                try:
                    body = page.result()
                except httpx.TransportError as exc:
                    failed(index, "broke off in transfer", exc)
                    asked = ask(index)
                    continue
                following = turns[(turns.index(index) + 1) % len(turns)]
                if following != index:  # parsed below while the server answers its query
                    asked = ask(following)
                n = 0
                gathered: list[RawGroup] = []
                size = 0
                reader = _BodyReader(iter(lambda body=body: body.read(64 * 1024), b""))
                try:
                    with body:
                        for row in ijson.items(reader, "results.item"):
                            key, created, props = _row(row)
                            text = _properties_text(props)
                            gathered.append(RawGroup(index, key, msgspec.Raw(text), created))
                            size += len(text)
                            n += 1
                            cursors[index] = (created, key)
                            if len(gathered) >= slice_rows or size >= slice_bytes:
                                self._client.stats.add(items=len(gathered))
                                yield index, gathered
                                gathered = []
                                size = 0
                    if not reader.saw_results:
                        raise _BadPage("the body has no 'results' array")
                except (ijson.JSONError, _BadPage) as exc:
                    if gathered:
                        self._client.stats.add(items=len(gathered))
                        yield index, gathered
                    failed(index, f"broke off after {n} rows", exc)
                    asked = asked or ask(index)
                    continue
                failures = 0
                if n > limit:
                    raise PostHogPaginationError(
                        f"POST {self.path}: {n} rows for LIMIT {limit}; refusing a page that "
                        "does not match its query."
                    )
                self._client.stats.add(pages=1, items=len(gathered))
                if gathered:
                    yield index, gathered
                del gathered
                if n < limit:
                    turns.remove(index)  # the next type's query, if any, is already asked
                elif asked is None:  # the only type left: its next page
                    asked = ask(index)
        finally:
            if asked is not None and not asked[1].cancel():
                asked[1].add_done_callback(_discard)  # stopped early: its body is not read
            pool.shutdown(wait=False)

    def _fetch_page(self, index: int, cursor: tuple[str, str] | None, limit: int) -> IO[bytes]:
        """Send one page's query and return its whole body, in a temporary file."""
        values: dict[str, Any] = {"group_type_index": index}
        if cursor is not None:
            values["after_created_at"], values["after_key"] = cursor
        response = self._open_stream({"kind": "HogQLQuery",
                                      "query": GROUPS_PAGE_HOGQL(first=cursor is None,
                                                                 limit=limit),
                                      "values": values})
        self.requests[index] = self.requests.get(index, 0) + 1
        body = tempfile.TemporaryFile()  # noqa: SIM115 - the caller closes it
        try:
            with contextlib.closing(response):
                for chunk in response.iter_bytes(256 * 1024):
                    body.write(chunk)
        except BaseException:
            body.close()
            raise
        body.seek(0)
        return body

    def _open_stream(self, query: dict[str, Any]) -> httpx.Response:
        """POST the query and return the 200 response with its body unread; everything before
        the body (429, 5xx, a refused connection, ...) is retried by the transport's policy."""
        t = self._t
        call = Call("POST", self.path, "query/", idempotent=True, bucket=QUERY)

        def attempt() -> Outcome:
            t.begin_attempt(call)
            request = t.api_request("POST", self.path, json_body={"query": query})
            try:
                response = t.http.send(request, stream=True)
            except httpx.RequestError as exc:
                return t.transport_outcome(call, exc)
            t.heard_from_posthog(call, response)
            if 200 <= response.status_code < 300:
                return Outcome(value=response, status=response.status_code)
            try:
                response.read()
            except httpx.RequestError as exc:
                return t.transport_outcome(call, exc)
            finally:
                response.close()
            return t.status_outcome(call, response)

        return t.run(call, attempt)


class _BadPage(ValueError):
    """A 200 whose body is not the query page asked for (retried, then refused)."""


def _row(row: Any) -> tuple[str, str, str | None]:
    if (isinstance(row, list) and len(row) == 3 and isinstance(row[0], str)
            and isinstance(row[1], str) and (row[2] is None or isinstance(row[2], str))):
        return row[0], row[1], row[2]
    raise _BadPage(f"a row is not [key, created_at, properties]: {str(row)[:100]}")


def _discard(page: Future) -> None:
    if page.exception() is None:
        page.result().close()


class _BodyReader:
    """A file-like view of a body's chunks for ijson, noting whether a top-level `results`
    array began (a 200 without one must not read as an empty, final page)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""
        self._tail = b""
        self.saw_results = False

    def read(self, size: int = -1) -> bytes:
        while not self._buffer:
            chunk = next(self._chunks, None)
            if chunk is None:
                return b""
            if not self.saw_results:
                self.saw_results = b'"results":[' in self._tail + chunk
                self._tail = chunk[-16:]
            self._buffer = chunk
        if size < 0 or size >= len(self._buffer):
            out, self._buffer = self._buffer, b""
        else:
            out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out


def _properties_text(text: str | None) -> bytes:
    """A group's properties as the JSON text ClickHouse holds (exact: the same value, numbers
    and key order as stored; not re-encoded), checked to be JSON."""
    if not text or text == "null":
        return b"{}"  # a group stored without properties lands as {} (as groups/ serves it)
    raw = text.encode()
    try:
        msgspec.json.decode(raw, type=msgspec.Raw)  # checked without building the value
    except msgspec.DecodeError:
        jsontext.loads(raw)  # NaN/Infinity as a non-strict server writes them, or the error
    return raw