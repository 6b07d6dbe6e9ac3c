"""The request budget in PostgreSQL: one budget per key for processes on many machines.

Same contract as `RequestBudget` (resources/budget.py, the embedded SQLite default), for a
deployment whose steps run in pods on several machines (POSTHOG_BUDGET_URL=postgresql://...):

- one transaction per request slot: it locks the bucket's row (SELECT ... FOR UPDATE), so every
  process using the bucket checks and records one at a time, and reads the time once, after the
  lock, from the database (clock_timestamp()): a pod whose clock is off cannot overfill a window;
- a 429 pause is stored on the same row, as a database timestamp, so every process holds off;
- the bucket is sha256(host NUL key) (`budget_bucket`): the key never reaches the database;
  the query API's bucket (`budget_bucket(..., QUERY)`) is another row, as in SQLite;
- windows learned from 429s (`note_throttled`, see `RequestBudget.note_throttled`) are stored
  per bucket and enforced by every process, as in SQLite, on the database's clock.

Tables (created on first use, under an advisory lock so many first steps may race):
posthog_budget_buckets (bucket, paused_until), posthog_budget_requests (bucket, ts) and
posthog_budget_learned (bucket, count, seconds, learned_at, confirmed).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from resources.budget import (
    LEARNED_TTL_S,
    ProcessLocalConnection,
    _window_from_log,
    agreed_window,
    validated_windows,
)

if TYPE_CHECKING:  # loaded when a budget connects: 9 MB a run without one need not carry
    import psycopg

__all__ = ["PostgresRequestBudget", "is_postgres_url", "redact_url"]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10
# One reconnect per call after a dropped connection (a database restart or failover); a second
# failure in a row is raised to the step.
_RECONNECTS = 1
_EPSILON_S = 1e-3
# pg_advisory_xact_lock key for creating the tables: b"posthog" as an integer
_SCHEMA_LOCK = int.from_bytes(b"posthog", "big")

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS posthog_budget_buckets (
        bucket text PRIMARY KEY,
        paused_until timestamptz
    )""",
    """CREATE TABLE IF NOT EXISTS posthog_budget_requests (
        bucket text NOT NULL,
        ts timestamptz NOT NULL
    )""",
    """CREATE INDEX IF NOT EXISTS posthog_budget_requests_bucket_ts
        ON posthog_budget_requests (bucket, ts)""",
    """CREATE TABLE IF NOT EXISTS posthog_budget_learned (
        id bigserial PRIMARY KEY,
        bucket text NOT NULL,
        count integer NOT NULL,
        seconds float8 NOT NULL,
        learned_at float8 NOT NULL,
        confirmed boolean NOT NULL
    )""",
]


_URL = re.compile(r"^\s*postgres(?:ql)?(?:\+[a-z0-9_]+)?://", re.IGNORECASE)


def is_postgres_url(value: str) -> bool:
    """True for postgresql:// and postgres:// URLs, also with a SQLAlchemy driver
    (postgresql+psycopg2://, as Dagster's instance storage needs it: one URL serves both)."""
    return bool(_URL.match(value))


def libpq_url(value: str) -> str:
    """The URL as libpq takes it: postgresql://, without a SQLAlchemy driver."""
    return _URL.sub("postgresql://", value, count=1)


