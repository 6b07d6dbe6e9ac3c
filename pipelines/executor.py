"""The run executor: in-process by default, multiprocess on request, and a preflight that
checks the configuration (PostHog settings, LAKE_ROOT) once, before any step starts.

Without the preflight every step that needs PostHog fails on its own (three root steps, three
stack traces, and only the first bad variable named). With it, a run whose configuration is
wrong fails at its first PostHog step with one short message that names every problem.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import dagster as dg
from dagster._core.events import DagsterEvent
from dagster._core.execution.plan.objects import StepFailureData, UserFailureData
from dagster._utils.error import SerializableErrorInfo

from assets.project import SINGLE, Project
from resources.lake import LakeError, LakeResource
from resources.lake.location import Location
from resources.posthog import PostHogResource

POSTHOG_RESOURCE_KEY = "posthog"
LAKE_RESOURCE_KEY = "lake"
_DEFAULT_HOST = "https://us.posthog.com"


def _resolved(value: Any) -> Any:
    """An EnvVar's value in this (the run's) process, "" when unset; anything else as is."""
    if isinstance(value, dg.EnvVar):
        return value.get_value() or ""
    return value


def posthog_config_problems(
    resource: PostHogResource, overrides: Mapping[str, Any] | None = None,
    projects: Sequence[Project] = (SINGLE,),
) -> list[str]:
    """Every problem with the PostHog resource's configuration as a run would resolve it
    (EnvVars read now, run config `resources.posthog.config` on top); [] when it is good.

    With several projects, only what every project has wrong (a rate setting, the budget URL)
    stops the run here: one project's missing key fails that project's steps alone, and the
    other projects sync."""
    fields = {
        name: _resolved(resource.__dict__[name])
        for name in type(resource).model_fields
        if name in resource.__dict__
    }
    fields.update(overrides or {})
    try:
        resolved = PostHogResource(**fields)
    except (ValueError, TypeError) as exc:  # a value of the wrong type: pydantic names it
        return [f"PostHog resource configuration: {exc}"]
    if any(p.several for p in projects):
        each = [resolved.config_problems(p.config) for p in projects]
        return [problem for problem in each[0] if all(problem in other for other in each[1:])]
    problems = resolved.config_problems(projects[0].config)
    raw_host = resource.__dict__.get("host", _DEFAULT_HOST)
    if problems and not isinstance(raw_host, dg.EnvVar) and raw_host == _DEFAULT_HOST:
        problems.append(
            f"POSTHOG_HOST is not set: the default {_DEFAULT_HOST} (PostHog US cloud) is used; "
            "set it for https://eu.posthog.com or a self-hosted PostHog."
        )
    return problems


def lake_config_problems(
    lake: LakeResource, overrides: Mapping[str, Any] | None = None
) -> list[str]:
    """What is wrong with LAKE_ROOT as a run would resolve it ([] when it names a lake)."""
    root = (overrides or {}).get("lake_root", _resolved(lake.__dict__.get("lake_root", "")))
    try:
        Location.parse(str(root or ""))
    except LakeError as exc:
        return [str(exc)]
    return []


def preflight_message(problems: list[str]) -> str:
    # the note on the default host is not a problem: counted out, and said last
    problems = sorted(problems, key=lambda p: p.startswith("POSTHOG_HOST is not set:"))
    errors = [p for p in problems if not p.startswith("POSTHOG_HOST is not set:")]
    head = (f"Configuration: {len(errors)} problem{'s' if len(errors) != 1 else ''} "
            "(nothing was run; `posthog-pipeline check` verifies the fix in seconds):")
    return "\n".join([head, *(f"- {p}" for p in problems)])


class _PreflightExecutor(dg.Executor):
    """Runs `check` once before handing the plan to `inner`; on problems, fails the first step
    that needs PostHog with one short message and runs nothing."""

    def __init__(self, inner: dg.Executor, check: Callable[[Any, set[str]], list[str]]):
        self._inner = inner
        self._check = check

    @property
    def retries(self):
        return self._inner.retries

    @property
    def step_dependency_config(self):
        return self._inner.step_dependency_config

    def execute(self, plan_context, execution_plan) -> Iterator[DagsterEvent]:
        job_def = plan_context.job.get_definition()
        checked = {POSTHOG_RESOURCE_KEY, LAKE_RESOURCE_KEY}
        needs = [
            (step, keys) for step in execution_plan.get_steps_to_execute_in_topo_order()
            if (keys := checked
                & job_def.get_node(step.node_handle).definition.required_resource_keys)
        ]
        # the step the executor would start first: highest dagster/priority, then plan order
        first = min((step for step, _ in needs), default=None,
                    key=lambda step: -int(step.tags.get("dagster/priority", 0) or 0))
        # only what this run's steps use: a run of lake-only checks needs no PostHog key
        used = set().union(*(keys for _, keys in needs))
        problems = self._check(plan_context, used) if first is not None else []
        if not problems:
            yield from self._inner.execute(plan_context, execution_plan)
            return
        message = preflight_message(problems)
        yield DagsterEvent.step_failure_event(
            step_context=plan_context.for_step(first),
            step_failure_data=StepFailureData(
                # no stack: the message is the whole story (which variables, what to set)
                error=SerializableErrorInfo(message=message, stack=[],
                                            cls_name="PostHogConfigError"),
                user_failure_data=UserFailureData(label="configuration", description=message),
            ),
        )


def posthog_executor(
    posthog: PostHogResource | None, lake: LakeResource | None = None,
    projects: Sequence[Project] = (SINGLE,),
) -> dg.ExecutorDefinition:
    """In-process (default) or multiprocess steps, behind a preflight of the resources'
    settings."""

    def check(plan_context, used: set[str]) -> list[str]:
        run_resources = (plan_context.run_config or {}).get("resources") or {}

        def overrides(key: str) -> Mapping[str, Any]:
            return (run_resources.get(key) or {}).get("config") or {}

        problems = []
        if lake is not None and LAKE_RESOURCE_KEY in used:
            problems += lake_config_problems(lake, overrides(LAKE_RESOURCE_KEY))
        if posthog is not None and POSTHOG_RESOURCE_KEY in used:
            problems = posthog_config_problems(
                posthog, overrides(POSTHOG_RESOURCE_KEY), projects) + problems
        return problems

    def create(init_context) -> dg.Executor:
        inner = dg.multi_or_in_process_executor.executor_creation_fn(init_context)
        return _PreflightExecutor(inner, check)

    # One process runs every step of a run, one step after another (Dagster's in-process
    # executor). The steps do their own overlapping where PostHog allows it: group types crawl
    # side by side and export contents download 4 at a time, so the shared rate budget, not the
    # executor, is the limit. A process per step bought nothing here: it cost about 5 s of
    # start-up per run, a third more CPU and four times the memory (see README, Performance).
    # The multiprocess executor stays one line of run config away, for a self-hosted PostHog
    # without rate limits on a machine with cores to spare:
    #     execution: {config: {multiprocess: {max_concurrent: 4}}}
    # The rate budget is kept across processes either way.
    return dg.executor(
        name="posthog_executor",
        config_schema=dg.Field(
            dg.Selector({
                "in_process": dg.in_process_executor.config_schema.as_field(),
                "multiprocess": dg.multiprocess_executor.config_schema.as_field(),
            }),
            default_value={"in_process": {}},
            description="in_process (the default): every step in the run's process, one at a "
            "time. multiprocess: each step in its own process, several at once.",
        ),
        requirements=lambda config: dg.multi_or_in_process_executor.get_requirements(config),
    )(create)
