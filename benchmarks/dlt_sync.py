"""The peer: dlt's generic `rest_api` source configured for the same endpoints (the tested
config of ../shared/reference/peers.md §9.1: group types -> groups per type following `next`,
exports with limit/offset, CSV export rows via a transformer), Parquet on the filesystem
destination. Needs the `bench` extra (`dlt[parquet]`).

    python -m benchmarks.dlt_sync --host http://127.0.0.1:PORT --api-key phx_... --out DIR
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--project-id", default="1")
    p.add_argument("--api-key", required=True)
    p.add_argument("--out", required=True, help="directory for the Parquet files and dlt state")
    a = p.parse_args(argv)
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    import dlt
    from dlt.sources.helpers.rest_client import RESTClient
    from dlt.sources.helpers.rest_client.auth import BearerTokenAuth
    from dlt.sources.rest_api import rest_api_source

    base = f"{a.host}/api/projects/{a.project_id}/"
    config = {
        "client": {"base_url": base, "auth": {"type": "bearer", "token": a.api_key}},
        "resource_defaults": {"write_disposition": "replace",
                              "endpoint": {"data_selector": "results"}},
        "resources": [
            {"name": "group_types", "primary_key": "group_type_index",
             "endpoint": {"path": "groups_types/", "paginator": "single_page", "data_selector": "$"}},
            {"name": "groups", "primary_key": ["group_type_index", "group_key"],
             "endpoint": {"path": "groups/",
                          "params": {"group_type_index": "{resources.group_types.group_type_index}"},
                          "paginator": {"type": "json_link", "next_url_path": "next"}},
             "include_from_parent": ["group_type"],
             # without this hint dlt flattens group_properties into columns and its Parquet
             # normalizer fails on integers beyond int64 ("Python int too large to convert to C
             # long"), which the simulator's dataset has (as PostHog allows): keep it as JSON
             "columns": {"group_properties": {"data_type": "json"}}},
            {"name": "exports", "primary_key": "id",
             "endpoint": {"path": "exports/",
                          "paginator": {"type": "offset", "limit": 100, "offset_param": "offset",
                                        "limit_param": "limit", "total_path": "count"}}},
        ],
    }
    source = rest_api_source(config, name="posthog")
    client = RESTClient(base_url=base, auth=BearerTokenAuth(a.api_key))

    @dlt.transformer(data_from=source.resources["exports"], name="export_rows",
                     write_disposition="replace")
    def export_rows(exports):
        for e in exports:
            if e.get("has_content") and e.get("export_format") == "text/csv":
                r = client.get(f"exports/{e['id']}/content/")  # follows the 302 to storage
                for row in csv.DictReader(io.StringIO(r.text)):
                    yield {"export_id": e["id"], **row}

    source.resources.add(export_rows)
    pipeline = dlt.pipeline("posthog_bench", dataset_name="posthog",
                            pipelines_dir=os.path.join(a.out, "_dlt_pipelines"),
                            destination=dlt.destinations.filesystem("file://" + os.path.join(a.out, "lake")))
    info = pipeline.run(source, loader_file_format="parquet")
    counts = pipeline.last_trace.last_normalize_info.row_counts if pipeline.last_trace else {}
    print(json.dumps({"loads": len(info.loads_ids), "row_counts": dict(counts)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
