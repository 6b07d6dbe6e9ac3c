"""`posthog-pipeline`: the quick-start demo, SQL over the warehouse, what the warehouse holds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import click
import duckdb
from tabulate import tabulate

from resources.lake import Lake, LakeError, LakeResource

DEFAULT_LAKE_ROOT = "data/lake"
DEFAULT_DUCKDB = "data/warehouse.duckdb"
# the demo's own lake and warehouse (relative to the current directory, as the defaults are):
# the demo never writes to data/lake, data/warehouse.duckdb, or LAKE_ROOT / DUCKDB_DATABASE.
# run.py spells the same paths for `python3 run.py ui` (tests/test_cli.py keeps them equal).
DEMO_LAKE_ROOT = "data/demo/lake"
DEMO_DUCKDB = "data/demo/warehouse.duckdb"
# where the demo records its Dagster run when DAGSTER_HOME is not set, so that the UI started
# with the same DAGSTER_HOME (`python3 run.py ui`) shows it (gitignored)
DEMO_DAGSTER_HOME = ".dagster_home"
# the scopes README "Against your PostHog" documents for a sync (docs/SCOPES.md); the demo's key
# carries exactly these, so the quick start proves them
DOCUMENTED_SCOPES = ("group:read", "property_definition:read", "export:read", "query:read")
_MAX_CELL = 80


def demo_dagster_home(environ: dict[str, str] | os._Environ[str], cwd: Path) -> Path:
    """DAGSTER_HOME for the demo's run: the user's, else `.dagster_home` in `cwd` (absolute,
    as Dagster requires)."""
    home = environ.get("DAGSTER_HOME")
    return Path(home) if home else (cwd / DEMO_DAGSTER_HOME).absolute()


def _configured_paths(*, demo: bool = False) -> tuple[str, Path]:
    """(LAKE_ROOT, DUCKDB_DATABASE): the environment's (or the defaults), or the demo's with
    ``demo``. LAKE_ROOT is an absolute path, or an s3:// URI as given."""
    if demo:
        lake_root, database = DEMO_LAKE_ROOT, DEMO_DUCKDB
    else:
        lake_root = os.environ.get("LAKE_ROOT") or DEFAULT_LAKE_ROOT
        database = os.environ.get("DUCKDB_DATABASE") or DEFAULT_DUCKDB
    if "://" not in lake_root:
        lake_root = str(Path(lake_root).expanduser().absolute())
    return lake_root, Path(database).expanduser().absolute()


def _resource(*, demo: bool = False) -> LakeResource:
    lake_root, database = _configured_paths(demo=demo)
    return LakeResource(lake_root=lake_root, duckdb_database=str(database),
                        state_dir=os.environ.get("PIPELINE_STATE_DIR") or "")


def _lake() -> Lake:
    """The lake for a command that writes (rebuild-views): creates the warehouse if needed."""
    try:
        return _resource().get_lake()
    except LakeError as exc:
        raise click.ClickException(str(exc)) from None


def _read_lake(*, demo: bool = False) -> Lake:
    """The lake for a read-only command (sql, status). Creates nothing: when LAKE_ROOT or
    DUCKDB_DATABASE is missing it fails (exit 1) naming both absolute paths."""
    root, database = _configured_paths(demo=demo)
    remote = "://" in root
    lake_root = Path(root)
    if database.is_dir():
        raise click.ClickException(f"DUCKDB_DATABASE {database} is a directory, not a DuckDB file")
    if not remote and lake_root.exists() and not lake_root.is_dir():
        raise click.ClickException(f"LAKE_ROOT {lake_root} is not a directory")
    if (remote or lake_root.is_dir()) and database.is_file():
        try:
            return _resource(demo=demo).get_lake(create=False)
        except LakeError as exc:
            raise click.ClickException(str(exc)) from None
    lines = ["nothing to read here: no warehouse at these paths."]
    for name, path, default in (("LAKE_ROOT", lake_root, DEFAULT_LAKE_ROOT),
                                ("DUCKDB_DATABASE", database, DEFAULT_DUCKDB)):
        origin = ("the demo's" if demo else "set" if os.environ.get(name)
                  else f"unset: the default {default}")
        state = ("an S3 lake" if "://" in str(path) else "exists" if Path(path).exists()
                 else "does not exist")
        lines.append(f"  {name:<15} {path}  ({origin}): {state}")
    if (remote or lake_root.is_dir()) and not database.exists():
        lines.append("The DuckDB file is derived from the lake: `posthog-pipeline rebuild-views` "
                     "recreates it.")
    else:
        lines.append("Run a sync first (`posthog-pipeline demo` lands a try-out in data/demo/), "
                     "or set LAKE_ROOT and DUCKDB_DATABASE to where one landed.")
    demo_lake, demo_database = _configured_paths(demo=True)
    if not demo and demo_database.is_file():
        lines.append(f"A demo has landed in {demo_lake.parent}: add --demo to read it.")
    raise click.ClickException("\n".join(lines))


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

    Reads LAKE_ROOT (default data/lake) and DUCKDB_DATABASE (default data/warehouse.duckdb),
    relative to the current directory; `demo` lands in data/demo/ instead, which `sql --demo`
    and `status --demo` read.
    """


def _statements(query: str) -> list[str]:
    """The statements of ``query`` in order, as DuckDB's parser splits them."""
    try:
        statements = [s.query for s in duckdb.extract_statements(query)]
    except duckdb.Error as exc:
        raise click.ClickException(f"query failed: {exc}") from None
    if not statements:
        raise click.ClickException("no SQL statement in the query")
    return statements


