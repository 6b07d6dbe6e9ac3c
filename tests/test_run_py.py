"""`python3 run.py ui`: its port, its environment, and a clean stop on SIGTERM / SIGINT with no
process left behind (real processes: run.py, dagster dev, webserver, daemon, code servers)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

import run

ROOT = Path(__file__).resolve().parents[1]
MARKER = "RUN_PY_TEST_MARKER"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _marked(token: str) -> dict[int, str]:
    """Live processes whose environment carries ``MARKER=token`` (run.py and every descendant
    inherit it): pid -> command line."""
    needle = f"{MARKER}={token}".encode()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                found[int(entry)] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone, or a zombie
            continue
    return found


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def _run_py_ui(tmp_path: Path, *args: str, **env: str):
    token = uuid.uuid4().hex
    port = _free_port()
    environ = {k: v for k, v in os.environ.items()
               if k not in ("LAKE_ROOT", "DUCKDB_DATABASE", "POSTHOG_HOST")}
    environ.update({MARKER: token, "DAGSTER_HOME": str(tmp_path / "dagster_home"), **env})
    # files, not pipes: a process left behind would hold a pipe open, and a full one blocks
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "run.py"), "ui", "--port", str(port), *args],
            env=environ, stdout=stdout, stderr=stderr, start_new_session=True,
        )
    proc.output = lambda: (out.read_text(), err.read_text())  # type: ignore[attr-defined]
    try:
        deadline = time.monotonic() + 180
        while not _answers(f"http://127.0.0.1:{port}/server_info"):
            assert proc.poll() is None, proc.output()
            assert time.monotonic() < deadline, "the webserver never answered"
            time.sleep(1)
        yield proc, token, port
    finally:
        for pid in _marked(token):  # whatever a failed test left running
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _stop(proc: subprocess.Popen, token: str, sig: int) -> tuple[float, str, str]:
    before = _marked(token)
    commands = " ".join(before.values())
    # what must be stopped: dagster dev and its webserver, daemon and code server
    for part in ("dagster dev", "dagster_webserver", "dagster._daemon", "code-server"):
        assert part in commands, (part, before)
    started = time.monotonic()
    proc.send_signal(sig)
    try:
        proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        pytest.fail(f"run.py still running 40 s after signal {sig}")
    return time.monotonic() - started, *proc.output()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_run_py_ui_stops_every_process_on_signal(tmp_path, sig):
    """The signal reaches dagster dev, run.py waits for it, and nothing of the tree is left
    (before, SIGTERM killed run.py alone and SIGINT printed a KeyboardInterrupt traceback)."""
    with _run_py_ui(tmp_path) as (proc, token, _port):
        elapsed, out, err = _stop(proc, token, sig)
        assert elapsed < 30, err[-3000:]
        assert _marked(token) == {}, err[-3000:]
        assert proc.returncode == 0, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        assert "Showing the demo's data" in out


def test_run_py_ui_with_simulator_gives_dagster_its_posthog(tmp_path):
    """--with-simulator: a simulator on a free port answers with the key the UI's processes got,
    the demo's lake is theirs, and the simulator stops with the rest."""
    with _run_py_ui(tmp_path, "--with-simulator") as (proc, token, _port):
        processes = _marked(token)
        dev = next(pid for pid, cmd in processes.items() if "dagster dev" in cmd)
        with open(f"/proc/{dev}/environ", "rb") as f:
            env = dict(v.split("=", 1) for v in f.read().decode().split("\0") if "=" in v)
        assert env["LAKE_ROOT"] == str(run.DEMO_LAKE_ROOT)
        assert env["DUCKDB_DATABASE"] == str(run.DEMO_DUCKDB)
        request = urllib.request.Request(
            f"{env['POSTHOG_HOST']}/api/projects/{env['POSTHOG_PROJECT_ID']}/groups_types/",
            headers={"Authorization": f"Bearer {env['POSTHOG_PERSONAL_API_KEY']}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert len(json.load(response)) == 3  # the demo's three group types
        assert any("posthog-sim" in cmd for cmd in processes.values())
        elapsed, out, err = _stop(proc, token, signal.SIGTERM)
        assert elapsed < 30
        assert _marked(token) == {}, err[-3000:]
        assert f"PostHog simulator on {env['POSTHOG_HOST']}" in out


def test_run_py_ui_env_shows_the_demo_only_on_a_try_out():
    demo = {"LAKE_ROOT": str(run.DEMO_LAKE_ROOT), "DUCKDB_DATABASE": str(run.DEMO_DUCKDB)}
    env, notes = run.ui_env({}, with_simulator=False)
    assert {k: env[k] for k in demo} == demo
    assert env["DAGSTER_HOME"] == str(run.ROOT / ".dagster_home")
    assert "Showing the demo's data" in notes[0]
    # empty counts as unset, as in the CLI
    env, _ = run.ui_env({"LAKE_ROOT": "", "DAGSTER_HOME": ""}, with_simulator=False)
    assert env["LAKE_ROOT"] == demo["LAKE_ROOT"]
    for mine in ({"LAKE_ROOT": "/l"}, {"DUCKDB_DATABASE": "/w.duckdb"},
                 {"POSTHOG_HOST": "https://eu.posthog.com"}):
        env, notes = run.ui_env(dict(mine), with_simulator=False)
        assert env == {**mine, "DAGSTER_HOME": str(run.ROOT / ".dagster_home")}
        assert notes == []
    # the simulator's data never lands in a lake the user configured
    env, notes = run.ui_env({"LAKE_ROOT": "/l"}, with_simulator=True)
    assert env["LAKE_ROOT"] == demo["LAKE_ROOT"] and "LAKE_ROOT (ignored here)" in notes[0]


def test_run_py_ui_refuses_simulator_over_a_configured_host(monkeypatch):
    monkeypatch.setenv("POSTHOG_HOST", "https://eu.posthog.com")
    assert run.run_ui(["--with-simulator"]) == 2


def test_run_py_test_forwards_sigint_without_a_traceback(tmp_path):
    """With no terminal (a supervisor, CI), a SIGINT to run.py reaches pytest, run.py's child;
    run.py returns pytest's exit code and prints no KeyboardInterrupt traceback of its own."""
    started = tmp_path / "started"
    test_file = tmp_path / "test_sleeps.py"
    test_file.write_text(
        "import pathlib, time\n\n\n"
        "def test_sleeps():\n"
        f"    pathlib.Path({str(started)!r}).touch()\n"
        "    time.sleep(120)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), "test", "-p", "no:cacheprovider", str(test_file)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        # as a supervisor starts it: SIGINT at its default, whatever an earlier test in this
        # process left it at (an ignored SIGINT is inherited, and Python then keeps ignoring it)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while not started.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 2, out + err  # pytest's "interrupted"
    assert "KeyboardInterrupt" in out  # pytest's own summary
    assert "Traceback (most recent call last)" not in err
