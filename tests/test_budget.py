"""Tests for RequestBudget: sliding windows with a fake clock, threads, and real processes."""

from __future__ import annotations

import multiprocessing
import pickle
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from resources.budget import RequestBudget, budget_bucket

BUCKET = budget_bucket("https://us.posthog.com", "phx_budget_test_key")


class FakeTime:
    """A clock whose sleep advances it, shared by several budgets like processes share time."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def make(path: Path, limits: list[tuple[int, float]], t: FakeTime, **kw: object) -> RequestBudget:
    return RequestBudget(path, BUCKET, limits, clock=t.clock, sleep=t.sleep, **kw)  # type: ignore[arg-type]


def stored_timestamps(path: Path, bucket: str = BUCKET) -> list[float]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT ts FROM requests WHERE bucket = ? ORDER BY ts", (bucket,))
        return [ts for (ts,) in rows]


def max_in_window(timestamps: list[float], window: float) -> int:
    """The most requests that fall within any half-open window (t - window, t]."""
    ts = sorted(timestamps)
    best = 0
    start = 0
    for end, t in enumerate(ts):
        while ts[start] <= t - window:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_budget_bucket_is_sha256_of_host_and_key() -> None:
    import hashlib

    assert hashlib.sha256(b"https://us.posthog.com\0phx_budget_test_key").hexdigest() == BUCKET
    assert budget_bucket("https://eu.posthog.com", "phx_budget_test_key") != BUCKET


def test_budget_respects_one_window_with_safety_margin(tmp_path: Path) -> None:
    t = FakeTime()
    budget = make(tmp_path / "b.sqlite", [(3, 10.0)], t, safety=0.5)
    assert [budget.acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    start = t.now
    waited = budget.acquire()
    # The first request must be more than 10 s + 0.5 s safety old before a fourth is allowed.
    assert waited == pytest.approx(10.5, abs=0.01)
    assert t.now - start == pytest.approx(10.5, abs=0.01)


def test_budget_respects_every_window(tmp_path: Path) -> None:
    t = FakeTime()
    budget = make(tmp_path / "b.sqlite", [(2, 1.0), (3, 10.0)], t, safety=0.0)
    times = []
    for _ in range(7):
        budget.acquire()
        times.append(t.now - 1_000_000.0)
    # two per second, but only three per ten seconds
    assert times == pytest.approx([0.0, 0.0, 1.0, 10.0, 10.0, 11.0, 20.0], abs=0.01)
    assert max_in_window(stored_timestamps(tmp_path / "b.sqlite"), 1.0) <= 2
    assert max_in_window(stored_timestamps(tmp_path / "b.sqlite"), 10.0) <= 3


def test_budget_is_shared_between_instances_on_one_file(tmp_path: Path) -> None:
    t = FakeTime()
    path = tmp_path / "b.sqlite"
    first, second = make(path, [(2, 5.0)], t, safety=0.0), make(path, [(2, 5.0)], t, safety=0.0)
    assert first.acquire() == 0.0
    assert second.acquire() == 0.0
    assert first.acquire() == pytest.approx(5.0, abs=0.01)


def test_budget_buckets_are_independent(tmp_path: Path) -> None:
    t = FakeTime()
    path = tmp_path / "b.sqlite"
    one = make(path, [(1, 60.0)], t)
    other = RequestBudget(path, "other-bucket", [(1, 60.0)], clock=t.clock, sleep=t.sleep)
    assert one.acquire() == 0.0
    assert other.acquire() == 0.0


def test_budget_pause_until_blocks_every_instance(tmp_path: Path) -> None:
    t = FakeTime()
    path = tmp_path / "b.sqlite"
    first, second = make(path, [(100, 60.0)], t), make(path, [(100, 60.0)], t)
    first.pause_until(t.now + 30.0)
    first.pause_until(t.now + 10.0)  # an earlier deadline never shortens a pause
    assert second.acquire() == pytest.approx(30.0, abs=0.01)
    assert first.acquire() == 0.0


@pytest.mark.parametrize("limits", [[], [(0, 60.0)], [(0, 60.0), (0, 3600.0)]])
def test_budget_unlimited_never_touches_disk(
    tmp_path: Path, limits: list[tuple[int, float]]
) -> None:
    t = FakeTime()
    path = tmp_path / "state" / "b.sqlite"
    budget = make(path, limits, t)
    assert budget.unlimited
    assert all(budget.acquire() == 0.0 for _ in range(1000))
    budget.pause_until(t.now + 5.0)  # still honoured, in process
    assert budget.acquire() == pytest.approx(5.0)
    assert not path.parent.exists()


def test_budget_zero_window_is_unlimited_but_others_apply(tmp_path: Path) -> None:
    t = FakeTime()
    budget = make(tmp_path / "b.sqlite", [(0, 60.0), (2, 3600.0)], t, safety=0.0)
    assert budget.limits == ((2, 3600.0),)
    budget.acquire()
    budget.acquire()
    assert budget.acquire() == pytest.approx(3600.0, abs=0.01)


def test_budget_prunes_old_rows(tmp_path: Path) -> None:
    t = FakeTime()
    path = tmp_path / "b.sqlite"
    budget = make(path, [(1000, 10.0)], t, safety=0.5)
    for _ in range(50):
        budget.acquire()
        t.now += 1.0
    # Only rows inside the longest window (plus safety) remain.
    assert len(stored_timestamps(path)) <= 11


def test_budget_store_never_contains_the_key(tmp_path: Path) -> None:
    t = FakeTime()
    path = tmp_path / "b.sqlite"
    budget = make(path, [(5, 1.0)], t)
    budget.acquire()
    budget.pause_until(t.now + 1)
    budget.close()
    for file in tmp_path.iterdir():
        assert b"phx_budget_test_key" not in file.read_bytes()
    assert "phx_" not in repr(budget)


def test_budget_rejects_bad_limits(tmp_path: Path) -> None:
    for limits in ([(-1, 60.0)], [(5, 0.0)], [(1.5, 60.0)]):
        with pytest.raises(ValueError):
            RequestBudget(tmp_path / "b.sqlite", BUCKET, limits)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RequestBudget(tmp_path / "b.sqlite", "", [(1, 1.0)])


def test_budget_pickles_without_its_connection(tmp_path: Path) -> None:
    budget = RequestBudget(tmp_path / "b.sqlite", BUCKET, [(5, 1.0)])
    budget.acquire()
    clone = pickle.loads(pickle.dumps(budget))
    assert clone.acquire() == 0.0
    assert len(stored_timestamps(tmp_path / "b.sqlite")) == 2


def test_budget_threads_never_exceed_a_window(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite"
    # The long second window keeps every row so the whole history can be checked.
    budget = RequestBudget(path, BUCKET, [(10, 0.5), (100_000, 60.0)], safety=0.0)
    stop_at = time.time() + 1.2
    errors: list[BaseException] = []

    def hammer() -> None:
        try:
            while time.time() < stop_at:
                budget.acquire()
        except BaseException as exc:  # pragma: no cover - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    stamps = stored_timestamps(path)
    assert max_in_window(stamps, 0.5) <= 10
    assert len(stamps) >= 20  # it did not starve


def _hammer_process(path: str, start_at: float, stop_at: float) -> None:
    budget = RequestBudget(Path(path), BUCKET, [(20, 1.0), (1_000_000, 60.0)], safety=0.0)
    while time.time() < start_at:
        time.sleep(0.005)
    while time.time() < stop_at:
        budget.acquire()
    budget.close()


def test_budget_processes_never_exceed_a_window(tmp_path: Path) -> None:
    path = tmp_path / "state" / "budget.sqlite"
    ctx = multiprocessing.get_context("spawn")
    start_at = time.time() + 1.5  # let every interpreter start before the race begins
    stop_at = start_at + 2.5
    procs = [
        ctx.Process(target=_hammer_process, args=(str(path), start_at, stop_at)) for _ in range(3)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=30)
    assert [proc.exitcode for proc in procs] == [0, 0, 0]
    stamps = stored_timestamps(path)
    assert max_in_window(stamps, 1.0) <= 20
    # About 20 per second for 2.5 s (plus calls already waiting at the deadline): not starved.
    assert len(stamps) >= 40


def _first_acquire(path: str, start_at: float) -> None:
    # A long window: on a loaded machine the children reach start_at seconds apart, and a
    # 1 s window pruned the earlier ones' rows before they were counted.
    budget = RequestBudget(Path(path), BUCKET, [(1000, 600.0)], safety=0.0)
    while time.time() < start_at:
        time.sleep(0.001)
    budget.acquire()
    budget.close()


def test_budget_many_processes_create_the_store_at_the_same_moment(tmp_path: Path) -> None:
    """Every step of a first sync opens a brand-new store at once; none may fail to set it up."""
    ctx = multiprocessing.get_context("spawn")
    for round_ in range(3):
        path = tmp_path / f"round{round_}" / "budget.sqlite"
        start_at = time.time() + 1.5
        procs = [ctx.Process(target=_first_acquire, args=(str(path), start_at)) for _ in range(8)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(timeout=30)
        assert [proc.exitcode for proc in procs] == [0] * 8
        assert len(stored_timestamps(path)) == 8
