"""pytest fixtures for the PostgreSQL test server (tests/pg_server.py): `pg_server` (one server
per session, started on first use) and `pg_url` (a fresh, empty database per test).

Without PostgreSQL's binaries the tests using them are skipped, except under CI=true, where they
fail: .ci/run installs Debian's `postgresql` package when it is missing."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from tests.pg_server import PostgresServer, find_bindir


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    try:
        find_bindir()
    except FileNotFoundError as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            raise
        pytest.skip(str(exc))
    with PostgresServer() as server:
        yield server


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> str:
    """postgresql://postgres@127.0.0.1:<port>/<a new database>"""
    return pg_server.create_database(f"test_{uuid.uuid4().hex[:16]}")