def _run_statements(
    store: Lake, statements: list[str], max_rows: int | None
) -> tuple[list[tuple[list[str], list[tuple], bool]], LakeError | None]:
    """(columns, rows, truncated) of each statement, in order, on one read-only connection (so a
    SET applies to the statements after it), and the error that stopped the rest, if any. The
    connection is closed before anything is printed, so a slow terminal never holds it."""
    # one connection for all statements (Lake.query_table opens one per statement, so it could
    # not carry a SET across); it retries DuckDB's short lock and can read an S3 lake
    con = store.warehouse.connect(read_only=True)
    results = []
    try:
        for number, statement in enumerate(statements, 1):
            try:
                cursor = con.execute(statement)
                if cursor.description is None:
                    results.append(([], [], False))
                    continue
                columns = [d[0] for d in cursor.description]
                rows = cursor.fetchall() if max_rows is None else cursor.fetchmany(max_rows + 1)
            except duckdb.Error as exc:
                where = (f" at statement {number} of {len(statements)}"
                         if len(statements) > 1 else "")
                return results, LakeError(f"query failed{where}: {exc}")
            truncated = max_rows is not None and len(rows) > max_rows
            results.append((columns, rows[:max_rows] if truncated else rows, truncated))
    finally:
        con.close()
    return results, None


@main.command()
@click.argument("query")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
              show_default=True, help="Output format.")
@click.option("--max-rows", type=int, default=1000, show_default=True,
              help="Rows printed at most per statement (0 = all).")
@click.option("--full", is_flag=True, help="Do not shorten long cells in table output.")
@click.option("--demo", is_flag=True, help="Read the demo's warehouse (data/demo/).")
def sql(query: str, fmt: str, max_rows: int, full: bool, demo: bool) -> None:
    """Run QUERY against the warehouse (read-only) and print the result.

    QUERY may hold several statements separated by ';': each one's result is printed in order,
    as DuckDB's own CLI does (a table per statement; in csv, a header per statement).
    """
    statements = _statements(query)
    store = _read_lake(demo=demo)
    try:
        results, error = _run_statements(store, statements, max_rows or None)
    except LakeError as exc:
        raise click.ClickException(str(exc)) from None
    first = True
    for columns, rows, truncated in results:
        if columns in ([], ["Success"]):
            continue  # SET, LOAD, ...: DuckDB's CLI prints nothing for them either
        if fmt == "json":
            for row in rows:
                click.echo(json.dumps(dict(zip(columns, row, strict=True)), default=str,
                                      ensure_ascii=False))
            continue
        if not first:
            click.echo("")
        first = False
        if fmt == "csv":
            import csv

            writer = csv.writer(sys.stdout)
            writer.writerow(columns)
            writer.writerows(rows)
            sys.stdout.flush()
        else:
            _print_table(columns, rows, full=full)
            click.echo(f"({len(rows)} row{'s' if len(rows) != 1 else ''}"
                       f"{', more not shown: use --max-rows 0' if truncated else ''})")
    if error is not None:
        raise click.ClickException(str(error))


