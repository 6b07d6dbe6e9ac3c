"""What an operator reads: progress lines in the run log, and materialization metadata."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import dagster as dg

from assets._streams import Progress
from assets.metadata import sync_metadata
from resources.lake import PublishedTable
from resources.posthog_client import ClientStats


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_1m_group_sync_logs_every_interval_and_never_floods(caplog):
    clock, stats = Clock(), ClientStats()
    progress = Progress(logging.getLogger("t"), "groups", interval=15, stats=stats,
                        expected_total=1_000_000, requests_per_second=4800 / 3600, clock=clock)
    caplog.set_level(logging.INFO)
    # 10,000 pages of 100 groups, one request each, paced by the hourly budget (0.75 s/page)
    for page in range(1, 10_001):
        clock.now = page * 0.75
        stats.add(pages=1, requests=1, waited_for_budget_s=0.7)
        progress.update(groups=page * 100)
    lines = [r.getMessage() for r in caplog.records]
    assert 7500 / 15 - 2 <= len(lines) <= 7500 / 15 + 1  # one line per 15 s: no flood, no gap
    first = lines[0]
    assert "groups: 2,000 groups, 20 pages, 20 requests after 15s" in first
    assert "the rate budget is the limit" in first
    # 998,000 groups left at 100 per request, 4800 requests/hour: 9,980 requests, ~2h04m
    assert "2,000/~1,000,000 rows, about 2h04m left" in first


def test_the_heartbeat_logs_while_a_step_waits(caplog):
    caplog.set_level(logging.INFO)
    with Progress(logging.getLogger("t"), "export contents", interval=0.05) as progress:
        progress.update(force=True, downloaded=1, total=4, done=1)
        import time

        time.sleep(0.4)  # nothing calls update: the heartbeat still says where we are
    assert len(caplog.records) >= 3
    assert all("1/4 rows" in r.getMessage() for r in caplog.records)


def test_progress_shows_bytes_and_time_left_when_the_total_is_known(caplog):
    caplog.set_level(logging.INFO)
    clock, stats = Clock(), ClientStats()
    progress = Progress(logging.getLogger("t"), "export contents", stats=stats, clock=clock,
                        unit="files")
    clock.now = 20.0
    stats.add(requests=10, bytes_downloaded=5 * 1024 * 1024)
    progress.update(downloaded=5, total=20, done=5)
    (line,) = [r.getMessage() for r in caplog.records]
    assert "5 downloaded" in line and "5.0 MB downloaded" in line
    assert "5/20 files, about 1m00s left" in line
    assert "rate budget" not in line


def test_metadata_links_every_delta_table_and_lists_every_archive_state():
    now = datetime.now(UTC)
    published = [
        PublishedTable("export_contents", 4, 3, [], now, uri="/lake/posthog/export_contents"),
        PublishedTable("export_rows", 7, 9, [], now, uri="/lake/posthog/export_rows"),
    ]
    meta = sync_metadata(
        ClientStats(), published,
        preview=[{"export_id": 1, "state": "archived", "detail": "a|b"}],
        extra={"archive_state": dg.MetadataValue.json({"archived": 1, "failed": 2})},
    )
    assert meta["dagster/uri"] == dg.MetadataValue.path("/lake/posthog/export_contents")
    assert meta["dagster/table_name"] == "posthog.export_contents"
    assert meta["delta_version"] == 4
    assert meta["delta/export_rows"] == dg.MetadataValue.path("/lake/posthog/export_rows@v7")
    assert meta["archive_state"].data == {"archived": 1, "pending": 0, "failed": 2, "expired": 0}
    # `rows` is the main table's count on every asset; every table's is in rows_by_table
    assert meta["rows"] == meta["dagster/row_count"] == 3
    assert meta["rows_by_table"].data == {"export_contents": 3, "export_rows": 9}
    assert meta["content_bytes_downloaded"] == 0 and "bytes_downloaded" not in meta
    assert "a\\|b" in meta["preview"].md_str


def test_metadata_names_mean_the_same_on_every_asset():
    now = datetime.now(UTC)
    one = sync_metadata(ClientStats(), [PublishedTable("groups", 1, 5, [], now)])
    assert one["rows"] == 5 and "rows_by_table" not in one
    none = sync_metadata(ClientStats(), [])
    assert none["rows"] == 0 and isinstance(none["content_bytes_downloaded"], int)
