"""How API values become the warehouse's JSON text: the same text json.dumps gives, exactly."""

from __future__ import annotations

import json
import math
import random
import struct
from datetime import UTC, datetime

from assets import tables
from assets.tables import group_row, to_json
from tests.helpers import exact_json
from resources import jsontext
from resources.jsontext import NonFiniteFloat


def _reference(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=True)


def test_to_json_writes_every_tricky_value_exactly() -> None:
    values = [
        {"big": 2**64 + 7, "neg_big": -(2**70), "u64": 2**64 - 1, "i64": -(2**63), "n": 2**53 + 1},
        [1e-05, 5.5e-05, 1e-07, 9.99e-10, 1e-10, 1e-300, 5e-324, 1e16, 1e15, 0.0001, -0.0],
        {"sep": "\u2028\u2029", "ctrl": "\x00\x01\x1f\x7f", "emoji": "🧨", 'q"uote': "back\\slash"},
        {"z": 1, "a": 2, "value-1e-5": "0.00001 as text", "nested": [[[{"x": None}]]], "e": {}},
        "\ud800 lone surrogate",
    ]
    deep: list = []
    for _ in range(300):  # deeper than orjson writes
        deep = [deep]
    values.append(deep)
    for value in values:
        text = to_json(value)
        assert exact_json(text) == exact_json(_reference(value)), value
        assert jsontext.loads(text) == value
    assert to_json({"z": 1, "a": 2}) == '{"z":1,"a":2}'  # key order kept


def test_to_json_keeps_random_doubles_exact() -> None:
    rng = random.Random(5)
    floats = []
    for _ in range(20_000):
        f = struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0]
        floats.append(f if math.isfinite(f) else NonFiniteFloat(f))
        floats.append(float(f"{rng.randint(1, 9)}.{rng.getrandbits(30)}e{rng.randint(-12, 20)}"))
    for f in floats:
        back = jsontext.loads(to_json([f]))[0]
        if math.isnan(f):
            assert math.isnan(back)
        else:
            assert struct.pack("d", back) == struct.pack("d", f), f


def test_nan_and_infinity_from_the_api_stay_in_the_json_text() -> None:
    body = b'{"group_key": "k", "group_properties": {"a": NaN, "b": -Infinity, "c": [Infinity]}}'
    obj = jsontext.loads(body)
    assert isinstance(obj["group_properties"]["a"], NonFiniteFloat)
    assert math.isnan(obj["group_properties"]["a"])
    row = group_row(obj, "company")
    assert row["group_properties"] == '{"a":NaN,"b":-Infinity,"c":[Infinity]}'


# --- the fast path for groups pages: properties kept as the page's own text -------------------

_PLAIN_GROUP = (
    b'{"group_type_index":0,"group_key":"k1","group_properties":{"name":"Acme \xc3\xa9","n":1,'
    b'"big":18446744073709551615,"f":0.5,"tags":["a","b"],"o":{"x":null}},'
    b'"created_at":"2026-01-31T12:00:00.123456Z"}'
)


def _page(*groups: bytes, next_link: bytes = b"null") -> bytes:
    return b'{"next":' + next_link + b',"previous":null,"results":[' + b",".join(groups) + b"]}"


