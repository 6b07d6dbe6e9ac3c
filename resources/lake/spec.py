"""What a lake table is: its name, explicit Arrow schema, JSON columns, and how a sync commits it.

How a sync's rows become the table's next version (``mode``):

- ``snapshot``: the rows replace the table (one Delta overwrite commit); rows sharing ``key``
  are deduplicated first, the last written wins. A ``history`` table, when named, keeps a
  type-2 history of the snapshots (see ``history.py``).
- ``merge``: the rows are upserted on ``key`` (one Delta merge commit); rows not in this sync
  stay as they were.
- ``replace_keys``: every row whose ``key`` value appears in this sync is replaced by this sync's
  rows for it (one Delta overwrite commit with a predicate), so redoing a sync after a kill never
  doubles a row.

A table shared by several independent sources (e.g. PostHog projects) names a ``scope`` column:
every sync writes one scope value (the writer fills the column), and its commit touches only that
value's rows: a snapshot replaces the scope's rows (a Delta overwrite with the predicate
``scope = value``), a merge and ``replace_keys`` match on the scope as well as the key, and the
history is kept per scope. The other scopes' rows stay exactly as they were.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import pyarrow as pa

from resources.lake.errors import LakeError, identifier

SYNCED_AT = "synced_at"
SYNCED_AT_TYPE = pa.timestamp("us", tz="UTC")
VALID_FROM = "valid_from"
VALID_TO = "valid_to"
# Arrow field metadata marking a JSON column; Delta keeps it in the table's schema, so the
# warehouse views can be rebuilt from the lake alone.
JSON_FIELD_METADATA = {b"posthog_pipeline.json": b"true"}

Mode = Literal["snapshot", "merge", "replace_keys"]


@dataclass(frozen=True)
class TableSpec:
    """A lake table: its name, explicit schema, JSON columns and how a sync commits it."""

    name: str
    schema: pa.Schema
    json_columns: tuple[str, ...] = ()
    mode: Mode = "snapshot"
    key: tuple[str, ...] = ()
    history: str | None = None  # name of this snapshot table's type-2 history table
    description: str = ""
    scope: str | None = None  # the column a sync's commit is confined to (see above)

    def __post_init__(self) -> None:
        identifier(self.name, "table name")
        object.__setattr__(self, "json_columns", tuple(self.json_columns))
        object.__setattr__(self, "key", tuple(self.key))
        if not isinstance(self.schema, pa.Schema):
            raise LakeError(f"{self.name}: schema must be a pyarrow.Schema")
        names = self.schema.names
        if len(set(names)) != len(names):
            raise LakeError(f"{self.name}: duplicate column names")
        for column in names:
            identifier(column, f"column name in {self.name}")
        for column in self.json_columns:
            if column not in names:
                raise LakeError(f"{self.name}: JSON column {column!r} is not in the schema")
            if not pa.types.is_string(self.schema.field(column).type):
                raise LakeError(f"{self.name}: JSON column {column!r} must be a string column")
        for column in self.key:
            if column not in names:
                raise LakeError(f"{self.name}: key column {column!r} is not in the schema")
        if SYNCED_AT in names and self.schema.field(SYNCED_AT).type != SYNCED_AT_TYPE:
            raise LakeError(f"{self.name}: {SYNCED_AT} must be {SYNCED_AT_TYPE}")
        if self.scope is not None:
            if self.scope not in names:
                raise LakeError(f"{self.name}: scope column {self.scope!r} is not in the schema")
            scope_type = self.schema.field(self.scope).type
            if not (pa.types.is_integer(scope_type) or pa.types.is_string(scope_type)):
                raise LakeError(f"{self.name}: scope column {self.scope!r} must be integer or text")
            if self.scope in self.json_columns or self.scope == SYNCED_AT:
                raise LakeError(f"{self.name}: {self.scope!r} cannot be the scope column")
        if self.mode not in ("snapshot", "merge", "replace_keys"):
            raise LakeError(f"{self.name}: unknown mode {self.mode!r}")
        if self.mode != "snapshot" and not self.key:
            raise LakeError(f"{self.name}: mode {self.mode!r} needs a key")
        if self.history is not None:
            identifier(self.history, "history table name")
            if self.mode != "snapshot" or not self.key:
                raise LakeError(f"{self.name}: a history table needs mode='snapshot' and a key")
            if self.history == self.name:
                raise LakeError(f"{self.name}: the history table needs its own name")

    @property
    def match_key(self) -> tuple[str, ...]:
        """The columns a row is matched on across syncs: the scope (if any), then the key."""
        if self.scope is None or self.scope in self.key:
            return self.key
        return (self.scope, *self.key)

    @cached_property
    def full_schema(self) -> pa.Schema:
        """The schema as stored: the spec's columns plus ``synced_at``, JSON columns marked."""
        fields = [
            f.with_metadata(JSON_FIELD_METADATA) if f.name in self.json_columns else f
            for f in self.schema
            if f.name != SYNCED_AT
        ]
        return pa.schema([*fields, pa.field(SYNCED_AT, SYNCED_AT_TYPE)])

    @cached_property
    def history_spec(self) -> TableSpec | None:
        """The type-2 history table: this table's columns plus ``valid_from`` and ``valid_to``."""
        if self.history is None:
            return None
        schema = pa.schema([
            *[f for f in self.schema if f.name != SYNCED_AT],
            pa.field(VALID_FROM, SYNCED_AT_TYPE),
            pa.field(VALID_TO, SYNCED_AT_TYPE),
        ])
        return TableSpec(
            name=self.history, schema=schema, json_columns=self.json_columns, mode="merge",
            key=(*self.key, VALID_FROM), scope=self.scope,
            description=f"Type-2 history of {self.name}: one row per version of a row "
            f"({VALID_FROM}, {VALID_TO} NULL while current).",
        )


def json_columns_of(schema: pa.Schema) -> list[str]:
    """The columns a stored schema marks as JSON."""
    return [f.name for f in schema if (f.metadata or {}).get(b"posthog_pipeline.json") == b"true"]
