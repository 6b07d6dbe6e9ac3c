"""The warehouse tables (`posthog.*`): their Parquet schemas and how API objects become rows.

Every field the API returns is kept: the fields the contract names get typed columns, anything
else (fields PostHog adds later) goes into the `extra` JSON column, so a new field never breaks a
sync and is never lost. A value that does not fit its typed column is never coerced: the column
is NULL and `extra` keeps the original as `<field>_unparsed` (warned once per field per sync).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from resources import jsontext
from resources.lake import LakeError, TableSpec
from resources.posthog_client import RawGroup

TS = pa.timestamp("us", tz="UTC")


def to_json(value: Any) -> str | None:
    """Serialise a JSON value exactly (big integers, unicode, key order) or None for JSON null.

    Compact text by orjson, by json where orjson refuses (`resources.jsontext`): integers beyond
    64 bits, and NaN or Infinity (which the client reads as `jsontext.NonFiniteFloat`).
    """
    if value is None:
        return None
    return jsontext.dumps(value)


def parse_ts(value: Any) -> datetime | None:
    """Parse PostHog's ISO-8601 timestamps (`...Z`) into aware UTC datetimes; None if absent."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected an ISO-8601 timestamp string, got {type(value).__name__}")
    if value[-1:] == "Z":  # the common case: fromisoformat reads "Z" as UTC (Python >= 3.11)
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is UTC:
            return parsed
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


# Every table holds the rows of every configured PostHog project: `project_id` (the numeric
# project id) is its first column and the scope of each sync's commit, so a project's sync
# replaces, merges and keeps history within that project's rows only (resources/lake/spec.py).
PROJECT_ID = "project_id"


def per_project(spec: TableSpec) -> TableSpec:
    """``spec`` with `project_id` as its first column and its commits' scope."""
    return replace(spec, schema=pa.schema([(PROJECT_ID, pa.int64()), *spec.schema]),
                   scope=PROJECT_ID)


_INT64 = (-(2**63), 2**63 - 1)
_misfits_lock = threading.Lock()
_misfits_warned: set[tuple[str, str]] = set()
_misfits_log: Any = logging.getLogger(__name__)


def begin_sync(log: Any = None) -> None:
    """Start a sync: a field whose value does not fit its column is warned about once again,
    through `log` (the step's logger) or this module's."""
    global _misfits_log
    with _misfits_lock:
        _misfits_warned.clear()
        _misfits_log = log if log is not None else logging.getLogger(__name__)


def _misfit(table: str, field: str, value: Any, unparsed: dict[str, Any]) -> None:
    """Keep a value that does not fit its typed column as `<field>_unparsed` in `extra` (its
    column is then NULL), and warn once per (table, field) per sync."""
    unparsed[f"{field}_unparsed"] = value
    with _misfits_lock:
        if (table, field) in _misfits_warned:
            return
        _misfits_warned.add((table, field))
        log = _misfits_log
    log.warning(
        f"posthog.{table}: `{field}` came as {type(value).__name__} {to_json(value)[:80]}, which "
        f"does not fit its column; kept in `extra` as `{field}_unparsed` (said once per sync)"
    )


def _int(table: str, obj: Mapping[str, Any], field: str, unparsed: dict[str, Any]) -> int | None:
    """An int64 column: JSON integers only (not true/false, 1.9, "45" or beyond 64 bits)."""
    value = obj.get(field)
    if value is None:
        return None
    if type(value) is int and _INT64[0] <= value <= _INT64[1]:
        return value
    _misfit(table, field, value, unparsed)
    return None


def _bool(table: str, obj: Mapping[str, Any], field: str, unparsed: dict[str, Any]) -> bool | None:
    """A boolean column: JSON true/false only (not "true" or 1)."""
    value = obj.get(field)
    if value is None or isinstance(value, bool):
        return value
    _misfit(table, field, value, unparsed)
    return None


