"""Small helpers the assets share: interleaving concurrent generators, progress logging."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

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
    """Logs how far a long step has got at most every `interval` seconds (never floods the log)."""

    def __init__(self, log: logging.Logger, label: str, *, interval: float = 15.0) -> None:
        self._log = log
        self._label = label
        self._interval = interval
        self._start = time.monotonic()
        self._last = self._start

    def update(self, *, force: bool = False, total: int | None = None, done: int | None = None,
               **counts: float) -> None:
        now = time.monotonic()
        if not force and now - self._last < self._interval:
            return
        self._last = now
        elapsed = now - self._start
        parts = [f"{name.replace('_', ' ')} {value:,.0f}" for name, value in counts.items()]
        if total and done:
            left = elapsed / done * max(total - done, 0)
            parts.append(f"{done:,}/{total:,}, about {left:,.0f}s left")
        self._log.info("%s: %s after %.0fs", self._label, ", ".join(parts), elapsed)
