"""Which PostHog projects one deployment syncs, configured without code.

- One project (the default, today's variables): POSTHOG_HOST, POSTHOG_PROJECT_ID=123 and the key
  in POSTHOG_PERSONAL_API_KEY.
- Several projects of one host and key: POSTHOG_PROJECT_ID=123,456.
- Projects on several hosts or keys: POSTHOG_PROJECTS_FILE names a YAML file:

      projects:
        - id: 123                              # host and key_env default as above
        - id: 456
          host: https://eu.posthog.com
          key_env: POSTHOG_KEY_EU              # the NAME of the variable holding its key

The file never holds a key, only the name of the variable that does. Project ids are unique
within one deployment (tables tell projects apart by `project_id`): two hosts' projects that
happen to share an id need two deployments. Projects sharing a key
(and host) share one rate budget, since the budget's bucket is sha256(host, key); different keys
have separate budgets and never wait on each other's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from resources.errors import PostHogConfigError

__all__ = ["DEFAULT_HOST", "DEFAULT_KEY_ENV", "ProjectConfig", "projects_from_env"]

DEFAULT_HOST = "https://us.posthog.com"
DEFAULT_KEY_ENV = "POSTHOG_PERSONAL_API_KEY"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PROJECT_ID = re.compile(r"[0-9]+|@current")


@dataclass(frozen=True)
class ProjectConfig:
    """One PostHog project: its origin, id, and the name of the variable holding its key."""

    host: str
    project_id: str
    key_env: str = DEFAULT_KEY_ENV

    @property
    def label(self) -> str:
        """`host/id`, for logs and messages (never the key)."""
        return f"{urlsplit(self.host).hostname or self.host}/{self.project_id}"


def projects_from_env(environ: Mapping[str, str]) -> list[ProjectConfig]:
    """The configured projects, in order; a PostHogConfigError naming the variable or file
    when the configuration is wrong. An unset POSTHOG_PROJECT_ID gives one project with an
    empty id, which the resource then reports as not set (as with one project today)."""
    default_host = (environ.get("POSTHOG_HOST") or "").strip() or DEFAULT_HOST
    file = (environ.get("POSTHOG_PROJECTS_FILE") or "").strip()
    if file:
        if (environ.get("POSTHOG_PROJECT_ID") or "").strip():
            raise PostHogConfigError(
                "Set either POSTHOG_PROJECTS_FILE or POSTHOG_PROJECT_ID, not both.")
        projects = _from_file(Path(file), default_host)
    else:
        raw = (environ.get("POSTHOG_PROJECT_ID") or "").strip()
        ids = [part.strip() for part in raw.split(",")] if raw else [""]
        if len(ids) > 1 and not all(_PROJECT_ID.fullmatch(i) and i != "@current" for i in ids):
            raise PostHogConfigError(
                f"POSTHOG_PROJECT_ID={raw!r}: several projects are numeric ids separated by "
                "commas, e.g. 123,456")
        projects = [ProjectConfig(default_host, i) for i in ids]
    seen: dict[str, ProjectConfig] = {}
    for project in projects:
        other = seen.get(project.project_id)
        if project.project_id and other is not None:
            raise PostHogConfigError(
                f"project {project.label} is configured twice" if other.label == project.label
                else f"projects {other.label} and {project.label} share the id "
                f"{project.project_id}: every table tells projects apart by project_id (and "
                "each project's assets by project_<id>), so one deployment syncs one of them; "
                "give the other its own deployment (LAKE_ROOT and DUCKDB_DATABASE)")
        seen[project.project_id] = project
    return projects


def _from_file(path: Path, default_host: str) -> list[ProjectConfig]:
    where = f"POSTHOG_PROJECTS_FILE={str(path)!r}"
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise PostHogConfigError(f"{where} cannot be read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise PostHogConfigError(f"{where} is not valid YAML: {exc}") from None
    entries = data.get("projects") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise PostHogConfigError(f"{where} needs a non-empty list under 'projects:'")
    projects = []
    for n, entry in enumerate(entries, 1):
        if not isinstance(entry, dict) or not set(entry) <= {"id", "host", "key_env"}:
            raise PostHogConfigError(
                f"{where}: project {n} must be a mapping of id, host and key_env (the NAME of "
                "the variable holding its key; never the key itself)")
        project_id = str(entry.get("id", "")).strip()
        if not re.fullmatch(r"[0-9]+", project_id):
            raise PostHogConfigError(f"{where}: project {n} needs a numeric id")
        key_env = str(entry.get("key_env") or DEFAULT_KEY_ENV)
        if not _ENV_NAME.fullmatch(key_env):
            raise PostHogConfigError(
                f"{where}: project {n}'s key_env must name an environment variable "
                "(e.g. POSTHOG_KEY_EU), not hold the key")
        host = str(entry.get("host") or default_host).strip()
        projects.append(ProjectConfig(host, project_id, key_env))
    return projects
