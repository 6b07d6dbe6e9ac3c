"""Side-by-side benchmark: our Dagster sync vs dlt's rest_api vs a bare httpx floor, on the same
simulator dataset, no internet. One command (the `bench` extra must be installed):

    .venv/bin/python -m benchmarks.run --sizes 50000,200000,1000000 --exports 1000
    .venv/bin/python -m benchmarks.run --quick          # 20k groups, 100 exports, ~3 minutes

Each run gets a fresh simulator in its own process (`posthog-sim --ready-json`), so the
simulator's CPU is not counted in the tool's; on a small machine they still compete for cores.
The simulator renders every export file before the tool starts (`--prerender-contents`), as
object storage serves stored bytes: no tool is timed on the simulator's CSV/XLSX rendering. It
also counts property values up front (`--precompute-property-values`), as PostHog's ClickHouse
answers them; only our sync asks for them.
For every run it records wall time, CPU time (user+sys of the whole process tree, from
getrusage(RUSAGE_CHILDREN) after the tool exits, or the sum polled per process if larger:
forkserver children are never reaped by the tool), peak RSS of the process tree (psutil, summed
over the tree every 0.1 s) and the largest single process, and the requests the simulator saw
(GET /_sim/stats). Tools alternate order between repeats. Also measured: Dagster's fixed cost
(a sync of an empty project), a second sync on unchanged data (content bytes downloaded), and a
rate-limited scenario (scaled windows, our budget set to the same windows). Prints Markdown;
raw results go to benchmarks/results/<timestamp>.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
BIN = Path(PY).parent
API_KEY = "phx_sim_key_0123456789"
TOOLS = ("ours", "dlt", "floor")
# Also available with --tools: `ours_s3` (our sync with LAKE_ROOT on a local S3-compatible server,
# SeaweedFS from tests/s3_server.py) and `ours_before` (our sync from another checkout, given by
# --before: a before/after comparison in one run, e.g. `git worktree add /tmp/before <commit>`).
BEFORE: Path | None = None
S3 = None  # the S3 server, started once when ours_s3 runs


# ------------------------------------------------------------------ simulator
class Sim:
    def __init__(self, groups: int, types: int, exports: int, *, rate_limit: str = "0", seed: int = 7,
                 query_rate_limit: str = "0"):
        self.args = dict(groups=groups, types=types, exports=exports, rate_limit=rate_limit, seed=seed,
                         query_rate_limit=query_rate_limit)
        cmd = [str(BIN / "posthog-sim"), "--port", "0", "--ready-json", "--groups", str(groups),
               "--types", str(types), "--exports", str(exports), "--rate-limit", rate_limit,
               "--query-rate-limit", query_rate_limit,
               "--seed", str(seed), "--request-log-limit", "1000", "--prerender-contents",
               "--precompute-property-values"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for line in self.proc.stdout:
            if line.startswith("POSTHOG_SIM_READY "):
                self.info = json.loads(line.split(" ", 1)[1])
                break
        else:
            raise RuntimeError("simulator did not start")
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()
        self.api_url = self.info["api_url"]

    def stats(self) -> dict:
        return httpx.get(self.info["stats_url"], timeout=30).json()

    def usage(self) -> dict:
        p = psutil.Process(self.proc.pid)
        t = p.cpu_times()
        return {"cpu_s": t.user + t.system, "rss_mb": p.memory_info().rss / 2**20}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def stats_delta(after: dict, before: dict) -> dict:
    def sub(a: dict, b: dict) -> dict:
        return {k: v - b.get(k, 0) for k, v in a.items() if v - b.get(k, 0)}
    out = {
        "requests": sub(after["requests"], before["requests"]),
        "by_server": sub(after["requests_by_server"], before["requests_by_server"]),
        "bytes_by_server": sub(after["bytes_by_server"], before["bytes_by_server"]),
        "throttled_429": after["throttled_429"] - before["throttled_429"],
        "by_status": sub(after["by_status"], before["by_status"]),
        "first_ts": after["first_ts"], "last_ts": after["last_ts"],
    }
    out["api_requests"] = out["by_server"].get("api", 0)
    out["storage_requests"] = out["by_server"].get("storage", 0)
    return out


# ------------------------------------------------------------------ measuring a process tree
def measure(cmd: list[str], env: dict, cwd: Path, log_path: Path, timeout: float = 7200) -> dict:
    """Run `cmd`; wall, CPU of the whole tree, peak summed RSS and the largest single process,
    and the largest anonymous RSS of any process (RSS less the pages mapped from files: what the
    process itself allocated; the rest is library code and data the kernel can drop and read
    back, such as delta-rs's or DuckDB's shared library)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    peak_tree = 0
    per_pid: dict[int, dict] = {}
    done = threading.Event()

    def poll() -> None:
        nonlocal peak_tree
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                procs = [root] + root.children(recursive=True)
            except psutil.NoSuchProcess:
                break
            total = 0
            for p in procs:
                try:
                    info = p.memory_info()
                    rss = info.rss
                    times = p.cpu_times()
                    if p.pid not in per_pid:
                        per_pid[p.pid] = {"cmd": _label(p), "max_rss": 0, "max_anon": 0, "cpu": 0.0}
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                # polled too: processes forked by a forkserver are never reaped by our child,
                # so getrusage(RUSAGE_CHILDREN) alone would miss their CPU
                per_pid[p.pid]["cpu"] = times.user + times.system
                total += rss
                per_pid[p.pid]["max_rss"] = max(per_pid[p.pid]["max_rss"], rss)
                # Linux: `shared` is RssFile + RssShmem, so this is RssAnon (/proc/PID/status)
                per_pid[p.pid]["max_anon"] = max(per_pid[p.pid]["max_anon"], rss - info.shared)
            peak_tree = max(peak_tree, total)
            done.wait(0.1)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
    wall = time.perf_counter() - t0
    done.set()
    th.join()
    log.close()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    reaped = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    polled = sum(d["cpu"] for d in per_pid.values())
    cpu = max(reaped, polled)
    procs = sorted(per_pid.values(), key=lambda d: -d["max_rss"])
    return {"rc": rc, "wall_s": wall, "cpu_s": cpu, "peak_tree_rss_mb": peak_tree / 2**20,
            "max_process_rss_mb": procs[0]["max_rss"] / 2**20 if procs else 0.0,
            "max_process_anon_mb": max((d["max_anon"] for d in procs), default=0) / 2**20,
            "ru_maxrss_mb": after.ru_maxrss / 1024,
            "processes": [{"cmd": d["cmd"], "max_rss_mb": round(d["max_rss"] / 2**20, 1)} for d in procs[:12]],
            "n_processes": len(per_pid), "output_tail": log_path.read_text()[-1500:],
            # other work on the machine skews every figure: the 1-minute load average around the run
            "loadavg_before": load_before, "loadavg_after": os.getloadavg()[0]}


