"""Tests for the PostHog simulator (posthog_sim): real HTTP against a running Simulator."""
from __future__ import annotations

import base64
import csv
import datetime as dt
import hashlib
import io
import json
import math
import os
import re
import signal
import struct
import subprocess
import sys
import time
import zlib
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from posthog_sim import (
    ALL_FAULT_KINDS,
    DatasetSpec,
    FaultSpec,
    RequestRecord,
    SimConfig,
    Simulator,
    decode_cursor,
    encode_cursor,
)
from tests.sim_fixtures import sim_factory  # noqa: F401

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _us(iso: str) -> int:
    d = dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return (d - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(microseconds=1)


def _client(sim: Simulator, key: str | None = None, **kw) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key or sim.api_key}"}
    return httpx.Client(base_url=sim.api_url, headers=headers, timeout=30, **kw)


def _crawl(client: httpx.Client, first: str) -> tuple[list[dict], list[dict]]:
    url, pages, groups = first, [], []
    while url:
        r = client.get(url)
        assert r.status_code == 200, r.text
        body = r.json()
        pages.append(body)
        groups.extend(body["results"])
        url = body["next"]
    return pages, groups


@pytest.fixture(scope="module")
def shared_sim():
    cfg = SimConfig(dataset=DatasetSpec(seed=7, groups_per_type=(2345, 760, 50), n_exports=40,
                                        other_user_exports=5),
                    rate_limits=None,
                    extra_keys={"phx_other_user": (2, ("*",)), "phx_export_only": (1, ("export:read",)),
                                "phx_group_write": (1, ("group:write",))})
    with Simulator(cfg) as s:
        yield s


@pytest.fixture(scope="module")
def client(shared_sim):
    with _client(shared_sim) as c:
        yield c


# ============================================================ groups pagination
def test_pagination_walks_every_group_once_in_order(shared_sim, client):
    ds = shared_sim.dataset
    for idx in (0, 1, 2):
        pages, got = _crawl(client, f"/api/projects/{shared_sim.project_id}/groups/?group_type_index={idx}")
        expected = list(ds.iter_groups(idx))
        assert len(expected) == ds.group_count(idx)
        assert got == expected
        keys = [g["group_key"] for g in got]
        assert len(set(keys)) == len(keys)
        order = [(_us(g["created_at"]), g["group_key"]) for g in got]
        assert order == sorted(order, reverse=True)
        assert all(p["previous"] is None for p in pages)
        assert all(len(p["results"]) == 100 for p in pages[:-1])
        assert pages[-1]["next"] is None
        assert set(got[0]) == {"group_type_index", "group_key", "group_properties", "created_at"}
    # ties exist (several groups share a created_at) and keys descend within a tie
    got = list(ds.iter_groups(0))
    ties = [(a, b) for a, b in zip(got, got[1:]) if a["created_at"] == b["created_at"]]
    assert len(ties) > 100 and all(a["group_key"] > b["group_key"] for a, b in ties)


def test_cursor_encoding_format(shared_sim, client):
    r = client.get("/api/projects/1/groups/", params={"group_type_index": 0})
    body = r.json()
    nxt = body["next"]
    assert nxt.startswith(f"{shared_sim.api_url}/api/projects/1/groups/?")
    q = urlsplit(nxt).query
    qs = parse_qs(q)
    assert qs["group_type_index"] == ["0"]
    cursor = qs["cursor"][0]
    raw = json.loads(base64.urlsafe_b64decode(cursor))
    last = body["results"][-1]
    assert raw == {"c": _us(last["created_at"]), "k": last["group_key"]}
    assert cursor == encode_cursor(raw["c"], raw["k"])
    assert base64.urlsafe_b64encode(json.dumps(raw).encode()).decode() == cursor
    if cursor.endswith("="):
        assert "%3D" in q and "=" not in q.split("cursor=")[1]
    # environments requests get /api/projects/ next links
    r2 = client.get("/api/environments/1/groups/", params={"group_type_index": 0})
    assert "/api/projects/1/groups/" in r2.json()["next"]
    # search / group_key filters are carried into next
    r3 = client.get("/api/projects/1/groups/", params={"group_type_index": 0, "group_key": "-"})
    assert "group_key=-" in r3.json()["next"]


def test_bad_or_old_cursor_restarts_at_page_one(client):
    first = client.get("/api/projects/1/groups/", params={"group_type_index": 1}).json()
    old = base64.urlsafe_b64encode(json.dumps({"c": 1700000000000000, "i": 5}).encode()).decode()
    for bad in ["garbage!!", "bm90IGpzb24=", old, base64.urlsafe_b64encode(b"[1,2]").decode(), ""]:
        r = client.get("/api/projects/1/groups/", params={"group_type_index": 1, "cursor": bad})
        assert r.status_code == 200
        assert r.json() == first
    assert decode_cursor("garbage") is None
    # milliseconds cursor is interpreted as ms
    assert decode_cursor(encode_cursor(1_700_000_000_000, "k")) == (1_700_000_000_000_000, "k")


def test_search_and_group_key_filters(shared_sim, client):
    ds = shared_sim.dataset
    target = list(ds.iter_groups(0))[777]
    r = client.get("/api/projects/1/groups/", params={"group_type_index": 0, "search": target["group_key"].upper()})
    assert target in r.json()["results"]
    name = target["group_properties"]["name"]
    r = client.get("/api/projects/1/groups/", params={"group_type_index": 0, "search": name.lower()})
    assert r.json()["results"] and all(name.lower() in json.dumps(g["group_properties"], ensure_ascii=False).lower()
                                       or g["group_key"].lower() == name.lower() for g in r.json()["results"])
    _, got = _crawl(client, "/api/projects/1/groups/?group_type_index=1&group_key=ACME")
    assert got == [g for g in ds.iter_groups(1) if "acme" in g["group_key"].lower()]
    assert client.get("/api/projects/1/groups/", params={"group_type_index": 4}).json() == {
        "next": None, "previous": None, "results": []}


def _listed(group: dict) -> dict:
    """A group as groups/ lists it: created_at to the millisecond (ClickHouse), where groups/find
    and create answer with Postgres's microseconds."""
    us = _us(group["created_at"])
    listed = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=us - us % 1000)
    return {**group, "created_at": listed.isoformat().replace("+00:00", "Z")}


def test_groups_list_carries_milliseconds_find_microseconds_and_the_cursor_holds(sim_factory):
    sim = sim_factory(groups_per_type=(450,), n_exports=0)
    ds = sim.dataset
    with _client(sim) as c:
        pages, listed = _crawl(c, "/api/projects/1/groups/?group_type_index=0")
        assert len(pages) > 1 and len(listed) == 450 == len({g["group_key"] for g in listed})
        assert all(re.fullmatch(r".*T[0-9:]{8}(\.[0-9]{3}000)?Z", g["created_at"]) for g in listed)
        micro = 0
        for g in listed:
            found = c.get("/api/projects/1/groups/find/", params={
                "group_type_index": 0, "group_key": g["group_key"], "skip_create_notebook": "true"}).json()
            assert _listed(found) == {**g, "notebook": None}
            micro += found["created_at"] != g["created_at"]
        assert micro > 100  # most groups have microseconds the listing does not carry


