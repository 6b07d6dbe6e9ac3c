"""A sync killed at every commit boundary: every table stays at its old Delta version or a new
one, no export is archived without all its rows, and the next sync lands exactly what the API
holds. The kill is deterministic (``POSTHOG_PIPELINE_KILL_AT``, see resources/lake/faults.py):
the contract command dies with ``os._exit`` right before or right after the named commit.

Random-timing SIGKILL trials are in the long suite (``python -m reliability``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reliability.scenarios import cli_env, run_cli_sync
from reliability.verify import verify_exact, verify_snapshots
from resources.lake.faults import KILL_AT
from tests.helpers import failure_text, start_sim

# every table a full sync commits, in the order it commits them (exports first: they expire)
COMMIT_ORDER = [
    "exports", "export_rows", "export_contents", "export_archive", "explicit_members",
    "group_types", "groups_history", "groups", "group_property_definitions",
    "group_property_values",
]
POINTS = [f"{when}:{table}" for table in COMMIT_ORDER for when in ("before_commit", "after_commit")]


def _new_data(env, n: int) -> None:
    """Give the next sync something new for every table: a group, and CSV exports."""
    ds = env.sim.dataset
    ds.insert_group(0, f"crash-{n}", {"trial": n})
    for i in range(2):
        ds.create_export(1, "text/csv", None, None, {
            "source": {"kind": "HogQLQuery", "query": f"select {n}, {i}"}})


def test_kill_at_every_commit_boundary_leaves_old_or_new_and_the_next_sync_exact(tmp_path):
    with start_sim(tmp_path / "sim", groups_per_type=(300, 80), n_exports=6) as env:
        environ = cli_env(env, tmp_path / "dagster_home")
        log = tmp_path / "sync.log"
        assert run_cli_sync(environ, log) == 0, log.read_text()[-3000:]
        for n, point in enumerate(POINTS):
            _new_data(env, n)
            code = run_cli_sync({**environ, KILL_AT: point}, log)
            assert code == 137, f"{point}: the sync exited {code}, not at the kill point"
            # readers see one committed version per table; archived implies all rows
            verify_snapshots(env.lake_root, env.database)
            verify_snapshots_of_the_lake(env.lake_root)
            # the next sync (a real Dagster run, in this process to keep the test short)
            result = env.sync(raise_on_error=False)
            assert result.success, f"{point}: {failure_text(result)[:2000]}"
            verify_exact(env.sim, env.lake_root, env.database)
            assert not list((env.state_dir / "tmp" / "staging").glob("*")), point


def verify_snapshots_of_the_lake(lake_root: Path) -> None:
    """The lake itself (not only the views) holds every archived export's rows."""
    from reliability.verify import verify_archived_exports_have_their_rows

    verify_archived_exports_have_their_rows(lake_root)


@pytest.mark.parametrize("point", ["after_commit:export_rows", "after_commit:groups_history"])
def test_kill_between_two_commits_is_caught_up_by_the_next_sync(tmp_path, point):
    """The two boundaries the issue names: rows committed but the export not yet marked
    archived; a group's history committed but not its snapshot."""
    with start_sim(tmp_path / "sim", groups_per_type=(120,), n_exports=4) as env:
        environ = cli_env(env, tmp_path / "dagster_home")
        log = tmp_path / "sync.log"
        assert run_cli_sync(environ, log) == 0, log.read_text()[-3000:]
        _new_data(env, 0)
        assert run_cli_sync({**environ, KILL_AT: point}, log) == 137
        assert run_cli_sync(environ, log) == 0, log.read_text()[-3000:]
        verify_exact(env.sim, env.lake_root, env.database)
        (dupes,), = env.query(
            "SELECT count(*) FROM (SELECT export_id, row_number FROM posthog.export_rows "
            "GROUP BY ALL HAVING count(*) > 1)")
        assert dupes == 0
        (versions,), = env.query(
            "SELECT count(*) FROM posthog.groups_history WHERE group_key = 'crash-0'")
        assert versions == 1
