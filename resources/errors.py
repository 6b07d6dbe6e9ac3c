"""Typed errors for the PostHog client; messages say what to do and never carry the API key."""

from __future__ import annotations

import re

import dagster as dg

__all__ = [
    "PostHogAPIError",
    "PostHogConfigError",
    "PostHogConnectionError",
    "PostHogEndpointMissingError",
    "PostHogError",
    "PostHogNotFoundError",
    "PostHogPaginationError",
    "PostHogRetryError",
    "PostHogUnrenderablePageError",
]

_SCOPE_RE = re.compile(r"missing required scope '([^']+)'")

# The scope each endpoint needs (its viewset's `scope_object`, read or write by action:
# posthog/permissions.py APIScopePermission) and what in this pipeline calls it, so a 403 says
# what to add and what it unblocks. docs/SCOPES.md is the same table for people.
ENDPOINT_SCOPES: dict[str, tuple[str, str]] = {
    "groups_types/": ("group:read", "the posthog_group_types asset (and every groups asset)"),
    "groups/": ("group:read", "the posthog_groups asset"),
    "groups/property_values/": ("group:read", "the posthog_group_property_values asset"),
    "groups/property_definitions/": (
        "group:read", "the posthog_group_property_definitions asset (older PostHog)"
    ),
    "property_definitions/": (
        "property_definition:read", "the posthog_group_property_definitions asset"
    ),
    "exports/": ("export:read", "the posthog_exports asset"),
    "POST exports/": (
        "export:write",
        "the posthog_requested_exports asset (plus query:read, insight:read or dashboard:read "
        "for what the export reads)",
    ),
    "exports/{id}/": ("export:read", "the posthog_exports and posthog_export_contents assets"),
    "exports/{id}/content/": ("export:read", "the posthog_export_contents asset"),
    # explicit_members' scope was not confirmed in PostHog's source (the route is gone there)
    "explicit_members/": ("project:read", "the posthog_explicit_members asset (legacy)"),
    "DELETE explicit_members/{uuid}/": ("project:write", "removing an explicit member (legacy)"),
    "projects/@current/": ("project:read", "resolving POSTHOG_PROJECT_ID=@current"),
}


class PostHogError(dg.Failure):
    """Base class for every error raised by the PostHog client and resource.

    A ``dg.Failure``, so a run that hits one shows its message as the step failure's headline
    (in the UI's run log and the CLI), not "Error occurred while executing op" over a traceback.
    """

    def __init__(self, message: str = "") -> None:
        super().__init__(description=message)

    def __reduce__(self):
        return (type(self), (self.description,))


class PostHogConfigError(PostHogError):
    """Missing or malformed configuration; the message names the environment variable to fix."""