def _str(table: str, obj: Mapping[str, Any], field: str, unparsed: dict[str, Any], *,
         key: bool = False) -> str | None:
    """A text column: JSON strings only. A key column keeps another value's JSON text too (a
    NULL key would merge distinct rows), and still records the original in `extra`."""
    value = obj.get(field)
    if value is None or isinstance(value, str):
        return value
    _misfit(table, field, value, unparsed)
    return to_json(value) if key else None


def _extra(obj: Mapping[str, Any], known: frozenset[str], **unparsed: Any) -> str | None:
    if not unparsed and obj.keys() <= known:  # the common case: nothing beyond the contract
        return None
    rest = {k: v for k, v in obj.items() if k not in known}
    rest.update({k: v for k, v in unparsed.items() if v is not None})
    return to_json(rest) if rest else None


def _ts_field(obj: Mapping[str, Any], field: str, unparsed: dict[str, Any], table: str
              ) -> datetime | None:
    """A timestamp column; a value that does not parse is kept verbatim in `extra`."""
    try:
        return parse_ts(obj.get(field))
    except (ValueError, TypeError):
        _misfit(table, field, obj.get(field), unparsed)
        return None


# ---------------------------------------------------------------------------------------------
# group types

GROUP_TYPES = per_project(TableSpec(
    name="group_types",
    schema=pa.schema(
        [
            ("group_type_index", pa.int64()),
            ("group_type", pa.string()),
            ("name_singular", pa.string()),
            ("name_plural", pa.string()),
            ("detail_dashboard", pa.int64()),
            ("default_columns", pa.string()),
            ("created_at", TS),
            ("extra", pa.string()),
        ]
    ),
    json_columns=("default_columns", "extra"),
    description="One row per group type (GET /api/projects/:id/groups_types/).",
))
_GROUP_TYPE_FIELDS = frozenset((
    "group_type_index",
    "group_type",
    "name_singular",
    "name_plural",
    "detail_dashboard",
    "default_columns",
    "created_at",
))


def group_type_row(obj: Mapping[str, Any]) -> dict[str, Any]:
    unparsed: dict[str, Any] = {}
    t = GROUP_TYPES.name
    return {
        "group_type_index": _int(t, obj, "group_type_index", unparsed),
        "group_type": _str(t, obj, "group_type", unparsed),
        "name_singular": _str(t, obj, "name_singular", unparsed),
        "name_plural": _str(t, obj, "name_plural", unparsed),
        "detail_dashboard": _int(t, obj, "detail_dashboard", unparsed),
        "default_columns": to_json(obj.get("default_columns")),
        "created_at": _ts_field(obj, "created_at", unparsed, t),
        "extra": _extra(obj, _GROUP_TYPE_FIELDS, **unparsed),
    }


# ---------------------------------------------------------------------------------------------
# groups

GROUPS = per_project(TableSpec(
    name="groups",
    schema=pa.schema(
        [
            ("group_type_index", pa.int64()),
            ("group_type", pa.string()),
            ("group_key", pa.string()),
            ("group_properties", pa.string()),
            ("created_at", TS),
            ("extra", pa.string()),
        ]
    ),
    json_columns=("group_properties", "extra"),
    key=("group_type_index", "group_key"),
    history="groups_history",
    description="One row per group in the latest complete snapshot (GET .../groups/).",
))
_GROUP_FIELDS = frozenset(("group_type_index", "group_key", "group_properties", "created_at"))


def group_row(obj: Mapping[str, Any], group_type: str | None) -> dict[str, Any]:
    unparsed: dict[str, Any] = {}
    t = GROUPS.name
    return {
        "group_type_index": _int(t, obj, "group_type_index", unparsed),
        "group_type": group_type,
        "group_key": _str(t, obj, "group_key", unparsed, key=True),
        "group_properties": to_json(obj.get("group_properties")),  # JSON null is NULL
        "created_at": _ts_field(obj, "created_at", unparsed, t),
        "extra": _extra(obj, _GROUP_FIELDS, **unparsed),
    }


