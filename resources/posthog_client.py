"""PostHog private API client: retries, shared rate budget, guarded pagination, typed errors."""

from __future__ import annotations

import email.utils
import functools
import hashlib
import json
import logging
import math
import os
import random
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlencode

import httpx
import msgspec
from tenacity import RetryCallState, Retrying, stop_after_attempt

from resources import jsontext
from resources.budget import RequestBudget
from resources.errors import (
    PostHogAPIError,
    PostHogConfigError,
    PostHogEndpointMissingError,
    PostHogError,
    PostHogNotFoundError,
    PostHogPaginationError,
    PostHogRetryError,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "USER_AGENT",
    "ClientStats",
    "ContentDownload",
    "PostHogClient",
    "RawGroup",
    "normalize_host",
    "validate_api_key",
    "validate_project_id",
]

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
USER_AGENT = "posthog-pipeline/0.1"

_RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECT_HOPS = 3
# a redirect body up to this size is read so its connection can be reused
_SMALL_BODY = 64 * 1024
_CHUNK_BYTES = 64 * 1024
_MAX_EMPTY_PAGES = 10
_PROPERTY_DEFINITIONS_LIMIT = 500
_ENDPOINT_MISSING = "Endpoint not found."
_PROJECT_ID_RE = re.compile(r"[1-9][0-9]*")
_PROJECT_PATH_RE = re.compile(r"^/api/(projects|environments)/(@current|[0-9]+)/(.*)$")
_KEY_RE = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no whitespace: safe in a header


class RawGroup(msgspec.Struct, forbid_unknown_fields=True):
    """A group as groups/ lists it, its properties kept as the JSON text the page held.

    Only from a page that `jsontext.is_canonical` accepts, so `group_properties` is exactly the
    text `json.dumps(properties, ensure_ascii=False, separators=(",", ":"))` writes.
    """

    group_type_index: int
    group_key: str
    group_properties: msgspec.Raw
    created_at: str


class _RawGroupsPage(msgspec.Struct):  # other envelope fields (previous, count) are not needed
    results: list[RawGroup]
    next: str | None = None


_RAW_GROUPS_PAGE = msgspec.json.Decoder(_RawGroupsPage)


def _decode_groups_page(content: bytes, note: Callable[[str, bool], None] | None = None) -> Any:
    """A groups page whose items are `RawGroup`s when every item has exactly the four fields,
    typed as PostHog types them, non-null properties, and the page is canonical JSON; anything
    else as `jsontext.loads` reads it (a list of dicts), so nothing unusual is lost or altered.

    `note(why, new_shape)` hears why a page was read the slower way; `new_shape` when its groups
    are not the four fields as PostHog types them (a field added to the API, say)."""
    new_shape = False
    try:
        page = _RAW_GROUPS_PAGE.decode(content)
    except msgspec.MsgspecError as e:  # not that shape (or not JSON: jsontext.loads says so)
        why, new_shape = f"its groups are not the four fields PostHog lists ({e})", True
    else:
        if b'"group_properties":null' in content:
            why = "a group has null group_properties"
        elif not jsontext.is_canonical(content):
            why = "the page is not JSON exactly as PostHog writes it (spacing, escapes or numbers)"
        else:
            return {"next": page.next, "results": page.results}
    result = jsontext.loads(content)
    if note:
        note(why, new_shape)
    return result


def normalize_host(host: str) -> str:
    """Validate POSTHOG_HOST and return its origin (scheme://host[:port], no trailing slash)."""
    if not isinstance(host, str) or not host or host != host.strip():
        raise PostHogConfigError(
            "POSTHOG_HOST must be an origin such as https://us.posthog.com "
            "(no surrounding whitespace)."
        )
    try:
        url = httpx.URL(host)
    except (httpx.InvalidURL, ValueError, TypeError):
        raise PostHogConfigError(
            "POSTHOG_HOST is not a valid URL; use an origin such as https://us.posthog.com."
        ) from None
    if url.userinfo:
        # Never echo the value: someone may have pasted a key into it.
        raise PostHogConfigError(
            "POSTHOG_HOST must not contain user:password@; put the key in "
            "POSTHOG_PERSONAL_API_KEY and use an origin such as https://us.posthog.com."
        )
    if url.scheme not in ("http", "https") or not url.host:
        raise PostHogConfigError(
            f"POSTHOG_HOST={host!r} must start with https:// (or http://) and name a host, "
            "e.g. https://us.posthog.com or https://eu.posthog.com."
        )
    if url.path not in ("", "/") or url.query or url.fragment:
        raise PostHogConfigError(
            f"POSTHOG_HOST={host!r} must be just the origin (no path, query or fragment), "
            "e.g. https://us.posthog.com, not .../api/projects/1."
        )
    origin = httpx.URL(scheme=url.scheme, host=url.host, port=url.port)
    return str(origin).rstrip("/")


