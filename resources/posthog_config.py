"""PostHog connection settings (POSTHOG_HOST, POSTHOG_PROJECT_ID, POSTHOG_PERSONAL_API_KEY),
validated in one place: the resource and the client both come here, and a client built from a
`ConnectionSettings` does not validate again."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import httpx

from resources.errors import PostHogConfigError

__all__ = [
    "ConnectionSettings",
    "config_problems",
    "normalize_host",
    "validate_api_key",
    "validate_project_id",
]

_PROJECT_ID_RE = re.compile(r"[1-9][0-9]*")
_KEY_RE = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no whitespace: safe in a header
_KEY_HELP = (
    "create a personal API key (PostHog > Settings > Personal API keys) with the scopes "
    "group:read, property_definition:read and export:read (export:write to create exports)"
)


@dataclass(frozen=True)
class ConnectionSettings:
    """A validated origin, project id and key; the key never shows in repr."""

    origin: str
    project_id: str
    api_key: str = field(repr=False)

    @classmethod
    def from_raw(cls, *, host: str, project_id: str | int, api_key: str) -> ConnectionSettings:
        """Validate the three settings; one error names every variable that is wrong."""
        problems = config_problems(host=host, project_id=project_id, api_key=api_key)
        if problems:
            raise PostHogConfigError(format_problems(problems))
        return cls(normalize_host(host), validate_project_id(project_id), validate_api_key(api_key))


def config_problems(*, host: str, project_id: str | int, api_key: str) -> list[str]:
    """Every problem with the three settings (empty when all are valid), one line each, each
    naming its environment variable; never the key's value."""
    problems = []
    for validate, value in ((normalize_host, host), (validate_project_id, project_id),
                            (validate_api_key, api_key)):
        try:
            validate(value)
        except PostHogConfigError as exc:
            problems.append(exc.description)
    return problems


def format_problems(problems: list[str]) -> str:
    """One problem as is; several as a short list under one headline."""
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} configuration problems:\n" + "\n".join(f"- {p}" for p in problems)


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
    if not value:
        raise PostHogConfigError(
            "POSTHOG_PROJECT_ID is not set: set it to the numeric project id "
            "(PostHog > Settings > Project > Project ID) or '@current'."
        )
    raise PostHogConfigError(
        f"POSTHOG_PROJECT_ID={value!r} is invalid: use the numeric project id "
        "(PostHog > Settings > Project > Project ID) or '@current'."
    )


def validate_api_key(api_key: str) -> str:
    """Validate POSTHOG_PERSONAL_API_KEY without ever echoing it."""
    if not isinstance(api_key, str) or not api_key:
        raise PostHogConfigError(f"POSTHOG_PERSONAL_API_KEY is not set: {_KEY_HELP}.")
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
