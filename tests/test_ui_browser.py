"""The Dagster UI end to end, in a real browser, as a user meets it.

Starts `dagster dev -w workspace.yaml` (webserver + daemon) against the PostHog simulator and
drives the UI in headless Chromium (Debian's `chromium`, driven by Playwright):

* the asset graph lists every asset of the contract;
* "Materialize all", clicked in the UI, launches a run that succeeds (its log shows progress);
* the asset pages show the run's metadata: rows, requests, a Markdown preview, archive state;
* the catalog lists each asset's columns with descriptions, and the export archive's freshness
  policy and state (passing after the run);
* a schedule switched on in the UI is running in the daemon, and its tick (forced through the
  GraphQL API, as the UI's "Test schedule" does) runs a sync that lands data.

On failure a screenshot of the page and the tail of the `dagster dev` log are saved under
`test-artifacts/`. With `UPDATE_SCREENSHOTS=1` the README's screenshots in `docs/screenshots/`
are refreshed; nothing else is written outside pytest's tmp dirs.

Locally the test skips when Chromium or Playwright is missing; under CI (`CI=true`) it fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import start_sim

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
SCREENSHOTS = ROOT / "docs" / "screenshots"
LOCATION = "posthog_pipeline"

# the assets of the contract (README "What lands"), every one of which the graph must show
CONTRACT_ASSETS = (
    "posthog_group_types",
    "posthog_groups",
    "posthog_group_property_definitions",
    "posthog_group_property_values",
    "posthog_requested_exports",
    "posthog_exports",
    "posthog_export_contents",
    "posthog_explicit_members",
)
SCHEDULE = "posthog_exports_hourly"
SCHEDULE_JOB = "posthog_exports_job"

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
RUN_TIMEOUT = 150.0

pytestmark = pytest.mark.slow


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _unavailable(reason: str) -> None:
    """Skip locally; under CI a missing browser is a broken CI machine, so fail."""
    if _in_ci():
        pytest.fail(f"{reason} (CI=true: the UI test must run in CI; see .ci/run)")
    pytest.skip(reason)


def _find_chromium() -> str | None:
    for candidate in (
        os.environ.get("CHROMIUM_PATH"),
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
        "/usr/bin/chromium",
    ):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# dagster dev against the simulator


@dataclass
class DagsterUI:
    url: str
    proc: subprocess.Popen
    log_path: Path
    lake_root: Path
    database: Path
    state: dict[str, Any] = field(default_factory=dict)

    def graphql(self, query: str, variables: dict | None = None, timeout: float = 30.0) -> dict:
        response = httpx.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables or {}},
            timeout=timeout,
        )
        assert response.status_code == 200, f"GraphQL {response.status_code}: {response.text[:2000]}"
        body = response.json()
        assert not body.get("errors"), body["errors"]
        return body["data"]

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def run(self, run_id: str) -> dict:
        data = self.graphql(
            """query($id: ID!) { runOrError(runId: $id) {
                 __typename ... on Run { runId status jobName tags { key value } } } }""",
            {"id": run_id},
        )
        return data["runOrError"]

    def wait_for_run(self, run_id: str, timeout: float = RUN_TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(run_id)
            if run.get("status") in ("SUCCESS", "FAILURE", "CANCELED"):
                return run
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run_id} still {run.get('status')} after {timeout}s")
            time.sleep(1.0)

    def run_messages(self, run_id: str) -> list[tuple[str, str]]:
        """(event type, message) of every event in the run's log."""
        out: list[tuple[str, str]] = []
        cursor = None
        while True:
            data = self.graphql(
                """query($id: ID!, $cursor: String) { logsForRun(runId: $id, afterCursor: $cursor) {
                     __typename ... on EventConnection { cursor hasMore events {
                       __typename ... on MessageEvent { message level } } } } }""",
                {"id": run_id, "cursor": cursor},
            )["logsForRun"]
            out += [(e["__typename"], e.get("message") or "") for e in data["events"]]
            cursor = data["cursor"]
            if not data["hasMore"]:
                return out


DAGSTER_YAML = """\
telemetry:
  enabled: false
nux:
  enabled: false
"""


