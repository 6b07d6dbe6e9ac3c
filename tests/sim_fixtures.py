"""Reusable pytest fixtures for the PostHog simulator.

Use from a test module with ``from tests.sim_fixtures import sim, sim_factory  # noqa: F401``.
"""
from __future__ import annotations

import pytest

from posthog_sim import DatasetSpec, SimConfig, Simulator


@pytest.fixture
def sim_factory():
    """Start simulators with custom configs; all are stopped at teardown.

    sim = sim_factory(groups_per_type=(500, 100), rate_limits=None, content_mode="direct")
    (DatasetSpec fields and SimConfig fields may be mixed as keyword arguments.)
    """
    started: list[Simulator] = []
    ds_fields = set(DatasetSpec.__dataclass_fields__)

    def make(**kw) -> Simulator:
        ds_kw = {k: kw.pop(k) for k in list(kw) if k in ds_fields}
        kw.setdefault("rate_limits", None)
        cfg = SimConfig(dataset=DatasetSpec(**ds_kw), **kw)
        s = Simulator(cfg).start()
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


@pytest.fixture
def sim(sim_factory):
    """A small simulator (1000/300/50 groups, 40 exports, no rate limits, no faults)."""
    return sim_factory()
