"""Spike: read a Delta table on S3 (SeaweedFS from tests/s3_server.py) with DuckDB and no DuckDB
extensions (no httpfs, no delta). Needs the test extra plus s3fs and psutil (`bench` extra):

    .venv/bin/python -m benchmarks.s3_duckdb_spike --rows 200000 --runs 10

Writes a Delta table (4 appends -> 4 Parquet files, ~30 MB), lists its current files with
DeltaTable.file_uris() and times `SELECT count(*), sum(length(payload))` over them, each option
in fresh processes (`--runs` of each, run in turns) so import cost and memory are its own:

  a  fsspec ArrowFSWrapper (protocol 's3') over pyarrow.fs.S3FileSystem, registered with
     con.register_filesystem(); DuckDB's read_parquet('s3://...') reads through it
  a2 as a, but the file object keeps its position per thread and reads with read_at(): DuckDB
     calls seek() and read() on one shared handle from several threads, and with plain `a`
     those race (a read at another thread's offset: short reads, "Cannot read past end of file")
  b  s3fs.S3FileSystem registered the same way
  c  pyarrow.parquet.ParquetFile over S3FileSystem.open_input_file(), every column read into
     one Arrow table, handed to DuckDB (a CLI cannot know which columns a query needs)
  c1 as c, reading only the `payload` column (what the query needs)
  d  pyarrow.dataset.dataset(files, filesystem=S3FileSystem) handed to DuckDB, which scans it
     lazily with projection pushdown (never calls to_table())
  q  deltalake's QueryBuilder (DataFusion, not DuckDB), for comparison and for the exit codes

Per run: import time and RSS growth of the option's own modules (after duckdb + deltalake),
time to load the DeltaTable and list files, the first query (includes setup: registering the
filesystem / reading into Arrow), the best of two more, peak RSS (VmHWM), and the exit code.
Prints Markdown (medians over runs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OPTIONS = ("a", "a2", "b", "c", "c1", "d", "q")
SQL = "SELECT count(*), sum(length(payload)) FROM {src}"


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ------------------------------------------------------------------------------ child
def child(option: str, uri: str) -> None:
    env = os.environ
    out: dict = {"option": option}
    t = time.perf_counter()
    import duckdb
    from deltalake import DeltaTable
    out["base_import_s"] = time.perf_counter() - t
    rss_base = out["base_rss_mb"] = _status_mb("VmRSS")

    t = time.perf_counter()
    if option in ("a", "a2"):
        import threading

        import pyarrow.fs as pafs
        from fsspec.implementations.arrow import ArrowFile, ArrowFSWrapper

        class PositionalFile(ArrowFile):
            """seek/tell per thread, read = read_at(n, that thread's position)."""

            def __init__(self, *a, **k):
                super().__init__(*a, **k)
                self._local, self._size = threading.local(), self.stream.size()

            def seek(self, offset, whence=0):
                base = (0, getattr(self._local, "pos", 0), self._size)[whence]
                self._local.pos = base + offset
                return self._local.pos

            def tell(self):
                return getattr(self._local, "pos", 0)

            def read(self, n=-1):
                pos = self.tell()
                n = self._size - pos if n is None or n < 0 else min(n, self._size - pos)
                out = self.stream.read_at(n, pos) if n > 0 else b""
                self._local.pos = pos + len(out)
                return out

        class S3ArrowFS(ArrowFSWrapper):
            protocol = ("s3", "s3a")

            if option == "a2":
                def _open(self, path, mode="rb", block_size=None, **kwargs):
                    if mode != "rb":
                        return super()._open(path, mode, block_size, **kwargs)
                    return PositionalFile(self, self.fs.open_input_file(path), path, mode,
                                          block_size)
    elif option == "b":
        import s3fs
    elif option in ("c", "c1"):
        import pyarrow as pa
        import pyarrow.fs as pafs
        import pyarrow.parquet as pq
    elif option == "d":
        import pyarrow.dataset as ds
        import pyarrow.fs as pafs
    elif option == "q":
        from deltalake import QueryBuilder
    out["option_import_s"] = time.perf_counter() - t
    out["option_import_rss_mb"] = _status_mb("VmRSS") - rss_base

    storage = {k: v for k, v in env.items() if k.startswith("AWS_")}
    t = time.perf_counter()
    dt = DeltaTable(uri, storage_options=storage)
    files = dt.file_uris()
    out["list_files_s"] = time.perf_counter() - t
    out["files"] = len(files)

    def pa_fs():
        return pafs.S3FileSystem(
            endpoint_override=env["AWS_ENDPOINT_URL"], access_key=env["AWS_ACCESS_KEY_ID"],
            secret_key=env["AWS_SECRET_ACCESS_KEY"], region=env["AWS_REGION"])

    con = duckdb.connect()
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    file_list = "[" + ", ".join(f"'{f}'" for f in files) + "]"

    def run() -> tuple:
        if option in ("a", "a2"):
            if not run.done:
                con.register_filesystem(S3ArrowFS(pa_fs()))
            return con.sql(SQL.format(src=f"read_parquet({file_list})")).fetchall()[0]
        if option == "b":
            if not run.done:
                con.register_filesystem(s3fs.S3FileSystem(
                    key=env["AWS_ACCESS_KEY_ID"], secret=env["AWS_SECRET_ACCESS_KEY"],
                    endpoint_url=env["AWS_ENDPOINT_URL"],
                    client_kwargs={"region_name": env["AWS_REGION"]}))
            return con.sql(SQL.format(src=f"read_parquet({file_list})")).fetchall()[0]
        if option in ("c", "c1"):
            fs = pa_fs()
            cols = ["payload"] if option == "c1" else None
            parts = []
            for f in files:
                with fs.open_input_file(f.removeprefix("s3://")) as fh:
                    parts.append(pq.ParquetFile(fh).read(columns=cols))
            table = pa.concat_tables(parts)
            con.register("t", table)
            return con.sql(SQL.format(src="t")).fetchall()[0]
        if option == "d":
            dataset = ds.dataset([f.removeprefix("s3://") for f in files], filesystem=pa_fs(),
                                 format="parquet")
            con.register("t", dataset)
            return con.sql(SQL.format(src="t")).fetchall()[0]
        if option == "q":
            reader = QueryBuilder().register("t", dt).execute(SQL.format(src="t"))
            batch = reader.read_all()
            return tuple(batch.column(i)[0].as_py() for i in range(batch.num_columns))
        raise ValueError(option)

    run.done = False
    times, results, errors = [], [], []
    for _ in range(3):  # the first includes setup (registering, reading into Arrow)
        t = time.perf_counter()
        try:
            results.append(run())
            times.append(time.perf_counter() - t)
        except Exception as exc:  # noqa: BLE001 (counted; exit codes are kept for crashes)
            errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
            times.append(float("nan"))
        run.done = True
    out["first_query_s"], out["warm_query_s"] = times[0], min(times[1:])
    out["result"] = list(results[0]) if results else None
    out["wrong_results"] = sum(r != results[0] for r in results)
    out["query_errors"] = errors
    out["peak_rss_mb"] = _status_mb("VmHWM")
    print("SPIKE " + json.dumps(out), flush=True)


# ------------------------------------------------------------------------------ parent
def make_table(s3, rows: int, commits: int) -> tuple[str, int, int]:
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake

    s3.create_bucket("spike")
    uri, so = "s3://spike/events", s3.env()
    per = rows // commits
    events = ["pageview", "click", "signup", "purchase"]
    for c in range(commits):
        ids = range(c * per, (c + 1) * per)
        table = pa.table({
            "id": pa.array(ids, pa.int64()),
            "event": [events[i % 4] for i in ids],
            "ts": pa.array([1_700_000_000_000_000 + i for i in ids], pa.timestamp("us")),
            "payload": [os.urandom(75).hex() for _ in ids],  # 150 random hex chars
        })
        write_deltalake(uri, table, mode="append", storage_options=so)
    dt = DeltaTable(uri, storage_options=so)
    listing = s3.request("GET", "/spike", query={"list-type": "2", "prefix": "events/part-"})[2]
    import re
    size = sum(int(x) for x in re.findall(rb"<Size>(\d+)</Size>", listing))
    return uri, len(dt.file_uris()), size


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--commits", type=int, default=4)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--options", default=",".join(OPTIONS))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--uri", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.uri)
        return

    sys.path.insert(0, str(ROOT))
    from tests.s3_server import S3Server

    options = args.options.split(",")
    with S3Server() as s3:
        t = time.perf_counter()
        uri, nfiles, size = make_table(s3, args.rows, args.commits)
        print(f"table {uri}: {args.rows} rows, {nfiles} files, {size / 1e6:.1f} MB of Parquet "
              f"(written in {time.perf_counter() - t:.1f} s)")
        env = {**os.environ, **s3.env()}
        results: dict[str, list[dict]] = {o: [] for o in options}
        codes: dict[str, list[int]] = {o: [] for o in options}
        errors: dict[str, str] = {}
        for _ in range(args.runs):
            for o in options:
                p = subprocess.run([sys.executable, "-m", "benchmarks.s3_duckdb_spike",
                                    "--child", o, "--uri", uri], check=False, cwd=ROOT,
                                   env=env, capture_output=True, text=True, timeout=600)
                codes[o].append(p.returncode)
                line = next((x for x in p.stdout.splitlines() if x.startswith("SPIKE ")), None)
                if line:
                    results[o].append(json.loads(line[6:]))
                else:
                    errors[o] = p.stderr[-1500:]

    def med(o: str, key: str) -> float:
        vals = [r[key] for r in results[o] if r[key] == r[key]]  # NaN: that query failed
        return statistics.median(vals) if vals else float("nan")

    print("\n| option | imports (s) | import RSS (MB) | list files (s) | first query (s) "
          "| warm query (s) | peak RSS (MB) | failed queries | exit codes | result |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for o in options:
        res = next((r["result"] for r in results[o] if r["result"]), "-")
        failed = sum(len(r["query_errors"]) for r in results[o])
        code_counts = {c: codes[o].count(c) for c in sorted(set(codes[o]))}
        print(f"| {o} | {med(o, 'option_import_s'):.3f} | {med(o, 'option_import_rss_mb'):.0f} "
              f"| {med(o, 'list_files_s'):.3f} | {med(o, 'first_query_s'):.3f} "
              f"| {med(o, 'warm_query_s'):.3f} | {med(o, 'peak_rss_mb'):.0f} "
              f"| {failed}/{3 * len(results[o])} | {code_counts} | {res} |")
    for o in options:
        errs = sorted({e for r in results[o] for e in r["query_errors"]})
        wrong = sum(r["wrong_results"] for r in results[o])
        if errs or wrong:
            print(f"\n{o}: {wrong} wrong results; errors: " + "; ".join(errs[:3]))
    base = [r["base_import_s"] for rs in results.values() for r in rs]
    if base:
        rss = [r["base_rss_mb"] for rs in results.values() for r in rs]
        print(f"\nduckdb + deltalake imports (every option): median "
              f"{statistics.median(base):.3f} s, RSS after them {statistics.median(rss):.0f} MB")
    for o, err in errors.items():
        print(f"\n{o} failed:\n{err}")


if __name__ == "__main__":
    main()