class GroupColumns:
    """Groups from `RawGroup` pages gathered as columns, taken as one Arrow batch of `GROUPS`.

    The same rows `group_row` makes from the same groups, without a dict per group: the
    properties are already their JSON text, and the timestamps are parsed by Arrow when every
    one has the shape PostHog writes (`2026-01-31T12:00:00.123456Z`), by `parse_ts` otherwise.
    """

    def __init__(self) -> None:
        self._index: list[int] = []
        self._type: list[str | None] = []
        self._key: list[str] = []
        self._properties: list[bytes] = []
        self._created: list[str] = []
        self.nbytes = 0  # of the properties' text: wide groups make a batch of fewer rows

    def __len__(self) -> int:
        return len(self._key)

    def add(self, groups: Sequence[RawGroup], group_type: str | None) -> None:
        self._index.extend([g.group_type_index for g in groups])
        self._type.extend([group_type] * len(groups))
        self._key.extend([g.group_key for g in groups])
        properties = [bytes(g.group_properties) for g in groups]
        self.nbytes += sum(map(len, properties))
        self._properties.extend(properties)
        self._created.extend([g.created_at for g in groups])

    def take(self) -> pa.RecordBatch:
        """The gathered rows as a batch (cleared); LakeError if one does not fit the schema."""
        n = len(self._key)
        created = pa.array(self._created, pa.string())
        try:
            index = pa.array(self._index, pa.int64())
            # the bytes are slices of a page orjson read as UTF-8; the cast checks it again
            properties = pa.array(self._properties, pa.binary()).cast(pa.string())
        except (pa.ArrowInvalid, OverflowError) as e:
            raise LakeError(f"{GROUPS.name}: a row does not fit the schema: {e}") from e
        created_at = None
        if pc.all(pc.match_substring_regex(created, _POSTHOG_TS)).as_py():
            try:  # the calendar is Arrow's to check: 2026-02-30 has the shape and no date
                created_at = created.cast(TS)
            except pa.ArrowInvalid:
                created_at = None
        if created_at is not None:
            extra = pa.nulls(n, pa.string())
        else:
            parsed, extras = [], []
            for value in self._created:
                unparsed: dict[str, Any] = {}
                parsed.append(_ts_field({"created_at": value}, "created_at", unparsed,
                                        GROUPS.name))
                extras.append(to_json(unparsed) if unparsed else None)
            created_at = pa.array(parsed, TS)
            extra = pa.array(extras, pa.string())
        batch = pa.RecordBatch.from_arrays(  # project_id is the writer's to fill
            [pa.nulls(n, pa.int64()), index, pa.array(self._type, pa.string()),
             pa.array(self._key, pa.string()), properties, created_at, extra],
            schema=GROUPS.schema,
        )
        for column in (self._index, self._type, self._key, self._properties, self._created):
            column.clear()
        self.nbytes = 0
        return batch


# a timestamp as PostHog writes it, which Arrow's cast reads as `parse_ts` does (the day of the
# month is checked by the cast; year 0000 is Arrow's but no Python date)
_POSTHOG_TS = (
    r"^([1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(\.[0-9]{1,6})?Z$"
)


# ---------------------------------------------------------------------------------------------
# group property definitions and values

GROUP_PROPERTY_DEFINITIONS = per_project(TableSpec(
    name="group_property_definitions",
    schema=pa.schema(
        [
            ("group_type_index", pa.int64()),
            ("group_type", pa.string()),
            ("name", pa.string()),
            ("property_type", pa.string()),
            ("is_numerical", pa.bool_()),
            ("id", pa.string()),
            ("extra", pa.string()),
        ]
    ),
    json_columns=("extra",),
    key=("group_type_index", "name"),
    description="One row per (group type, property name) (GET .../property_definitions/?type=group).",
))
_PROPDEF_FIELDS = frozenset(("name", "property_type", "is_numerical", "id"))


