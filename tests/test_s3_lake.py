"""The same sync on an S3 lake: a real S3-compatible server (SeaweedFS on 127.0.0.1, started by
the fixtures), real Delta commits over it, DuckDB reading it with no extension."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from reliability.scenarios import cli_env, run_cli_sync
from reliability.verify import verify_exact, verify_snapshots
from resources.lake import Location
from resources.lake.faults import KILL_AT
from tests.helpers import failure_text, start_sim
from tests.test_crash_points import _new_data
from tests.test_e2e_sync import assert_warehouse_equals_simulator

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def s3_env(s3_bucket, monkeypatch):
    """The standard AWS_* variables pointing at the test server, for this process."""
    for name, value in s3_bucket.env().items():
        monkeypatch.setenv(name, value)
    return s3_bucket


def _objects(s3_bucket) -> list[str]:
    location = Location.parse(s3_bucket.uri("x"), environ={**os.environ, **s3_bucket.env()})
    import pyarrow.fs as pafs

    infos = location.filesystem.get_file_info(pafs.FileSelector(s3_bucket.bucket, recursive=True))
    return [i.path for i in infos if i.type == pafs.FileType.File]


def test_s3_lake_sync_is_exact_and_a_resync_downloads_nothing(tmp_path, s3_env):
    lake = s3_env.uri("prod", "lake")
    with start_sim(tmp_path, groups_per_type=(300, 120), n_exports=12, lake_uri=lake) as env:
        result = env.sync()
        assert result.success
        assert_warehouse_equals_simulator(env)
        verify_exact(env.sim, env.lake_root, env.database)
        checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
        assert checks["posthog_export_contents_sha256"], checks
        env.sim.clear_log()
        again = env.sync()
        meta = again.asset_materializations_for_node("posthog_export_contents")[0].metadata
        assert meta["content_bytes_downloaded"].value == 0
        assert not [r for r in env.sim.request_log if r.server == "storage"]
        # everything is in the bucket under the prefix; nothing of the lake on local disk
        assert all(p.startswith(f"{s3_env.bucket}/prod/lake/posthog/") for p in _objects(s3_env))
        assert not (tmp_path / "lake").exists()
        # the CLI reads the S3 lake with no DuckDB extension
        cli_environ = {**os.environ, "LAKE_ROOT": lake, "DUCKDB_DATABASE": str(env.database),
                       "PIPELINE_STATE_DIR": str(env.state_dir)}
        sql = subprocess.run(
            [sys.executable, "-m", "pipelines.cli", "sql",
             "SELECT count(*) AS n FROM posthog.groups"],
            env=cli_environ, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert sql.returncode == 0, sql.stderr
        assert "420" in sql.stdout
        status = subprocess.run([sys.executable, "-m", "pipelines.cli", "status"],
                                env=cli_environ, cwd=ROOT, capture_output=True, text=True,
                                timeout=120)
        assert status.returncode == 0, status.stderr
        assert "groups_history" in status.stdout and lake in status.stdout


def test_s3_lake_hostile_filenames_stay_inside_the_lake(tmp_path, s3_env):
    lake = s3_env.uri("lake")
    with start_sim(tmp_path, groups_per_type=(60,), n_exports=3, hostile=True,
                   lake_uri=lake) as env:
        result = env.sync(raise_on_error=False)
        assert result.success, failure_text(result)[:2000]
        verify_exact(env.sim, env.lake_root, env.database)
        objects = _objects(s3_env)
        assert objects and all(p.startswith(f"{s3_env.bucket}/lake/posthog/") for p in objects)
        stored = env.query("SELECT stored_path FROM posthog.export_contents")
        assert all(p.startswith("posthog/export_files/sha256/") for (p,) in stored)


@pytest.mark.parametrize("point", ["after_commit:export_rows", "before_commit:export_contents",
                                   "after_commit:groups_history", "after_commit:groups"])
def test_s3_lake_kill_at_a_commit_boundary_leaves_old_or_new_and_the_next_sync_exact(
        tmp_path, s3_env, point):
    lake = s3_env.uri("lake")
    with start_sim(tmp_path / "sim", groups_per_type=(150, 40), n_exports=4,
                   lake_uri=lake) as env:
        environ = {**cli_env(env, tmp_path / "dagster_home"), **s3_env.env()}
        log = tmp_path / "sync.log"
        assert run_cli_sync(environ, log) == 0, log.read_text()[-3000:]
        _new_data(env, 0)
        assert run_cli_sync({**environ, KILL_AT: point}, log) == 137
        verify_snapshots(env.lake_root, env.database)
        result = env.sync(raise_on_error=False)
        assert result.success, failure_text(result)[:2000]
        verify_exact(env.sim, env.lake_root, env.database)
