"""Exported assets: metadata, archived bytes, parsed CSV/XLSX/JSON rows, and requested exports."""


import json
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any, BinaryIO

import dagster as dg
import pyarrow as pa
from pydantic import Field

from assets._streams import Progress, asset_sync
from assets.groups import KINDS, SyncConfig
from assets.metadata import sync_metadata
from assets.project import SINGLE, Project
from assets.tables import (
    EXPORT_ARCHIVE,
    EXPORT_CONTENTS,
    EXPORT_ROWS,
    EXPORTS,
    REQUESTED_EXPORTS_SCHEMA,
    export_row,
    table_metadata,
    to_json,
)
from assets.tabular import JSONL_FORMAT, TABULAR_FORMATS, iter_json_rows
from resources.errors import PostHogError, PostHogNotFoundError
from resources.lake import LakeResource
from resources.posthog import POSTHOG_POOL, PostHogResource

# rows of one export held in memory at once; bigger files are parsed twice instead
_PARSE_BUFFER = 20_000

EXPORT_FORMATS = (
    "image/png",
    "application/pdf",
    "text/csv",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "video/webm",
    "video/mp4",
    "image/gif",
    "application/json",
)


class ExportRequest(dg.Config):
    export_format: str = Field(description="MIME type, e.g. text/csv or image/png.")
    insight: int | None = Field(default=None, description="Insight id to export.")
    dashboard: int | None = Field(default=None, description="Dashboard id to export.")
    export_context: dict[str, Any] | None = Field(
        default=None, description="PostHog export_context (e.g. a HogQL `source` for CSV)."
    )


class RequestedExportsConfig(SyncConfig):
    requests: list[ExportRequest] = Field(
        default_factory=list,
        description="Exports to create on each run (POST /exports/). Empty: nothing is created.",
    )
    wait_timeout_seconds: float = Field(
        default=1800.0, description="How long to wait for one export to get content or fail."
    )
    poll_interval_seconds: float = Field(
        default=5.0, description="Seconds between polls of an export that is still rendering."
    )


class ContentsConfig(SyncConfig):
    max_concurrent_downloads: int = Field(
        default=4, description="Content downloads in flight at once (all inside the rate budget)."
    )
    parse_tabular: bool = Field(
        default=True,
        description="Parse CSV/XLSX/JSON/JSON Lines contents into posthog.export_rows.",
    )


# Exports expire (CSV/XLSX after 7 days) and groups don't: when one run does both, the executor
# starts the export steps first, so a long group crawl never delays archiving.
EXPORTS_FIRST = {"dagster/priority": "1"}


def export_assets(project: Project = SINGLE) -> list[dg.AssetsDefinition]:
    """The export assets of one project (see assets/project.py)."""
    where = {"key_prefix": project.prefix, "group_name": project.group_name,
             "pool": POSTHOG_POOL, "op_tags": EXPORTS_FIRST}

    @dg.asset(name="posthog_requested_exports", kinds={"posthog"}, **where,
              metadata={"dagster/column_schema": REQUESTED_EXPORTS_SCHEMA, **project.metadata})
    def posthog_requested_exports(
        context: dg.AssetExecutionContext, config: RequestedExportsConfig,
        posthog: PostHogResource,
    ) -> dg.MaterializeResult:
        """Creates the configured exports and waits until each has content or fails.
        Endpoint: POST /api/projects/:id/exports/ (then GET .../exports/:id/ to poll)"""
        return request_exports(context, config, posthog, project)

    @dg.asset(name="posthog_exports", kinds=KINDS, deps=[posthog_requested_exports], **where,
              metadata={**table_metadata(EXPORTS), **project.metadata})
    def posthog_exports(
        context: dg.AssetExecutionContext, config: SyncConfig, posthog: PostHogResource,
        lake: LakeResource,
    ) -> dg.MaterializeResult:
        """Metadata of every exported asset ever seen; exports PostHog no longer lists
        (expired) stay, with `listed = false`. Endpoint: GET /api/projects/:id/exports/"""
        return sync_exports(context, config, posthog, lake, project)

    @dg.asset(name="posthog_export_contents", kinds=KINDS, deps=[posthog_exports], **where,
              metadata={**table_metadata(EXPORT_CONTENTS), **project.metadata},
              freshness_policy=dg.FreshnessPolicy.time_window(
                  warn_window=ARCHIVE_WARN_WINDOW, fail_window=ARCHIVE_FAIL_WINDOW),
              # new export metadata, however it landed (a manual run of posthog_exports, the
              # requested-exports job), is archived at once rather than at the next hourly
              # tick; acted on by posthog_automation_sensor (pipelines/sensors.py), off until
              # switched on
              automation_condition=dg.AutomationCondition.eager())
    def posthog_export_contents(
        context: dg.AssetExecutionContext, config: ContentsConfig, posthog: PostHogResource,
        lake: LakeResource,
    ) -> dg.MaterializeResult:
        """Archives the bytes of every export that has content and is not archived yet
        (content-addressed under LAKE_ROOT), and parses CSV/XLSX/JSON into
        `posthog.export_rows`. Endpoint: GET /api/projects/:id/exports/:id/content/ (302 to
        storage)"""
        return archive_export_contents(context, config, posthog, lake, project)

    return [posthog_requested_exports, posthog_exports, posthog_export_contents]


