"""The groups assets against the simulator over HTTP: what they ask PostHog for and what lands."""

from __future__ import annotations

import json
from urllib.parse import parse_qs

import pyarrow.parquet as pq
import pytest

from tests.helpers import start_sim


def test_property_values_fetch_every_defined_key_by_default(tmp_path) -> None:
    with start_sim(tmp_path, groups_per_type=(30, 5), n_exports=0,
                   property_keys_per_type=40) as env:
        env.sync(select=["posthog_group_types", "posthog_group_property_definitions",
                         "posthog_group_property_values"])
        defined = set(env.query(
            "SELECT group_type_index, name FROM posthog.group_property_definitions "
            "WHERE extra IS NULL OR NOT coalesce(CAST(extra->>'virtual' AS BOOLEAN), false)"))
        assert len(defined) > 2 * 25  # more than the old cap of 25 per type
        asked = {
            (int(q["group_type_index"][0]), q["key"][0])
            for q in (parse_qs(r.query) for r in env.sim.request_log
                      if r.path.endswith("groups/property_values/"))
        }
        assert asked == defined

        # the cap stays, opt-in
        before = len(env.sim.request_log)
        env.sync(select=["posthog_group_property_values"], run_config={"ops": {
            "posthog_group_property_values": {"config": {"max_keys_per_type": 3}}}})
        capped = [r for r in env.sim.request_log[before:]
                  if r.path.endswith("groups/property_values/")]
        assert len(capped) == 2 * 3


def test_groups_fails_naming_the_type_cursor_and_reason_when_posthog_cannot_render_a_page(
        tmp_path) -> None:
    from tests.helpers import failure_text

    with start_sim(tmp_path, groups_per_type=(250, 30), n_exports=0) as env:
        ds = env.sim.dataset
        # stored by PostHog, but its renderer (orjson) refuses it: the page is a 500, every time
        ds.insert_group(0, "zz-huge", {"n": 2 ** 64})
        name = ds.group_types()[0]["group_type"]
        result = env.sync(select=["posthog_group_types", "posthog_groups"], raise_on_error=False)
        assert not result.success
        text = failure_text(result)
        assert f"group type 0 ({name!r})" in text, text
        assert "cursor" in text and "group_key" in text or "first page" in text, text
        assert "500 on all" in text and "[-2^63, 2^64)" in text, text
        pages = [r for r in env.sim.request_log if r.path.endswith("/groups/") and r.status == 500]
        assert len(pages) > 1  # retried: PostHog's 500 does not say why


def test_property_definitions_land_posthogs_virtual_properties_flagged_in_extra(tmp_path) -> None:
    with start_sim(tmp_path, groups_per_type=(20, 5), n_exports=0) as env:
        env.sync(select=["posthog_group_types", "posthog_group_property_definitions",
                         "posthog_group_property_values"])
        virtual = env.query(
            "SELECT group_type_index, name, id, is_numerical, extra::VARCHAR "
            "FROM posthog.group_property_definitions WHERE extra->>'virtual' = 'true' ORDER BY 1, 2")
        assert [(i, n, pid, num) for i, n, pid, num, _ in virtual] == [
            (i, n, f"$builtin_{n}", True)
            for i in (0, 1) for n in ("$virt_revenue", "$virt_revenue_last_30_days")]
        assert all(json.loads(x)["virtual"] is True for *_, x in virtual)
        real = env.query("SELECT count(*) FROM posthog.group_property_definitions "
                         "WHERE extra IS NULL OR extra->>'virtual' IS NULL")[0][0]
        assert real == sum(len(env.sim.dataset.property_definitions(i)) for i in (0, 1))
        # no values to ask for: PostHog computes them at query time
        asked = [parse_qs(r.query)["key"][0] for r in env.sim.request_log
                 if r.path.endswith("groups/property_values/")]
        assert asked and not [k for k in asked if k.startswith("$virt_")]


@pytest.mark.parametrize("source", ["query", "rest"])
def test_wide_group_properties_sync_within_bounded_memory_and_land_exactly(
        tmp_path, source) -> None:
    """PostHog does not bound a group's properties. 2,500 groups of 24 KB (60 MB) used to fill
    one staged row group, more than DuckDB was given to copy the first history. Row groups now
    end at 8 MB as well as at 5,000 rows, delta-rs writes the history's merges the same way,
    and both syncs land every byte."""
    from resources.lake import BATCH_BYTES
    from tests.helpers import expected_groups, landed_groups

    with start_sim(tmp_path, groups_per_type=(5, 0, 0), n_exports=0) as env:
        for i in range(2_500):
            env.sim.dataset.insert_group(0, f"wide-{i}", {"blob": f"{i:05d}" * 4_800})
        for sync in (1, 2):
            if sync == 2:  # a third of them change: the history's merge path
                for i in range(0, 2_500, 3):
                    env.sim.dataset.insert_group(0, f"wide-{i}", {"blob": "z" * 24_000, "n": i})
            env.sync(select=["posthog_group_types", "posthog_groups"], groups_source=source)
            expected = expected_groups(env.sim)
            landed = landed_groups(env)
            assert landed.keys() == expected.keys()
            assert all(landed[k]["group_properties"] == g["group_properties"]
                       for k, g in expected.items())
            (versions,) = env.query("SELECT count(*) FROM posthog.groups_history")[0]
            assert versions == 2_505 + (834 if sync == 2 else 0)
            lake = env.lake()
            for name in ("groups", "groups_history"):
                for uri in lake.location.data_files(lake.table(name)):
                    metadata = pq.read_metadata(lake.location.fs_path(uri))
                    for g in range(metadata.num_row_groups):
                        # about the bound (DuckDB's is approximate, delta-rs counts rows)
                        assert metadata.row_group(g).total_byte_size < 1.5 * BATCH_BYTES