def property_definition_row(
    obj: Mapping[str, Any], group_type_index: int, group_type: str | None
) -> dict[str, Any]:
    unparsed: dict[str, Any] = {}
    t = GROUP_PROPERTY_DEFINITIONS.name
    return {
        "group_type_index": group_type_index,
        "group_type": group_type,
        "name": _str(t, obj, "name", unparsed, key=True),
        "property_type": _str(t, obj, "property_type", unparsed),
        "is_numerical": _bool(t, obj, "is_numerical", unparsed),
        "id": _str(t, obj, "id", unparsed),
        "extra": _extra(obj, _PROPDEF_FIELDS, **unparsed),
    }


GROUP_PROPERTY_VALUES = per_project(TableSpec(
    name="group_property_values",
    schema=pa.schema(
        [
            ("group_type_index", pa.int64()),
            ("group_type", pa.string()),
            ("key", pa.string()),
            ("value", pa.string()),
            ("count", pa.int64()),
            ("extra", pa.string()),
        ]
    ),
    json_columns=("extra",),
    description="Top values per (group type, property key) (GET .../groups/property_values/).",
))


_VALUE_FIELDS = frozenset(("name", "count"))


def property_value_row(
    obj: Mapping[str, Any], group_type_index: int, group_type: str | None, key: str
) -> dict[str, Any]:
    unparsed: dict[str, Any] = {}
    t = GROUP_PROPERTY_VALUES.name
    return {
        "group_type_index": group_type_index,
        "group_type": group_type,
        "key": key,
        "value": _str(t, obj, "name", unparsed),
        "count": _int(t, obj, "count", unparsed),
        "extra": _extra(obj, _VALUE_FIELDS, **unparsed),
    }


# ---------------------------------------------------------------------------------------------
# exports

EXPORTS = per_project(TableSpec(
    name="exports",
    schema=pa.schema(
        [
            ("id", pa.int64()),
            ("dashboard", pa.int64()),
            ("insight", pa.int64()),
            ("export_format", pa.string()),
            ("created_at", TS),
            ("has_content", pa.bool_()),
            ("export_context", pa.string()),
            ("filename", pa.string()),
            ("expires_after", TS),
            ("exception", pa.string()),
            ("user_access_level", pa.string()),
            ("extra", pa.string()),
            ("first_seen_at", TS),
            ("last_seen_at", TS),
            ("listed", pa.bool_()),
        ]
    ),
    json_columns=("export_context", "extra"),
    mode="merge",
    key=("id",),
    description=(
        "Every exported asset ever seen (GET .../exports/); `listed` is false once PostHog "
        "stops listing it (expired), the row stays."
    ),
))
_EXPORT_FIELDS = frozenset((
    "id",
    "dashboard",
    "insight",
    "export_format",
    "created_at",
    "has_content",
    "export_context",
    "filename",
    "expires_after",
    "exception",
    "user_access_level",
))


def export_row(obj: Mapping[str, Any], *, seen_at: datetime) -> dict[str, Any]:
    unparsed: dict[str, Any] = {}
    t = EXPORTS.name
    return {
        "id": _int(t, obj, "id", unparsed),
        "dashboard": _int(t, obj, "dashboard", unparsed),
        "insight": _int(t, obj, "insight", unparsed),
        "export_format": _str(t, obj, "export_format", unparsed),
        "created_at": _ts_field(obj, "created_at", unparsed, t),
        "has_content": _bool(t, obj, "has_content", unparsed),
        "export_context": to_json(obj.get("export_context")),
        "filename": _str(t, obj, "filename", unparsed),
        "expires_after": _ts_field(obj, "expires_after", unparsed, t),
        "exception": _str(t, obj, "exception", unparsed),
        "user_access_level": _str(t, obj, "user_access_level", unparsed),
        "extra": _extra(obj, _EXPORT_FIELDS, **unparsed),
        "first_seen_at": seen_at,
        "last_seen_at": seen_at,
        "listed": True,
    }