def test_groups_page_decodes_plain_pages_to_raw_groups_and_anything_else_to_dicts() -> None:
    from resources.posthog_client import RawGroup, _decode_groups_page

    page = _decode_groups_page(_page(_PLAIN_GROUP, next_link=b'"http://h/next"'))
    assert page["next"] == "http://h/next"
    [group] = page["results"]
    assert isinstance(group, RawGroup)
    assert bytes(group.group_properties) == _PLAIN_GROUP.split(b'"group_properties":')[1].split(
        b',"created_at"')[0]
    assert {
        "group_type_index": group.group_type_index, "group_key": group.group_key,
        "group_properties": jsontext.loads(bytes(group.group_properties)),
        "created_at": group.created_at,
    } == jsontext.loads(_PLAIN_GROUP)

    # any spelling of the same value keeps the page's own text
    for body in (_PLAIN_GROUP.replace(b'"n":1', b'"n": 1'),
                 _PLAIN_GROUP.replace(b'"n":1', b'"n":123456789012345678901234567890'),
                 _PLAIN_GROUP.replace(b'"n":1', b'"n":1e-7'),
                 _PLAIN_GROUP.replace(b'"Acme', b'"\\u2028Acme')):
        [group] = _decode_groups_page(_page(body))["results"]
        assert isinstance(group, RawGroup), body
        assert bytes(group.group_properties) == body.split(b'"group_properties":')[1].split(
            b',"created_at"')[0]
    unusual = [
        _PLAIN_GROUP.replace(b'"n":1', b'"n":NaN'),
        _PLAIN_GROUP.replace(b'{"name"', b'null,"x":{"name"', 1).replace(b',"x":', b',"y":'),
        _PLAIN_GROUP.replace(b'"created_at"', b'"new_field":1,"created_at"'),  # goes to extra
        _PLAIN_GROUP.replace(b',"created_at":"2026-01-31T12:00:00.123456Z"', b""),
        _PLAIN_GROUP.replace(b'"k1"', b"7"),  # a key that is not a string
        _PLAIN_GROUP.replace(b'"group_type_index":0', b'"group_type_index":true'),
        _PLAIN_GROUP.replace(b'"created_at":"2026-01-31T12:00:00.123456Z"', b'"created_at":null'),
    ]
    for body in unusual:
        text = _page(body)
        decoded = _decode_groups_page(text)
        assert all(isinstance(g, dict) for g in decoded["results"]), body
        assert jsontext.dumps(decoded) == jsontext.dumps(jsontext.loads(text))  # NaN != NaN
    null_properties = _page(_PLAIN_GROUP.split(b'"group_properties":')[0]
                            + b'"group_properties":null,"created_at":"2026-01-31T12:00:00Z"}')
    assert isinstance(_decode_groups_page(null_properties)["results"][0], dict)
    assert _decode_groups_page(b'{"results":[],"next":null}') == {"next": None, "results": []}
    for broken in (b"", b'{"trunc', b"nan"):
        try:
            _decode_groups_page(broken)
        except ValueError:
            continue
        raise AssertionError(f"{broken!r} was read")


def test_group_columns_make_the_rows_group_row_makes() -> None:
    import pyarrow as pa

    from assets.tables import GROUPS, GroupColumns
    from resources.posthog_client import _decode_groups_page

    stamps = [
        "2026-01-31T12:00:00.123456Z", "2026-01-31T12:00:00Z", "2026-01-31T12:00:00.5Z",
        "2026-01-31T12:00:00.120Z", "2024-02-29T23:59:59.999999Z", "1970-01-01T00:00:00Z",
    ]
    odd = ["2026-02-30T00:00:00Z", "2026-01-31T12:00:60Z", "2026-01-31T12:00:00+02:00",
           "2026-01-31 12:00:00Z", "yesterday", "", "2026-01-31T12:00:00.1234567Z"]
    group_types = ["company", None]

    def page(stamp_list: list[str]) -> bytes:
        return _page(*[
            _PLAIN_GROUP.replace(b'"k1"', f'"k{n}"'.encode()).replace(
                b"2026-01-31T12:00:00.123456Z", stamp.encode())
            for n, stamp in enumerate(stamp_list)
        ])

    for stamp_list in (stamps, stamps + odd):
        for group_type in group_types:
            text = page(stamp_list)
            raw = _decode_groups_page(text)["results"]
            columns = GroupColumns()
            columns.add(raw[:3], group_type)
            columns.add(raw[3:], group_type)
            assert len(columns) == len(stamp_list)
            batch = columns.take()
            assert len(columns) == 0
            expected = pa.RecordBatch.from_pylist(
                [group_row(g, group_type) for g in jsontext.loads(text)["results"]],
                schema=GROUPS.schema,
            )
            assert batch.equals(expected), (batch.to_pylist(), expected.to_pylist())


def test_tabular_rows_are_json_text_exactly_as_json_writes_them() -> None:
    from assets.tabular import _as_json_objects

    rows = [
        ["a", "b", "a", ""],
        ["1", "x\ny", "q\"uote", "\x00\x1f\x7f\u2028🧨"],
        ["short"],  # missing cells are null
        ["1", "2", "3", "4", "5", "6"],  # surplus cells get positional names
        ["1", None, "3"],  # an XLSX cell without a value
        ["lone \ud800 surrogate", "b"],  # not from a UTF-8 file, but written as json would
    ]
    header = ["a", "b", "a_2", "column"]
    wide = header + ["column_5", "column_6"]
    expected = []
    for n, cells in enumerate(rows[1:]):
        names = header if n < 2 else wide
        cells = cells + [None] * (len(names) - len(cells))
        expected.append(json.dumps(dict(zip(names, cells)), ensure_ascii=False,
                                   separators=(",", ":")))
    assert list(_as_json_objects(iter(rows))) == expected


