"""HTTP servers (API, storage, foreign) and the Simulator facade."""
from __future__ import annotations

import base64
import calendar
import binascii
import hashlib
import hmac
import http
import json
import math
import os
import random
import re
import socket
import struct
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import orjson

from . import content as C
from . import query as _query
from .config import ALL_FAULT_KINDS, NEXT_LINK_MODES, RequestRecord, SimConfig
from .dataset import Dataset

SUNSET = "Fri, 31 Jul 2026 00:00:00 GMT"
CURRENT_SUNSET = "Fri, 30 Apr 2027 00:00:00 GMT"
PAGE_SIZE = 100
EXPORT_FORMATS = (C.PNG, C.PDF, C.CSV, C.XLSX, C.WEBM, C.MP4, C.GIF, C.JSON_FMT, C.JSONL)
_GROUPS_TYPES_CUSTOM = ("update_metadata", "create_detail_dashboard", "set_default_columns")
# simulator-only stats endpoint (outside /api/, so it can never collide with PostHog's API)
SIM_STATS_PATH = "/_sim/stats"


# ====================================================================== helpers
def dumps(obj: Any) -> bytes:
    """PostHog's renderer: `orjson.dumps(data, option=orjson.OPT_UTC_Z)` (SafeJSONRenderer,
    posthog/renderers.py). Compact, UTF-8, U+2028/U+2029 unescaped, floats as orjson spells them
    (`1e-7`, `0.00001`), NaN and Infinity as null. An integer outside [-2^63, 2^64) raises
    (orjson.JSONEncodeError, a TypeError): PostHog answers that page with a 500, every time."""
    return orjson.dumps(obj, option=orjson.OPT_UTC_Z)


# PostHog ends every group type's property definitions with its built-in virtual properties
# (revenue analytics), `"virtual": true`, counted in `count` (posthog-api.md §11, autumn 2026;
# the id spelling `$builtin_<name>` is the issue's, not read in PostHog's source)
_VIRTUAL_GROUP_PROPERTIES = ("$virt_revenue", "$virt_revenue_last_30_days")


def virtual_group_properties() -> list[dict]:
    return [{"id": f"$builtin_{name}", "name": name, "is_numerical": True,
             "property_type": "Numeric", "tags": [], "is_seen_on_filtered_events": None,
             "updated_at": None, "verified": False, "virtual": True}
            for name in _VIRTUAL_GROUP_PROPERTIES]


def loads_body(raw: bytes) -> Any:
    """DRF's JSONParser as PostHog configures it: STRICT_JSON is False (posthog/settings/web.py,
    REST_FRAMEWORK), so NaN and Infinity in a body are read, not refused."""
    return json.loads(raw)


def err_body(type_: str, code: str, detail: str, attr: str | None = None) -> dict:
    return {"type": type_, "code": code, "detail": detail, "attr": attr}


def encode_cursor(created_us: int, key: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"c": created_us, "k": key}).encode()).decode()


def decode_cursor(raw: str | None) -> tuple[int, str] | None:
    """PostHog rules (`_decode_groups_cursor`, ee/clickhouse/views/groups.py): anything
    undecodable (base64 without its '=' padding too: `urlsafe_b64decode(cursor)` as given) or in
    the old {"c","i"} format -> page 1 (None); c <= 0 is no position, so page 1 as well."""
    if not raw:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(raw).decode("utf-8"))
        if not isinstance(data, dict) or "k" not in data or "c" not in data:
            return None
        c, k = data["c"], data["k"]
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not isinstance(k, str):
            return None
        c = int(c)
        if c <= 0:
            return None
        if c < 10**15:
            c *= 1000
        return c, k
    except (ValueError, binascii.Error, UnicodeDecodeError, TypeError, OverflowError):
        return None


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str | None = "application/json"
    stream: Iterable[bytes] | None = None
    length: int | None = None  # for streams
    endpoint: str = "unknown"


def json_response(status: int, obj: Any, endpoint: str = "unknown", headers=None) -> Response:
    return Response(status, dumps(obj), list(headers or []), "application/json", endpoint=endpoint)


def error(status: int, type_: str, code: str, detail: str, attr: str | None = None, endpoint: str = "unknown",
          headers=None) -> Response:
    return json_response(status, err_body(type_, code, detail, attr), endpoint, headers)


def not_found(detail: str = "Not found.", endpoint: str = "unknown") -> Response:
    return error(404, "invalid_request", "not_found", detail, None, endpoint)


def endpoint_not_found() -> Response:
    return not_found("Endpoint not found.", "unknown")


_ENDPOINT_NOT_FOUND = endpoint_not_found().body


def validation(detail: str, attr: str | None, code: str = "invalid_input", endpoint: str = "unknown") -> Response:
    return error(400, "validation_error", code, detail, attr, endpoint)


def s3_error(status: int, code: str, message: str, resource: str = "") -> Response:
    rid = hashlib.md5(f"{code}{time.time()}".encode()).hexdigest()[:16].upper()
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<Resource>{resource}</Resource><RequestId>{rid}</RequestId></Error>").encode()
    return Response(status, body, [("x-amz-request-id", rid)], "application/xml", endpoint="storage")


# ====================================================================== throttling
NO_WAIT = -1.0  # throttled, and DRF's wait() is None


class RateLimiter:
    """DRF SimpleRateThrottle semantics, one history per (key, window)."""

    def __init__(self, limits: tuple[tuple[int, float], ...]):
        self.limits = tuple(limits or ())
        self._hist: dict[tuple[str, int], deque] = {}
        self._lock = threading.Lock()

    def check(self, ident: str) -> float | None:
        """Record the request; return None if allowed, else the wait in seconds (max over refusing
        windows), NO_WAIT when every refusing window's wait() is None."""
        if not self.limits:
            return None
        waits = []
        with self._lock:
            now = time.monotonic()
            for n, (count, duration) in enumerate(self.limits):
                hist = self._hist.setdefault((ident, n), deque())
                while hist and hist[-1] <= now - duration:
                    hist.pop()
                if len(hist) >= count:
                    remaining = duration - (now - hist[-1]) if hist else duration
                    available = count - len(hist) + 1
                    if available > 0:
                        waits.append(remaining / available)
                    else:
                        waits.append(None)
                else:
                    hist.appendleft(now)
        if not waits:
            return None
        real = [w for w in waits if w is not None]
        return max(real) if real else NO_WAIT

    def reset(self) -> None:
        with self._lock:
            self._hist.clear()


def throttled_response(wait: float | None, endpoint: str) -> Response:
    """DRF's Throttled: with no wait (a throttle whose wait() is None: more requests in its
    history than its rate allows) the detail is only "Request was throttled." and no Retry-After
    is sent (rest_framework/exceptions.py Throttled, rest_framework/views.py exception_handler)."""
    if wait is None:
        return error(429, "throttled_error", "throttled", "Request was throttled.", None, endpoint)
    w = math.ceil(wait)
    detail = f"Request was throttled. Expected available in {w} second{'' if w == 1 else 's'}."
    return error(429, "throttled_error", "throttled", detail, None, endpoint, [("Retry-After", "%d" % w)])