def test_million_groups_start_fast_and_deep_cursor(sim_factory):
    t0 = time.monotonic()
    sim = sim_factory(groups_per_type=(1_000_000,), n_exports=3)
    started = time.monotonic() - t0
    assert started < 2.0
    ds = sim.dataset
    assert ds.group_count(0) == 1_000_000
    before = ds.group_at(0, 499_999)  # last row of page 5000
    cursor = encode_cursor(_us(before["created_at"]), before["group_key"])
    with _client(sim) as c:
        t1 = time.monotonic()
        r = c.get("/api/projects/1/groups/", params={"group_type_index": 0, "cursor": cursor})
        elapsed = time.monotonic() - t1
        body = r.json()
        assert r.status_code == 200 and elapsed < 1.0
        assert body["results"][0] == ds.group_at(0, 500_000)
        assert body["results"][-1] == ds.group_at(0, 500_099)
        found = ds.get_group(0, body["results"][5]["group_key"])  # Postgres: microseconds
        assert _listed(found) == body["results"][5]
        last = c.get("/api/projects/1/groups/", params={
            "group_type_index": 0,
            "cursor": encode_cursor(_us(ds.group_at(0, 999_949)["created_at"]), ds.group_at(0, 999_949)["group_key"])})
        assert len(last.json()["results"]) == 50 and last.json()["next"] is None


def test_find_property_values_and_definitions(shared_sim, client):
    ds = shared_sim.dataset
    g = list(ds.iter_groups(0))[3]
    r = client.get("/api/projects/1/groups/find/", params={"group_type_index": 0, "group_key": g["group_key"],
                                                          "skip_create_notebook": "true"})
    assert r.json() == {**g, "notebook": None}
    assert client.get("/api/projects/1/groups/find/", params={"group_type_index": 1, "group_key": g["group_key"]}
                      ).json()["detail"] == "Not found."
    r = client.get("/api/projects/1/groups/find/", params={"group_type_index": 0})
    assert r.status_code == 400 and r.json() == {"type": "validation_error", "code": "invalid_input",
                                                 "detail": "This query parameter is required.", "attr": "group_key"}
    pv = client.get("/api/projects/1/groups/property_values/", params={"group_type_index": 0, "key": "industry"}).json()
    assert pv["refreshing"] is False and 0 < len(pv["results"]) <= 20
    assert pv["results"] == ds.property_values(0, "industry")
    assert pv["results"] == sorted(pv["results"], key=lambda x: (-x["count"], x["name"]))
    counts: dict = {}
    for grp in ds.iter_groups(0):
        v = grp["group_properties"].get("industry")
        if v is not None:
            counts[v] = counts.get(v, 0) + 1
    assert {x["name"]: x["count"] for x in pv["results"]} == {k: counts[k] for k in (x["name"] for x in pv["results"])}
    r = client.get("/api/projects/1/groups/property_values/", params={"group_type_index": 0})
    assert r.status_code == 400 and r.json()["attr"] == "key"
    # current property definitions endpoint: LimitOffset, sorted by name
    defs = ds.property_definitions(0)
    assert defs == sorted(defs, key=lambda d: d["name"])
    assert set(defs[0]) == {"id", "name", "is_numerical", "property_type", "tags", "is_seen_on_filtered_events",
                            "updated_at", "verified"}
    r = client.get("/api/projects/1/property_definitions/", params={"type": "group", "group_type_index": 0,
                                                                   "limit": 5})
    body = r.json()
    # count includes the 2 virtual properties PostHog appends to the last page
    assert body["count"] == len(defs) + 2 and body["results"] == defs[:5] and body["previous"] is None
    assert "offset=5" in body["next"]
    body2 = client.get(body["next"]).json()
    assert body2["results"] == defs[5:10] and body2["previous"] is not None
    # the removed groups/property_definitions route
    r = client.get("/api/projects/1/groups/property_definitions/")
    assert r.status_code == 404 and r.json()["detail"] == "Endpoint not found."


# ============================================================ errors, auth, routing
def test_error_bodies(shared_sim, client):
    r = client.get("/api/projects/1/groups/")
    assert r.status_code == 400 and r.json() == {
        "type": "validation_error", "code": "invalid_input",
        "detail": "You must pass ?group_type_index= in this URL. To get a list of valid group types, call "
                  "/api/:project_id/groups_types/.", "attr": "group_type_index"}
    r = client.get("/api/projects/1/groups/", params={"group_type_index": "x"})
    assert r.status_code == 400 and r.json()["detail"] == "A valid integer is required."
    with httpx.Client(base_url=shared_sim.api_url) as anon:
        r = anon.get("/api/projects/1/groups/?group_type_index=0")
        assert r.status_code == 401 and r.json() == {"type": "authentication_error", "code": "not_authenticated",
                                                     "detail": "Authentication credentials were not provided.",
                                                     "attr": None}
        assert r.headers["WWW-Authenticate"].startswith("Bearer resource_metadata=")
        r = anon.get("/api/projects/1/groups/?group_type_index=0", headers={"Authorization": "Bearer phx_nope"})
        assert r.status_code == 401 and r.json() == {
            "type": "authentication_error", "code": "authentication_failed",
            "detail": "Personal API key found in request Authorization header is invalid.", "attr": None}
        r = anon.get("/api/projects/1/groups/?group_type_index=0&personal_api_key=phx_nope")
        assert r.json()["detail"] == "Personal API key found in request query string is invalid."
        r = anon.get(f"/api/projects/1/groups/?group_type_index=0&personal_api_key={shared_sim.api_key}")
        assert r.status_code == 200
        # groups_types quirk: 403 instead of 401
        r = anon.get("/api/projects/1/groups_types/")
        assert r.status_code == 403 and r.json()["code"] == "not_authenticated"
        r = anon.get("/api/projects/1/groups_types/", headers={"Authorization": "Bearer phx_nope"})
        assert r.status_code == 403 and r.json()["code"] == "authentication_failed"
    with _client(shared_sim, "phx_export_only") as c:
        r = c.get("/api/projects/1/groups/?group_type_index=0")
        assert r.status_code == 403 and r.json() == {"type": "authentication_error", "code": "permission_denied",
                                                     "detail": "API key missing required scope 'group:read'",
                                                     "attr": None}
        assert c.get("/api/projects/1/exports/").status_code == 200
    with _client(shared_sim, "phx_group_write") as c:  # :write implies :read
        assert c.get("/api/projects/1/groups/?group_type_index=0").status_code == 200
        assert c.get("/api/projects/1/exports/").json()["detail"] == "API key missing required scope 'export:read'"
    r = client.get("/api/projects/1/definitely_not_here/")
    assert r.status_code == 404 and r.json() == {"type": "invalid_request", "code": "not_found",
                                                 "detail": "Endpoint not found.", "attr": None}
    for pid in ("2", "abc"):
        r = client.get(f"/api/projects/{pid}/groups_types/")
        assert r.status_code == 404 and r.json()["detail"] == "Project not found."
    r = client.get("/api/projects/@current/groups_types")  # no trailing slash, @current
    assert r.status_code == 200 and r.json() == shared_sim.dataset.group_types()
    r = client.put("/api/projects/1/exports/1/", json={})
    assert r.status_code == 405 and r.json()["code"] == "method_not_allowed"
    r = client.delete("/api/projects/1/groups_types/")
    assert r.status_code == 405


