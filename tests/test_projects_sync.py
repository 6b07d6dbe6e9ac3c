"""Several PostHog projects from one deployment, end to end: the contract command syncs every
configured project into the same tables (told apart by project_id), each project's assets in
their own group; a project that fails never costs another its data, and is named; a project
re-runs alone; a lake written before project_id is adopted or migrated."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from assets.tables import ALL_TABLES, EXPORTS, GROUPS
from posthog_sim import DatasetSpec
from reliability.scenarios import cli_env
from reliability.verify import verify_exact
from resources.lake import Lake, TableSpec
from tests.helpers import SimEnv, start_sim

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PROJECT_2 = DatasetSpec(seed=11, groups_per_type=(60, 25), n_exports=6)


def contract_env(env: SimEnv, **extra: str) -> dict[str, str]:
    out = {**cli_env(env, env.tmp / "dagster_home"), **extra}
    out.pop("POSTHOG_PROJECTS_FILE", None)
    return out


def materialize(environ: dict[str, str], select: str = "*") -> subprocess.CompletedProcess:
    """The contract command (or one project's group), as a user types it."""
    return subprocess.run(
        [str(BIN / "dagster"), "asset", "materialize", "-m", "pipelines.definitions",
         "--select", select],
        env=environ, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


def test_two_projects_one_command_exact_per_project_and_failures_isolated(tmp_path: Path):
    with start_sim(tmp_path, groups_per_type=(120, 40), n_exports=8,
                   extra_projects={2: PROJECT_2}) as env:
        environ = contract_env(env, POSTHOG_PROJECT_ID="1,2")
        run = materialize(environ)
        assert run.returncode == 0, run.stderr[-3000:]
        assert env.sim.api_key not in run.stdout + run.stderr
        for project_id in (1, 2):
            verify_exact(env.sim, env.lake_root, env.database, project_id=project_id)
        # one view per table over every project's rows
        assert env.query("SELECT project_id, count(*) FROM posthog.groups GROUP BY 1 "
                         "ORDER BY 1") == [(1, 160), (2, 85)]
        assert {r[0] for r in env.query("SELECT DISTINCT project_id FROM posthog.exports")} \
            == {1, 2}

        # project 2's key goes missing, both projects change: project 1 lands its change,
        # project 2 keeps its last sync whole, and the run says which project failed and why
        env.sim.dataset.insert_group(0, "new-in-1", {"n": 1})
        env.sim.datasets[2].insert_group(0, "new-in-2", {"n": 2})
        file = tmp_path / "projects.yaml"
        file.write_text("projects:\n  - id: 1\n  - id: 2\n    key_env: POSTHOG_KEY_PROJECT_2\n")
        failing = {**environ, "POSTHOG_PROJECTS_FILE": str(file)}
        failing.pop("POSTHOG_PROJECT_ID")
        failing.pop("POSTHOG_KEY_PROJECT_2", None)
        run = materialize(failing)
        assert run.returncode != 0
        output = run.stdout + run.stderr
        assert "project_2__posthog_groups" in output
        assert "POSTHOG_KEY_PROJECT_2 (its key) is not set" in output
        verify_exact(env.sim, env.lake_root, env.database, project_id=1)
        assert env.query("SELECT count(*) FROM posthog.groups WHERE project_id = 2 "
                         "AND group_key = 'new-in-2'") == [(0,)]
        assert env.query("SELECT count(*) FROM posthog.groups WHERE project_id = 2") == [(85,)]

        # project 2 alone, by its group: exact, and project 1's rows are not touched
        before = env.query("SELECT max(synced_at) FROM posthog.groups WHERE project_id = 1")
        run = materialize({**failing, "POSTHOG_KEY_PROJECT_2": env.sim.api_key},
                          select="group:posthog_project_2")
        assert run.returncode == 0, run.stderr[-3000:]
        verify_exact(env.sim, env.lake_root, env.database, project_id=2)
        assert env.query("SELECT max(synced_at) FROM posthog.groups WHERE project_id = 1") \
            == before


def _unscoped(spec: TableSpec) -> TableSpec:
    """The spec as it was before tables had project_id."""
    return TableSpec(name=spec.name, schema=pa.schema(list(spec.schema)[1:]),
                     json_columns=spec.json_columns, mode=spec.mode, key=spec.key,
                     history=spec.history, description=spec.description)


def _lake_before_project_id(env: SimEnv) -> None:
    """A lake as the version before project_id left it: groups (with history) and exports."""
    lake = Lake(env.lake_root, env.database, env.state_dir)
    for spec, rows in ((GROUPS, [{"group_type_index": 0, "group_type": "organization",
                                  "group_key": "gone-since", "group_properties": "{}"}]),
                       (EXPORTS, [{"id": 999_999, "export_format": "text/csv",
                                   "listed": False}])):
        with lake.writer(_unscoped(spec)) as writer:
            writer.write_rows(rows)
        lake.publish([writer], run_id="before", asset=f"posthog_{spec.name}")


def test_a_lake_from_before_project_id_is_adopted_by_one_project(tmp_path: Path):
    with start_sim(tmp_path, groups_per_type=(50, 10), n_exports=4) as env:
        _lake_before_project_id(env)
        run = materialize(contract_env(env, POSTHOG_PROJECT_ID="1"))
        assert run.returncode == 0, run.stderr[-3000:]
        verify_exact(env.sim, env.lake_root, env.database)
        # the old rows are project 1's: the vanished group's version closed, the expired
        # export kept (merge on id within the project)
        assert env.query("SELECT project_id, valid_to IS NOT NULL FROM posthog.groups_history "
                         "WHERE group_key = 'gone-since'") == [(1, True)]
        assert env.query("SELECT project_id, listed FROM posthog.exports WHERE id = 999999") \
            == [(1, False)]


def test_several_projects_refuse_a_lake_from_before_project_id_until_migrated(tmp_path: Path):
    with start_sim(tmp_path, groups_per_type=(50, 10), n_exports=4,
                   extra_projects={2: PROJECT_2}) as env:
        _lake_before_project_id(env)
        environ = contract_env(env, POSTHOG_PROJECT_ID="1,2")
        run = materialize(environ)
        assert run.returncode != 0
        assert "posthog-pipeline migrate-lake --project-id" in run.stdout + run.stderr
        migrate = subprocess.run([str(BIN / "posthog-pipeline"), "migrate-lake",
                                  "--project-id", "1"], env=environ, cwd=ROOT,
                                 capture_output=True, text=True, timeout=120, check=False)
        assert migrate.returncode == 0, migrate.stderr
        assert "project_id 1" in migrate.stdout
        run = materialize(environ)
        assert run.returncode == 0, run.stderr[-3000:]
        for project_id in (1, 2):
            verify_exact(env.sim, env.lake_root, env.database, project_id=project_id)
        assert env.query("SELECT project_id FROM posthog.exports WHERE id = 999999") == [(1,)]


@pytest.mark.parametrize("table", [t.name for t in ALL_TABLES])
def test_every_table_has_project_id_first_and_scoped(table: str) -> None:
    spec = next(t for t in ALL_TABLES if t.name == table)
    assert spec.schema.names[0] == "project_id" and spec.scope == "project_id"


def test_check_probes_every_configured_project(tmp_path: Path) -> None:
    with start_sim(tmp_path, groups_per_type=(5,), n_exports=1,
                   extra_projects={2: PROJECT_2}) as env:
        environ = contract_env(env, POSTHOG_PROJECT_ID="1,2,3")
        check = subprocess.run([str(BIN / "posthog-pipeline"), "check"], env=environ, cwd=ROOT,
                               capture_output=True, text=True, timeout=120, check=False)
        lines = check.stdout.splitlines()
        host = env.sim.api_url.split("//")[1].split(":")[0]
        for project in (1, 2):
            assert any(line.startswith("ok") and f"{host}/{project}: group:read" in line
                       for line in lines), check.stdout
        assert any(line.startswith("FAIL") and f"{host}/3: project" in line
                   for line in lines), check.stdout
        assert check.returncode == 1 and env.sim.api_key not in check.stdout + check.stderr


def test_export_requests_go_to_the_project_each_names() -> None:
    from assets.project import SINGLE, projects_of
    from pipelines.schedules import requests_by_op
    from resources.projects import ProjectConfig

    csv = {"export_format": "text/csv", "insight": 7}
    assert requests_by_op([csv], [SINGLE], "r.yaml") == {
        "posthog_requested_exports": {"config": {"requests": [csv]}}}
    graph = projects_of([ProjectConfig("https://us.posthog.com", "1"),
                         ProjectConfig("https://us.posthog.com", "2")])
    assert requests_by_op([{**csv, "project_id": 2}], graph, "r.yaml") == {
        "project_2__posthog_requested_exports": {"config": {"requests": [csv]}}}
    with pytest.raises(ValueError, match="request 1 needs a project_id, one of 1, 2"):
        requests_by_op([csv], graph, "r.yaml")