EXPORT_CONTENTS = per_project(TableSpec(
    name="export_contents",
    schema=pa.schema(
        [
            ("export_id", pa.int64()),
            ("sha256", pa.string()),
            ("size_bytes", pa.int64()),
            ("content_type", pa.string()),
            ("export_format", pa.string()),
            ("stored_path", pa.string()),
            ("fetched_at", TS),
        ]
    ),
    mode="replace_keys",
    key=("export_id",),
    description="Archived export bytes, content-addressed under LAKE_ROOT (GET .../content/).",
))

EXPORT_ROWS = per_project(TableSpec(
    name="export_rows",
    schema=pa.schema(
        [
            ("export_id", pa.int64()),
            ("row_number", pa.int64()),
            ("row", pa.string()),
        ]
    ),
    json_columns=("row",),
    mode="replace_keys",
    key=("export_id",),
    description="One row per data row of an archived CSV/XLSX export (header order kept), per "
    "record of a JSON Lines export, per element of a JSON export's array.",
))

# archive state per export: archived / pending / failed / expired / no_content
EXPORT_ARCHIVE = per_project(TableSpec(
    name="export_archive",
    schema=pa.schema(
        [
            ("export_id", pa.int64()),
            ("state", pa.string()),
            ("detail", pa.string()),
            ("export_format", pa.string()),
            ("expires_after", TS),
            ("checked_at", TS),
        ]
    ),
    key=("export_id",),
    description="Archive state of every export seen: archived, pending, failed or expired.",
))

# ---------------------------------------------------------------------------------------------
# explicit members (legacy endpoint)

EXPLICIT_MEMBERS = per_project(TableSpec(
    name="explicit_members",
    schema=pa.schema(
        [
            ("user_uuid", pa.string()),
            ("id", pa.string()),
            ("level", pa.int64()),
            ("parent_level", pa.int64()),
            ("effective_level", pa.int64()),
            ("parent_membership_id", pa.string()),
            ("joined_at", TS),
            ("updated_at", TS),
            ("user", pa.string()),
            ("extra", pa.string()),
        ]
    ),
    json_columns=("user", "extra"),
    description="Explicit project members (legacy GET .../explicit_members/; empty on current cloud).",
))
_MEMBER_FIELDS = frozenset((
    "id",
    "level",
    "parent_level",
    "effective_level",
    "parent_membership_id",
    "joined_at",
    "updated_at",
    "user",
))


def explicit_member_row(obj: Mapping[str, Any]) -> dict[str, Any]:
    unparsed: dict[str, Any] = {}
    t = EXPLICIT_MEMBERS.name
    user = obj.get("user")
    user_uuid = user.get("uuid") if isinstance(user, Mapping) else None
    return {
        # derived from `user`, which keeps the original whatever its type
        "user_uuid": user_uuid if isinstance(user_uuid, str) else None,
        "id": _str(t, obj, "id", unparsed),
        "level": _int(t, obj, "level", unparsed),
        "parent_level": _int(t, obj, "parent_level", unparsed),
        "effective_level": _int(t, obj, "effective_level", unparsed),
        "parent_membership_id": _str(t, obj, "parent_membership_id", unparsed),
        "joined_at": _ts_field(obj, "joined_at", unparsed, t),
        "updated_at": _ts_field(obj, "updated_at", unparsed, t),
        "user": to_json(user),
        "extra": _extra(obj, _MEMBER_FIELDS, **unparsed),
    }


ALL_TABLES = (
    GROUP_TYPES,
    GROUPS,
    GROUP_PROPERTY_DEFINITIONS,
    GROUP_PROPERTY_VALUES,
    EXPORTS,
    EXPORT_CONTENTS,
    EXPORT_ROWS,
    EXPORT_ARCHIVE,
    EXPLICIT_MEMBERS,
)