def redact_url(url: str) -> str:
    """The URL with any password replaced by '***' (for logs, reprs and errors)."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, hostport = netloc.rsplit("@", 1)
        netloc = f"{userinfo.split(':', 1)[0]}:***@{hostport}"
    query = "&".join(
        f"{pair.split('=', 1)[0]}=***" if pair.split("=", 1)[0].lower() == "password" else pair
        for pair in parts.query.split("&")) if parts.query else ""
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


class PostgresRequestBudget(ProcessLocalConnection):
    """Blocks until a request fits every sliding window, as recorded in one PostgreSQL database."""

    def __init__(
        self,
        url: str,
        bucket: str,
        limits: Sequence[tuple[int, float]],
        *,
        sleep: Callable[[float], None] = time.sleep,
        safety: float = 0.5,
    ) -> None:
        if not bucket:
            raise ValueError("bucket must be a non-empty string")
        if safety < 0:
            raise ValueError("safety must be >= 0 seconds")
        if not is_postgres_url(url):
            raise ValueError(f"not a postgresql:// URL: {redact_url(url)!r}")
        self.url = url
        self.bucket = bucket
        self.limits = validated_windows(limits)
        self.safety = float(safety)
        self._sleep = sleep
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None
        self._conn_pid: int | None = None
        self._local_pause_until = 0.0
        self._recorded = threading.local()  # the ts this thread's last request was logged at
        # A connection inherited through fork shares its socket with the parent: closing it in
        # the child would end the parent's session, so it is only kept, never used or closed.
        self._inherited: list[psycopg.Connection] = []

    @property
    def unlimited(self) -> bool:
        """True when no window limits anything (acquire then never touches the database)."""
        return not self.limits

    @property
    def sustained_rate(self) -> float | None:
        """Requests per second the tightest window allows over its length; None if unlimited."""
        return min((count / seconds for count, seconds in self.limits), default=None)

    def now(self) -> float:
        """The database's clock (epoch seconds), for callers computing `pause_until` deadlines."""
        if self.unlimited:
            return time.time()
        with self._lock:
            return self._run(lambda conn: conn.execute(
                "SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()[0])

    def __repr__(self) -> str:
        return (
            f"PostgresRequestBudget(url={redact_url(self.url)!r}, bucket={self.bucket[:12]}…, "
            f"limits={self.limits})"
        )

    def acquire(self) -> float:
        """Wait until one more request fits every window, record it, return the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                if self.unlimited:
                    delay = max(0.0, self._local_pause_until - time.time())
                else:
                    delay = self._run(self._try_record)
            if delay <= 0:
                if waited:
                    log.debug("budget: waited %.3fs for a request slot", waited)
                return waited
            log.debug("budget: no slot free, sleeping %.3fs", delay)
            self._sleep(delay)
            waited += delay

    def pause_until(self, ts: float) -> None:
        """Hold every process sharing this budget until `ts`, epoch seconds on `now()`'s clock."""
        with self._lock:
            if self.unlimited:
                self._local_pause_until = max(self._local_pause_until, ts)
                return
            self._run(lambda conn: self._set_pause(conn, "to_timestamp(%s)", ts))
        log.debug("budget: paused until %.3f", ts)

    def pause_for(self, seconds: float) -> None:
        """Hold every process sharing this budget for `seconds` from now, on the database clock."""
        with self._lock:
            if self.unlimited:
                self._local_pause_until = max(self._local_pause_until, time.time() + seconds)
                return
            self._run(lambda conn: self._set_pause(
                conn, "clock_timestamp() + make_interval(secs => %s)", seconds))

    def note_throttled(self, retry_after: float | None) -> tuple[int, float] | None:
        """The request this thread last sent was answered 429: it leaves the log, and the window
        the server enforces is learned from Retry-After and the log, exactly as
        `RequestBudget.note_throttled` does (a second agreeing 429 enforces it, for every
        process using the database; forgotten after an hour). Returns the window enforced, if
        this 429 confirmed one."""
        ts = getattr(self._recorded, "ts", None)
        self._recorded.ts = None
        if self.unlimited:
            return None
        with self._lock:
            learned = self._run(lambda conn: self._note_throttled(conn, ts, retry_after))
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
            return self._run(lambda conn: self._learned_locked(conn, self._db_epoch(conn)))

    # ---- the database ---------------------------------------------------------------------

    @staticmethod
    def _db_epoch(conn: psycopg.Connection) -> float:
        return conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()[0]

    def _note_throttled(self, conn: psycopg.Connection, ts: dt.datetime | None,
                        retry_after: float | None) -> tuple[int, float] | None:
        with conn.transaction():
            conn.execute("SELECT 1 FROM posthog_budget_buckets WHERE bucket = %s FOR UPDATE",
                         (self.bucket,))
            if ts is not None:
                conn.execute(
                    "DELETE FROM posthog_budget_requests WHERE ctid = (SELECT ctid FROM "
                    "posthog_budget_requests WHERE bucket = %s AND ts = %s LIMIT 1)",
                    (self.bucket, ts))
            if retry_after is None or retry_after <= 0:
                return None
            now = self._db_epoch(conn)
            log_ts = [r[0] for r in conn.execute(
                "SELECT extract(epoch FROM ts)::float8 FROM posthog_budget_requests "
                "WHERE bucket = %s AND ts <= to_timestamp(%s) ORDER BY ts",
                (self.bucket, now))]
            window = _window_from_log(log_ts, now, retry_after)
            return self._learn_locked(conn, now, *window) if window is not None else None

    def _learned_locked(self, conn: psycopg.Connection, now: float) -> list[tuple[int, float]]:
        rows = conn.execute(
            "SELECT count, seconds FROM posthog_budget_learned WHERE bucket = %s AND confirmed "
            "AND learned_at > %s - greatest(%s, 2 * seconds)", (self.bucket, now, LEARNED_TTL_S))
        return [(int(c), float(d)) for c, d in rows]

    def _learn_locked(self, conn: psycopg.Connection, now: float, count: int, seconds: float
                      ) -> tuple[int, float] | None:
        conn.execute(
            "DELETE FROM posthog_budget_learned WHERE bucket = %s "
            "AND learned_at <= %s - greatest(%s, 2 * seconds)", (self.bucket, now, LEARNED_TTL_S))
        seen = conn.execute("SELECT id, count, seconds, confirmed FROM posthog_budget_learned "
                            "WHERE bucket = %s ORDER BY id", (self.bucket,)).fetchall()
        row_id, window, enforced = agreed_window(seen, count, seconds)
        if row_id is None:
            conn.execute("INSERT INTO posthog_budget_learned (bucket, count, seconds, "
                         "learned_at, confirmed) VALUES (%s, %s, %s, %s, false)",
                         (self.bucket, *window, now))
        else:
            conn.execute("UPDATE posthog_budget_learned SET count = %s, seconds = %s, "
                         "learned_at = %s, confirmed = true WHERE id = %s",
                         (*window, now, row_id))
        return enforced

    def _run(self, work: Callable[[psycopg.Connection], object]):
        """`work(conn)` on this process's connection, reconnecting once after a dropped one."""
        import psycopg

        for attempt in range(_RECONNECTS + 1):
            conn = self._connection()
            try:
                return work(conn)
            except psycopg.OperationalError:
                # A statement that failed on a live connection is not a dropped connection.
                if not conn.broken or attempt >= _RECONNECTS:
                    raise
                log.warning("budget: lost the connection to %s; reconnecting",
                            redact_url(self.url))
                conn.close()
                self._conn = None
        raise AssertionError("unreachable")

    def _connection(self) -> psycopg.Connection:
        pid = os.getpid()
        if self._conn is not None and self._conn_pid == pid and not self._conn.closed:
            return self._conn
        if self._conn is not None and self._conn_pid != pid:
            self._inherited.append(self._conn)
        import psycopg

        conn = psycopg.connect(
            libpq_url(self.url), autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
            application_name="posthog-pipeline budget",
        )
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO posthog_budget_buckets (bucket) VALUES (%s) ON CONFLICT DO NOTHING",
                (self.bucket,),
            )
        self._conn, self._conn_pid = conn, pid
        return conn

    def _set_pause(self, conn: psycopg.Connection, deadline_sql: str, value: float) -> None:
        conn.execute(
            "UPDATE posthog_budget_buckets SET paused_until = greatest(paused_until, "
            f"{deadline_sql}) WHERE bucket = %s",
            (value, self.bucket),
        )

    def _try_record(self, conn: psycopg.Connection) -> float:
        """Record a request if every window has room (return 0), else return how long to wait."""
        with conn.transaction():
            (paused_until,) = conn.execute(
                "SELECT paused_until FROM posthog_budget_buckets WHERE bucket = %s FOR UPDATE",
                (self.bucket,),
            ).fetchone()
            # Read after the lock: the time every earlier slot was recorded at is before it.
            (now,) = conn.execute("SELECT clock_timestamp()").fetchone()
            delay = self._delay_locked(conn, now, paused_until)
            if delay <= 0:
                conn.execute(
                    "INSERT INTO posthog_budget_requests (bucket, ts) VALUES (%s, %s)",
                    (self.bucket, now),
                )
                self._recorded.ts = now
                horizon = dt.timedelta(seconds=max(s for _, s in self.limits) + self.safety)
                conn.execute(
                    "DELETE FROM posthog_budget_requests WHERE bucket = %s AND ts <= %s",
                    (self.bucket, now - horizon),
                )
        return delay

    def _delay_locked(
        self, conn: psycopg.Connection, now: dt.datetime, paused_until: dt.datetime | None
    ) -> float:
        if paused_until is not None and paused_until > now:
            return (paused_until - now).total_seconds() + _EPSILON_S
        delay = 0.0
        learned = self._learned_locked(conn, now.timestamp())
        for count, seconds in (*self.limits, *learned):
            # As in RequestBudget: fewer than `count` in the last `seconds` (+ safety) may go.
            span = dt.timedelta(seconds=seconds + self.safety)
            since = now - span
            (in_window,) = conn.execute(
                "SELECT count(*) FROM posthog_budget_requests WHERE bucket = %s AND ts > %s",
                (self.bucket, since),
            ).fetchone()
            if in_window < count:
                continue
            (oldest_blocking,) = conn.execute(
                "SELECT ts FROM posthog_budget_requests WHERE bucket = %s AND ts > %s "
                "ORDER BY ts LIMIT 1 OFFSET %s",
                (self.bucket, since, in_window - count),
            ).fetchone()
            delay = max(delay, (oldest_blocking + span - now).total_seconds() + _EPSILON_S)
        return delay
