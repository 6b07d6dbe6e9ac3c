"""A production-shaped deployment with real parts, on one machine: Dagster's instance in
PostgreSQL (deploy/dagster.yaml, as written), the rate budget in the same PostgreSQL server
(POSTHOG_BUDGET_URL), the lake on the S3 test server, and two syncs started at once as separate
`dagster asset materialize` processes with the multiprocess executor, as two pods on two
machines would run them: each its own state dir, warehouse and lake prefix, one key between
them. The simulator enforces scaled-down rate windows and logs every request."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest

from assets.tables import GROUPS
from posthog_sim import DatasetSpec
from reliability.verify import verify_exact, verify_snapshots
from resources.lake import Lake
from tests.helpers import start_sim
from tests.test_budget import max_in_window

ROOT = Path(__file__).resolve().parents[1]
WINDOWS = ((40, 4.0), (150, 20.0))  # the simulator's limits for the key (PostHog: 480/60 s...)
POOL_LIMIT = 2  # deploy/dagster.yaml: concurrency.pools.default_limit
MULTIPROCESS = {"execution": {"config": {"multiprocess": {"max_concurrent": 4}}}}


def pool_step_keys() -> set[str]:
    """Op names of the steps in the PostHog pool (a step key is its asset's op name, after the
    project's `project_<id>__` when several projects are configured)."""
    from pipelines.definitions import defs
    from resources.posthog import POSTHOG_POOL

    job = defs.resolve_implicit_global_asset_job_def()
    return {node.name for node in job.graph.node_defs if node.pool == POSTHOG_POOL}


def _pool_steps(instance: dg.DagsterInstance, run_ids: list[str]) -> list[tuple[float, float]]:
    """(start, end) of every step of these runs that is in the posthog_api pool."""
    pooled = pool_step_keys()
    spans = []
    for run_id in run_ids:
        starts: dict[str, float] = {}
        for entry in instance.all_logs(run_id):
            event = entry.dagster_event
            if event is None or (entry.step_key or "").split("__")[-1] not in pooled:
                continue
            if event.event_type_value == "STEP_START":
                starts[entry.step_key] = entry.timestamp
            elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE"):
                spans.append((starts.pop(entry.step_key), entry.timestamp))
    return spans


def _max_overlap(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans],
                   key=lambda x: (x[0], x[1]))
    best = now = 0
    for _, delta in edges:
        now += delta
        best = max(best, now)
    return best


PROJECT_2 = DatasetSpec(seed=5, groups_per_type=(900, 300), n_exports=8)


