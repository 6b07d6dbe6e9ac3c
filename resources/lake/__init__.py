"""The lake: Delta Lake tables under LAKE_ROOT (a local directory or S3), a DuckDB warehouse of
views over them, and content-addressed archived files. One idea per module:

- ``spec``: what a table is (schema, JSON columns, how a sync commits it)
- ``staging``: a sync's rows on local disk until the commit
- ``commit``: how a sync becomes visible atomically (one Delta commit per table)
- ``history``: the type-2 history of a snapshot table
- ``maintenance``: retention (vacuum) and compaction
- ``warehouse``: the DuckDB views over the tables' current versions
- ``filestore``: archived export files, content-addressed
- ``location``: local path or S3, the filesystems and DuckDB's access to them
- ``lake``: the Lake that assets use; ``resource``: its Dagster resource
- ``scoped``: one source's (one PostHog project's) view of the lake's shared tables
- ``migrate``: the one-off move from the old snapshot format
"""

from resources.lake.errors import LakeBusyError, LakeError
from resources.lake.lake import Lake, PublishedTable
from resources.lake.location import Location
from resources.lake.maintenance import Maintenance
from resources.lake.resource import LakeResource, default_state_dir
from resources.lake.scoped import ScopedLake
from resources.lake.spec import SYNCED_AT, SYNCED_AT_TYPE, VALID_FROM, VALID_TO, TableSpec
from resources.lake.staging import (
    BATCH_BYTES,
    StagedTable,
    count_distinct_keys,
    release_memory,
)

__all__ = [
    "BATCH_BYTES", "SYNCED_AT", "SYNCED_AT_TYPE", "VALID_FROM", "VALID_TO", "Lake", "LakeBusyError",
    "LakeError", "LakeResource", "Location", "Maintenance", "PublishedTable", "ScopedLake",
    "StagedTable",
    "TableSpec", "count_distinct_keys", "default_state_dir", "release_memory",
]
