"""Where the lake lives: a local directory or ``s3://bucket/prefix`` on any S3-compatible store.

Everything that touches the lake's bytes goes through a ``Location``: the Delta tables' URIs
(delta-rs reads the standard ``AWS_*`` variables itself), a pyarrow filesystem for archived
files, and DuckDB connections that can read the tables' Parquet files. One code path for both
kinds of root; the differences live here and nowhere else.

For S3, the standard variables configure the store: ``AWS_ENDPOINT_URL``, ``AWS_REGION``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and ``AWS_ALLOW_HTTP`` (a plain-HTTP local
endpoint). DuckDB reads S3 without its httpfs extension (which it would download at run time):
the pyarrow S3 filesystem is registered with the connection through fsspec (``duckdb_s3.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from urllib.parse import unquote, urlparse

import duckdb
import pyarrow.fs as pafs

from resources.lake.errors import LakeError

S3_SCHEME = "s3"
_UNSUPPORTED_IN_PATHS = "[]%"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Location:
    """The lake root: ``uri`` is an absolute local path or ``s3://bucket/prefix``."""

    uri: str
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ), repr=False,
                                    compare=False)

    @staticmethod
    def parse(root: str, environ: dict[str, str] | None = None) -> Location:
        """A Location from LAKE_ROOT's value (a path, ``file://`` URI or ``s3://`` URI)."""
        env = dict(os.environ if environ is None else environ)
        text = (root or "").strip()
        if not text:
            raise LakeError("LAKE_ROOT is empty: set it to a directory or s3://bucket/prefix")
        parsed = urlparse(text)
        if parsed.scheme in ("s3", "s3a"):
            if not parsed.netloc:
                raise LakeError(f"LAKE_ROOT {text!r} names no bucket: use s3://bucket/prefix")
            prefix = parsed.path.strip("/")
            return Location(f"s3://{parsed.netloc}" + (f"/{prefix}" if prefix else ""), env)
        if parsed.scheme == "file":
            text = parsed.path
        elif parsed.scheme and len(parsed.scheme) > 1:
            raise LakeError(
                f"LAKE_ROOT {text!r}: only a local path or s3://bucket/prefix is supported"
            )
        path = str(Path(text).expanduser().absolute())
        bad = sorted(set(path) & set(_UNSUPPORTED_IN_PATHS))
        if bad:
            # delta-rs cannot open a local table whose path holds these (it parses the path as
            # a URL): say so now rather than fail inside the first commit
            raise LakeError(f"LAKE_ROOT {path!r} contains {' '.join(bad)}, which Delta Lake "
                            "(delta-rs) cannot use in a local path: choose another directory")
        return Location(path, env)

    @property
    def is_local(self) -> bool:
        return not self.uri.startswith("s3://")

    def __str__(self) -> str:
        return self.uri

    # -- Delta -------------------------------------------------------------------------------

    def join(self, *parts: str) -> str:
        """The URI (or absolute path) of ``parts`` under the root."""
        return "/".join([self.uri.rstrip("/"), *parts])

    @cached_property
    def storage_options(self) -> dict[str, str] | None:
        """delta-rs storage options: None locally; for S3 the standard variables, explicitly."""
        if self.is_local:
            return None
        options = {}
        for name in ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_ACCESS_KEY_ID",
                     "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ALLOW_HTTP"):
            if self.environ.get(name):
                options[name] = self.environ[name]
        options.setdefault("AWS_REGION", self.environ.get("AWS_DEFAULT_REGION") or "us-east-1")
        return options

    def data_files(self, table) -> list[str]:
        """The current version's data files of a DeltaTable, as paths or URIs DuckDB and the
        filesystem can open (delta-rs percent-encodes local paths: a space is %20)."""
        uris = table.file_uris()
        return [unquote(u) for u in uris] if self.is_local else uris

    # -- files -------------------------------------------------------------------------------

    @cached_property
    def filesystem(self) -> pafs.FileSystem:
        """A pyarrow filesystem over the root; paths on it come from ``fs_path``."""
        if self.is_local:
            return pafs.LocalFileSystem()
        env = self.environ
        endpoint = env.get("AWS_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL_S3")
        kwargs: dict = {
            "region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
        }
        if env.get("AWS_ACCESS_KEY_ID"):
            kwargs["access_key"] = env["AWS_ACCESS_KEY_ID"]
            kwargs["secret_key"] = env.get("AWS_SECRET_ACCESS_KEY", "")
            if env.get("AWS_SESSION_TOKEN"):
                kwargs["session_token"] = env["AWS_SESSION_TOKEN"]
        if endpoint:
            parsed = urlparse(endpoint)
            kwargs["endpoint_override"] = parsed.netloc or parsed.path
            kwargs["scheme"] = parsed.scheme or "https"
            if kwargs["scheme"] == "http" and not _truthy(env.get("AWS_ALLOW_HTTP")):
                raise LakeError(
                    f"AWS_ENDPOINT_URL {endpoint} is plain HTTP: set AWS_ALLOW_HTTP=true to "
                    "allow it (a local S3-compatible server)"
                )
            kwargs["force_virtual_addressing"] = False
        return pafs.S3FileSystem(**kwargs)

    def fs_path(self, uri: str) -> str:
        """The path on ``filesystem`` of a URI (or absolute path) under this root."""
        if self.is_local:
            return uri
        if not uri.startswith("s3://"):
            raise LakeError(f"{uri!r} is not under the lake {self.uri}")
        return uri[len("s3://"):]

    # -- DuckDB ------------------------------------------------------------------------------

    def register(self, con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
        """Let ``con`` read this lake's files (a no-op for a local lake)."""
        # never download an extension at run time (air-gapped deployments, CI)
        con.execute("SET autoinstall_known_extensions = false")
        con.execute("SET autoload_known_extensions = false")
        if not self.is_local:
            from resources.lake.duckdb_s3 import duckdb_filesystem

            con.register_filesystem(duckdb_filesystem(self.filesystem))
        return con
