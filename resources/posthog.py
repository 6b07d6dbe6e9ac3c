"""PostHogResource: configuration for the PostHog private API and a factory for PostHogClient."""

import logging
import os
import re
from pathlib import Path

import dagster as dg
import httpx
from pydantic import Field

from resources.budget import QUERY, budget_bucket, open_budget
from resources.budget_pg import is_postgres_url, redact_url
from resources.errors import PostHogConfigError
from resources.posthog_client import PostHogClient
from resources.posthog_config import (
    ConnectionSettings,
    config_problems,
    format_problems,
    normalize_host,
    validate_project_id,
)
from resources.projects import ProjectConfig

__all__ = ["POSTHOG_POOL", "PostHogResource"]

# The Dagster concurrency pool of every step that calls PostHog. No limit unless the instance
# sets one (`dagster instance concurrency set posthog_api 2`, or dagster.yaml's
# concurrency.pools.default_limit): then runs for many projects (a backfill) queue their PostHog
# steps instead of all waiting on the one rate budget at once. See docs/OPERATIONS.md.
POSTHOG_POOL = "posthog_api"

BUDGET_RELPATH = Path("_state") / "budget.sqlite"
_DEBUG_LOG = logging.getLogger("posthog_pipeline.client")


class _RunLog(logging.LoggerAdapter):
    """The client's logger inside a run: retries, warnings and errors reach the run log; the
    one-line-per-request DEBUG chatter goes to Python logging only, so a million-group sync does
    not store ten thousand events in Dagster's event log."""

    def log(self, level, msg, *args, **kwargs):
        target = self.logger if level >= logging.INFO else _DEBUG_LOG
        if target.isEnabledFor(level):
            target.log(level, msg, *args, **kwargs)


_CONNECT_TIMEOUT_S = 10.0


