"""PostgresRequestBudget against a real PostgreSQL server on 127.0.0.1 (tests/pg_server.py):
windows held by processes racing on one budget, the database's clock, no key stored, a shared
429 pause, and the resource choosing the store from POSTHOG_BUDGET_URL."""

from __future__ import annotations

import hashlib
import multiprocessing
import pickle
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from resources.budget import QUERY, RequestBudget, budget_bucket, open_budget
from resources.budget_pg import PostgresRequestBudget, libpq_url, redact_url
from resources.errors import PostHogConfigError
from resources.posthog import PostHogResource
from tests.budget_workers import acquire_and_report, hammer_pg
from tests.test_budget import max_in_window

KEY = "phx_pg_budget_test_key"
HOST = "https://us.posthog.com"
BUCKET = budget_bucket(HOST, KEY)


def stored_timestamps(url: str, bucket: str = BUCKET) -> list[float]:
    """Every recorded slot of `bucket`, as epoch seconds of the database's clock."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT extract(epoch FROM ts)::float8 FROM posthog_budget_requests "
            "WHERE bucket = %s ORDER BY ts", (bucket,)).fetchall()
    return [ts for (ts,) in rows]


def db_now(url: str) -> float:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()[0]


def test_pg_budget_respects_every_window(pg_url: str) -> None:
    # The long third window keeps every row (older ones are pruned) so all can be checked.
    limits = [(3, 0.6), (5, 3.0), (1000, 60.0)]
    with PostgresRequestBudget(pg_url, BUCKET, limits, safety=0.0) as budget:
        assert [budget.acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
        started = time.monotonic()
        assert budget.acquire() == pytest.approx(0.6, abs=0.1)  # the first must leave 0.6 s
        budget.acquire()
        assert time.monotonic() - started == pytest.approx(0.6, abs=0.15)
        assert budget.acquire() > 1.5  # five in 3 s: the sixth waits for the first to age out
    stamps = stored_timestamps(pg_url)
    assert len(stamps) == 6
    assert max_in_window(stamps, 0.6) <= 3
    assert max_in_window(stamps, 3.0) <= 5


def test_pg_budget_buckets_are_independent(pg_url: str) -> None:
    one = PostgresRequestBudget(pg_url, BUCKET, [(1, 60.0)])
    other = PostgresRequestBudget(pg_url, budget_bucket(HOST, "phx_other"), [(1, 60.0)])
    assert one.acquire() == 0.0
    assert other.acquire() == 0.0
    one.close()
    other.close()


def test_pg_budget_processes_with_skewed_clocks_never_exceed_a_window(pg_url: str) -> None:
    """Four processes, their clocks an hour apart, race on one budget: the slots recorded (on the
    database's clock) never put more than 20 in any second, and none starved."""
    ctx = multiprocessing.get_context("spawn")
    ready, go = ctx.Queue(), ctx.Event()
    limits = [(20, 1.0), (1_000_000, 60.0)]
    procs = [ctx.Process(target=hammer_pg, args=(pg_url, BUCKET, limits, skew, ready, go, 3.0))
             for skew in (-3600.0, 0.0, 1800.0, 3600.0)]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.get(timeout=60)
    before = db_now(pg_url)
    go.set()
    for proc in procs:
        proc.join(timeout=60)
    after = db_now(pg_url)
    assert [proc.exitcode for proc in procs] == [0, 0, 0, 0]
    stamps = stored_timestamps(pg_url)
    assert max_in_window(stamps, 1.0) <= 20
    assert len(stamps) >= 50  # about 20 a second for 3 s
    assert before <= stamps[0] and stamps[-1] <= after  # the database's clock, not a pod's


def test_pg_budget_uses_the_database_clock(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(time, "time", lambda: 4_000_000_000.0)  # this pod thinks it is 2096
    with PostgresRequestBudget(pg_url, BUCKET, [(10, 60.0)]) as budget:
        budget.acquire()
        now = budget.now()
    monkeypatch.undo()
    (stamp,) = stored_timestamps(pg_url)
    assert abs(stamp - time.time()) < 5
    assert abs(now - time.time()) < 5


def test_pg_budget_store_never_contains_the_key(pg_url: str) -> None:
    with PostgresRequestBudget(pg_url, BUCKET, [(5, 1.0)]) as budget:
        budget.acquire()
        budget.pause_for(0.01)
    with psycopg.connect(pg_url) as conn:
        tables = [t for (t,) in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        assert sorted(tables) == ["posthog_budget_buckets", "posthog_budget_learned",
                                  "posthog_budget_requests"]
        dump = " ".join(str(row) for table in tables
                        for row in conn.execute(f"SELECT t::text FROM {table} t"))
        (bucket,) = conn.execute("SELECT bucket FROM posthog_budget_buckets").fetchone()
    assert KEY not in dump and "phx_" not in dump
    assert bucket == hashlib.sha256(f"{HOST}\0{KEY}".encode()).hexdigest()


def test_pg_budget_429_pause_is_shared_with_other_processes(pg_url: str) -> None:
    """A client's 429 pauses its budget (`pause_until(now() + Retry-After)`, as the transport
    does): a process on another 'machine' holds off for the rest of the pause."""
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) == 1:
            return httpx.Response(429, headers={"Retry-After": "2"},
                                  json={"type": "throttled_error", "code": "throttled",
                                        "detail": "throttled", "attr": None})
        return httpx.Response(200, json=[])

    resource = PostHogResource(host=HOST, project_id="1", personal_api_key=KEY,
                               budget_url=pg_url, request_max_retry_delay=2.0)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    with resource.get_client(transport=httpx.MockTransport(handler)) as client:
        assert isinstance(client._t.budget, PostgresRequestBudget)
        other = ctx.Process(target=acquire_and_report, args=(pg_url, BUCKET, queue))
        # The pause is stored before the client sleeps its 2 s; the other process starts then.
        original = client._t.budget.pause_until

        def pause_then_start(ts: float) -> None:
            original(ts)
            other.start()

        client._t.budget.pause_until = pause_then_start  # type: ignore[method-assign]
        assert client.list_group_types() == []
    other.join(timeout=30)
    assert other.exitcode == 0
    waited = queue.get(timeout=5)
    # The pause had 2 s to run when it started; starting Python took part of it.
    assert 0.3 < waited <= 2.1
    with psycopg.connect(pg_url) as conn:
        (paused_until,) = conn.execute(
            "SELECT extract(epoch FROM paused_until)::float8 FROM posthog_budget_buckets "
            "WHERE bucket = %s", (BUCKET,)).fetchone()
    stamps = stored_timestamps(pg_url)
    # the retry and the other process's: the 429'd request left the log (note_throttled: the
    # server never counted it)
    assert len(stamps) == 2
    assert all(stamp >= paused_until for stamp in stamps)


def test_pg_budget_pause_never_shortens(pg_url: str) -> None:
    with PostgresRequestBudget(pg_url, BUCKET, [(100, 60.0)]) as first, \
            PostgresRequestBudget(pg_url, BUCKET, [(100, 60.0)]) as second:
        first.pause_for(1.0)
        first.pause_until(first.now() + 0.1)  # an earlier deadline never shortens a pause
        assert second.acquire() == pytest.approx(1.0, abs=0.15)
        assert first.acquire() == 0.0


def test_pg_budget_many_processes_create_the_tables_at_once(pg_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=acquire_and_report, args=(pg_url, BUCKET, queue)) for _ in range(6)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=60)
    assert [proc.exitcode for proc in procs] == [0] * 6
    assert len(stored_timestamps(pg_url)) == 6


def test_pg_budget_reconnects_after_the_server_drops_it(pg_url: str) -> None:
    with PostgresRequestBudget(pg_url, BUCKET, [(100, 60.0)]) as budget:
        budget.acquire()
        conn = budget._conn
        assert conn is not None
        (pid,) = conn.execute("SELECT pg_backend_pid()").fetchone()
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        assert budget.acquire() == 0.0
    assert len(stored_timestamps(pg_url)) == 2


def test_pg_budget_pickles_without_its_connection(pg_url: str) -> None:
    budget = PostgresRequestBudget(pg_url, BUCKET, [(5, 1.0)])
    budget.acquire()
    clone = pickle.loads(pickle.dumps(budget))
    assert clone.acquire() == 0.0
    budget.close()
    clone.close()
    assert len(stored_timestamps(pg_url)) == 2


def test_pg_budget_unlimited_never_connects() -> None:
    budget = PostgresRequestBudget("postgresql://nobody@127.0.0.1:9/none", BUCKET, [(0, 60.0)])
    assert budget.unlimited
    assert all(budget.acquire() == 0.0 for _ in range(100))


def test_pg_budget_url_password_is_redacted() -> None:
    url = "postgresql://budget:s3cret-pw@db.internal:5432/dagster?sslmode=require"
    assert redact_url(url) == "postgresql://budget:***@db.internal:5432/dagster?sslmode=require"
    assert "s3cret" not in redact_url("postgresql://db/x?password=s3cret&sslmode=require")
    budget = PostgresRequestBudget(url, BUCKET, [(1, 1.0)])
    assert "s3cret" not in repr(budget)
    resource = PostHogResource(host=HOST, project_id="1", personal_api_key=KEY, budget_url=url)
    assert "s3cret" not in repr(resource)


def test_open_budget_chooses_the_store(tmp_path: Path) -> None:
    assert isinstance(open_budget(tmp_path / "b.sqlite", BUCKET, [(1, 1.0)]), RequestBudget)
    assert isinstance(open_budget(str(tmp_path / "b.sqlite"), BUCKET, [(1, 1.0)]), RequestBudget)
    pg = open_budget("postgresql://u@h/db", BUCKET, [(1, 1.0)])
    assert isinstance(pg, PostgresRequestBudget)
    assert libpq_url("postgresql+psycopg2://u:p@h:5/db") == "postgresql://u:p@h:5/db"
    assert libpq_url("POSTGRES://u@h/db") == "postgresql://u@h/db"


def test_pg_budget_takes_a_sqlalchemy_url_as_dagster_does(pg_url: str) -> None:
    """DAGSTER_PG_URL needs postgresql+psycopg2:// (deploy/dagster.yaml); the same URL works."""
    url = pg_url.replace("postgresql://", "postgresql+psycopg2://")
    with PostgresRequestBudget(url, BUCKET, [(5, 1.0)]) as budget:
        assert budget.acquire() == 0.0
    assert len(stored_timestamps(pg_url)) == 1


def test_resource_budget_url_must_be_postgres(tmp_path: Path) -> None:
    resource = PostHogResource(host=HOST, project_id="1", personal_api_key=KEY,
                               budget_url="mysql://u:pw@h/db", state_dir=str(tmp_path))
    with pytest.raises(PostHogConfigError, match="POSTHOG_BUDGET_URL") as info:
        resource.get_client()
    assert "pw@" not in str(info.value)


def test_pg_server_listens_on_loopback_and_not_as_root(pg_server) -> None:
    assert pg_server.proc is not None
    status = Path(f"/proc/{pg_server.proc.pid}/status").read_text()
    uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    assert uid != 0
    with psycopg.connect(pg_server.url()) as conn:
        (addresses,) = conn.execute("SHOW listen_addresses").fetchone()
    assert addresses == "127.0.0.1"


def test_pg_budget_learns_from_two_agreeing_429s_and_shares_the_window(pg_url: str) -> None:
    """As the SQLite budget (tests/test_budget_learning.py): a 429 takes the refused request
    out of the log, a second agreeing one enforces the window, for every process using the
    database; the query API's bucket is another row, learning nothing from the general one."""
    configured = [(480, 60.0), (4800, 3600.0)]
    with PostgresRequestBudget(pg_url, BUCKET, configured) as budget:
        for _ in range(30):
            assert budget.acquire() == 0.0
        assert budget.note_throttled(10.0) is None  # a lone 429 teaches nothing
        assert budget.learned_windows() == []
        assert len(stored_timestamps(pg_url)) == 29  # the refused request left the log
        budget.acquire()
        learned = budget.note_throttled(10.0)
        assert learned is not None and learned[0] == 29 and 10.0 <= learned[1] <= 12.0
    waits: list[float] = []

    class Waited(Exception):
        pass

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        raise Waited

    other = PostgresRequestBudget(pg_url, BUCKET, configured, sleep=sleep)
    assert other.learned_windows() == [learned]
    with pytest.raises(Waited):
        other.acquire()  # 29 in the learned window already: wait for the oldest to leave it
    assert waits and waits[0] > 5.0
    other.close()
    query = PostgresRequestBudget(pg_url, budget_bucket(HOST, KEY, QUERY), [(120, 3600.0)])
    assert query.learned_windows() == [] and query.acquire() == 0.0
    query.close()
