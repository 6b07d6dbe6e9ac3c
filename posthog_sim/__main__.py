"""Run the PostHog simulator standalone: ``python -m posthog_sim --port 8010 --groups 10000``."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

from .config import ALL_FAULT_KINDS, DatasetSpec, FaultSpec, SimConfig
from .server import SIM_STATS_PATH, Simulator


def _parse_rate_limit(s: str) -> tuple[tuple[int, float], ...]:
    s = (s or "").strip()
    if s in ("", "0", "none", "off"):
        return ()
    out = []
    for part in s.split(","):
        count, _, window = part.strip().partition("/")
        out.append((int(count), float(window or 60)))
    return tuple(out)


def _parse_groups(s: str, types: int) -> tuple[int, ...]:
    if "," in s:
        vals = tuple(int(x) for x in s.split(",") if x.strip())
        if len(vals) != types:
            types = len(vals)
        return vals
    total = int(s)
    base, extra = divmod(total, types)
    return tuple(base + (1 if i < extra else 0) for i in range(types))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="posthog-sim", description="Local PostHog API simulator")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8010)
    p.add_argument("--storage-port", type=int, default=0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--types", type=int, default=3, help="number of group types (1..5)")
    p.add_argument("--groups", default="3000",
                   help="groups: a total split evenly over --types, or a comma list per type")
    p.add_argument("--exports", type=int, default=40)
    p.add_argument("--fault-rate", type=float, default=0.0)
    p.add_argument("--fault-kinds", default=",".join(ALL_FAULT_KINDS))
    p.add_argument("--rate-limit", default="480/60,4800/3600", help='e.g. "480/60,4800/3600"; "0" = unlimited')
    p.add_argument("--query-rate-limit", default="120/3600",
                   help='POST query/\'s own bucket (HogQLQueryThrottle), e.g. "120/3600"; "0" = unlimited')
    p.add_argument("--api-key", default="phx_sim_key_0123456789")
    p.add_argument("--scopes", default="*",
                   help="comma list of the key's scopes, e.g. group:read,export:read; '*' = all "
                        "(each endpoint enforces its scope as PostHog does)")
    p.add_argument("--hostile", action="store_true")
    p.add_argument("--content-mode", choices=("redirect", "direct"), default="redirect")
    p.add_argument("--ready-json", action="store_true",
                   help="print one machine-readable JSON line (urls, project id, key) once serving")
    p.add_argument("--request-log-limit", type=int, default=100_000,
                   help="cap on RequestRecords kept in memory, oldest dropped (/_sim/stats counts all)")
    p.add_argument("--prerender-contents", action="store_true",
                   help="render every export file before serving and keep them all in memory, as "
                        "object storage holds stored bytes (the benchmark uses it, so the tools "
                        "are not timed on the simulator's CSV/XLSX rendering)")
    p.add_argument("--precompute-property-values", action="store_true",
                   help="count property values before serving, as PostHog's ClickHouse answers "
                        "them, instead of scanning groups on the first request of each type "
                        "(the benchmark uses it)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    groups = _parse_groups(args.groups, args.types)
    kinds = tuple(k.strip() for k in args.fault_kinds.split(",") if k.strip())
    cfg = SimConfig(
        dataset=DatasetSpec(seed=args.seed, groups_per_type=groups, n_exports=args.exports, hostile=args.hostile),
        rate_limits=_parse_rate_limit(args.rate_limit),
        query_rate_limits=_parse_rate_limit(args.query_rate_limit),
        faults=FaultSpec(seed=args.seed, rate=args.fault_rate, kinds=kinds),
        api_key=args.api_key,
        scopes=tuple(sc.strip() for sc in args.scopes.split(",") if sc.strip()) or ("*",),
        content_mode=args.content_mode,
        host=args.host,
        port=args.port,
        storage_port=args.storage_port,
        request_log_limit=max(1, args.request_log_limit),
    )
    sim = Simulator(cfg)
    if args.prerender_contents:
        sim.dataset.prerender_contents()
    if args.precompute_property_values:
        sim.dataset.precompute_property_values()
    sim.start()
    stop = threading.Event()

    def _on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    if args.ready_json:
        print("POSTHOG_SIM_READY " + json.dumps({
            "api_url": sim.api_url, "storage_url": sim.storage_url, "project_id": sim.project_id,
            "api_key": sim.api_key, "pid": os.getpid(), "stats_url": sim.api_url + SIM_STATS_PATH}))
    print(f"PostHog simulator API:     {sim.api_url}")
    print(f"Storage (presigned) URL:   {sim.storage_url}")
    print(f"Project id:                {sim.project_id}")
    print(f"Personal API key:          {sim.api_key}")
    print(f"Group types x groups:      {list(groups)}; exports: {args.exports}")
    print()
    print(f"export POSTHOG_HOST={sim.api_url}")
    print(f"export POSTHOG_PROJECT_ID={sim.project_id}")
    print(f"export POSTHOG_PERSONAL_API_KEY={sim.api_key}")
    sys.stdout.flush()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        sim.stop()
        print("posthog-sim stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
