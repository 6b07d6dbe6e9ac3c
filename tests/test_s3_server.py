"""The S3 test server (SeaweedFS, tests/s3_server.py) and Delta tables on it with deltalake.

Reads never call DeltaTable.to_pyarrow_table() or a dataset's to_table(): with pyarrow 26 that
can abort the process at exit. They list the current files with DeltaTable.file_uris() and read
each with pyarrow.parquet over pyarrow's S3FileSystem.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError

from tests.s3_fixtures import S3Bucket
from tests.s3_server import S3Error, S3Server

ROOT = Path(__file__).resolve().parent.parent


def _fs(b: S3Bucket, secret_key: str | None = None) -> pafs.S3FileSystem:
    # pyarrow's S3FileSystem() ignores AWS_ENDPOINT_URL: the endpoint must be passed
    return pafs.S3FileSystem(access_key=b.access_key, secret_key=secret_key or b.secret_key,
                             region=b.region, endpoint_override=b.endpoint_url,
                             retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1))


def _read_delta(b: S3Bucket, uri: str, version: int | None = None) -> pa.Table:
    dt = DeltaTable(uri, storage_options=b.env(), version=version)
    fs = _fs(b)
    parts = []
    for file_uri in dt.file_uris():
        assert file_uri.startswith(f"s3://{b.bucket}/"), file_uri
        with fs.open_input_file(file_uri.removeprefix("s3://")) as f:
            parts.append(pq.read_table(f))
    return pa.concat_tables(parts)


def _listening_sockets(pid: int) -> set[tuple[str, int]]:
    """(ip, port) of the TCP sockets in LISTEN state that process `pid` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    found = set()
    for table, width in (("tcp", 4), ("tcp6", 16)):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:
                continue
            addr_hex, port_hex = local.split(":")
            raw = bytes.fromhex(addr_hex)
            if width == 4:
                ip = ".".join(str(x) for x in reversed(raw))
            else:  # four little-endian 32-bit words
                ip = ":".join(raw[i:i + 4][::-1].hex() for i in range(0, 16, 4))
            found.add((ip, int(port_hex, 16)))
    return found


@pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="needs Linux /proc")
def test_server_listens_on_loopback_only_on_its_own_ports(s3_server):
    listening = _listening_sockets(s3_server.proc.pid)
    assert {ip for ip, _ in listening} == {"127.0.0.1"}
    assert {port for _, port in listening} == set(s3_server.ports.values())


