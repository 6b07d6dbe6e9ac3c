"""One PostHog API request, made safely: the key added per request, the shared rate budget,
retries with Retry-After or capped backoff, typed errors, and a fast, clear failure for a host
that has never answered."""

from __future__ import annotations

import email.utils
import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import httpx
from tenacity import RetryCallState, Retrying, stop_after_attempt

from resources import jsontext
from resources.budget import GENERAL, QUERY, RequestBudget
from resources.errors import (
    PostHogAPIError,
    PostHogConnectionError,
    PostHogEndpointMissingError,
    PostHogError,
    PostHogNotFoundError,
    PostHogRetryError,
    UNRENDERABLE_MARKERS,
)
from resources.posthog_config import ConnectionSettings
from resources.posthog_logging import install_http_log_redaction

__all__ = ["DEFAULT_TIMEOUT", "USER_AGENT", "ClientStats", "Transport"]

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
USER_AGENT = "posthog-pipeline/0.1"

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_ENDPOINT_MISSING = "Endpoint not found."
# A host that has never answered gets one quick retry (a blip while a local server starts),
# not the hours of backoff meant for a PostHog that answered and then went away.
_UNANSWERED_ATTEMPTS = 2
_UNANSWERED_DELAY_S = 0.5


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
    by_bucket: dict[str, int] = field(default_factory=dict)
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

    def count_bucket(self, bucket: str) -> None:
        """Count one HTTP request in one of PostHog's throttle buckets."""
        with self._lock:
            self.by_bucket[bucket] = self.by_bucket.get(bucket, 0) + 1

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


@dataclass
class Outcome:
    """The result of one attempt: a value, a retryable cause, or a final error."""

    value: Any = None
    error: PostHogError | None = None
    retry_cause: str | None = None
    retry_after: float | None = None
    status: int | None = None
    # False when repeating the request could duplicate a side effect (a POST that may have run).
    replay_safe: bool = True
    # a connection to PostHog failed and PostHog has not answered this client yet
    unanswered: str | None = None


@dataclass
class Call:
    method: str
    path: str
    endpoint: str
    idempotent: bool
    attempts: int = 0
    # which of PostHog's throttle buckets the request counts in (resources/budget.py)
    bucket: str = GENERAL