def _label(p: psutil.Process) -> str:
    try:
        cmd = p.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "?"
    text = " ".join(cmd)
    if "execute_step" in text or "multiprocess" in text:
        return "dagster step worker"
    return " ".join(Path(c).name if i == 0 or c.startswith("/") else c for i, c in enumerate(cmd[:5]))[:90]


# ------------------------------------------------------------------ the three tools
def tool_cmd(tool: str, sim: Sim, work: Path, *, windows: str | None = None,
             env_extra: dict | None = None) -> tuple[list[str], dict]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    for name in ("POSTHOG_GROUPS_SOURCE", "POSTHOG_QUERY_REQUESTS_PER_HOUR"):
        env.pop(name, None)
    if tool in ("ours", "ours_s3", "ours_before"):
        (work / "dagster_home").mkdir(exist_ok=True)
        env.update({
            "POSTHOG_HOST": sim.api_url, "POSTHOG_PROJECT_ID": "1", "POSTHOG_PERSONAL_API_KEY": API_KEY,
            "LAKE_ROOT": str(work / "lake"), "DUCKDB_DATABASE": str(work / "warehouse.duckdb"),
            "DAGSTER_HOME": str(work / "dagster_home"),
            "POSTHOG_REQUESTS_PER_MINUTE": "0", "POSTHOG_REQUESTS_PER_HOUR": "0",
        })
        if windows:
            env["POSTHOG_RATE_LIMIT_WINDOWS"] = windows
        if tool == "ours_s3":
            import uuid

            bucket = f"bench-{uuid.uuid4().hex[:12]}"
            S3.create_bucket(bucket)
            env.update({"LAKE_ROOT": f"s3://{bucket}/lake", "AWS_ENDPOINT_URL": S3.endpoint_url,
                        "AWS_REGION": S3.region, "AWS_ACCESS_KEY_ID": S3.access_key,
                        "AWS_SECRET_ACCESS_KEY": S3.secret_key, "AWS_ALLOW_HTTP": "true"})
        if tool == "ours_before":
            env["PYTHONPATH"] = str(BEFORE)  # that checkout's modules, this environment's packages
        env.update(env_extra or {})
        return [PY, "-m", "dagster", "asset", "materialize", "-m", "pipelines.definitions",
                "--select", "*"], env
    if tool == "dlt":
        return [PY, "-m", "benchmarks.dlt_sync", "--host", sim.api_url, "--api-key", API_KEY,
                "--out", str(work)], env
    if tool == "floor":
        return [PY, "-m", "benchmarks.floor", "--host", sim.api_url, "--api-key", API_KEY], env
    raise ValueError(tool)


