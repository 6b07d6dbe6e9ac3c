"""Dagster definitions, jobs, schedules, sensors and the CLI."""

import resources  # noqa: F401  (chooses Arrow's allocator before pyarrow is imported)