def request_exports(context: dg.AssetExecutionContext, config: RequestedExportsConfig,
                    posthog: PostHogResource, project: Project) -> dg.MaterializeResult:
    results: list[dict[str, Any]] = []
    with posthog.get_client(logger=context.log, project=project.config) as client:
        for request in config.requests:
            if request.export_format not in EXPORT_FORMATS:
                raise dg.Failure(
                    f"requested export format {request.export_format!r} is not one PostHog "
                    f"accepts; use one of {', '.join(EXPORT_FORMATS)}"
                )
            created = client.create_export(
                export_format=request.export_format,
                insight=request.insight,
                dashboard=request.dashboard,
                export_context=request.export_context,
            )
            if not created.get("has_content") and not created.get("exception"):
                created = client.wait_for_export(
                    created["id"], poll_interval=config.poll_interval_seconds,
                    timeout=config.wait_timeout_seconds,
                )
            state = "ready" if created.get("has_content") else "failed"
            context.log.info("export %s (%s): %s", created.get("id"), request.export_format, state)
            results.append(
                {
                    "id": created.get("id"),
                    "export_format": created.get("export_format"),
                    "insight": created.get("insight"),
                    "dashboard": created.get("dashboard"),
                    "state": state,
                    "exception": created.get("exception"),
                }
            )
    failed = [r for r in results if r["state"] == "failed"]
    meta = sync_metadata(client.stats, [], preview=results)
    meta.update({"exports_requested": len(results), "exports_failed": len(failed)})
    return dg.MaterializeResult(metadata=meta)


def sync_exports(context: dg.AssetExecutionContext, config: SyncConfig, posthog: PostHogResource,
                 lake: LakeResource, project: Project) -> dg.MaterializeResult:
    synced_at = datetime.now(UTC)
    with asset_sync(context, config, posthog, lake, project) as (store, client):
        previous = {r["id"]: r for r in store.read_current(EXPORTS).to_pylist()}
        rows: dict[int, dict[str, Any]] = {}
        for obj in client.iter_exports():
            row = export_row(obj, seen_at=synced_at)
            if row["id"] is None:
                raise dg.Failure(f"GET exports/ returned an export without an id: {to_json(obj)[:200]}")
            if row["id"] in previous:
                row["first_seen_at"] = previous[row["id"]]["first_seen_at"]
            rows[row["id"]] = row
        new = [i for i in rows if i not in previous]
        gone = []
        for export_id, old in previous.items():
            if export_id not in rows:
                old = {k: v for k, v in old.items() if k != "synced_at"}
                old["listed"] = False
                rows[export_id] = old
                gone.append(export_id)
        ordered = sorted(rows.values(), key=lambda r: r["id"], reverse=True)
        with store.writer(EXPORTS, synced_at=synced_at) as writer:
            writer.write_rows(ordered)
        published = store.publish([writer], run_id=context.run.run_id,
                                  asset=context.asset_key.to_user_string(),
                                  max_drop=config.max_row_drop)
    listed = [r for r in ordered if r["listed"]]
    return dg.MaterializeResult(
        metadata=sync_metadata(
            client.stats, published, preview=listed,
            extra={
                "exports_listed": len(listed),
                "exports_new": len(new),
                "exports_no_longer_listed": len(gone),
                "formats": dg.MetadataValue.json(dict(Counter(r["export_format"] for r in listed))),
            },
        )
    )


def expiring_unarchived(store: Any, before: datetime, project_id: int | None = None
                        ) -> list[tuple[int, int, str, datetime]]:
    """(project_id, id, format, expires_after) of listed exports with content, unarchived,
    expiring before `before`: of every project, or of `project_id`."""
    if not store.has_table(EXPORTS.name):
        return []
    archived = (
        f"AND NOT EXISTS (SELECT 1 FROM posthog.{EXPORT_CONTENTS.name} c "
        f"WHERE c.project_id = e.project_id AND c.export_id = e.id) "
        if store.has_table(EXPORT_CONTENTS.name) else ""
    )
    return store.query(
        f"SELECT e.project_id, e.id, e.export_format, e.expires_after "
        f"FROM posthog.{EXPORTS.name} e "
        f"WHERE e.listed AND e.has_content AND e.expires_after < ? "
        f"AND (?::BIGINT IS NULL OR e.project_id = ?) {archived}"
        f"ORDER BY e.expires_after, e.project_id, e.id",
        [before, project_id, project_id],
    )


