"""One scope's view of the lake: what the sync of one source (one PostHog project) reads and
writes, so that several sources share every table without touching each other's rows.

Its writers fill the table's scope column with this scope's value (a snapshot then replaces only
this scope's rows, see ``spec.py``); its reads return only this scope's rows. A table written
before tables were scoped has no scope column: when this is the only source the lake has had
(``adopt_unscoped``, one configured project), its first write gives every existing row this
scope's value in one commit (time travel keeps the versions before); otherwise it is refused with
the command that migrates it, since nothing here can tell whose rows they are.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import pyarrow as pa

from resources.lake.errors import LakeError
from resources.lake.lake import Lake
from resources.lake.spec import TableSpec
from resources.lake.staging import StagedTable

__all__ = ["ScopedLake"]

logger = logging.getLogger(__name__)


class ScopedLake:
    """``lake`` confined to the scope value ``value``; anything not scoped passes through."""

    def __init__(self, lake: Lake, value: int | str, *, adopt_unscoped: bool,
                 log: Any = None) -> None:
        self.lake = lake
        self.value = value
        self.adopt_unscoped = adopt_unscoped
        self._log = log or logger
        self._scoped: set[str] = set()  # tables known to have their scope column

    def writer(self, spec: TableSpec, *, synced_at: datetime | None = None) -> StagedTable:
        if spec.scope is not None and not self._has_scope_column(spec):
            self._adopt(spec)
        return self.lake.writer(spec, synced_at=synced_at,
                                scope=self.value if spec.scope is not None else None)

    def read_current(self, spec: TableSpec, columns: list[str] | None = None) -> pa.Table:
        """This scope's rows of the table's current version (every row of a table written
        before tables were scoped, when this is the lake's only source)."""
        if spec.scope is None:
            return self.lake.read_current(spec, columns)
        if self._has_scope_column(spec):
            return self.lake.read_current(spec, columns, scope=self.value)
        if not self.adopt_unscoped:
            raise self._unscoped_error(spec)
        return self.lake.read_current(spec, columns)  # its scope column reads as null

    def __getattr__(self, name: str) -> Any:
        return getattr(self.lake, name)

    def _has_scope_column(self, spec: TableSpec) -> bool:
        if spec.name in self._scoped:
            return True
        table = self.lake.table(spec.name)
        if table is None or spec.scope in table.schema().to_arrow().names:
            self._scoped.add(spec.name)
            return True
        return False

    def _adopt(self, spec: TableSpec) -> None:
        if not self.adopt_unscoped:
            raise self._unscoped_error(spec)
        changed = self.lake.add_scope(spec, self.value)
        self._scoped.add(spec.name)
        if changed:
            self._log.info(
                "%s: written before tables had %s; every existing row is given %s %s (one "
                "commit; the versions before stay readable by time travel)",
                ", ".join(changed), spec.scope, spec.scope, self.value)

    def _unscoped_error(self, spec: TableSpec) -> LakeError:
        uri = self.lake.table_uri(spec.name)
        return LakeError(
            f"{spec.name}: the table at {uri} was written before tables had {spec.scope}, and "
            f"several projects are configured, so whose rows they are cannot be told. Give them "
            f"their project once with `posthog-pipeline migrate-lake --project-id <id>` (the id "
            f"the lake was synced from), then sync again.")