def validate_project_id(project_id: str | int) -> str:
    """Validate POSTHOG_PROJECT_ID: a positive integer or '@current'."""
    value = str(project_id)
    if value == "@current" or _PROJECT_ID_RE.fullmatch(value):
        return value
    raise PostHogConfigError(
        f"POSTHOG_PROJECT_ID={value!r} is invalid: use the numeric project id "
        "(PostHog > Settings > Project > Project ID) or '@current'."
    )


def validate_api_key(api_key: str) -> str:
    """Validate POSTHOG_PERSONAL_API_KEY without ever echoing it."""
    if not isinstance(api_key, str) or not api_key:
        raise PostHogConfigError(
            "POSTHOG_PERSONAL_API_KEY is not set: create a personal API key "
            "(PostHog > Settings > Personal API keys) with group:read and export:read scopes."
        )
    if not _KEY_RE.fullmatch(api_key):
        raise PostHogConfigError(
            "POSTHOG_PERSONAL_API_KEY contains whitespace, a newline or non-ASCII characters; "
            "paste the key again without surrounding spaces or quotes."
        )
    if api_key.startswith("phc_"):
        raise PostHogConfigError(
            "POSTHOG_PERSONAL_API_KEY looks like a project API token (phc_...), which cannot "
            "read the private API; create a personal API key (phx_...) instead."
        )
    return api_key


@dataclass
class ClientStats:
    """Counters for one client, safe to bump from many threads; feeds Dagster asset metadata."""

    requests: int = 0
    retries: int = 0
    throttled: int = 0
    pages: int = 0
    items: int = 0
    bytes_downloaded: int = 0
    waited_for_budget_s: float = 0.0
    by_endpoint: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **deltas: float) -> None:
        """Add to numeric counters atomically."""
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def count_request(self, endpoint: str) -> None:
        """Count one HTTP request sent to `endpoint`."""
        with self._lock:
            self.requests += 1
            self.by_endpoint[endpoint] = self.by_endpoint.get(endpoint, 0) + 1

    def as_metadata(self) -> dict[str, Any]:
        """A plain snapshot suitable for Dagster MaterializeResult metadata."""
        with self._lock:
            return {
                "requests": self.requests,
                "retries": self.retries,
                "throttled": self.throttled,
                "pages": self.pages,
                "items": self.items,
                "bytes_downloaded": self.bytes_downloaded,
                "waited_for_budget_s": round(self.waited_for_budget_s, 3),
                "by_endpoint": dict(sorted(self.by_endpoint.items())),
            }


@dataclass(frozen=True)
class ContentDownload:
    """A downloaded export file and what we know about it."""

    path: Path
    sha256: str
    size_bytes: int
    content_type: str | None


@dataclass
class _Outcome:
    """The result of one attempt: a value, a retryable cause, or a final error."""

    value: Any = None
    error: PostHogError | None = None
    retry_cause: str | None = None
    retry_after: float | None = None
    status: int | None = None
    # False when repeating the request could duplicate a side effect (a POST that may have run).
    replay_safe: bool = True


@dataclass
class _Call:
    method: str
    path: str
    endpoint: str
    idempotent: bool
    attempts: int = 0