def _state(export: dict[str, Any]) -> tuple[str, str | None]:
    if export.get("exception"):
        return "failed", export["exception"]
    if not export.get("listed", True):
        return "expired", "PostHog no longer lists this export; its content was not archived"
    if not export.get("has_content"):
        return "pending", "no content yet"
    return "available", None


# The archive is late when it has not run for a while: every run archives every export with
# content, so an export created more than ARCHIVE_FAIL_WINDOW ago may still be unarchived. The
# hourly schedule keeps it well inside; the UI marks it WARN after 2 h and FAIL after 6 h.
ARCHIVE_WARN_WINDOW = timedelta(hours=2)
ARCHIVE_FAIL_WINDOW = timedelta(hours=6)


def archive_export_contents(context: dg.AssetExecutionContext, config: ContentsConfig,
                            posthog: PostHogResource, lake: LakeResource, project: Project
                            ) -> dg.MaterializeResult:
    synced_at = datetime.now(UTC)
    with asset_sync(context, config, posthog, lake, project) as (store, client):
        exports = {r["id"]: r for r in store.read_current(EXPORTS).to_pylist()}
        archived = {
            r["export_id"]
            for r in store.read_current(EXPORT_CONTENTS, columns=["export_id"]).to_pylist()
        }
        states: dict[int, tuple[str, str | None]] = {}
        todo: list[dict[str, Any]] = []
        for export_id, export in exports.items():
            if export_id in archived:
                states[export_id] = ("archived", None)
                continue
            state, detail = _state(export)
            if state == "pending" and export.get("listed", True) and _is_dataset_export(export):
                states[export_id] = ("pending", _DATASET_PENDING)
                continue
            if state == "pending" and export.get("listed", True):
                # video exports render asynchronously: one poll per sync tells us if they are ready
                try:
                    fresh = client.get_export(export_id)
                except PostHogNotFoundError:
                    states[export_id] = ("expired", "PostHog answered 404 for this export")
                    continue
                export = {**export, "has_content": fresh.get("has_content"),
                          "exception": fresh.get("exception")}
                state, detail = _state(export)
            if state == "available":
                todo.append(export)
            else:
                states[export_id] = (state, detail)

        failures: list[str] = []
        rows_by_export: Counter[int] = Counter()
        with store.writer(EXPORT_CONTENTS, synced_at=synced_at) as contents_writer, \
                store.writer(EXPORT_ROWS, synced_at=synced_at) as rows_writer, \
                Progress(context.log, "export contents", stats=client.stats, unit="files",
                         requests_per_second=client.budget_rate) as progress:

            def fetch(export: dict[str, Any]) -> tuple[Any, str]:
                # download and file away in the worker: the main thread only parses and writes
                download = client.download_export_content(export["id"], store.new_tmp_file())
                return download, store.store_content(download.path, download.sha256)

            with ThreadPoolExecutor(max_workers=max(1, config.max_concurrent_downloads)) as pool:
                running: dict[Future, dict[str, Any]] = {}
                queue = list(todo)
                while queue or running:
                    while queue and len(running) < config.max_concurrent_downloads * 2:
                        export = queue.pop()
                        running[pool.submit(fetch, export)] = export
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        export = running.pop(future)
                        export_id = export["id"]
                        try:
                            download, stored_path = future.result()
                        except PostHogNotFoundError:
                            states[export_id] = (
                                ("pending", "content/ answered 404; " + _DATASET_PENDING)
                                if _is_dataset_export(export) else _after_404(client, export_id)
                            )
                            continue
                        except PostHogError as exc:
                            failures.append(f"export {export_id}: {exc}")
                            states[export_id] = ("error", str(exc))
                            continue
                        contents_writer.write_rows([{
                            "export_id": export_id,
                            "sha256": download.sha256,
                            "size_bytes": download.size_bytes,
                            "content_type": download.content_type,
                            "export_format": export.get("export_format"),
                            "stored_path": stored_path,
                            "fetched_at": datetime.now(UTC),
                        }])
                        states[export_id] = ("archived", None)
                        if config.parse_tabular and export.get("export_format") in TABULAR_FORMATS:
                            rows_writer.cover([export_id])
                            detail = _parse_rows(
                                lambda path=stored_path: store.open_content(path), export,
                                rows_writer, rows_by_export,
                            )
                            if detail:
                                states[export_id] = ("archived", detail)
                        progress.update(archived=contents_writer.rows_written,
                                        total=len(todo), done=len(todo) - len(queue) - len(running))

        with store.writer(EXPORT_ARCHIVE, synced_at=synced_at) as archive_writer:
            archive_writer.write_rows(
                {
                    "export_id": export_id,
                    "state": state,
                    "detail": detail,
                    "export_format": exports[export_id].get("export_format"),
                    "expires_after": exports[export_id].get("expires_after"),
                    "checked_at": synced_at,
                }
                for export_id, (state, detail) in sorted(states.items())
            )
        # Archived bytes are complete and exact even when other downloads failed: publish them
        # so they survive PostHog's expiry, then fail loudly about the rest. Commit order is what
        # makes a kill at any instant safe: an export's rows first (replaced per export_id), then
        # its export_contents row, which is what "archived" is read from; then the states.
        published = store.publish(
            [rows_writer, contents_writer, archive_writer],
            run_id=context.run.run_id, asset=context.asset_key.to_user_string(),
            max_drop=config.max_row_drop,
        )
        published.sort(key=lambda t: t.name != EXPORT_CONTENTS.name)  # the asset's table first
    state_counts = Counter(state for state, _ in states.values())
    if failures:
        raise dg.Failure(
            f"{len(failures)} export download(s) failed after retries; the "
            f"{contents_writer.rows_written} that succeeded were archived. First: {failures[0]}",
            metadata={"failures": dg.MetadataValue.json(failures[:50])},
        )
    return dg.MaterializeResult(
        metadata=sync_metadata(
            client.stats, published,
            preview=[
                {"export_id": i, "state": s, "detail": d} for i, (s, d) in sorted(states.items())
            ],
            extra={
                "archive_state": dg.MetadataValue.json(dict(state_counts)),
                "contents_archived_now": contents_writer.rows_written,
                "export_rows_written": rows_writer.rows_written,
            },
        )
    )


