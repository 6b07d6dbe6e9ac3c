"""Groups through the query API: the client's keyset pages, the simulator's /query/ endpoint,
the per-bucket budget, and an end-to-end sync through both paths that must land the same
tables row for row."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import dagster as dg
import httpx
import pytest

from posthog_sim import FaultSpec, Simulator
from resources.budget import GENERAL, QUERY, RequestBudget, budget_bucket
from resources.posthog_client import PostHogClient
from resources.posthog_config import ConnectionSettings
from resources.posthog_query import (
    GROUPS_COUNT_HOGQL,
    GROUPS_PAGE_HOGQL,
    QueryGroups,
    plan_source,
    query_requests,
    rest_requests,
)
from resources.posthog_transport import Transport
from tests.helpers import start_sim
from tests.sim_fixtures import sim_factory  # noqa: F401


def _post(sim: Simulator, body: dict, key: str | None = None) -> httpx.Response:
    return httpx.post(f"{sim.api_url}/api/projects/1/query/", json=body,
                      headers={"Authorization": f"Bearer {key or sim.api_key}"}, timeout=30)


def _client(sim: Simulator) -> PostHogClient:
    return PostHogClient(host=sim.api_url, project_id="1", api_key=sim.api_key,
                         retry_base_delay=0.01, retry_max_delay=0.2)


def test_query_groups_pages_equal_the_rest_listing(sim_factory):
    sim = sim_factory(groups_per_type=(2_345, 7, 0), hostile=True, n_exports=0)
    with _client(sim) as client:
        queries = QueryGroups(client)
        assert queries.count_groups() == {0: 2_361, 1: 23, 2: 16}
        for index in (0, 1, 2):
            # a small page size: page ends fall inside runs of groups sharing a created_at
            pages = list(queries.iter_group_pages(group_type_index=index, limit=97,
                                                  slice_rows=50))
            total = sum(len(p) for p in pages)
            page_sizes = [97] * (total // 97) + [total % 97]
            assert [len(p) for p in pages] == [
                n for size in page_sizes for n in ([min(50, size), size - 50][:1 + (size > 50)])
                if n
            ]
            assert queries.requests[index] == len(page_sizes)
            got = [(g.group_key, g.created_at, json.loads(bytes(g.group_properties)))
                   for p in pages for g in p]
            want = [(g["group_key"], g["created_at"], g.get("group_properties") or {})
                    for g in sim.dataset.iter_groups(index)]
            assert got == want
            # and the text is json's exact spelling, as the REST path lands it
            for p in pages:
                for g in p:
                    text = bytes(g.group_properties).decode()
                    assert text == json.dumps(json.loads(text), ensure_ascii=False,
                                              separators=(",", ":"))
    sent = [r for r in sim.request_log if r.path.endswith("/query/")]
    assert all(r.method == "POST" and r.status == 200 for r in sent)


def test_query_groups_keyset_is_stable_under_concurrent_inserts(sim_factory):
    sim = sim_factory(groups_per_type=(1_000,), n_exports=0)
    before = {g["group_key"] for g in sim.dataset.iter_groups(0)}
    with _client(sim) as client:
        pages = QueryGroups(client).iter_group_pages(group_type_index=0, limit=300)
        seen = [g.group_key for g in next(pages)]
        # a new group (newest created_at: above the cursor) and a changed one mid-crawl
        sim.dataset.insert_group(0, "brand-new", {"plan": "paid"})
        for page in pages:
            seen += [g.group_key for g in page]
    assert len(seen) == len(set(seen)) == len(before)  # nothing twice, nothing skipped
    assert set(seen) == before  # the new group waits for the next sync, as with REST


def test_sim_query_envelope_cap_and_refusals(sim_factory):
    sim = sim_factory(groups_per_type=(50_010,), n_exports=0)
    page = _post(sim, {"query": {"kind": "HogQLQuery",
                                 "query": GROUPS_PAGE_HOGQL(first=True, limit=60_000),
                                 "values": {"group_type_index": 0}}})
    assert page.status_code == 200
    body = page.json()
    assert {"results", "columns", "types", "hasMore", "limit", "offset"} <= body.keys()
    assert body["columns"] == ["key", "created_at", "properties"]
    assert len(body["results"]) == 50_000  # MAX_SELECT_RETURNED_ROWS
    count = _post(sim, {"query": {"kind": "HogQLQuery", "query": GROUPS_COUNT_HOGQL}}).json()
    assert count["results"] == [[0, 50_010]]
    for bad in (
        {"kind": "HogQLQuery", "query": "SELECT * FROM events"},
        {"kind": "HogQLQuery", "query": GROUPS_PAGE_HOGQL(first=True, limit=10)},  # no values
        {"kind": "HogQLQuery", "query": GROUPS_PAGE_HOGQL(first=True, limit=10),
         "values": {"group_type_index": "0"}},
        {"kind": "EventsQuery", "select": ["*"]},
    ):
        r = _post(sim, {"query": bad})
        assert r.status_code == 400
        assert r.json()["type"] == "validation_error" and r.json()["attr"] is None
    offset = _post(sim, {"query": {"kind": "HogQLQuery",
                                   "query": "SELECT key FROM groups LIMIT 10 OFFSET 10"}})
    assert offset.status_code == 400 and offset.json()["detail"].startswith("OFFSET is not")
    no_scope = sim.issue_key(["group:read"])
    denied = _post(sim, {"query": {"kind": "HogQLQuery", "query": GROUPS_COUNT_HOGQL}}, no_scope)
    assert denied.status_code == 403
    assert denied.json()["detail"] == "API key missing required scope 'query:read'"


def test_sim_query_has_its_own_throttle_bucket(sim_factory):
    sim = sim_factory(groups_per_type=(10,), n_exports=0, rate_limits=((5, 60.0),),
                      query_rate_limits=((2, 3600.0),))
    count = {"query": {"kind": "HogQLQuery", "query": GROUPS_COUNT_HOGQL}}
    assert [_post(sim, count).status_code for _ in range(3)] == [200, 200, 429]
    throttled = _post(sim, count)
    assert throttled.json()["code"] == "throttled" and int(throttled.headers["Retry-After"]) > 60
    # the general bucket is untouched by the queries
    groups = [httpx.get(f"{sim.api_url}/api/projects/1/groups/?group_type_index=0",
                        headers={"Authorization": f"Bearer {sim.api_key}"}).status_code
              for _ in range(6)]
    assert groups == [200] * 5 + [429]


def test_budget_a_query_429_pauses_only_the_query_bucket(tmp_path: Path):
    path = tmp_path / "budget.sqlite"
    clock = [1_000.0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    general = RequestBudget(path, budget_bucket("h", "k"), [(100, 60.0)],
                            clock=lambda: clock[0], sleep=sleep)
    query = RequestBudget(path, budget_bucket("h", "k", QUERY), [(100, 3600.0)],
                          clock=lambda: clock[0], sleep=sleep)
    assert budget_bucket("h", "k") != budget_bucket("h", "k", QUERY)
    answers = iter([httpx.Response(429, headers={"Retry-After": "30"},
                                   json={"type": "throttled_error", "code": "throttled",
                                         "detail": "Request was throttled.", "attr": None}),
                    httpx.Response(200, json={"results": [[0, 1]]})])
    slept: list[float] = []
    t = Transport(ConnectionSettings.from_raw(host="http://127.0.0.1:9", project_id="1",
                                              api_key="phx_test"),
                  budget=general, query_budget=query, sleep=slept.append,
                  transport=httpx.MockTransport(lambda request: next(answers)))
    assert t.call("POST", "/api/projects/1/query/", endpoint="query/", json_body={},
                  bucket=QUERY) == {"results": [[0, 1]]}
    assert slept == [30.0]
    paused = dict(general._connection().execute("SELECT bucket, until FROM pauses").fetchall())
    assert paused == {query.bucket: 1_030.0}
    assert t.stats.by_bucket == {QUERY: 2}
    assert general.acquire() == 0.0  # REST requests carry on
    t.close()


def test_plan_source_takes_the_query_api_only_where_it_saves_requests():
    assert rest_requests(0) == 1 and rest_requests(1_000_000) == 10_000
    assert query_requests(0) == 1 and query_requests(50_000) == 2
    assert query_requests(333_334) == 7
    assert plan_source(0, 333_334, limit=50_000, min_saved=10).source == "query"
    assert plan_source(0, 900, limit=50_000, min_saved=10).source == "rest"
    assert plan_source(0, 1_100, limit=50_000, min_saved=10).source == "query"


def _logs(instance: dg.DagsterInstance, result) -> list[str]:
    return [e.user_message for e in instance.all_logs(result.run_id)]


def _groups_tables(env) -> dict[str, list[tuple]]:
    """Every row of groups and groups_history, with each sync's time as its ordinal."""
    syncs = [r[0] for r in env.query(
        "SELECT DISTINCT valid_from FROM posthog.groups_history ORDER BY 1")]
    ordinal = {t: n for n, t in enumerate(syncs)}
    groups = env.query(
        "SELECT group_type_index, group_type, group_key, group_properties::VARCHAR, "
        "created_at, extra::VARCHAR FROM posthog.groups ORDER BY 1, 3")
    cols = [c[0] for c in env.query("DESCRIBE posthog.groups_history")]
    rest = [c for c in cols if c not in ("valid_from", "valid_to", "synced_at")]
    history = [
        (*row[:-2], ordinal[row[-2]], None if row[-1] is None else ordinal[row[-1]])
        for row in env.query(
            f"SELECT {', '.join(f'{c}::VARCHAR' for c in rest)}, valid_from, valid_to "
            "FROM posthog.groups_history ORDER BY group_type_index, group_key, valid_from")
    ]
    group_types = env.query("SELECT * EXCLUDE (synced_at) FROM posthog.group_types ORDER BY 1")
    return {"groups": groups, "groups_history": history, "history_columns": cols,
            "group_types": group_types}


