"""Retention and compaction: superseded files stay readable for a while, small files are merged.

After a table's commit:

- **compaction**: once the current version holds more than ``compact_files`` data files (append
  and merge tables gain a file or more per sync), ``optimize.compact()`` rewrites them into few
  large ones (one more commit; readers see the same rows). The views list a table's current
  files, so this is also what keeps their file lists short.
- **vacuum**: data files no version younger than ``retention`` references are deleted. A
  superseded version (and a ``dagster/uri`` an analyst opened) stays readable that long.
- **log cleanup**: log entries older than the retention are removed once a checkpoint covers
  them (delta-rs writes a checkpoint every 100 commits).

Maintenance failures only log: the data is committed, and the next sync tries again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from deltalake import DeltaTable

from resources.lake.commit import writer_properties
from resources.lake.staging import BATCH_ROWS

logger = logging.getLogger(__name__)

DEFAULT_RETENTION = timedelta(days=7)
DEFAULT_COMPACT_FILES = 16


@dataclass(frozen=True)
class Maintenance:
    """How long superseded files stay, and when a table is compacted."""

    retention: timedelta = DEFAULT_RETENTION
    compact_files: int = DEFAULT_COMPACT_FILES

    def table_configuration(self) -> dict[str, str]:
        """Delta table properties: the log keeps entries as long as data files are kept."""
        hours = max(0, int(self.retention.total_seconds() // 3600))
        return {"delta.logRetentionDuration": f"interval {hours} hours",
                "delta.deletedFileRetentionDuration": f"interval {hours} hours"}

    def run(self, table: DeltaTable,
            row_group_rows: Callable[[], int] | None = None) -> dict[str, int]:
        """Compact if needed (in row groups of `row_group_rows()` rows, asked only then), then
        vacuum and clean the log; counts of what was done."""
        done = {"compacted_files": 0, "vacuumed_files": 0}
        try:
            files = len(table.file_uris())
            if files > self.compact_files:
                rows = row_group_rows() if row_group_rows is not None else BATCH_ROWS
                result = table.optimize.compact(writer_properties=writer_properties(rows))
                done["compacted_files"] = int(result.get("numFilesRemoved", 0))
            hours = max(0, int(self.retention.total_seconds() // 3600))
            # a vacuum is two commits (start, end): only when it has something to remove
            if table.vacuum(retention_hours=hours, dry_run=True,
                            enforce_retention_duration=False):
                removed = table.vacuum(retention_hours=hours, dry_run=False,
                                       enforce_retention_duration=False)
                done["vacuumed_files"] = len(removed)
            table.cleanup_metadata()
        except Exception:
            logger.exception("maintenance of %s failed; the next sync tries again",
                             table.table_uri)
        return done