# ====================================================================== faults
class _FaultAbort(Exception):
    pass


# ====================================================================== API application
@dataclass
class Ctx:
    method: str
    path: str
    query: str
    params: dict
    headers: Any
    body: bytes
    host: str
    prefix: str  # "projects" | "environments"
    pid_raw: str
    rest: list[str]
    user_id: int = 0
    key: str | None = None
    scopes: tuple = ()


class ApiApp:
    def __init__(self, sim: "Simulator"):
        self.sim = sim
        self.cfg: SimConfig = sim.cfg
        # the dataset of the project a request names, per request thread (set by _route)
        self._request = threading.local()
        self._page_cache: OrderedDict = OrderedDict()
        self._page_lock = threading.Lock()

    # -------------------------------------------------------------- top-level
    def handle(self, method: str, path: str, query: str, headers, body: bytes, host: str) -> Response:
        self._request.ds = None  # a keep-alive thread's previous request named its own project
        if not path.startswith("/api/") and path != "/api":
            r = Response(404, b"<!doctype html><title>Not Found</title><h1>Not Found</h1>"
                              b"<p>The requested resource was not found on this server.</p>",
                         content_type="text/html; charset=utf-8", endpoint="non_api")
            return r
        m = re.match(r"^/api/(projects|environments)/([^/]+)(?:/(.*))?$", path)
        if not m:
            return endpoint_not_found()
        prefix, pid_raw, rest = m.group(1), m.group(2), (m.group(3) or "")
        segs = [s for s in rest.split("/") if s != ""] if rest else []
        params = dict(parse_qsl(query, keep_blank_values=True))
        ctx = Ctx(method, path, query, params, headers, body, host, prefix, pid_raw, segs)
        resp = self._route(ctx)
        if pid_raw == "@current" and prefix == "projects":
            # '@current' in paths is deprecated and stops working on 2027-04-30 (posthog-api.md
            # §11, autumn 2026 readings; the header values mirror the environments rewrite's,
            # posthog/settings/web.py API_ENVIRONMENTS_SUNSET_DATE; not confirmed in source)
            succ = f"/api/projects/{self.sim.project_id}/" + rest + ("?" + query if query else "")
            resp.headers += [("Deprecation", "true"),
                             ("Link", f'<{succ}>; rel="successor-version"'),
                             ("Sunset", CURRENT_SUNSET)]
        # the environments rewrite marks a request deprecated only where /api/projects/ has the
        # same route (posthog/api/__init__.py, the environments rewrite middleware; header values
        # not confirmed in source): a route neither has is a bare 404
        if prefix == "environments" and not (resp.status == 404 and resp.body == _ENDPOINT_NOT_FOUND):
            succ = "/api/projects/" + pid_raw + "/" + rest
            if query:
                succ += "?" + query
            resp.headers += [("Deprecation", "true"), ("Link", f'<{succ}>; rel="successor-version"'),
                             ("Sunset", SUNSET)]
        return resp

    def _route(self, ctx: Ctx) -> Response:
        s = ctx.rest
        n = len(s)
        pd_mode = self.cfg.property_definitions
        route: tuple | None = None  # (endpoint, {method: scope}, handler, quirk403)
        if n == 0 and ctx.prefix == "projects":
            # ProjectViewSet: scope_object = "project"; retrieve of '@current' answers the key
            # owner's current project (posthog/api/project.py, safely_get_object)
            route = ("projects/:id", {"GET": "project:read"}, self.project_retrieve, False)
        elif n == 1 and s[0] == "groups_types":
            route = ("groups_types", {"GET": "group:read"}, self.groups_types, True)
        elif n == 2 and s[0] == "groups_types" and s[1] in _GROUPS_TYPES_CUSTOM:
            meth = "PATCH" if s[1] == "update_metadata" else "PUT"
            route = ("groups_types/" + s[1], {meth: None}, self.groups_types_custom, True)
        elif n == 2 and s[0] == "groups_types":
            route = ("groups_types/:idx", {"DELETE": "group:write"}, self.groups_types_delete, False)
        elif n == 1 and s[0] == "groups":
            route = ("groups", {"GET": "group:read", "POST": "group:write"}, self.groups, False)
        elif n == 2 and s[0] == "groups" and s[1] == "find":
            route = ("groups/find", {"GET": "group:read"}, self.groups_find, False)
        elif n == 2 and s[0] == "groups" and s[1] == "property_values":
            route = ("groups/property_values", {"GET": "group:read"}, self.groups_property_values, False)
        elif n == 2 and s[0] == "groups" and s[1] == "property_definitions" and pd_mode == "legacy":
            route = ("groups/property_definitions", {"GET": "group:read"}, self.groups_property_definitions, False)
        elif n == 1 and s[0] == "property_definitions" and pd_mode == "current":
            # PropertyDefinitionViewSet: scope_object = "property_definition"
            # (posthog/api/property_definition.py)
            route = ("property_definitions", {"GET": "property_definition:read"}, self.property_definitions, False)
        elif n == 1 and s[0] == "exports":
            route = ("exports", {"GET": "export:read", "POST": "export:write"}, self.exports, False)
        elif n == 2 and s[0] == "exports":
            route = ("exports/:id", {"GET": "export:read"}, self.export_retrieve, False)
        elif n == 3 and s[0] == "exports" and s[2] == "content":
            route = ("exports/:id/content", {"GET": "export:read"}, self.export_content, False)
        elif n == 5 and s[0] == "datasets" and s[2] == "exports" and s[4] == "content":
            # DatasetViewSet has scope_object = "dataset"
            # (products/llm_analytics/backend/api/datasets.py); the export-content action itself
            # was not in the source read, so its scope is this guess.
            route = ("datasets/:id/exports/:id/content", {"GET": "dataset:read"},
                     self.dataset_export_content, False)
        elif n == 1 and s[0] == "query":
            # QueryViewSet: scope_object = "query" (posthog/api/query.py); its own throttle
            # bucket below; the HogQL shapes it serves are in posthog_sim/query.py
            route = ("query", {"POST": "query:read"}, self.query, False)
        elif s and s[0] == "explicit_members" and n <= 2 and self.cfg.explicit_members == "legacy":
            if n == 1:
                route = ("explicit_members", {"GET": "project:read", "POST": "project:write"},
                         self.explicit_members, False)
            else:
                route = ("explicit_members/:uuid", {"GET": "project:read", "DELETE": "project:write",
                                                    "PATCH": "project:write", "PUT": "project:write"},
                         self.explicit_member, False)
        if route is None:
            return endpoint_not_found()
        endpoint, methods, handler, quirk = route
        # ---- authentication
        key, source = self._find_key(ctx)
        auth_status = 403 if quirk else 401
        auth_headers = [] if quirk else [
            ("WWW-Authenticate", f'Bearer resource_metadata="{self.sim.api_url}/.well-known/oauth-protected-resource"')]
        if key is None:
            return error(auth_status, "authentication_error", "not_authenticated",
                         "Authentication credentials were not provided.", None, endpoint, auth_headers)
        if key.startswith("pha_"):
            # an OAuth access token (posthog/auth.py, OAuthAccessTokenAuthentication): not one
            # PostHog issued to this client, so "Invalid access token."
            return error(401, "authentication_error", "authentication_failed", "Invalid access token.",
                         None, endpoint, auth_headers)
        info = self.sim.keys.get(key)
        if info is None:
            return error(auth_status, "authentication_error", "authentication_failed",
                         f"Personal API key found in request {source} is invalid.", None, endpoint, auth_headers)
        ctx.key, ctx.user_id, ctx.scopes = key, info[0], tuple(info[1])
        # ---- project
        # a project the key's organization has: '@current' is the key owner's current project
        # (project 1 here); another id is a 404 like PostHog's for a team not in the org
        ds = self.sim.dataset if ctx.pid_raw == "@current" else \
            self.sim.datasets.get(int(ctx.pid_raw)) if ctx.pid_raw.isdigit() else None
        if ds is None:
            return not_found("Project not found.", endpoint)
        self._request.ds = ds
        # ---- scopes
        scope = methods.get(ctx.method, "")
        if ctx.method in methods:
            if scope is None:
                if ctx.scopes:
                    return error(403, "authentication_error", "permission_denied",
                                 "This action does not support Personal API Key access", None, endpoint)
            elif not self._has_scope(ctx.scopes, scope):
                return self._missing_scope(scope, endpoint)
        # ---- throttling
        # query/ has its own bucket (HogQLQueryThrottle, posthog/rate_limit.py), apart from
        # the 480/min + 4800/h every other endpoint here shares
        limiter = self.sim.query_limiter if endpoint == "query" else self.sim.limiter
        wait = limiter.check(key)
        if wait is not None:
            self.sim._count_429()
            return throttled_response(None if wait == NO_WAIT else wait, endpoint)
        if ctx.method not in methods:
            return error(405, "invalid_request", "method_not_allowed", f'Method "{ctx.method}" not allowed.', None,
                         endpoint, [("Allow", ", ".join(sorted(methods)))])
        resp = handler(ctx)
        resp.endpoint = endpoint
        return resp

    def _find_key(self, ctx: Ctx) -> tuple[str | None, str]:
        auth = ctx.headers.get("Authorization")
        if auth:
            parts = auth.split(None, 1)
            if len(parts) == 2 and parts[0].lower() == "bearer":
                return parts[1].strip(), "Authorization header"
        if ctx.body and ctx.method in ("POST", "PUT", "PATCH"):
            try:
                b = loads_body(ctx.body)
                if isinstance(b, dict) and isinstance(b.get("personal_api_key"), str):
                    return b["personal_api_key"], "body"
            except ValueError:
                pass
        k = ctx.params.get("personal_api_key")
        if k:
            return k, "query string"
        return None, ""

    @staticmethod
    def _has_scope(scopes: tuple, required: str) -> bool:
        if "*" in scopes:
            return True
        valid = {required}
        if required.endswith(":read"):
            valid.add(required[:-5] + ":write")
        return any(s in valid for s in scopes)

    @staticmethod
    def _missing_scope(scope: str, endpoint: str = "unknown") -> Response:
        return error(403, "authentication_error", "permission_denied", f"API key missing required scope '{scope}'",
                     None, endpoint)

    # -------------------------------------------------------------- links
    def _link(self, ctx: Ctx, params: dict | list | None, *, path: str | None = None) -> str:
        """Absolute link under /api/projects/ (hostile modes applied)."""
        mode = self.sim.next_link_mode
        p = path if path is not None else "/api/projects/" + ctx.pid_raw + "/" + "/".join(ctx.rest) + (
            "/" if ctx.path.endswith("/") else "")
        q = urlencode(params) if params else ""
        pq = p + ("?" + q if q else "")
        proto = ctx.headers.get("X-Forwarded-Proto") or "http"
        host = ctx.host
        if mode == "normal":
            return f"{proto}://{host}{pq}"
        if mode == "foreign_origin":
            return f"{self.sim.foreign_url}{pq}"
        if mode == "other_scheme":
            return f"ftp://{host}{pq}"
        if mode == "outside_api":
            return f"{proto}://{host}/admin/{'/'.join(ctx.rest)}/" + ("?" + q if q else "")
        if mode == "loop":
            return f"{proto}://{host}{ctx.path}" + ("?" + ctx.query if ctx.query else "")
        if mode == "relative":
            return pq
        if mode == "http_downgrade":
            return f"http://{host}{pq}" if proto == "https" else f"http://{host.split(':')[0]}:80{pq}"
        return f"{proto}://{host}{pq}"

    @property
    def ds(self) -> Dataset:
        """The dataset of the project this thread's request names."""
        return getattr(self._request, "ds", None) or self.sim.dataset

    def query(self, ctx: Ctx) -> Response:
        return _query.handle(self, ctx)

    # -------------------------------------------------------------- project
    def project_retrieve(self, ctx: Ctx) -> Response:
        pid = self.ds.team_id
        return json_response(200, {"id": pid, "uuid": "0190a8f0-0000-7000-8000-000000000001",
                                   "organization": "0190a8f0-0000-7000-8000-00000000000a",
                                   "name": "Default project", "project_id": pid})

    # -------------------------------------------------------------- groups types
    def groups_types(self, ctx: Ctx) -> Response:
        return json_response(200, self.ds.group_types())

    def groups_types_custom(self, ctx: Ctx) -> Response:
        return json_response(200, self.ds.group_types())

    def groups_types_delete(self, ctx: Ctx) -> Response:
        try:
            idx = int(ctx.rest[1])
        except ValueError:
            return not_found("Group type not found")
        if not self.ds.delete_group_type(idx):
            return not_found("Group type not found")
        self._page_cache_clear()
        return Response(204, b"", content_type=None)

    # -------------------------------------------------------------- groups
    def _page_cache_clear(self) -> None:
        with self._page_lock:
            self._page_cache.clear()

    def groups(self, ctx: Ctx) -> Response:
        if ctx.method == "POST":
            return self.groups_create(ctx)
        raw = ctx.params.get("group_type_index")
        if raw is None or raw == "":
            return validation("You must pass ?group_type_index= in this URL. To get a list of valid group types, "
                              "call /api/:project_id/groups_types/.", "group_type_index")
        try:
            gti = int(raw)
        except ValueError:
            return validation("A valid integer is required.", "group_type_index")
        cursor = decode_cursor(ctx.params.get("cursor"))
        search = ctx.params.get("search") or None
        gkey = ctx.params.get("group_key") or None
        ck = (self.ds.team_id, gti, cursor, search, gkey, self.ds.version)
        with self._page_lock:
            hit = self._page_cache.get(ck)
            if hit is not None:
                self._page_cache.move_to_end(ck)
        if hit is None:
            groups, nxt = self.ds.list_groups(gti, cursor, search=search, group_key=gkey, limit=PAGE_SIZE)
            hit = (dumps(groups), nxt)
            with self._page_lock:
                self._page_cache[ck] = hit
                while len(self._page_cache) > 256:
                    self._page_cache.popitem(last=False)
        results, nxt = hit
        next_url = None
        if nxt is not None:
            params = {"group_type_index": gti, "cursor": encode_cursor(*nxt)}
            if search:
                params["search"] = search
            if gkey:
                params["group_key"] = gkey
            next_url = self._link(ctx, params)
        body = b'{"next":' + dumps(next_url) + b',"previous":null,"results":' + results + b"}"
        return Response(200, body)

    def groups_create(self, ctx: Ctx) -> Response:
        try:
            b = loads_body(ctx.body or b"{}")
        except ValueError as e:
            return error(400, "validation_error", "parse_error", f"JSON parse error - {e}")
        if not isinstance(b, dict):
            return validation("Invalid data. Expected a dictionary, but got list.", "non_field_errors")
        for f in ("group_type_index", "group_key"):
            if b.get(f) in (None, ""):
                return validation("This field is required.", f, "required")
        try:
            gti = int(b["group_type_index"])
        except (TypeError, ValueError):
            return validation("A valid integer is required.", "group_type_index")
        if not 0 <= gti < self.ds.n_types:
            return validation(f'"{gti}" is not a valid choice.', "group_type_index", "invalid_choice")
        key = str(b["group_key"])
        if self.ds.get_group(gti, key) is not None:
            return validation("A group with this key already exists", "detail")
        props = b.get("group_properties") or {}
        g = self.ds.insert_group(gti, key, props if isinstance(props, dict) else {})
        return json_response(201, g)

    def groups_find(self, ctx: Ctx) -> Response:
        for f in ("group_type_index", "group_key"):
            if ctx.params.get(f) in (None, ""):
                return validation("This query parameter is required.", f)
        try:
            gti = int(ctx.params["group_type_index"])
        except ValueError:
            return error(500, "server_error", "error", "A server error occurred.")
        g = self.ds.get_group(gti, ctx.params["group_key"])
        if g is None:
            return not_found()
        g = dict(g)
        # find creates the group's notebook unless skip_create_notebook is true
        # (ee/clickhouse/views/groups.py `find`, str_to_bool; CRM enabled in the simulator)
        skip = (ctx.params.get("skip_create_notebook") or "").strip().lower() in ("true", "1", "yes", "y", "on")
        g["notebook"] = self.ds.group_notebook(gti, g["group_key"], create=not skip)
        return json_response(200, g)

    def groups_property_values(self, ctx: Ctx) -> Response:
        for f in ("group_type_index", "key"):
            if ctx.params.get(f) in (None, ""):
                return validation("This query parameter is required.", f)
        try:
            gti = int(ctx.params["group_type_index"])
        except ValueError:
            return error(500, "server_error", "error", "A server error occurred.")
        rows = self.ds.property_values(gti, ctx.params["key"], ctx.params.get("value") or None)
        return json_response(200, {"results": rows, "refreshing": False})

    def groups_property_definitions(self, ctx: Ctx) -> Response:
        return json_response(200, self.ds.legacy_property_definitions())

    def property_definitions(self, ctx: Ctx) -> Response:
        typ = ctx.params.get("type") or "event"
        rows: list[dict] = []
        if typ == "group":
            # validate_group_type_index("group_type_index", ..., required=True)
            # (posthog/models/filters/utils.py): a plain ValidationError, so attr is null
            raw = ctx.params.get("group_type_index")
            bad = validation("group_type_index is required to be at least 0 and less than 5", None, "invalid")
            if raw is None:
                return bad
            try:
                gti = int(raw)
            except ValueError:
                return bad
            if not 0 <= gti < 5:
                return bad
            rows = self.ds.property_definitions(gti) + virtual_group_properties()
        elif typ not in ("event", "person", "session"):
            return validation(f'"{typ}" is not a valid choice.', "type", "invalid_choice")
        search = ctx.params.get("search")
        if search:
            rows = [r for r in rows if search.lower() in r["name"].lower()]
        return self._limit_offset(ctx, rows)

    # -------------------------------------------------------------- LimitOffset
    @staticmethod
    def _pos_int(raw: str | None, default: int, strict: bool) -> int:
        if raw is None:
            return default
        try:
            v = int(raw)
        except ValueError:
            return default
        if v < 0 or (strict and v == 0):
            return default
        return v

    def _limit_offset(self, ctx: Ctx, rows: list[dict]) -> Response:
        limit = self._pos_int(ctx.params.get("limit"), 100, True)
        offset = self._pos_int(ctx.params.get("offset"), 0, False)
        count = len(rows)
        page = rows[offset:offset + limit]
        base = [(k, v) for k, v in parse_qsl(ctx.query, keep_blank_values=True) if k not in ("limit", "offset")]
        nxt = prev = None
        if offset + limit < count:
            nxt = self._link(ctx, base + [("limit", limit), ("offset", offset + limit)])
        if offset > 0:
            if offset - limit <= 0:
                prev = self._link(ctx, base + [("limit", limit)])
            else:
                prev = self._link(ctx, base + [("limit", limit), ("offset", offset - limit)])
        return json_response(200, {"count": count, "next": nxt, "previous": prev, "results": page})

    # -------------------------------------------------------------- exports
    def exports(self, ctx: Ctx) -> Response:
        if ctx.method == "POST":
            return self.export_create(ctx)
        rows = self.ds.exports(ctx.user_id)
        fmt = ctx.params.get("export_format")
        if fmt in EXPORT_FORMATS:
            rows = [r for r in rows if r["export_format"] == fmt]
        cp = ctx.params.get("context_path")
        if cp:
            rows = [r for r in rows if isinstance(r.get("export_context"), dict)
                    and cp in str(r["export_context"].get("path") or "")]
        sr = ctx.params.get("session_recording_id")
        if sr:
            rows = [r for r in rows if isinstance(r.get("export_context"), dict)
                    and r["export_context"].get("session_recording_id") == sr]
        return self._limit_offset(ctx, rows)

    def _export_id(self, ctx: Ctx) -> int | None:
        try:
            return int(ctx.rest[1])
        except ValueError:
            return None

    def export_retrieve(self, ctx: Ctx) -> Response:
        eid = self._export_id(ctx)
        if eid is None or self.ds.get_export(eid, ctx.user_id) is None:
            return not_found()
        # "if instance.is_dataset_export and self.action != 'content': raise NotFound()"
        # (products/exports/backend/api/exports.py, safely_get_object)
        if self.ds.is_dataset_export(self.ds.export_record(eid)):
            return not_found()
        self.ds.poll_export(eid, self.cfg.video_polls)
        return json_response(200, self.ds.get_export(eid, ctx.user_id))

    def export_content(self, ctx: Ctx) -> Response:
        eid = self._export_id(ctx)
        obj = self.ds.get_export(eid, ctx.user_id) if eid is not None else None
        if obj is None:
            return not_found()
        rec = self.ds.export_record(eid)
        if self.ds.is_dataset_export(rec):
            # A dataset (JSON Lines) export's content/ answers 302 to the datasets API on the
            # same origin, a relative Location from Django's reverse("project_datasets-export-
            # content", ...) (products/exports/backend/api/exports.py, `content`).
            dataset_id = rec.export_context["dataset_id"]
            location = (f"/api/projects/{self.ds.team_id}/datasets/{dataset_id}"
                        f"/exports/{eid}/content")
            return Response(302, b"", [("Location", location)], "text/html; charset=utf-8")
        length = self.ds.export_content_length(eid)
        if length is None:
            return not_found()
        # `request.query_params.get("download") == "true"` and the same for direct
        # (products/exports/backend/api/exports.py, `content`): only the exact text counts
        download = ctx.params.get("download") == "true"
        direct = ctx.params.get("direct") == "true" and rec.export_format == C.PNG
        disposition = f'attachment; filename="{rec.filename}"' if download else None
        if self.cfg.content_mode == "redirect" and not direct:
            url = self.sim.presign(eid, rec.export_format, disposition,
                                   project_id=self.ds.team_id)
            return Response(302, b"", [("Location", url)], "text/html; charset=utf-8")
        headers = [("Cache-Control", "max-age=86400")]
        if disposition:
            headers.append(("Content-Disposition", disposition))
        return Response(200, b"", headers, rec.export_format, stream=self.ds.export_content_iter(eid), length=length)

    def dataset_export_content(self, ctx: Ctx) -> Response:
        """The JSON Lines bytes of a dataset export (the target of its content/ redirect)."""
        try:
            eid = int(ctx.rest[3])
        except ValueError:
            return not_found()
        rec = self.ds.export_record(eid)
        obj = self.ds.get_export(eid, ctx.user_id)
        if (obj is None or rec is None or not self.ds.is_dataset_export(rec)
                or rec.export_context["dataset_id"] != ctx.rest[1]):
            return not_found()
        length = self.ds.export_content_length(eid)
        if length is None:
            return not_found()
        return Response(200, b"", [("Cache-Control", "max-age=86400")], C.JSONL,
                        stream=self.ds.export_content_iter(eid), length=length)

    def export_create(self, ctx: Ctx) -> Response:
        try:
            b = loads_body(ctx.body or b"{}")
        except ValueError as e:
            return error(400, "validation_error", "parse_error", f"JSON parse error - {e}")
        if not isinstance(b, dict):
            return validation("Invalid data. Expected a dictionary, but got list.", None)
        fmt = b.get("export_format")
        if fmt in (None, ""):
            return validation("This field is required.", "export_format", "required")
        if not isinstance(fmt, str) or fmt not in EXPORT_FORMATS or fmt == C.JSONL:
            return validation(f'"{fmt}" is not a valid choice.', "export_format", "invalid_choice")
        dashboard, insight, ctxobj = b.get("dashboard"), b.get("insight"), b.get("export_context")
        for name, val, known in (("dashboard", dashboard, self.ds.dashboards()),
                                 ("insight", insight, self.ds.insights())):
            if val is None:
                continue
            try:
                iv = int(val)
            except (TypeError, ValueError):
                return validation("Incorrect type. Expected pk value, received str.", name, "incorrect_type")
            if iv not in known:
                return validation(f'Invalid pk "{val}" - object does not exist.', name, "does_not_exist")
        if dashboard is None and insight is None and not ctxobj:
            return validation("Either dashboard, insight or export_context is required for an export.", None)
        need = []
        if insight is not None:
            need.append("insight:read")
        if dashboard is not None:
            need.append("dashboard:read")
        if isinstance(ctxobj, dict):
            if ctxobj.get("session_recording_id"):
                need.append("session_recording:read")
            if ctxobj.get("source") is not None:
                need.append("query:read")
            if ctxobj.get("heatmap_url"):
                need.append("heatmap:read")
            p = ctxobj.get("path")
            if p is not None and (ctxobj.get("method") or "GET").upper() != "GET":
                return validation("Only GET requests are allowed for path-based exports.", "export_context")
        for sc in need:
            if not self._has_scope(ctx.scopes, sc):
                return self._missing_scope(sc)
        if fmt in C.VIDEO_FORMATS and not (isinstance(ctxobj, dict) and ctxobj.get("session_recording_id")):
            # "recordings-only" (products/exports/backend/api/exports.py, ExportedAssetSerializer
            # create): ValidationError({"export_format": [...]})
            return validation("Video export supports session recordings only.", "export_format")
        obj = self.ds.create_export(ctx.user_id, fmt, int(dashboard) if dashboard is not None else None,
                                    int(insight) if insight is not None else None, ctxobj)
        return json_response(201, obj)

    # -------------------------------------------------------------- explicit members (legacy)
    def explicit_members(self, ctx: Ctx) -> Response:
        if ctx.method == "POST":
            return validation("Explicit members can only be accessed for projects with project-based permissioning "
                              "enabled.", None)
        return json_response(200, self.ds.explicit_members)

    def explicit_member(self, ctx: Ctx) -> Response:
        uid = ctx.rest[1]
        if ctx.method == "DELETE":
            if self.ds.delete_member(uid):
                return Response(204, b"", content_type=None)
            return not_found()
        for m in self.ds.explicit_members:
            if m["user"]["uuid"] == uid:
                if ctx.method == "GET":
                    return json_response(200, m)
                return validation("Explicit members can only be accessed for projects with project-based "
                                  "permissioning enabled.", None)
        return not_found()