@pytest.mark.parametrize("seed", [5])
def test_groups_sync_through_query_and_rest_lands_identical_tables(tmp_path, seed):
    """One dataset, synced twice (with changes between) through each path, faults on."""
    landed = {}
    for source in ("rest", "query"):
        faults = FaultSpec(seed=seed, rate=0.12, slow_seconds=0.3)
        with start_sim(tmp_path / source, groups_per_type=(3_100, 640, 0), n_exports=0,
                       seed=seed, faults=faults) as env:
            config = {"ops": {"posthog_groups": {"config": {
                "groups_source": source, "query_page_rows": 700}}}}
            select = ["posthog_group_types", "posthog_groups"]
            first = env.sync(select=select, run_config=config)
            ds = env.sim.dataset
            # 2**64 - 1: exact beyond doubles, and still a value PostHog can render on groups/
            ds.insert_group(0, "acme-co", {"plan": "paid", "seats": 2**64 - 1, "n": "ключ"},
                            created_at="2026-11-30T10:00:00.123456Z")
            ds.insert_group(1, 'quote"d\nkey', {"x": 1e-7}, created_at="2026-11-30T10:00:01Z")
            second = env.sync(select=select, run_config=config)
            assert first.success and second.success
            log = env.sim.request_log
            assert any(r.fault for r in log), "the fault injector injected nothing"
            ok = [r for r in log if r.status == 200 and r.fault in (None, "slow")]
            queries = [r for r in ok if r.path.endswith("/query/")]
            pages = [r for r in ok if r.path.endswith("/groups/")]
            if source == "query":
                # per sync: 3,100 (3,101) groups / 700 -> 5 pages, 640 (641) -> 1, empty -> 1
                assert len(queries) == 14 and not pages
                assert any(r.fault for r in log if r.path.endswith("/query/"))
            else:  # 31 + 7 + 1, then 32 + 7 + 1
                assert not queries and len(pages) == 79
            landed[source] = _groups_tables(env)
    assert landed["query"]["history_columns"] == landed["rest"]["history_columns"]
    assert len(landed["rest"]["groups"]) == 3_101 + 641
    assert landed["query"]["groups"] == landed["rest"]["groups"]
    assert landed["query"]["groups_history"] == landed["rest"]["groups_history"]
    assert landed["query"]["group_types"] == landed["rest"]["group_types"]