# PostHog answers 404 to retrieve for a dataset export ("if instance.is_dataset_export and
# self.action != 'content': raise NotFound()", products/exports/backend/api/exports.py), so only
# the listing can tell it expired (`listed = false`)
_DATASET_PENDING = "a dataset export cannot be retrieved; the next listing tells if it expired"


def _is_dataset_export(export: dict[str, Any]) -> bool:
    """A JSON Lines export made by the datasets API (its context names the dataset)."""
    if export.get("export_format") != JSONL_FORMAT:
        return False
    context = export.get("export_context")
    try:
        context = json.loads(context) if isinstance(context, str) else context
    except ValueError:
        return False
    return isinstance(context, dict) and "dataset_id" in context


def _after_404(client: Any, export_id: int) -> tuple[str, str | None]:
    """content/ said 404: the export expired since it was listed, or has no content yet."""
    try:
        fresh = client.get_export(export_id)
    except PostHogNotFoundError:
        return "expired", "expired between listing and download (404)"
    if fresh.get("exception"):
        return "failed", fresh["exception"]
    return "pending", "content/ answered 404: no content yet"


def _parse_rows(source: Callable[[], BinaryIO], export: dict[str, Any], writer: Any,
                counts: Counter[int]) -> str | None:
    """Append the export's data rows, all or none; a file that does not parse is kept, noted."""
    export_id = export["id"]
    fmt = export["export_format"]
    try:
        rows = iter_json_rows(source, fmt)
        head = list(islice(rows, _PARSE_BUFFER))
        tail = sum(1 for _ in rows)  # parse the rest before writing anything: no partial exports
    except Exception as exc:  # csv, UnicodeDecodeError, and openpyxl's assorted errors alike
        return f"archived, but its rows could not be parsed: {type(exc).__name__}: {exc}"
    _write_rows(writer, export_id, head, first=1)
    if tail:
        rest = islice(iter_json_rows(source, fmt), _PARSE_BUFFER, None)
        first = _PARSE_BUFFER + 1
        while batch := list(islice(rest, _PARSE_BUFFER)):
            _write_rows(writer, export_id, batch, first=first)
            first += len(batch)
    counts[export_id] = len(head) + tail
    return None


def _write_rows(writer: Any, export_id: int, rows: list[str], *, first: int) -> None:
    if rows:
        writer.write_batch(pa.table({
            "export_id": pa.array([export_id] * len(rows), pa.int64()),
            "row_number": pa.array(range(first, first + len(rows)), pa.int64()),
            "row": pa.array(rows, pa.string()),
        }))
