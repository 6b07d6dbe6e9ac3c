"""Shared fixtures: a PostHog simulator on 127.0.0.1, resources pointed at it, a tmp lake."""

from __future__ import annotations

import pytest

from tests.helpers import SimEnv, start_sim

# s3_server, s3_bucket; pg_server, pg_url
pytest_plugins = ("tests.s3_fixtures", "tests.pg_fixtures")


@pytest.fixture
def sim_env(tmp_path) -> SimEnv:
    """A small simulator (3 group types, ~700 groups, 30 exports) and resources for it."""
    with start_sim(tmp_path, groups_per_type=(450, 230, 17), n_exports=30) as env:
        yield env
