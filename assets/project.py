"""Which PostHog project an asset syncs, and where that puts it in the asset graph.

One project (POSTHOG_PROJECT_ID=123, the default) keeps the asset keys `posthog_groups`, ... in
the group `posthog`. Several projects (POSTHOG_PROJECT_ID=123,456 or POSTHOG_PROJECTS_FILE) get
one copy of every asset per project, under the key prefix `project_<id>` and in the group
`posthog_project_<id>`: the UI then shows each project's freshness, failures and history on its
own, a project is re-run alone by selecting its group, and the contract command
`dagster asset materialize -m pipelines.definitions --select '*'` still syncs them all. (Static
partitions per project would show the same in the UI, but the contract command, which takes no
partition argument, refuses partitioned assets.)

Every project's rows land in the same tables, told apart by `project_id` (assets/tables.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import dagster as dg

from resources.projects import ProjectConfig


@dataclass(frozen=True)
class Project:
    """One project's place in the graph. ``config`` None is the posthog resource's own project
    (POSTHOG_HOST, POSTHOG_PROJECT_ID, POSTHOG_PERSONAL_API_KEY); ``several``: it is one of
    several projects, so its assets carry its prefix and group."""

    config: ProjectConfig | None = None
    several: bool = False

    @property
    def prefix(self) -> list[str]:
        return [f"project_{self.config.project_id}"] if self.several and self.config else []

    @property
    def group_name(self) -> str:
        return f"posthog_{self.prefix[0]}" if self.prefix else "posthog"

    def key(self, name: str) -> dg.AssetKey:
        return dg.AssetKey([*self.prefix, name])

    @property
    def label(self) -> str:
        """For messages: `host/id` of a configured project, else "the project"."""
        return "the project" if self.config is None else f"project {self.config.label}"

    @property
    def metadata(self) -> dict[str, str]:
        """Shown on each asset in the UI: which project it syncs (never the key)."""
        if self.config is None:
            return {}
        return {"posthog/project": self.config.label, "posthog/key_env": self.config.key_env}


SINGLE = Project()


def projects_of(configs: Sequence[ProjectConfig] | None) -> list[Project]:
    """The graph's projects: the resource's own one when none are configured, else each."""
    if not configs:
        return [SINGLE]
    return [Project(config, several=len(configs) > 1) for config in configs]