@pytest.fixture(scope="module")
def dagster_ui(tmp_path_factory) -> Iterator[DagsterUI]:
    if not _find_chromium():
        _unavailable("Chromium not found (apt-get install chromium, or set CHROMIUM_PATH)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _unavailable("Playwright is not installed (pip install -e '.[test]')")

    tmp = tmp_path_factory.mktemp("dagster_ui")
    home = tmp / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    dagster_bin = Path(sys.executable).with_name("dagster")
    command = [str(dagster_bin)] if dagster_bin.exists() else [sys.executable, "-m", "dagster"]
    port = _free_port()

    with start_sim(tmp, groups_per_type=(300, 120), n_exports=12, seed=5) as sim_env:
        sim = sim_env.sim
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "POSTHOG_HOST": sim.api_url,
            "POSTHOG_PROJECT_ID": str(sim.project_id),
            "POSTHOG_PERSONAL_API_KEY": sim.api_key,
            "LAKE_ROOT": str(tmp / "lake"),
            "DUCKDB_DATABASE": str(tmp / "warehouse.duckdb"),
            "PYTHONUNBUFFERED": "1",
        }
        log_path = tmp / "dagster-dev.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [*command, "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: killed as a whole below
            )
        ui = DagsterUI(url=f"http://127.0.0.1:{port}", proc=proc, log_path=log_path,
                       lake_root=tmp / "lake", database=tmp / "warehouse.duckdb")
        try:
            _wait_until_serving(ui)
            yield ui
        finally:
            _stop(proc)


def _wait_until_serving(ui: DagsterUI, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if ui.proc.poll() is not None:
            raise AssertionError(f"dagster dev exited with {ui.proc.returncode}:\n{ui.log_tail()}")
        try:
            if httpx.get(f"{ui.url}/server_info", timeout=2.0).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"dagster dev did not serve within {timeout}s:\n{ui.log_tail()}")
        time.sleep(0.5)
    # the code location loads in its own process; wait until its definitions are there
    while True:
        entries = ui.graphql(
            """{ workspaceOrError { __typename ... on Workspace { locationEntries {
                 name loadStatus locationOrLoadError { __typename
                   ... on PythonError { message } } } } } }"""
        )["workspaceOrError"]["locationEntries"]
        entry = next((e for e in entries if e["name"] == LOCATION), None)
        if entry and entry["loadStatus"] == "LOADED":
            error = entry["locationOrLoadError"]
            assert error["__typename"] == "RepositoryLocation", f"code location failed: {error}"
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"code location not loaded within {timeout}s: {entries}")
        time.sleep(0.5)


