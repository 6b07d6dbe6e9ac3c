"""Asset checks that read the warehouse and the archived files."""


import json
from datetime import UTC, datetime, timedelta

import dagster as dg
from pydantic import Field

from assets.exports import expiring_unarchived
from assets.project import SINGLE, Project
from resources.lake import LakeResource, count_distinct_keys


def project_checks(project: Project = SINGLE) -> list[dg.AssetChecksDefinition]:
    """The asset checks of one project's assets (see assets/project.py)."""
    groups, contents = project.key("posthog_groups"), project.key("posthog_export_contents")

    @dg.asset_check(asset=groups, name="posthog_groups_unique_key", blocking=True)
    def posthog_groups_unique_key(lake: LakeResource) -> dg.AssetCheckResult:
        """The project's rows of posthog.groups have no two sharing (group_type_index,
        group_key) and no NULL key. It runs after the commit (blocking stops downstream assets,
        not the commit); what it guards is the lake's own dedupe, which keeps the last row of
        each key before the commit and reports how many it dropped as `duplicates_dropped`. A
        listing that came back short is stopped before the commit by the volume guard
        (`max_row_drop`)."""
        return groups_unique_key(lake, project)

    @dg.asset_check(asset=contents, name="posthog_export_contents_sha256")
    def posthog_export_contents_sha256(
        config: Sha256CheckConfig, lake: LakeResource
    ) -> dg.AssetCheckResult:
        """Archived files exist and match their recorded sha256 and size: every file fetched
        since the last passing check, plus one rotating slice of the rest (all of it every
        `slices` checks), or every file when `full` is set."""
        return contents_sha256(config, lake, project)

    # on the contents asset (which archives), after both: checked before archiving, every sync
    # would warn about exports it was just about to archive
    @dg.asset_check(asset=contents, name="posthog_exports_expiring_unarchived",
                    additional_deps=[project.key("posthog_exports")])
    def posthog_exports_expiring_unarchived(lake: LakeResource) -> dg.AssetCheckResult:
        """Warns when an export with content expires within 24 hours and is not archived
        yet."""
        return exports_expiring_unarchived(lake, project)

    return [posthog_groups_unique_key, posthog_export_contents_sha256,
            posthog_exports_expiring_unarchived]


def _project_id(project: Project) -> int | None:
    """The project's id as its rows carry it; None for the one project of a lake that has no
    other (its rows are every row)."""
    return int(project.config.project_id) if project.several and project.config else None


def groups_unique_key(lake: LakeResource, project: Project) -> dg.AssetCheckResult:
    store = lake.get_lake()
    project_id = _project_id(project)
    rows_of = "posthog.groups" if project_id is None else \
        f"(SELECT * FROM posthog.groups WHERE project_id = {project_id:d})"
    rows, distinct = count_distinct_keys(
        lambda sql: store.query(sql)[0], rows_of, "project_id, group_type_index, group_key"
    )
    (null_keys,), = store.query(f"SELECT count(*) FROM {rows_of} WHERE group_key IS NULL")
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


def contents_sha256(config: Sha256CheckConfig, lake: LakeResource, project: Project
                    ) -> dg.AssetCheckResult:
    store = lake.get_lake()
    project_id = _project_id(project)
    state_file = store.state_dir / "checks" / (
        "export_contents_sha256.json" if project_id is None
        else f"export_contents_sha256-{project_id:d}.json")
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
        "FROM posthog.export_contents WHERE ?::BIGINT IS NULL OR project_id = ?",
        [project_id, project_id],
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


def exports_expiring_unarchived(lake: LakeResource, project: Project) -> dg.AssetCheckResult:
    store = lake.get_lake()
    rows = expiring_unarchived(store, datetime.now(UTC) + timedelta(hours=24),
                               _project_id(project))
    return dg.AssetCheckResult(
        passed=not rows,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "expiring_unarchived": len(rows),
            "first": dg.MetadataValue.json(
                [{"project_id": p, "id": i, "format": f, "expires_after": str(e)}
                 for p, i, f, e in rows[:20]]
            ),
        },
    )
