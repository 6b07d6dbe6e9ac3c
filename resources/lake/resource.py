"""LakeResource: the lake's configuration (LAKE_ROOT, DUCKDB_DATABASE, the local state directory,
retention) as a Dagster resource; ``get_lake()`` gives the Lake."""

from __future__ import annotations

import os
import tempfile
from datetime import timedelta
from pathlib import Path

import dagster as dg
import duckdb
from pydantic import Field

from resources.lake.errors import LakeError
from resources.lake.lake import Lake
from resources.lake.location import Location
from resources.lake.maintenance import Maintenance


def default_state_dir(duckdb_database: str) -> str:
    """The local state directory when none is configured: ``state/`` beside the warehouse."""
    return str(Path(duckdb_database).expanduser().absolute().parent / "state")


class LakeResource(dg.ConfigurableResource):
    """Delta tables under LAKE_ROOT (local or s3://), the DuckDB warehouse over them."""

    lake_root: str = "data/lake"
    duckdb_database: str = "data/warehouse.duckdb"
    state_dir: str = Field(
        default="", description="Local directory for locks, staged rows and downloads "
        "(PIPELINE_STATE_DIR); default: state/ beside DUCKDB_DATABASE.")
    retention_hours: float = Field(
        default=7 * 24, description="How long superseded files stay readable before vacuum.")
    compact_files: int = Field(
        default=16, description="Compact a table once its current version has more files.")

    def get_lake(self, *, create: bool = True) -> Lake:
        """A Lake over the configured places, after checking they are usable.

        ``create=False`` (read-only commands) creates nothing and checks nothing."""
        location = Location.parse(self.lake_root)
        database = Path(self.duckdb_database).expanduser().absolute()
        state = Path(self.state_dir or default_state_dir(self.duckdb_database)).absolute()
        lake = Lake(location, database, state, maintenance=Maintenance(
            retention=timedelta(hours=self.retention_hours), compact_files=self.compact_files))
        if not create:
            return lake
        if location.is_local:
            _writable_dir(Path(location.uri), "LAKE_ROOT")
        _writable_dir(database.parent, f"DUCKDB_DATABASE {str(database)!r}: its directory")
        _writable_dir(state, "PIPELINE_STATE_DIR")
        if database.exists():
            _check_duckdb_file(database)
        lake.check_format()
        return lake


def _writable_dir(path: Path, what: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise LakeError(f"{what} {str(path)!r} is not a writable directory: "
                        f"{e.strerror or e}") from None


def _check_duckdb_file(path: Path) -> None:
    if path.is_dir():
        raise LakeError(f"DUCKDB_DATABASE {path} is a directory, not a DuckDB database")
    try:
        con = duckdb.connect(str(path), read_only=True)
    except (duckdb.IOException, duckdb.ConnectionException) as e:
        text = str(e)
        if "Could not set lock" in text or "different configuration" in text:
            return  # a live connection proves it is a DuckDB file
        if "not a valid DuckDB database" in text:
            raise LakeError(f"DUCKDB_DATABASE {path} is not a DuckDB database") from None
        raise LakeError(f"DUCKDB_DATABASE {path} cannot be opened: {e}") from None
    except duckdb.Error as e:
        raise LakeError(f"DUCKDB_DATABASE {path} cannot be opened: {e}") from None
    con.close()
