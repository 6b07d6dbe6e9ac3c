"""`posthog-pipeline` sql / status / demo: every statement printed, read-only commands create
nothing and name the paths they read, and the demo lands only in its own lake."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

import run
from pipelines import cli

ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).parent / "posthog-pipeline")


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and mtime (ns): equal trees, nothing touched."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            out[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LAKE_ROOT", "DUCKDB_DATABASE", "DAGSTER_HOME", "POSTHOG_HOST")}
    env.update(extra)
    return env


@pytest.fixture
def warehouse(tmp_path: Path) -> dict[str, str]:
    """A lake directory and a DuckDB file with a `posthog.groups` table; the env naming them."""
    lake = tmp_path / "lake"
    lake.mkdir()
    database = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(database)) as con:
        con.execute("CREATE SCHEMA posthog")
        con.execute("CREATE TABLE posthog.groups AS SELECT * FROM (VALUES (0, 'a'), (1, 'b')) "
                    "t(group_type_index, group_key)")
    return {"LAKE_ROOT": str(lake), "DUCKDB_DATABASE": str(database)}


def _sql(env: dict[str, str], *args: str):
    return CliRunner().invoke(cli.main, ["sql", *args], env=env)


def test_sql_prints_every_statement_result_in_order(warehouse):
    out = _sql(warehouse, "SELECT 1 AS first_col; SELECT count(*) AS n_groups FROM posthog.groups")
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0].split() == ["first_col"] and lines[2] == "1" and lines[3] == "(1 row)"
    assert lines[4] == ""
    assert lines[5].split() == ["n_groups"] and lines[7] == "2" and lines[8] == "(1 row)"


def test_sql_csv_prints_a_header_per_statement(warehouse):
    out = _sql(warehouse, "--format", "csv", "SELECT 1 AS a; SELECT 2 AS b, 3 AS c")
    assert out.exit_code == 0, out.output
    assert out.output.replace("\r\n", "\n") == "a\n1\n\nb,c\n2,3\n"


def test_sql_set_applies_to_the_statements_after_it(warehouse):
    out = _sql(warehouse, "--format", "json",
               "SET TimeZone = 'America/Chicago'; SELECT current_setting('TimeZone') AS tz")
    assert out.exit_code == 0, out.output
    assert out.output == '{"tz": "America/Chicago"}\n'


def test_sql_failing_statement_is_named_after_earlier_results(warehouse):
    out = _sql(warehouse, "SELECT 41 + 1 AS answer; SELECT * FROM posthog.nope; SELECT 3")
    assert out.exit_code == 1
    assert "42" in out.output
    assert "query failed at statement 2 of 3" in out.output
    assert "(1 row)" in out.output and out.output.count("(1 row)") == 1


def test_sql_refuses_an_empty_query(warehouse):
    out = _sql(warehouse, " ; ")
    assert out.exit_code == 1
    assert "no SQL statement" in out.output


@pytest.mark.parametrize("argv", [["status"], ["sql", "SELECT 1"]])
@pytest.mark.parametrize("configured", [False, True])
def test_read_only_commands_create_nothing_and_name_the_paths(tmp_path, argv, configured):
    """From a directory with no lake: exit 1, both absolute paths named, the tree unchanged
    (`status` used to create ./data/lake through LakeResource.get_lake)."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = _env(LAKE_ROOT="rel/lake", DUCKDB_DATABASE="rel/wh.duckdb") if configured else _env()
    before = _tree(tmp_path)
    out = subprocess.run([CLI, *argv], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=120)
    assert _tree(tmp_path) == before
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    lake, database = (("rel/lake", "rel/wh.duckdb") if configured
                      else ("data/lake", "data/warehouse.duckdb"))
    assert f"LAKE_ROOT       {cwd / lake}  " in out.stderr
    assert f"DUCKDB_DATABASE {cwd / database}  " in out.stderr
    assert out.stderr.count("does not exist") == 2


