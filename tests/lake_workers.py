"""Process targets for the lake tests (spawned children import only this and the lake)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pyarrow as pa


def scoped_groups_spec():
    from resources.lake import TableSpec

    return TableSpec(
        name="groups",
        schema=pa.schema([("project_id", pa.int64()), ("group_key", pa.string()),
                          ("group_properties", pa.string()),
                          ("created_at", pa.timestamp("us", tz="UTC"))]),
        json_columns=("group_properties",), key=("group_key",), history="groups_history",
        scope="project_id")


def sync_project_repeatedly(root: str, project: int, syncs: int, ready, go,
                            lake_root: str | None = None, env: dict | None = None) -> None:
    """`syncs` snapshots of 50 groups for one project, each changing every group; the lake at
    `lake_root` (default <root>/lake), with `env` (e.g. the S3 server's AWS_*) set first."""
    import os

    os.environ.update(env or {})
    from resources.lake import Lake

    spec = scoped_groups_spec()
    lake = Lake(lake_root or f"{root}/lake", f"{root}/wh{project}.duckdb",
                f"{root}/state{project}")
    ready.put(project)
    go.wait(60)
    for i in range(syncs):
        with lake.writer(spec, synced_at=datetime.now(UTC), scope=project) as w:
            w.write_rows([{"group_key": f"k{j}", "created_at": None,
                           "group_properties": json.dumps({"i": i}, separators=(",", ":"))}
                          for j in range(50)])
        lake.publish([w])
