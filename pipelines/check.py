"""`posthog-pipeline check`: configuration, host, key, scopes, lake and warehouse, in seconds.

Each check is one line: ok, FAIL or skip, what was checked, and what to do. The scope probes
ask each endpoint for one item (limit=1): a 403 names the scope and the assets it disables.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from resources.errors import (
    ENDPOINT_SCOPES,
    PostHogAPIError,
    PostHogConfigError,
    PostHogConnectionError,
    PostHogEndpointMissingError,
    PostHogError,
)
from resources.lake import default_state_dir
from resources.posthog import PostHogResource
from resources.projects import ProjectConfig, projects_from_env

DEFAULT_HOST = "https://us.posthog.com"
# a check answers in seconds: one try per probe, short timeouts, no rate budget to wait for
_PROBE_SETTINGS = {
    "request_timeout": 5.0,
    "request_max_retries": 1,
    "request_retry_delay": 0.2,
    "request_max_retry_delay": 1.0,
    "requests_per_minute": "0",
    "requests_per_hour": "0",
    "rate_limit_windows": "",
}


@dataclass(frozen=True)
class Probe:
    """One cheap request that needs exactly one scope."""

    scope: str
    endpoint: str  # the ENDPOINT_SCOPES key
    path: str
    params: Mapping[str, object]
    required: bool = True


PROBES = (
    Probe("group:read", "groups_types/", "groups_types/", {}),
    Probe("property_definition:read", "property_definitions/", "property_definitions/",
          {"type": "group", "group_type_index": 0, "limit": 1}),
    Probe("export:read", "exports/", "exports/", {"limit": 1}),
    Probe("project:read", "explicit_members/", "explicit_members/", {}, required=False),
)


@dataclass(frozen=True)
class Result:
    status: str  # "ok", "FAIL" or "skip"
    name: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<5} {self.name:<25} {self.detail}"


def env_resource(environ: Mapping[str, str]) -> PostHogResource:
    """The PostHog resource as pipelines/definitions.py wires it from `environ`."""

    def get(name: str, default: str) -> str:
        return environ.get(name) or default

    database = get("DUCKDB_DATABASE", "data/warehouse.duckdb")
    return PostHogResource(
        host=get("POSTHOG_HOST", DEFAULT_HOST),
        project_id=get("POSTHOG_PROJECT_ID", ""),
        personal_api_key=get("POSTHOG_PERSONAL_API_KEY", ""),
        requests_per_minute=get("POSTHOG_REQUESTS_PER_MINUTE", "480"),
        requests_per_hour=get("POSTHOG_REQUESTS_PER_HOUR", "4800"),
        rate_limit_windows=get("POSTHOG_RATE_LIMIT_WINDOWS", ""),
        state_dir=get("PIPELINE_STATE_DIR", default_state_dir(database)),
    )


def assets_needing(scope: str) -> list[str]:
    """The assets whose endpoints need `scope` (resources/errors.py ENDPOINT_SCOPES)."""
    names: list[str] = []
    for endpoint, (needed, what) in ENDPOINT_SCOPES.items():
        if needed == scope and not endpoint.startswith(("POST ", "DELETE ")):
            names += [n for n in re.findall(r"posthog_\w+", what) if n not in names]
    return names


def run_checks(environ: Mapping[str, str]) -> Iterator[Result]:
    """Every check, in order; later PostHog checks are skipped when an earlier one fails.
    With several projects (resources/projects.py), the PostHog checks run for each."""
    resource = env_resource(environ)
    try:
        projects = projects_from_env(environ)
    except PostHogConfigError as exc:
        yield Result("FAIL", "configuration", exc.description)
        projects = []
    several = len(projects) > 1 or bool(environ.get("POSTHOG_PROJECTS_FILE"))
    for project in projects if several else [None] if projects else []:
        name = f"{project.label}: " if project is not None else ""
        problems = resource.config_problems(project)
        if problems:
            for problem in problems:
                yield Result("FAIL", f"{name}configuration", problem)
            continue
        if project is None:
            host = "POSTHOG_HOST unset: " + DEFAULT_HOST if not environ.get("POSTHOG_HOST") \
                else f"POSTHOG_HOST={resource.host}"
            yield Result("ok", "configuration",
                         f"{host}, POSTHOG_PROJECT_ID={resource.project_id}, key set (not shown)")
        else:
            yield Result("ok", f"{name}configuration",
                         f"host {project.host}, project {project.project_id}, key in "
                         f"{project.key_env} (not shown)")
        for result in _posthog_checks(resource, project):
            yield Result(result.status, name + result.name, result.detail)
    yield _writable("lake", environ.get("LAKE_ROOT") or "data/lake", "LAKE_ROOT", _lake_writable)
    yield _writable("warehouse", environ.get("DUCKDB_DATABASE") or "data/warehouse.duckdb",
                    "DUCKDB_DATABASE", _warehouse_writable)


def _posthog_checks(resource: PostHogResource, project: ProjectConfig | None
                    ) -> Iterator[Result]:
    probe_resource = resource.model_copy(update=_PROBE_SETTINGS)
    with tempfile.TemporaryDirectory(prefix="posthog-check-") as state:
        # the probes' own budget file: a check never takes from (or waits on) a sync's budget
        probe_resource = probe_resource.model_copy(update={"state_dir": state})
        with probe_resource.get_client(project=project) as client:
            yield from _probe_all(client, project.host if project else resource.host)


def _probe_all(client, host: str) -> Iterator[Result]:
    started = time.monotonic()
    answered = key_ok = False
    for probe in PROBES:
        try:
            # the client's request primitive: one GET, its typed errors, the key only to host
            client._call("GET", client._path(probe.path, probe.params), endpoint=probe.endpoint)
        except PostHogConnectionError as exc:
            yield Result("FAIL", "host", exc.description)
            yield Result("skip", "key and scopes", "PostHog did not answer")
            return
        except PostHogEndpointMissingError:
            outcome: str | PostHogAPIError = "missing"
        except PostHogAPIError as exc:
            outcome = exc
        except PostHogError as exc:
            yield Result("FAIL", probe.scope, exc.description)
            continue
        else:
            outcome = "ok"
        if not answered:
            answered = True
            yield Result("ok", "host", f"{host} answered in {time.monotonic() - started:.2f} s")
        if isinstance(outcome, PostHogAPIError) and (
                outcome.status == 401 or outcome.code == "authentication_failed"):
            yield Result("FAIL", "key", f"POSTHOG_PERSONAL_API_KEY was rejected "
                                        f"({outcome.status}): {outcome.hint}")
            return
        if isinstance(outcome, PostHogAPIError) and outcome.status == 404 \
                and probe.endpoint == "groups_types/":
            yield Result("FAIL", "project", f"POSTHOG_PROJECT_ID: {outcome.description}")
            return
        if not key_ok and not (isinstance(outcome, PostHogAPIError) and outcome.status == 403
                               and "scope" not in (outcome.detail or "")):
            key_ok = True
            yield Result("ok", "key", "POSTHOG_PERSONAL_API_KEY accepted for this project")
        disables = ", ".join(assets_needing(probe.scope)) or "nothing in a default sync"
        if outcome == "ok":
            yield Result("ok", probe.scope, f"needed by {disables}")
        elif outcome == "missing":
            yield Result("skip", probe.scope,
                         f"{probe.endpoint} is not served by this PostHog: {disables} lands "
                         "nothing")
        elif outcome.status == 403 and "scope" in (outcome.detail or ""):
            yield Result("FAIL" if probe.required else "skip", probe.scope,
                         f"missing: disables {disables}; add the scope in PostHog > Settings > "
                         "Personal API keys")
        else:
            yield Result("FAIL", probe.scope, outcome.description)


def _writable(name: str, target: str, env_var: str, test: Callable[[str], None]) -> Result:
    try:
        test(target)
    except Exception as exc:  # noqa: BLE001 - any failure to write is the answer
        return Result("FAIL", name, f"{env_var}={target} is not writable: {exc}")
    return Result("ok", name, f"{env_var}={target} writable")


def _lake_writable(root: str) -> None:
    from resources.lake.location import Location

    if "://" not in root:
        root = str(Path(root).expanduser().absolute())
    location = Location.parse(root, dict(os.environ))
    if location.is_local:
        _directory_writable(Path(location.uri))
        return
    fs = location.filesystem
    path = location.fs_path(location.join(f"_check-{uuid.uuid4().hex}"))
    with fs.open_output_stream(path) as out:
        out.write(b"posthog-pipeline check\n")
    fs.delete_file(path)


def _directory_writable(directory: Path) -> None:
    """A file can be made in `directory`, or in the nearest existing parent a sync would create
    it under (the check itself creates nothing)."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"{existing} is not a directory")
    with tempfile.NamedTemporaryFile(dir=existing, prefix=".posthog-check-"):
        pass


def _warehouse_writable(database: str) -> None:
    path = Path(database).expanduser().absolute()
    if path.is_dir():
        raise OSError("it is a directory, not a DuckDB file")
    # never opens the warehouse itself: a sync may hold DuckDB's lock on it
    if path.exists() and not os.access(path, os.W_OK):
        raise PermissionError("the file is read-only")
    _directory_writable(path.parent)