class _Log:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warning(self, message: str) -> None:
        self.warnings.append(message)


# every table's row function, a row whose every field fits, and its typed columns: API field ->
# (column, whether the column is part of the key and so keeps the value's JSON text)
_TYPED = {
    "group_types": (
        lambda o: tables.group_type_row(o),
        {"group_type_index": 0, "group_type": "company", "name_singular": "c",
         "name_plural": "cs", "detail_dashboard": 4, "default_columns": ["a"],
         "created_at": "2026-01-31T12:00:00Z"},
        {"group_type_index": "int", "group_type": "str", "name_singular": "str",
         "name_plural": "str", "detail_dashboard": "int", "created_at": "ts"},
    ),
    "groups": (
        lambda o: tables.group_row(o, "company"),
        {"group_type_index": 0, "group_key": "k", "group_properties": {},
         "created_at": "2026-01-31T12:00:00Z"},
        {"group_type_index": "int", "group_key": "key", "created_at": "ts"},
    ),
    "group_property_definitions": (
        lambda o: tables.property_definition_row(o, 0, "company"),
        {"name": "plan", "property_type": "String", "is_numerical": False, "id": "u-1"},
        {"name": "key", "property_type": "str", "is_numerical": "bool", "id": "str"},
    ),
    "group_property_values": (
        lambda o: tables.property_value_row(o, 0, "company", "plan"),
        {"name": "free", "count": 3},
        {"name": "str", "count": "int"},
    ),
    "exports": (
        lambda o: tables.export_row(o, seen_at=datetime(2026, 1, 1, tzinfo=UTC)),
        {"id": 1, "dashboard": 45, "insight": 7, "export_format": "text/csv",
         "created_at": "2026-01-31T12:00:00Z", "has_content": True, "export_context": None,
         "filename": "a.csv", "expires_after": "2026-02-07T12:00:00Z", "exception": None,
         "user_access_level": "editor"},
        {"id": "int", "dashboard": "int", "insight": "int", "export_format": "str",
         "created_at": "ts", "has_content": "bool", "filename": "str", "expires_after": "ts",
         "exception": "str", "user_access_level": "str"},
    ),
    "explicit_members": (
        lambda o: tables.explicit_member_row(o),
        {"id": "m1", "level": 1, "parent_level": 8, "effective_level": 8,
         "parent_membership_id": "p1", "joined_at": "2026-01-31T12:00:00Z",
         "updated_at": "2026-01-31T12:00:00Z", "user": {"uuid": "u"}},
        {"id": "str", "level": "int", "parent_level": "int", "effective_level": "int",
         "parent_membership_id": "str", "joined_at": "ts", "updated_at": "ts"},
    ),
}
_WRONG = {
    "int": [1.9, 1.0, "45", True, {"id": 45}, [1], 2**63, -(2**63) - 1, "abc123"],
    "bool": ["true", 1, 0, {"v": True}, [True]],
    "str": [123, 1.5, True, {"a": "b"}, ["x"]],
    "key": [123, {"a": "b"}, False],
    "ts": [123, "2026-02-30T00:00:00Z", "yesterday", {"at": "2026-01-31T12:00:00Z"}, True],
}


def test_rows_keep_a_wrong_typed_value_of_every_typed_column_in_extra() -> None:
    assert {t for t in _TYPED} == {s.name for s in tables.ALL_TABLES} - {
        "export_contents", "export_rows", "export_archive"}  # not made from API objects
    for table, (make, fits, typed) in _TYPED.items():
        log = _Log()
        tables.begin_sync(log)
        assert make(fits)["extra"] is None, table
        for field, kind in typed.items():
            column = "value" if table == "group_property_values" and field == "name" else field
            for wrong in _WRONG[kind]:
                row = make({**fits, field: wrong})
                extra = json.loads(row["extra"])
                assert extra == {f"{field}_unparsed": wrong}, (table, field, wrong, extra)
                expected = to_json(wrong) if kind == "key" else None
                assert row[column] == expected, (table, field, wrong, row[column])
            # once per (table, field) per sync
            assert sum(f"`{field}`" in w for w in log.warnings) == 1, (table, field, log.warnings)
        tables.begin_sync(log)
        make({**fits, next(iter(typed)): [1]})
        assert len(log.warnings) == len(typed) + 1, table
    tables.begin_sync()