def test_status_with_a_lake_but_no_warehouse_points_at_rebuild_views(tmp_path):
    (tmp_path / "lake").mkdir()
    before = _tree(tmp_path)
    out = subprocess.run([CLI, "status"], cwd=tmp_path, capture_output=True, text=True,
                         env=_env(LAKE_ROOT="lake", DUCKDB_DATABASE="wh.duckdb"), timeout=120)
    assert out.returncode == 1
    assert "posthog-pipeline rebuild-views" in out.stderr
    assert _tree(tmp_path) == before


def test_rebuild_views_refuses_a_missing_lake_instead_of_creating_one(tmp_path):
    before = _tree(tmp_path)
    out = subprocess.run([CLI, "rebuild-views"], cwd=tmp_path, env=_env(), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 1
    assert f"LAKE_ROOT {tmp_path / 'data' / 'lake'} does not exist" in out.stderr
    assert _tree(tmp_path) == before


def test_cli_demo_paths_are_the_ones_run_py_ui_shows():
    assert run.DEMO_LAKE_ROOT == run.ROOT / cli.DEMO_LAKE_ROOT
    assert run.DEMO_DUCKDB == run.ROOT / cli.DEMO_DUCKDB


def test_demo_leaves_the_configured_lake_untouched(tmp_path):
    """LAKE_ROOT / DUCKDB_DATABASE point at a 'real' lake: the demo lands in ./data/demo only."""
    real = tmp_path / "real"
    (real / "lake" / "posthog").mkdir(parents=True)
    (real / "lake" / "posthog" / "keep.parquet").write_bytes(b"real data")
    with duckdb.connect(str(real / "warehouse.duckdb")) as con:
        con.execute("CREATE TABLE t AS SELECT 1 AS x")
    before = _tree(real)
    cwd = tmp_path / "work"
    cwd.mkdir()
    env = _env(LAKE_ROOT=str(real / "lake"), DUCKDB_DATABASE=str(real / "warehouse.duckdb"),
               DAGSTER_HOME=str(tmp_path / "dagster_home"))
    out = subprocess.run([CLI, "demo", "--groups", "50,20", "--exports", "5"], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert _tree(real) == before
    assert sorted(p.name for p in cwd.iterdir()) == ["data"]
    assert sorted(p.name for p in (cwd / "data").iterdir()) == ["demo"]
    demo = cwd / "data" / "demo"
    assert f"demo's own lake {demo / 'lake'} and warehouse {demo / 'warehouse.duckdb'}" \
        in out.stdout
    # 5 exports of the key's user (1 of them expired) and 5 of another user's
    assert ("10 exports in the simulator, 4 of them listed to this key (1 expired, 5 created by "
            "another user") in out.stdout
    landed = _tree(cwd)
    count = subprocess.run([CLI, "sql", "--demo", "--format", "csv",
                            "SELECT count(*) AS n FROM posthog.exports"],
                           cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert count.returncode == 0, count.stderr
    assert count.stdout.split() == ["n", "4"]
    status = subprocess.run([CLI, "status", "--demo"], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    assert f"Warehouse {demo / 'warehouse.duckdb'}" in status.stdout
    assert _tree(cwd) == landed  # reading a lake changes nothing in it either


def test_demo_stops_its_sync_on_sigterm(tmp_path):
    """SIGTERM mid-sync: the demo stops `dagster asset materialize` (one SIGINT, so Dagster ends
    the run) and waits for it; nothing keeps running and the run is not left 'STARTED'
    (before, the demo died at once and the sync ran on, orphaned)."""
    import signal
    import sqlite3
    import time
    import uuid

    token = uuid.uuid4().hex
    env = _env(DAGSTER_HOME=str(tmp_path / "dagster_home"), CLI_TEST_MARKER=token)
    out_file = tmp_path / "stdout.txt"

    def marked() -> list[int]:
        pids = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if f"CLI_TEST_MARKER={token}".encode() in f.read().split(b"\0"):
                        pids.append(int(entry))
            except OSError:
                continue
        return pids

    with out_file.open("w") as out:
        proc = subprocess.Popen([CLI, "demo", "--groups", "200000,100000"], cwd=tmp_path,
                                env=env, stdout=out, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "Running:" not in out_file.read_text():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        # the sync's run has started (a fixed sleep was not enough on a loaded machine: the
        # signal came before Dagster had recorded any run)
        runs_db = tmp_path / "dagster_home" / "history" / "runs.db"
        while not _run_started(runs_db):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        assert any(pid != proc.pid for pid in marked())  # the sync is running
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=45)
    finally:
        for pid in marked():
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "Interrupted: the sync was stopped" in err and "Traceback" not in err
    assert marked() == []
    with sqlite3.connect(tmp_path / "dagster_home" / "history" / "runs.db") as db:
        assert db.execute("SELECT status FROM runs").fetchall() == [("FAILURE",)]


def _run_started(runs_db: Path) -> bool:
    import sqlite3

    if not runs_db.exists():
        return False
    try:
        with sqlite3.connect(runs_db, timeout=1) as db:
            return ("STARTED",) in db.execute("SELECT status FROM runs").fetchall()
    except sqlite3.Error:  # created but not set up yet, or busy
        return False


def _check(env: dict[str, str]) -> tuple[int, list[str], float]:
    clean = {k: None for k in os.environ if k.startswith(("POSTHOG_", "LAKE_", "DUCKDB_"))}
    started = time.monotonic()
    result = CliRunner().invoke(cli.main, ["check"], env={**clean, **env})
    return result.exit_code, result.output.splitlines(), time.monotonic() - started


def _check_env(sim_env, key: str) -> dict[str, str]:
    return {"POSTHOG_HOST": sim_env.sim.api_url, "POSTHOG_PROJECT_ID": str(sim_env.sim.project_id),
            "POSTHOG_PERSONAL_API_KEY": key, "LAKE_ROOT": str(sim_env.tmp / "lake"),
            "DUCKDB_DATABASE": str(sim_env.tmp / "wh" / "warehouse.duckdb")}


def test_check_all_good_against_the_simulator_exits_0(sim_env):
    code, lines, seconds = _check(_check_env(sim_env, sim_env.sim.api_key))
    assert code == 0, lines
    status = {line.split()[1]: line.split()[0] for line in lines}
    for name in ("configuration", "host", "key", "group:read", "property_definition:read",
                 "export:read", "lake", "warehouse"):
        assert status[name] == "ok", lines
    assert sim_env.sim.api_key not in "\n".join(lines)
    assert seconds < 10
    # the check creates neither the lake nor the warehouse
    assert not (sim_env.tmp / "lake").exists() and not (sim_env.tmp / "wh").exists()


def test_check_names_the_asset_a_missing_scope_disables(sim_env):
    key = sim_env.sim.issue_key(["group:read", "export:read"])
    code, lines, _ = _check(_check_env(sim_env, key))
    assert code == 1
    [line] = [line for line in lines if line.startswith("FAIL")]
    assert "property_definition:read" in line and "posthog_group_property_definitions" in line
    assert any(line.startswith("ok") and "export:read" in line for line in lines)


def test_check_on_a_closed_port_fails_in_seconds_naming_posthog_host(tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, lines, seconds = _check({
        "POSTHOG_HOST": f"http://127.0.0.1:{port}", "POSTHOG_PROJECT_ID": "1",
        "POSTHOG_PERSONAL_API_KEY": "phx_check_key_1", "LAKE_ROOT": str(tmp_path / "lake"),
        "DUCKDB_DATABASE": str(tmp_path / "w.duckdb")})
    assert code == 1 and seconds < 10
    [host] = [line for line in lines if line.split()[1] == "host"]
    assert host.startswith("FAIL") and f"POSTHOG_HOST=http://127.0.0.1:{port}" in host


def test_check_reports_every_configuration_problem_at_once(tmp_path):
    code, lines, _ = _check({"POSTHOG_HOST": "us.posthog.com", "LAKE_ROOT": str(tmp_path / "l"),
                             "DUCKDB_DATABASE": str(tmp_path / "w.duckdb")})
    assert code == 1
    failed = "\n".join(line for line in lines if line.startswith("FAIL"))
    for name in ("POSTHOG_HOST", "POSTHOG_PROJECT_ID", "POSTHOG_PERSONAL_API_KEY"):
        assert name in failed
