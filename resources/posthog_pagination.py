"""Walking PostHog listings: keyset (`next` links) and limit/offset, with the guards that keep a
listing on our origin, our project and our endpoint, stop loops, and prove a limit/offset
listing complete."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal
from urllib.parse import urlencode

import httpx

from resources import jsontext
from resources.errors import PostHogPaginationError
from resources.posthog_transport import Transport, describe_url

__all__ = ["Pager", "MAX_EMPTY_PAGES", "MAX_LISTINGS"]

MAX_EMPTY_PAGES = 10
# limit/offset listings are walked until two in a row hold the same ids; at most this many
MAX_LISTINGS = 4
_PROJECT_PATH_RE = re.compile(r"^/api/(projects|environments)/(@current|[0-9]+)/(.*)$")


class Pager:
    """Lists one project's endpoints through a `Transport`."""

    def __init__(self, transport: Transport, project_id: Callable[[], str]) -> None:
        self._t = transport
        # a callable: '@current' is resolved to the numeric id on first use
        self._project_id = project_id

    @property
    def _log(self) -> logging.Logger | logging.LoggerAdapter:
        return self._t.log

    def path(self, rel: str, params: Mapping[str, Any] | None = None) -> str:
        """/api/projects/<id>/<rel>[?params]."""
        path = f"/api/projects/{self._project_id()}/{rel}"
        return f"{path}?{urlencode(params, doseq=True)}" if params else path

    def iter_pages(
        self,
        rel: str,
        params: Mapping[str, Any],
        *,
        shape: Literal["keyset", "offset"],
        endpoint: str,
        decode: Callable[[bytes], Any] = jsontext.loads,
    ) -> Iterator[list]:
        """One walk of a listing, page by page, following `next` until it is null."""
        t = self._t
        path = self.path(rel, dict(params))
        seen = {path}
        seen_cursors: set[str] = set()
        expected_count: int | None = None
        count_changed = False
        total = 0
        empty_streak = 0
        warned_rebase = False
        while True:
            body = t.call("GET", path, endpoint=endpoint, decode=decode)
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
            t.stats.add(pages=1, items=len(results))
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
                    describe_url(httpx.URL(next_url)),
                    t.origin,
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
            if empty_streak >= MAX_EMPTY_PAGES:
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

    def iter_complete_offset_pages(
        self, rel: str, params: Mapping[str, Any], *, endpoint: str, id_field: str = "id"
    ) -> Iterator[list]:
        """A limit/offset listing proven complete: walked again until two walks in a row hold
        the same set of ids, then that walk's pages.

        Limit/offset shifts under deletions: an item that expires while page 1 is being read
        moves every later item one place forward, so page 2 silently starts one item late and
        a single walk misses one. Two identical walks in a row mean nothing moved meanwhile.
        """
        previous: set | None = None
        for listing in range(1, MAX_LISTINGS + 1):
            pages = list(self.iter_pages(rel, params, shape="offset", endpoint=endpoint))
            ids = [i.get(id_field) if isinstance(i, dict) else None for p in pages for i in p]
            if None in ids:
                raise PostHogPaginationError(
                    f"{rel}: an item has no {id_field!r}; cannot check the listing is complete."
                )
            current = set(ids)
            if current == previous and len(current) == len(ids):
                yield from pages
                return
            # ClientStats.items counts items handed out: a walk that is not handed out is not
            # counted (its pages and requests are)
            self._t.stats.add(items=-len(ids))
            if len(current) != len(ids):
                self._log.debug("%s: listing %d held a repeated id", rel, listing)
            elif previous is not None:
                self._log.info(
                    "%s: the listing changed while it was read (%d ids appeared, %d went); "
                    "listing again to be sure none was skipped",
                    rel, len(current - previous), len(previous - current),
                )
            previous = current
        raise PostHogPaginationError(
            f"{rel}: {MAX_LISTINGS} listings in a row disagreed on which items exist (items "
            "are being created or expiring while the listing is read, and limit/offset pages "
            "can skip one); re-run the sync when the listing is quiet."
        )

    def _resolve_next(self, next_url: str, *, rel: str, current: str) -> tuple[str, bool]:
        """Turn an untrusted `next` into a path+query on our own origin (and say if we rebased)."""
        try:
            url = self._t.url(current).join(next_url)
        except (httpx.InvalidURL, ValueError, TypeError):
            raise PostHogPaginationError(
                f"{rel}: next link is not a valid URL; refusing to follow it."
            ) from None
        if url.scheme not in ("http", "https"):
            raise PostHogPaginationError(
                f"{rel}: next link has scheme {url.scheme!r}; refusing to follow it."
            )
        rebased = not self._t.same_origin(url)
        match = _PROJECT_PATH_RE.match(url.path)
        if match is None:
            raise PostHogPaginationError(
                f"{rel}: next link path is outside /api/projects/<id>/; refusing to follow it."
            )
        kind, project, rest = match.groups()
        ours = self._project_id()
        if ours != "@current" and project != ours:
            raise PostHogPaginationError(
                f"{rel}: next link points at project {project}, not POSTHOG_PROJECT_ID="
                f"{ours}; refusing to follow it."
            )
        if rest.rstrip("/") != rel.rstrip("/"):
            raise PostHogPaginationError(
                f"{rel}: next link points at another endpoint ({rest!r}); refusing to follow it."
            )
        raw = url.raw_path.decode("ascii")
        if kind == "environments":
            raw = "/api/projects/" + raw[len("/api/environments/") :]
        return raw, rebased
