"""`posthog-pipeline`: the quick-start demo, SQL over the warehouse, and what the warehouse holds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import click
from tabulate import tabulate

from resources.lake import Lake, LakeError, LakeResource

DEFAULT_LAKE_ROOT = "data/lake"
DEFAULT_DUCKDB = "data/warehouse.duckdb"
# where the demo records its Dagster run when DAGSTER_HOME is not set, so that the UI started
# with the same DAGSTER_HOME (`python3 run.py ui`) shows it (gitignored)
DEMO_DAGSTER_HOME = ".dagster_home"
_MAX_CELL = 80


def demo_dagster_home(environ: dict[str, str] | os._Environ[str], cwd: Path) -> Path:
    """DAGSTER_HOME for the demo's run: the user's, else `.dagster_home` in `cwd` (absolute,
    as Dagster requires)."""
    home = environ.get("DAGSTER_HOME")
    return Path(home) if home else (cwd / DEMO_DAGSTER_HOME).absolute()


def _lake(*, create: bool = False) -> Lake:
    resource = LakeResource(
        lake_root=os.environ.get("LAKE_ROOT") or DEFAULT_LAKE_ROOT,
        duckdb_database=os.environ.get("DUCKDB_DATABASE") or DEFAULT_DUCKDB,
        state_dir=os.environ.get("PIPELINE_STATE_DIR") or "",
    )
    try:
        return resource.get_lake(create=create)
    except LakeError as exc:
        raise click.ClickException(str(exc)) from None


def _cell(value: object) -> object:
    if isinstance(value, str) and len(value) > _MAX_CELL:
        return value[: _MAX_CELL - 1] + "…"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S%z")
    return value


def _print_table(columns: list[str], rows: list[tuple], *, full: bool = False) -> None:
    shown = rows if full else [tuple(_cell(v) for v in r) for r in rows]
    click.echo(tabulate(shown, headers=columns, tablefmt="simple", disable_numparse=True,
                        missingval="NULL"))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """PostHog groups & exports in a Parquet lake, queried with DuckDB.

    Reads LAKE_ROOT (default data/lake) and DUCKDB_DATABASE (default data/warehouse.duckdb).
    """


@main.command()
@click.argument("query")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
              show_default=True, help="Output format.")
@click.option("--max-rows", type=int, default=1000, show_default=True,
              help="Rows printed at most (0 = all).")
@click.option("--full", is_flag=True, help="Do not shorten long cells in table output.")
def sql(query: str, fmt: str, max_rows: int, full: bool) -> None:
    """Run QUERY against the warehouse (read-only) and print the result."""
    store = _lake()
    try:
        columns, rows, truncated = store.query_table(query, max_rows=max_rows or None)
    except LakeError as exc:
        raise click.ClickException(str(exc)) from None
    if fmt == "json":
        for row in rows:
            click.echo(json.dumps(dict(zip(columns, row, strict=True)), default=str,
                                  ensure_ascii=False))
    elif fmt == "csv":
        import csv

        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
    else:
        _print_table(columns, rows, full=full)
        click.echo(f"({len(rows)} row{'s' if len(rows) != 1 else ''}"
                   f"{', more not shown: use --max-rows 0' if truncated else ''})")


def _status(store: Lake) -> None:
    tables = store.table_status()
    if not tables:
        click.echo("The warehouse is empty: run a sync first (posthog-pipeline demo, or "
                   "dagster asset materialize -m pipelines.definitions --select '*').")
        return
    click.echo(f"Warehouse {store.warehouse_path}  (lake {store.root})\n")
    _print_table(["table", "rows", "files", "delta version", "synced_at"],
                 [(t["table"], f"{t['rows']:,}", t["files"], t["version"], t["synced_at"])
                  for t in tables])
    click.echo("")
    last = store.last_sync_by_asset()
    if last:
        click.echo("Last sync per asset:")
        _print_table(["asset", "synced_at", "run_id"],
                     [(a["asset"], a["synced_at"], a["run_id"]) for a in last])
        click.echo("")
    if store.has_table("exports"):
        archived = "posthog.export_contents" if store.has_table("export_contents") else None
        join = (f"LEFT JOIN {archived} c ON c.export_id = e.id" if archived
                else "LEFT JOIN (SELECT NULL::BIGINT AS export_id) c ON false")
        rows = store.query(
            "SELECT e.id, e.export_format, e.has_content, e.exception IS NOT NULL, e.listed, "
            f"e.expires_after FROM posthog.exports e {join} WHERE c.export_id IS NULL "
            "ORDER BY e.expires_after NULLS LAST, e.id"
        )
        now = datetime.now(UTC)
        click.echo(f"Exports not archived: {len(rows)}")
        if rows:
            shown = []
            for export_id, fmt, has_content, failed, listed, expires in rows[:25]:
                if failed:
                    state = "failed"
                elif not listed:
                    state = "expired (lost)"
                elif not has_content:
                    state = "pending"
                else:
                    state = "not fetched yet"
                left = ""
                if expires is not None and listed:
                    hours = (expires - now).total_seconds() / 3600
                    left = f"{hours:,.1f} h" if hours >= 0 else "expired"
                shown.append((export_id, fmt, state, expires, left))
            _print_table(["id", "format", "state", "expires_after", "expires in"], shown)
            if len(rows) > 25:
                click.echo(f"... and {len(rows) - 25} more")


@main.command()
def status() -> None:
    """What the warehouse holds: tables, rows, last sync per asset, unarchived exports."""
    store = _lake()
    try:
        _status(store)
    except LakeError as exc:
        raise click.ClickException(str(exc)) from None


@main.command("rebuild-views")
def rebuild_views() -> None:
    """Recreate the DuckDB views from the lake (after moving or restoring either)."""
    store = _lake(create=True)
    try:
        store.rebuild_views()
    except LakeError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Views rebuilt in {store.warehouse_path} from {store.root}.")


@main.command("migrate-lake")
def migrate_lake() -> None:
    """Move a lake in the old snapshot format to Delta Lake tables (keeps a backup)."""
    from assets.tables import ALL_TABLES
    from resources.lake.migrate import migrate

    resource = LakeResource(
        lake_root=os.environ.get("LAKE_ROOT") or DEFAULT_LAKE_ROOT,
        duckdb_database=os.environ.get("DUCKDB_DATABASE") or DEFAULT_DUCKDB,
        state_dir=os.environ.get("PIPELINE_STATE_DIR") or "",
    )
    store = resource.get_lake(create=False)
    try:
        written = migrate(store, ALL_TABLES)
    except LakeError as exc:
        raise click.ClickException(str(exc)) from None
    for name, rows in sorted(written.items()):
        click.echo(f"{name}: {rows:,} rows")
    click.echo(f"Migrated {store.root} to Delta Lake tables; the old files are kept beside "
               f"it in {store.schema}.old-format-*/ (delete that once you are satisfied).")


@main.command()
@click.option("--groups", default="3000,1000,200", show_default=True,
              help="Groups per group type, comma-separated.")
@click.option("--exports", "n_exports", default=40, show_default=True, help="Exports to serve.")
@click.option("--seed", default=7, show_default=True, help="Dataset seed.")
def demo(groups: str, n_exports: int, seed: int) -> None:
    """Start the bundled PostHog simulator, run a full sync through Dagster, print what landed.

    No credentials needed. Lands in LAKE_ROOT / DUCKDB_DATABASE (defaults under data/).
    """
    from posthog_sim import DatasetSpec, SimConfig, Simulator

    try:
        per_type = tuple(int(g) for g in groups.split(","))
    except ValueError:
        raise click.BadParameter("use comma-separated integers, e.g. 3000,1000", param_hint="--groups") from None
    lake_root = os.environ.get("LAKE_ROOT") or DEFAULT_LAKE_ROOT
    database = os.environ.get("DUCKDB_DATABASE") or DEFAULT_DUCKDB
    dagster_home = demo_dagster_home(os.environ, Path.cwd())
    dagster_home.mkdir(parents=True, exist_ok=True)
    spec = DatasetSpec(seed=seed, groups_per_type=per_type, n_exports=n_exports)
    with Simulator(SimConfig(dataset=spec)) as sim:
        click.echo(f"PostHog simulator on {sim.api_url} (project {sim.project_id}); "
                   f"{sum(per_type):,} groups in {len(per_type)} types, {n_exports} exports.")
        env = {
            **os.environ,
            "POSTHOG_HOST": sim.api_url,
            "POSTHOG_PROJECT_ID": str(sim.project_id),
            "POSTHOG_PERSONAL_API_KEY": sim.api_key,
            "LAKE_ROOT": lake_root,
            "DUCKDB_DATABASE": database,
            "DAGSTER_HOME": str(dagster_home),
        }
        click.echo("Running: dagster asset materialize -m pipelines.definitions --select '*'")
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "dagster", "asset", "materialize",
             "-m", "pipelines.definitions", "--select", "*"],
            env=env, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
        )
        elapsed = time.monotonic() - started
        requests = len(sim.request_log)
    if proc.returncode != 0:
        click.echo(proc.stdout[-4000:], err=True)
        click.echo(proc.stderr[-8000:], err=True)
        raise click.ClickException(f"the sync failed (exit {proc.returncode}); its log is above")
    click.echo(f"Sync finished in {elapsed:.1f}s with {requests} requests to the simulator.\n")
    _status(_lake())
    click.echo("\nTry:  posthog-pipeline sql \"SELECT group_type, count(*) FROM posthog.groups "
               "GROUP BY ALL\"")
    click.echo(f"The run is recorded in DAGSTER_HOME={dagster_home}; the UI started with it shows "
               "it: python3 run.py ui")


if __name__ == "__main__":
    main()