def test_group_types_shape(shared_sim, client):
    types = client.get("/api/projects/1/groups_types/").json()
    assert isinstance(types, list) and [t["group_type_index"] for t in types] == [0, 1, 2]
    for t in types:
        assert list(t) == ["group_type", "group_type_index", "name_singular", "name_plural", "detail_dashboard",
                           "default_columns", "created_at"]
    assert any(t["created_at"] is None for t in types) and any(t["name_plural"] is None for t in types)


def test_environments_headers(client):
    r = client.get("/api/environments/1/groups_types/")
    assert r.status_code == 200
    assert r.headers["Deprecation"] == "true"
    assert r.headers["Link"] == '</api/projects/1/groups_types/>; rel="successor-version"'
    assert r.headers["Sunset"] == "Fri, 31 Jul 2026 00:00:00 GMT"
    r = client.get("/api/environments/@current/exports/?limit=2")
    assert r.headers["Link"] == '</api/projects/@current/exports/?limit=2>; rel="successor-version"'
    assert "/api/projects/@current/exports/" in r.json()["next"]
    assert "Deprecation" not in client.get("/api/projects/1/groups_types/").headers


# ============================================================ exports
def test_exports_list_visibility_and_limit_offset(shared_sim, client):
    ds = shared_sim.dataset
    expected = ds.exports(1)
    everything = ds.all_exports()
    assert len(everything) == 45 and len(expected) < 40  # some expired
    url, got, first = "/api/projects/1/exports/?limit=7", [], None
    while url:
        body = client.get(url).json()
        first = first or body
        assert body["count"] == len(expected)
        got += body["results"]
        url = body["next"]
    assert got == expected
    assert first["previous"] is None and "limit=7&offset=7" in first["next"]
    assert [e["created_at"] for e in got] == sorted([e["created_at"] for e in got], reverse=True)
    assert set(got[0]) == {"id", "dashboard", "insight", "export_format", "created_at", "has_content",
                           "export_context", "filename", "expires_after", "exception", "user_access_level"}
    mine = {e["id"] for e in got}
    others = [e for e in everything if e["_user_id"] == 2]
    assert others and not mine & {e["id"] for e in others}
    other_csv = next(e for e in others if e["export_format"] == "text/csv")
    assert client.get(f"/api/projects/1/exports/{other_csv['id']}/").status_code == 404
    assert client.get(f"/api/projects/1/exports/{other_csv['id']}/content/").status_code == 404
    with _client(shared_sim, "phx_other_user") as c2:
        assert {e["id"] for e in c2.get("/api/projects/1/exports/").json()["results"]} == {
            e["id"] for e in ds.exports(2)}
    expired = [e for e in everything if e["_expired"]]
    assert expired and all(client.get(f"/api/projects/1/exports/{e['id']}/").status_code == 404 for e in expired)
    now = time.time()
    soon = [e for e in expected if e["export_format"] == "text/csv"
            and dt.datetime.fromisoformat(e["expires_after"].replace("Z", "+00:00")).timestamp() - now < 86400]
    assert soon and all(e["expires_after"].endswith("T00:00:00Z") for e in expected)
    r = client.get("/api/projects/1/exports/", params={"export_format": "image/png"})
    assert r.json()["results"] and all(e["export_format"] == "image/png" for e in r.json()["results"])


def test_content_redirect_to_storage(shared_sim, client):
    ds = shared_sim.dataset
    exports = [e for e in ds.exports(1) if e["has_content"]]
    by_fmt = {}
    for e in exports:
        by_fmt.setdefault(e["export_format"], e)
    assert {"text/csv", "image/png",
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"} <= set(by_fmt)
    for fmt, e in by_fmt.items():
        r = client.get(f"/api/projects/1/exports/{e['id']}/content/", follow_redirects=False)
        assert r.status_code == 302
        loc = r.headers["Location"]
        assert loc.startswith(shared_sim.storage_url + "/exports/")
        assert "X-Amz-Expires=3600" in loc and "X-Amz-Signature=" in loc
        with httpx.Client() as s3:  # no auth header
            b1 = s3.get(loc)
        assert b1.status_code == 200 and b1.headers["Content-Type"] == fmt
        assert int(b1.headers["Content-Length"]) == len(b1.content)
        assert b1.content == ds.export_content(e["id"])
        assert hashlib.sha256(b1.content).hexdigest() == ds.export_content_sha256(e["id"])
    # following redirects with an httpx client that drops auth cross-origin works end to end
    e = by_fmt["text/csv"]
    r = client.get(f"/api/projects/1/exports/{e['id']}/content/", params={"download": "true"},
                   follow_redirects=True)
    assert r.status_code == 200 and r.content == ds.export_content(e["id"])
    assert r.headers["Content-Disposition"] == f'attachment; filename="{e["filename"]}"'
    # content bytes are deterministic across simulator instances
    with Simulator(SimConfig(dataset=DatasetSpec(seed=7, groups_per_type=(5,), n_exports=40, other_user_exports=5),
                             rate_limits=None)) as again:
        for e in by_fmt.values():
            assert again.dataset.export_content_sha256(e["id"]) == ds.export_content_sha256(e["id"])
    # pending export has no content -> 404 Not found.
    pending = next(e for e in ds.exports(1) if not e["has_content"] and e["exception"] is None)
    r = client.get(f"/api/projects/1/exports/{pending['id']}/content/")
    assert r.status_code == 404 and r.json()["detail"] == "Not found."


def test_storage_rejects_authorization_and_bad_signatures(shared_sim, client):
    e = next(e for e in shared_sim.dataset.exports(1) if e["has_content"])
    loc = client.get(f"/api/projects/1/exports/{e['id']}/content/", follow_redirects=False).headers["Location"]
    r = httpx.get(loc, headers={"Authorization": f"Bearer {shared_sim.api_key}"})
    assert r.status_code == 400 and r.headers["Content-Type"] == "application/xml"
    assert "<Code>InvalidArgument</Code>" in r.text and "Only one auth mechanism allowed" in r.text
    r = httpx.get(loc.replace("X-Amz-Signature=", "X-Amz-Signature=0"))
    assert r.status_code == 403 and "<Error><Code>" in r.text
    expired = shared_sim.presign(e["id"], e["export_format"], now=time.time() - 7200, ttl=3600)
    r = httpx.get(expired)
    assert r.status_code == 403 and "<Code>AccessDenied</Code>" in r.text and "expired" in r.text
    r = httpx.head(loc)
    assert r.status_code == 200 and int(r.headers["Content-Length"]) == len(shared_sim.dataset.export_content(e["id"]))


def test_content_formats_are_real(shared_sim):
    import openpyxl

    ds = shared_sim.dataset
    by_fmt: dict = {}
    for e in ds.exports(1):
        if e["has_content"]:
            by_fmt.setdefault(e["export_format"], []).append(e)
    for e in by_fmt["text/csv"]:
        data = ds.export_content(e["id"])
        rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))
        assert 5 <= len(rows) and rows[0].keys()
        assert b"\r\n" not in data.split(b"\n")[0] + b"\n"
    for e in by_fmt["application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"]:
        wb = openpyxl.load_workbook(io.BytesIO(ds.export_content(e["id"])))
        ws = wb.active
        assert ws.max_row >= 6 and all(isinstance(v, str) for v in next(ws.iter_rows(values_only=True)))
    for e in by_fmt["image/png"]:
        png = ds.export_content(e["id"])
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        length, tag = struct.unpack(">I4s", png[8:16])
        assert tag == b"IHDR" and length == 13
        crc = struct.unpack(">I", png[16 + 13:16 + 17])[0]
        assert crc == zlib.crc32(png[12:16 + 13]) & 0xFFFFFFFF
        assert png.endswith(b"IEND\xaeB`\x82")


