"""Deterministic kill points for the crash tests: the process dies exactly at a named boundary.

``POSTHOG_PIPELINE_KILL_AT=after_commit:export_rows`` makes the process ``os._exit(137)`` right
after the ``export_rows`` commit, as a SIGKILL would. Unset (always, outside the tests), a
point costs one dictionary lookup.
"""

from __future__ import annotations

import os

KILL_AT = "POSTHOG_PIPELINE_KILL_AT"


def point(name: str) -> None:
    """Die here if the test asked for it."""
    wanted = os.environ.get(KILL_AT)
    if wanted and name in wanted.split(","):
        os._exit(137)
