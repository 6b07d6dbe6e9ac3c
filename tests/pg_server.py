"""A real PostgreSQL server on 127.0.0.1 for tests, from Debian's `postgresql` package.

    with PostgresServer() as pg:
        url = pg.create_database("budget_test")   # postgresql://postgres@127.0.0.1:PORT/...

It runs the package's own binaries (/usr/lib/postgresql/<version>/bin, the newest; or
$PG_BINDIR; or `postgres` on PATH): `initdb` into a fresh temp dir, then

    postgres -D DATA -h 127.0.0.1 -p PORT -k DATA -c fsync=off ...

listening on 127.0.0.1 only (TCP, a free port) and on a Unix socket inside DATA, trusting local
connections (`initdb -A trust`; a throwaway server holding throwaway data). PostgreSQL refuses
to run as root, and the tests (and CI) run as root: then the server runs as the `postgres`
system user the package creates (else `nobody`), DATA is owned by that user, and the switch is
setgid/setuid in the child before exec. On Linux the server gets SIGKILL if the process that
started it dies (PR_SET_PDEATHSIG, set after the switch, which clears it), so a killed pytest
leaves no server behind. Stop: SIGINT (PostgreSQL's fast shutdown), SIGKILL after `stop_grace`
seconds; DATA is thrown away. The server's log is DATA/postgres.log; a start that fails raises
PostgresError with its tail.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Self

SUPERUSER = "postgres"


class PostgresError(RuntimeError):
    pass


def find_bindir() -> Path:
    """The folder holding initdb and postgres: $PG_BINDIR, else Debian's newest
    /usr/lib/postgresql/<version>/bin, else the folder of `postgres` on PATH."""
    explicit = os.environ.get("PG_BINDIR")
    if explicit:
        return Path(explicit)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda p: int(Path(p).parent.parent.name)
                   if Path(p).parent.parent.name.isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("postgres")
    if on_path:
        return Path(os.path.realpath(on_path)).parent
    raise FileNotFoundError(
        "PostgreSQL server binaries not found: apt-get install postgresql (Debian), or set "
        "PG_BINDIR to the folder holding initdb and postgres")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_user() -> pwd.struct_passwd | None:
    """Who the server runs as: None (this user) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise PostgresError("running as root and neither a 'postgres' nor a 'nobody' user exists")


def _as_user(user: pwd.struct_passwd | None):
    def preexec() -> None:
        if user is not None:
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
        if sys.platform == "linux":
            import ctypes
            with contextlib.suppress(OSError, AttributeError):
                ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    return preexec


class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1 with trust authentication."""

    def __init__(self, *, startup_timeout: float = 60.0, stop_grace: float = 10.0,
                 max_connections: int = 200) -> None:
        self.startup_timeout = startup_timeout
        self.stop_grace = stop_grace
        self.max_connections = max_connections
        self.port = 0
        self.root: Path | None = None
        self.proc: subprocess.Popen | None = None
        self._user = _server_user()

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def data_dir(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        assert self.root is not None
        return self.root / "postgres.log"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> Self:
        if self.proc is not None:
            raise RuntimeError("already started")
        bindir = find_bindir()
        self.root = Path(tempfile.mkdtemp(prefix="pg-test-"))
        if self._user is not None:
            os.chown(self.root, self._user.pw_uid, self._user.pw_gid)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        init = subprocess.run(
            [str(bindir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER, "-A", "trust",
             "-E", "UTF8", "--locale=C", "--no-sync"],
            cwd=self.root, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            check=False,
            preexec_fn=_as_user(self._user),
        )
        if init.returncode != 0:
            self._cleanup()
            raise PostgresError(f"initdb failed ({init.returncode}):\n{init.stderr[-3000:]}")
        for attempt in range(2):  # a second try only if the chosen port was taken meanwhile
            self.port = _free_port()
            log = open(self.log_path, "ab")  # noqa: SIM115 (the child holds it)
            if self._user is not None:
                os.chown(self.log_path, self._user.pw_uid, self._user.pw_gid)
            self.proc = subprocess.Popen(
                [str(bindir / "postgres"), "-D", str(self.data_dir), "-h", "127.0.0.1",
                 "-p", str(self.port), "-k", str(self.data_dir),
                 "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off", "-c", f"max_connections={self.max_connections}",
                 "-c", "logging_collector=off"],
                cwd=self.root, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_as_user(self._user),  # noqa: PLW1509 (setuid/prctl only)
            )
            log.close()
            try:
                self._wait_ready()
                return self
            except PostgresError:
                self._kill()
                if attempt == 1 or "could not bind" not in self.log_tail():
                    self._cleanup()
                    raise
        raise AssertionError("unreachable")

    def _wait_ready(self) -> None:
        import psycopg

        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.proc.poll() is not None:
                raise PostgresError(
                    f"postgres exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with psycopg.connect(self.url(), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise PostgresError(
                        f"postgres not ready after {self.startup_timeout}s:\n{self.log_tail()}"
                    ) from None
                time.sleep(0.1)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def create_database(self, name: str) -> str:
        """A new, empty database; returns its URL."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def _kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown: ends sessions, no checkpoint wait
            try:
                self.proc.wait(timeout=self.stop_grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def _cleanup(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def stop(self) -> None:
        self._kill()
        self._cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
