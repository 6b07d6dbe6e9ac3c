"""A request budget shared by every thread and process using one PostHog key (SQLite log)."""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import filelock

__all__ = [
    "GENERAL", "QUERY", "RequestBudget", "agreed_window", "budget_bucket", "open_budget",
    "validated_windows",
]

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 60.0
# Added to every computed wait so float rounding never lands us a hair inside the window.
_EPSILON_S = 1e-3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (bucket TEXT NOT NULL, ts REAL NOT NULL);
CREATE INDEX IF NOT EXISTS requests_bucket_ts ON requests (bucket, ts);
CREATE TABLE IF NOT EXISTS pauses (bucket TEXT PRIMARY KEY, until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS learned (
    bucket TEXT NOT NULL, count INTEGER NOT NULL, seconds REAL NOT NULL,
    learned_at REAL NOT NULL, confirmed INTEGER NOT NULL
);
"""

# A window learned from 429s is kept this long (at least twice its own length), then forgotten:
# if the server allows more again, we find out.
LEARNED_TTL_S = 3600.0
# Two 429s agree on a window when their lengths differ by at most this (or 10%).
_AGREE_S = 1.5
# At most this many hypotheses are checked against the log per 429.
_MAX_CANDIDATES = 200


# PostHog's throttle buckets (posthog/rate_limit.py): the general one every endpoint we list uses
# (BurstRateThrottle 480/min + SustainedRateThrottle 4800/h), and the query API's own
# (HogQLQueryThrottle, scope "query", 120/h by default, raised per team on request). A request
# in one never counts against, nor waits for, the other.
GENERAL = "general"
QUERY = "query"


def budget_bucket(host: str, api_key: str, scope: str = GENERAL) -> str:
    """Bucket id for one key on one origin and one of PostHog's throttle scopes:
    sha256(host NUL key) (the general scope, as before), `:<scope>` appended for the others;
    the key is never stored."""
    digest = hashlib.sha256(f"{host}\0{api_key}".encode()).hexdigest()
    return digest if scope == GENERAL else f"{digest}:{scope}"


def validated_windows(limits: Sequence[tuple[int, float]]) -> tuple[tuple[int, float], ...]:
    """(count, seconds) windows checked, with the unlimited ones (count 0) left out."""
    windows: list[tuple[int, float]] = []
    for count, seconds in limits:
        if int(count) != count or count < 0:
            raise ValueError(f"window count must be an integer >= 0, got {count!r}")
        if not seconds > 0:
            raise ValueError(f"window length must be > 0 seconds, got {seconds!r}")
        if count > 0:  # 0 means this window is unlimited
            windows.append((int(count), float(seconds)))
    return tuple(windows)


def open_budget(
    store: str | Path, bucket: str, limits: Sequence[tuple[int, float]]
) -> RequestBudget:
    """The budget kept in `store`: a postgresql:// URL (shared by every machine reaching that
    database), else the path of the embedded SQLite file (shared by the processes of one
    machine)."""
    from resources.budget_pg import PostgresRequestBudget, is_postgres_url

    if isinstance(store, str) and is_postgres_url(store):
        return PostgresRequestBudget(store, bucket, limits)  # type: ignore[return-value]
    return RequestBudget(Path(store), bucket, limits)


class ProcessLocalConnection:
    """What both budget stores share about their connection: one per process (a forked child
    opens its own; `close` never closes the parent's), closed on `with` exit, and left out when
    the budget is pickled to another process (e.g. Dagster's multiprocess executor)."""

    _lock: threading.Lock
    _conn: object | None
    _conn_pid: int | None

    def close(self) -> None:
        """Close this process's connection to the store."""
        with self._lock:
            if self._conn is not None and self._conn_pid == os.getpid():
                self._conn.close()
            self._conn = None
            self._conn_pid = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for name in ("_lock", "_conn", "_conn_pid", "_inherited", "_recorded"):
            state.pop(name)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._conn = None
        self._conn_pid = None
        self._inherited = []
        self._recorded = threading.local()


class RequestBudget(ProcessLocalConnection):
    """Blocks until a request fits every sliding window, as recorded by all users of `path`."""

    def __init__(
        self,
        path: Path,
        bucket: str,
        limits: Sequence[tuple[int, float]],
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        safety: float = 0.5,
    ) -> None:
        if not bucket:
            raise ValueError("bucket must be a non-empty string")
        if safety < 0:
            raise ValueError("safety must be >= 0 seconds")
        self.path = Path(path)
        self.bucket = bucket
        self.limits = validated_windows(limits)
        self.safety = float(safety)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._conn_pid: int | None = None
        self._local_pause_until = 0.0
        self._recorded = threading.local()  # the ts this thread's last request was logged at
        # Connections inherited through fork must never be used (or closed) by the child.
        self._inherited: list[sqlite3.Connection] = []

    @property
    def unlimited(self) -> bool:
        """True when no window limits anything (acquire then never touches disk)."""
        return not self.limits

    @property
    def sustained_rate(self) -> float | None:
        """Requests per second the tightest window allows over its length; None if unlimited."""
        return min((count / seconds for count, seconds in self.limits), default=None)

    def now(self) -> float:
        """The budget's clock, for callers computing `pause_until` deadlines."""
        return self._clock()

    def __repr__(self) -> str:
        return (
            f"RequestBudget(path={str(self.path)!r}, bucket={self.bucket[:12]}…, "
            f"limits={self.limits})"
        )

    def acquire(self) -> float:
        """Wait until one more request fits every window, record it, return the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                delay = self._local_delay() if self.unlimited else self._try_record()
            if delay <= 0:
                if waited:
                    log.debug("budget: waited %.3fs for a request slot", waited)
                return waited
            log.debug("budget: no slot free, sleeping %.3fs", delay)
            self._sleep(delay)
            waited += delay

    def pause_until(self, ts: float) -> None:
        """Make every process sharing this budget hold requests until `ts` (e.g. after a 429)."""
        with self._lock:
            if self.unlimited:
                self._local_pause_until = max(self._local_pause_until, ts)
                return
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "INSERT INTO pauses (bucket, until) VALUES (?, ?) "
                    "ON CONFLICT (bucket) DO UPDATE SET until = max(until, excluded.until)",
                    (self.bucket, ts),
                )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        log.debug("budget: paused until %.3f", ts)

    def note_throttled(self, retry_after: float | None) -> tuple[int, float] | None:
        """The request this thread last sent was answered 429: learn what the server allows.

        When the server allows less than the configured windows (another tool shares the key,
        or PostHog lowered a limit), a 429 says a window is full. The refused request never
        counted at the server (DRF records only allowed requests), so it leaves our log. With
        Retry-After (DRF: the time until the oldest request in the full window leaves it,
        rounded up to a second), the window is found in our log: its oldest request `r_k` is
        one that followed a quiet gap longer than Retry-After - 1 (else the request before it
        would be in the window too), so the window is `C` requests (ours since `r_k`) per
        `D = now + Retry-After - r_k` seconds, the newest such `r_k` whose window our log does
        not contradict (no earlier span of D - 1 s held more than C requests that the server
        let through). A window is enforced, by every process sharing the budget, once a second
        429 agrees on it (lengths within 1.5 s or 10%; the smaller count kept): a lone 429 (a
        proxy's, a fault) teaches nothing. Learned windows are forgotten after an hour.
        Returns the window enforced, if this 429 confirmed one."""
        ts = getattr(self._recorded, "ts", None)
        self._recorded.ts = None
        if self.unlimited:
            return None  # nothing is logged without a window to enforce
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                if ts is not None:
                    conn.execute(
                        "DELETE FROM requests WHERE rowid = (SELECT rowid FROM requests "
                        "WHERE bucket = ? AND ts = ? LIMIT 1)", (self.bucket, ts))
                learned = None
                if retry_after is not None and retry_after > 0:
                    now = self._clock()
                    log_ts = [r[0] for r in conn.execute(
                        "SELECT ts FROM requests WHERE bucket = ? AND ts <= ? ORDER BY ts",
                        (self.bucket, now))]
                    window = _window_from_log(log_ts, now, retry_after)
                    if window is not None:
                        learned = self._learn_locked(conn, now, *window)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        if learned is not None:
            log.info(
                "budget: the server allows about %d requests per %.1fs in this bucket (learned "
                "from its 429s); pacing at that", learned[0], learned[1])
        return learned

    def learned_windows(self) -> list[tuple[int, float]]:
        """Windows learned from 429s and enforced now, beyond the configured ones."""
        if self.unlimited:
            return []
        with self._lock:
            conn = self._connection()
            return self._learned_locked(conn, self._clock())

    def _learned_locked(self, conn: sqlite3.Connection, now: float) -> list[tuple[int, float]]:
        rows = conn.execute(
            "SELECT count, seconds FROM learned WHERE bucket = ? AND confirmed = 1 "
            "AND learned_at > ? - max(?, 2 * seconds)", (self.bucket, now, LEARNED_TTL_S))
        return [(int(c), float(d)) for c, d in rows]

    def _learn_locked(self, conn: sqlite3.Connection, now: float, count: int, seconds: float
                      ) -> tuple[int, float] | None:
        conn.execute(
            "DELETE FROM learned WHERE bucket = ? AND learned_at <= ? - max(?, 2 * seconds)",
            (self.bucket, now, LEARNED_TTL_S))
        seen = conn.execute("SELECT rowid, count, seconds, confirmed FROM learned "
                            "WHERE bucket = ? ORDER BY rowid", (self.bucket,)).fetchall()
        row_id, window, enforced = agreed_window(seen, count, seconds)
        if row_id is None:
            conn.execute("INSERT INTO learned (bucket, count, seconds, learned_at, confirmed) "
                         "VALUES (?, ?, ?, ?, 0)", (self.bucket, *window, now))
        else:
            conn.execute("UPDATE learned SET count = ?, seconds = ?, learned_at = ?, "
                         "confirmed = 1 WHERE rowid = ?", (*window, now, row_id))
        return enforced

    def _local_delay(self) -> float:
        return max(0.0, self._local_pause_until - self._clock())

    def _connection(self) -> sqlite3.Connection:
        pid = os.getpid()
        if self._conn is not None and self._conn_pid == pid:
            return self._conn
        if self._conn is not None:
            self._inherited.append(self._conn)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            str(self.path),
            timeout=BUSY_TIMEOUT_S,
            isolation_level=None,  # we issue BEGIN IMMEDIATE / COMMIT ourselves
            check_same_thread=False,  # guarded by self._lock
        )
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        # Switching a new database to WAL needs an exclusive lock and SQLite answers "database is
        # locked" at once (no busy wait) when another process is setting it up at the same
        # moment, as every step of a first sync does: one process at a time sets up.
        with filelock.FileLock(f"{self.path}.setup.lock", timeout=BUSY_TIMEOUT_S):
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.executescript(_SCHEMA)
        self._conn, self._conn_pid = conn, pid
        return conn

    def _try_record(self) -> float:
        """Record a request if every window has room (return 0), else return how long to wait."""
        conn = self._connection()
        # IMMEDIATE takes the write lock up front, so check-then-insert is atomic across processes.
        conn.execute("BEGIN IMMEDIATE")
        try:
            now = self._clock()
            delay = self._delay_locked(conn, now)
            if delay <= 0:
                conn.execute("INSERT INTO requests (bucket, ts) VALUES (?, ?)", (self.bucket, now))
                self._recorded.ts = now
                horizon = max(seconds for _, seconds in self.limits) + self.safety
                conn.execute(
                    "DELETE FROM requests WHERE bucket = ? AND ts <= ?",
                    (self.bucket, now - horizon),
                )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return delay

    def _delay_locked(self, conn: sqlite3.Connection, now: float) -> float:
        row = conn.execute("SELECT until FROM pauses WHERE bucket = ?", (self.bucket,)).fetchone()
        if row is not None and row[0] > now:
            return row[0] - now + _EPSILON_S
        delay = 0.0
        for count, seconds in (*self.limits, *self._learned_locked(conn, now)):
            # The server allows a request iff fewer than `count` landed in the last `seconds`;
            # widening our window by `safety` absorbs latency between our clock and its arrival.
            span = seconds + self.safety
            since = now - span
            (in_window,) = conn.execute(
                "SELECT COUNT(*) FROM requests WHERE bucket = ? AND ts > ?", (self.bucket, since)
            ).fetchone()
            if in_window < count:
                continue
            # The oldest (in_window - count + 1) requests must leave the window first.
            (oldest_blocking,) = conn.execute(
                "SELECT ts FROM requests WHERE bucket = ? AND ts > ? ORDER BY ts LIMIT 1 OFFSET ?",
                (self.bucket, since, in_window - count),
            ).fetchone()
            delay = max(delay, oldest_blocking + span - now + _EPSILON_S)
        return delay


def agreed_window(seen: Sequence[tuple[int, int, float, bool]], count: int, seconds: float
                  ) -> tuple[int | None, tuple[int, float], tuple[int, float] | None]:
    """A 429's window (`count` per `seconds`) against the windows earlier 429s suggested
    (`seen`: row id, count, seconds, confirmed): ``(row id, window, enforced)``.

    Windows agree when their lengths differ by at most 1.5 s or 10%; the agreed window keeps the
    smaller count and the longer length, and is confirmed (enforced). `row id` is the earlier
    window's to update, or None: a first suggestion, kept unconfirmed. `enforced` is the window
    this 429 confirmed or changed, else None."""
    for row_id, c, d, confirmed in seen:
        if abs(d - seconds) <= max(_AGREE_S, 0.1 * max(d, seconds)):
            window = (min(c, count), max(d, seconds))
            return row_id, window, (window if not confirmed or window != (c, d) else None)
    log.debug("budget: a 429 suggests %d requests per %.1fs; waiting for a second to agree",
              count, seconds)
    return None, (count, seconds), None


def _window_from_log(log_ts: Sequence[float], now: float, retry_after: float
                     ) -> tuple[int, float] | None:
    """The (count, seconds) window a 429 at `now` with `retry_after` implies, from our log of
    allowed requests (ascending), or None (see `RequestBudget.note_throttled`)."""
    m = len(log_ts)
    checked = 0
    for k in range(m - 1, -1, -1):
        gap = log_ts[k] - log_ts[k - 1] if k > 0 else float("inf")
        if gap <= retry_after - 1.0:
            continue
        seconds = now + retry_after - log_ts[k]
        count = m - k
        checked += 1
        if not _span_exceeds(log_ts, seconds - 1.0, count):
            return count, seconds
        if checked >= _MAX_CANDIDATES:
            break
    return None


def _span_exceeds(log_ts: Sequence[float], span: float, count: int) -> bool:
    """Whether some `span` seconds of the log held more than `count` requests."""
    if span <= 0:
        return True
    lo = 0
    for hi, ts in enumerate(log_ts):
        while ts - log_ts[lo] >= span:
            lo += 1
        if hi - lo + 1 > count:
            return True
    return False
