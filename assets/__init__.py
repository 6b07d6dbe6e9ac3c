"""The landing assets and their checks."""

import resources  # noqa: F401  (chooses Arrow's allocator before pyarrow is imported)