class PostHogAPIError(PostHogError):
    """PostHog answered with a status that retrying will not fix."""

    def __init__(
        self,
        *,
        status: int,
        method: str,
        path: str,
        code: str | None = None,
        detail: str | None = None,
        hint: str | None = None,
        endpoint: str | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.detail = detail
        self.method = method
        self.path = path
        self.endpoint = endpoint
        self.hint = hint if hint is not None else _default_hint(status, detail, method, endpoint)
        super().__init__(self._format())

    def _format(self) -> str:
        head = f"{self.method} {self.path} -> {self.status}"
        if self.code:
            head += f" {self.code}"
        msg = f"{head}: {self.detail}" if self.detail else head
        if self.hint:
            msg = f"{msg.rstrip('.')}. {self.hint}"
        return msg

    def __reduce__(self):  # keyword-only __init__ needs help to pickle across Dagster processes
        return (_rebuild, (type(self), self.__dict__.copy()))


class PostHogNotFoundError(PostHogAPIError):
    """404: the object, project or endpoint does not exist (the caller decides what that means)."""


class PostHogEndpointMissingError(PostHogNotFoundError):
    """404 "Endpoint not found.": this PostHog version does not serve the endpoint at all."""


class PostHogConnectionError(PostHogError):
    """PostHog (POSTHOG_HOST) could not be reached and has not answered once in this run."""

    def __init__(self, *, host: str, method: str, path: str, attempts: int, cause: str) -> None:
        self.host = host
        self.method = method
        self.path = path
        self.attempts = attempts
        self.cause = cause
        super().__init__(self._format())

    def _format(self) -> str:
        noun = "attempt" if self.attempts == 1 else "attempts"
        return (
            f"Could not connect to POSTHOG_HOST={self.host} ({self.method} {self.path}, "
            f"{self.attempts} {noun}; {self.cause}), and it has not answered once in this run. "
            "Check POSTHOG_HOST for a typo (https://us.posthog.com or https://eu.posthog.com), "
            "that the name resolves (DNS), that something is listening on that host and port "
            "(a self-hosted PostHog or the simulator may not be running), and any proxy in "
            "HTTPS_PROXY / HTTP_PROXY."
        )

    def __reduce__(self):
        return (_rebuild, (type(self), self.__dict__.copy()))


class PostHogRetryError(PostHogError):
    """Retries were exhausted (or a request could not safely be retried) for one endpoint."""

    def __init__(
        self, *, method: str, path: str, attempts: int, last_cause: str, hint: str | None = None
    ) -> None:
        self.method = method
        self.path = path
        self.attempts = attempts
        self.last_cause = last_cause
        self.hint = hint if hint is not None else _retry_hint(last_cause)
        super().__init__(self._format())

    def _format(self) -> str:
        noun = "attempt" if self.attempts == 1 else "attempts"
        return (
            f"{self.method} {self.path} failed after {self.attempts} {noun} "
            f"(last cause: {self.last_cause}). {self.hint}"
        )

    def __reduce__(self):
        return (_rebuild, (type(self), self.__dict__.copy()))


class PostHogPaginationError(PostHogError):
    """A listing could not be walked safely (refused next link, repeated cursor, truncation)."""


class PostHogUnrenderablePageError(PostHogError):
    """PostHog cannot render a listing page: the message names the listing, where in it, and why.
    """

# orjson's refusal (PostHog renders with orjson, posthog/renderers.py): when a 500's body says it,
# no retry will help
UNRENDERABLE_MARKERS = ("Integer exceeds 64-bit range",)


def _rebuild(cls: type, state: dict) -> PostHogError:
    err = cls.__new__(cls)
    err.__dict__.update(state)
    Exception.__init__(err, err._format())
    return err


def _default_hint(
    status: int, detail: str | None, method: str | None = None, endpoint: str | None = None
) -> str:
    detail = detail or ""
    needs = None
    if endpoint is not None:
        needs = ENDPOINT_SCOPES.get(f"{method} {endpoint}") or ENDPOINT_SCOPES.get(endpoint)
    if status == 401:
        return (
            "the personal API key was rejected (POSTHOG_PERSONAL_API_KEY): check it is a current "
            "personal API key (phx_...) and not a project token"
        )
    if status == 403:
        if m := _SCOPE_RE.search(detail):
            scope = m.group(1)
            what = f"{method} {endpoint}" if endpoint else "this endpoint"
            if needs is not None:
                what = f"{what} (read by {needs[1]})"
            return (
                f"The personal API key (POSTHOG_PERSONAL_API_KEY) lacks the '{scope}' scope, "
                f"which {what} needs: add it in PostHog > Settings > Personal API keys "
                "(docs/SCOPES.md lists every scope this pipeline uses)."
            )
        if "does not have access to the requested project" in detail:
            return (
                "The key is restricted to other projects: allow POSTHOG_PROJECT_ID for this key "
                "or use a key scoped to this project."
            )
        scope = (
            f"the '{needs[0]}' scope {method} {endpoint} needs (read by {needs[1]})"
            if needs is not None
            else "the scope this endpoint needs"
        )
        return (
            f"Check that the key (POSTHOG_PERSONAL_API_KEY) is valid, has {scope}, "
            "and that its owner can access POSTHOG_PROJECT_ID."
        )
    if status == 404:
        if detail.strip() == "Endpoint not found.":
            return "this PostHog has no such endpoint (removed or not available on this version)"
        if detail.strip() == "Project not found.":
            return "No such project: check POSTHOG_PROJECT_ID (a numeric id or '@current')."
        return "The object does not exist (or is not visible to the key's owner)."
    if status == 400:
        return "PostHog rejected the request parameters; fix the arguments passed to the client."
    if status == 405:
        return "This PostHog does not allow that method on the endpoint."
    if 300 <= status < 400:
        return (
            "PostHog redirected an API call; point POSTHOG_HOST at the final origin "
            "(https, correct region) so the key is never sent to a redirect target."
        )
    return "Retrying will not help; inspect the detail above."


def _retry_hint(last_cause: str) -> str:
    if last_cause.startswith("429"):
        return (
            "PostHog kept throttling this key: wait for the window to pass, run fewer jobs "
            "at once, or lower POSTHOG_REQUESTS_PER_MINUTE / POSTHOG_REQUESTS_PER_HOUR."
        )
    return "PostHog or the network kept failing; check PostHog's status page and re-run later."
