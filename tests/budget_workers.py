"""Process targets for the budget tests: a small module, so a spawned child starts in well under
a second (the test modules import Dagster)."""

from __future__ import annotations

import time

from resources.budget_pg import PostgresRequestBudget


def hammer_pg(url: str, bucket: str, limits: list[tuple[int, float]], skew: float, ready, go,
              seconds: float) -> None:
    """Acquire slots as fast as the budget allows for `seconds` after `go`, with this process's
    clock (time.time) `skew` seconds off."""
    real_time = time.time
    time.time = lambda: real_time() + skew  # type: ignore[assignment]
    budget = PostgresRequestBudget(url, bucket, limits, safety=0.0)
    budget.now()  # connected and the tables exist before the race starts
    ready.put(True)
    go.wait(60)
    stop_at = real_time() + seconds
    while real_time() < stop_at:
        budget.acquire()
    budget.close()


def acquire_and_report(url: str, bucket: str, queue) -> None:
    """Take one slot; put the seconds it waited (on this process's monotonic clock)."""
    budget = PostgresRequestBudget(url, bucket, [(100, 60.0)])
    started = time.monotonic()
    budget.acquire()
    queue.put(time.monotonic() - started)
    budget.close()