def test_direct_content_mode(sim_factory):
    sim = sim_factory(groups_per_type=(10,), content_mode="direct")
    e = next(e for e in sim.dataset.exports(1) if e["has_content"] and e["export_format"] == "text/csv")
    with _client(sim) as c:
        r = c.get(f"/api/projects/1/exports/{e['id']}/content/?download=true", follow_redirects=False)
        assert r.status_code == 200 and r.headers["Content-Type"] == "text/csv"
        assert r.headers["Cache-Control"] == "max-age=86400"
        assert r.headers["Content-Disposition"] == f'attachment; filename="{e["filename"]}"'
        assert r.content == sim.dataset.export_content(e["id"])


def test_export_create_and_polling(sim_factory):
    sim = sim_factory(groups_per_type=(10,), n_exports=5, other_user_exports=1,
                      extra_keys={"phx_no_query": (1, ("export:write",))})
    ds = sim.dataset
    with _client(sim) as c:
        r = c.post("/api/projects/1/exports/", json={"export_format": "image/jpeg", "insight": 101})
        assert r.status_code == 400 and r.json() == {"type": "validation_error", "code": "invalid_choice",
                                                     "detail": '"image/jpeg" is not a valid choice.',
                                                     "attr": "export_format"}
        r = c.post("/api/projects/1/exports/", json={"export_format": "application/x-ndjson", "insight": 101})
        assert r.json()["code"] == "invalid_choice"
        r = c.post("/api/projects/1/exports/", json={"export_format": "text/csv"})
        assert r.json() == {"type": "validation_error", "code": "invalid_input", "attr": None,
                            "detail": "Either dashboard, insight or export_context is required for an export."}
        r = c.post("/api/projects/1/exports/", json={"export_format": "image/png", "dashboard": 54321})
        assert r.json() == {"type": "validation_error", "code": "does_not_exist", "attr": "dashboard",
                            "detail": 'Invalid pk "54321" - object does not exist.'}
        r = c.post("/api/projects/1/exports/", json={
            "export_format": "text/csv", "export_context": {"source": {"kind": "HogQLQuery", "query": "select 1"},
                                                            "filename": "My Report"}})
        assert r.status_code == 201
        csv_exp = r.json()
        assert csv_exp["has_content"] is True and csv_exp["exception"] is None
        assert csv_exp["filename"].startswith("my-report-") and csv_exp["filename"].endswith(".csv")
        assert csv_exp["expires_after"].endswith("T00:00:00Z")
        assert c.get(f"/api/projects/1/exports/{csv_exp['id']}/content/", follow_redirects=True).content == \
            ds.export_content(csv_exp["id"])
        assert csv_exp["id"] == c.get("/api/projects/1/exports/").json()["results"][0]["id"]
        r = c.post("/api/projects/1/exports/", json={"export_format": "application/pdf", "dashboard": 1})
        assert r.status_code == 201 and r.json()["has_content"] is False and r.json()["exception"]
        r = c.post("/api/projects/1/exports/", json={"export_format": "video/webm", "export_context": {
            "session_recording_id": "abc", "mode": "video"}})
        vid = r.json()
        assert r.status_code == 201 and vid["has_content"] is False
        # a faulted poll does not count as a poll
        sim.inject("500", rf"/exports/{vid['id']}/$", times=1)
        assert c.get(f"/api/projects/1/exports/{vid['id']}/").status_code == 500
        states = [c.get(f"/api/projects/1/exports/{vid['id']}/").json()["has_content"] for _ in range(3)]
        assert states == [False, False, True]
        assert c.get(f"/api/projects/1/exports/{vid['id']}/content/", follow_redirects=True).content[:4] == \
            b"\x1a\x45\xdf\xa3"
        # expire_export / set_export_state
        ds.expire_export(csv_exp["id"])
        assert c.get(f"/api/projects/1/exports/{csv_exp['id']}/").status_code == 404
        assert c.get(f"/api/projects/1/exports/{csv_exp['id']}/content/").status_code == 404
        ds.set_export_state(vid["id"], has_content=False, exception="boom")
        assert c.get(f"/api/projects/1/exports/{vid['id']}/").json()["exception"] == "boom"
    with _client(sim, "phx_no_query") as c:
        r = c.post("/api/projects/1/exports/", json={"export_format": "text/csv",
                                                    "export_context": {"source": {"kind": "HogQLQuery"}}})
        assert r.status_code == 403 and r.json()["detail"] == "API key missing required scope 'query:read'"


def test_groups_types_delete(sim_factory):
    sim = sim_factory(groups_per_type=(5, 5))
    with _client(sim) as c:
        assert c.delete("/api/projects/1/groups_types/1/").status_code == 204
        r = c.delete("/api/projects/1/groups_types/1/")
        assert r.status_code == 404 and r.json()["detail"] == "Group type not found"
        assert [t["group_type_index"] for t in c.get("/api/projects/1/groups_types/").json()] == [0]


# ============================================================ rate limiting
def test_rate_limit_429(sim_factory):
    sim = sim_factory(groups_per_type=(10,), rate_limits=((5, 2.0),))
    with _client(sim) as c, httpx.Client(base_url=sim.api_url) as anon:
        for _ in range(3):  # 401s do not consume the budget
            assert anon.get("/api/projects/1/groups_types/").status_code == 403
            assert anon.get("/api/projects/1/exports/").status_code == 401
        codes = [c.get("/api/projects/1/groups_types/").status_code for _ in range(5)]
        assert codes == [200] * 5
        r = c.get("/api/projects/1/groups_types/")
        assert r.status_code == 429
        wait = int(r.headers["Retry-After"])
        assert 1 <= wait <= 2
        unit = "second" if wait == 1 else "seconds"
        assert r.json() == {"type": "throttled_error", "code": "throttled",
                            "detail": f"Request was throttled. Expected available in {wait} {unit}.",
                            "attr": None}
        # storage downloads don't count
        e = next(e for e in sim.dataset.exports(1) if e["has_content"])
        url = sim.presign(e["id"], e["export_format"])
        assert all(httpx.get(url).status_code == 200 for _ in range(3))
        time.sleep(wait + 0.05)
        assert c.get("/api/projects/1/groups_types/").status_code == 200
    assert sim.stats()["throttled_429"] == 1


