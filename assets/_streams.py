"""Small helpers the assets share: interleaving concurrent generators, progress logging."""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import dagster as dg

from assets.project import SINGLE, Project
from assets.tables import begin_sync
from resources.lake import ScopedLake, release_memory

T = TypeVar("T")
K = TypeVar("K")

_DONE = object()


def interleave(
    sources: dict[K, Callable[[], Iterable[T]]], *, max_workers: int, buffer: int = 16
) -> Iterator[tuple[K, T]]:
    """Run each source in a worker thread and yield `(key, item)` as items arrive.

    The queue is bounded, so memory stays at about `buffer` items however fast the sources are;
    the first error from any source stops the others and is re-raised here.
    """
    if not sources:
        return
    q: queue.Queue = queue.Queue(maxsize=buffer)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def run(key: K, make: Callable[[], Iterable[T]]) -> None:
        try:
            for item in make():
                if not put((key, item)):
                    return
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put((key, exc))
        finally:
            put((key, _DONE))

    pending = len(sources)
    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, pending))) as pool:
        for key, make in sources.items():
            pool.submit(run, key, make)
        try:
            while pending:
                key, item = q.get()
                if item is _DONE:
                    pending -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield key, item
        finally:
            stop.set()


class Progress:
    """Logs how far a long step has got: at most every `interval` seconds (never floods the log)
    and, used as a context manager, at least every `interval` seconds too (a heartbeat thread
    logs while the step waits, e.g. on the rate budget).

    A line says what is done so far (the counts passed to `update`, plus pages, requests and
    bytes from the client's `stats` when given), the rate, and, when a total is known
    (`total=`/`done=`, or `expected_total=` e.g. the previous snapshot's row count), the
    expected time left. When the rate budget is the limit (the client waited on it for at least
    half of the last interval) the line says so, and the time left is estimated from the
    request rate the budget allows (`requests_per_second`) when given.
    """

    def __init__(self, log: logging.Logger, label: str, *, interval: float = 15.0,
                 stats: Any = None, expected_total: int | None = None, unit: str = "rows",
                 requests_per_second: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = log
        self._label = label
        self._interval = interval
        self._stats = stats
        self._expected_total = expected_total
        self._unit = unit
        self._budget_rps = requests_per_second
        self._clock = clock
        self._start = clock()
        self._last = self._start
        self._last_waited = float(getattr(stats, "waited_for_budget_s", 0.0) or 0.0)
        self._last_counts: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lines = 0

    # -- heartbeat ---------------------------------------------------------------------------
    def __enter__(self) -> Progress:
        self._thread = threading.Thread(target=self._beat, name=f"progress-{self._label}",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _beat(self) -> None:
        while not self._stop.wait(min(self._interval, 5.0)):
            with self._lock:
                counts = dict(self._last_counts)
            self.update(**counts)

    # -- logging -----------------------------------------------------------------------------
    def update(self, *, force: bool = False, total: int | None = None, done: int | None = None,
               **counts: float) -> bool:
        """Log a progress line if `interval` has passed since the last one (or `force`)."""
        with self._lock:
            self._last_counts = {"total": total, "done": done, **counts}
            now = self._clock()
            if not force and now - self._last < self._interval:
                return False
            since_last = max(now - self._last, 1e-9)
            self._last = now
            line = self._line(now, since_last, total, done, counts)
            self.lines += 1
        self._log.info("%s", line)
        return True

    def _line(self, now: float, since_last: float, total: int | None, done: int | None,
              counts: dict[str, float]) -> str:
        elapsed = max(now - self._start, 1e-9)
        stats = self._stats
        shown = dict(counts)
        if stats is not None:
            for name, attr in (("pages", "pages"), ("requests", "requests"),
                               ("bytes", "bytes_downloaded")):
                value = getattr(stats, attr, 0)
                if value or name != "bytes":
                    shown.setdefault(name, value)
        parts = [_count(name, value) for name, value in shown.items() if value is not None]
        if done is None and total is None and self._expected_total:
            # the main count (the first one passed) against what we expect, e.g. last snapshot
            first = next(iter(counts.values()), None)
            done, total = (int(first) if first is not None else None), self._expected_total
        text = f"{self._label}: {', '.join(parts) or 'started'} after {_duration(elapsed)}"
        if done and elapsed >= 1:
            text += f" ({done / elapsed:,.0f} {self._unit}/s)"
        budget_bound = False
        if stats is not None:
            waited = float(getattr(stats, "waited_for_budget_s", 0.0) or 0.0)
            budget_bound = waited - self._last_waited >= 0.5 * since_last
            self._last_waited = waited
        if budget_bound:
            text += "; the rate budget is the limit"
        if total and done is not None:
            left_items = max(total - done, 0)
            seconds = None
            requests = getattr(stats, "requests", 0) if stats is not None else 0
            if budget_bound and self._budget_rps and requests and done:
                seconds = left_items * (requests / done) / self._budget_rps
            elif done:
                seconds = elapsed / done * left_items
            approx = "~" if total == self._expected_total else ""
            text += f"; {done:,}/{approx}{total:,} {self._unit}"
            if seconds is not None:
                text += f", about {_duration(seconds)} left"
        return text


def _count(name: str, value: float) -> str:
    name = name.replace("_", " ")
    if name == "bytes":
        return f"{_bytes(value)} downloaded"
    return f"{value:,.0f} {name}" if not isinstance(value, str) else f"{name} {value}"


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} TB"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


@contextmanager
def asset_sync(context: dg.AssetExecutionContext, config: Any, posthog: Any, lake: Any,
               project: Project = SINGLE) -> Iterator[tuple[ScopedLake, Any]]:
    """What a landing asset works inside: a client for its project, the lake confined to that
    project's rows (`project_id`), and the asset's own lock (one sync of it at a time, across
    processes; a second waits up to `config.lock_timeout_seconds`). A failure is logged with
    the project it belongs to before it fails the step."""
    lake_ = lake.get_lake()
    lake_.remove_dead_leftovers()
    begin_sync(context.log)  # each misfit field is warned about once per sync
    # What the process holds before the step (Dagster, the imports: some 300k objects) is moved
    # out of the collector's sight for the step: its full collections would otherwise walk all
    # of it, again and again, while pages churn.
    gc.freeze()
    try:
        with lake_.lock(context.asset_key.to_user_string(), timeout=config.lock_timeout_seconds), \
                posthog.get_client(logger=context.log, project=project.config) as client:
            store = ScopedLake(lake_, client.project_number(),
                               adopt_unscoped=not project.several, log=context.log)
            yield store, client
    except Exception as exc:
        if project.several:
            context.log.error("%s failed: %s: %s", project.label, type(exc).__name__,
                              str(exc).splitlines()[0] if str(exc) else "")
        raise
    finally:
        begin_sync()  # the step's logger ends with the step
        # collected while still frozen: only what the step made is walked (a full collection
        # of the whole heap costs 0.1 s, each step)
        release_memory()
        gc.unfreeze()
