"""The reliability scenarios: faults, random faults at scale, crashes, concurrency.

Each scenario returns a `Result` row for the suite's table. Syncs run against the simulator over
real HTTP through real Dagster runs: in-process (`dg.materialize`) where the point is volume,
and as users run them (`dagster asset materialize ...` in a subprocess) where the point is a
process dying or two processes racing.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posthog_sim import ALL_FAULT_KINDS, FaultSpec
from reliability.verify import Counts, find_secret, verify_exact, verify_snapshots
from tests.helpers import SimEnv, failure_text, start_sim

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# `python -m reliability --lake s3`: an S3-compatible server (tests/s3_server.py) that every
# scenario's lake lives in, a fresh bucket each; None: local lakes
S3: Any = None


def lake_uri() -> str | None:
    """The lake root for a scenario: None (a local lake under its temp dir) or a new bucket."""
    if S3 is None:
        return None
    import uuid

    bucket = f"rel-{uuid.uuid4().hex[:16]}"
    S3.create_bucket(bucket)
    return f"s3://{bucket}/lake"


def table_files(env: SimEnv) -> dict[str, tuple[int, int]]:
    """Per Delta table of the env's lake (local or S3): (data files, _delta_log entries)."""
    import pyarrow.fs as pafs

    from resources.lake import Location

    location = Location.parse(str(env.lake_root))
    fs = location.filesystem
    base = location.fs_path(location.join("posthog"))
    out: dict[str, tuple[int, int]] = {}
    for info in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True)):
        if info.type != pafs.FileType.Directory or info.base_name == "export_files":
            continue
        files = fs.get_file_info(pafs.FileSelector(info.path, recursive=True))
        data = sum(1 for f in files if f.path.endswith(".parquet") and "/_delta_log/" not in f.path)
        log = sum(1 for f in files if "/_delta_log/" in f.path)
        out[info.base_name] = (data, log)
    return out

# endpoint name -> (path regex, server) for scripted faults
ENDPOINTS: dict[str, tuple[str | None, str]] = {
    "groups_types": (r"/groups_types/$", "api"),
    "groups": (r"/projects/\d+/groups/$", "api"),
    "property_definitions": (r"/property_definitions/$", "api"),
    "property_values": (r"/groups/property_values/$", "api"),
    "exports": (r"/exports/$", "api"),
    "export_retrieve": (r"/exports/\d+/$", "api"),
    "export_content": (r"/exports/\d+/content/$", "api"),
    "storage": (None, "storage"),
}
# A well-formed but wrong 200 body is undetectable on a binary download (S3 sends no checksum
# PostHog exposes), so `bad_json` is a JSON-endpoint fault only (as in the simulator's random mode).
UNDETECTABLE = {("bad_json", "export_content"), ("bad_json", "storage")}


@dataclass
class Result:
    scenario: str
    trials: int = 0
    passed: int = 0
    rows: int = 0
    files: int = 0
    faults: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def row(self) -> list[Any]:
        return [self.scenario, self.trials, self.passed, f"{self.rows:,}", f"{self.files:,}",
                f"{self.faults:,}", f"{self.seconds:,.0f}s"]


def _trial(result: Result, fn: Callable[[], tuple[Counts, int]], label: str) -> None:
    result.trials += 1
    try:
        counts, faults = fn()
    except Exception as exc:  # noqa: BLE001 - a failed trial is reported, the suite goes on
        result.notes.append(f"{label}: {type(exc).__name__}: {str(exc)[:400]}")
        print(f"  FAIL {label}: {exc}", flush=True)
        return
    result.passed += 1
    result.rows += counts.rows
    result.files += counts.files
    result.faults += faults
    print(f"  ok   {label}: {counts.rows:,} rows, {counts.files} files, {faults} faults",
          flush=True)


def _exact(env: SimEnv) -> Counts:
    return verify_exact(env.sim, env.lake_root, env.database)


# ------------------------------------------------------------------ fault matrix

