"""Downloading an export's content/: PostHog answers with the bytes, a redirect to presigned
storage on another origin (followed without the key), or a redirect to a path on its own origin
(a dataset export's JSON Lines; followed with the key)."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx

from resources.errors import PostHogAPIError
from resources.posthog_transport import (
    REDIRECT_STATUSES,
    RETRYABLE_STATUSES,
    Call,
    Outcome,
    Transport,
    bad_location_outcome,
    describe_url,
    parse_retry_after,
)

__all__ = ["ContentDownload", "download"]

MAX_REDIRECT_HOPS = 3
# a redirect body up to this size is read so its connection can be reused
SMALL_BODY = 64 * 1024
CHUNK_BYTES = 64 * 1024
# where PostHog's own content redirects may lead: its API, for the same project
_API_PATH_RE = re.compile(r"^/api/(?:projects|environments)/(@current|[0-9]+)/")


@dataclass(frozen=True)
class ContentDownload:
    """A downloaded export file and what we know about it."""

    path: Path
    sha256: str
    size_bytes: int
    content_type: str | None


def download(t: Transport, call: Call, dest: Path, project_id: str) -> ContentDownload:
    """GET `call.path` into `dest` with retries (a fresh redirect on each attempt)."""
    return t.run(call, lambda: _attempt(t, call, dest, project_id))


def _attempt(t: Transport, call: Call, dest: Path, project_id: str) -> Outcome:
    t.begin_attempt(call)
    request = t.api_request("GET", call.path)
    try:
        response = t.http.send(request, stream=True)
    except httpx.RequestError as exc:
        return t.transport_outcome(call, exc)
    except httpx.InvalidURL:
        return bad_location_outcome(call)
    t.heard_from_posthog(call, response)
    # whether the response in hand came from PostHog's origin (and so says what PostHog says)
    from_posthog = True
    try:
        hops = 0
        while response.status_code in REDIRECT_STATUSES:
            status = response.status_code
            location = response.headers.get("Location", "")
            base = response.request.url
            _release(response)
            hops += 1
            target = _redirect_target(base, location)
            if target is None or hops > MAX_REDIRECT_HOPS:
                why = "too many redirects" if target is not None else "an unusable Location"
                return Outcome(
                    error=PostHogAPIError(
                        status=status,
                        method=call.method,
                        path=call.path,
                        detail=f"content redirect with {why}",
                        hint=(
                            "Expected a redirect to an absolute http(s) storage URL or to a "
                            "path on PostHog's own API."
                        ),
                    )
                )
            if from_posthog and t.same_origin(target):
                # PostHog's own API (a dataset export's content): the key goes along, but only
                # to this project's API paths, never elsewhere on the origin.
                match = _API_PATH_RE.match(target.path)
                if match is None or match.group(1) not in (project_id, "@current"):
                    return Outcome(
                        error=PostHogAPIError(
                            status=status,
                            method=call.method,
                            path=call.path,
                            detail=(
                                "content redirect whose Location is a path outside this "
                                "project's API"
                            ),
                            hint="Not followed, so the key is not sent there.",
                        )
                    )
                t.log.debug(
                    "%s %s -> %d to %s on PostHog", call.method, call.path, status, target.path
                )
                t.stats.count_request("GET content redirect")
                request = t.api_request("GET", target.raw_path.decode("ascii"))
                from_posthog = True
            else:
                t.log.debug(
                    "%s %s -> %d to storage at %s",
                    call.method, call.path, status, describe_url(target),
                )
                t.stats.count_request("GET storage")
                # A bare request: no Authorization and no PostHog headers go to storage.
                request = t.http.build_request("GET", target)
                from_posthog = False
            try:
                response = t.http.send(request, stream=True)
            except httpx.RequestError as exc:
                return t.transport_outcome(call, exc, where="" if from_posthog else "storage ")
            except httpx.InvalidURL:
                return bad_location_outcome(call)
            if from_posthog:
                t.heard_from_posthog(call, response)
        status = response.status_code
        if 200 <= status < 300:
            return _stream_to_file(t, call, response, dest)
        if not from_posthog:
            response.read()
            if status == 403 or status in RETRYABLE_STATUSES:
                # 403 from storage means the presigned URL expired: ask PostHog for a new one.
                return Outcome(
                    retry_cause=f"storage {status}",
                    retry_after=parse_retry_after(response.headers.get("Retry-After")),
                    status=None,
                )
            return Outcome(
                error=PostHogAPIError(
                    status=status,
                    method=call.method,
                    path=call.path,
                    detail=f"object storage answered {status} for the export content",
                    hint="Re-run later; if it persists the export's stored file is gone.",
                )
            )
        response.read()
        return t.status_outcome(call, response)
    except httpx.RequestError as exc:
        return t.transport_outcome(call, exc)
    finally:
        response.close()


def _redirect_target(base: httpx.URL, location: str) -> httpx.URL | None:
    """Where a redirect leads: an absolute http(s) URL, or a relative one resolved against the
    URL that answered (RFC 9110 §10.2.2); None when unusable."""
    if not location:
        return None
    try:
        url = base.join(location)
    except (httpx.InvalidURL, ValueError, TypeError):
        return None
    if url.scheme not in ("http", "https") or not url.host:
        return None
    return url


def _stream_to_file(t: Transport, call: Call, response: httpx.Response, dest: Path) -> Outcome:
    declared = response.headers.get("Content-Length")
    digest = hashlib.sha256()
    size = 0
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    done = False
    try:
        with os.fdopen(fd, "wb") as fh:
            try:
                for chunk in response.iter_bytes(CHUNK_BYTES):
                    fh.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
            except httpx.RequestError as exc:
                return t.transport_outcome(call, exc, where="download ")
        # no fsync here: the file is handed on complete, and whoever keeps it makes it
        # durable (Lake.store_content fsyncs before filing it), so it is not synced twice
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        # Content-Length counts bytes on the wire, which differ from the file when encoded.
        received = size if encoding in ("", "identity") else response.num_bytes_downloaded
        if size == 0:
            # PostHog never stores an empty export; an empty 200 is a broken response
            return Outcome(retry_cause="empty body for export content")
        if declared is not None and declared.strip().isdigit() and int(declared) != received:
            return Outcome(
                retry_cause=f"incomplete body (Content-Length {int(declared)}, received {received})"
            )
        os.replace(tmp, dest)
        done = True
    finally:
        if not done:
            tmp.unlink(missing_ok=True)
    t.stats.add(bytes_downloaded=size)
    t.log.debug("%s %s: wrote %d bytes to %s", call.method, call.path, size, dest)
    return Outcome(
        value=ContentDownload(
            path=dest,
            sha256=digest.hexdigest(),
            size_bytes=size,
            content_type=response.headers.get("Content-Type"),
        ),
        status=response.status_code,
    )


def _release(response: httpx.Response) -> None:
    """Close a redirect. Its body (empty, from PostHog) is read first when it is small, so the
    connection goes back to the pool: closed unread, it is dropped, and every download opened
    a new connection to PostHog."""
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) <= SMALL_BODY:
        try:
            response.read()
        except httpx.HTTPError:
            pass  # the redirect is what counts; the connection is dropped, as before
    response.close()