def minimum_requests(groups: int, types: int, exports: int, seed: int = 7) -> dict:
    """Requests the data needs. `api_minimum`, what the peer's tables need: the group-types list,
    group pages, export list pages, one content request per export with content (plus its
    storage GET, not counted here). `ours_minimum` adds what our other tables need: one property
    definitions page per type, one property-values request per key (the first 25 keys of each
    type, as the asset picks them) and one explicit-members request."""
    from posthog_sim import Dataset, DatasetSpec
    from posthog_sim.__main__ import _parse_groups
    per_type = _parse_groups(str(groups), types)
    ds = Dataset(DatasetSpec(seed=seed, groups_per_type=per_type, n_exports=exports))
    listed = ds.exports(1)
    with_content = sum(1 for e in listed if e.get("has_content"))
    pages = sum(max(1, math.ceil(n / 100)) for n in per_type)
    export_pages = max(1, math.ceil(len(listed) / 100))
    api_minimum = 1 + pages + export_pages + with_content
    n_types = len(per_type)
    value_keys = sum(min(25, len(ds.property_definitions(i))) for i in range(n_types))
    return {"group_pages": pages, "export_list_pages": export_pages, "contents": with_content,
            "api_minimum": api_minimum, "property_definition_pages": n_types,
            "property_value_keys": value_keys,
            "ours_minimum": api_minimum + n_types + value_keys + 1}


def run_one(tool: str, groups: int, types: int, exports: int, base: Path, *, tag: str,
            rate_limit: str = "0", windows: str | None = None, second_sync: bool = False,
            query_rate_limit: str = "0", env_extra: dict | None = None) -> dict:
    work = base / f"{tag}-{tool}"
    work.mkdir(parents=True, exist_ok=True)
    sim = Sim(groups, types, exports, rate_limit=rate_limit, query_rate_limit=query_rate_limit)
    try:
        s0 = sim.stats()
        u0 = sim.usage()
        cmd, env = tool_cmd(tool, sim, work, windows=windows, env_extra=env_extra)
        cwd = BEFORE if tool == "ours_before" else ROOT
        res = measure(cmd, env, cwd, work / "tool.log")
        s1 = sim.stats()
        u1 = sim.usage()
        res["sim"] = stats_delta(s1, s0)
        res["sim_cpu_s"] = u1["cpu_s"] - u0["cpu_s"]
        res["sim_rss_mb"] = u1["rss_mb"]
        if second_sync:
            res2 = measure(cmd, env, cwd, work / "tool-second-sync.log")
            s2 = sim.stats()
            res2["sim"] = stats_delta(s2, s1)
            res["second_sync"] = res2
    finally:
        sim.stop()
    res.update({"tool": tool, "groups": groups, "types": types, "exports": exports, "tag": tag})
    if res["rc"] != 0:
        print(f"!! {tool} at {groups} exited {res['rc']}:\n{res['output_tail']}", file=sys.stderr)
    print(f"   {tag:>10} {tool:>5}: {res['wall_s']:7.1f}s wall, {res['cpu_s']:7.1f}s cpu, "
          f"tree {res['peak_tree_rss_mb']:6.0f} MB, max proc {res['max_process_rss_mb']:5.0f} MB "
          f"({res['max_process_anon_mb']:.0f} MB anonymous), "
          f"api {res['sim']['api_requests']}, storage {res['sim']['storage_requests']}, "
          f"429 {res['sim']['throttled_429']}, sim cpu {res['sim_cpu_s']:.0f}s", flush=True)
    return res