def test_groups_auto_without_query_scope_falls_back_to_rest_with_one_info_line(tmp_path):
    with start_sim(tmp_path, groups_per_type=(1_500, 20), n_exports=0) as env:
        key = env.sim.issue_key(["group:read"])
        instance = dg.DagsterInstance.ephemeral()
        result = env.sync(select=["posthog_group_types", "posthog_groups"],
                          instance=instance, personal_api_key=key)
        assert result.success
        lines = [m for m in _logs(instance, result) if "query:read" in m]
        assert len(lines) == 1
        assert "1,520 groups in 16 requests" in lines[0] and "about 2 query requests" in lines[0]
        (rows,), = env.query("SELECT count(*) FROM posthog.groups")
        assert rows == 1_520
        meta = result.asset_materializations_for_node("posthog_groups")[0].metadata
        assert meta["path_by_group_type"].value["0:organization"]["source"] == "rest"


def test_groups_auto_takes_query_for_large_types_and_says_so(tmp_path):
    with start_sim(tmp_path, groups_per_type=(2_500, 30), n_exports=0) as env:
        instance = dg.DagsterInstance.ephemeral()
        result = env.sync(select=["posthog_group_types", "posthog_groups"], instance=instance)
        assert result.success
        meta = result.asset_materializations_for_node("posthog_groups")[0].metadata
        paths = meta["path_by_group_type"].value
        assert paths["0:organization"] == {"source": "query", "groups": 2_500, "requests": 1}
        assert paths["1:company"]["source"] == "rest" and paths["1:company"]["requests"] == 1
        # the count and one page in the query bucket, one REST page in the general one (the
        # group types come from the snapshot this run just published)
        assert meta["requests_by_bucket"].value == {GENERAL: 1, QUERY: 2}
        logs = _logs(instance, result)
        assert any("type 0:organization took the query API path: 2,500 groups in 1 query "
                   "request" in m for m in logs)