# ============================================================ faults
def _raw_get(url: str, key: str):
    with httpx.Client(timeout=10) as c:
        return c.get(url, headers={"Authorization": f"Bearer {key}"})


@pytest.mark.parametrize("kind", ALL_FAULT_KINDS)
def test_fault_kinds_observable(sim_factory, kind):
    sim = sim_factory(groups_per_type=(300,), faults=FaultSpec(slow_seconds=0.3))
    url = f"{sim.api_url}/api/projects/1/groups/?group_type_index=0"
    sim.inject(kind, r"/groups/$", times=1)
    t0 = time.monotonic()
    if kind in ("reset_before", "reset_during", "truncate", "bad_length"):
        with pytest.raises(httpx.TransportError):
            _raw_get(url, sim.api_key)
    else:
        r = _raw_get(url, sim.api_key)
        if kind in ("500", "502", "503", "504"):
            assert r.status_code == int(kind) and r.json()["type"] == "server_error"
            assert ("Retry-After" in r.headers) == (kind == "503")
        elif kind == "429":
            assert r.status_code == 429 and r.headers["Retry-After"] == "1"
            assert r.json()["code"] == "throttled"
        elif kind == "429_html":
            assert r.status_code == 429 and "Retry-After" not in r.headers
            assert r.headers["Content-Type"].startswith("text/html")
        elif kind == "empty_200":
            assert r.status_code == 200 and r.content == b""
        elif kind == "bad_json":
            assert r.status_code == 200
            with pytest.raises(json.JSONDecodeError):
                json.loads(r.content)
        elif kind == "slow":
            assert time.monotonic() - t0 >= 0.3 and r.status_code == 200 and len(r.json()["results"]) == 100
    # the next request is served normally, and the fault is in the log and stats
    r = _raw_get(url, sim.api_key)
    assert r.status_code == 200 and r.json()["results"] == list(sim.dataset.iter_groups(0))[:100]
    log = [x for x in sim.request_log if x.server == "api"]
    assert [x.fault for x in log] == [kind, None]
    assert isinstance(log[0], RequestRecord) and log[0].authorization == f"Bearer {sim.api_key}"
    assert sim.stats()["faults"] == {kind: 1}


def test_random_faults_and_storage_faults(sim_factory):
    sim = sim_factory(groups_per_type=(50,), faults=FaultSpec(seed=3, rate=1.0, kinds=("503",),
                                                               path_regex=r"/groups_types"))
    with _client(sim) as c:
        assert all(c.get("/api/projects/1/groups_types/").status_code == 503 for _ in range(3))
        assert c.get("/api/projects/1/groups/?group_type_index=0").status_code == 200
        e = next(e for e in sim.dataset.exports(1) if e["has_content"])
        loc = c.get(f"/api/projects/1/exports/{e['id']}/content/", follow_redirects=False).headers["Location"]
    sim.inject("truncate", r"/exports/", server="storage")
    with pytest.raises(httpx.TransportError):
        httpx.get(loc)
    assert httpx.get(loc).content == sim.dataset.export_content(e["id"])
    stats = sim.stats()
    assert stats["faults"] == {"503": 3, "truncate": 1}
    assert stats["requests"]["groups_types"] == 3 and stats["requests"]["storage"] == 2


# ============================================================ hostile next links
def test_hostile_next_link_modes(sim_factory):
    sim = sim_factory(groups_per_type=(250,))
    base = "/api/projects/1/groups/?group_type_index=0"
    with _client(sim) as c:
        def next_of(url=base):
            return c.get(url).json()["next"]

        normal = next_of()
        assert normal.startswith(sim.api_url + "/api/projects/1/groups/?")
        sim.set_next_link("foreign_origin")
        nxt = next_of()
        assert nxt.startswith(sim.foreign_url + "/api/projects/1/groups/?")
        r = c.get(nxt)  # a naive client leaks its key to the foreign origin
        assert r.json() == {"results": [], "next": None}
        leaked = [x for x in sim.request_log if x.server == "foreign"]
        assert leaked and leaked[-1].authorization == f"Bearer {sim.api_key}"
        sim.set_next_link("other_scheme")
        assert next_of().startswith("ftp://")
        sim.set_next_link("outside_api")
        nxt = next_of()
        assert nxt.startswith(sim.api_url) and "/api/projects/" not in nxt
        sim.set_next_link("loop")
        assert next_of() == sim.api_url + base
        sim.set_next_link("relative")
        assert next_of().startswith("/api/projects/1/groups/?")
        sim.set_next_link("http_downgrade")
        r = c.get(base, headers={"X-Forwarded-Proto": "https"})
        assert r.json()["next"].startswith("http://")
        sim.set_next_link("normal")
        assert next_of() == normal
        with pytest.raises(ValueError):
            sim.set_next_link("bogus")


def test_hostile_dataset(sim_factory):
    sim = sim_factory(groups_per_type=(300, 40), hostile=True, n_exports=12)
    ds = sim.dataset
    with _client(sim) as c:
        for idx in (0, 1):
            _, got = _crawl(c, f"/api/projects/1/groups/?group_type_index={idx}")
            assert got == list(ds.iter_groups(idx))
            keys = {g["group_key"] for g in got}
            assert "'; DROP TABLE groups; --" in keys and any("\n" in k for k in keys)
            assert any(len(k) > 400 for k in keys)
            assert any("new_field_2027" in g for g in got) and any("group_properties" not in g for g in got)
            assert any(isinstance(v, int) and v > 2 ** 63 for g in got for v in g.get("group_properties", {}).values())
            assert any(len(str(v)) >= 100_000 for g in got for v in g.get("group_properties", {}).values())
            tricky = next(g for g in got if g["group_key"] == "line1\nline2")
            r = c.get("/api/projects/1/groups/find/", params={"group_type_index": idx, "group_key": "line1\nline2"})
            assert r.json()["group_key"] == tricky["group_key"]
        types_of_mixed = {type(g["group_properties"]["mixed_type"]).__name__ for g in ds.iter_groups(0)
                          if "mixed_type" in g.get("group_properties", {})}
        assert types_of_mixed == {"int", "str", "dict"}
        defs = {d["name"]: d for d in ds.property_definitions(0)}
        assert defs["mixed_type"]["property_type"] is None
        exports = c.get("/api/projects/1/exports/").json()["results"]
        names = {e["filename"] for e in exports}
        assert {"../../etc/passwd", "/abs/path.csv", "..\\..\\win.csv"} <= names
        assert any("\x00" in n for n in names)
        assert any("new_field_2027" in e for e in exports)
        big = next(e for e in ds.all_exports() if e["_role"] == "large_csv")
        loc = c.get(f"/api/projects/1/exports/{big['id']}/content/", follow_redirects=False).headers["Location"]
        h = hashlib.sha256()
        n = 0
        with httpx.stream("GET", loc) as r:
            assert int(r.headers["Content-Length"]) >= 60 * 1024 * 1024
            for chunk in r.iter_bytes():
                h.update(chunk)
                n += len(chunk)
        assert n == int(r.headers["Content-Length"]) and h.hexdigest() == ds.export_content_sha256(big["id"])


