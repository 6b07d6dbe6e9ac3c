"""The long reliability suite: `.venv/bin/python -m reliability` (about 30 minutes on 2 cores).

    .venv/bin/python -m reliability                      # everything, prints the table
    .venv/bin/python -m reliability --only crashes,concurrency
    .venv/bin/python -m reliability --random-runs 3      # a shorter random-fault pass

The table (scenario, trials, passed, rows compared, files compared, faults injected, time) is
printed and written to reliability/RESULTS.md. Exit status 1 if any trial failed.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

from tabulate import tabulate

from reliability import scenarios

HEADERS = ["scenario", "trials", "passed", "rows compared", "files compared", "faults injected",
           "time"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reliability")
    parser.add_argument("--only", default="",
                        help="comma-separated: matrix,persistent,random,crashes,concurrency,exit_codes,"
                        "file_counts")
    parser.add_argument("--random-runs", type=int, default=20)
    parser.add_argument("--crash-trials", type=int, default=12)
    parser.add_argument("--exit-runs", type=int, default=50)
    parser.add_argument("--small-syncs", type=int, default=500)
    parser.add_argument("--lake", choices=["local", "s3"], default="local",
                        help="where every scenario's lake lives: a local directory, or a bucket "
                        "on an S3-compatible server started for the suite (SeaweedFS)")
    parser.add_argument("--out", default=None,
                        help="default: reliability/RESULTS.md (RESULTS-s3.md with --lake s3)")
    args = parser.parse_args(argv)
    args.out = args.out or str(Path(__file__).with_name(
        "RESULTS.md" if args.lake == "local" else "RESULTS-s3.md"))
    if args.lake == "s3":
        import os

        from tests.s3_server import S3Server

        scenarios.S3 = S3Server().start()
        os.environ.update(scenarios.S3.env())
    warnings.filterwarnings("ignore")
    logging.getLogger("dagster").setLevel(logging.WARNING)
    only = {s for s in args.only.split(",") if s}
    plan = [
        ("matrix", lambda t: scenarios.fault_matrix(t)),
        ("persistent", lambda t: scenarios.persistent_faults(t)),
        ("random", lambda t: scenarios.random_faults(t, runs=args.random_runs)),
        ("crashes", lambda t: scenarios.crashes(t, trials=args.crash_trials)),
        ("concurrency", lambda t: scenarios.concurrency(t)),
        ("exit_codes", lambda t: scenarios.exit_codes(t, runs=args.exit_runs)),
        ("file_counts", lambda t: scenarios.file_counts(t, syncs=args.small_syncs)),
    ]
    results = []
    started = time.monotonic()
    for name, run in plan:
        if only and name not in only:
            continue
        print(f"== {name}", flush=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"reliability-{name}-"))
        try:
            results.append(run(tmp))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    table = tabulate([r.row() for r in results], headers=HEADERS, tablefmt="github",
                     disable_numparse=True)
    notes = [f"- {r.scenario}: {n}" for r in results for n in r.notes]
    total = time.monotonic() - started
    text = (f"# Reliability suite results ({args.lake} lake)\n\n`python -m reliability "
            f"--lake {args.lake}` on {time.strftime('%Y-%m-%d')}"
            f", {total / 60:.0f} min in all.\n\n{table}\n" + ("\nNotes:\n" + "\n".join(notes) + "\n"
                                                             if notes else ""))
    print("\n" + text)
    Path(args.out).write_text(text)
    if scenarios.S3 is not None:
        scenarios.S3.stop()
    return 0 if all(r.passed == r.trials for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