def allowed_in(duration: float, windows: list[tuple[int, float]]) -> int:
    """Most requests any client can make in `duration` seconds under sliding windows (greedy)."""
    times: list[float] = []
    while True:
        t = times[-1] if times else 0.0
        for count, w in windows:
            if len(times) >= count:
                t = max(t, times[-count] + w)
        if t > duration + 1e-9:
            return len(times)
        times.append(t)


def min_span(n: int, windows: list[tuple[int, float]]) -> float:
    """Least time from a client's first request to its n-th under sliding windows (greedy)."""
    times: list[float] = []
    while len(times) < n:
        t = times[-1] if times else 0.0
        for count, w in windows:
            if len(times) >= count:
                t = max(t, times[-count] + w)
        times.append(t)
    return times[-1] if times else 0.0


# PostHog's real limits (posthog/rate_limit.py): every endpoint a sync lists, and the query API's
GENERAL_WINDOWS = [(480, 60.0), (4800, 3600.0)]
QUERY_WINDOWS = [(120, 3600.0)]


def real_limits(a, base: Path, out: dict) -> None:
    """Full syncs against PostHog's real limits, unscaled, enforced by the simulator, with our
    budget at its defaults: groups through REST, the query API, and auto. REST at 1M would take
    hours, so it runs at `--real-rest-groups` and its 1M time is projected from its requests."""
    runs = out.setdefault("real_limits", [])
    for source in [s for s in a.real_sources.split(",") if s]:
        groups = a.real_rest_groups if source == "rest" else a.real_groups
        print(f"== real limits, groups_source={source}: {groups:,} groups over {a.types} types, "
              f"{a.exports} exports", flush=True)
        r = run_one("ours", groups, a.types, a.exports, base, tag=f"real-{source}",
                    rate_limit="480/60,4800/3600", query_rate_limit="120/3600",
                    env_extra={"POSTHOG_GROUPS_SOURCE": source,
                               "POSTHOG_REQUESTS_PER_MINUTE": "480",
                               "POSTHOG_REQUESTS_PER_HOUR": "4800",
                               "POSTHOG_QUERY_REQUESTS_PER_HOUR": "120"})
        r["real"] = real_figures(r, groups, a.types, source)
        r["real_source"] = source
        runs.append(r)
        f = r["real"]
        print(f"   {source}: {r['wall_s']:.1f}s wall; general {f['general_requests']:,} + query "
              f"{f['query_requests']:,} requests; 429s {r['sim']['throttled_429']}; least "
              f"{f['least_s']:.0f}s" + (f"; projected at 1,000,000 groups: {f['projection']}"
                                        if f.get("projection") else ""), flush=True)


def mismatch(a, base: Path, out: dict) -> None:
    """The server allows less than our budget is configured for (another tool shares the key, or
    PostHog lowered a limit): the simulator enforces `--mismatch-windows` while our budget keeps
    PostHog's defaults (480/min, 4,800/h); groups through REST, so every request is in the
    general bucket. The client must learn the real windows from the 429s."""
    windows = parse_windows(a.mismatch_windows)
    print(f"== mismatch: server {a.mismatch_windows}, ours configured 480/60,4800/3600; "
          f"{a.rl_groups:,} groups, {a.rl_exports} exports", flush=True)
    r = run_one("ours", a.rl_groups, a.types, a.rl_exports, base, tag="mismatch",
                rate_limit=a.mismatch_windows,
                env_extra={"POSTHOG_GROUPS_SOURCE": "rest", "POSTHOG_REQUESTS_PER_MINUTE": "480",
                           "POSTHOG_REQUESTS_PER_HOUR": "4800"})
    span = r["sim"]["last_ts"].get("api", 0) - r["sim"]["first_ts"].get("api", 0)
    total = r["sim"]["api_requests"]
    n429 = r["sim"]["throttled_429"]
    need = min_span(total - n429, windows)
    r["mismatch"] = {"span_s": span, "api_requests": total, "throttled_429": n429,
                     "pct_429": 100.0 * n429 / total if total else 0.0, "min_span_s": need,
                     "time_efficiency_pct": 100.0 * need / span if span else 0.0}
    out["mismatch"] = r
    m = r["mismatch"]
    print(f"   mismatch: {total} API requests, {n429} answered 429 ({m['pct_429']:.1f}%), "
          f"{span:.1f}s from first to last against a least possible {need:.1f}s for "
          f"{total - n429} allowed -> {m['time_efficiency_pct']:.1f}% time efficiency; "
          f"wall {r['wall_s']:.1f}s", flush=True)