# ============================================================ overlay + legacy modes
def test_insert_group_overlay(sim_factory):
    sim = sim_factory(groups_per_type=(350, 10))
    ds = sim.dataset
    with _client(sim) as c:
        page1 = c.get("/api/projects/1/groups/?group_type_index=0").json()
        g = ds.insert_group(0, "new-org-mid-crawl", {"name": "Fresh Co", "employees": 3})
        assert ds.group_count(0) == 351
        # the crawl in progress continues from its cursor and misses the new group (created_at DESC)
        _, rest = _crawl(c, page1["next"])
        assert g not in rest and len(page1["results"]) + len(rest) == 350
        # a new crawl sees it first
        _, all_groups = _crawl(c, "/api/projects/1/groups/?group_type_index=0")
        assert all_groups[0] == _listed(g) and all_groups == list(ds.iter_groups(0))
        # inserted in the middle by created_at
        mid = list(ds.iter_groups(0))[200]
        g2 = ds.insert_group(0, "zzz-tie", {"x": 1}, created_at=mid["created_at"])
        order = [x["group_key"] for x in ds.iter_groups(0)]
        listed = list(ds.iter_groups(0))
        pos = order.index("zzz-tie")
        assert pos < order.index(mid["group_key"])  # same created_at, larger key -> earlier
        assert listed[pos - 1]["created_at"] != mid["created_at"] and listed[pos + 1]["created_at"] == mid["created_at"]
        _, again = _crawl(c, "/api/projects/1/groups/?group_type_index=0")
        assert again == list(ds.iter_groups(0)) and _listed(g2) in again
        r = c.get("/api/projects/1/groups/find/", params={"group_type_index": 0, "group_key": "new-org-mid-crawl"})
        assert r.json()["group_properties"] == {"name": "Fresh Co", "employees": 3}
        r = c.post("/api/projects/1/groups/", json={"group_type_index": 1, "group_key": "posted",
                                                   "group_properties": {"a": 1}})
        assert r.status_code == 201 and ds.get_group(1, "posted")["group_properties"] == {"a": 1}
        r = c.post("/api/projects/1/groups/", json={"group_type_index": 1, "group_key": "posted"})
        assert r.status_code == 400 and r.json()["attr"] == "detail"
        # PostHog's STRICT_JSON is False: NaN/Infinity in a body are read and stored; orjson
        # renders them as null
        r = c.post("/api/projects/1/groups/", content=b'{"group_type_index": 1, "group_key": "nan", '
                   b'"group_properties": {"x": NaN, "y": -Infinity}}',
                   headers={"Content-Type": "application/json"})
        assert r.status_code == 201 and r.json()["group_properties"] == {"x": None, "y": None}
        assert math.isnan(ds.get_group(1, "nan")["group_properties"]["x"])


def test_legacy_modes(sim_factory):
    sim = sim_factory(groups_per_type=(60, 20), explicit_members="legacy", property_definitions="legacy")
    with _client(sim) as c:
        r = c.get("/api/projects/1/groups/property_definitions/")
        body = r.json()
        assert r.status_code == 200 and set(body) == {"0", "1"}
        assert body["0"][0]["name"] == "name" and body["0"][0]["count"] == 60
        assert body["0"] == sorted(body["0"], key=lambda x: (-x["count"], x["name"]))
        r = c.get("/api/projects/1/property_definitions/?type=group&group_type_index=0")
        assert r.status_code == 404 and r.json()["detail"] == "Endpoint not found."
        members = c.get("/api/projects/1/explicit_members/").json()
        assert isinstance(members, list) and members
        assert {"id", "level", "parent_level", "parent_membership_id", "joined_at", "updated_at", "user",
                "effective_level"} == set(members[0])
        uid = members[0]["user"]["uuid"]
        assert c.delete(f"/api/projects/1/explicit_members/{uid}/").status_code == 204
        assert c.delete(f"/api/projects/1/explicit_members/{uid}/").status_code == 404
        assert len(c.get("/api/projects/1/explicit_members/").json()) == len(members) - 1
    current = sim_factory(groups_per_type=(5,))
    with _client(current) as c:
        r = c.get("/api/projects/1/explicit_members/")
        assert r.status_code == 404 and r.json()["detail"] == "Endpoint not found."


# ============================================================ misc
def test_request_log_and_stats(sim_factory):
    sim = sim_factory(groups_per_type=(5,))
    with _client(sim) as c:
        c.get("/api/projects/1/groups_types/")
        c.get("/api/projects/1/groups/?group_type_index=0&search=x")
    log = sim.request_log
    assert [(x.server, x.method, x.path, x.query, x.status) for x in log] == [
        ("api", "GET", "/api/projects/1/groups_types/", "", 200),
        ("api", "GET", "/api/projects/1/groups/", "group_type_index=0&search=x", 200)]
    assert all(x.bytes_sent > 0 for x in log)
    log.clear()  # a copy
    assert len(sim.request_log) == 2
    sim.clear_log()
    assert sim.request_log == []
    assert sim.stats()["requests"] == {"groups_types": 1, "groups": 1}


def test_cli_starts_and_prints_env(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "posthog_sim", "--port", "0", "--groups", "30", "--types", "2",
                             "--exports", "3", "--rate-limit", "0"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": ROOT})
    try:
        lines = {}
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and "POSTHOG_PERSONAL_API_KEY" not in lines:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("export "):
                k, _, v = line[len("export "):].strip().partition("=")
                lines[k] = v
        assert lines["POSTHOG_PROJECT_ID"] == "1"
        r = httpx.get(f"{lines['POSTHOG_HOST']}/api/projects/1/groups_types/",
                      headers={"Authorization": f"Bearer {lines['POSTHOG_PERSONAL_API_KEY']}"})
        assert [t["group_type_index"] for t in r.json()] == [0, 1]
        r = httpx.get(f"{lines['POSTHOG_HOST']}/api/projects/1/groups/?group_type_index=1",
                      headers={"Authorization": f"Bearer {lines['POSTHOG_PERSONAL_API_KEY']}"})
        assert len(r.json()["results"]) == 15
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_keep_alive_throughput(sim_factory):
    sim = sim_factory(groups_per_type=(20_000,))
    with _client(sim) as c:
        t0 = time.monotonic()
        pages, _ = _crawl(c, "/api/projects/1/groups/?group_type_index=0")
        elapsed = time.monotonic() - t0
    assert len(pages) == 200
    assert len(pages) / elapsed > 50  # conservative floor; typically 150-300 pages/s
    assert sim.stats()["requests"]["groups"] == 200


def test_concurrent_property_value_requests_scan_the_groups_once(monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from posthog_sim import Dataset, DatasetSpec

    ds = Dataset(DatasetSpec(seed=3, groups_per_type=(3000,), n_exports=0))
    scans = []
    original = ds.iter_groups
    monkeypatch.setattr(ds, "iter_groups", lambda i: scans.append(i) or original(i))
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: ds.property_values(0, "industry"), range(8)))
    assert scans == [0]
    assert all(r == results[0] for r in results) and results[0]