def test_start_failure_reports_the_log_tail(tmp_path):
    fake = tmp_path / "weed"
    fake.write_text("#!/bin/sh\necho 'fake weed: cannot start' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(S3Error, match=r"(?s)exited with code 3.*fake weed: cannot start"):
        S3Server(weed=str(fake)).start()

    fake.write_text("#!/bin/sh\necho 'fake weed: hanging'\nexec sleep 30\n")
    t = time.monotonic()
    with pytest.raises(S3Error, match=r"(?s)not ready within 1 s.*fake weed: hanging"):
        S3Server(weed=str(fake), startup_timeout=1, stop_grace=0.5).start()
    assert time.monotonic() - t < 10


def test_object_round_trip(s3_bucket):
    srv, b = s3_bucket.server, s3_bucket.bucket
    payload = os.urandom(100_000)
    srv.request("PUT", f"/{b}/dir/blob.bin", body=payload, expect=(200,))
    assert srv.request("GET", f"/{b}/dir/blob.bin", expect=(200,))[2] == payload
    listing = srv.request("GET", f"/{b}", query={"list-type": "2"}, expect=(200,))[2]
    assert b"<Key>dir/blob.bin</Key>" in listing

    # pyarrow with the right and a wrong secret
    fs = _fs(s3_bucket)
    with fs.open_input_file(f"{b}/dir/blob.bin") as f:
        assert f.read() == payload
    with pytest.raises(OSError, match="ACCESS_DENIED|AccessDenied|403"):
        _fs(s3_bucket, secret_key="wrong-secret").open_input_file(f"{b}/dir/blob.bin").read()


def test_conditional_put(s3_bucket):
    """If-None-Match: * refuses to replace an existing key (412): what makes concurrent Delta
    commits safe without a locking provider."""
    srv, b = s3_bucket.server, s3_bucket.bucket
    create = {"If-None-Match": "*"}
    assert srv.request("PUT", f"/{b}/k", body=b"first", headers=create)[0] == 200
    assert srv.request("PUT", f"/{b}/k", body=b"second", headers=create)[0] == 412
    assert srv.request("GET", f"/{b}/k")[2] == b"first"


def test_delta_append_overwrite_versions(s3_bucket):
    uri, so = s3_bucket.uri("events"), s3_bucket.env()
    write_deltalake(uri, pa.table({"id": [1, 2], "name": ["a", "b"]}), storage_options=so)
    assert DeltaTable(uri, storage_options=so).version() == 0

    write_deltalake(uri, pa.table({"id": [3], "name": ["c"]}), mode="append", storage_options=so)
    dt = DeltaTable(uri, storage_options=so)
    assert dt.version() == 1
    assert len(dt.file_uris()) == 2
    assert sorted(_read_delta(s3_bucket, uri)["id"].to_pylist()) == [1, 2, 3]

    write_deltalake(uri, pa.table({"id": [9], "name": ["z"]}), mode="overwrite",
                    storage_options=so)
    dt = DeltaTable(uri, storage_options=so)
    assert dt.version() == 2
    assert _read_delta(s3_bucket, uri).to_pylist() == [{"id": 9, "name": "z"}]
    # time travel still sees version 1
    assert sorted(_read_delta(s3_bucket, uri, version=1)["id"].to_pylist()) == [1, 2, 3]


def test_delta_stale_writer_conflicts_instead_of_losing_a_commit(s3_bucket):
    """Two writers on the same snapshot: the second one's commit file for version 1 already
    exists, so it fails (no retries) or lands at version 2 (default retries); it never
    replaces the first one's commit."""
    uri, so = s3_bucket.uri("t"), s3_bucket.env()
    write_deltalake(uri, pa.table({"w": ["init"]}), storage_options=so)
    a = DeltaTable(uri, storage_options=so)
    b = DeltaTable(uri, storage_options=so)

    write_deltalake(a, pa.table({"w": ["a"]}), mode="append")
    assert a.version() == 1
    with pytest.raises(CommitFailedError):
        write_deltalake(b, pa.table({"w": ["b-no-retry"]}), mode="append",
                        commit_properties=CommitProperties(max_commit_retries=0))
    write_deltalake(b, pa.table({"w": ["b"]}), mode="append")
    assert b.version() == 2

    assert sorted(_read_delta(s3_bucket, uri, version=1)["w"].to_pylist()) == ["a", "init"]
    assert sorted(_read_delta(s3_bucket, uri)["w"].to_pylist()) == ["a", "b", "init"]


_WRITER = textwrap.dedent("""
    import sys, time
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake
    uri, name, n, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    so = {k: v for k, v in __import__("os").environ.items() if k.startswith("AWS_")}
    dt = DeltaTable(uri, storage_options=so)  # one snapshot, stale after the other's commits
    time.sleep(max(0.0, start - time.time()))
    for i in range(n):
        write_deltalake(dt, pa.table({"w": [name], "i": [i]}), mode="append")
        print(dt.version(), flush=True)
""")


def test_delta_concurrent_writers_lose_no_commit(s3_bucket):
    """Two processes append N times each, racing: every append lands at its own version."""
    uri, so, n = s3_bucket.uri("race"), s3_bucket.env(), 5
    write_deltalake(uri, pa.table({"w": ["init"], "i": [0]}), storage_options=so)
    env = {**os.environ, **so}
    start = time.time() + 2.0  # both processes have loaded deltalake by then
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, uri, name, str(n), str(start)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for name in ("p", "q")]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
    landed = sorted(int(v) for out, _ in outs for v in out.split())
    assert landed == list(range(1, 2 * n + 1))  # each commit its own version, none lost

    dt = DeltaTable(uri, storage_options=so)
    assert dt.version() == 2 * n
    rows = _read_delta(s3_bucket, uri).to_pylist()
    assert sorted((r["w"], r["i"]) for r in rows) == sorted(
        [("init", 0)] + [(w, i) for w in ("p", "q") for i in range(n)])