def test_groups_auto_spends_no_count_query_on_types_the_last_snapshot_shows_small(tmp_path):
    """The query bucket is 120 an hour, shared with the team: a project whose types were all
    far too small for the query API at the last sync lists them by REST without asking; a type
    that grew past it is counted (and queried) again."""
    with start_sim(tmp_path, groups_per_type=(300, 40), n_exports=0) as env:
        def sync_queries() -> int:
            env.sim.clear_log()
            assert env.sync(select=["posthog_group_types", "posthog_groups"]).success
            return sum(1 for r in env.sim.request_log if r.path.endswith("/query/"))

        assert sync_queries() == 1  # no snapshot yet: the count query decides
        assert sync_queries() == 0  # 300 and 40 groups, doubled, still REST
        for n in range(2_000):
            env.sim.dataset.insert_group(0, f"grown-{n}", {})
        assert sync_queries() == 0  # the snapshot said small: REST, the type's new size seen
        assert sync_queries() == 2  # 2,300 groups at the last sync: counted, then queried
        assert env.query("SELECT count(*) FROM posthog.groups") == [(2_340,)]


@pytest.mark.parametrize("fault", [None, "truncate", "reset_during", "bad_json", "503"])
def test_query_types_take_turns_with_one_query_in_flight(sim_factory, monkeypatch, fault):
    """The next type's page is asked for while this one is parsed, never two queries at once,
    and every type lands exactly, also when pages break."""
    sim = sim_factory(groups_per_type=(700, 450, 80), n_exports=0)
    if fault:
        sim.inject(fault, r"/query/$", times=3)
    lock = threading.Lock()
    in_flight, most, order = [0], [0], []
    asked: dict[int, threading.Event] = {i: threading.Event() for i in (0, 1, 2)}
    fetch = QueryGroups._fetch_page

    def counted(self, index, cursor, limit):
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
            order.append(index)
        asked[index].set()
        try:
            return fetch(self, index, cursor, limit)
        finally:
            with lock:
                in_flight[0] -= 1

    monkeypatch.setattr(QueryGroups, "_fetch_page", counted)
    got: dict[int, list[str]] = {0: [], 1: [], 2: []}
    with _client(sim) as client:
        for index, part in QueryGroups(client).iter_pages_of_types([0, 1, 2], limit=100,
                                                                   slice_rows=40):
            if not got[0] and fault is None:
                # type 0's first slice: type 1's query went out before its page was parsed
                assert index == 0 and asked[1].wait(10)
            got[index] += [g.group_key for g in part]
    for i in (0, 1, 2):
        assert got[i] == [g["group_key"] for g in sim.dataset.iter_groups(i)]
    assert most[0] == 1
    if fault is None:
        assert order[:4] == [0, 1, 2, 0]  # the types take turns, page by page
        assert len(order) == 8 + 5 + 1  # 700 / 100 + 1, 450 / 100 + 1 (a short last), 80
    else:
        assert sum(1 for r in sim.request_log if r.fault == fault) == 3


@pytest.mark.parametrize("fault", ["truncate", "reset_during", "bad_json", "empty_200",
                                   "bad_length", "429", "503"])
def test_query_groups_pages_survive_each_fault_class(sim_factory, fault):
    sim = sim_factory(groups_per_type=(700,), n_exports=0)
    sim.inject(fault, r"/query/$", times=2)
    with _client(sim) as client:
        got = [g.group_key for p in QueryGroups(client).iter_group_pages(
            group_type_index=0, limit=300) for g in p]
    assert got == [g["group_key"] for g in sim.dataset.iter_groups(0)]
    assert sum(1 for r in sim.request_log if r.fault == fault) == 2