class PostHogResource(dg.ConfigurableResource):
    """PostHog private API (groups, exports) over httpx, inside one per-key request budget."""

    host: str = Field(
        default="https://us.posthog.com",
        description=(
            "PostHog origin (POSTHOG_HOST): https://us.posthog.com, https://eu.posthog.com or a "
            "self-hosted origin; no path."
        ),
    )
    project_id: str = Field(
        default="",
        description="Numeric project id or '@current' (POSTHOG_PROJECT_ID).",
    )
    personal_api_key: str = Field(
        default="",
        repr=False,
        description=(
            "Personal API key phx_... (POSTHOG_PERSONAL_API_KEY) with the scopes group:read, "
            "property_definition:read, export:read and query:read (groups through the query "
            "API; without it groups go through REST), plus export:write to create exports. "
            "Wire it with dg.EnvVar, never a literal."
        ),
    )
    requests_per_minute: str = Field(
        default="480",
        description=(
            "Requests per minute for this key across all processes "
            "(POSTHOG_REQUESTS_PER_MINUTE; PostHog allows 480; '0' = unlimited)."
        ),
    )
    requests_per_hour: str = Field(
        default="4800",
        description=(
            "Requests per hour for this key across all processes "
            "(POSTHOG_REQUESTS_PER_HOUR; PostHog allows 4800; '0' = unlimited)."
        ),
    )
    rate_limit_windows: str = Field(
        default="",
        description=(
            "Advanced (POSTHOG_RATE_LIMIT_WINDOWS): explicit budget windows as count/seconds "
            "pairs, e.g. '60/10,240/60'; when set it replaces the per-minute/per-hour budget. "
            "For PostHog instances with other limits, and for scaled-down test windows."
        ),
    )
    query_requests_per_hour: str = Field(
        default="120",
        description=(
            "Query API requests per hour for this key across all processes "
            "(POSTHOG_QUERY_REQUESTS_PER_HOUR): PostHog throttles POST query/ in its own bucket "
            "(HogQLQueryThrottle, 120/hour by default; PostHog raises it per team on request); "
            "'0' = unlimited. It never counts against the per-minute/per-hour budget."
        ),
    )
    groups_source: str = Field(
        default="auto",
        description=(
            "How posthog_groups lists groups (POSTHOG_GROUPS_SOURCE), unless its run config says: "
            "'rest' (GET groups/, 100 per request), 'query' (HogQL through POST query/, up to "
            "50,000 per request; needs query:read) or 'auto': query for the group types where "
            "it saves requests when the key has query:read, REST otherwise."
        ),
    )
    budget_url: str = Field(
        default="",
        repr=False,
        description=(
            "Where the rate budget is kept (POSTHOG_BUDGET_URL): empty for the embedded SQLite "
            "file under state_dir (the processes of one machine share it), or a "
            "postgresql://user:password@host:5432/db URL so the pods of every machine using "
            "the key share one budget, on the database's clock."
        ),
    )
    state_dir: str = Field(
        default="data/lake",
        description="Lake root; the shared request budget is <state_dir>/_state/budget.sqlite.",
    )
    request_timeout: float = Field(
        default=30.0, description="Read timeout per request, in seconds (connect is capped at 10)."
    )
    request_max_retries: int = Field(
        default=8, description="Retries after the first attempt for 429, 5xx and network errors."
    )
    request_retry_delay: float = Field(
        default=0.5, description="Base of the exponential retry backoff, in seconds."
    )
    request_max_retry_delay: float = Field(
        default=3600.0,
        description=(
            "Cap on any single retry wait, in seconds. High by default so a 429's Retry-After "
            "(up to an hour for PostHog's hourly window) is obeyed, not cut short; exponential "
            "backoff stays far below it (0.5 s doubling over 8 retries)."
        ),
    )

    def _connection(self, project: ProjectConfig | None) -> tuple[str, str, str, str | None]:
        """host, project id and key of the default project or of `project` (its key read from
        the variable it names), and the problem when that variable is not set."""
        if project is None:
            return self.host, self.project_id, self.personal_api_key, None
        api_key = os.environ.get(project.key_env, "")
        missing = (None if api_key.strip() else
                   f"project {project.label}: {project.key_env} (its key) is not set")
        return project.host, project.project_id, api_key, missing

    def config_problems(self, project: ProjectConfig | None = None) -> list[str]:
        """Every configuration problem at once, one line each naming what to fix (empty: the
        resource can build a client, for `project` when given). Never shows the key."""
        host, project_id, api_key, key_missing = self._connection(project)
        if key_missing is None:
            problems = config_problems(host=host, project_id=project_id, api_key=api_key)
        else:
            problems = []
            for validate, value in ((normalize_host, host), (validate_project_id, project_id)):
                try:
                    validate(value)
                except PostHogConfigError as exc:
                    problems.append(exc.description)
            problems.append(key_missing)
        try:
            if self.rate_limit_windows.strip():
                _parse_windows(self.rate_limit_windows)
            else:
                _parse_rate(self.requests_per_minute, "POSTHOG_REQUESTS_PER_MINUTE")
        except PostHogConfigError as exc:
            problems.append(exc.description)
        if not self.rate_limit_windows.strip():
            try:
                _parse_rate(self.requests_per_hour, "POSTHOG_REQUESTS_PER_HOUR")
            except PostHogConfigError as exc:
                problems.append(exc.description)
        try:
            _parse_rate(self.query_requests_per_hour, "POSTHOG_QUERY_REQUESTS_PER_HOUR")
        except PostHogConfigError as exc:
            problems.append(exc.description)
        if not self.request_timeout > 0:
            problems.append("request_timeout must be a positive number of seconds.")
        if self.request_max_retries < 0:
            problems.append("request_max_retries must be >= 0.")
        if self.request_retry_delay < 0 or self.request_max_retry_delay < 0:
            problems.append("request retry delays must be >= 0 seconds.")
        if not self.state_dir:
            problems.append("state_dir must name the lake root directory.")
        budget_url = self.budget_url.strip()
        if budget_url and not is_postgres_url(budget_url):
            problems.append(
                f"POSTHOG_BUDGET_URL={redact_url(budget_url)!r} is not a postgresql:// URL; "
                "leave it empty for the embedded SQLite budget."
            )
        return problems

    def get_client(
        self,
        *,
        logger: logging.Logger | None = None,
        transport: httpx.BaseTransport | None = None,
        project: ProjectConfig | None = None,
    ) -> PostHogClient:
        """Validate the configuration and return a budgeted client (use it with `with`).

        `project` (resources/projects.py) names another project: its host and id, and its key
        read at run time from the variable it names. Projects sharing a host and key share one
        budget bucket (one per throttle scope); other keys have their own."""
        problems = self.config_problems(project)
        if problems:
            raise PostHogConfigError(format_problems(problems))
        host, project_id, api_key, _ = self._connection(project)
        settings = ConnectionSettings.from_raw(host=host, project_id=project_id, api_key=api_key)
        if self.rate_limit_windows.strip():
            windows = _parse_windows(self.rate_limit_windows)
        else:
            windows = [
                (_parse_rate(self.requests_per_minute, "POSTHOG_REQUESTS_PER_MINUTE"), 60.0),
                (_parse_rate(self.requests_per_hour, "POSTHOG_REQUESTS_PER_HOUR"), 3600.0),
            ]
        query_per_hour = _parse_rate(
            self.query_requests_per_hour, "POSTHOG_QUERY_REQUESTS_PER_HOUR"
        )
        # the embedded SQLite file, or PostgreSQL (POSTHOG_BUDGET_URL) for both buckets
        store = self.budget_url.strip() or str(Path(self.state_dir) / BUDGET_RELPATH)
        budget = open_budget(
            store,
            budget_bucket(settings.origin, settings.api_key),
            windows,
        )
        query_budget = open_budget(
            store,
            budget_bucket(settings.origin, settings.api_key, QUERY),
            [(query_per_hour, 3600.0)],
        )
        return PostHogClient(
            settings=settings,
            timeout=httpx.Timeout(
                self.request_timeout, connect=min(_CONNECT_TIMEOUT_S, self.request_timeout)
            ),
            max_retries=self.request_max_retries,
            retry_base_delay=self.request_retry_delay,
            retry_max_delay=self.request_max_retry_delay,
            budget=budget,
            query_budget=query_budget,
            transport=transport,
            logger=_RunLog(logger, {}) if logger is not None else None,
        )