def test_dumps_renders_as_posthogs_orjson_renderer():
    from posthog_sim.server import dumps
    value = {"u64": 2 ** 64 - 1, "i64": -(2 ** 63), "small": [1e-05, 5e-07, 1e-10, 0.0001, -0.0, 1e16],
             "sep": "line\u2028sep\u2029", "ctrl": "\x00\x1f", "emoji": "🧨", "nan": float("nan")}
    text = dumps(value)
    assert "line\u2028sep\u2029".encode() in text  # unescaped, as orjson writes it
    assert b'"small":[0.00001,5e-7,1e-10,0.0001,-0.0,1e+16]' in text and b'"nan":null' in text
    assert json.loads(text) == {**value, "nan": None}
    for unrenderable in (2 ** 64, -(2 ** 63) - 1, {1: "int key"}):
        with pytest.raises(TypeError):
            dumps({"v": unrenderable})


def test_groups_page_with_an_integer_posthog_cannot_render_is_a_500_every_time(sim_factory):
    sim = sim_factory(groups_per_type=(5,), n_exports=0)
    with _client(sim) as c:
        # stored (Postgres and ClickHouse hold it), but even the create's answer cannot render it
        r = c.post("/api/projects/1/groups/", json={"group_type_index": 0, "group_key": "huge",
                                                   "group_properties": {"n": 2 ** 64}})
        assert r.status_code == 500 and sim.dataset.get_group(0, "huge") is not None
        for _ in range(3):
            r = c.get("/api/projects/1/groups/", params={"group_type_index": 0})
            assert r.status_code == 500
            assert r.json() == {"type": "server_error", "code": "error",
                                "detail": "A server error occurred.", "attr": None}


def test_precomputed_property_values_are_the_counts_a_first_request_computes():
    from posthog_sim import Dataset, DatasetSpec

    spec = DatasetSpec(seed=3, groups_per_type=(500, 40), n_exports=0)
    warm, cold = Dataset(spec, now=1.8e9), Dataset(spec, now=1.8e9)
    warm.precompute_property_values()
    assert set(warm._pv_cache) == {0, 1} and not cold._pv_cache
    for i in (0, 1):
        for key in ("industry", "name", "plan", "missing"):
            assert warm.property_values(i, key) == cold.property_values(i, key)


# ============================================================ dataset (JSON Lines) exports
def test_dataset_export_content_redirects_to_a_path_on_the_api(sim_factory):
    sim = sim_factory(groups_per_type=(1,), n_exports=3, dataset_exports=2,
                      extra_keys={"phx_export_only": (1, ("export:read",))})
    listed = sim.dataset.exports(1)
    jsonl = [e for e in listed if e["export_format"] == "application/x-ndjson"]
    assert len(jsonl) == 2 and all(e["has_content"] for e in jsonl)  # listed: created_by the user
    e = jsonl[0]
    with _client(sim) as c:
        assert c.get(f"/api/projects/1/exports/{e['id']}/").status_code == 404  # not retrievable
        r = c.get(f"/api/projects/1/exports/{e['id']}/content/", follow_redirects=False)
        assert r.status_code == 302
        loc = r.headers["Location"]
        assert loc == (f"/api/projects/1/datasets/{e['export_context']['dataset_id']}"
                       f"/exports/{e['id']}/content")
        body = c.get(loc)
        assert body.status_code == 200
        assert body.headers["Content-Type"] == "application/x-ndjson"
        rows = [json.loads(line) for line in body.content.decode().splitlines()]
        assert len(rows) == 12 and all("input" in row for row in rows)
        assert body.content == sim.dataset.export_content(e["id"])
        # the target checks the dataset id and needs a key like any API path
        assert c.get(loc.replace(e["export_context"]["dataset_id"], "x")).status_code == 404
    with httpx.Client(base_url=sim.api_url) as anon:
        assert anon.get(loc).status_code == 401
    with _client(sim, "phx_export_only") as scoped:
        r = scoped.get(loc)
        assert r.status_code == 403 and "dataset:read" in r.json()["detail"]


# ============================================================ @current
def test_current_alias_carries_deprecation_headers_and_resolves(sim_factory):
    sim = sim_factory(groups_per_type=(1,), n_exports=1,
                      extra_keys={"phx_groups_only": (1, ("group:read",))})
    with _client(sim) as c:
        r = c.get("/api/projects/@current/groups_types/")
        assert r.status_code == 200
        assert r.headers["Deprecation"] == "true"
        assert r.headers["Sunset"] == "Fri, 30 Apr 2027 00:00:00 GMT"
        assert r.headers["Link"] == '</api/projects/1/groups_types/>; rel="successor-version"'
        project = c.get("/api/projects/@current/")
        assert project.status_code == 200 and project.json()["id"] == 1
        numeric = c.get("/api/projects/1/groups_types/")
        assert "Deprecation" not in numeric.headers and "Sunset" not in numeric.headers
    with _client(sim, "phx_groups_only") as scoped:
        r = scoped.get("/api/projects/@current/")
        assert r.status_code == 403
        assert r.json()["detail"] == "API key missing required scope 'project:read'"


# ============================================================ scoped keys
def test_issued_keys_have_exactly_their_scopes_per_endpoint(sim_factory):
    sim = sim_factory(groups_per_type=(2,), n_exports=3)
    expected = {
        # path: scope PostHog's viewsets ask for (scope_object + read/write by action)
        "/api/projects/1/groups_types/": "group:read",
        "/api/projects/1/groups/?group_type_index=0": "group:read",
        "/api/projects/1/groups/property_values/?group_type_index=0&key=industry": "group:read",
        "/api/projects/1/property_definitions/?type=group&group_type_index=0":
            "property_definition:read",
        "/api/projects/1/exports/": "export:read",
        "/api/projects/1/": "project:read",
    }
    for path, scope in expected.items():
        denied = sim.issue_key([sc for sc in ("group:read", "property_definition:read",
                                              "export:read", "project:read") if sc != scope])
        with _client(sim, denied) as c:
            r = c.get(path)
            assert r.status_code == 403, path
            assert r.json()["detail"] == f"API key missing required scope '{scope}'"
        with _client(sim, sim.issue_key([scope])) as c:
            assert c.get(path).status_code == 200, path
        write = scope.replace(":read", ":write")  # :write implies :read
        with _client(sim, sim.issue_key([write])) as c:
            assert c.get(path).status_code == 200, path
    with _client(sim, sim.issue_key(["export:read"])) as c:
        r = c.post("/api/projects/1/exports/", json={"export_format": "image/png", "insight": 1})
        assert r.status_code == 403 and "export:write" in r.json()["detail"]
    with pytest.raises(ValueError):
        sim.issue_key(["group"])
    assert sim.keys[sim.api_key][1] == ("*",)  # the demo's default key keeps every scope