def fault_matrix(tmp: Path) -> Result:
    """Every fault class on every endpoint (2 hits each): the sync retries and lands exactly."""
    result = Result("fault matrix (kind x endpoint)")
    start = time.monotonic()
    for kind in ALL_FAULT_KINDS:
        for name, (regex, server) in ENDPOINTS.items():
            if (kind, name) in UNDETECTABLE:
                continue

            def run(kind=kind, regex=regex, server=server) -> tuple[Counts, int]:
                with start_sim(Path(tempfile.mkdtemp(dir=tmp)), lake_uri=lake_uri(),
                               groups_per_type=(250, 120),
                               n_exports=14, faults=FaultSpec(rate=0.0, slow_seconds=1.6)) as env:
                    env.sim.inject(kind, regex, times=2, server=server)
                    res = env.sync(raise_on_error=False, request_timeout=1.0)
                    assert res.success, failure_text(res)[:600]
                    if kind == "slow":
                        time.sleep(1.8)  # a timed-out slow response is logged when it ends
                    faults = env.sim.stats()["faults_total"]
                    assert faults >= 1, "the fault was never served"
                    return _exact(env), faults
            _trial(result, run, f"{kind} on {name}")
    result.seconds = time.monotonic() - start
    return result


def persistent_faults(tmp: Path) -> Result:
    """A fault that outlasts the retries fails the run naming the endpoint and the cause, and
    the previous snapshot stays readable and exact."""
    result = Result("persistent fault -> clean failure")
    start = time.monotonic()
    assets = {
        "groups_types": ["posthog_group_types"], "groups": ["posthog_groups"],
        "property_definitions": ["posthog_group_property_definitions"],
        "property_values": ["posthog_group_property_values"], "exports": ["posthog_exports"],
        "export_content": ["posthog_export_contents"], "storage": ["posthog_export_contents"],
    }
    for kind in ("503", "429_html", "reset_during", "truncate", "slow"):
        for name, select in assets.items():
            regex, server = ENDPOINTS[name]

            def run(kind=kind, name=name, select=select, regex=regex, server=server):
                with start_sim(Path(tempfile.mkdtemp(dir=tmp)), lake_uri=lake_uri(),
                               groups_per_type=(250, 120),
                               n_exports=14, faults=FaultSpec(rate=0.0, slow_seconds=1.6)) as env:
                    assert env.sync().success
                    before = _exact(env)
                    if name in ("export_content", "storage"):
                        # something new to download: a fresh CSV export
                        env.sim.dataset.create_export(1, "text/csv", None, None, {
                            "source": {"kind": "HogQLQuery", "query": "select 1"}})
                        assert env.sync(select=["posthog_exports"]).success
                    env.sim.inject(kind, regex, times=10_000, server=server)
                    res = env.sync(select=select, raise_on_error=False, request_timeout=1.0,
                                   request_max_retries=2)
                    assert not res.success, "the run succeeded under a persistent fault"
                    text = failure_text(res)
                    where = "exports/" if name in ("export_content", "storage") else \
                        regex.strip("$").split("/")[-2] + "/"
                    assert where in text, f"failure does not name the endpoint: {text[:400]}"
                    assert "attempt" in text or "failed" in text, text[:400]
                    assert env.sim.api_key not in text
                    env.sim.clear_faults()
                    if name not in ("export_content", "storage"):
                        after = _exact(env)  # the previous snapshot is still there and exact
                    else:
                        after = before
                    return after, env.sim.stats()["faults_total"]
            _trial(result, run, f"{kind} forever on {name}")
    result.seconds = time.monotonic() - start
    return result


# ------------------------------------------------------------------ random faults at scale

def random_faults(tmp: Path, *, runs: int = 20, groups: tuple[int, ...] = (30000, 15000, 5000),
                  exports: int = 300, rate: float = 0.03) -> Result:
    result = Result(f"random faults, {sum(groups) // 1000}k groups + {exports} exports")
    start = time.monotonic()
    for seed in range(1, runs + 1):
        def run(seed=seed) -> tuple[Counts, int]:
            d = Path(tempfile.mkdtemp(dir=tmp))
            try:
                faults = FaultSpec(seed=seed, rate=rate, slow_seconds=0.3)
                with start_sim(d, lake_uri=lake_uri(), groups_per_type=groups, n_exports=exports,
                               seed=seed,
                               faults=faults) as env:
                    res = env.sync(raise_on_error=False)
                    assert res.success, failure_text(res)[:600]
                    counts = _exact(env)
                    return counts, env.sim.stats()["faults_total"]
            finally:
                shutil.rmtree(d, ignore_errors=True)
        _trial(result, run, f"seed {seed}")
    result.seconds = time.monotonic() - start
    return result


