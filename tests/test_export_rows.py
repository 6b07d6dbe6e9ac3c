"""Export files become posthog.export_rows: any CSV cell size, JSON Lines and JSON arrays, and
dataset exports (which PostHog will not retrieve) are never recorded as expired."""

from __future__ import annotations

import json
import time

import dagster as dg

from assets.tabular import CSV_FORMAT, iter_json_rows
from tests.helpers import expected_export_rows, start_sim

JSONL = JSONL_FORMAT = "application/x-ndjson"
JSON_FORMAT = "application/json"


def test_tabular_csv_cell_over_128_kib_is_parsed(tmp_path) -> None:
    # the csv module's default field_size_limit is 128 KiB (131072); parsing raises it for good,
    # so the size is spelled out rather than read back
    big = "x" * (131_072 + 1) + "\u00e9"
    path = tmp_path / "big.csv"
    path.write_text(f'a,b\n1,"{big}"\n2,small\n', encoding="utf-8")
    rows = [json.loads(r) for r in iter_json_rows(path, CSV_FORMAT)]
    assert rows == [{"a": "1", "b": big}, {"a": "2", "b": "small"}]


def test_tabular_json_lines_and_json_arrays_become_one_row_per_record(tmp_path) -> None:
    lines = [b'{"id":"i1","n":9007199254740993,"f":1e16,"s":"\\u2028\xe2\x80\xa9"}',
             b"", b'{"z":1,"a":{"b":[1,2]},"x":null}', b"  ", b'{"id":"i3"}']
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_bytes(b"\n".join(lines) + b"\n")
    rows = list(iter_json_rows(jsonl, JSONL_FORMAT))
    assert len(rows) == 3
    assert json.loads(rows[0])["n"] == 2**53 + 1  # exact
    assert json.loads(rows[0]) == json.loads(lines[0])
    assert list(json.loads(rows[1])) == ["z", "a", "x"]  # key order kept
    array = tmp_path / "a.json"
    array.write_bytes(b'[{"a":1},[2,3],"four",null,18446744073709551617]')
    assert [json.loads(r) for r in iter_json_rows(array, JSON_FORMAT)] == [
        {"a": 1}, [2, 3], "four", None, 18446744073709551617]
    document = tmp_path / "o.json"
    document.write_bytes(b'{"results":[{"x":1}]}')
    assert [json.loads(r) for r in iter_json_rows(document, JSON_FORMAT)] == [
        {"results": [{"x": 1}]}]


def test_export_contents_lands_json_lines_records_as_rows(tmp_path) -> None:
    with start_sim(tmp_path, groups_per_type=(1,), n_exports=4, dataset_exports=2) as env:
        env.sync(select=["posthog_exports", "posthog_export_contents"])
        ds = env.sim.dataset
        jsonl = [e["id"] for e in ds.exports(1) if e["export_format"] == JSONL]
        assert len(jsonl) == 2
        for export_id in jsonl:
            rows = env.query("SELECT row::VARCHAR FROM posthog.export_rows WHERE export_id = ? "
                             "ORDER BY row_number", [export_id])
            want = expected_export_rows(ds.export_content(export_id), JSONL)
            assert len(want) == 12 and [json.loads(r[0]) for r in rows] == want
        states = dict(env.query("SELECT export_id, state FROM posthog.export_archive"))
        assert all(states[i] == "archived" for i in jsonl)


def test_export_contents_never_records_a_dataset_export_as_expired(tmp_path) -> None:
    with start_sim(tmp_path, groups_per_type=(1,), n_exports=2, dataset_exports=2) as env:
        ds = env.sim.dataset
        pending, gone = [e["id"] for e in ds.exports(1) if e["export_format"] == JSONL]
        # listed without content, and too young to be reported stuck: pending
        ds.set_export_state(pending, has_content=False)
        ds.export_record(pending).created_at = time.time()
        env.sync(select=["posthog_exports"])
        ds.set_export_state(gone, has_content=False)  # content/ now 404s after being listed
        env.sync(select=["posthog_export_contents"])
        states = {i: (s, d) for i, s, d in env.query(
            "SELECT export_id, state, detail FROM posthog.export_archive")}
        for export_id in (pending, gone):
            assert states[export_id][0] == "pending", states[export_id]
            assert "dataset export" in states[export_id][1]
        # PostHog 404s retrieve for dataset exports: it is never asked
        assert not [r for r in env.sim.request_log
                    if r.path.rstrip("/").endswith((f"exports/{pending}", f"exports/{gone}"))]


def test_exports_keep_a_wrong_typed_field_in_extra_and_warn_once(tmp_path) -> None:
    with start_sim(tmp_path, groups_per_type=(1,), n_exports=6) as env:
        ds = env.sim.dataset
        ids = [e["id"] for e in ds.exports(1)][:3]
        for export_id in ids:  # PostHog changes a field's type: an object where an id was
            ds.export_record(export_id).dashboard = {"id": 45}
        instance = dg.DagsterInstance.ephemeral()
        result = env.sync(select=["posthog_exports"], instance=instance)
        rows = env.query("SELECT id, dashboard, extra::VARCHAR FROM posthog.exports "
                         "WHERE list_contains(?, id) ORDER BY id", [ids])
        assert [(i, d, json.loads(x)["dashboard_unparsed"]) for i, d, x in rows] == [
            (i, None, {"id": 45}) for i in sorted(ids)]
        warned = [e.user_message for e in instance.all_logs(result.run_id)
                  if "`dashboard`" in (e.user_message or "")]
        assert len(warned) == 1, warned  # once per field per sync, in the run's log