class PostHogClient:
    """PostHog private API over one httpx.Client: groups, group types, exports, explicit members."""

    def __init__(
        self,
        *,
        host: str,
        project_id: str,
        api_key: str,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = 8,
        retry_base_delay: float = 0.5,
        retry_max_delay: float = 3600.0,
        budget: RequestBudget | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        logger: logging.Logger | None = None,
        max_connections: int = 16,
    ) -> None:
        self._origin = normalize_host(host)
        self._origin_url = httpx.URL(self._origin)
        self._project_id = validate_project_id(project_id)
        self.__key = validate_api_key(api_key)
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if retry_base_delay < 0 or retry_max_delay < 0:
            raise ValueError("retry delays must be >= 0")
        self._timeout = timeout
        self._max_retries = max_retries
        self._retry_base_delay = retry_base_delay
        self._retry_max_delay = retry_max_delay
        self._budget = budget
        self._sleep = sleep
        self._log = logger or logging.getLogger(__name__)
        self._warned_deprecated: set[str] = set()
        self._warned_lock = threading.Lock()
        self.stats = ClientStats()
        # Only the User-Agent is a client default: auth is added per request so a redirect or a
        # storage download can never carry it to another origin.
        self._http = httpx.Client(
            transport=transport,
            timeout=timeout,
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT},
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )

    def __repr__(self) -> str:
        return f"PostHogClient(host={self._origin!r}, project_id={self._project_id!r})"

    def __enter__(self) -> PostHogClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    @property
    def budget_rate(self) -> float | None:
        """Requests per second the rate budget sustains (None when unlimited)."""
        return self._budget.sustained_rate if self._budget is not None else None

    @property
    def host(self) -> str:
        """The configured origin."""
        return self._origin

    @property
    def project_id(self) -> str:
        """The configured project id (numeric or '@current')."""
        return self._project_id

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
        self, *, group_type_index: int, raw_properties: bool = False
    ) -> Iterator[list[dict] | list[RawGroup]]:
        """GET groups/?group_type_index=N, following the keyset `next` links page by page.

        With `raw_properties`, a page PostHog wrote plainly (the usual case) comes as a list of
        `RawGroup`: the properties stay the JSON text the page held, never decoded into dicts
        and encoded again. Any other page still comes as a list of dicts.
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
        return self._iter_pages(
            "groups/", {"group_type_index": index}, shape="keyset", endpoint="groups/",
            decode=decode,
        )

    def iter_groups(self, *, group_type_index: int) -> Iterator[dict]:
        """Every group of one type, lazily."""
        for page in self.iter_group_pages(group_type_index=group_type_index):
            yield from page

    def iter_group_property_definitions(self, *, group_type_index: int) -> Iterator[dict]:
        """Property definitions for one group type (falls back to the legacy groups endpoint)."""
        index = _check_index(group_type_index)
        pages = self._iter_pages(
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
        """GET exports/ (LimitOffset; only the key owner's exports), page by page."""
        if limit < 1:
            raise ValueError("limit must be >= 1")
        return self._iter_pages("exports/", {"limit": limit}, shape="offset", endpoint="exports/")

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
        call_timeout = httpx.Timeout(timeout, connect=self._timeout.connect)
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
            self._sleep(poll_interval)
            slept += poll_interval

    def download_export_content(self, export_id: int, dest: Path) -> ContentDownload:
        """GET exports/{id}/content/ into dest, following a storage redirect without auth."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        path = self._path(f"exports/{_check_id(export_id)}/content/")
        call = _Call("GET", path, "exports/{id}/content/", idempotent=True)
        return self._run(call, lambda: self._attempt_download(call, dest))

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

    # ---- request machinery --------------------------------------------------------------

    def _path(self, rel: str, params: Mapping[str, Any] | None = None) -> str:
        path = f"/api/projects/{self._project_id}/{rel}"
        return f"{path}?{urlencode(params, doseq=True)}" if params else path

    def _url(self, path: str) -> httpx.URL:
        return self._origin_url.copy_with(raw_path=path.encode("ascii"))

    def _api_headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.__key}",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }

    def _redact(self, text: str) -> str:
        return text.replace(self.__key, "[redacted]") if self.__key in text else text

    def _call(
        self,
        method: str,
        path: str,
        *,
        endpoint: str,
        json_body: Any = None,
        timeout: httpx.Timeout | None = None,
        idempotent: bool = True,
        expect_json: bool = True,
        decode: Callable[[bytes], Any] = jsontext.loads,
    ) -> Any:
        call = _Call(method, path, endpoint, idempotent=idempotent)
        return self._run(
            call,
            lambda: self._attempt_json(
                call, json_body, timeout, expect_json=expect_json, decode=decode
            ),
        )

    def _run(self, call: _Call, attempt: Callable[[], _Outcome]) -> Any:
        retrying = Retrying(
            stop=stop_after_attempt(self._max_retries + 1),
            wait=self._calculate_retry_timeout,
            retry=self._should_retry,
            sleep=self._sleep,
            before_sleep=lambda state: self._before_sleep(call, state),
            retry_error_callback=lambda state: state.outcome.result(),
        )
        outcome: _Outcome = retrying(attempt)
        # Raised here, outside any `except`, so no httpx exception (which holds the request and
        # its Authorization header) is ever chained onto our error.
        if outcome.error is not None:
            raise outcome.error
        if outcome.retry_cause is not None:
            hint = None
            if not outcome.replay_safe and not call.idempotent:
                hint = (
                    "Not retried because PostHog may already have created the export: find it "
                    "with iter_exports() (newest first) and poll it with wait_for_export() "
                    "instead of posting again."
                )
            raise PostHogRetryError(
                method=call.method,
                path=call.path,
                attempts=call.attempts,
                last_cause=outcome.retry_cause,
                hint=hint,
            )
        return outcome.value

    def _should_retry(self, retry_state: RetryCallState) -> bool:
        """Retry only retryable outcomes, and a non-idempotent call only if it never ran."""
        assert retry_state.outcome is not None
        if retry_state.outcome.failed:
            return False  # a bug in our code: let it propagate
        outcome: _Outcome = retry_state.outcome.result()
        if outcome.retry_cause is None:
            return False
        if not outcome.replay_safe:
            self._log.debug(
                "not retrying after %s: the request may have had effects", outcome.retry_cause
            )
            return False
        return True

    def _calculate_retry_timeout(self, retry_state: RetryCallState) -> float:
        """Retry-After when the server sent one, else capped exponential backoff, equal jitter."""
        assert retry_state.outcome is not None
        outcome: _Outcome = retry_state.outcome.result()
        if outcome.retry_after is not None:
            return min(outcome.retry_after, self._retry_max_delay)
        backoff = min(
            self._retry_base_delay * 2 ** (retry_state.attempt_number - 1), self._retry_max_delay
        )
        return backoff / 2 + random.uniform(0.0, backoff / 2)

    def _before_sleep(self, call: _Call, retry_state: RetryCallState) -> None:
        assert retry_state.outcome is not None
        outcome: _Outcome = retry_state.outcome.result()
        delay = retry_state.upcoming_sleep
        self.stats.add(retries=1)
        if outcome.status == 429 and self._budget is not None:
            # Every process sharing the key holds off, not just this one.
            self._budget.pause_until(self._budget.now() + delay)
        self._log.info(
            "%s %s: %s; retry %d/%d in %.2fs (%s)",
            call.method,
            call.path,
            outcome.retry_cause,
            retry_state.attempt_number,
            self._max_retries,
            delay,
            "Retry-After" if outcome.retry_after is not None else "backoff",
        )

    def _wait_for_budget(self) -> None:
        if self._budget is None:
            return
        waited = self._budget.acquire()
        if waited:
            self.stats.add(waited_for_budget_s=waited)
            self._log.debug("waited %.2fs for the shared request budget", waited)

    def _attempt_json(
        self,
        call: _Call,
        json_body: Any,
        timeout: httpx.Timeout | None,
        *,
        expect_json: bool,
        decode: Callable[[bytes], Any] = jsontext.loads,
    ) -> _Outcome:
        call.attempts += 1
        self._wait_for_budget()
        self.stats.count_request(f"{call.method} {call.endpoint}")
        request = self._http.build_request(
            call.method,
            self._url(call.path),
            headers=self._api_headers(),
            json=json_body,
            timeout=timeout if timeout is not None else self._timeout,
        )
        try:
            response = self._http.send(request)
        except httpx.RequestError as exc:
            return self._transport_outcome(call, exc)
        except httpx.InvalidURL:
            return _bad_location_outcome(call)
        self._check_deprecation(call, response)
        status = response.status_code
        if 200 <= status < 300:
            if not expect_json:
                self._log.debug("%s %s -> %d", call.method, call.path, status)
                return _Outcome(status=status)
            try:
                value = decode(response.content)
            except ValueError:
                what = "an empty" if not response.content else "an invalid JSON"
                return _Outcome(
                    retry_cause=f"{status} with {what} body",
                    status=status,
                    replay_safe=call.idempotent,
                )
            self._log.debug("%s %s -> %d", call.method, call.path, status)
            return _Outcome(value=value, status=status)
        return self._status_outcome(call, response)

    def _attempt_download(self, call: _Call, dest: Path) -> _Outcome:
        call.attempts += 1
        self._wait_for_budget()
        self.stats.count_request(f"{call.method} {call.endpoint}")
        request = self._http.build_request("GET", self._url(call.path), headers=self._api_headers())
        try:
            response = self._http.send(request, stream=True)
        except httpx.RequestError as exc:
            return self._transport_outcome(call, exc)
        except httpx.InvalidURL:
            return _bad_location_outcome(call)
        try:
            self._check_deprecation(call, response)
            hops = 0
            while response.status_code in _REDIRECT_STATUSES:
                location = response.headers.get("Location", "")
                _release(response)
                hops += 1
                target = _storage_target(location)
                if target is None or hops > _MAX_REDIRECT_HOPS:
                    why = "too many redirects" if target is not None else "an unusable Location"
                    return _Outcome(
                        error=PostHogAPIError(
                            status=response.status_code,
                            method=call.method,
                            path=call.path,
                            detail=f"content redirect with {why}",
                            hint="Expected one redirect to an absolute http(s) storage URL.",
                        )
                    )
                self._log.debug(
                    "%s %s -> %d to storage at %s",
                    call.method,
                    call.path,
                    response.status_code,
                    _describe_url(target),
                )
                self.stats.count_request("GET storage")
                # A bare request: no Authorization and no PostHog headers go to storage.
                storage_request = self._http.build_request("GET", target)
                try:
                    response = self._http.send(storage_request, stream=True)
                except httpx.RequestError as exc:
                    return self._transport_outcome(call, exc, where="storage ")
                except httpx.InvalidURL:
                    return _bad_location_outcome(call)
            status = response.status_code
            if 200 <= status < 300:
                return self._stream_to_file(call, response, dest)
            if hops:
                response.read()
                if status == 403 or status in _RETRYABLE_STATUSES:
                    # 403 from storage means the presigned URL expired: ask PostHog for a new one.
                    return _Outcome(
                        retry_cause=f"storage {status}",
                        retry_after=_parse_retry_after(response.headers.get("Retry-After")),
                        status=None,
                    )
                return _Outcome(
                    error=PostHogAPIError(
                        status=status,
                        method=call.method,
                        path=call.path,
                        detail=f"object storage answered {status} for the export content",
                        hint="Re-run later; if it persists the export's stored file is gone.",
                    )
                )
            response.read()
            return self._status_outcome(call, response)
        except httpx.RequestError as exc:
            return self._transport_outcome(call, exc)
        finally:
            response.close()

    def _stream_to_file(self, call: _Call, response: httpx.Response, dest: Path) -> _Outcome:
        declared = response.headers.get("Content-Length")
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        tmp = Path(tmp_name)
        done = False
        try:
            with os.fdopen(fd, "wb") as fh:
                try:
                    for chunk in response.iter_bytes(_CHUNK_BYTES):
                        fh.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
                except httpx.RequestError as exc:
                    return self._transport_outcome(call, exc, where="download ")
            # no fsync here: the file is handed on complete, and whoever keeps it makes it
            # durable (Lake.store_content fsyncs before filing it), so it is not synced twice
            encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
            # Content-Length counts bytes on the wire, which differ from the file when encoded.
            received = size if encoding in ("", "identity") else response.num_bytes_downloaded
            if size == 0:
                # PostHog never stores an empty export; an empty 200 is a broken response
                return _Outcome(retry_cause="empty body for export content")
            if declared is not None and declared.strip().isdigit() and int(declared) != received:
                return _Outcome(
                    retry_cause=(
                        f"incomplete body (Content-Length {int(declared)}, received {received})"
                    )
                )
            os.replace(tmp, dest)
            done = True
        finally:
            if not done:
                tmp.unlink(missing_ok=True)
        self.stats.add(bytes_downloaded=size)
        self._log.debug("%s %s: wrote %d bytes to %s", call.method, call.path, size, dest)
        return _Outcome(
            value=ContentDownload(
                path=dest,
                sha256=digest.hexdigest(),
                size_bytes=size,
                content_type=response.headers.get("Content-Type"),
            ),
            status=response.status_code,
        )

    def _transport_outcome(self, call: _Call, exc: httpx.RequestError, where: str = "") -> _Outcome:
        name = type(exc).__name__
        cause = f"{where}{name}"
        retryable = isinstance(
            exc,
            httpx.TimeoutException
            | httpx.NetworkError
            | httpx.RemoteProtocolError
            | httpx.ProxyError
            | httpx.DecodingError,
        )
        if not retryable:
            return _Outcome(
                error=PostHogError(
                    f"{call.method} {call.path} failed: {cause} "
                    f"({self._redact(str(exc))[:200]}). Check POSTHOG_HOST and the network."
                )
            )
        # A request that never reached the server can always be replayed.
        never_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
        return _Outcome(retry_cause=cause, replay_safe=call.idempotent or never_sent)

    def _status_outcome(self, call: _Call, response: httpx.Response) -> _Outcome:
        status = response.status_code
        code, detail = self._error_fields(response)
        if status in _RETRYABLE_STATUSES:
            if status == 429:
                self.stats.add(throttled=1)
            return _Outcome(
                retry_cause=f"{status} {code}" if code else str(status),
                retry_after=_parse_retry_after(response.headers.get("Retry-After")),
                status=status,
                # Throttling runs before the view, and 408 means the request never arrived whole.
                replay_safe=call.idempotent or status in (408, 429),
            )
        cls: type[PostHogAPIError] = PostHogAPIError
        if status == 404:
            cls = (
                PostHogEndpointMissingError
                if (detail or "").strip() == _ENDPOINT_MISSING
                else PostHogNotFoundError
            )
        if status in _REDIRECT_STATUSES:
            target = _storage_target(response.headers.get("Location", ""))
            detail = (
                f"redirected to {_describe_url(target) if target else 'a relative or invalid URL'}"
            )
        self._log.debug("%s %s -> %d %s (not retryable)", call.method, call.path, status, code)
        return _Outcome(
            error=cls(status=status, method=call.method, path=call.path, code=code, detail=detail),
            status=status,
        )

    def _error_fields(self, response: httpx.Response) -> tuple[str | None, str | None]:
        try:
            body = json.loads(response.content)
        except ValueError:
            body = None
        if isinstance(body, list) and body and isinstance(body[0], dict):
            body = body[0]
        if isinstance(body, dict):
            code = body.get("code")
            detail = body.get("detail")
            return (
                self._redact(str(code)) if code is not None else None,
                self._redact(str(detail))[:500] if detail is not None else None,
            )
        text = response.text.strip() if response.content else ""
        if text and not text.startswith("<"):
            return None, self._redact(text)[:200]
        return None, None  # empty or HTML (PostHog's edge 429 page): nothing useful to quote

    def _check_deprecation(self, call: _Call, response: httpx.Response) -> None:
        if "Deprecation" not in response.headers:
            return
        key = f"{call.method} {call.endpoint}"
        with self._warned_lock:
            if key in self._warned_deprecated:
                return
            self._warned_deprecated.add(key)
        self._log.warning(
            "PostHog marks %s as deprecated (Deprecation: %s; Link: %s; Sunset: %s)",
            key,
            response.headers.get("Deprecation"),
            response.headers.get("Link", "-"),
            response.headers.get("Sunset", "-"),
        )

    # ---- pagination ---------------------------------------------------------------------

    def _iter_pages(
        self,
        rel: str,
        params: Mapping[str, Any],
        *,
        shape: Literal["keyset", "offset"],
        endpoint: str,
        decode: Callable[[bytes], Any] = jsontext.loads,
    ) -> Iterator[list]:
        path = self._path(rel, dict(params))
        seen = {path}
        seen_cursors: set[str] = set()
        expected_count: int | None = None
        count_changed = False
        total = 0
        empty_streak = 0
        warned_rebase = False
        while True:
            body = self._call("GET", path, endpoint=endpoint, decode=decode)
            if not isinstance(body, dict) or not isinstance(body.get("results"), list):
                raise PostHogPaginationError(
                    f"GET {path} returned {type(body).__name__} without a 'results' array; "
                    "check POSTHOG_HOST points at PostHog."
                )
            results = body["results"]
            count = body.get("count")
            if shape == "offset" and isinstance(count, int) and not isinstance(count, bool):
                if expected_count is None:
                    expected_count = count
                elif count != expected_count:
                    self._log.debug(
                        "%s: count changed %d -> %d mid-listing", rel, expected_count, count
                    )
                    count_changed = True
            total += len(results)
            self.stats.add(pages=1, items=len(results))
            yield results
            next_url = body.get("next")
            if next_url is None or next_url == "":
                break
            if not isinstance(next_url, str):
                raise PostHogPaginationError(
                    f"GET {path} returned a non-string next link; refusing to continue."
                )
            path, rebased = self._resolve_next(next_url, rel=rel, current=path)
            if rebased and not warned_rebase:
                warned_rebase = True
                self._log.warning(
                    "%s: next link pointed at %s; rebased onto %s (not followed)",
                    rel,
                    _describe_url(httpx.URL(next_url)),
                    self._origin,
                )
            cursor = httpx.URL(path).params.get("cursor")
            if path in seen or (cursor is not None and cursor in seen_cursors):
                raise PostHogPaginationError(
                    f"GET {path} was already fetched in this listing: PostHog returned a repeated "
                    "cursor (a bad cursor restarts at page 1). Stopped to avoid looping; re-run "
                    "the sync from scratch."
                )
            seen.add(path)
            if cursor is not None:
                seen_cursors.add(cursor)
            empty_streak = 0 if results else empty_streak + 1
            if empty_streak >= _MAX_EMPTY_PAGES:
                raise PostHogPaginationError(
                    f"{rel}: {empty_streak} empty pages in a row that still had a next link; "
                    "stopped to avoid an endless listing."
                )
        if (
            shape == "offset"
            and expected_count is not None
            and not count_changed
            and total < expected_count
        ):
            raise PostHogPaginationError(
                f"truncated listing: {rel} reported count={expected_count} but the pages held "
                f"{total} items before next became null; re-run the sync (do not trust this one)."
            )

    def _resolve_next(self, next_url: str, *, rel: str, current: str) -> tuple[str, bool]:
        """Turn an untrusted `next` into a path+query on our own origin (and say if we rebased)."""
        try:
            url = self._url(current).join(next_url)
        except (httpx.InvalidURL, ValueError, TypeError):
            raise PostHogPaginationError(
                f"{rel}: next link is not a valid URL; refusing to follow it."
            ) from None
        if url.scheme not in ("http", "https"):
            raise PostHogPaginationError(
                f"{rel}: next link has scheme {url.scheme!r}; refusing to follow it."
            )
        rebased = (url.scheme, url.host, url.port) != (
            self._origin_url.scheme,
            self._origin_url.host,
            self._origin_url.port,
        )
        match = _PROJECT_PATH_RE.match(url.path)
        if match is None:
            raise PostHogPaginationError(
                f"{rel}: next link path is outside /api/projects/<id>/; refusing to follow it."
            )
        kind, project, rest = match.groups()
        if self._project_id != "@current" and project != self._project_id:
            raise PostHogPaginationError(
                f"{rel}: next link points at project {project}, not POSTHOG_PROJECT_ID="
                f"{self._project_id}; refusing to follow it."
            )
        if rest.rstrip("/") != rel.rstrip("/"):
            raise PostHogPaginationError(
                f"{rel}: next link points at another endpoint ({rest!r}); refusing to follow it."
            )
        raw = url.raw_path.decode("ascii")
        if kind == "environments":
            raw = "/api/projects/" + raw[len("/api/environments/") :]
        return raw, rebased


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


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or HTTP-date); None if absent or past."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds) or seconds <= 0:
        return None
    return seconds


def _bad_location_outcome(call: _Call) -> _Outcome:
    # httpx parses Location eagerly and raises InvalidURL for garbage ones.
    return _Outcome(
        error=PostHogError(
            f"{call.method} {call.path} answered a redirect with an invalid Location header; "
            "check POSTHOG_HOST points at PostHog (or its storage configuration)."
        )
    )


def _release(response: httpx.Response) -> None:
    """Close a redirect. Its body (empty, from PostHog) is read first when it is small, so the
    connection goes back to the pool: closed unread, it is dropped, and every download opened
    a new connection to PostHog."""
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) <= _SMALL_BODY:
        try:
            response.read()
        except httpx.HTTPError:
            pass  # the redirect is what counts; the connection is dropped, as before
    response.close()


def _storage_target(location: str) -> httpx.URL | None:
    if not location:
        return None
    try:
        url = httpx.URL(location)
    except (httpx.InvalidURL, ValueError, TypeError):
        return None
    if url.scheme not in ("http", "https") or not url.host:
        return None
    return url


def _describe_url(url: httpx.URL) -> str:
    """scheme://host only: presigned URLs carry credentials in their query."""
    if not url.host:
        return "a relative URL"
    return f"{url.scheme}://{url.host}" + (f":{url.port}" if url.port else "")