# ------------------------------------------------------------------ subprocess syncs

def cli_env(env: SimEnv, home: Path) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "POSTHOG_HOST": env.sim.api_url,
        "POSTHOG_PROJECT_ID": str(env.sim.project_id),
        "POSTHOG_PERSONAL_API_KEY": env.sim.api_key,
        "LAKE_ROOT": str(env.lake_root),
        "DUCKDB_DATABASE": str(env.database),
        "PIPELINE_STATE_DIR": str(env.state_dir),
        "DAGSTER_HOME": str(home),
        "POSTHOG_REQUESTS_PER_MINUTE": "0",
        "POSTHOG_REQUESTS_PER_HOUR": "0",
    }


def start_cli_sync(environ: dict[str, str], log: Path) -> subprocess.Popen:
    out = open(log, "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [str(BIN / "dagster"), "asset", "materialize", "-m", "pipelines.definitions",
         "--select", "*"],
        env=environ, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )


def run_cli_sync(environ: dict[str, str], log: Path, timeout: float = 600) -> int:
    proc = start_cli_sync(environ, log)
    return proc.wait(timeout=timeout)


def _wait_group_gone(pgid: int, timeout: float = 30.0) -> None:
    """SIGKILL is delivered at once but processes die (and drop their file locks) a moment
    later; the step processes forked by Dagster's forkserver are not the CLI's direct children,
    so waiting for the CLI alone is not enough."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    raise AssertionError(f"process group {pgid} still alive {timeout:.0f}s after SIGKILL")


def crashes(tmp: Path, *, trials: int = 12, seed: int = 1) -> Result:
    """SIGKILL the whole `dagster asset materialize` process group during paging, downloads and
    the warehouse switch; after each kill the warehouse opens and shows one complete snapshot
    per table, and the next sync completes exactly."""
    result = Result("SIGKILL mid-sync (paging/downloads/switch)")
    start = time.monotonic()
    rng = random.Random(seed)
    d = Path(tempfile.mkdtemp(dir=tmp))
    with start_sim(d, lake_uri=lake_uri(), groups_per_type=(20000, 8000, 2000), n_exports=60,
                   seed=seed) as env:
        environ = cli_env(env, d / "dagster_home")
        log = d / "sync.log"
        assert run_cli_sync(environ, log) == 0, log.read_text()[-3000:]
        verify_exact(env.sim, env.lake_root, env.database)
        moments = ["paging", "downloads", "switch"]
        for n in range(trials):
            moment = moments[n % 3]

            def run(moment=moment, n=n) -> tuple[Counts, int]:
                ds = env.sim.dataset
                old = sum(ds.group_count(t["group_type_index"]) for t in ds.group_types())
                ds.insert_group(0, f"crash-trial-{n}", {"trial": n})
                if moment == "downloads":
                    for _ in range(25):
                        ds.create_export(1, "text/csv", None, None, {
                            "source": {"kind": "HogQLQuery", "query": f"select {n}"}})
                env.sim.clear_log()
                # tables every sync commits to (export_contents has nothing to commit when no
                # export is new, and the sync would end before the moment)
                table = rng.choice(["groups", "exports"])
                before = table_files(env).get(table, (0, 0))[1]
                # groups go through REST (100 a page) or the query API (a type a page): a kill
                # while paging either
                source = "rest" if n % 2 else "query"
                pages = rng.randint(5, 250) if source == "rest" else rng.randint(1, 2)
                downloads = rng.randint(1, 20)

                def due() -> bool:
                    log_ = env.sim.request_log
                    if moment == "paging":
                        page = "/groups/" if source == "rest" else "/query/"
                        return sum(1 for r in log_ if r.path.endswith(page)
                                   and r.status == 200) >= pages
                    if moment == "downloads":
                        return sum(1 for r in log_ if r.server == "storage") >= downloads
                    return table_files(env).get(table, (0, 0))[1] != before  # a commit landed

                proc = start_cli_sync({**environ, "POSTHOG_GROUPS_SOURCE": source}, log)
                deadline = time.monotonic() + 300
                while not due():
                    if proc.poll() is not None:
                        raise AssertionError(f"the sync ended before the {moment} moment")
                    if time.monotonic() > deadline:
                        raise AssertionError("moment never came")
                    time.sleep(0.005)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                _wait_group_gone(proc.pid)
                verify_snapshots(env.lake_root, env.database,
                                 allowed_rows={"groups": {old, old + 1}})
                assert run_cli_sync(environ, log) == 0, log.read_text()[-3000:]
                counts = verify_exact(env.sim, env.lake_root, env.database)
                staging = [p for p in (env.state_dir / "tmp" / "staging").glob("*")]
                assert not staging, f"staging left after the next sync: {staging[:3]}"
                return counts, 1
            _trial(result, run, f"trial {n + 1}: kill during {moment}")
        leftovers = list((env.state_dir / "tmp" / "downloads").glob("*"))
        result.notes.append(f"{len(leftovers)} partial downloads left in the state directory "
                            "(never read; removed by the next sync of export contents)")
    result.seconds = time.monotonic() - start
    return result


def concurrency(tmp: Path) -> Result:
    """Two full CLI syncs at the same moment; and a sync while readers query in a loop."""
    result = Result("concurrent syncs + readers")
    start = time.monotonic()
    d = Path(tempfile.mkdtemp(dir=tmp))
    with start_sim(d, lake_uri=lake_uri(), groups_per_type=(20000, 6000), n_exports=40) as env:
        environ = cli_env(env, d / "dagster_home")

        def two_syncs() -> tuple[Counts, int]:
            # Dagster creates its SQLite storage on first use, and two processes doing that at
            # once race ("table alembic_version already exists"): initialise DAGSTER_HOME first
            subprocess.run([str(BIN / "dagster"), "instance", "info"], env=environ, cwd=ROOT,
                           capture_output=True, timeout=300, check=True)
            a = start_cli_sync(environ, d / "a.log")
            b = start_cli_sync(environ, d / "b.log")
            ra, rb = a.wait(timeout=900), b.wait(timeout=900)
            assert (ra, rb) == (0, 0), (d / "a.log").read_text()[-2000:] + \
                (d / "b.log").read_text()[-2000:]
            return verify_exact(env.sim, env.lake_root, env.database), 0
        _trial(result, two_syncs, "two full syncs started together")

        def readers() -> tuple[Counts, int]:
            from resources.lake import LakeResource

            lake = LakeResource(lake_root=str(env.lake_root),
                                duckdb_database=str(env.database)).get_lake()
            stop = threading.Event()
            errors: list[str] = []
            reads = [0, 0]

            def python_reader() -> None:
                while not stop.is_set():
                    try:
                        lake.query("SELECT count(*) FROM posthog.groups")
                        reads[0] += 1
                    except Exception as exc:  # noqa: BLE001
                        errors.append(f"Lake.query: {exc}")

            def cli_reader() -> None:
                while not stop.is_set():
                    p = subprocess.run(
                        [str(BIN / "posthog-pipeline"), "sql",
                         "SELECT count(*) AS n FROM posthog.groups"],
                        env=environ, cwd=ROOT, capture_output=True, text=True, timeout=120)
                    if p.returncode != 0:
                        errors.append(f"posthog-pipeline sql: {p.stderr[-300:]}")
                    reads[1] += 1

            threads = [threading.Thread(target=python_reader), threading.Thread(target=cli_reader)]
            for t in threads:
                t.start()
            try:
                env.sim.dataset.insert_group(0, "reader-trial", {"x": 1})
                assert run_cli_sync(environ, d / "c.log") == 0, (d / "c.log").read_text()[-2000:]
            finally:
                stop.set()
                for t in threads:
                    t.join()
            assert not errors, errors[:3]
            assert reads[0] > 0 and reads[1] > 0
            result.notes.append(f"readers: {reads[0]} Lake.query + {reads[1]} CLI sql, 0 errors")
            return verify_exact(env.sim, env.lake_root, env.database), 0
        _trial(result, readers, "sync while readers query in a loop")

        secret = find_secret(env.sim.api_key, paths=[d])
        result.trials += 1
        if secret:
            result.notes.append(f"API key found in {secret[:5]}")
        else:
            result.passed += 1
    result.seconds = time.monotonic() - start
    return result


# ------------------------------------------------------------------ exit codes, file counts

def exit_codes(tmp: Path, *, runs: int = 50) -> Result:
    """The contract command, `runs` times on a small dataset: every run must exit 0 (deltalake
    1.6 with pyarrow 25/26 can abort a process at exit, code 134, after some read paths)."""
    from collections import Counter

    result = Result(f"contract command x{runs}: exit codes")
    start = time.monotonic()
    d = Path(tempfile.mkdtemp(dir=tmp))
    codes: Counter[int] = Counter()
    with start_sim(d, lake_uri=lake_uri(), groups_per_type=(300, 80), n_exports=6) as env:
        environ = cli_env(env, d / "dagster_home")
        log = d / "sync.log"
        for n in range(runs):
            def run(n=n) -> tuple[Counts, int]:
                env.sim.dataset.insert_group(0, f"exit-{n}", {"n": n})
                code = run_cli_sync(environ, log)
                codes[code] += 1
                assert code == 0, f"exit {code}: " + log.read_text()[-1500:]
                return verify_exact(env.sim, env.lake_root, env.database), 0
            _trial(result, run, f"run {n + 1}")
    result.notes.append("exit codes: " + ", ".join(
        f"{c}: {k} runs" for c, k in sorted(codes.items())))
    result.seconds = time.monotonic() - start
    return result


def file_counts(tmp: Path, *, syncs: int = 500) -> Result:
    """`syncs` consecutive small full syncs (something new each time, retention 0 h): the data
    files per table, on disk and in the current version, stay bounded (compaction + vacuum)."""
    result = Result(f"{syncs} consecutive small syncs: files per table bounded")
    start = time.monotonic()
    d = Path(tempfile.mkdtemp(dir=tmp))
    with start_sim(d, lake_uri=lake_uri(), groups_per_type=(40, 10), n_exports=3) as env:
        peaks: dict[str, int] = {}
        for n in range(syncs):
            ds = env.sim.dataset
            ds.insert_group(0, f"g-{n}", {"n": n})
            if n % 2 == 0:
                ds.create_export(1, "text/csv", None, None, {
                    "source": {"kind": "HogQLQuery", "query": f"select {n}"}})

            def run(n=n) -> tuple[Counts, int]:
                sync = _small_sync(env)
                assert sync.success, failure_text(sync)[:1500]
                for name, (files, _log) in table_files(env).items():
                    peaks[name] = max(peaks.get(name, 0), files)
                counts = Counts()
                if n % 50 == 49 or n == syncs - 1:
                    counts = verify_exact(env.sim, env.lake_root, env.database)
                return counts, 0
            _trial(result, run, f"sync {n + 1}")
        counted = table_files(env)
        last = {name: data for name, (data, _log) in counted.items()}
        logs = {name: log for name, (_data, log) in counted.items()}
    result.notes.append("data files per table at the end (peak): " + ", ".join(
        f"{name} {last[name]} ({peaks.get(name, 0)})" for name in sorted(last)))
    result.notes.append("_delta_log entries per table at the end: " + ", ".join(
        f"{name} {n}" for name, n in sorted(logs.items())))
    result.seconds = time.monotonic() - start
    return result


def _small_sync(env: SimEnv):
    import dagster as dg

    from pipelines.definitions import defs
    from resources.lake import LakeResource

    resources = env.resources()
    resources["lake"] = LakeResource(lake_root=str(env.lake_root),
                                     duckdb_database=str(env.database),
                                     state_dir=str(env.state_dir), retention_hours=0)
    return dg.materialize(list(defs.assets or []), resources=resources, raise_on_error=False)