# ====================================================================== HTTP plumbing
class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr, handler, sim: "Simulator", kind: str):
        self.sim = sim
        self.kind = kind
        self.conns: set = set()
        self.conns_lock = threading.Lock()
        super().__init__(addr, handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "posthog-sim"
    sys_version = ""
    disable_nagle_algorithm = True
    timeout = 120

    def setup(self):
        super().setup()
        with self.server.conns_lock:
            self.server.conns.add(self.connection)

    def finish(self):
        try:
            super().finish()
        except OSError:
            pass
        with self.server.conns_lock:
            self.server.conns.discard(self.connection)

    def log_message(self, format, *args):  # silence
        pass

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_PUT(self):
        self._handle("PUT")

    def do_PATCH(self):
        self._handle("PATCH")

    def do_DELETE(self):
        self._handle("DELETE")

    def do_HEAD(self):
        self._handle("HEAD")

    def do_OPTIONS(self):
        self._handle("OPTIONS")

    # ------------------------------------------------------------------
    def _read_body(self) -> bytes:
        n = self.headers.get("Content-Length")
        if n:
            try:
                return self.rfile.read(int(n))
            except (ValueError, OSError):
                return b""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = bytearray()
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                out += self.rfile.read(size)
                self.rfile.readline(65537)
            return bytes(out)
        return b""

    def _handle(self, method: str) -> None:
        sim: Simulator = self.server.sim
        kind = self.server.kind
        ts = time.time()
        split = urlsplit(self.path)
        path, query = split.path, split.query
        if path == SIM_STATS_PATH and kind == "api" and method == "GET":
            # simulator-only introspection (benchmarks): never logged, counted or throttled
            # not a PostHog response: its counters are keyed by status code (int)
            self._write_untracked(Response(200, orjson.dumps(
                sim.bench_stats(), option=orjson.OPT_NON_STR_KEYS)))
            return
        body = self._read_body()
        auth = self.headers.get("Authorization")
        host = self.headers.get("Host") or f"{self.server.server_address[0]}:{self.server.server_address[1]}"
        fault = sim._pick_fault(kind, path, query)
        state = {"done": False, "endpoint": kind if kind != "api" else sim.endpoint_name(kind, path)}

        def record(status: int, sent: int) -> None:
            # called just before the last bytes go out, so the log is complete when the client sees the response
            if state["done"]:
                return
            state["done"] = True
            sim._record(RequestRecord(ts=ts, server=kind, method=method, path=path, query=query,
                                      authorization=auth, status=status, fault=fault, bytes_sent=sent),
                        state["endpoint"])

        self._record_cb = record
        try:
            if fault is not None and fault != "slow":
                self._serve_fault(fault, kind, method, path, query)
            else:
                if fault == "slow":
                    time.sleep(sim.cfg.faults.slow_seconds)
                try:
                    resp = sim._dispatch(kind, method, path, query, self.headers, body, host)
                except Exception as e:  # a bug in the simulator -> PostHog-style 500
                    resp = error(500, "server_error", "error", "A server error occurred.")
                    resp.headers.append(("X-Sim-Exception", type(e).__name__))
                state["endpoint"] = resp.endpoint if kind == "api" else kind
                self._write(resp, head_only=(method == "HEAD"))
        finally:
            record(0, 0)

    def _write_untracked(self, resp: Response) -> None:
        self._record_cb = lambda status, sent: None
        self._write(resp)

    def _head(self, status: int, headers: list[tuple[str, str]], content_type: str | None, length: int | None) -> bytes:
        phrase = http.HTTPStatus(status).phrase if status in http.HTTPStatus._value2member_map_ else "Unknown"
        lines = [f"HTTP/1.1 {status} {phrase}", "Server: posthog-sim", f"Date: {formatdate(usegmt=True)}"]
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        if length is not None:
            lines.append(f"Content-Length: {length}")
        for k, v in headers:
            lines.append(f"{k}: {v}")
        if self.close_connection:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")

    def _write(self, resp: Response, head_only: bool = False) -> int:
        rec = self._record_cb
        try:
            if resp.stream is not None:
                head = self._head(resp.status, resp.headers, resp.content_type, resp.length)
                if head_only:
                    rec(resp.status, 0)
                    self.wfile.write(head)
                    return 0
                self.wfile.write(head)
                sent = 0
                chunks = iter(resp.stream)
                chunk = next(chunks, None)
                while chunk is not None:
                    following = next(chunks, None)
                    if following is None:
                        rec(resp.status, sent + len(chunk))
                    self.wfile.write(chunk)
                    sent += len(chunk)
                    chunk = following
                rec(resp.status, sent)
                return sent
            if resp.status == 204:
                rec(204, 0)
                self.wfile.write(self._head(resp.status, resp.headers, None, None))
                return 0
            head = self._head(resp.status, resp.headers, resp.content_type, len(resp.body))
            n = 0 if head_only else len(resp.body)
            rec(resp.status, n)
            self.wfile.write(head if head_only else head + resp.body)
            return n
        except (BrokenPipeError, ConnectionResetError, socket.timeout, OSError):
            self.close_connection = True
            rec(resp.status, 0)
            return 0

    def _rst(self) -> None:
        """Abort the connection with a TCP RST."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            fd = self.connection.detach()
            os.close(fd)
        except OSError:
            pass

    def _serve_fault(self, fault: str, kind: str, method: str, path: str, query: str) -> tuple[int, int]:
        sim: Simulator = self.server.sim
        storage = kind == "storage"
        rec = self._record_cb
        if fault == "reset_before":
            rec(0, 0)
            self._rst()
            return 0, 0
        if fault in ("500", "502", "503", "504"):
            st = int(fault)
            hdrs = [("Retry-After", "1")] if st == 503 else []
            if storage:
                code = {500: "InternalError", 502: "BadGateway", 503: "SlowDown", 504: "GatewayTimeout"}[st]
                r = s3_error(st, code, "We encountered an internal error. Please try again.")
                r.headers += hdrs
            else:
                detail = {500: ("server_error", "error", "A server error occurred."),
                          502: ("server_error", "bad_gateway", "Bad gateway."),
                          503: ("server_error", "service_unavailable",
                                "Service temporarily unavailable, try again later."),
                          504: ("server_error", "timeout", "Query timed out. Try again later.")}[st]
                r = error(st, *detail, None, "fault", hdrs)
            return st, self._write(r)
        if fault == "429":
            r = throttled_response(1, "fault")
            return 429, self._write(r)
        if fault == "429_html":
            body = (b"<html><head><title>429 Too Many Requests</title></head><body><center><h1>429 Too Many "
                    b"Requests</h1></center><hr><center>nginx</center></body></html>")
            return 429, self._write(Response(429, body, [], "text/html"))
        if fault == "empty_200":
            return 200, self._write(Response(200, b"", [], "application/json"))
        if fault == "bad_json":
            body = b'{"next": null, "previous": null, "results": [{"group_key": "abc", "group_properties": {'
            return 200, self._write(Response(200, body, [], "application/json"))
        # partial-body faults
        body, ctype = sim._fault_body(kind, path, query)
        try:
            if fault == "truncate":
                rec(200, len(body) // 2)
                self.wfile.write(self._head(200, [], ctype, len(body)) + body[: len(body) // 2])
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return 200, len(body) // 2
            if fault == "bad_length":
                rec(200, len(body))
                self.wfile.write(self._head(200, [], ctype, len(body) + 1000) + body)
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return 200, len(body)
            if fault == "reset_during":
                part = body[: max(1, len(body) // 3)]
                rec(200, len(part))
                self.wfile.write(self._head(200, [], ctype, len(body)) + part)
                time.sleep(0.01)
                self._rst()
                return 200, len(part)
        except OSError:
            self.close_connection = True
            return 200, 0
        raise ValueError(f"unknown fault {fault}")


# ====================================================================== Simulator
class Simulator:
    def __init__(self, cfg: SimConfig | None = None):
        self.cfg = cfg or SimConfig()
        self.dataset = Dataset(self.cfg.dataset, now=self.cfg.now)
        self.project_id = 1
        # every project this server holds, by id; project 1 is `dataset`
        self.datasets: dict[int, Dataset] = {self.project_id: self.dataset}
        for pid, spec in (self.cfg.extra_projects or {}).items():
            self.datasets[int(pid)] = Dataset(spec, now=self.cfg.now, team_id=int(pid))
        self.api_key = self.cfg.api_key
        self.keys: dict[str, tuple[int, tuple]] = {self.cfg.api_key: (1, tuple(self.cfg.scopes))}
        for k, (uid, scopes) in (self.cfg.extra_keys or {}).items():
            self.keys[k] = (int(uid), tuple(scopes))
        self.limiter = RateLimiter(self.cfg.rate_limits or ())
        self.query_limiter = RateLimiter(self.cfg.query_rate_limits or ())
        self.next_link_mode = self.cfg.next_link
        self._log: list[RequestRecord] = []
        self._log_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._by_endpoint: dict[str, int] = {}
        self._by_status: dict[int, int] = {}
        self._faults_served: dict[str, int] = {}
        self._n429 = 0
        self._bytes_by_server: dict[str, int] = {}
        self._requests_by_server: dict[str, int] = {}
        self._first_ts: dict[str, float] = {}
        self._last_ts: dict[str, float] = {}
        self._scripted: list[list] = []  # [kind, regex, remaining, server]
        self._fault_lock = threading.Lock()
        self._fault_rng = random.Random(self.cfg.faults.seed)
        self._fault_re = re.compile(self.cfg.faults.path_regex) if self.cfg.faults.path_regex else None
        self._secret = hashlib.sha256(f"sim-secret:{self.cfg.dataset.seed}:{id(self)}".encode()).digest()
        self._servers: dict[str, _Server] = {}
        self._threads: list[threading.Thread] = []
        self.api = ApiApp(self)
        self.api_url = self.storage_url = self.foreign_url = ""
        self._started = False

    # -------------------------------------------------------------- lifecycle
    def start(self) -> "Simulator":
        if self._started:
            return self
        host = self.cfg.host
        for kind, port in (("api", self.cfg.port), ("storage", self.cfg.storage_port),
                           ("foreign", self.cfg.foreign_port)):
            srv = _Server((host, port), _Handler, self, kind)
            self._servers[kind] = srv
            t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                                 name=f"posthog-sim-{kind}", daemon=True)
            t.start()
            self._threads.append(t)
        url = lambda k: f"http://{host}:{self._servers[k].server_address[1]}"  # noqa: E731
        self.api_url, self.storage_url, self.foreign_url = url("api"), url("storage"), url("foreign")
        self._started = True
        return self

    def stop(self) -> None:
        if not self._started:
            return
        for srv in self._servers.values():
            srv.shutdown()
            srv.server_close()
            with srv.conns_lock:
                conns = list(srv.conns)
            for c in conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        for t in self._threads:
            t.join(timeout=5)
        self._servers.clear()
        self._threads.clear()
        self._started = False

    def __enter__(self) -> "Simulator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -------------------------------------------------------------- public controls
    @property
    def request_log(self) -> list[RequestRecord]:
        with self._log_lock:
            return list(self._log)

    def issue_key(self, scopes: Iterable[str], user_id: int = 1) -> str:
        """A new personal API key with exactly `scopes` (e.g. ("group:read",); "*" = all),
        enforced per endpoint as PostHog's APIScopePermission does (posthog/permissions.py:
        the view's scope_object, :read for list/retrieve, :write for the rest, :write implies
        :read)."""
        scopes = tuple(scopes)
        bad = [sc for sc in scopes if sc != "*" and not re.fullmatch(r"[a-z_]+:(read|write)", sc)]
        if bad:
            raise ValueError(f"scopes look like 'group:read' or '*', not {bad}")
        key = "phx_sim_" + hashlib.sha256(os.urandom(16)).hexdigest()[:24]
        self.keys[key] = (int(user_id), scopes)
        return key

    def clear_log(self) -> None:
        with self._log_lock:
            self._log.clear()

    def inject(self, kind: str, path_regex: str | None = None, times: int = 1, server: str = "api") -> None:
        """The next `times` requests to `server` whose path (or path?query) matches get fault `kind`."""
        if kind not in ALL_FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; valid: {ALL_FAULT_KINDS}")
        with self._fault_lock:
            self._scripted.append([kind, re.compile(path_regex) if path_regex else None, int(times), server])

    def clear_faults(self) -> None:
        with self._fault_lock:
            self._scripted.clear()

    def set_next_link(self, mode: str) -> None:
        if mode not in NEXT_LINK_MODES:
            raise ValueError(f"next_link must be one of {NEXT_LINK_MODES}")
        self.next_link_mode = mode

    def reset_rate_limits(self) -> None:
        self.limiter.reset()
        self.query_limiter.reset()

    def stats(self) -> dict:
        with self._stats_lock:
            return {"requests": dict(self._by_endpoint), "total_requests": sum(self._by_endpoint.values()),
                    "by_status": dict(self._by_status), "throttled_429": self._n429,
                    "faults": dict(self._faults_served), "faults_total": sum(self._faults_served.values())}

    def bench_stats(self) -> dict:
        """`stats()` plus per-server request/byte counters and first/last request times (epoch s),
        served at GET /_sim/stats for benchmarks that run the simulator as a separate process."""
        out = self.stats()
        with self._stats_lock:
            out.update({"requests_by_server": dict(self._requests_by_server),
                        "bytes_by_server": dict(self._bytes_by_server),
                        "first_ts": dict(self._first_ts), "last_ts": dict(self._last_ts),
                        "pid": os.getpid()})
        return out

    def presign(self, export_id: int, content_type: str, disposition: str | None = None,
                ttl: int | None = None, now: float | None = None, project_id: int = 1) -> str:
        ttl = self.cfg.presign_ttl if ttl is None else ttl
        now = time.time() if now is None else now
        key = self.datasets[project_id].export_storage_key(export_id)
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        params = [("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
                  ("X-Amz-Credential", f"SIMACCESSKEY/{amz_date[:8]}/us-east-1/s3/aws4_request"),
                  ("X-Amz-Date", amz_date), ("X-Amz-Expires", str(int(ttl))), ("X-Amz-SignedHeaders", "host"),
                  ("response-content-type", content_type)]
        if disposition:
            params.append(("response-content-disposition", disposition))
        params.sort()
        sig = self._sign("/" + key, params)
        return f"{self.storage_url}/{key}?{urlencode(params, quote_via=quote)}&X-Amz-Signature={sig}"

    def _sign(self, path: str, params: list[tuple[str, str]]) -> str:
        canon = path + "\n" + "&".join(f"{k}={v}" for k, v in sorted(params))
        return hmac.new(self._secret, canon.encode("utf-8"), hashlib.sha256).hexdigest()

    # -------------------------------------------------------------- internals
    def endpoint_name(self, kind: str, path: str) -> str:
        if kind != "api":
            return kind
        m = re.match(r"^/api/(?:projects|environments)/[^/]+/(.*)$", path)
        if not m:
            return "unknown"
        segs = [s for s in m.group(1).split("/") if s]
        if len(segs) >= 2 and segs[0] in ("exports", "explicit_members") or (
                len(segs) == 2 and segs[0] == "groups_types" and segs[1] not in _GROUPS_TYPES_CUSTOM):
            segs[1] = ":id" if segs[0] == "exports" else (":uuid" if segs[0] == "explicit_members" else ":idx")
        if len(segs) == 5 and segs[0] == "datasets":
            return "datasets/:id/exports/:id/content"
        return "/".join(segs) or "projects/:id"

    def _record(self, rec: RequestRecord, endpoint: str) -> None:
        with self._log_lock:
            self._log.append(rec)
            lim = self.cfg.request_log_limit
            if lim and len(self._log) > lim:
                del self._log[: len(self._log) - lim]
        with self._stats_lock:
            self._by_endpoint[endpoint] = self._by_endpoint.get(endpoint, 0) + 1
            self._by_status[rec.status] = self._by_status.get(rec.status, 0) + 1
            if rec.fault:
                self._faults_served[rec.fault] = self._faults_served.get(rec.fault, 0) + 1
            srv = rec.server
            self._bytes_by_server[srv] = self._bytes_by_server.get(srv, 0) + rec.bytes_sent
            self._requests_by_server[srv] = self._requests_by_server.get(srv, 0) + 1
            self._first_ts.setdefault(srv, rec.ts)
            self._last_ts[srv] = max(self._last_ts.get(srv, rec.ts), rec.ts)

    def _count_429(self) -> None:
        with self._stats_lock:
            self._n429 += 1

    def _pick_fault(self, kind: str, path: str, query: str) -> str | None:
        if kind == "foreign":
            return None
        full = path + ("?" + query if query else "")
        with self._fault_lock:
            for entry in self._scripted:
                fk, rx, remaining, server = entry
                if server != kind or remaining <= 0:
                    continue
                if rx is None or rx.search(path) or rx.search(full):
                    entry[2] -= 1
                    if entry[2] <= 0:
                        self._scripted.remove(entry)
                    return fk
            fs = self.cfg.faults
            if fs.rate > 0 and fs.kinds:
                if self._fault_re is not None and not (self._fault_re.search(path) or self._fault_re.search(full)):
                    return None
                if self._fault_rng.random() < fs.rate:
                    fault = self._fault_rng.choice(fs.kinds)
                    # a wrong-but-well-formed 200 body is a JSON-endpoint fault: no client can tell
                    # it from real bytes on a binary download (S3 never serves one), so random
                    # faults keep it off content; a scripted inject still gets it anywhere
                    if fault == "bad_json" and (kind == "storage" or "/content" in path):
                        return None
                    return fault
        return None

    def _fault_body(self, kind: str, path: str, query: str) -> tuple[bytes, str]:
        if kind == "storage":
            ds, eid = self._storage_export(path)
            if eid is not None:
                n = ds.export_content_length(eid)
                if n is not None and n <= 8 * 1024 * 1024:
                    rec = ds.export_record(eid)
                    return ds.export_content(eid) or b"", rec.export_format
            return bytes(range(256)) * 256, "application/octet-stream"
        rows = [{"group_type_index": 0, "group_key": f"fault-{i}", "group_properties": {"pad": "x" * 60},
                 "created_at": "2026-01-01T00:00:00Z"} for i in range(60)]
        return dumps({"next": None, "previous": None, "results": rows}), "application/json"

    def _dispatch(self, kind: str, method: str, path: str, query: str, headers, body: bytes, host: str) -> Response:
        if kind == "api":
            return self.api.handle(method, path, query, headers, body, host)
        if kind == "storage":
            return self._storage(method, path, query, headers)
        return Response(200, b'{"results":[],"next":null}', endpoint="foreign")

    def _storage_export(self, path: str) -> tuple[Dataset, int | None]:
        """The dataset (by the key's team) and export id a storage path names."""
        m = re.match(r"^/exports/[a-z0-9]+/team-(\d+)/task-(\d+)/[0-9a-f-]+$", path)
        ds = self.datasets.get(int(m.group(1))) if m else None
        return (ds, int(m.group(2))) if ds is not None else (self.dataset, None)

    def _storage(self, method: str, path: str, query: str, headers) -> Response:
        if headers.get("Authorization"):
            return s3_error(400, "InvalidArgument", "Only one auth mechanism allowed; only the X-Amz-Algorithm "
                                                    "query parameter, Signature query string parameter or the "
                                                    "Authorization header should be specified", path)
        if method not in ("GET", "HEAD"):
            return s3_error(405, "MethodNotAllowed", "The specified method is not allowed against this resource.",
                            path)
        params = parse_qsl(query, keep_blank_values=True)
        sig = None
        rest = []
        for k, v in params:
            if k == "X-Amz-Signature":
                sig = v
            else:
                rest.append((k, v))
        pd = dict(rest)
        if sig is None or "X-Amz-Date" not in pd or "X-Amz-Expires" not in pd:
            return s3_error(403, "AccessDenied", "Access Denied", path)
        if not hmac.compare_digest(sig, self._sign(path, rest)):
            return s3_error(403, "SignatureDoesNotMatch", "The request signature we calculated does not match the "
                                                          "signature you provided.", path)
        try:
            signed_at = calendar.timegm(time.strptime(pd["X-Amz-Date"], "%Y%m%dT%H%M%SZ"))
            expires = int(pd["X-Amz-Expires"])
        except (ValueError, OverflowError):
            return s3_error(403, "AccessDenied", "Access Denied", path)
        if time.time() > signed_at + expires:
            return s3_error(403, "AccessDenied", "Request has expired", path)
        ds, eid = self._storage_export(path)
        length = ds.export_content_length(eid) if eid is not None else None
        if length is None:
            return s3_error(404, "NoSuchKey", "The specified key does not exist.", path)
        ctype = pd.get("response-content-type") or "application/octet-stream"
        hdrs = [("Accept-Ranges", "bytes"), ("Last-Modified", formatdate(signed_at, usegmt=True)),
                ("x-amz-request-id", hashlib.md5(path.encode()).hexdigest()[:16].upper())]
        if pd.get("response-content-disposition"):
            hdrs.append(("Content-Disposition", pd["response-content-disposition"]))
        return Response(200, b"", hdrs, ctype, stream=ds.export_content_iter(eid), length=length,
                        endpoint="storage")