def _stop(proc: subprocess.Popen) -> None:
    """Stop dagster dev and everything it started (webserver, daemon, code server, runs)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


# ---------------------------------------------------------------------------------------------
# the browser


@pytest.fixture(scope="module")
def browser(dagster_ui):
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="chromium-") as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=_find_chromium(),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 800},
            base_url=dagster_ui.url,
        )
        context.set_default_timeout(30_000)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser, dagster_ui, request):
    failed_before = request.session.testsfailed
    page = browser.new_page()
    yield page
    # the call's report is logged before fixtures tear down: a new failure is this test's
    if request.session.testsfailed > failed_before:
        ARTIFACTS.mkdir(exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)
        with contextlib.suppress(Exception):
            page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        (ARTIFACTS / f"{name}.dagster-dev.log").write_text(dagster_ui.log_tail(200_000))
    page.close()


def _update_screenshots() -> bool:
    return os.environ.get("UPDATE_SCREENSHOTS", "") not in ("", "0", "false")


def _readme_screenshot(page, name: str, **kwargs: Any) -> None:
    """Refresh docs/screenshots/<name> (only with UPDATE_SCREENSHOTS=1)."""
    if not _update_screenshots():
        return
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    page.screenshot(path=str(path), **kwargs)
    assert path.stat().st_size < 300_000, f"{path} is {path.stat().st_size} bytes; keep it small"


def _hide_navigation(page) -> None:
    with contextlib.suppress(Exception):
        page.get_by_text("Hide navigation", exact=True).click(timeout=3_000)


# ---------------------------------------------------------------------------------------------
# the tests (in file order: the metadata and schedule tests build on the Materialize-all run)


def _open_asset_graph(page) -> None:
    """The global asset lineage, navigation and asset list folded away, zoomed in one step so
    each node shows its full name, latest materialization, checks and kinds."""
    page.goto("/asset-groups/")
    page.get_by_role("button", name="Materialize all").wait_for()
    _hide_navigation(page)
    sidebar = page.locator('button:has([aria-label="panel_show_right"])')
    if page.get_by_placeholder("Jump to…").count():
        sidebar.first.click()
    page.locator('button:has([aria-label="zoom_in"])').click()
    page.wait_for_timeout(1_000)


def test_asset_graph_lists_every_contract_asset(page, dagster_ui):
    _open_asset_graph(page)
    nodes = page.locator("foreignObject")
    nodes.first.wait_for()
    html = "\n".join(nodes.evaluate_all("els => els.map(e => e.innerHTML)"))
    missing = [name for name in CONTRACT_ASSETS if name not in html]
    assert not missing, f"asset graph does not show {missing}"
    # and nothing the contract does not know about
    data = dagster_ui.graphql("{ assetNodes { assetKey { path } } }")
    keys = sorted("/".join(n["assetKey"]["path"]) for n in data["assetNodes"])
    assert keys == sorted(CONTRACT_ASSETS)


def test_materialize_all_in_the_ui_runs_a_successful_sync(page, dagster_ui):
    page.goto("/asset-groups/")
    button = page.get_by_role("button", name="Materialize all")
    button.wait_for()
    page.wait_for_timeout(500)
    button.click()
    toast = page.get_by_text(re.compile(r"Launched run [0-9a-f]{8}"))
    toast.wait_for(timeout=30_000)
    short_id = re.search(r"[0-9a-f]{8}", toast.inner_text()).group(0)

    runs = dagster_ui.graphql("{ runsOrError { ... on Runs { results { runId } } } }")
    run_id = next(r["runId"] for r in runs["runsOrError"]["results"]
                  if r["runId"].startswith(short_id))
    run = dagster_ui.wait_for_run(run_id)
    assert run["status"] == "SUCCESS", dagster_ui.log_tail()
    dagster_ui.state["run_id"] = run_id

    # the run page says so, and its log shows the assets' progress and no errors
    page.goto(f"/runs/{run_id}")
    page.get_by_text("Success", exact=True).first.wait_for()
    messages = dagster_ui.run_messages(run_id)
    kinds = {kind for kind, _ in messages}
    assert "RunSuccessEvent" in kinds
    assert "ExecutionStepFailureEvent" not in kinds
    progress = [m for _, m in messages if re.search(r"\d pages\b", m)]
    assert progress, "no progress line (pages, rows so far) in the run log"
    assert not [m for kind, m in messages if kind == "LogMessageEvent" and "Traceback" in m]

    # the graph now shows every asset materialized: the README's first screenshot
    _open_asset_graph(page)
    page.wait_for_timeout(1_000)
    _readme_screenshot(page, "asset-graph.png")


def test_asset_pages_show_the_runs_metadata(page, dagster_ui):
    assert dagster_ui.state.get("run_id"), "needs the Materialize-all run, which failed"

    page.goto("/assets/posthog_groups")
    metadata = page.get_by_text("Metadata", exact=True).first
    metadata.wait_for()
    for key in ("rows", "requests", "pages", "rows_by_group_type", "preview"):
        page.get_by_role("cell", name=key, exact=True).first.wait_for(state="attached")
    # row count in the status panel (dagster/row_count)
    page.get_by_text("Row count", exact=True).wait_for()

    # the export archive: state counts and a rendered Markdown preview of its rows
    page.goto("/assets/posthog_export_contents")
    page.get_by_text("Metadata", exact=True).first.wait_for()
    for key in ("archive_state", "preview", "requests", "content_bytes_downloaded",
                "rows_by_table"):
        page.get_by_role("cell", name=key, exact=True).first.wait_for(state="attached")
    text = page.locator("body").inner_text()
    assert "archived" in text
    # the preview renders as a table (header cells), not as raw Markdown
    page.locator('th:text-is("export_id")').first.wait_for(state="attached")
    assert "| --- |" not in text

    _hide_navigation(page)
    page.get_by_role("cell", name="preview", exact=True).first.scroll_into_view_if_needed()
    page.mouse.wheel(0, -250)
    page.wait_for_timeout(800)
    _readme_screenshot(page, "materialization-metadata.png")


def test_asset_pages_show_columns_and_the_archive_freshness(page, dagster_ui):
    # the columns come from the definitions (dagster/column_schema), with their descriptions
    page.goto("/assets/posthog_groups")
    page.get_by_text("Columns", exact=True).first.wait_for()
    for column in ("group_key", "group_properties", "synced_at"):
        page.get_by_text(column, exact=True).first.wait_for(state="attached")
    page.get_by_text("The group's key (unique within its type)").first.wait_for(state="attached")

    # the archive's freshness policy, and its state after the Materialize-all run: passing
    query = """query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) {
                 __typename ... on AssetNode {
                   internalFreshnessPolicy { __typename
                     ... on TimeWindowFreshnessPolicy { failWindowSeconds warnWindowSeconds } }
                   freshnessStatusInfo { freshnessStatus } } } }"""
    key = {"key": {"path": ["posthog_export_contents"]}}
    node = dagster_ui.graphql(query, key)["assetNodeOrError"]
    assert node["internalFreshnessPolicy"] == {"__typename": "TimeWindowFreshnessPolicy",
                                               "failWindowSeconds": 6 * 3600,
                                               "warnWindowSeconds": 2 * 3600}
    if dagster_ui.state.get("run_id"):
        deadline = time.monotonic() + 90
        while node["freshnessStatusInfo"]["freshnessStatus"] != "HEALTHY":
            assert time.monotonic() < deadline, node
            time.sleep(2)
            node = dagster_ui.graphql(query, key)["assetNodeOrError"]
    page.goto("/assets/posthog_export_contents")
    page.get_by_text(re.compile(r"Freshness", re.IGNORECASE)).first.wait_for()


def test_schedule_switched_on_and_its_tick_runs_a_sync(page, dagster_ui):
    page.goto(f"/locations/{LOCATION}/schedules/{SCHEDULE}")
    page.get_by_text(SCHEDULE).first.wait_for()
    assert _schedule_status(dagster_ui) == "STOPPED"  # off until someone switches it on
    # the on/off switch of the schedule (a styled checkbox)
    switch = page.locator('label:has(input[type="checkbox"])').first
    switch.wait_for()
    switch.click()
    deadline = time.monotonic() + 20
    while _schedule_status(dagster_ui) != "RUNNING":
        assert time.monotonic() < deadline, "switching the schedule on did not start it"
        time.sleep(0.5)

    # the daemon that ticks it is alive
    health = dagster_ui.graphql(
        "{ instance { daemonHealth { allDaemonStatuses { daemonType healthy required } } } }"
    )["instance"]["daemonHealth"]["allDaemonStatuses"]
    scheduler = next(d for d in health if d["daemonType"] == "SCHEDULER")
    assert scheduler["required"] and scheduler["healthy"], health

    # force its tick: evaluate the schedule (what the daemon does at 17 past the hour) and
    # launch the run request it returns, tagged as the daemon tags it
    selector = {"repositoryLocationName": LOCATION, "repositoryName": "__repository__",
                "scheduleName": SCHEDULE}
    dry = dagster_ui.graphql(
        """mutation($selector: ScheduleSelector!, $ts: Float) {
             scheduleDryRun(selectorData: $selector, timestamp: $ts) {
               __typename ... on DryRunInstigationTick { evaluationResult { skipReason
                 error { message }
                 runRequests { runKey runConfigYaml tags { key value } } } }
               ... on PythonError { message } } }""",
        {"selector": selector, "ts": time.time()},
    )["scheduleDryRun"]
    assert dry["__typename"] == "DryRunInstigationTick", dry
    dry = dry["evaluationResult"]
    assert not dry["error"] and not dry["skipReason"], dry
    (request,) = dry["runRequests"]
    tags = [*request["tags"], {"key": "dagster/schedule_name", "value": SCHEDULE}]
    launched = dagster_ui.graphql(
        """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
             __typename ... on LaunchRunSuccess { run { runId } }
             ... on PythonError { message } ... on InvalidSubsetError { message }
             ... on RunConfigValidationInvalid { errors { message } } } }""",
        {"params": {
            "selector": {"repositoryLocationName": LOCATION, "repositoryName": "__repository__",
                         "jobName": SCHEDULE_JOB},
            "runConfigData": request["runConfigYaml"],
            "executionMetadata": {"tags": tags},
        }},
    )["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    run = dagster_ui.wait_for_run(run_id)
    assert run["status"] == "SUCCESS", dagster_ui.log_tail()
    assert run["jobName"] == SCHEDULE_JOB

    assert {"key": "dagster/schedule_name", "value": SCHEDULE} in run["tags"]

    # the schedule's run shows up in the UI: in the runs list and on its own page
    page.goto("/runs")
    page.get_by_text(run_id[:8]).first.wait_for()
    page.goto(f"/runs/{run_id}")
    page.get_by_text("Success", exact=True).first.wait_for()

    # and the sync landed in the warehouse
    import duckdb

    with duckdb.connect(str(dagster_ui.database), read_only=True) as con:
        (exports,), = con.execute("SELECT count(*) FROM posthog.exports").fetchall()
    assert exports > 0


def _schedule_status(ui: DagsterUI) -> str:
    data = ui.graphql(
        """query($s: ScheduleSelector!) { scheduleOrError(scheduleSelector: $s) {
             __typename ... on Schedule { scheduleState { status } } } }""",
        {"s": {"repositoryLocationName": LOCATION, "repositoryName": "__repository__",
               "scheduleName": SCHEDULE}},
    )["scheduleOrError"]
    return data["scheduleState"]["status"]