def _status(store: Lake) -> None:
    tables = store.table_status()
    if not tables:
        click.echo(f"The warehouse {store.warehouse_path} (lake {store.root}) is empty: run a sync "
                   "first (posthog-pipeline demo, or dagster asset materialize -m "
                   "pipelines.definitions --select '*').")
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
        join = (f"LEFT JOIN {archived} c ON c.project_id = e.project_id "
                "AND c.export_id = e.id" if archived
                else "LEFT JOIN (SELECT NULL::BIGINT AS export_id) c ON false")
        rows = store.query(
            "SELECT e.project_id, e.id, e.export_format, e.has_content, "
            "e.exception IS NOT NULL, e.listed, e.expires_after "
            f"FROM posthog.exports e {join} WHERE c.export_id IS NULL "
            "ORDER BY e.expires_after NULLS LAST, e.project_id, e.id"
        )
        now = datetime.now(UTC)
        click.echo(f"Exports not archived: {len(rows)}")
        if rows:
            shown = []
            for project_id, export_id, fmt, has_content, failed, listed, expires in rows[:25]:
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
                shown.append((project_id, export_id, fmt, state, expires, left))
            _print_table(["project_id", "id", "format", "state", "expires_after", "expires in"],
                         shown)
            if len(rows) > 25:
                click.echo(f"... and {len(rows) - 25} more")


@main.command()
@click.option("--demo", is_flag=True, help="Read the demo's warehouse (data/demo/).")
def status(demo: bool) -> None:
    """What the warehouse holds: tables, rows, last sync per asset, unarchived exports.

    Read-only: creates nothing. With no warehouse at LAKE_ROOT / DUCKDB_DATABASE it says so,
    naming both paths, and exits 1.
    """
    store = _read_lake(demo=demo)
    try:
        _status(store)
    except LakeError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
def check() -> None:
    """Verify in seconds, before a sync: configuration, that POSTHOG_HOST answers, that the key
    is accepted, which scopes it has (and the assets a missing one disables), and that the lake
    and the warehouse are writable. One line per check; exit 0 when all are ok, 1 otherwise."""
    from pipelines.check import run_checks

    failed = False
    for result in run_checks(os.environ):
        click.echo(result.line())
        failed = failed or result.status == "FAIL"
    if failed:
        raise click.exceptions.Exit(1)


@main.command("rebuild-views")
def rebuild_views() -> None:
    """Recreate the DuckDB views from the lake (after moving or restoring either)."""
    lake_root, _ = _configured_paths()
    if "://" not in lake_root and not Path(lake_root).is_dir():
        raise click.ClickException(f"LAKE_ROOT {lake_root} does not exist: nothing to rebuild from")
    store = _lake()
    try:
        store.rebuild_views()
    except LakeError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Views rebuilt in {store.warehouse_path} from {store.root}.")


@main.command("migrate-lake")
@click.option("--project-id", type=int, default=None,
              help="The PostHog project the lake was synced from: its rows get this "
              "project_id. Default: POSTHOG_PROJECT_ID when it names one numeric project.")
def migrate_lake(project_id: int | None) -> None:
    """Bring a lake written by an earlier version up to date, keeping every row: the old
    snapshot format becomes Delta Lake tables (a backup is kept), and tables written before
    they had project_id get it (one commit each; time travel keeps the versions before)."""
    from assets.tables import ALL_TABLES
    from resources.lake.lake import OLD_FORMAT_MARKER
    from resources.lake.migrate import migrate

    if project_id is None:
        configured = (os.environ.get("POSTHOG_PROJECT_ID") or "").strip()
        if not configured.isdigit():
            raise click.ClickException(
                "--project-id: name the PostHog project the lake was synced from (its rows get "
                "that project_id); POSTHOG_PROJECT_ID does not name one numeric project.")
        project_id = int(configured)
    store = _resource().get_lake(create=False)
    old_format = store.location.is_local and (
        Path(store.location.uri) / store.schema / OLD_FORMAT_MARKER).is_dir()
    try:
        if old_format:
            written = migrate(store, ALL_TABLES, scope=project_id)
            for name, rows in sorted(written.items()):
                click.echo(f"{name}: {rows:,} rows")
            click.echo(f"Migrated {store.root} to Delta Lake tables (project_id {project_id}); "
                       f"the old files are kept beside it in {store.schema}.old-format-*/ "
                       "(delete that once you are satisfied).")
            return
        changed = [name for spec in ALL_TABLES for name in store.add_scope(spec, project_id)]
    except LakeError as exc:
        raise click.ClickException(str(exc)) from None
    if changed:
        click.echo(f"{', '.join(changed)}: every row given project_id {project_id}.")
    else:
        click.echo(f"{store.root}: every table already has project_id; nothing to migrate.")


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _run_sync(env: dict[str, str]) -> tuple[int | None, str, str]:
    """`dagster asset materialize --select '*'`: (exit code, or None if interrupted; stdout;
    stderr). It runs in its own process group: a Ctrl-C or SIGTERM to the demo sends it one
    SIGINT, on which Dagster ends the run cleanly, and waits for it (killed after 30 s), so no
    run is left 'started' in DAGSTER_HOME and nothing keeps running."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dagster", "asset", "materialize",
             "-m", "pipelines.definitions", "--select", "*"],
            env=env, stdout=out, stderr=err, text=True, process_group=0,
            cwd=Path(__file__).resolve().parents[1],
        )
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            code: int | None = proc.wait()
        except KeyboardInterrupt:
            code = None
            click.echo("Stopping the sync ...", err=True)
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # one stop, not a second interrupt
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)
            try:  # Dagster's compute-log helpers, should any outlive the sync
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        out.seek(0)
        err.seek(0)
        return code, out.read(), err.read()


def _exports_banner(sim) -> str:
    """How many of the simulator's exports the sync will see, and why not all of them."""
    exports = sim.dataset.all_exports()
    # PostHog lists to a key only the exports its own user created that have not expired
    mine = [e for e in exports if e["_user_id"] == 1]
    listed = sum(1 for e in mine if not e["_expired"])
    return (f"{len(exports)} exports in the simulator, {listed} of them listed to this key "
            f"({len(mine) - listed} expired, {len(exports) - len(mine)} created by another user: "
            "PostHog lists only your own unexpired exports)")