# ============================================================ property values as PostHog names them
def test_property_values_are_json_text_counted_over_every_group(sim_factory):
    sim = sim_factory(groups_per_type=(20_100,), n_exports=0)
    groups = list(sim.dataset.iter_groups(0))

    def text(v) -> str:  # JSONExtractRaw, the enclosing quotes of a string trimmed
        raw = json.dumps(v, ensure_ascii=False, separators=(",", ":"))
        return raw[1:-1] if isinstance(v, str) else raw

    with _client(sim) as c:
        for key in [d["name"] for d in sim.dataset.property_definitions(0)]:
            counts: dict[str, int] = {}
            for g in groups:
                v = g["group_properties"].get(key)
                if v is not None:
                    counts[text(v)] = counts.get(text(v), 0) + 1
            want = sorted(counts.items(), key=lambda nc: (-nc[1], nc[0]))[:20]
            got = c.get("/api/projects/1/groups/property_values/",
                        params={"group_type_index": 0, "key": key}).json()["results"]
            assert [(r["name"], r["count"]) for r in got] == want, key
        best = c.get("/api/projects/1/groups/property_values/",
                     params={"group_type_index": 0, "key": "name", "value": "best"}).json()["results"]
        assert best and all(r["name"].startswith('The \\"Best\\" Co') for r in best)


def test_group_property_definitions_end_with_posthogs_virtual_properties(sim_factory):
    sim = sim_factory(groups_per_type=(10,), n_exports=0)
    stored = sim.dataset.property_definitions(0)
    with _client(sim) as c:
        got, url = [], "/api/projects/1/property_definitions/?type=group&group_type_index=0&limit=5"
        while url:
            body = c.get(url).json()
            assert body["count"] == len(stored) + 2
            got.extend(body["results"])
            url = body["next"]
    assert got[:-2] == stored
    assert [(d["name"], d["id"], d["virtual"], d["is_numerical"]) for d in got[-2:]] == [
        ("$virt_revenue", "$builtin_$virt_revenue", True, True),
        ("$virt_revenue_last_30_days", "$builtin_$virt_revenue_last_30_days", True, True)]


# ============================================================ smaller PostHog behaviours (issue 15 #7)
def test_video_export_without_a_session_recording_is_a_400(shared_sim, client):
    for fmt in ("video/mp4", "video/webm", "image/gif"):
        r = client.post("/api/projects/1/exports/", json={"export_format": fmt, "dashboard": 1,
                                                          "export_context": {"path": "/x"}})
        assert r.status_code == 400 and r.json() == {
            "type": "validation_error", "code": "invalid_input",
            "detail": "Video export supports session recordings only.", "attr": "export_format"}


def test_oauth_access_token_is_an_invalid_access_token(shared_sim):
    with _client(shared_sim, key="pha_someoauthtoken") as c:
        r = c.get("/api/projects/1/groups_types/")
    assert r.status_code == 401 and r.json()["detail"] == "Invalid access token."


def test_groups_cursor_without_padding_or_position_restarts_at_page_1(shared_sim, client):
    first = client.get("/api/projects/1/groups/", params={"group_type_index": 0}).json()
    last = first["results"][-1]
    padded = encode_cursor(_us(last["created_at"]), last["group_key"])
    assert padded.endswith("=") or len(padded) % 4 == 0
    unpadded = padded.rstrip("=")
    cases = [encode_cursor(0, last["group_key"]), encode_cursor(-5, last["group_key"])]
    if unpadded != padded:
        cases.append(unpadded)
    for cursor in cases:
        r = client.get("/api/projects/1/groups/", params={"group_type_index": 0, "cursor": cursor}).json()
        assert r["results"] == first["results"], cursor
    assert client.get("/api/projects/1/groups/", params={"group_type_index": 0, "cursor": padded}
                      ).json()["results"][0] != first["results"][0]


def test_property_definitions_without_group_type_index_is_posthogs_error(shared_sim, client):
    for params in ({"type": "group"}, {"type": "group", "group_type_index": "x"},
                   {"type": "group", "group_type_index": "7"}):
        r = client.get("/api/projects/1/property_definitions/", params=params)
        assert r.status_code == 400 and r.json() == {
            "type": "validation_error", "code": "invalid",
            "detail": "group_type_index is required to be at least 0 and less than 5", "attr": None}


def test_groups_search_matches_compact_json(shared_sim, client):
    g = next(g for g in shared_sim.dataset.iter_groups(0) if "industry" in g["group_properties"])
    compact = f'"industry":"{g["group_properties"]["industry"]}"'
    r = client.get("/api/projects/1/groups/", params={"group_type_index": 0, "search": compact}).json()
    assert r["results"] and all(compact in json.dumps(x["group_properties"], separators=(",", ":"))
                                for x in r["results"])
    spaced = compact.replace(":", ": ")
    r = client.get("/api/projects/1/groups/", params={"group_type_index": 0, "search": spaced}).json()
    assert r["results"] == []


def test_content_download_and_direct_accept_only_true(sim_factory):
    sim = sim_factory(groups_per_type=(1,), n_exports=12, content_mode="direct")
    png = next(e for e in sim.dataset.exports(1) if e["export_format"] == "image/png" and e["has_content"])
    with _client(sim) as c:
        for value, attached in (("true", True), ("1", False), ("yes", False), ("True", False)):
            r = c.get(f"/api/projects/1/exports/{png['id']}/content/", params={"download": value})
            assert r.status_code == 200
            assert ("Content-Disposition" in r.headers) is attached, value


def test_throttle_without_a_wait_has_no_retry_after():
    from posthog_sim.server import throttled_response

    r = throttled_response(None, "groups/")
    assert json.loads(r.body)["detail"] == "Request was throttled."
    assert not [h for h, _ in r.headers if h.lower() == "retry-after"]


def test_groups_find_creates_a_notebook_unless_told_not_to(sim_factory):
    sim = sim_factory(groups_per_type=(5,), n_exports=0)
    key = next(sim.dataset.iter_groups(0))["group_key"]
    with _client(sim) as c:
        def find(**extra):
            return c.get("/api/projects/1/groups/find/",
                         params={"group_type_index": 0, "group_key": key, **extra}).json()["notebook"]
        assert find(skip_create_notebook="true") is None
        made = find()
        assert isinstance(made, str) and made
        assert find() == made and find(skip_create_notebook="true") == made


def test_environments_404_is_deprecated_only_where_projects_has_the_route(shared_sim, client):
    known = client.get("/api/environments/1/exports/999999/")
    assert known.status_code == 404 and known.headers.get("Deprecation") == "true"
    missing = client.get("/api/environments/1/no_such_thing/")
    assert missing.status_code == 404 and missing.json()["detail"] == "Endpoint not found."
    assert "Deprecation" not in missing.headers and "Sunset" not in missing.headers


def test_sim_stats_endpoint_serves_its_counters_after_requests(sim_factory):
    """GET /_sim/stats (benchmarks read it) answers after requests were served: its counters
    are keyed by status code, which PostHog's renderer (orjson, str keys only) refuses."""
    import httpx

    sim = sim_factory(groups_per_type=(10,), n_exports=1)
    httpx.get(f"{sim.api_url}/api/projects/{sim.project_id}/groups_types/",
              headers={"Authorization": f"Bearer {sim.api_key}"}, timeout=10)
    stats = httpx.get(f"{sim.api_url}/_sim/stats", timeout=10).json()
    assert stats["by_status"] == {"200": 1}
