"""Resources: the PostHog client and rate budget, the Parquet lake and the DuckDB warehouse."""

import os

# Arrow allocates from the C library's malloc, not from its bundled mimalloc, unless the user says
# otherwise. mimalloc keeps what a step's Parquet writers freed (about 40 MB of a run's peak),
# where malloc gives it back at each step's end (`release_memory` trims it). Arrow reads this
# once, when pyarrow is first imported, so every package of ours sets it before importing pyarrow.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
