"""Asset checks that read the warehouse and the archived files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg

from assets.exports import expiring_unarchived, posthog_export_contents, posthog_exports
from assets.groups import posthog_groups
from resources.lake import LakeResource, count_distinct_keys


@dg.asset_check(asset=posthog_groups, blocking=True)
def posthog_groups_unique_key(lake: LakeResource) -> dg.AssetCheckResult:
    """No two rows of posthog.groups share (group_type_index, group_key)."""
    store = lake.get_lake()
    rows, distinct = count_distinct_keys(
        lambda sql: store.query(sql)[0], "posthog.groups", "group_type_index, group_key"
    )
    (null_keys,), = store.query("SELECT count(*) FROM posthog.groups WHERE group_key IS NULL")
    return dg.AssetCheckResult(
        passed=rows == distinct and null_keys == 0,
        metadata={"rows": rows, "distinct_keys": distinct, "duplicates": rows - distinct,
                  "null_keys": null_keys},
    )


@dg.asset_check(asset=posthog_export_contents)
def posthog_export_contents_sha256(lake: LakeResource) -> dg.AssetCheckResult:
    """Every archived file exists and its sha256 and size match what was recorded."""
    store = lake.get_lake()
    bad: list[str] = []
    checked = 0
    for export_id, sha256, size, stored_path in store.query(
        "SELECT export_id, sha256, size_bytes, stored_path FROM posthog.export_contents"
    ):
        checked += 1
        problem = store.files.verify(stored_path, sha256, size)
        if problem:
            bad.append(f"export {export_id}: {problem}")
    return dg.AssetCheckResult(
        passed=not bad,
        metadata={"files_checked": checked, "mismatches": len(bad),
                  "first_mismatches": dg.MetadataValue.json(bad[:20])},
    )


# on the contents asset (which archives), after both: checked before archiving, every sync
# would warn about exports it was just about to archive
@dg.asset_check(asset=posthog_export_contents, additional_deps=[posthog_exports])
def posthog_exports_expiring_unarchived(lake: LakeResource) -> dg.AssetCheckResult:
    """Warns when an export with content expires within 24 hours and is not archived yet."""
    rows = expiring_unarchived(lake.get_lake(), datetime.now(UTC) + timedelta(hours=24))
    return dg.AssetCheckResult(
        passed=not rows,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "expiring_unarchived": len(rows),
            "first": dg.MetadataValue.json(
                [{"id": i, "format": f, "expires_after": str(e)} for i, f, e in rows[:20]]
            ),
        },
    )
