"""PostHog private API client: groups, group types, exports, explicit members.

The machinery lives in one module per question, and every public name stays importable from
here: `resources.posthog_config` (settings, validated once), `resources.posthog_transport` (one
request: retries, Retry-After, the shared budget, a host that never answered),
`resources.posthog_pagination` (listings and their guards) and `resources.posthog_content`
(an export's file and its redirects).
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import httpx
import msgspec

from resources import jsontext, posthog_content
from resources.budget import RequestBudget
from resources.errors import (
    PostHogAPIError,
    PostHogConfigError,
    PostHogEndpointMissingError,
    PostHogPaginationError,
    PostHogRetryError,
    PostHogUnrenderablePageError,
)
from resources.posthog_config import (
    ConnectionSettings,
    normalize_host,
    validate_api_key,
    validate_project_id,
)
from resources.posthog_content import ContentDownload, _release  # noqa: F401 - re-exported
from resources.posthog_pagination import Pager
from resources.posthog_transport import (
    DEFAULT_TIMEOUT,
    USER_AGENT,
    Call,
    ClientStats,
    Transport,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "USER_AGENT",
    "ClientStats",
    "ConnectionSettings",
    "ContentDownload",
    "PostHogClient",
    "RawGroup",
    "normalize_host",
    "validate_api_key",
    "validate_project_id",
]

_PROPERTY_DEFINITIONS_LIMIT = 500
# PostHog stops serving '@current' in paths on this date (posthog-api.md §11)
_CURRENT_SUNSET = "2027-04-30"


class RawGroup(msgspec.Struct, forbid_unknown_fields=True):
    """A group as groups/ lists it, its properties kept as the JSON text the page held (PostHog's
    own text: the same value, numbers exact and key order kept, never decoded and re-encoded)."""

    # an index beyond int64 is no column's: such a page is read the slower way, into `extra`
    group_type_index: Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
    group_key: str
    group_properties: msgspec.Raw
    created_at: str


class _RawGroupsPage(msgspec.Struct):  # other envelope fields (previous, count) are not needed
    results: list[RawGroup]
    next: str | None = None


_RAW_GROUPS_PAGE = msgspec.json.Decoder(_RawGroupsPage)


def _decode_groups_page(content: bytes, note: Callable[[str, bool], None] | None = None) -> Any:
    """A groups page whose items are `RawGroup`s when every item has exactly the four fields,
    typed as PostHog types them, and non-null properties; anything else as `jsontext.loads`
    reads it (a list of dicts), so nothing unusual is lost or altered.

    `note(why, new_shape)` hears why a page was read the slower way; `new_shape` when its groups
    are not the four fields as PostHog types them (a field added to the API, say)."""
    try:
        page = _RAW_GROUPS_PAGE.decode(content)
    except msgspec.MsgspecError as e:  # not that shape (or not JSON: jsontext.loads says so)
        why, new_shape = f"its groups are not the four fields PostHog lists ({e})", True
    else:
        if not any(len(g.group_properties) == 4 and bytes(g.group_properties) == b"null"
                   for g in page.results):
            return {"next": page.next, "results": page.results}
        why, new_shape = "a group has null group_properties", False
    result = jsontext.loads(content)
    if note:
        note(why, new_shape)
    return result


class PostHogClient:
    """PostHog private API over one httpx.Client: groups, group types, exports, explicit members."""

    def __init__(
        self,
        *,
        host: str | None = None,
        project_id: str | None = None,
        api_key: str | None = None,
        settings: ConnectionSettings | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = 8,
        retry_base_delay: float = 0.5,
        retry_max_delay: float = 3600.0,
        budget: RequestBudget | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        logger: logging.Logger | logging.LoggerAdapter | None = None,
        max_connections: int = 16,
        query_budget: RequestBudget | None = None,
    ) -> None:
        if settings is None:
            settings = ConnectionSettings.from_raw(
                host=host if host is not None else "",
                project_id=project_id if project_id is not None else "",
                api_key=api_key if api_key is not None else "",
            )
        elif (host, project_id, api_key) != (None, None, None):
            raise PostHogConfigError("pass either settings or host/project_id/api_key, not both")
        self._settings = settings
        self._t = Transport(
            settings,
            timeout=timeout,
            max_retries=max_retries,
            retry_base_delay=retry_base_delay,
            retry_max_delay=retry_max_delay,
            budget=budget,
            transport=transport,
            sleep=sleep,
            logger=logger or logging.getLogger(__name__),
            max_connections=max_connections,
            query_budget=query_budget,
        )
        self._log = self._t.log
        self._resolved_project: str | None = None
        self._resolve_lock = threading.Lock()
        self._pager = Pager(self._t, self._project)
        self.stats: ClientStats = self._t.stats

    def __repr__(self) -> str:
        return f"PostHogClient(host={self.host!r}, project_id={self.project_id!r})"

    def __enter__(self) -> PostHogClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._t.close()

    @property
    def budget_rate(self) -> float | None:
        """Requests per second the rate budget sustains (None when unlimited)."""
        budget = self._t.budget
        return budget.sustained_rate if budget is not None else None

    @property
    def host(self) -> str:
        """The configured origin."""
        return self._settings.origin

    @property
    def project_id(self) -> str:
        """The configured project id (numeric or '@current')."""
        return self._settings.project_id

    # ---- groups -------------------------------------------------------------------------

    def list_group_types(self) -> list[dict]:
        """GET groups_types/: a plain array of group types sorted by index."""
        path = self._path("groups_types/")
        body = self._call("GET", path, endpoint="groups_types/")
        if (
            isinstance(body, dict)
            and isinstance(body.get("results"), list)
            and not body.get("next")
        ):
            body = body["results"]
        if not isinstance(body, list):
            raise PostHogPaginationError(
                f"GET {path} returned {type(body).__name__}, expected a JSON array of group types; "
                "check POSTHOG_HOST points at PostHog."
            )
        self.stats.add(pages=1, items=len(body))
        return body

    def iter_group_pages(
        self, *, group_type_index: int, raw_properties: bool = False,
        group_type: str | None = None,
    ) -> Iterator[list[dict] | list[RawGroup]]:
        """GET groups/?group_type_index=N, following the keyset `next` links page by page.

        With `raw_properties`, a page PostHog wrote plainly (the usual case) comes as a list of
        `RawGroup`: the properties stay the JSON text the page held, never decoded into dicts
        and encoded again. Any other page still comes as a list of dicts. A page PostHog cannot
        render raises `PostHogUnrenderablePageError` naming the type (`group_type`, for the
        message), where the crawl stood and why.
        """
        index = _check_index(group_type_index)
        decode: Callable[[bytes], Any] = jsontext.loads
        if raw_properties:
            noted: set[bool] = set()

            def note(why: str, new_shape: bool) -> None:
                # once per crawl: the data is the same either way, only slower to read; a new
                # shape (PostHog added a field, which lands in `extra`) is worth knowing about
                if new_shape not in noted:
                    noted.add(new_shape)
                    self._log.log(
                        logging.INFO if new_shape else logging.DEBUG,
                        "groups/ (type %d): a page was read the slower way, with json: %r "
                        "(the data is the same; said once per group type)", index, why,
                    )

            decode = functools.partial(_decode_groups_page, note=note)
        return _explain_unrenderable(self._pager.iter_pages(
            "groups/", {"group_type_index": index}, shape="keyset", endpoint="groups/",
            decode=decode,
        ), index, group_type)

    def iter_groups(self, *, group_type_index: int) -> Iterator[dict]:
        """Every group of one type, lazily."""
        for page in self.iter_group_pages(group_type_index=group_type_index):
            yield from page

    def iter_group_property_definitions(self, *, group_type_index: int) -> Iterator[dict]:
        """Property definitions for one group type (falls back to the legacy groups endpoint)."""
        index = _check_index(group_type_index)
        pages = self._pager.iter_pages(
            "property_definitions/",
            {"type": "group", "group_type_index": index, "limit": _PROPERTY_DEFINITIONS_LIMIT},
            shape="offset",
            endpoint="property_definitions/",
        )
        missing = False
        try:
            first = next(pages, None)
        except PostHogEndpointMissingError:
            missing = True
        if missing:
            self._log.debug(
                "property_definitions/ is missing; falling back to groups/property_definitions/"
            )
            yield from self._legacy_group_property_definitions(index)
            return
        if first is not None:
            yield from first
            for page in pages:
                yield from page

    def _legacy_group_property_definitions(self, index: int) -> Iterator[dict]:
        path = self._path("groups/property_definitions/")
        body = self._call("GET", path, endpoint="groups/property_definitions/")
        if not isinstance(body, dict):
            raise PostHogPaginationError(
                f"GET {path} returned {type(body).__name__}, expected an object keyed by index."
            )
        items = body.get(str(index)) or []
        self.stats.add(pages=1, items=len(items))
        for item in items:
            yield {
                "name": item.get("name"),
                "count": item.get("count"),
                "property_type": None,
                "is_numerical": None,
            }

    def get_group_property_values(self, *, group_type_index: int, key: str) -> list[dict]:
        """GET groups/property_values/: the top values (at most 20) of one group property."""
        index = _check_index(group_type_index)
        if not key:
            raise ValueError("key must be a non-empty property name")
        path = self._path("groups/property_values/", {"group_type_index": index, "key": key})
        body = self._call("GET", path, endpoint="groups/property_values/")
        results = body.get("results") if isinstance(body, dict) else None
        if not isinstance(results, list):
            raise PostHogPaginationError(f"GET {path} returned no 'results' array.")
        return results

    # ---- exports ------------------------------------------------------------------------

    def iter_export_pages(self, *, limit: int = 100) -> Iterator[list[dict]]:
        """GET exports/ (LimitOffset; only the key owner's exports), page by page, listed again
        until two listings in a row agree on which exports exist, so an export that expires
        mid-listing cannot make the next page skip another (`Pager.iter_complete_offset_pages`).
        """
        if limit < 1:
            raise ValueError("limit must be >= 1")
        return self._pager.iter_complete_offset_pages(
            "exports/", {"limit": limit}, endpoint="exports/"
        )

    def iter_exports(self, *, limit: int = 100) -> Iterator[dict]:
        """Every export visible to the key owner, newest first, lazily."""
        for page in self.iter_export_pages(limit=limit):
            yield from page

    def get_export(self, export_id: int) -> dict:
        """GET exports/{id}/."""
        path = self._path(f"exports/{_check_id(export_id)}/")
        return self._call("GET", path, endpoint="exports/{id}/")

    def create_export(
        self,
        *,
        export_format: str,
        insight: int | None = None,
        dashboard: int | None = None,
        export_context: dict | None = None,
        timeout: float = 600.0,
    ) -> dict:
        """POST exports/ (PostHog renders PNG/CSV/XLSX inside the request, so this can be slow)."""
        if insight is None and dashboard is None and export_context is None:
            raise ValueError("one of insight, dashboard or export_context is required")
        body: dict[str, Any] = {"export_format": export_format}
        if insight is not None:
            body["insight"] = insight
        if dashboard is not None:
            body["dashboard"] = dashboard
        if export_context is not None:
            body["export_context"] = export_context
        path = self._path("exports/")
        call_timeout = httpx.Timeout(timeout, connect=self._t.timeout.connect)
        return self._call(
            "POST",
            path,
            endpoint="exports/",
            json_body=body,
            timeout=call_timeout,
            idempotent=False,
        )

    def wait_for_export(
        self, export_id: int, *, poll_interval: float = 5.0, timeout: float = 1800.0
    ) -> dict:
        """Poll exports/{id}/ until it has content or an exception (the caller checks which)."""
        deadline = time.monotonic() + timeout
        slept = 0.0
        polls = 0
        while True:
            export = self.get_export(export_id)
            polls += 1
            if export.get("has_content") or export.get("exception"):
                self._log.debug("export %s ready after %d polls", export_id, polls)
                return export
            if slept + poll_interval > timeout or time.monotonic() + poll_interval > deadline:
                raise PostHogRetryError(
                    method="GET",
                    path=self._path(f"exports/{_check_id(export_id)}/"),
                    attempts=polls,
                    last_cause="has_content is still false",
                    hint=(
                        f"Export {export_id} produced no content within {timeout:.0f}s; "
                        f"call wait_for_export({export_id}) again later."
                    ),
                )
            self._log.debug("export %s not ready; polling again in %.1fs", export_id, poll_interval)
            self._t.sleep(poll_interval)
            slept += poll_interval

    def download_export_content(self, export_id: int, dest: Path) -> ContentDownload:
        """GET exports/{id}/content/ into dest, following a storage redirect without auth."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        path = self._path(f"exports/{_check_id(export_id)}/content/")
        call = Call("GET", path, "exports/{id}/content/", idempotent=True)
        return posthog_content.download(self._t, call, dest, self._project())

    # ---- explicit members (legacy) ------------------------------------------------------

    def list_explicit_members(self) -> list[dict]:
        """GET explicit_members/ (legacy; current cloud answers 404 Endpoint not found)."""
        path = self._path("explicit_members/")
        body = self._call("GET", path, endpoint="explicit_members/")
        if isinstance(body, dict) and isinstance(body.get("results"), list):
            body = body["results"]
        if not isinstance(body, list):
            raise PostHogPaginationError(f"GET {path} returned no JSON array of members.")
        return body

    def delete_explicit_member(self, user_uuid: str) -> None:
        """DELETE explicit_members/{user_uuid}/."""
        if not user_uuid or "/" in user_uuid:
            raise ValueError("user_uuid must be a user's uuid")
        path = self._path(f"explicit_members/{quote(user_uuid, safe='')}/")
        self._call("DELETE", path, endpoint="explicit_members/{uuid}/", expect_json=False)

    # ---- helpers ------------------------------------------------------------------------

    def project_number(self) -> int:
        """The project's numeric id, which every row it lands carries as `project_id`:
        '@current' is resolved (one request, once)."""
        project = self._project()
        if project == "@current":
            raise PostHogConfigError(
                "POSTHOG_PROJECT_ID=@current: the key cannot read which project that is (it "
                "lacks project:read), and every table's project_id needs the number. Set "
                "POSTHOG_PROJECT_ID to the numeric id (PostHog > Settings > Project > Project "
                "ID), or give the key project:read."
            )
        return int(project)

    def _project(self) -> str:
        """The project id used in paths: the configured one, '@current' resolved once."""
        if self._settings.project_id != "@current":
            return self._settings.project_id
        with self._resolve_lock:
            if self._resolved_project is None:
                self._resolved_project = self._resolve_current()
            return self._resolved_project

    def _resolve_current(self) -> str:
        """GET /api/projects/@current/ once: PostHog deprecates '@current' in paths (it stops
        answering on 2027-04-30), so every later request names the numeric id. A key without
        the project:read scope cannot read it; then '@current' is kept, with a warning."""
        try:
            body = self._t.call("GET", "/api/projects/@current/", endpoint="projects/@current/")
        except PostHogAPIError as e:
            if e.status != 403:
                raise
            self._log.warning(
                "POSTHOG_PROJECT_ID=@current could not be resolved to a project id (%s); still "
                "using '@current', which PostHog deprecates and stops serving on %s: set "
                "POSTHOG_PROJECT_ID to the numeric project id (or give the key project:read)",
                e.detail or e.status, _CURRENT_SUNSET,
            )
            return "@current"
        project = body.get("id") if isinstance(body, dict) else None
        if isinstance(project, bool) or not isinstance(project, int) or project < 1:
            raise PostHogPaginationError(
                "GET /api/projects/@current/ returned no numeric 'id'; set POSTHOG_PROJECT_ID "
                "to the numeric project id (PostHog > Settings > Project > Project ID)."
            )
        self._log.warning(
            "POSTHOG_PROJECT_ID=@current is deprecated by PostHog and stops working on %s; "
            "resolved it to project %d, used from now on: set POSTHOG_PROJECT_ID=%d",
            _CURRENT_SUNSET, project, project,
        )
        return str(project)

    def _path(self, rel: str, params: Mapping[str, Any] | None = None) -> str:
        return self._pager.path(rel, params)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._t.call(method, path, **kwargs)


def _explain_unrenderable(pages: Iterator[list], index: int, group_type: str | None
                          ) -> Iterator[list]:
    """The pages; a page PostHog answers with a 500 on every attempt (or whose 500 says it cannot
    render it) becomes an error naming the group type, where the crawl stood, and why.

    PostHog renders with orjson (posthog/renderers.py), which refuses an integer outside
    [-2^63, 2^64): a group holding one makes its page a 500 for good, though PostHog stored it."""
    n_pages = n_groups = 0
    try:
        for page in pages:
            yield page
            n_pages += 1
            n_groups += len(page)
    except (PostHogRetryError, PostHogAPIError) as e:
        if isinstance(e, PostHogRetryError):
            if not e.last_cause.startswith("500"):
                raise
            why = (f"{e.method} {e.path} failed after {e.attempts} attempts (last cause: "
                   f"{e.last_cause}): PostHog answered 500 on all {e.attempts} attempts. A page "
                   "that fails every time most likely holds a value PostHog cannot render: its "
                   "renderer (orjson) refuses an integer outside [-2^63, 2^64), which PostHog "
                   "stores but cannot show, in its UI too")
        elif e.status == 500:
            why = f"{e.method} {e.path} -> 500: PostHog could not render the page: {e.detail}"
        else:
            raise
        name = f"{index} ({group_type!r})" if group_type is not None else str(index)
        raise PostHogUnrenderablePageError(
            f"groups/ of group type {name}: page {n_pages + 1} (after {n_groups} groups read) "
            f"failed, at {_cursor_position(e.path)}. {why}. Nothing of this sync was published; "
            "fix or remove that value in PostHog, then re-run."
        ) from None


def _cursor_position(path: str) -> str:
    """Where a groups/ request stood: its cursor and what the cursor means (after which group)."""
    cursor = httpx.URL(path).params.get("cursor")
    if cursor is None:
        return "the first page (no cursor)"
    try:
        decoded = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        after = (f"groups after created_at {int(decoded['c'])} us since the epoch, "
                 f"group_key {decoded['k']!r}")
    except (ValueError, KeyError, TypeError):
        after = "a cursor that does not decode"
    return f"cursor {cursor!r} ({after})"


def _check_index(group_type_index: int) -> int:
    if isinstance(group_type_index, bool) or not isinstance(group_type_index, int):
        raise TypeError("group_type_index must be an int")
    if group_type_index < 0:
        raise ValueError("group_type_index must be >= 0")
    return group_type_index


def _check_id(object_id: int) -> int:
    if isinstance(object_id, bool) or not isinstance(object_id, int) or object_id < 1:
        raise ValueError("export ids are positive integers")
    return object_id
