"""Asset checks against a real sync over HTTP: what each one verifies, run after run."""

from __future__ import annotations

from tests.helpers import start_sim


def _sha256_check(result) -> dict:
    [evaluation] = [e for e in result.get_asset_check_evaluations()
                    if e.check_name == "posthog_export_contents_sha256"]
    return {"passed": evaluation.passed,
            **{k: v.value for k, v in evaluation.metadata.items()}}


def test_sha256_check_verifies_what_is_new_plus_a_rotating_slice(tmp_path) -> None:
    with start_sim(tmp_path, groups_per_type=(1,), n_exports=40) as env:
        select = ["posthog_exports", "posthog_export_contents"]
        first = _sha256_check(env.sync(select=select))
        archived = env.query("SELECT count(*) FROM posthog.export_contents")[0][0]
        assert archived > 20
        assert first["passed"] and first["files_checked"] == archived == first["new_files_checked"]

        # nothing new: only one slice of the archive (export_id mod 24) is read again
        second = _sha256_check(env.sync(select=select))
        ids = [i for (i,) in env.query("SELECT export_id FROM posthog.export_contents")]
        assert second["passed"] and second["new_files_checked"] == 0
        assert second["files_checked"] == sum(1 for i in ids if i % 24 == 1) < archived
        assert second["slice"] == "2/24"

        # a new file is verified, with the next slice
        env.sim.dataset.create_export(1, "text/csv", None, None,
                                      {"source": {"kind": "HogQLQuery", "query": "select 1"}})
        third = _sha256_check(env.sync(select=select))
        assert third["new_files_checked"] == 1
        assert third["sampled_files_checked"] == sum(1 for i in ids if i % 24 == 2)

        # a full pass on demand
        full = _sha256_check(env.sync(select=select, run_config={"ops": {
            "posthog_export_contents_posthog_export_contents_sha256": {"config": {"full": True}}}}))
        assert full["full_pass"] and full["files_checked"] == archived + 1


def test_sha256_check_finds_a_corrupted_file_in_its_slice(tmp_path) -> None:
    with start_sim(tmp_path, groups_per_type=(1,), n_exports=12) as env:
        select = ["posthog_exports", "posthog_export_contents"]
        assert _sha256_check(env.sync(select=select))["passed"]
        export_id, stored = env.query(
            "SELECT export_id, stored_path FROM posthog.export_contents ORDER BY 1 LIMIT 1")[0]
        (env.lake_root / stored).write_bytes(b"not what PostHog served")
        config = {"ops": {"posthog_export_contents_posthog_export_contents_sha256": {
            "config": {"slices": 1}}}}  # every file is in the one slice
        check = _sha256_check(env.sync(select=select, run_config=config))
        assert not check["passed"] and check["mismatches"] == 1
        assert f"export {export_id}" in check["first_mismatches"][0]