# ---------------------------------------------------------------------------------------------
# column descriptions: what the Dagster catalog shows for each table (`dagster/column_schema`);
# kept here, beside the row functions that fill the columns, not in the lake's TableSpec

_EXTRA = "Every other field the API returned for the row (JSON), so new PostHog fields are kept."
_SYNCED_AT = "When the sync that wrote this row ran (UTC)."
_PROJECT_ID_TEXT = "The PostHog project (team) id the row came from; every table has it."
_GROUP_TYPE_INDEX = "Group type index (0-4), as PostHog numbers group types."
_GROUP_TYPE = "Group type name, e.g. 'company' (from posthog.group_types)."

COLUMN_DESCRIPTIONS: dict[str, dict[str, str]] = {
    "group_types": {
        "group_type_index": _GROUP_TYPE_INDEX,
        "group_type": "Group type name, e.g. 'company'.",
        "name_singular": "Display name, singular (NULL when not set in PostHog).",
        "name_plural": "Display name, plural (NULL when not set in PostHog).",
        "detail_dashboard": "Id of the group type's detail dashboard, if any.",
        "default_columns": "Columns PostHog shows for this type in its groups list (JSON).",
        "created_at": "When the group type was created (UTC).",
        "extra": _EXTRA,
        "synced_at": _SYNCED_AT,
    },
    "groups": {
        "group_type_index": _GROUP_TYPE_INDEX,
        "group_type": _GROUP_TYPE,
        "group_key": "The group's key (unique within its type), as sent with $groupidentify.",
        "group_properties": "The group's properties (JSON object), as PostHog returned them.",
        "created_at": "When PostHog first saw the group (UTC).",
        "extra": _EXTRA,
        "synced_at": _SYNCED_AT,
    },
    "group_property_definitions": {
        "group_type_index": _GROUP_TYPE_INDEX,
        "group_type": _GROUP_TYPE,
        "name": "Property name.",
        "property_type": "PostHog's type for the property: String, Numeric, DateTime, Boolean.",
        "is_numerical": "Whether PostHog treats the property as numeric.",
        "id": "PostHog's id of the definition (NULL on the legacy endpoint).",
        "extra": _EXTRA,
        "synced_at": _SYNCED_AT,
    },
    "group_property_values": {
        "group_type_index": _GROUP_TYPE_INDEX,
        "group_type": _GROUP_TYPE,
        "key": "Property key the values belong to.",
        "value": "A value of the property, as text exactly as the API returns it.",
        "count": "How many groups of the type have this value.",
        "extra": _EXTRA,
        "synced_at": _SYNCED_AT,
    },
    "exports": {
        "id": "Export id.",
        "dashboard": "Id of the exported dashboard (NULL for an insight or query export).",
        "insight": "Id of the exported insight (NULL for a dashboard or query export).",
        "export_format": "MIME type: text/csv, image/png, application/pdf, xlsx, video, ...",
        "created_at": "When the export was created (UTC).",
        "has_content": "Whether PostHog has rendered the content (it can be downloaded).",
        "export_context": "What was exported and how: path, query source, columns (JSON).",
        "filename": "The file name PostHog gives the content.",
        "expires_after": "When PostHog deletes the content (UTC); archive it before then.",
        "exception": "Why rendering failed (NULL when it did not).",
        "user_access_level": "The key owner's access level to the export.",
        "extra": _EXTRA,
        "first_seen_at": "When a sync first listed the export (UTC).",
        "last_seen_at": "When a sync last listed the export (UTC).",
        "listed": "False once PostHog no longer lists the export (expired); the row stays.",
        "synced_at": _SYNCED_AT,
    },
    "export_contents": {
        "export_id": "Export id (posthog.exports.id).",
        "sha256": "SHA-256 of the archived bytes, byte for byte what PostHog served.",
        "size_bytes": "Size of the archived content in bytes.",
        "content_type": "Content-Type PostHog served the content with.",
        "export_format": "The export's MIME type (posthog.exports.export_format).",
        "stored_path": "Where the bytes are, relative to LAKE_ROOT (content-addressed).",
        "fetched_at": "When the content was downloaded (UTC).",
        "synced_at": _SYNCED_AT,
    },
    "export_rows": {
        "export_id": "Export id (posthog.exports.id).",
        "row_number": "Row number in the file, from 1 (the header is not a row).",
        "row": "The row as a JSON object: column name -> cell text, header order kept.",
        "synced_at": _SYNCED_AT,
    },
    "export_archive": {
        "export_id": "Export id (posthog.exports.id).",
        "state": "archived, pending, failed or expired.",
        "detail": "Why the export is in this state (NULL when archived).",
        "export_format": "The export's MIME type.",
        "expires_after": "When PostHog deletes the content (UTC).",
        "checked_at": "When this state was decided (UTC).",
        "synced_at": _SYNCED_AT,
    },
    "explicit_members": {
        "user_uuid": "The member's user uuid.",
        "id": "Membership id.",
        "level": "Membership level set on the project (1 member, 8 admin).",
        "parent_level": "Level from the organization membership.",
        "effective_level": "The level that applies: the higher of level and parent_level.",
        "parent_membership_id": "Id of the organization membership.",
        "joined_at": "When the member was added (UTC).",
        "updated_at": "When the membership last changed (UTC).",
        "user": "The member's user record (JSON): email, name, ...",
        "extra": _EXTRA,
        "synced_at": _SYNCED_AT,
    },
}