def real_figures(r: dict, groups: int, types: int, source: str) -> dict:
    by_endpoint = r["sim"]["requests"]
    query = by_endpoint.get("query", 0)
    general = r["sim"]["api_requests"] - query
    least = max(min_span(general, GENERAL_WINDOWS), min_span(query, QUERY_WINDOWS))
    out = {"general_requests": general, "query_requests": query,
           "group_pages": by_endpoint.get("groups", 0), "least_s": least}
    if source == "rest" and groups < 1_000_000:
        per_type = [groups // types + (1 if i < groups % types else 0) for i in range(types)]
        pages_1m = sum(math.ceil((1_000_000 // types + (1 if i < 1_000_000 % types else 0)) / 100)
                       for i in range(types))
        pages_now = sum(max(1, math.ceil(n / 100)) for n in per_type)
        general_1m = general + pages_1m - pages_now
        need = min_span(general_1m, GENERAL_WINDOWS)
        out["projection"] = (f"{general:,} - {pages_now:,} group pages + {pages_1m:,} = "
                             f"{general_1m:,} general requests; 480/min and 4,800/h allow that "
                             f"many in no less than {need:,.0f} s = {need / 3600:.2f} h")
        out["projected_general_requests_1m"] = general_1m
        out["projected_least_s_1m"] = need
    return out


def parse_windows(text: str) -> list[tuple[int, float]]:
    return [(int(c), float(w)) for c, w in (p.split("/") for p in text.split(","))]


# ------------------------------------------------------------------ report
def fmt(x: float, nd: int = 1) -> str:
    return f"{x:,.{nd}f}"


def table(results: list[dict]) -> str:
    lines = ["| groups | tool | wall s | CPU s | peak RSS tree MB | largest process MB | largest anonymous MB | API requests | storage GETs | 429s | simulator CPU s |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['groups']:,} | {r['tool']} | {fmt(r['wall_s'])} | {fmt(r['cpu_s'])} | "
                     f"{fmt(r['peak_tree_rss_mb'], 0)} | {fmt(r['max_process_rss_mb'], 0)} | "
                     f"{fmt(r.get('max_process_anon_mb', 0), 0)} | {r['sim']['api_requests']:,} | {r['sim']['storage_requests']:,} | "
                     f"{r['sim']['throttled_429']} | {fmt(r['sim_cpu_s'], 0)} |")
    return "\n".join(lines)


def ratios(results: list[dict]) -> str:
    by: dict[int, dict[str, list[dict]]] = {}
    for r in results:
        by.setdefault(r["groups"], {}).setdefault(r["tool"], []).append(r)
    lines = ["| groups | dlt wall / ours | ours wall / floor | ours CPU / dlt CPU | ours tree RSS / dlt | ours largest proc / dlt |",
             "|---:|---:|---:|---:|---:|---:|"]
    med = lambda rs, k: sorted(x[k] for x in rs)[len(rs) // 2]  # noqa: E731
    for g, tools in sorted(by.items()):
        if not {"ours", "dlt", "floor"} <= tools.keys():
            continue
        o, d, f = tools["ours"], tools["dlt"], tools["floor"]
        lines.append(f"| {g:,} | {med(d, 'wall_s') / med(o, 'wall_s'):.2f}x | "
                     f"{med(o, 'wall_s') / med(f, 'wall_s'):.2f}x | {med(o, 'cpu_s') / med(d, 'cpu_s'):.2f}x | "
                     f"{med(o, 'peak_tree_rss_mb') / med(d, 'peak_tree_rss_mb'):.2f}x | "
                     f"{med(o, 'max_process_rss_mb') / med(d, 'max_process_rss_mb'):.2f}x |")
    compared = [(g, t) for g, t in sorted(by.items()) if "ours" in t
                and ({"ours_before", "ours_s3"} & t.keys())]
    if compared:
        lines += ["", "| groups | compared with ours (local lake) | wall | CPU | peak RSS tree | "
                  "largest process | largest anonymous |", "|---:|---|---:|---:|---:|---:|---:|"]
        for g, tools in compared:
            o = tools["ours"]
            for other in ("ours_before", "ours_s3"):
                if other in tools:
                    x = tools[other]
                    lines.append(
                        f"| {g:,} | {other} / ours | {med(x, 'wall_s') / med(o, 'wall_s'):.2f}x | "
                        f"{med(x, 'cpu_s') / med(o, 'cpu_s'):.2f}x | "
                        f"{med(x, 'peak_tree_rss_mb') / med(o, 'peak_tree_rss_mb'):.2f}x | "
                        f"{med(x, 'max_process_rss_mb') / med(o, 'max_process_rss_mb'):.2f}x | "
                        f"{med(x, 'max_process_anon_mb') / med(o, 'max_process_anon_mb'):.2f}x |")
    return "\n".join(lines)


def machine() -> dict:
    return {"cpus": os.cpu_count(), "mem_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform(),
            "cpu_model": next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                               if l.startswith("model name")), platform.processor())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="50000,200000,1000000", help="total groups, split over --types")
    p.add_argument("--types", type=int, default=3)
    p.add_argument("--exports", type=int, default=1000)
    p.add_argument("--tools", default=",".join(TOOLS))
    p.add_argument("--repeat", type=int, default=1, help="runs per tool and size (order alternates)")
    p.add_argument("--rate-limit", default="60/10,240/60", help="scaled windows for the rate-limited run")
    p.add_argument("--rl-groups", type=int, default=30000)
    p.add_argument("--rl-exports", type=int, default=100)
    p.add_argument("--skip", default="", help="comma list of: startup,second,ratelimit,sizes")
    p.add_argument("--quick", action="store_true", help="20k groups, 100 exports, short rate-limited run")
    p.add_argument("--real-limits", action="store_true",
                   help="only the real-limits scenario: PostHog's limits unscaled (480/min, 4,800/h, "
                        "query 120/h), groups through rest, query and auto")
    p.add_argument("--real-sources", default="query,auto,rest")
    p.add_argument("--real-groups", type=int, default=1_000_000)
    p.add_argument("--real-rest-groups", type=int, default=100_000,
                   help="REST at real limits takes hours at 1M: run it at this size and project")
    p.add_argument("--groups-source", default="",
                   help="POSTHOG_GROUPS_SOURCE for our sync in the size runs (default: auto)")
    p.add_argument("--mismatch", action="store_true",
                   help="only the mismatch scenario: the server enforces --mismatch-windows while "
                        "our budget is configured for PostHog's defaults")
    p.add_argument("--mismatch-windows", default="30/10,120/60")
    p.add_argument("--workdir", default=None, help="scratch dir (default: a temp dir, removed)")
    p.add_argument("--before", default=None,
                   help="checkout whose sync runs as the `ours_before` tool (before/after)")
    a = p.parse_args(argv)
    global BEFORE, S3
    BEFORE = Path(a.before).absolute() if a.before else None
    if a.quick:
        a.sizes, a.exports, a.rl_groups, a.rl_exports = "20000", 100, 10000, 40
    sizes = [int(s) for s in a.sizes.split(",") if s.strip()]
    tools = [t for t in a.tools.split(",") if t]
    if "ours_before" in tools and BEFORE is None:
        p.error("--tools ours_before needs --before <checkout>")
    if "ours_s3" in tools:
        sys.path.insert(0, str(ROOT))
        from tests.s3_server import S3Server

        S3 = S3Server().start()
    skip = set(a.skip.split(","))
    base = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="phbench-"))
    out: dict = {"machine": machine(), "args": vars(a), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                 "runs": []}
    results_dir = ROOT / "benchmarks" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"

    def save() -> None:
        path.write_text(json.dumps(out, indent=1, default=str))

    print(f"machine: {out['machine']}\nscratch: {base}\nresults: {path}", flush=True)
    if a.real_limits or a.mismatch:
        skip |= {"startup", "sizes", "ratelimit"}
    try:
        if a.real_limits:
            real_limits(a, base, out)
            save()
        if a.mismatch:
            mismatch(a, base, out)
            save()
        if "startup" not in skip and "ours" in tools:
            print("== Dagster fixed cost: a full sync of an empty project", flush=True)
            out["startup"] = run_one("ours", 0, a.types, 0, base, tag="empty")
            save()
        if "sizes" not in skip:
            for size in sizes:
                print(f"== {size:,} groups over {a.types} types, {a.exports} exports", flush=True)
                out.setdefault("minimum", {})[size] = minimum_requests(size, a.types, a.exports)
                for rep in range(a.repeat):
                    order = tools if rep % 2 == 0 else list(reversed(tools))
                    for tool in order:
                        second = tool == "ours" and rep == 0 and size == sizes[0] and "second" not in skip
                        extra = {"POSTHOG_GROUPS_SOURCE": a.groups_source} if a.groups_source else None
                        out["runs"].append(run_one(tool, size, a.types, a.exports, base,
                                                   tag=f"{size}-r{rep}", second_sync=second,
                                                   env_extra=extra))
                        save()
        if "ratelimit" not in skip and "ours" in tools:
            print(f"== rate-limited: {a.rl_groups:,} groups, {a.rl_exports} exports, windows {a.rate_limit}",
                  flush=True)
            # groups on REST: the scenario measures how closely the budget paces the general
            # bucket, and with the query API the groups would take a handful of requests
            r = run_one("ours", a.rl_groups, a.types, a.rl_exports, base, tag="ratelimited",
                        rate_limit=a.rate_limit, windows=a.rate_limit,
                        env_extra={"POSTHOG_GROUPS_SOURCE": "rest"})
            windows = parse_windows(a.rate_limit)
            span = r["sim"]["last_ts"].get("api", 0) - r["sim"]["first_ts"].get("api", 0)
            allowed = allowed_in(span, windows)
            need = min_span(r["sim"]["api_requests"], windows)
            r["rate"] = {"span_s": span, "api_requests": r["sim"]["api_requests"], "allowed_in_span": allowed,
                         "achieved_pct": 100.0 * r["sim"]["api_requests"] / allowed if allowed else 0.0,
                         # the windows' own minimum time for this many requests, against ours
                         "min_span_s": need, "time_efficiency_pct": 100.0 * need / span if span else 0.0,
                         "minimum": minimum_requests(a.rl_groups, a.types, a.rl_exports)}
            out["ratelimited"] = r
            save()
    finally:
        save()
        if S3 is not None:
            S3.stop()
        if not a.workdir:
            shutil.rmtree(base, ignore_errors=True)
    print()
    print(f"Machine: {out['machine']['cpus']} cores ({out['machine']['cpu_model']}), "
          f"{out['machine']['mem_gib']} GiB, Python {out['machine']['python']}\n")
    if out["runs"]:
        print(table(out["runs"]) + "\n")
        print(ratios(out["runs"]) + "\n")
        for size, m in out.get("minimum", {}).items():
            print(f"minimum at {size:,}: {m}")
    if "startup" in out:
        print(f"\nDagster fixed cost (empty project): {out['startup']['wall_s']:.1f}s wall, "
              f"{out['startup']['cpu_s']:.1f}s CPU, {out['startup']['sim']['api_requests']} API requests")
    for r in out["runs"]:
        if "second_sync" in r:
            s = r["second_sync"]
            print(f"second sync at {r['groups']:,}: {s['wall_s']:.1f}s, content requests "
                  f"{s['sim']['requests'].get('exports/:id/content', 0)}, storage bytes "
                  f"{s['sim']['bytes_by_server'].get('storage', 0)}")
    if "ratelimited" in out:
        rr = out["ratelimited"]["rate"]
        print(f"rate-limited: {rr['api_requests']} API requests in {rr['span_s']:.1f}s; allowed "
              f"{rr['allowed_in_span']} -> {rr['achieved_pct']:.1f}% of the allowed rate; the windows "
              f"need {rr['min_span_s']:.1f}s for {rr['api_requests']} requests -> "
              f"{rr['time_efficiency_pct']:.1f}% time efficiency; "
              f"429s {out['ratelimited']['sim']['throttled_429']}; minimum {rr['minimum']['ours_minimum']} "
              f"for our tables ({rr['minimum']['api_minimum']} for the peer's); "
              f"wall {out['ratelimited']['wall_s']:.1f}s")
    if out.get("real_limits"):
        print("\n| groups_source | groups | wall s | general requests | query requests | 429s | "
              "least possible s | largest process MB | tree MB |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in out["real_limits"]:
            f = r["real"]
            print(f"| {r['real_source']} | {r['groups']:,} | {r['wall_s']:.1f} | {f['general_requests']:,} | "
                  f"{f['query_requests']:,} | {r['sim']['throttled_429']} | {f['least_s']:.0f} | "
                  f"{r['max_process_rss_mb']:.0f} | {r['peak_tree_rss_mb']:.0f} |")
        for r in out["real_limits"]:
            if r["real"].get("projection"):
                print(f"REST projected to 1,000,000 groups: {r['real']['projection']}")
    print(f"\nraw: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
