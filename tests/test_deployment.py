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
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest

from tests.helpers import SimEnv, start_sim
from tests.test_budget import max_in_window
from tests.test_e2e_sync import assert_warehouse_equals_simulator

ROOT = Path(__file__).resolve().parents[1]
WINDOWS = ((40, 4.0), (150, 20.0))  # the simulator's limits for the key (PostHog: 480/60 s...)
POOL_LIMIT = 2  # deploy/dagster.yaml: concurrency.pools.default_limit
MULTIPROCESS = {"execution": {"config": {"multiprocess": {"max_concurrent": 4}}}}


def pool_step_keys() -> set[str]:
    """Step keys of the steps in the PostHog pool (a step key is its asset's op name)."""
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
            if event is None or entry.step_key not in pooled:
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


@pytest.mark.slow
def test_deployment_two_machines_one_key_postgres_instance_s3_lake(
    tmp_path: Path, pg_server, s3_bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, on which dagster-postgres 0.29's
    # NOTIFY fails: the instance needs the psycopg2 driver named; the budget takes it as is.
    database_url = pg_server.create_database(f"dagster_{uuid.uuid4().hex[:8]}").replace(
        "postgresql://", "postgresql+psycopg2://")
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    for name, value in s3_bucket.env().items():
        monkeypatch.setenv(name, value)
    bindir = Path(sys.executable).parent
    with start_sim(tmp_path, groups_per_type=(1200, 500, 40), n_exports=10,
                   rate_limits=WINDOWS) as sim_env:
        machines = {}
        for name in ("a", "b"):
            machine = SimEnv(sim=sim_env.sim, tmp=tmp_path / f"machine-{name}",
                             lake_uri=s3_bucket.uri(f"lake-{name}"))
            machine.tmp.mkdir()
            env = {
                **os.environ,
                "DAGSTER_HOME": str(home),
                "DAGSTER_PG_URL": database_url,
                "POSTHOG_BUDGET_URL": database_url,
                "POSTHOG_HOST": sim_env.sim.api_url,
                "POSTHOG_PROJECT_ID": str(sim_env.sim.project_id),
                "POSTHOG_PERSONAL_API_KEY": sim_env.sim.api_key,
                "POSTHOG_RATE_LIMIT_WINDOWS": ",".join(f"{c}/{s:g}" for c, s in WINDOWS),
                "LAKE_ROOT": str(machine.lake_root),
                "DUCKDB_DATABASE": str(machine.database),
                "PIPELINE_STATE_DIR": str(machine.state_dir),
            }
            machines[name] = (machine, env)
        # Once per deployment, before runs: two runs claiming a pool slot at the same moment
        # otherwise race to create the pool's row from default_limit, and one run fails with
        # UniqueViolation on concurrency_limits (seen with Dagster 1.13.27 on PostgreSQL).
        any_env = next(iter(machines.values()))[1]
        subprocess.run([str(bindir / "dagster"), "instance", "concurrency", "set", "posthog_api",
                        str(POOL_LIMIT)], env=any_env, cwd=ROOT, check=True,
                       capture_output=True, timeout=120)
        started = time.monotonic()
        procs = {
            name: subprocess.Popen(
                [str(bindir / "dagster"), "asset", "materialize", "-m", "pipelines.definitions",
                 "--select", "*", "--config-json", json.dumps(MULTIPROCESS)],
                env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for name, (_, env) in machines.items()
        }
        outputs = {name: proc.communicate(timeout=900)[0] for name, proc in procs.items()}
        elapsed = time.monotonic() - started
        for name, proc in procs.items():
            assert proc.returncode == 0, f"machine {name}:\n{outputs[name][-4000:]}"
            assert sim_env.sim.api_key not in outputs[name]
        for machine, _ in machines.values():
            assert_warehouse_equals_simulator(machine)
        log = [r for r in sim_env.sim.request_log if r.server == "api"]
        throttled = [r for r in log if r.status == 429]
        # the query API's requests count in PostHog's own query bucket (HogQLQueryThrottle,
        # 120/h), not in the general windows the simulator enforces here
        stamps = [r.ts for r in log if not r.path.rstrip("/").endswith("/query")]
        busiest = {seconds: max_in_window(stamps, seconds) for _, seconds in WINDOWS}
    monkeypatch.setenv("DAGSTER_PG_URL", database_url)
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        runs = instance.get_runs()
        assert len(runs) == 2 and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        overlap = _max_overlap(_pool_steps(instance, [r.run_id for r in runs]))
    finally:
        instance.dispose()
    limits = {seconds: count for count, seconds in WINDOWS}
    print(f"deployment: 2 runs in {elapsed:.1f}s, {len(log)} API requests, "
          f"{len(throttled)} 429s, busiest windows {busiest} (limits {limits}), "
          f"at most {overlap} PostHog steps at once (pool limit {POOL_LIMIT})")
    assert throttled == []
    for count, seconds in WINDOWS:
        assert busiest[seconds] <= count
    assert 1 <= overlap <= POOL_LIMIT


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
    assert storage == [{"storage": instance["storage"]}]
    assert pools == [{"concurrency": instance["concurrency"]}]
    assert instance["concurrency"]["pools"]["default_limit"] == POOL_LIMIT
