"""Unit tests for PostHogClient over httpx.MockTransport (no network, no real sleeping)."""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import socket
import time
import traceback
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from resources.errors import (
    PostHogAPIError,
    PostHogConfigError,
    PostHogConnectionError,
    PostHogEndpointMissingError,
    PostHogError,
    PostHogNotFoundError,
    PostHogPaginationError,
    PostHogRetryError,
)
from resources.posthog_client import USER_AGENT, ContentDownload, PostHogClient

HOST = "https://us.posthog.com"
KEY = "phx_TestSecretKey0123456789"
BASE = "/api/projects/1"


Handler = Callable[[httpx.Request], httpx.Response]


class Api:
    """A scripted PostHog: per path (without query) a list of responses consumed in order."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], list[httpx.Response | Handler | Exception]] = {}
        self.requests: list[httpx.Request] = []

    def add(self, method: str, path: str, *responses: httpx.Response | Handler | Exception) -> None:
        self.routes.setdefault((method, path), []).extend(responses)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        queue = self.routes.get((request.method, request.url.path))
        if not queue:
            raise AssertionError(f"unexpected {request.method} {request.url}")
        item = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(item, Exception):
            raise item
        if callable(item) and not isinstance(item, httpx.Response):
            return item(request)
        return item

    def paths(self) -> list[str]:
        return [r.url.raw_path.decode() for r in self.requests]


class FakeBudget:
    """Stands in for RequestBudget: records acquires and pauses."""

    def __init__(self, wait: float = 0.0) -> None:
        self.acquired = 0
        self.pauses: list[float] = []
        self.wait = wait
        self.clock = 1000.0

    def acquire(self) -> float:
        self.acquired += 1
        return self.wait

    def pause_until(self, ts: float) -> None:
        self.pauses.append(ts)

    def now(self) -> float:
        return self.clock


def jresp(status: int, body: object, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


def err(status: int, code: str, detail: str, type_: str = "invalid_request") -> httpx.Response:
    return jresp(status, {"type": type_, "code": code, "detail": detail, "attr": None})


@pytest.fixture
def api() -> Api:
    return Api()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def make_client(api: Api, sleeps: list[float]) -> Iterator[Callable[..., PostHogClient]]:
    made: list[PostHogClient] = []

    def make(**kwargs: object) -> PostHogClient:
        params: dict[str, object] = {
            "host": HOST,
            "project_id": "1",
            "api_key": KEY,
            "transport": httpx.MockTransport(api),
            "sleep": sleeps.append,
        }
        params.update(kwargs)
        client = PostHogClient(**params)  # type: ignore[arg-type]
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def full_error_text(exc: BaseException) -> str:
    """Everything a traceback, repr, pickled state or chained exception could show."""
    parts = ["".join(traceback.format_exception(exc)), repr(exc), repr(vars(exc))]
    seen = exc
    while seen.__cause__ or seen.__context__:
        seen = seen.__cause__ or seen.__context__  # type: ignore[assignment]
        parts.append(repr(seen))
    parts.append(pickle.dumps(exc).decode("latin-1"))
    return "\n".join(parts)


# ---- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "us.posthog.com",
        "ftp://us.posthog.com",
        "https://us.posthog.com/api/projects/1",
        "https://us.posthog.com/?x=1",
        "https://us.posthog.com/#frag",
        "https://",
        " https://us.posthog.com",
        "",
    ],
)
def test_client_rejects_bad_host_naming_env_var(host: str) -> None:
    with pytest.raises(PostHogConfigError, match="POSTHOG_HOST"):
        PostHogClient(host=host, project_id="1", api_key=KEY)


def test_client_rejects_userinfo_host_without_echoing_it() -> None:
    with pytest.raises(PostHogConfigError, match="POSTHOG_HOST") as info:
        PostHogClient(host=f"https://user:{KEY}@us.posthog.com", project_id="1", api_key=KEY)
    assert KEY not in full_error_text(info.value)


@pytest.mark.parametrize("project_id", ["", "0", "-1", "abc", "1.5", "@me", " 1"])
def test_client_rejects_bad_project_id(project_id: str) -> None:
    with pytest.raises(PostHogConfigError, match="POSTHOG_PROJECT_ID"):
        PostHogClient(host=HOST, project_id=project_id, api_key=KEY)


@pytest.mark.parametrize("host", ["https://us.posthog.com/", "http://127.0.0.1:8010"])
def test_client_accepts_origin_and_current_project(host: str) -> None:
    with PostHogClient(host=host, project_id="@current", api_key=KEY) as client:
        assert client.project_id == "@current"
        assert client.host == host.rstrip("/")


@pytest.mark.parametrize("bad_key", ["", "phx_abc def", "phx_abc\n", "phx_é", "phc_projecttoken"])
def test_client_rejects_bad_key_without_echoing_it(bad_key: str) -> None:
    with pytest.raises(PostHogConfigError, match="POSTHOG_PERSONAL_API_KEY") as info:
        PostHogClient(host=HOST, project_id="1", api_key=bad_key)
    if bad_key:
        assert bad_key.strip() not in str(info.value)


def test_client_repr_hides_key(make_client: Callable[..., PostHogClient]) -> None:
    client = make_client()
    assert KEY not in repr(client)
    assert KEY not in str(client)
    assert KEY not in repr(client.stats)
    assert repr(client) == "PostHogClient(host='https://us.posthog.com', project_id='1')"


# ---- headers, routing, deprecation ------------------------------------------------------


def test_client_sends_auth_accept_and_user_agent_per_request(
    api: Api, make_client: Callable[..., PostHogClient]
) -> None:
    api.add("GET", f"{BASE}/groups_types/", jresp(200, [{"group_type_index": 0}]))
    client = make_client()
    assert client.list_group_types() == [{"group_type_index": 0}]
    assert client.list_group_types() == [{"group_type_index": 0}]
    assert len(api.requests) == 2
    for request in api.requests:
        assert request.url.host == "us.posthog.com"
        assert request.url.scheme == "https"
        assert request.url.path == f"{BASE}/groups_types/"
        assert request.headers["Authorization"] == f"Bearer {KEY}"
        assert request.headers["Accept"] == "application/json"
        assert request.headers["User-Agent"] == USER_AGENT
    # The key is not a client-wide default header, so nothing else can pick it up.
    assert "Authorization" not in client._t.http.headers


def test_client_logs_deprecation_warning_once_per_endpoint(
    api: Api, make_client: Callable[..., PostHogClient], caplog: pytest.LogCaptureFixture
) -> None:
    headers = {
        "Deprecation": "true",
        "Link": '</api/projects/@current/>; rel="successor-version"',
        "Sunset": "Fri, 31 Jul 2026 00:00:00 GMT",
    }
    api.add("GET", f"{BASE}/groups_types/", jresp(200, [], headers))
    client = make_client()
    with caplog.at_level(logging.WARNING):
        client.list_group_types()
        client.list_group_types()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "GET groups_types/" in warnings[0].getMessage()
    assert "successor-version" in warnings[0].getMessage()
    assert "Fri, 31 Jul 2026 00:00:00 GMT" in warnings[0].getMessage()


def test_client_uses_injected_logger(api: Api, make_client: Callable[..., PostHogClient]) -> None:
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("test.injected")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(Collect())
    api.add("GET", f"{BASE}/groups_types/", httpx.Response(503), jresp(200, []))
    make_client(logger=logger).list_group_types()
    assert any("retry 1/8" in r.getMessage() for r in records)


# ---- pagination -------------------------------------------------------------------------


def groups_page(keys: list[str], next_url: str | None) -> httpx.Response:
    results = [{"group_type_index": 0, "group_key": k, "group_properties": {}} for k in keys]
    return jresp(200, {"next": next_url, "previous": None, "results": results})


def test_list_group_types_rejects_non_array(
    api: Api, make_client: Callable[..., PostHogClient]
) -> None:
    api.add("GET", f"{BASE}/groups_types/", jresp(200, {"detail": "nope"}))
    with pytest.raises(PostHogPaginationError, match="JSON array"):
        make_client().list_group_types()


def test_iter_group_pages_follows_keyset_next_until_null_not_short_pages(
    api: Api, make_client: Callable[..., PostHogClient]
) -> None:
    pages = {
        None: groups_page(["a", "b"], f"{HOST}{BASE}/groups/?group_type_index=0&cursor=c1"),
        "c1": groups_page(["c"], f"{HOST}{BASE}/groups/?group_type_index=0&cursor=c2"),
        "c2": groups_page([], f"{HOST}{BASE}/groups/?group_type_index=0&cursor=c3"),
        "c3": groups_page(["d"], None),
    }

    def handler(request: httpx.Request) -> httpx.Response:
        query = parse_qs(request.url.query.decode())
        assert "limit" not in query  # the server fixes the page size at 100
        assert query["group_type_index"] == ["0"]
        return pages[query.get("cursor", [None])[0]]

    api.add("GET", f"{BASE}/groups/", handler)
    client = make_client()
    iterator = client.iter_group_pages(group_type_index=0)
    assert api.requests == []  # lazy: nothing is fetched until iterated
    assert next(iterator) == pages[None].json()["results"]
    assert len(api.requests) == 1
    keys = [g["group_key"] for page in iterator for g in page]
    assert keys == ["c", "d"]
    assert len(api.requests) == 4
    assert client.stats.pages == 4
    assert client.stats.items == 4
    groups = list(client.iter_groups(group_type_index=0))
    assert [g["group_key"] for g in groups] == ["a", "b", "c", "d"]


def test_group_pages_read_the_slower_way_say_why_once_per_type(
    api: Api, make_client: Callable[..., PostHogClient], caplog: pytest.LogCaptureFixture
) -> None:
    def page(group: str, cursor: str | None) -> httpx.Response:
        url = f"{HOST}{BASE}/groups/?group_type_index=0&cursor={cursor}"
        link = "null" if cursor is None else f'"{url}"'
        body = f'{{"next":{link},"previous":null,"results":[{group}]}}'
        return httpx.Response(200, content=body.encode(),
                              headers={"Content-Type": "application/json"})

    plain = ('{"group_type_index":0,"group_key":"%s","group_properties":{"a":1},'
             '"created_at":"2024-01-01T00:00:00Z"}')
    pages = {
        None: page(plain % "plain", "c1"),
        # a field PostHog might add later: INFO, once, naming it (newline escaped, not a new line)
        "c1": page((plain % "new")[:-1] + ',"is_new\\nforged":true}', "c2"),
        "c2": page((plain % "new2")[:-1] + ',"is_new\\nforged":false}', "c3"),
        "c3": page((plain % "spaced").replace(":", ": "), "c4"),  # other spacing: still fast
        "c4": page((plain % "null").replace('{"a":1}', "null"), None),  # null bag: DEBUG only
    }
    api.add("GET", f"{BASE}/groups/",
            lambda r: pages[parse_qs(r.url.query.decode()).get("cursor", [None])[0]])
    with caplog.at_level(logging.DEBUG, logger="resources.posthog_client"):
        got = list(make_client().iter_group_pages(group_type_index=0, raw_properties=True))
    assert [type(p[0]).__name__ for p in got] == ["RawGroup", "dict", "dict", "RawGroup", "dict"]
    assert got[1][0]["is_new\nforged"] is True  # the data is all there
    notes = [r for r in caplog.records if "slower way" in r.getMessage()]
    assert [r.levelno for r in notes] == [logging.INFO, logging.DEBUG]
    assert "type 0" in notes[0].getMessage() and "unknown field" in notes[0].getMessage()
    assert all("\n" not in r.getMessage() for r in notes)
    assert "null group_properties" in notes[1].getMessage()


def test_iter_groups_rebases_http_next_from_tls_host_and_warns(
    api: Api, make_client: Callable[..., PostHogClient], caplog: pytest.LogCaptureFixture
) -> None:
    api.add(
        "GET",
        f"{BASE}/groups/",
        lambda r: (
            groups_page(["b"], None)
            if b"cursor" in r.url.query
            else groups_page(
                ["a"], f"http://us.posthog.com{BASE}/groups/?group_type_index=0&cursor=x"
            )
        ),
    )
    with caplog.at_level(logging.WARNING):
        keys = [g["group_key"] for g in make_client().iter_groups(group_type_index=0)]
    assert keys == ["a", "b"]
    assert [str(r.url) for r in api.requests][1] == (
        f"{HOST}{BASE}/groups/?group_type_index=0&cursor=x"
    )
    assert all(r.headers["Authorization"] == f"Bearer {KEY}" for r in api.requests)
    assert "rebased" in caplog.text


def test_iter_groups_rebases_foreign_host_next_and_never_contacts_it(
    api: Api, make_client: Callable[..., PostHogClient], caplog: pytest.LogCaptureFixture
) -> None:
    api.add(
        "GET",
        f"{BASE}/groups/",
        lambda r: (
            groups_page(["b"], None)
            if b"cursor" in r.url.query
            else groups_page(
                ["a"], f"https://evil.example:8443{BASE}/groups/?cursor=x&group_type_index=0"
            )
        ),
    )
    with caplog.at_level(logging.WARNING):
        keys = [g["group_key"] for g in make_client().iter_groups(group_type_index=0)]
    assert keys == ["a", "b"]
    assert {r.url.host for r in api.requests} == {"us.posthog.com"}
    assert api.requests[1].url.raw_path.decode() == f"{BASE}/groups/?cursor=x&group_type_index=0"
    assert "evil.example" in caplog.text and "rebased" in caplog.text


def test_iter_groups_follows_relative_next_and_environments_next(
    api: Api, make_client: Callable[..., PostHogClient]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        cursor = parse_qs(request.url.query.decode()).get("cursor", [None])[0]
        if cursor is None:
            return groups_page(["a"], "?group_type_index=0&cursor=rel")
        if cursor == "rel":
            return groups_page(
                ["b"], f"{HOST}/api/environments/1/groups/?group_type_index=0&cursor=env"
            )
        return groups_page(["c"], None)

    api.add("GET", f"{BASE}/groups/", handler)
    keys = [g["group_key"] for g in make_client().iter_groups(group_type_index=0)]
    assert keys == ["a", "b", "c"]
    assert api.paths()[1:] == [
        f"{BASE}/groups/?group_type_index=0&cursor=rel",
        f"{BASE}/groups/?group_type_index=0&cursor=env",  # environments rewritten to projects
    ]


@pytest.mark.parametrize(
    ("next_url", "match"),
    [
        (f"{HOST}/admin/?cursor=x", "outside"),
        (f"{HOST}/api/projects/2/groups/?cursor=x", "project 2"),
        (f"{HOST}{BASE}/groups_types/?cursor=x", "another endpoint"),
        (f"{HOST}{BASE}/groups/%2e%2e/exports/?cursor=x", "another endpoint"),
        ("javascript:alert(1)", "scheme"),
        ("ftp://us.posthog.com/api/projects/1/groups/", "scheme"),
        (42, "non-string"),
    ],
)
def test_iter_groups_refuses_next_outside_the_endpoint(
    api: Api, make_client: Callable[..., PostHogClient], next_url: object, match: str
) -> None:
    api.add(
        "GET", f"{BASE}/groups/", jresp(200, {"next": next_url, "results": [{"group_key": "a"}]})
    )
    with pytest.raises(PostHogPaginationError, match=match):
        list(make_client().iter_groups(group_type_index=0))
    assert len(api.requests) == 1


def test_current_project_is_resolved_once_to_its_id_with_a_warning(
    api: Api, make_client: Callable[..., PostHogClient], caplog: pytest.LogCaptureFixture
) -> None:
    sunset = {"Deprecation": "true", "Sunset": "Fri, 30 Apr 2027 00:00:00 GMT"}
    api.add("GET", "/api/projects/@current/", jresp(200, {"id": 77, "name": "P"}, sunset))
    api.add("GET", "/api/projects/77/groups_types/", jresp(200, []))
    api.add(
        "GET",
        "/api/projects/77/groups/",
        groups_page(["a"], f"{HOST}/api/projects/77/groups/?group_type_index=0&cursor=x"),
        groups_page(["b"], None),
    )
    client = make_client(project_id="@current")
    with caplog.at_level(logging.WARNING):
        client.list_group_types()
        assert [g["group_key"] for g in client.iter_groups(group_type_index=0)] == ["a", "b"]
    assert api.paths() == [
        "/api/projects/@current/",
        "/api/projects/77/groups_types/",
        "/api/projects/77/groups/?group_type_index=0",
        "/api/projects/77/groups/?group_type_index=0&cursor=x",
    ]
    assert client.project_id == "@current"  # the configured value, as the user wrote it
    messages = [r.getMessage() for r in caplog.records]
    resolved = [m for m in messages if "resolved it to project 77" in m]
    assert len(resolved) == 1
    assert "2027-04-30" in resolved[0] and "POSTHOG_PROJECT_ID=77" in resolved[0]


def test_current_project_kept_when_the_key_cannot_read_projects(
    api: Api, make_client: Callable[..., PostHogClient], caplog: pytest.LogCaptureFixture
) -> None:
    missing = err(403, "permission_denied", "API key missing required scope 'project:read'",
                  "authentication_error")
    api.add("GET", "/api/projects/@current/", missing)
    cur = "/api/projects/@current/groups/"
    api.add(
        "GET",
        cur,
        groups_page(["a"], f"{HOST}/api/projects/77/groups/?group_type_index=0&cursor=x"),
    )
    api.add("GET", "/api/projects/77/groups/", groups_page(["b"], None))
    client = make_client(project_id="@current")
    with caplog.at_level(logging.WARNING):
        assert [g["group_key"] for g in client.iter_groups(group_type_index=0)] == ["a", "b"]
    assert api.paths()[0] == "/api/projects/@current/"
    assert api.paths().count("/api/projects/@current/") == 1  # not asked again
    warned = [r.getMessage() for r in caplog.records if "could not be resolved" in r.getMessage()]
    assert len(warned) == 1 and "2027-04-30" in warned[0] and "project:read" in warned[0]


def test_iter_groups_stops_on_repeated_cursor(
    api: Api, make_client: Callable[..., PostHogClient]
) -> None:
    # A bad cursor silently restarts at page 1 on PostHog: page 1's next comes back again.
    nxt = f"{HOST}{BASE}/groups/?group_type_index=0&cursor=c1"
    api.add("GET", f"{BASE}/groups/", groups_page(["a"], nxt), groups_page(["b"], nxt))
    iterator = make_client().iter_groups(group_type_index=0)
    assert [next(iterator)["group_key"], next(iterator)["group_key"]] == ["a", "b"]
    with pytest.raises(PostHogPaginationError, match="repeated"):
        next(iterator)
    assert len(api.requests) == 2


def test_iter_groups_stops_on_repeated_cursor_with_reordered_query(
    api: Api, make_client: Callable[..., PostHogClient]
) -> None:
    api.add(
        "GET",
        f"{BASE}/groups/",
        groups_page(["a"], f"{HOST}{BASE}/groups/?group_type_index=0&cursor=c1"),
        groups_page(["b"], f"{HOST}{BASE}/groups/?cursor=c1&group_type_index=0"),
    )
    with pytest.raises(PostHogPaginationError, match="repeated"):
        list(make_client().iter_groups(group_type_index=0))
    assert len(api.requests) == 2


def test_client_is_safe_to_share_between_threads(
    api: Api, make_client: Callable[..., PostHogClient]
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    api.add("GET", f"{BASE}/groups_types/", jresp(200, [{"a": 1}]))
    client = make_client()
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: client.list_group_types(), range(200)))
    assert results == [[{"a": 1}]] * 200
    assert client.stats.requests == 200 and client.stats.items == 200
    assert client.stats.by_endpoint == {"GET groups_types/": 200}


def test_iter_groups_stops_after_many_empty_pages_with_next(
    api: Api, make_client: Callable[..., PostHogClient]
) -> None:
    api.add(
        "GET",
        f"{BASE}/groups/",
        lambda r: groups_page([], f"{HOST}{BASE}/groups/?cursor={len(api.requests)}"),
    )
    with pytest.raises(PostHogPaginationError, match="empty pages"):
        list(make_client().iter_groups(group_type_index=0))


def offset_page(ids: range, count: int, next_url: str | None) -> httpx.Response:
    return jresp(
        200,
        {"count": count, "next": next_url, "previous": None, "results": [{"id": i} for i in ids]},
    )


def test_iter_exports_walks_limit_offset(
    api: Api, make_client: Callable[..., PostHogClient]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        query = parse_qs(request.url.query.decode())
        offset = int(query.get("offset", ["0"])[0])
        assert query["limit"] == ["2"]
        nxt = f"{HOST}{BASE}/exports/?limit=2&offset={offset + 2}" if offset + 2 < 5 else None
        return offset_page(range(offset, min(offset + 2, 5)), 5, nxt)

    api.add("GET", f"{BASE}/exports/", handler)
    client = make_client()
    assert [e["id"] for e in client.iter_exports(limit=2)] == [0, 1, 2, 3, 4]
    walk = [f"{BASE}/exports/?limit=2", f"{BASE}/exports/?limit=2&offset=2",
            f"{BASE}/exports/?limit=2&offset=4"]
    assert api.paths() == walk + walk  # listed twice: the second proves the first complete
    assert (client.stats.items, client.stats.pages) == (5, 6)  # items handed out; pages read


def test_iter_exports_raises_on_truncated_listing(
    api: Api, make_client: Callable[..., PostHogClient]
) -> None:
    api.add(
        "GET",
        f"{BASE}/exports/",
        offset_page(range(0, 2), 5, f"{HOST}{BASE}/exports/?limit=2&offset=2"),
        offset_page(range(2, 4), 5, None),
    )
    seen: list[int] = []
    with pytest.raises(PostHogPaginationError, match="truncated listing"):
        for export in make_client().iter_exports(limit=2):
            seen.append(export["id"])
    assert seen == []  # nothing is handed out before the listing is proven complete


def test_iter_exports_loses_nothing_when_an_export_expires_mid_listing(
    api: Api, make_client: Callable[..., PostHogClient], caplog: pytest.LogCaptureFixture
) -> None:
    # Exports 0..4, two a page. Export 1 expires just after page 1 is read, so every later
    # export moves one place forward and page 2 (offset 2) starts at 3: export 2 is skipped by
    # that walk. The client lists again until two walks agree; export 2 is not lost.
    live = [0, 1, 2, 3, 4]

    def handler(request: httpx.Request) -> httpx.Response:
        offset = int(parse_qs(request.url.query.decode()).get("offset", ["0"])[0])
        page = live[offset : offset + 2]
        more = offset + 2 < len(live)
        nxt = f"{HOST}{BASE}/exports/?limit=2&offset={offset + 2}" if more else None
        response = offset_page(page, len(live), nxt)  # type: ignore[arg-type]
        if len(api.requests) == 1:
            live.remove(1)
        return response

    api.add("GET", f"{BASE}/exports/", handler)
    with caplog.at_level(logging.INFO):
        ids = [e["id"] for e in make_client().iter_exports(limit=2)]
    assert ids == [0, 2, 3, 4]  # 1 expired; 2, which the first walk skipped, is there
    assert len(api.requests) == 2 + 2 + 2  # the skipping walk, then two that agree
    assert any("listing changed while it was read" in r.getMessage() for r in caplog.records)


def test_iter_exports_fails_loudly_when_listings_never_agree(
    api: Api, make_client: Callable[..., PostHogClient]
) -> None:
    created = iter(range(100, 200))

    def handler(request: httpx.Request) -> httpx.Response:
        return offset_page([next(created)], 1, None)  # type: ignore[arg-type]

    api.add("GET", f"{BASE}/exports/", handler)
    with pytest.raises(PostHogPaginationError, match="4 listings in a row disagreed"):
        list(make_client().iter_exports(limit=2))
    assert len(api.requests) == 4


def test_iter_group_property_definitions_uses_property_definitions_endpoint(
    api: Api, make_client: Callable[..., PostHogClient]
) -> None:
    api.add(
        "GET",
        f"{BASE}/property_definitions/",
        jresp(
            200,
            {
                "count": 1,
                "next": None,
                "previous": None,
                "results": [{"name": "industry", "property_type": "String", "is_numerical": False}],
            },
        ),
    )
    defs = list(make_client().iter_group_property_definitions(group_type_index=1))
    assert defs == [{"name": "industry", "property_type": "String", "is_numerical": False}]
    query = parse_qs(api.requests[0].url.query.decode())
    assert query == {"type": ["group"], "group_type_index": ["1"], "limit": ["500"]}


def test_iter_group_property_definitions_falls_back_to_legacy_endpoint(
    api: Api, make_client: Callable[..., PostHogClient]
) -> None:
    api.add("GET", f"{BASE}/property_definitions/", err(404, "not_found", "Endpoint not found."))
    api.add(
        "GET",
        f"{BASE}/groups/property_definitions/",
        jresp(
            200,
            {
                "0": [{"name": "industry", "count": 2}, {"name": "name", "count": 1}],
                "1": [{"name": "plan", "count": 3}],
            },
        ),
    )
    defs = list(make_client().iter_group_property_definitions(group_type_index=0))
    assert defs == [
        {"name": "industry", "count": 2, "property_type": None, "is_numerical": None},
        {"name": "name", "count": 1, "property_type": None, "is_numerical": None},
    ]


def test_iter_group_property_definitions_does_not_fall_back_on_plain_404(
    api: Api, make_client: Callable[..., PostHogClient]
) -> None:
    api.add("GET", f"{BASE}/property_definitions/", err(404, "not_found", "Project not found."))
    with pytest.raises(PostHogNotFoundError, match="POSTHOG_PROJECT_ID"):
        list(make_client().iter_group_property_definitions(group_type_index=0))


def test_get_group_property_values_returns_results(
    api: Api, make_client: Callable[..., PostHogClient]
) -> None:
    api.add(
        "GET",
        f"{BASE}/groups/property_values/",
        jresp(
            200,
            {
                "results": [{"name": "finance", "count": 3}],
                "refreshing": False,
            },
        ),
    )
    values = make_client().get_group_property_values(group_type_index=0, key="industry")
    assert values == [{"name": "finance", "count": 3}]
    assert parse_qs(api.requests[0].url.query.decode()) == {
        "group_type_index": ["0"],
        "key": ["industry"],
    }


# ---- retries ----------------------------------------------------------------------------


THROTTLED = {
    "type": "throttled_error",
    "code": "throttled",
    "detail": "Request was throttled. Expected available in 7 seconds.",
    "attr": None,
}


def test_retry_429_obeys_retry_after_seconds_and_pauses_budget(
    api: Api, make_client: Callable[..., PostHogClient], sleeps: list[float]
) -> None:
    budget = FakeBudget()
    api.add(
        "GET", f"{BASE}/groups_types/", jresp(429, THROTTLED, {"Retry-After": "7"}), jresp(200, [])
    )
    client = make_client(budget=budget)
    assert client.list_group_types() == []
    assert sleeps == [7.0]
    assert budget.pauses == [1007.0]
    assert budget.acquired == 2  # the retry also goes through the budget
    assert (client.stats.requests, client.stats.retries, client.stats.throttled) == (2, 1, 1)


def test_retry_429_obeys_retry_after_http_date(
    api: Api, make_client: Callable[..., PostHogClient], sleeps: list[float]
) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    api.add(
        "GET", f"{BASE}/groups_types/", jresp(429, THROTTLED, {"Retry-After": when}), jresp(200, [])
    )
    make_client().list_group_types()
    assert len(sleeps) == 1 and 27.0 <= sleeps[0] <= 31.0


def test_retry_after_is_capped_at_retry_max_delay(
    api: Api, make_client: Callable[..., PostHogClient], sleeps: list[float]
) -> None:
    api.add(
        "GET",
        f"{BASE}/groups_types/",
        jresp(429, THROTTLED, {"Retry-After": "3600"}),
        jresp(200, []),
    )
    make_client(retry_max_delay=90.0).list_group_types()
    assert sleeps == [90.0]


def test_retry_html_429_without_retry_after_uses_backoff(
    api: Api, make_client: Callable[..., PostHogClient], sleeps: list[float]
) -> None:
    html = httpx.Response(
        429,
        text="<html><body>Too many requests</body></html>",
        headers={"Content-Type": "text/html"},
    )
    api.add("GET", f"{BASE}/groups_types/", html, html, jresp(200, []))
    client = make_client(retry_base_delay=2.0)
    client.list_group_types()
    assert len(sleeps) == 2
    assert 1.0 <= sleeps[0] <= 2.0 and 2.0 <= sleeps[1] <= 4.0
    assert client.stats.throttled == 2


@pytest.mark.parametrize("retry_after", ["0", "-5", "soon", "Mon, 01 Jan 2001 00:00:00 GMT"])
def test_retry_after_zero_past_or_garbage_falls_back_to_backoff(
    api: Api, make_client: Callable[..., PostHogClient], sleeps: list[float], retry_after: str
) -> None:
    api.add(
        "GET",
        f"{BASE}/groups_types/",
        jresp(429, THROTTLED, {"Retry-After": retry_after}),
        jresp(200, []),
    )
    make_client(retry_base_delay=1.0).list_group_types()
    assert len(sleeps) == 1 and 0.5 <= sleeps[0] <= 1.0


def test_retry_backoff_is_exponential_and_capped(
    api: Api, make_client: Callable[..., PostHogClient], sleeps: list[float]
) -> None:
    api.add("GET", f"{BASE}/groups_types/", *[httpx.Response(502)] * 5, jresp(200, []))
    make_client(retry_base_delay=1.0, retry_max_delay=4.0).list_group_types()
    bounds = [(0.5, 1.0), (1.0, 2.0), (2.0, 4.0), (2.0, 4.0), (2.0, 4.0)]
    assert len(sleeps) == 5
    assert all(lo <= s <= hi for s, (lo, hi) in zip(sleeps, bounds, strict=True))


@pytest.mark.parametrize("status", [408, 500, 502, 503, 504])
def test_retry_retryable_statuses(
    api: Api, make_client: Callable[..., PostHogClient], sleeps: list[float], status: int
) -> None:
    api.add("GET", f"{BASE}/groups_types/", httpx.Response(status), jresp(200, [1]))
    client = make_client()
    assert client.list_group_types() == [1]
    assert len(sleeps) == 1 and client.stats.retries == 1


def test_retry_503_honours_retry_after(
    api: Api, make_client: Callable[..., PostHogClient], sleeps: list[float]
) -> None:
    api.add(
        "GET",
        f"{BASE}/groups_types/",
        err(503, "error", "Database unavailable", "server_error")
        if False
        else httpx.Response(503, json={"detail": "db"}, headers={"Retry-After": "11"}),
        jresp(200, []),
    )
    make_client().list_group_types()
    assert sleeps == [11.0]


def _closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    "host",
    ["closed-port", "http://nonexistent.invalid", "https://eu.posthgo.invalid"],
)
def test_unreachable_host_fails_fast_naming_host_and_variable(host: str) -> None:
    # Real sockets and real sleeps: a closed local port and names that never resolve (.invalid
    # is reserved, RFC 2606), so no internet is needed.
    if host == "closed-port":
        host = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    with PostHogClient(host=host, project_id="1", api_key=KEY) as client:
        with pytest.raises(PostHogConnectionError) as info:
            client.list_group_types()
    elapsed = time.monotonic() - started
    assert elapsed < 15, f"took {elapsed:.1f}s"
    message = str(info.value)
    assert f"POSTHOG_HOST={host}" in message
    assert "typo" in message and "DNS" in message and "listening" in message
    assert "proxy" in message
    assert "status page" not in message
    assert info.value.attempts == 2  # one quick retry, no more
    assert KEY not in full_error_text(info.value)


def test_unreachable_host_gets_one_quick_retry_only(
    api: Api, make_client: Callable[..., PostHogClient], sleeps: list[float]
) -> None:
    api.add("GET", f"{BASE}/groups_types/", httpx.ConnectError("[Errno 111] Connection refused"))
    with pytest.raises(PostHogConnectionError, match="Connection refused"):
        make_client().list_group_types()
    assert sleeps == [0.5]
    assert len(api.requests) == 2


def test_host_that_answered_before_keeps_the_long_retries(
    api: Api, make_client: Callable[..., PostHogClient], sleeps: list[float]
) -> None:
    # PostHog answered once in this run, then stopped: an outage, not a typo.
    api.add("GET", f"{BASE}/groups_types/", jresp(200, []))
    api.add("GET", f"{BASE}/exports/5/", httpx.ConnectError("[Errno 111] Connection refused"))
    client = make_client()
    client.list_group_types()
    with pytest.raises(PostHogRetryError, match="ConnectError"):
        client.get_export(5)
    assert len(sleeps) == 8
    assert len(api.requests) == 1 + 9


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectError("connection refused"),
        httpx.ConnectTimeout("connect timed out"),
        httpx.ReadTimeout("read timed out"),
        httpx.PoolTimeout("pool"),
        httpx.ReadError("connection reset"),
        httpx.RemoteProtocolError("peer closed connection without sending complete message body"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_retry_transport_errors(
    api: Api, make_client: Callable[..., PostHogClient], sleeps: list[float], exc: Exception
) -> None:
    api.add("GET", f"{BASE}/groups_types/", exc, jresp(200, []))
    client = make_client()
    assert client.list_group_types() == []
    assert len(sleeps) == 1 and client.stats.retries == 1


@pytest.mark.parametrize(
    "bad",
    [httpx.Response(200, content=b""), httpx.Response(200, content=b'{"trunc')],
    ids=["empty", "invalid-json"],
)
def test_retry_2xx_with_empty_or_invalid_json_body(
    api: Api, make_client: Callable[..., PostHogClient], sleeps: list[float], bad: httpx.Response
) -> None:
    api.add("GET", f"{BASE}/groups_types/", bad, jresp(200, []))
    assert make_client().list_group_types() == []
    assert len(sleeps) == 1


def test_retry_exhaustion_names_endpoint_attempts_and_cause_without_key(
    api: Api,
    make_client: Callable[..., PostHogClient],
    sleeps: list[float],
    caplog: pytest.LogCaptureFixture,
) -> None:
    api.add("GET", f"{BASE}/groups/", jresp(429, THROTTLED, {"Retry-After": "1"}))
    client = make_client(max_retries=3)
    with caplog.at_level(logging.DEBUG), pytest.raises(PostHogRetryError) as info:
        list(client.iter_groups(group_type_index=0))
    error = info.value
    assert str(error).startswith(
        f"GET {BASE}/groups/?group_type_index=0 failed after 4 attempts (last cause: 429 throttled)"
    )
    assert "POSTHOG_REQUESTS_PER_MINUTE" in str(error)
    assert (error.attempts, error.method, error.path) == (
        4,
        "GET",
        f"{BASE}/groups/?group_type_index=0",
    )
    assert sleeps == [1.0, 1.0, 1.0]
    assert error.__cause__ is None and error.__context__ is None
    assert KEY not in full_error_text(error)
    assert KEY not in caplog.text


def test_retry_exhaustion_on_transport_error_has_no_httpx_chain(
    api: Api, make_client: Callable[..., PostHogClient], caplog: pytest.LogCaptureFixture
) -> None:
    api.add("GET", f"{BASE}/groups_types/", httpx.ReadTimeout("read timed out"))
    with caplog.at_level(logging.DEBUG), pytest.raises(PostHogRetryError) as info:
        make_client(max_retries=2).list_group_types()
    assert "last cause: ReadTimeout" in str(info.value)
    assert info.value.__context__ is None and info.value.__cause__ is None
    assert KEY not in full_error_text(info.value)
    assert KEY not in caplog.text


def test_non_retryable_transport_error_is_typed_and_clean(
    api: Api, make_client: Callable[..., PostHogClient], sleeps: list[float]
) -> None:
    api.add("GET", f"{BASE}/groups_types/", httpx.UnsupportedProtocol("bad scheme"))
    with pytest.raises(PostHogError, match="UnsupportedProtocol") as info:
        make_client().list_group_types()
    assert sleeps == []
    assert KEY not in full_error_text(info.value)


def test_max_retries_zero_makes_one_attempt(
    api: Api, make_client: Callable[..., PostHogClient], sleeps: list[float]
) -> None:
    api.add("GET", f"{BASE}/groups_types/", httpx.Response(500))
    with pytest.raises(PostHogRetryError, match="after 1 attempt "):
        make_client(max_retries=0).list_group_types()
    assert sleeps == []


# ---- typed API errors -------------------------------------------------------------------


def test_401_says_key_was_rejected(api: Api, make_client: Callable[..., PostHogClient]) -> None:
    api.add(
        "GET",
        f"{BASE}/groups/",
        err(
            401,
            "authentication_failed",
            "Personal API key found in request Authorization header is invalid.",
            "authentication_error",
        ),
    )
    with pytest.raises(PostHogAPIError) as info:
        list(make_client().iter_groups(group_type_index=0))
    error = info.value
    assert (error.status, error.code) == (401, "authentication_failed")
    assert "the personal API key was rejected (POSTHOG_PERSONAL_API_KEY)" in str(error)
    assert error.path == f"{BASE}/groups/?group_type_index=0"
    assert KEY not in full_error_text(error)


def test_403_names_missing_scope(api: Api, make_client: Callable[..., PostHogClient]) -> None:
    api.add(
        "GET",
        f"{BASE}/groups/",
        err(
            403,
            "permission_denied",
            "API key missing required scope 'group:read'",
            "authentication_error",
        ),
    )
    with pytest.raises(PostHogAPIError) as info:
        list(make_client().iter_groups(group_type_index=0))
    assert str(info.value) == (
        f"GET {BASE}/groups/?group_type_index=0 -> 403 permission_denied: API key missing "
        "required scope 'group:read'. The personal API key (POSTHOG_PERSONAL_API_KEY) lacks the "
        "'group:read' scope, which GET groups/ (read by the posthog_groups asset) needs: add it "
        "in PostHog > Settings > Personal API keys (docs/SCOPES.md lists every scope this "
        "pipeline uses)."
    )
    assert type(info.value) is PostHogAPIError


def test_404_endpoint_not_found_is_endpoint_missing(
    api: Api, make_client: Callable[..., PostHogClient]
) -> None:
    api.add("GET", f"{BASE}/explicit_members/", err(404, "not_found", "Endpoint not found."))
    with pytest.raises(PostHogEndpointMissingError) as info:
        make_client().list_explicit_members()
    assert "this PostHog has no such endpoint (removed or not available on this version)" in str(
        info.value
    )
    assert isinstance(info.value, PostHogNotFoundError)


def test_404_project_not_found_names_project_env_var(
    api: Api, make_client: Callable[..., PostHogClient]
) -> None:
    api.add("GET", f"{BASE}/groups_types/", err(404, "not_found", "Project not found."))
    with pytest.raises(PostHogNotFoundError, match="POSTHOG_PROJECT_ID") as info:
        make_client().list_group_types()
    assert not isinstance(info.value, PostHogEndpointMissingError)


def test_4xx_with_non_json_body_is_tolerated(
    api: Api, make_client: Callable[..., PostHogClient], sleeps: list[float]
) -> None:
    api.add("GET", f"{BASE}/groups_types/", httpx.Response(400, text="Bad Request"))
    with pytest.raises(PostHogAPIError) as info:
        make_client().list_group_types()
    assert (info.value.status, info.value.code, info.value.detail) == (400, None, "Bad Request")
    assert sleeps == []


def test_server_detail_echoing_the_key_is_redacted(
    api: Api, make_client: Callable[..., PostHogClient]
) -> None:
    api.add("GET", f"{BASE}/groups_types/", err(400, "invalid_input", f"bad token {KEY}"))
    with pytest.raises(PostHogAPIError) as info:
        make_client().list_group_types()
    assert KEY not in full_error_text(info.value)
    assert "[redacted]" in str(info.value)


def test_api_redirect_is_not_followed_and_names_host_env_var(
    api: Api, make_client: Callable[..., PostHogClient]
) -> None:
    api.add(
        "GET",
        f"{BASE}/groups_types/",
        httpx.Response(301, headers={"Location": f"https://eu.posthog.com{BASE}/groups_types/"}),
    )
    with pytest.raises(PostHogAPIError, match="POSTHOG_HOST") as info:
        make_client().list_group_types()
    assert info.value.status == 301
    assert len(api.requests) == 1


def test_api_errors_pickle_round_trip() -> None:
    error = PostHogEndpointMissingError(
        status=404, method="GET", path="/x", code="not_found", detail="Endpoint not found."
    )
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is PostHogEndpointMissingError and str(clone) == str(error)


# ---- exports ----------------------------------------------------------------------------


def test_get_export_and_create_export(api: Api, make_client: Callable[..., PostHogClient]) -> None:
    api.add("GET", f"{BASE}/exports/5/", jresp(200, {"id": 5, "has_content": True}))
    api.add("POST", f"{BASE}/exports/", jresp(201, {"id": 6, "has_content": True}))
    client = make_client()
    assert client.get_export(5)["id"] == 5
    created = client.create_export(
        export_format="text/csv",
        export_context={"source": {"kind": "HogQLQuery", "query": "select 1"}},
    )
    assert created["id"] == 6
    post = api.requests[-1]
    assert json.loads(post.content) == {
        "export_format": "text/csv",
        "export_context": {"source": {"kind": "HogQLQuery", "query": "select 1"}},
    }
    assert post.headers["Authorization"] == f"Bearer {KEY}"
    assert post.extensions["timeout"]["read"] == 600.0


def test_create_export_read_timeout_is_not_retried_and_says_poll(
    api: Api, make_client: Callable[..., PostHogClient], sleeps: list[float]
) -> None:
    api.add("POST", f"{BASE}/exports/", httpx.ReadTimeout("timed out"))
    with pytest.raises(PostHogRetryError) as info:
        make_client().create_export(export_format="image/png", insight=3, timeout=60.0)
    assert len(api.requests) == 1 and sleeps == []
    assert info.value.attempts == 1
    assert "wait_for_export" in str(info.value) and "iter_exports" in str(info.value)


@pytest.mark.parametrize("status", [502, 504])
def test_create_export_gateway_errors_are_not_retried(
    api: Api, make_client: Callable[..., PostHogClient], sleeps: list[float], status: int
) -> None:
    api.add("POST", f"{BASE}/exports/", httpx.Response(status))
    with pytest.raises(PostHogRetryError, match="wait_for_export"):
        make_client().create_export(export_format="image/png", insight=3)
    assert len(api.requests) == 1


@pytest.mark.parametrize(
    "first",
    [httpx.ConnectError("refused"), jresp(429, THROTTLED, {"Retry-After": "2"})],
    ids=["connect-error", "429"],
)
def test_create_export_retries_when_request_never_ran(
    api: Api, make_client: Callable[..., PostHogClient], sleeps: list[float], first: object
) -> None:
    api.add("POST", f"{BASE}/exports/", first, jresp(201, {"id": 9}))
    assert make_client().create_export(export_format="image/png", dashboard=4)["id"] == 9
    assert len(api.requests) == 2 and len(sleeps) == 1


def test_create_export_requires_a_target(make_client: Callable[..., PostHogClient]) -> None:
    with pytest.raises(ValueError, match="insight, dashboard or export_context"):
        make_client().create_export(export_format="image/png")


def test_wait_for_export_polls_until_content(
    api: Api, make_client: Callable[..., PostHogClient], sleeps: list[float]
) -> None:
    api.add(
        "GET",
        f"{BASE}/exports/5/",
        jresp(200, {"id": 5, "has_content": False}),
        jresp(200, {"id": 5, "has_content": False}),
        jresp(200, {"id": 5, "has_content": True, "exception": None}),
    )
    assert make_client().wait_for_export(5, poll_interval=2.0)["has_content"] is True
    assert sleeps == [2.0, 2.0]


def test_wait_for_export_returns_failed_export(
    api: Api, make_client: Callable[..., PostHogClient]
) -> None:
    api.add(
        "GET",
        f"{BASE}/exports/5/",
        jresp(200, {"id": 5, "has_content": False, "exception": "render failed"}),
    )
    assert make_client().wait_for_export(5)["exception"] == "render failed"


def test_wait_for_export_times_out(
    api: Api, make_client: Callable[..., PostHogClient], sleeps: list[float]
) -> None:
    api.add("GET", f"{BASE}/exports/5/", jresp(200, {"id": 5, "has_content": False}))
    with pytest.raises(PostHogRetryError, match="wait_for_export"):
        make_client().wait_for_export(5, poll_interval=10.0, timeout=30.0)
    assert sleeps == [10.0, 10.0, 10.0]


STORAGE = "https://exports.s3.amazonaws.com/csv/team-1/task-5/abc?X-Amz-Signature=s3cr3t"


def storage_route(api: Api, *responses: httpx.Response | Exception) -> None:
    api.add("GET", "/csv/team-1/task-5/abc", *responses)


def test_download_follows_redirect_without_authorization(
    api: Api,
    make_client: Callable[..., PostHogClient],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    body = b"a,b\n1,2\n" * 1000
    budget = FakeBudget()
    api.add("GET", f"{BASE}/exports/5/content/", httpx.Response(302, headers={"Location": STORAGE}))
    storage_route(api, httpx.Response(200, content=body, headers={"Content-Type": "text/csv"}))
    client = make_client(budget=budget)
    dest = tmp_path / "out" / "export.csv"
    with caplog.at_level(logging.DEBUG):
        result = client.download_export_content(5, dest)
    assert result == ContentDownload(
        path=dest,
        sha256=hashlib.sha256(body).hexdigest(),
        size_bytes=len(body),
        content_type="text/csv",
    )
    assert dest.read_bytes() == body
    api_req, storage_req = api.requests
    assert api_req.headers["Authorization"] == f"Bearer {KEY}"
    assert storage_req.url.host == "exports.s3.amazonaws.com"
    assert "Authorization" not in storage_req.headers
    assert storage_req.headers.get("Accept") != "application/json"
    assert budget.acquired == 1  # storage is not PostHog's budget
    assert client.stats.bytes_downloaded == len(body)
    assert list(dest.parent.iterdir()) == [dest]  # no temp files left behind
    # Presigned URLs are credentials too: our own log lines show only the storage origin.
    ours = [r.getMessage() for r in caplog.records if r.name == "resources.posthog_client"]
    assert ours and not any("s3cr3t" in m for m in ours)


def test_download_retries_content_length_mismatch(
    api: Api, make_client: Callable[..., PostHogClient], sleeps: list[float], tmp_path: Path
) -> None:
    body = b"x" * 100
    api.add("GET", f"{BASE}/exports/5/content/", httpx.Response(302, headers={"Location": STORAGE}))
    storage_route(
        api,
        httpx.Response(200, headers={"Content-Length": "100"}, stream=httpx.ByteStream(body[:50])),
        httpx.Response(200, content=body),
    )
    dest = tmp_path / "export.bin"
    client = make_client()
    result = client.download_export_content(5, dest)
    assert result.size_bytes == 100 and dest.read_bytes() == body
    assert len(sleeps) == 1 and client.stats.retries == 1
    assert list(tmp_path.iterdir()) == [dest]


def test_download_refetches_presigned_url_after_storage_403(
    api: Api, make_client: Callable[..., PostHogClient], sleeps: list[float], tmp_path: Path
) -> None:
    budget = FakeBudget()
    api.add("GET", f"{BASE}/exports/5/content/", httpx.Response(302, headers={"Location": STORAGE}))
    storage_route(
        api,
        httpx.Response(403, text="<Error><Code>AccessDenied</Code></Error>"),
        httpx.Response(200, content=b"png"),
    )
    result = make_client(budget=budget).download_export_content(5, tmp_path / "a.png")
    assert result.size_bytes == 3
    assert [r.url.host for r in api.requests] == [
        "us.posthog.com",
        "exports.s3.amazonaws.com",
        "us.posthog.com",
        "exports.s3.amazonaws.com",
    ]
    assert budget.acquired == 2


def test_download_follows_relative_redirect_on_the_api_origin_with_the_key(
    api: Api, make_client: Callable[..., PostHogClient], tmp_path: Path, sleeps: list[float]
) -> None:
    # A dataset export: content/ answers 302 to a path on PostHog's own API.
    target = f"{BASE}/datasets/0b8f/exports/5/content"
    api.add("GET", f"{BASE}/exports/5/content/", httpx.Response(302, headers={"Location": target}))
    lines = b'{"id":1}\n{"id":2}\n'
    api.add(
        "GET",
        target,
        httpx.Response(200, content=lines, headers={"Content-Type": "application/x-ndjson"}),
    )
    result = make_client().download_export_content(5, tmp_path / "a.jsonl")
    assert (result.size_bytes, result.content_type) == (len(lines), "application/x-ndjson")
    assert (tmp_path / "a.jsonl").read_bytes() == lines
    assert [r.url.raw_path.decode() for r in api.requests] == [f"{BASE}/exports/5/content/", target]
    second = api.requests[1]
    assert second.url.host == "us.posthog.com" and second.url.scheme == "https"
    assert second.headers["Authorization"] == f"Bearer {KEY}"  # same origin: the key goes along
    assert sleeps == []


@pytest.mark.parametrize(
    "location",
    ["/api/projects/2/datasets/x/exports/5/content", "/admin/", "https://us.posthog.com/admin/"],
)
def test_download_refuses_same_origin_redirect_outside_the_projects_api(
    api: Api, make_client: Callable[..., PostHogClient], tmp_path: Path, location: str
) -> None:
    api.add(
        "GET", f"{BASE}/exports/5/content/", httpx.Response(302, headers={"Location": location})
    )
    with pytest.raises(PostHogAPIError, match="outside this project's API"):
        make_client().download_export_content(5, tmp_path / "a.bin")
    assert len(api.requests) == 1  # not followed, so the key went nowhere else


def test_download_direct_200_from_api(
    api: Api, make_client: Callable[..., PostHogClient], tmp_path: Path
) -> None:
    api.add(
        "GET",
        f"{BASE}/exports/5/content/",
        httpx.Response(200, content=b"\x89PNG", headers={"Content-Type": "image/png"}),
    )
    result = make_client().download_export_content(5, tmp_path / "a.png")
    assert (result.size_bytes, result.content_type) == (4, "image/png")


def test_download_404_is_not_found(
    api: Api, make_client: Callable[..., PostHogClient], tmp_path: Path, sleeps: list[float]
) -> None:
    api.add("GET", f"{BASE}/exports/5/content/", err(404, "not_found", "Not found."))
    with pytest.raises(PostHogNotFoundError):
        make_client().download_export_content(5, tmp_path / "a.png")
    assert sleeps == [] and list(tmp_path.iterdir()) == []


def test_download_retries_read_error_mid_body(
    api: Api, make_client: Callable[..., PostHogClient], tmp_path: Path, sleeps: list[float]
) -> None:
    class Broken(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            yield b"partial"
            raise httpx.ReadError("connection reset")

    api.add("GET", f"{BASE}/exports/5/content/", httpx.Response(302, headers={"Location": STORAGE}))
    storage_route(api, httpx.Response(200, stream=Broken()), httpx.Response(200, content=b"whole"))
    result = make_client().download_export_content(5, tmp_path / "a.csv")
    assert (tmp_path / "a.csv").read_bytes() == b"whole" and result.size_bytes == 5
    assert len(sleeps) == 1


@pytest.mark.parametrize("location", ["ftp://x/y", "javascript:alert(1)", ""])
def test_download_refuses_unusable_redirects(
    api: Api, make_client: Callable[..., PostHogClient], tmp_path: Path, location: str
) -> None:
    api.add(
        "GET", f"{BASE}/exports/5/content/", httpx.Response(302, headers={"Location": location})
    )
    with pytest.raises(PostHogError, match="Location"):
        make_client().download_export_content(5, tmp_path / "a.csv")
    assert len(api.requests) == 1 and list(tmp_path.iterdir()) == []


def test_download_stops_after_three_redirect_hops(
    api: Api, make_client: Callable[..., PostHogClient], tmp_path: Path
) -> None:
    api.add("GET", f"{BASE}/exports/5/content/", httpx.Response(302, headers={"Location": STORAGE}))
    storage_route(api, httpx.Response(307, headers={"Location": STORAGE}))
    with pytest.raises(PostHogAPIError, match="too many redirects"):
        make_client().download_export_content(5, tmp_path / "a.csv")
    assert len(api.requests) == 4


def test_download_streams_60mb_with_bounded_memory(
    api: Api, make_client: Callable[..., PostHogClient], tmp_path: Path
) -> None:
    chunk = bytes(range(256)) * 256  # 64 KiB
    n_chunks = 960  # 60 MiB
    expected = hashlib.sha256()
    for _ in range(n_chunks):
        expected.update(chunk)

    class Big(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            for _ in range(n_chunks):
                yield chunk

    size = len(chunk) * n_chunks
    api.add("GET", f"{BASE}/exports/5/content/", httpx.Response(302, headers={"Location": STORAGE}))
    storage_route(api, httpx.Response(200, stream=Big(), headers={"Content-Length": str(size)}))
    tracemalloc.start()
    try:
        result = make_client().download_export_content(5, tmp_path / "big.bin")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.size_bytes == size and result.sha256 == expected.hexdigest()
    assert peak < 8 * 1024 * 1024


# ---- explicit members -------------------------------------------------------------------


def test_list_and_delete_explicit_members_legacy(
    api: Api, make_client: Callable[..., PostHogClient]
) -> None:
    api.add("GET", f"{BASE}/explicit_members/", jresp(200, [{"id": "m1", "level": 1}]))
    api.add("DELETE", f"{BASE}/explicit_members/u-1/", httpx.Response(204))
    client = make_client()
    assert client.list_explicit_members() == [{"id": "m1", "level": 1}]
    assert client.delete_explicit_member("u-1") is None
    assert api.requests[-1].method == "DELETE"
    assert api.requests[-1].headers["Authorization"] == f"Bearer {KEY}"


# ---- budget and stats -------------------------------------------------------------------


def test_budget_acquired_before_every_request_and_wait_counted(
    api: Api, make_client: Callable[..., PostHogClient]
) -> None:
    budget = FakeBudget(wait=0.25)
    api.add("GET", f"{BASE}/groups_types/", httpx.Response(500), jresp(200, []))
    client = make_client(budget=budget)
    client.list_group_types()
    assert budget.acquired == 2
    assert client.stats.waited_for_budget_s == pytest.approx(0.5)
    assert budget.pauses == []  # only 429s pause the shared budget


def test_stats_as_metadata(api: Api, make_client: Callable[..., PostHogClient]) -> None:
    api.add("GET", f"{BASE}/groups_types/", jresp(200, [{"a": 1}, {"a": 2}]))
    client = make_client()
    client.list_group_types()
    assert client.stats.as_metadata() == {
        "requests": 1,
        "retries": 0,
        "throttled": 0,
        "pages": 1,
        "items": 2,
        "bytes_downloaded": 0,
        "waited_for_budget_s": 0.0,
        "by_endpoint": {"GET groups_types/": 1},
    }


def test_url_parts_never_carry_the_key(api: Api, make_client: Callable[..., PostHogClient]) -> None:
    api.add("GET", f"{BASE}/groups_types/", jresp(200, []))
    make_client().list_group_types()
    url = str(api.requests[0].url)
    assert KEY not in url and "personal_api_key" not in urlsplit(url).query


def test_client_obeys_a_long_retry_after_from_the_hourly_window():
    """A sustained-window 429 can ask for most of an hour; the default client waits that long."""
    delays: list[float] = []
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            return httpx.Response(429, headers={"Retry-After": "1800"}, json={
                "type": "throttled_error", "code": "throttled",
                "detail": "Request was throttled. Expected available in 1800 seconds.", "attr": None})
        return httpx.Response(200, json=[])

    client = PostHogClient(host="https://us.posthog.com", project_id="1", api_key="phx_long_wait",
                           transport=httpx.MockTransport(handler), sleep=delays.append)
    assert client.list_group_types() == []
    assert delays == [1800.0]


def test_a_small_redirect_body_is_read_so_its_connection_is_reused():
    """A 302 closed unread drops its connection; read (it is empty from PostHog), the connection
    goes back to the pool. A large one is not read: the redirect is all that counts."""
    from resources.posthog_client import _release

    seen: list[str] = []

    class Body(httpx.SyncByteStream):
        def __init__(self, size: int) -> None:
            self.size = size

        def __iter__(self):
            seen.append(f"read {self.size}")
            yield b"x" * self.size

        def close(self) -> None:
            seen.append("closed")

    for size in (0, 64 * 1024 + 1):
        with httpx.Client(transport=httpx.MockTransport(lambda request, size=size: httpx.Response(
                302, headers={"Location": "https://storage.test/f", "Content-Length": str(size)},
                stream=Body(size)))) as client:
            response = client.send(client.build_request("GET", "https://app.test/x"), stream=True)
            _release(response)
            assert response.is_closed
    assert seen == ["read 0", "closed", "closed"]


# ---- credentials in logs ----------------------------------------------------------------


def test_content_download_logs_no_presigned_query_or_key_at_any_level(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Over real HTTP through the simulator's 302 to presigned storage, with every logger
    # (httpx's INFO request line, httpcore's DEBUG response headers) at DEBUG.
    from posthog_sim import SimConfig, Simulator
    from posthog_sim.config import DatasetSpec

    cfg = SimConfig(dataset=DatasetSpec(groups_per_type=(1,), n_exports=6), rate_limits=None)
    with Simulator(cfg) as sim:
        export = next(e for e in sim.dataset.exports(1) if e["has_content"])
        presigned = sim.presign(export["id"], export["export_format"])
        signature = presigned.rsplit("X-Amz-Signature=", 1)[1]
        caplog.set_level(logging.DEBUG)
        with PostHogClient(host=sim.api_url, project_id="1", api_key=sim.cfg.api_key) as client:
            got = client.download_export_content(export["id"], tmp_path / "content.bin")
        assert got.size_bytes > 0
        assert any(r.server == "storage" for r in sim.request_log)
    messages = [r.getMessage() for r in caplog.records] + [caplog.text]
    assert any("HTTP Request: GET" in m for m in messages)  # httpx's line is there, redacted
    assert any("?[redacted]" in m for m in messages)
    for text in messages:
        assert "X-Amz-" not in text
        assert signature[:16] not in text
        assert sim.cfg.api_key not in text


def test_dataset_export_download_through_the_simulator_follows_the_api_redirect(
    tmp_path: Path,
) -> None:
    from posthog_sim import SimConfig, Simulator
    from posthog_sim.config import DatasetSpec

    spec = DatasetSpec(groups_per_type=(1,), n_exports=2, dataset_exports=1)
    with Simulator(SimConfig(dataset=spec, rate_limits=None)) as sim:
        export = next(
            e for e in sim.dataset.exports(1) if e["export_format"] == "application/x-ndjson"
        )
        with PostHogClient(host=sim.api_url, project_id="1", api_key=sim.cfg.api_key) as client:
            got = client.download_export_content(export["id"], tmp_path / "d.jsonl")
        assert got.content_type == "application/x-ndjson"
        assert got.path.read_bytes() == sim.dataset.export_content(export["id"])
        assert client.stats.retries == 0
        followed = [r for r in sim.request_log if "/datasets/" in r.path]
        assert len(followed) == 1 and followed[0].status == 200
        assert followed[0].authorization == f"Bearer {sim.cfg.api_key}"


def test_current_project_through_the_simulator_is_asked_for_once(tmp_path: Path) -> None:
    from posthog_sim import SimConfig, Simulator
    from posthog_sim.config import DatasetSpec

    spec = DatasetSpec(groups_per_type=(3, 2), n_exports=2)
    with Simulator(SimConfig(dataset=spec, rate_limits=None)) as sim:
        with PostHogClient(host=sim.api_url, project_id="@current", api_key=sim.cfg.api_key) as c:
            assert [t["group_type_index"] for t in c.list_group_types()] == [0, 1]
            assert len(list(c.iter_groups(group_type_index=1))) == 2
        paths = [r.path for r in sim.request_log]
    assert paths[0] == "/api/projects/@current/"
    assert all(p.startswith("/api/projects/1/") for p in paths[1:]) and len(paths) == 3


# ---- scopes -----------------------------------------------------------------------------


def test_403_through_the_simulator_names_the_scope_and_the_asset_that_needs_it() -> None:
    from posthog_sim import SimConfig, Simulator
    from posthog_sim.config import DatasetSpec

    spec = DatasetSpec(groups_per_type=(3,), n_exports=2)
    with Simulator(SimConfig(dataset=spec, rate_limits=None)) as sim:
        key = sim.issue_key(["group:read"])
        with PostHogClient(host=sim.api_url, project_id="1", api_key=key) as client:
            assert len(list(client.iter_groups(group_type_index=0))) == 3  # group:read suffices
            with pytest.raises(PostHogAPIError) as defs:
                list(client.iter_group_property_definitions(group_type_index=0))
            with pytest.raises(PostHogAPIError) as exports:
                list(client.iter_exports())
            with pytest.raises(PostHogAPIError) as create:
                client.create_export(export_format="text/csv", export_context={"path": "/x"})
    assert defs.value.status == 403
    assert "lacks the 'property_definition:read' scope" in str(defs.value)
    assert "posthog_group_property_definitions asset" in str(defs.value)
    assert "lacks the 'export:read' scope" in str(exports.value)
    assert "posthog_exports asset" in str(exports.value)
    assert "lacks the 'export:write' scope" in str(create.value)
    assert "posthog_requested_exports asset" in str(create.value)
    for error in (defs.value, exports.value, create.value):
        assert key not in full_error_text(error)


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        ('HTTP Request: GET https://s3.example/k?X-Amz-Signature=abc123 "HTTP/1.1 200 OK"',
         "abc123"),
        ("return_value=(b'HTTP/1.1', 302, b'Found', [(b'Location', b'/api/x?sig=abc123')])",
         "abc123"),
        ("Authorization: Bearer phx_abc123", "phx_abc123"),
    ],
)
def test_redact_secrets_removes_query_strings_and_keys(line: str, secret: str) -> None:
    from resources.posthog_logging import redact_secrets

    assert secret not in redact_secrets(line)


def test_iter_group_pages_fails_at_once_when_the_500_says_the_page_cannot_be_rendered(
    api: Api, make_client: Callable[..., PostHogClient]
) -> None:
    from resources.errors import PostHogUnrenderablePageError

    first = {"next": f"{HOST}{BASE}/groups/?group_type_index=2&cursor=eyJjIjogMTcsICJrIjogImsxIn0",
             "previous": None, "results": [{"group_type_index": 2, "group_key": "k1",
                                            "group_properties": {}, "created_at": None}]}
    api.add("GET", f"{BASE}/groups/", jresp(200, first),
            err(500, "error", "TypeError: Integer exceeds 64-bit range", "server_error"))
    pages = make_client().iter_group_pages(group_type_index=2, group_type="workspace")
    assert len(next(pages)) == 1
    with pytest.raises(PostHogUnrenderablePageError) as info:
        next(pages)
    text = str(info.value)
    assert "group type 2 ('workspace')" in text and "page 2 (after 1 groups read)" in text
    assert "group_key 'k1'" in text and "Integer exceeds 64-bit range" in text
    assert len(api.requests) == 2  # not retried