class Transport:
    """The httpx client, the key and the retry policy behind every PostHogClient request."""

    def __init__(
        self,
        settings: ConnectionSettings,
        *,
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
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if retry_base_delay < 0 or retry_max_delay < 0:
            raise ValueError("retry delays must be >= 0")
        install_http_log_redaction()
        self.origin = settings.origin
        self.origin_url = httpx.URL(settings.origin)
        self.__key = settings.api_key
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_base_delay = retry_base_delay
        self.retry_max_delay = retry_max_delay
        self.budget = budget
        # the query API's own bucket; None: query requests are not budgeted (as with no budget)
        self.query_budget = query_budget
        self.sleep = sleep
        self.log = logger or logging.getLogger("resources.posthog_client")
        self.stats = ClientStats()
        # set once PostHog (the configured origin) has answered anything at all
        self.answered = False
        self._warned_deprecated: set[str] = set()
        self._warned_lock = threading.Lock()
        # Only the User-Agent is a client default: auth is added per request so a redirect or a
        # storage download can never carry it to another origin.
        self.http = httpx.Client(
            transport=transport,
            timeout=timeout,
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT},
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )

    def close(self) -> None:
        """Close the connection pool and the budget's connection to its store."""
        self.http.close()
        close_budget = getattr(self.budget, "close", None)
        if close_budget is not None:
            close_budget()

    # ---- building requests --------------------------------------------------------------

    def url(self, path: str) -> httpx.URL:
        """The absolute URL of a path+query on the configured origin."""
        return self.origin_url.copy_with(raw_path=path.encode("ascii"))

    def same_origin(self, url: httpx.URL) -> bool:
        """Whether `url` is on the configured origin (scheme, host and port)."""
        return (url.scheme, url.host, url.port) == (
            self.origin_url.scheme,
            self.origin_url.host,
            self.origin_url.port,
        )

    def api_request(
        self, method: str, path: str, *, json_body: Any = None, timeout: httpx.Timeout | None = None
    ) -> httpx.Request:
        """A request to PostHog carrying the key (only ever built for the configured origin)."""
        return self.http.build_request(
            method,
            self.url(path),
            headers={
                "Authorization": f"Bearer {self.__key}",
                "Accept": "application/json",
                "User-Agent": USER_AGENT,
            },
            json=json_body,
            timeout=timeout if timeout is not None else self.timeout,
        )

    def redact(self, text: str) -> str:
        """`text` with the key replaced."""
        return text.replace(self.__key, "[redacted]") if self.__key in text else text

    def begin_attempt(self, call: Call) -> None:
        """Count an attempt and wait for the shared budget before sending it."""
        call.attempts += 1
        self._wait_for_budget(self.budget_for(call))
        self.stats.count_request(f"{call.method} {call.endpoint}")
        self.stats.count_bucket(call.bucket)

    def budget_for(self, call: Call) -> RequestBudget | None:
        """The budget of the throttle bucket `call` counts in."""
        return self.query_budget if call.bucket == QUERY else self.budget

    def heard_from_posthog(self, call: Call, response: httpx.Response) -> None:
        """PostHog answered (any status): later connection errors are outages, not typos."""
        self.answered = True
        self._check_deprecation(call, response)

    # ---- one JSON call ------------------------------------------------------------------

    def call(
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
        bucket: str = GENERAL,
    ) -> Any:
        """One API call with retries; the decoded JSON body (None when not `expect_json`)."""
        call = Call(method, path, endpoint, idempotent=idempotent, bucket=bucket)
        return self.run(
            call,
            lambda: self._attempt_json(
                call, json_body, timeout, expect_json=expect_json, decode=decode
            ),
        )

    def _attempt_json(
        self,
        call: Call,
        json_body: Any,
        timeout: httpx.Timeout | None,
        *,
        expect_json: bool,
        decode: Callable[[bytes], Any],
    ) -> Outcome:
        self.begin_attempt(call)
        request = self.api_request(call.method, call.path, json_body=json_body, timeout=timeout)
        try:
            response = self.http.send(request)
        except httpx.RequestError as exc:
            return self.transport_outcome(call, exc)
        except httpx.InvalidURL:
            return bad_location_outcome(call)
        self.heard_from_posthog(call, response)
        status = response.status_code
        if 200 <= status < 300:
            if not expect_json:
                self.log.debug("%s %s -> %d", call.method, call.path, status)
                return Outcome(status=status)
            try:
                value = decode(response.content)
            except ValueError:
                what = "an empty" if not response.content else "an invalid JSON"
                return Outcome(
                    retry_cause=f"{status} with {what} body",
                    status=status,
                    replay_safe=call.idempotent,
                )
            self.log.debug("%s %s -> %d", call.method, call.path, status)
            return Outcome(value=value, status=status)
        return self.status_outcome(call, response)

    # ---- retry policy -------------------------------------------------------------------

    def run(self, call: Call, attempt: Callable[[], Outcome]) -> Any:
        """Run `attempt` until it succeeds, fails for good, or the retries run out."""
        retrying = Retrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=self._calculate_retry_timeout,
            retry=self._should_retry,
            sleep=self.sleep,
            before_sleep=lambda state: self._before_sleep(call, state),
            retry_error_callback=lambda state: state.outcome.result(),
        )
        outcome: Outcome = retrying(attempt)
        # Raised here, outside any `except`, so no httpx exception (which holds the request and
        # its Authorization header) is ever chained onto our error.
        if outcome.error is not None:
            raise outcome.error
        if outcome.unanswered is not None:
            raise PostHogConnectionError(
                host=self.origin,
                method=call.method,
                path=call.path,
                attempts=call.attempts,
                cause=outcome.unanswered,
            )
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
        outcome: Outcome = retry_state.outcome.result()
        if outcome.retry_cause is None:
            return False
        if outcome.unanswered is not None and retry_state.attempt_number >= _UNANSWERED_ATTEMPTS:
            self.log.debug("not retrying: %s has never answered this client", self.origin)
            return False
        if not outcome.replay_safe:
            self.log.debug(
                "not retrying after %s: the request may have had effects", outcome.retry_cause
            )
            return False
        return True

    def _calculate_retry_timeout(self, retry_state: RetryCallState) -> float:
        """Retry-After when the server sent one, else capped exponential backoff, equal jitter."""
        assert retry_state.outcome is not None
        outcome: Outcome = retry_state.outcome.result()
        if outcome.retry_after is not None:
            return min(outcome.retry_after, self.retry_max_delay)
        if outcome.unanswered is not None:
            return min(_UNANSWERED_DELAY_S, self.retry_max_delay)
        backoff = min(
            self.retry_base_delay * 2 ** (retry_state.attempt_number - 1), self.retry_max_delay
        )
        return backoff / 2 + random.uniform(0.0, backoff / 2)

    def _before_sleep(self, call: Call, retry_state: RetryCallState) -> None:
        assert retry_state.outcome is not None
        outcome: Outcome = retry_state.outcome.result()
        delay = retry_state.upcoming_sleep
        self.stats.add(retries=1)
        budget = self.budget_for(call)
        if outcome.status == 429 and budget is not None:
            # Every process sharing the key holds off, not just this one, in this bucket only:
            # a throttled query does not stop the REST listings, nor the other way round.
            budget.pause_until(budget.now() + delay)
        self.log.info(
            "%s %s: %s; retry %d/%d in %.2fs (%s)",
            call.method,
            call.path,
            outcome.retry_cause,
            retry_state.attempt_number,
            _UNANSWERED_ATTEMPTS - 1 if outcome.unanswered is not None else self.max_retries,
            delay,
            "Retry-After" if outcome.retry_after is not None else "backoff",
        )

    def _wait_for_budget(self, budget: RequestBudget | None) -> None:
        if budget is None:
            return
        waited = budget.acquire()
        if waited:
            self.stats.add(waited_for_budget_s=waited)
            self.log.debug("waited %.2fs for the shared request budget", waited)

    # ---- classifying what happened ------------------------------------------------------

    def transport_outcome(self, call: Call, exc: httpx.RequestError, where: str = "") -> Outcome:
        """What a network-level failure means; `where` names a host other than PostHog."""
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
            return Outcome(
                error=PostHogError(
                    f"{call.method} {call.path} failed: {cause} "
                    f"({self.redact(str(exc))[:200]}). Check POSTHOG_HOST and the network."
                )
            )
        # A request that never reached the server can always be replayed.
        never_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
        unanswered = None
        if (
            not where
            and not self.answered
            and isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.ProxyError)
        ):
            unanswered = f"{name}: {self.redact(str(exc))[:200] or 'no detail'}"
        return Outcome(
            retry_cause=cause, replay_safe=call.idempotent or never_sent, unanswered=unanswered
        )

    def status_outcome(self, call: Call, response: httpx.Response) -> Outcome:
        """What a non-2xx answer from PostHog means."""
        status = response.status_code
        code, detail = self._error_fields(response)
        unrenderable = status == 500 and any(m in (detail or "") for m in UNRENDERABLE_MARKERS)
        if status in RETRYABLE_STATUSES and not unrenderable:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if status == 429:
                self.stats.add(throttled=1)
                note = getattr(self.budget_for(call), "note_throttled", None)
                if note is not None:
                    # the server allows less than we thought: it is learned, in this bucket
                    note(retry_after)
            return Outcome(
                retry_cause=f"{status} {code}" if code else str(status),
                retry_after=retry_after,
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
        if status in REDIRECT_STATUSES:
            target = absolute_target(response.headers.get("Location", ""))
            detail = (
                f"redirected to {describe_url(target) if target else 'a relative or invalid URL'}"
            )
        self.log.debug("%s %s -> %d %s (not retryable)", call.method, call.path, status, code)
        return Outcome(
            error=cls(
                status=status,
                method=call.method,
                path=call.path,
                code=code,
                detail=detail,
                endpoint=call.endpoint,
            ),
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
                self.redact(str(code)) if code is not None else None,
                self.redact(str(detail))[:500] if detail is not None else None,
            )
        text = response.text.strip() if response.content else ""
        if text and not text.startswith("<"):
            return None, self.redact(text)[:200]
        return None, None  # empty or HTML (PostHog's edge 429 page): nothing useful to quote

    def _check_deprecation(self, call: Call, response: httpx.Response) -> None:
        if "Deprecation" not in response.headers:
            return
        key = f"{call.method} {call.endpoint}"
        with self._warned_lock:
            if key in self._warned_deprecated:
                return
            self._warned_deprecated.add(key)
        self.log.warning(
            "PostHog marks %s as deprecated (Deprecation: %s; Link: %s; Sunset: %s)",
            key,
            response.headers.get("Deprecation"),
            response.headers.get("Link", "-"),
            response.headers.get("Sunset", "-"),
        )


def parse_retry_after(value: str | None) -> float | None:
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


def bad_location_outcome(call: Call) -> Outcome:
    """httpx parses Location eagerly and raises InvalidURL for garbage ones."""
    return Outcome(
        error=PostHogError(
            f"{call.method} {call.path} answered a redirect with an invalid Location header; "
            "check POSTHOG_HOST points at PostHog (or its storage configuration)."
        )
    )


def absolute_target(location: str) -> httpx.URL | None:
    """An absolute http(s) URL from a Location header, or None."""
    if not location:
        return None
    try:
        url = httpx.URL(location)
    except (httpx.InvalidURL, ValueError, TypeError):
        return None
    if url.scheme not in ("http", "https") or not url.host:
        return None
    return url


def describe_url(url: httpx.URL) -> str:
    """scheme://host only: presigned URLs carry credentials in their query."""
    if not url.host:
        return "a relative URL"
    return f"{url.scheme}://{url.host}" + (f":{url.port}" if url.port else "")