@main.command()
@click.option("--groups", default="3000,1000,200", show_default=True,
              help="Groups per group type, comma-separated.")
@click.option("--exports", "n_exports", default=40, show_default=True,
              help="Exports created by the key's user.")
@click.option("--seed", default=7, show_default=True, help="Dataset seed.")
def demo(groups: str, n_exports: int, seed: int) -> None:
    """Start the bundled PostHog simulator, run a full sync through Dagster, print what landed.

    No credentials needed. Lands in its own lake and warehouse, data/demo/lake and
    data/demo/warehouse.duckdb under the current directory; never in LAKE_ROOT /
    DUCKDB_DATABASE or their defaults.
    """
    from posthog_sim import DatasetSpec, SimConfig, Simulator

    try:
        per_type = tuple(int(g) for g in groups.split(","))
    except ValueError:
        raise click.BadParameter("use comma-separated integers, e.g. 3000,1000",
                                 param_hint="--groups") from None
    lake_root, database = _configured_paths(demo=True)
    dagster_home = demo_dagster_home(os.environ, Path.cwd())
    dagster_home.mkdir(parents=True, exist_ok=True)
    spec = DatasetSpec(seed=seed, groups_per_type=per_type, n_exports=n_exports)
    with Simulator(SimConfig(dataset=spec)) as sim:
        click.echo(f"PostHog simulator on {sim.api_url} (project {sim.project_id}); "
                   f"{sum(per_type):,} groups in {len(per_type)} types; "
                   f"{_exports_banner(sim)}.")
        click.echo(f"Landing in the demo's own lake {lake_root} and warehouse {database}.")
        env = {
            **os.environ,
            "POSTHOG_HOST": sim.api_url,
            "POSTHOG_PROJECT_ID": str(sim.project_id),
            # a key with exactly the scopes the README documents, as a user's would be
            "POSTHOG_PERSONAL_API_KEY": sim.issue_key(DOCUMENTED_SCOPES),
            "LAKE_ROOT": str(lake_root),
            "DUCKDB_DATABASE": str(database),
            "DAGSTER_HOME": str(dagster_home),
        }
        click.echo("Running: dagster asset materialize -m pipelines.definitions --select '*'")
        started = time.monotonic()
        code, stdout, stderr = _run_sync(env)
        elapsed = time.monotonic() - started
        requests = len(sim.request_log)
    if code is None:
        click.echo(f"Interrupted: the sync was stopped (its run: DAGSTER_HOME={dagster_home}).",
                   err=True)
        raise click.exceptions.Exit(130)
    if code != 0:
        click.echo(stdout[-4000:], err=True)
        click.echo(stderr[-8000:], err=True)
        raise click.ClickException(f"the sync failed (exit {code}); its log is above")
    click.echo(f"Sync finished in {elapsed:.1f}s with {requests} requests to the simulator.\n")
    _status(_read_lake(demo=True))
    click.echo("\nTry:  posthog-pipeline sql --demo \"SELECT group_type, count(*) FROM "
               "posthog.groups GROUP BY ALL\"")
    click.echo(f"The run is recorded in DAGSTER_HOME={dagster_home}; the UI started with it shows "
               "it and the demo's data: python3 run.py ui")


if __name__ == "__main__":
    main()