def _sql_type(spec: TableSpec, field: pa.Field) -> str:
    if field.name in spec.json_columns:
        return "JSON"
    if pa.types.is_timestamp(field.type):
        return "TIMESTAMPTZ" if field.type.tz else "TIMESTAMP"
    if pa.types.is_boolean(field.type):
        return "BOOLEAN"
    if pa.types.is_integer(field.type):
        return "BIGINT"
    if pa.types.is_floating(field.type):
        return "DOUBLE"
    return "VARCHAR" if pa.types.is_string(field.type) else str(field.type)


def column_schema(spec: TableSpec) -> dg.TableSchema:
    """The table's columns as the warehouse shows them (DuckDB types), with descriptions: the
    asset's `dagster/column_schema`, shown in the catalog before any run."""
    described = {PROJECT_ID: _PROJECT_ID_TEXT, **COLUMN_DESCRIPTIONS.get(spec.name, {})}
    return dg.TableSchema(columns=[
        dg.TableColumn(
            name=field.name,
            type=_sql_type(spec, field),
            description=described.get(field.name),
            constraints=dg.TableColumnConstraints(
                nullable=field.name not in (*spec.key, PROJECT_ID))
            if spec.key else None,
        )
        for field in spec.full_schema
    ])


def table_metadata(spec: TableSpec) -> dict[str, object]:
    """An asset definition's metadata for the table it lands: name and column schema."""
    return {"dagster/table_name": f"posthog.{spec.name}",
            "dagster/column_schema": column_schema(spec)}


# posthog_requested_exports lands no table: its columns are those of its materialization's
# preview, one row per export it created (the exports themselves land in posthog.exports)
REQUESTED_EXPORTS_SCHEMA = dg.TableSchema(columns=[
    dg.TableColumn("id", "BIGINT", description="Id of the export created."),
    dg.TableColumn("export_format", "VARCHAR", description="Its MIME type."),
    dg.TableColumn("insight", "BIGINT", description="The insight exported, if any."),
    dg.TableColumn("dashboard", "BIGINT", description="The dashboard exported, if any."),
    dg.TableColumn("state", "VARCHAR", description="ready (has content) or failed."),
    dg.TableColumn("exception", "VARCHAR", description="Why rendering failed, if it did."),
])
