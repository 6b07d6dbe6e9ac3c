"""Asset checks that read the warehouse and the archived files."""


import json
from datetime import UTC, datetime, timedelta

import dagster as dg
from pydantic import Field

from assets.exports import expiring_unarchived, posthog_export_contents, posthog_exports
from assets.groups import posthog_groups
from resources.lake import LakeResource, count_distinct_keys


@dg.asset_check(asset=posthog_groups, blocking=True)
def posthog_groups_unique_key(lake: LakeResource) -> dg.AssetCheckResult:
    """The published posthog.groups has no two rows sharing (group_type_index, group_key) and
    no NULL key. It runs after the commit (blocking stops downstream assets, not the commit);
    what it guards is the lake's own dedupe, which keeps the last row of each key before the
    commit and reports how many it dropped as `duplicates_dropped`. A listing that came back
    short is stopped before the commit by the volume guard (`max_row_drop`)."""
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


class Sha256CheckConfig(dg.Config):
    full: bool = Field(
        default=False, description="Verify every archived file this time (a full pass)."
    )
    slices: int = Field(
        default=24, ge=1,
        description="The archive beyond what is new is verified one slice (export_id mod N) per "
        "check, so every file is verified again every N checks.",
    )


@dg.asset_check(asset=posthog_export_contents)
def posthog_export_contents_sha256(
    config: Sha256CheckConfig, lake: LakeResource
) -> dg.AssetCheckResult:
    """Archived files exist and match their recorded sha256 and size: every file fetched since
    the last passing check, plus one rotating slice of the rest (all of it every `slices`
    checks), or every file when `full` is set."""
    store = lake.get_lake()
    state_file = store.state_dir / "checks" / "export_contents_sha256.json"
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        state = {}  # first check on this machine: verify everything once
    since = state.get("verified_through")
    turn = int(state.get("turn", 0))
    full = config.full or since is None
    bad: list[str] = []
    new = sampled = 0
    high = since
    for export_id, sha256, size, stored_path, fetched_at in store.query(
        "SELECT export_id, sha256, size_bytes, stored_path, "
        "strftime(fetched_at AT TIME ZONE 'UTC', '%Y-%m-%dT%H:%M:%S.%f') "
        "FROM posthog.export_contents"
    ):
        is_new = since is None or (fetched_at or "") > since
        if not (full or is_new or export_id % config.slices == turn % config.slices):
            continue
        if is_new:
            new += 1
            high = max(high or "", fetched_at or "")
        else:
            sampled += 1
        problem = store.files.verify(stored_path, sha256, size)
        if problem:
            bad.append(f"export {export_id}: {problem}")
    if not bad:  # a mismatch is found again by the next check: the mark stays
        state_file.parent.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps({"verified_through": high, "turn": turn + 1}))
    return dg.AssetCheckResult(
        passed=not bad,
        metadata={"files_checked": new + sampled, "new_files_checked": new,
                  "sampled_files_checked": sampled, "full_pass": full,
                  "slice": "all" if full else f"{turn % config.slices + 1}/{config.slices}",
                  "mismatches": len(bad), "first_mismatches": dg.MetadataValue.json(bad[:20])},
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