def test_group_row_keeps_null_properties_as_null() -> None:
    row = group_row({"group_type_index": 0, "group_key": "k", "group_properties": None,
                     "created_at": "2026-01-31T12:00:00Z"}, "company")
    assert row["group_properties"] is None and row["extra"] is None


def _both_paths(text: bytes, group_type: str | None) -> tuple[object, object]:
    """The batch the groups asset makes from a page (GroupColumns for RawGroups, group_row for
    dicts), and the batch group_row makes from json's reading of the same page."""
    import pyarrow as pa

    from assets.tables import GROUPS, GroupColumns
    from resources.posthog_client import RawGroup, _decode_groups_page

    results = _decode_groups_page(text)["results"]
    if results and isinstance(results[0], RawGroup):
        columns = GroupColumns()
        columns.add(results, group_type)
        got = columns.take()
    else:
        got = pa.RecordBatch.from_pylist([group_row(g, group_type) for g in results],
                                         schema=GROUPS.schema)
    expected = pa.RecordBatch.from_pylist(
        [group_row(g, group_type) for g in jsontext.loads(text)["results"]], schema=GROUPS.schema)
    return got, expected


_HOSTILE_GROUPS = [
    *(_PLAIN_GROUP.replace(b"2026-01-31T12:00:00.123456Z", stamp) for stamp in (
        b"2026-02-30T00:00:00Z", b"2026-04-31T00:00:00Z", b"2025-02-29T00:00:00Z",
        b"2026-01-31T12:00:60Z", b"2026-01-31T24:00:00Z", b"0000-01-01T00:00:00Z",
        b"2026-01-31T12:00:00+02:00", b"2026-01-31 12:00:00Z", b"yesterday", b"",
        b"2026-01-31T12:00:00.1234567Z", b"2026-01-31T12:00:00.589000Z")),
    _PLAIN_GROUP.replace(b'"created_at":"2026-01-31T12:00:00.123456Z"', b'"created_at":null'),
    _PLAIN_GROUP.replace(b'"created_at":"2026-01-31T12:00:00.123456Z"', b'"created_at":17'),
    _PLAIN_GROUP.replace(b'"group_type_index":0', b'"group_type_index":1.9'),
    _PLAIN_GROUP.replace(b'"group_type_index":0', b'"group_type_index":1.0'),
    _PLAIN_GROUP.replace(b'"group_type_index":0', b'"group_type_index":true'),
    _PLAIN_GROUP.replace(b'"group_type_index":0', b'"group_type_index":"0"'),
    _PLAIN_GROUP.replace(b'"group_type_index":0', b'"group_type_index":9223372036854775808'),
    _PLAIN_GROUP.replace(b'"group_type_index":0', b'"group_type_index":18446744073709551616'),
    _PLAIN_GROUP.replace(b'"group_type_index":0', b'"group_type_index":-9223372036854775809'),
    _PLAIN_GROUP.replace(b'"group_key":"k1"', b'"group_key":17'),
    _PLAIN_GROUP.replace(b'"group_key":"k1"', b'"group_key":null'),
    _PLAIN_GROUP.split(b'"group_properties":')[0]
    + b'"group_properties":null,"created_at":"2026-01-31T12:00:00Z"}',
    _PLAIN_GROUP.replace(b'"n":1', b'"n":1e16').replace(b'"f":0.5', b'"f":1e-7'),
    _PLAIN_GROUP.replace(b'"n":1', b'"n":123456789012345678901234567890'),
    _PLAIN_GROUP.replace(b'"Acme', b'"\\u2028 Acme'),
]


def test_groups_fast_and_slow_paths_agree_on_hostile_groups() -> None:
    for body in _HOSTILE_GROUPS:
        for group_type in ("company", None):
            # alone (a page the fast path may take), and beside plain groups
            for text in (_page(body), _page(_PLAIN_GROUP.replace(b'"k1"', b'"k0"'), body)):
                got, expected = _both_paths(text, group_type)
                # the same rows; the properties the same JSON value (the fast path keeps
                # PostHog's spelling, the slow path writes its own)
                props = got.schema.get_field_index("group_properties")
                assert got.drop_columns(["group_properties"]).equals(
                    expected.drop_columns(["group_properties"])), (body, got, expected)
                assert [exact_json(p) for p in got.column(props).to_pylist()] == [
                    exact_json(p) for p in expected.column(props).to_pylist()], body
