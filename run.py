#!/usr/bin/env python3
"""Bootstrap and run: `python3 run.py demo` (the quick start), `python3 run.py test`, or
`python3 run.py ui [--port 3000] [--with-simulator]` (the Dagster UI, showing the demo's data).

Creates `.venv` with everything the project needs on first use (and again whenever
pyproject.toml changes), then runs the command inside it. Needs only Python >= 3.11.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".installed"
# the demo's lake and warehouse (pipelines/cli.py's DEMO_LAKE_ROOT / DEMO_DUCKDB, from ROOT,
# where `run.py demo` runs it): `run.py ui` shows them on a try-out
DEMO_LAKE_ROOT = ROOT / "data" / "demo" / "lake"
DEMO_DUCKDB = ROOT / "data" / "demo" / "warehouse.duckdb"
# the demo's dataset, served by `run.py ui --with-simulator` (posthog-pipeline demo's defaults)
SIM_DATASET = ["--groups", "3000,1000,200", "--exports", "40", "--seed", "7"]
# after a signal, how long `dagster dev` gets to stop its webserver, daemon and code servers
# before the whole group is killed (it waits up to 60 s per service itself)
UI_STOP_SECONDS = 20.0

COMMANDS = {
    "demo": [str(BIN / "posthog-pipeline"), "demo"],
    "test": [str(PY), "-m", "pytest", "-q"],
    "ui": [str(BIN / "dagster"), "dev", "-w", "workspace.yaml"],
}


def ensure_env(extras: str) -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"Python >= 3.11 is required; this is {sys.version.split()[0]}.")
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extras.encode()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == want and PY.exists():
        return
    if not PY.exists():
        print(f"Creating {VENV} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("Installing the project and its pinned dependencies (first run only) ...", flush=True)
    subprocess.run([str(PY), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([str(PY), "-m", "pip", "install", "-q", "-e", f".[{extras}]"], check=True,
                   cwd=ROOT)
    STAMP.write_text(want)


def ui_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 run.py ui",
        description="Start `dagster dev -w workspace.yaml`; other arguments go to dagster dev.",
    )
    parser.add_argument("-p", "--port", type=int, default=3000,
                        help="the webserver's port on 127.0.0.1 (default 3000)")
    parser.add_argument("--with-simulator", action="store_true",
                        help="also start the PostHog simulator (the demo's dataset) on a free "
                             "port and point POSTHOG_* at it, so Materialize works in the UI")
    return parser


def ui_env(environ: dict[str, str], *, with_simulator: bool) -> tuple[dict[str, str], list[str]]:
    """The environment `dagster dev` gets, and what to tell the user about it.

    A try-out (no LAKE_ROOT, DUCKDB_DATABASE nor POSTHOG_HOST set; empty counts as unset) shows
    the demo's lake and warehouse; anything the user set is kept.
    """
    env = dict(environ)
    notes = []
    # where `demo` (run from ROOT) records its run unless DAGSTER_HOME is set
    if not env.get("DAGSTER_HOME"):
        env["DAGSTER_HOME"] = str(ROOT / ".dagster_home")
    mine = [name for name in ("LAKE_ROOT", "DUCKDB_DATABASE") if env.get(name)]
    if with_simulator and mine:
        notes.append(f"--with-simulator lands in the demo's lake, not in {' / '.join(mine)} "
                     "(ignored here)")
    if with_simulator or not (mine or env.get("POSTHOG_HOST")):
        env["LAKE_ROOT"], env["DUCKDB_DATABASE"] = str(DEMO_LAKE_ROOT), str(DEMO_DUCKDB)
        notes.append(f"Showing the demo's data: LAKE_ROOT={DEMO_LAKE_ROOT} "
                     f"DUCKDB_DATABASE={DEMO_DUCKDB}")
    return env, notes


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_group(pgid: int, grace: float) -> None:
    """Give what is left of process group ``pgid`` ``grace`` seconds to exit, then kill it."""
    deadline = time.monotonic() + grace
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    _signal_group(pgid, signal.SIGKILL)


def start_simulator() -> tuple[subprocess.Popen, dict[str, str]]:
    """`posthog-sim` on a free port of 127.0.0.1, in its own process group; its POSTHOG_* env."""
    proc = subprocess.Popen(
        [str(BIN / "posthog-sim"), "--port", "0", "--ready-json", *SIM_DATASET],
        stdout=subprocess.PIPE, text=True, cwd=ROOT, process_group=0,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("POSTHOG_SIM_READY "):
            ready = json.loads(line.split(" ", 1)[1])
            break
    else:
        proc.wait()
        raise SystemExit(f"posthog-sim exited (code {proc.returncode}) before serving")
    # keep reading what it prints, so it never blocks on a full pipe
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    return proc, {
        "POSTHOG_HOST": ready["api_url"],
        "POSTHOG_PROJECT_ID": str(ready["project_id"]),
        "POSTHOG_PERSONAL_API_KEY": ready["api_key"],
    }


def run_ui(argv: list[str]) -> int:
    """`dagster dev` in its own process group: SIGINT/SIGTERM/SIGHUP to run.py stop it (and its
    webserver, daemon and code servers), and run.py returns only once they are all gone."""
    args, rest = ui_parser().parse_known_args(argv)
    if args.with_simulator and os.environ.get("POSTHOG_HOST"):
        print("run.py ui: --with-simulator sets POSTHOG_HOST itself; unset yours "
              f"({os.environ['POSTHOG_HOST']}) or drop --with-simulator", file=sys.stderr)
        return 2
    env, notes = ui_env(dict(os.environ), with_simulator=args.with_simulator)
    Path(env["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    cmd = [*COMMANDS["ui"], "-p", str(args.port), *rest]

    children: list[subprocess.Popen] = []
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)
        if not children:
            return
        if len(received) == 1:
            # dagster dev stops its services on SIGINT, and maps SIGTERM to SIGINT; SIGHUP (the
            # terminal closed) would kill it without that, so it becomes SIGTERM
            forward = signal.SIGTERM if signum == signal.SIGHUP else signum
            print("run.py ui: stopping Dagster (again to kill it now) ...", file=sys.stderr,
                  flush=True)
            try:
                children[-1].send_signal(forward)
            except ProcessLookupError:
                pass
        else:
            _signal_group(children[-1].pid, signal.SIGKILL)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    sim = None
    try:
        if args.with_simulator:
            sim, sim_env = start_simulator()
            env.update(sim_env)
            notes.append(f"PostHog simulator on {sim_env['POSTHOG_HOST']} (the demo's dataset); "
                         "Materialize in the UI syncs from it")
        for note in notes:
            print(f"run.py ui: {note}", flush=True)
        if received:
            return 128 + received[0]
        dev = subprocess.Popen(cmd, cwd=ROOT, env=env, process_group=0)
        children.append(dev)
        if received:
            on_signal(received.pop(), None)
        deadline = None
        while True:
            try:
                code = dev.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                pass
            if received and deadline is None:
                deadline = time.monotonic() + UI_STOP_SECONDS
            if deadline is not None and time.monotonic() > deadline:
                print("run.py ui: dagster dev did not stop in time; killing it", file=sys.stderr)
                _signal_group(dev.pid, signal.SIGKILL)
        # a code server or run worker that outlived dagster dev: a few seconds, then killed
        _stop_group(dev.pid, 5.0)
    finally:
        if sim is not None:
            sim.terminate()
            try:
                sim.wait(timeout=10)
            except subprocess.TimeoutExpired:
                sim.kill()
                sim.wait()
    return code if code >= 0 else 128 - code


def _in_foreground() -> bool:
    """Whether run.py's process group is its terminal's foreground group: then a SIGINT is the
    terminal's Ctrl-C, which the child (in the same group) got as well."""
    try:
        fd = os.open("/dev/tty", os.O_RDONLY)
    except OSError:
        return False
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(__doc__)
        print("commands:", ", ".join(COMMANDS))
        return 2
    ensure_env("test")
    if argv[0] == "ui":
        return run_ui(argv[1:])
    # demo and test stay in run.py's process group (pytest --pdb reads the terminal), so a Ctrl-C
    # in the terminal reaches them directly; a SIGINT from anywhere else is forwarded. run.py
    # waits for them either way, without a traceback of its own.
    child = subprocess.Popen(COMMANDS[argv[0]] + argv[1:], cwd=ROOT)

    def forward(signum: int, _frame: object) -> None:
        if signum != signal.SIGINT or not _in_foreground():
            child.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    code = child.wait()
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:  # during the first install
        sys.exit(130)