@pytest.mark.slow
def test_deployment_two_projects_one_key_postgres_instance_s3_lake(
    tmp_path: Path, pg_server, s3_bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two projects of one key, synced into one S3 lake by two runs at once (a pod each, each
    with the multiprocess executor), with the daemon running: both exact, no 429, no window
    over its limit, at most the pool's steps at once. Then one pod is killed mid-sync: both
    projects' tables stay old-or-new, the other project's run lands, and the next run of the
    killed project is exact."""
    # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, on which dagster-postgres 0.29's
    # NOTIFY fails: the instance needs the psycopg2 driver named; the budget takes it as is.
    database_url = pg_server.create_database(f"dagster_{uuid.uuid4().hex[:8]}").replace(
        "postgresql://", "postgresql+psycopg2://")
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    for name, value in s3_bucket.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DAGSTER_PG_URL", database_url)
    lake_uri = s3_bucket.uri("lake")
    bindir = Path(sys.executable).parent
    with start_sim(tmp_path, groups_per_type=(1200, 500, 40), n_exports=10,
                   rate_limits=WINDOWS, extra_projects={2: PROJECT_2}) as sim_env:
        sim = sim_env.sim

        def pod(name: str) -> dict[str, str]:
            """A pod's environment: the shared instance, budget, key and lake; its own disk."""
            local = tmp_path / f"pod-{name}"
            local.mkdir(exist_ok=True)
            return {
                **os.environ,
                "DAGSTER_HOME": str(home),
                "DAGSTER_PG_URL": database_url,
                "POSTHOG_BUDGET_URL": database_url,
                "POSTHOG_HOST": sim.api_url,
                "POSTHOG_PROJECT_ID": "1,2",
                "POSTHOG_PERSONAL_API_KEY": sim.api_key,
                "POSTHOG_RATE_LIMIT_WINDOWS": ",".join(f"{c}/{s:g}" for c, s in WINDOWS),
                "LAKE_ROOT": lake_uri,
                "DUCKDB_DATABASE": str(local / "warehouse.duckdb"),
                "PIPELINE_STATE_DIR": str(local / "state"),
            }

        def start(project: int, name: str) -> subprocess.Popen:
            """One run of one project's assets, in its own process group (a pod)."""
            return subprocess.Popen(
                [str(bindir / "dagster"), "asset", "materialize", "-m", "pipelines.definitions",
                 "--select", f"group:posthog_project_{project}",
                 "--config-json", json.dumps(MULTIPROCESS)],
                env=pod(name), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, start_new_session=True)

        def check(project: int) -> None:
            """The project's rows, read through a fresh warehouse (every pod's is its own)."""
            warehouse = tmp_path / f"check-{uuid.uuid4().hex[:6]}.duckdb"
            Lake(lake_uri, warehouse, tmp_path / "check-state").refresh_views()
            verify_exact(sim, lake_uri, warehouse, project_id=project)

        # Once per deployment, before runs: two runs claiming a pool slot at the same moment
        # otherwise race to create the pool's row from default_limit, and one run fails with
        # UniqueViolation on concurrency_limits (seen with Dagster 1.13.27 on PostgreSQL).
        subprocess.run([str(bindir / "dagster"), "instance", "concurrency", "set", "posthog_api",
                        str(POOL_LIMIT)], env=pod("admin"), cwd=ROOT, check=True,
                       capture_output=True, timeout=120)
        daemon_log = (tmp_path / "daemon.log").open("w")
        daemon = subprocess.Popen([str(bindir / "dagster-daemon"), "run"], env=pod("daemon"),
                                  cwd=ROOT, stdout=daemon_log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            started = time.monotonic()
            procs = {project: start(project, f"run-{project}") for project in (1, 2)}
            outputs = {p: proc.communicate(timeout=900)[0] for p, proc in procs.items()}
            elapsed = time.monotonic() - started
            for project, proc in procs.items():
                assert proc.returncode == 0, f"project {project}:\n{outputs[project][-4000:]}"
                assert sim.api_key not in outputs[project]
            for project in (1, 2):
                check(project)
            log = [r for r in sim.request_log if r.server == "api"]
            throttled = [r for r in log if r.status == 429]
            # the query API's requests count in PostHog's own query bucket (HogQLQueryThrottle,
            # 120/h), not in the general windows the simulator enforces here
            stamps = [r.ts for r in log if not r.path.rstrip("/").endswith("/query")]
            busiest = {seconds: max_in_window(stamps, seconds) for _, seconds in WINDOWS}
            per_project = {p: sum(f"/projects/{p}/" in r.path for r in log) for p in (1, 2)}

            # the kill: both projects change, both sync again, project 1's pod dies right after
            # its first commit (its export metadata: exports go first)
            reader = Lake(lake_uri, tmp_path / "reader.duckdb", tmp_path / "reader-state")
            before = {p: _group_count(reader, p) for p in (1, 2)}
            sim.dataset.insert_group(0, "after-kill-1", {"n": 1})
            sim.datasets[2].insert_group(0, "after-kill-2", {"n": 2})
            trial = time.time()
            procs = {project: start(project, f"kill-{project}") for project in (1, 2)}
            committed = _wait_for_commit(reader, "exports", "project_1/posthog_exports",
                                         after=trial, proc=procs[1])
            os.killpg(procs[1].pid, signal.SIGKILL)
            procs[1].communicate(timeout=60)
            # Kubernetes' run launcher marks a run whose pod died as failed (its health check);
            # here the test does, and the daemon's run monitoring frees the pool slots its
            # steps held: until then the other project's steps wait for them
            _fail_dead_run(home, "project_1")
            output_2 = procs[2].communicate(timeout=900)[0]
            assert procs[2].returncode == 0, output_2[-4000:]
            # every view reads one committed version of its table; project 1's groups are the
            # old snapshot or the new one, whole; project 2's sync landed exactly
            warehouse = tmp_path / "after-kill.duckdb"
            Lake(lake_uri, warehouse, tmp_path / "check-state").refresh_views()
            verify_snapshots(lake_uri, warehouse)
            assert _group_count(reader, 1) in (before[1], before[1] + 1)
            check(2)
            rerun = start(1, "rerun-1")
            output = rerun.communicate(timeout=900)[0]
            assert rerun.returncode == 0, output[-4000:]
            check(1)
        finally:
            os.killpg(daemon.pid, signal.SIGTERM)
            try:
                daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)
            daemon_log.close()
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        runs = instance.get_runs()
        statuses = sorted(r.status.value for r in runs)
        overlap = _max_overlap(_pool_steps(instance, [r.run_id for r in runs]))
    finally:
        instance.dispose()
    limits = {seconds: count for count, seconds in WINDOWS}
    print(f"deployment: 2 projects' runs in {elapsed:.1f}s, {len(log)} API requests "
          f"(project 1: {per_project[1]}, project 2: {per_project[2]}), {len(throttled)} "
          f"429s, busiest windows {busiest} (limits {limits}), at most {overlap} PostHog "
          f"steps at once (pool limit {POOL_LIMIT}); kill after {committed}; runs {statuses}")
    assert len(runs) == 5 and statuses.count("SUCCESS") == 4 and statuses.count("FAILURE") == 1
    assert throttled == []
    for count, seconds in WINDOWS:
        assert busiest[seconds] <= count
    assert 1 <= overlap <= POOL_LIMIT


def _fail_dead_run(home: Path, prefix: str) -> None:
    """Mark the started run of the assets under `prefix` failed, as a run launcher's health
    check does for a run whose pod is gone."""
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        runs = [run for run in instance.get_runs(filters=dg.RunsFilter(
                    statuses=[dg.DagsterRunStatus.STARTED]))
                if any(key.path[0] == prefix for key in run.asset_selection or ())]
        assert len(runs) == 1, [r.run_id for r in runs]
        instance.report_run_failed(runs[0], message="its pod was killed (test)")
    finally:
        instance.dispose()


def _group_count(lake: Lake, project: int) -> int:
    """Rows of project's groups in the lake's current version."""
    return lake.read_current(GROUPS, ["group_key"], scope=project).num_rows


def _wait_for_commit(lake: Lake, table: str, asset: str, *, after: float,
                     proc: subprocess.Popen, timeout: float = 300) -> str:
    """Block until `asset` commits to `table` after the time `after`; what it committed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before its first commit"
        last = lake.last_commit(table, asset=asset)
        if last is not None and last["synced_at"].timestamp() > after:
            return f"{asset} committed version {last['version']} of {table}"
        time.sleep(0.2)
    raise AssertionError(f"{asset} did not commit {table} within {timeout:g}s")


def test_deployment_operations_doc_shows_the_instance_file_the_test_uses() -> None:
    """The dagster.yaml snippets docs/OPERATIONS.md gives for production are deploy/dagster.yaml,
    the file the deployment test runs on, key for key."""
    import re

    import yaml

    instance = yaml.safe_load((ROOT / "deploy" / "dagster.yaml").read_text())
    doc = (ROOT / "docs" / "OPERATIONS.md").read_text()
    snippets = [yaml.safe_load(text) for text in re.findall(r"^```yaml\n(.*?)^```$", doc,
                                                              flags=re.DOTALL | re.MULTILINE)]
    storage = [s for s in snippets if "storage" in s]
    pools = [s for s in snippets if "pools" in (s.get("concurrency") or {})]
    monitoring = [s for s in snippets if set(s) == {"run_monitoring"}]
    assert storage == [{"storage": instance["storage"]}]
    assert pools == [{"concurrency": instance["concurrency"]}]
    assert monitoring == [{"run_monitoring": instance["run_monitoring"]}]
    assert instance["concurrency"]["pools"]["default_limit"] == POOL_LIMIT