def parse_groups_source(value: str, where: str = "POSTHOG_GROUPS_SOURCE") -> str:
    """'rest', 'query' or 'auto' (any case, spaces ignored); PostHogConfigError otherwise."""
    text = str(value).strip().lower()
    if text not in ("rest", "query", "auto"):
        raise PostHogConfigError(
            f"{where}={value!r} is not a groups source; use rest, query or auto."
        )
    return text


def _parse_rate(value: str, env_var: str) -> int:
    text = str(value).strip()
    if not re.fullmatch(r"[0-9]+", text):
        raise PostHogConfigError(
            f"{env_var}={value!r} is not a whole number of requests; use e.g. 480 (or 0 for "
            "unlimited)."
        )
    return int(text)


def _parse_windows(value: str) -> list[tuple[int, float]]:
    windows = []
    for part in value.split(","):
        match = re.fullmatch(r"\s*([0-9]+)\s*/\s*([0-9]+(?:\.[0-9]+)?)\s*", part)
        if not match or float(match.group(2)) <= 0:
            raise PostHogConfigError(
                f"POSTHOG_RATE_LIMIT_WINDOWS={value!r} is not a list of count/seconds pairs; "
                "use e.g. 480/60,4800/3600."
            )
        windows.append((int(match.group(1)), float(match.group(2))))
    return windows
