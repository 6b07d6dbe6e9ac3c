"""The rate budget learns from 429s what the server really allows, and paces at it.

A fake clock drives a DRF SimpleRateThrottle (the algorithm PostHog's throttles use, as the
simulator's RateLimiter implements it) and one client: every request takes a slot, a 429
carries DRF's Retry-After (rounded up) and pauses the bucket, as the transport does."""

from __future__ import annotations

import math
from collections import deque
from pathlib import Path

from resources.budget import RequestBudget, _window_from_log

POSTHOG = [(480, 60.0), (4800, 3600.0)]


class _Drf:
    def __init__(self, limits, clock) -> None:
        self.limits, self.clock = limits, clock
        self.history = [deque() for _ in limits]

    def check(self) -> float | None:
        now, waits = self.clock(), []
        for (count, seconds), hist in zip(self.limits, self.history, strict=True):
            while hist and hist[-1] <= now - seconds:
                hist.pop()
            if len(hist) >= count:
                waits.append((seconds - (now - hist[-1])) / (count - len(hist) + 1))
        if waits:
            return max(waits)
        for hist in self.history:
            hist.appendleft(now)
        return None


def _least_span(n: int, windows) -> float:
    times: list[float] = []
    while len(times) < n:
        t = times[-1] if times else 0.0
        for count, seconds in windows:
            if len(times) >= count:
                t = max(t, times[-count] + seconds)
        times.append(t)
    return times[-1]


def _run(tmp_path: Path, server, configured, n: int, *, latency: float = 0.02):
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    budget = RequestBudget(tmp_path / "budget.sqlite", "k", configured,
                           clock=lambda: now[0], sleep=sleep)
    drf = _Drf(server, lambda: now[0])
    ok = throttled = 0
    first = last = None
    while ok < n:
        budget.acquire()
        first = now[0] if first is None else first
        now[0] += latency / 2
        wait = drf.check()
        now[0] += latency / 2
        if wait is None:
            ok, last = ok + 1, now[0]
        else:
            throttled += 1
            retry_after = math.ceil(wait)
            budget.note_throttled(retry_after)
            budget.pause_until(now[0] + retry_after)
    return throttled, last - first, budget


def test_budget_learns_a_server_that_allows_less_than_configured(tmp_path):
    # the case: the server enforces 30/10 s and 120/60 s, we are configured for
    # PostHog's defaults; before, 24% of requests were 429s and time efficiency was 63%
    server = [(30, 10.0), (120, 60.0)]
    throttled, span, budget = _run(tmp_path, server, POSTHOG, 495)
    assert throttled / (495 + throttled) <= 0.05
    assert _least_span(495, server) / span >= 0.85
    learned = dict(budget.learned_windows())
    assert learned.keys() == {30, 120}
    assert 10.0 <= learned[30] <= 11.0 and 60.0 <= learned[120] <= 61.5


def test_budget_right_configuration_sees_no_429_and_learns_nothing(tmp_path):
    throttled, span, budget = _run(tmp_path, POSTHOG, POSTHOG, 1_200)
    assert throttled == 0 and budget.learned_windows() == []
    # as before learning existed: the 0.5 s safety margin and 20 ms requests, nothing more
    assert span <= _least_span(1_200, POSTHOG) * 1.06


def test_budget_a_lone_429_teaches_nothing(tmp_path):
    now = [100.0]
    budget = RequestBudget(tmp_path / "b.sqlite", "k", POSTHOG, clock=lambda: now[0])
    for _ in range(50):
        budget.acquire()
        now[0] += 0.05
    assert budget.note_throttled(1.0) is None  # e.g. an injected fault
    assert budget.learned_windows() == []


def test_window_from_log_finds_the_full_window():
    # 30 requests in a burst at 0 s, a 429 at 0.2 s with Retry-After 10: 30 per ~10 s
    log = [i * 0.005 for i in range(30)]
    count, seconds = _window_from_log(log, 0.2, 10.0)
    assert count == 30 and 10.0 <= seconds <= 10.2
    # no quiet gap longer than Retry-After - 1 before any request but the first
    assert _window_from_log([0.0, 0.5, 1.0], 1.2, 30.0) == (3, 31.2)
