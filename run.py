#!/usr/bin/env python3
"""Bootstrap and run: `python3 run.py demo` (the quick start), `python3 run.py test`, or
`python3 run.py ui` (the Dagster UI, showing the demo's run).

Creates `.venv` with everything the project needs on first use (and again whenever
pyproject.toml changes), then runs the command inside it. Needs only Python >= 3.11.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".installed"

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


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(__doc__)
        print("commands:", ", ".join(COMMANDS))
        return 2
    ensure_env("test")
    cmd = COMMANDS[argv[0]] + argv[1:]
    env = dict(os.environ)
    if argv[0] == "ui":
        # where `demo` (run from ROOT) records its run unless DAGSTER_HOME is set (an empty one
        # counts as unset there too); Dagster needs the directory to exist
        if not env.get("DAGSTER_HOME"):
            env["DAGSTER_HOME"] = str(ROOT / ".dagster_home")
        Path(env["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
