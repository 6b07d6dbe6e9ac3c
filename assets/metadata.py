"""What every materialization reports: rows, requests, retries, 429s, bytes, a preview, links.

Every name means the same on every asset: `rows` (= `dagster/row_count`) is always the number
of rows in the asset's main table after the sync (0 for an asset that lands no table);
`rows_by_table` (JSON) is there when the asset commits several tables; `content_bytes_downloaded`
counts export content bytes (0 on assets that fetch none, however many JSON pages they read).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

PREVIEW_ROWS = 10
_CELL_CHARS = 60


def _cell(value: Any) -> str:
    text = value.isoformat() if hasattr(value, "isoformat") else str(value if value is not None else "")
    text = text.replace("|", "\\|").replace("\n", " ").replace("\r", " ")
    return text if len(text) <= _CELL_CHARS else text[: _CELL_CHARS - 1] + "…"


def markdown_preview(rows: Sequence[Mapping[str, Any]], *, limit: int = PREVIEW_ROWS) -> str:
    """A small Markdown table of the first rows (cells shortened, pipes escaped)."""
    rows = list(rows[:limit])
    if not rows:
        return "_no rows_"
    columns = list(rows[0].keys())
    lines = [
        "| " + " | ".join(columns) + " |",
        "| " + " | ".join("---" for _ in columns) + " |",
    ]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def sync_metadata(
    stats: Any,
    published: Sequence[Any],
    *,
    preview: Sequence[Mapping[str, Any]] = (),
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Materialization metadata from the client's counters and the tables just published."""
    first = published[0] if published else None
    meta: dict[str, Any] = {
        "dagster/row_count": first.rows if first else 0,
        "rows": first.rows if first else 0,
        "pages": stats.pages,
        "requests": stats.requests,
        "retries": stats.retries,
        "throttled_429s": stats.throttled,
        "content_bytes_downloaded": stats.bytes_downloaded,
        "seconds_waiting_for_rate_budget": round(stats.waited_for_budget_s, 2),
        "snapshot_id": first.snapshot_id if first else "",
        "preview": dg.MetadataValue.md(markdown_preview(preview)),
    }
    if len(published) > 1:
        meta["rows_by_table"] = dg.MetadataValue.json({t.name: t.rows for t in published})
    # where each Delta table just committed lives: `dagster/uri` for the asset's main table,
    # `delta/<table>` for every table it commits, with the version (for time travel)
    for i, table in enumerate(published):
        if not table.uri:
            continue
        if i == 0:
            meta["dagster/uri"] = dg.MetadataValue.path(table.uri)
            meta["dagster/table_name"] = f"posthog.{table.name}"
            meta["delta_version"] = table.version if table.version is not None else -1
        if len(published) > 1:
            meta[f"delta/{table.name}"] = dg.MetadataValue.path(
                f"{table.uri}@v{table.version}")
    for table in published:
        meta.update(table.extra)
    if extra:
        meta.update(extra)
    if "archive_state" in meta:
        meta["archive_state"] = _archive_state(meta["archive_state"])
    # Dagster metadata values must be JSON-able; keep anything odd as text
    for key, value in list(meta.items()):
        if not isinstance(value, str | int | float | bool | dg.MetadataValue):
            meta[key] = json.dumps(value, default=str)
    return meta


ARCHIVE_STATES = ("archived", "pending", "failed", "expired")


def _archive_state(value: Any) -> Any:
    """Every archive state with its count (zeros included), so an operator sees at a glance that
    nothing is pending, failed or expired."""
    counts = getattr(value, "data", value)
    if not isinstance(counts, Mapping):
        return value
    full = {state: int(counts.get(state, 0)) for state in ARCHIVE_STATES}
    full.update({k: int(v) for k, v in counts.items() if k not in full})
    return dg.MetadataValue.json(full)
