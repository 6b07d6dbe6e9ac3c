"""docs/OPERATIONS.md: every bash block is either marked `# example` or run here, as written,
against a real lake (a sync against the simulator): backups, a damaged lake, restores."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "OPERATIONS.md"
COUNTS = ("SELECT (SELECT count(*) FROM posthog.groups) AS groups, "
          "(SELECT count(*) FROM posthog.exports) AS exports, "
          "(SELECT count(*) FROM posthog.export_rows) AS export_rows")


def doc_blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced block of the doc, in order."""
    return re.findall(r"^```(\w*)\n(.*?)^```$", DOC.read_text(), flags=re.S | re.M)


def test_operations_doc_blocks_are_bash_or_yaml_and_examples_say_so():
    blocks = doc_blocks()
    assert blocks and {lang for lang, _ in blocks} <= {"bash", "yaml"}
    runnable = [text for lang, text in blocks if lang == "bash"
                and not text.startswith("# example")]
    # the examples: the long-running services only
    assert len([t for lang, t in blocks if lang == "bash"]) - len(runnable) == 1
    assert all(t.startswith(("# backup", "# restore")) for t in runnable), runnable


def _counts(env: dict[str, str]) -> str:
    out = subprocess.run(["posthog-pipeline", "sql", "--format", "csv", COUNTS], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_operations_doc_backup_and_restore_commands_run_as_written(sim_env, tmp_path):
    assert sim_env.sync().success
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "LAKE_ROOT": str(sim_env.lake_root),
        "DUCKDB_DATABASE": str(sim_env.database),
        # a parent that does not exist yet (rsync would not have created it)
        "BACKUP_DIR": str(tmp_path / "backups" / "posthog"),
    }
    synced = _counts(env)
    assert synced.splitlines()[1] != "0,0,0"
    runnable = [text for lang, text in doc_blocks() if lang == "bash"
                and not text.startswith("# example")]
    restores = 0
    for text in runnable:
        if text.startswith("# restore"):
            # what a restore is for: the warehouse gone, the lake damaged
            sim_env.database.unlink()
            shutil.rmtree(sim_env.lake_root / "posthog" / "groups", ignore_errors=True)
            shutil.rmtree(next((sim_env.lake_root / "posthog").iterdir()), ignore_errors=True)
            time.sleep(1.1)  # the aside copy is named by the second
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", text], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, f"{text}\n{out.stdout}\n{out.stderr}"
        if text.startswith("# restore"):
            restores += 1
            assert re.search(r"^groups +697 ", out.stdout, flags=re.M), out.stdout
            assert _counts(env) == synced
    assert restores == 2
    backups = sorted(p.name for p in Path(env["BACKUP_DIR"]).iterdir())
    assert len(backups) == 2 and backups[0].endswith("Z") and backups[1].endswith("Z.tar.gz")
    aside = [p for p in sim_env.tmp.iterdir() if p.name.startswith("lake.before-restore-")]
    assert len(aside) == 2
