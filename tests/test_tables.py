"""How API values become the warehouse's JSON text: the same text json.dumps gives, exactly."""

from __future__ import annotations

import json
import math
import random
import struct

from assets.tables import group_row, to_json
from resources import jsontext
from resources.jsontext import NonFiniteFloat


def _reference(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=True)


def test_to_json_spells_every_tricky_value_as_json_does() -> None:
    values = [
        {"big": 2**64 + 7, "neg_big": -(2**70), "u64": 2**64 - 1, "i64": -(2**63)},
        [1e-05, 5.5e-05, 1e-07, 9.99e-10, 1e-10, 1e-300, 5e-324, 1e16, 1e15, 0.0001, -0.0],
        {"sep": "\u2028\u2029", "ctrl": "\x00\x01\x1f\x7f", "emoji": "🧨", 'q"uote': "back\\slash"},
        {"value-1e-5": "0.00001 as text", "nested": [[[{"x": None}]]], "empty": {}},
        "\ud800 lone surrogate",
    ]
    deep: list = []
    for _ in range(300):  # deeper than orjson writes
        deep = [deep]
    values.append(deep)
    for value in values:
        assert to_json(value) == _reference(value)


def test_to_json_matches_json_on_random_doubles() -> None:
    rng = random.Random(5)
    floats = []
    for _ in range(20_000):
        f = struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0]
        floats.append(f if math.isfinite(f) else NonFiniteFloat(f))
        floats.append(float(f"{rng.randint(1, 9)}.{rng.getrandbits(30)}e{rng.randint(-12, 20)}"))
    for f in floats:
        assert to_json([f]) == _reference([f])
        assert to_json(f) == _reference(f)
        assert to_json({"k": f, "s": "5e-4a 0.00001"}) == _reference({"k": f, "s": "5e-4a 0.00001"})


def test_nan_and_infinity_from_the_api_stay_in_the_json_text() -> None:
    body = b'{"group_key": "k", "group_properties": {"a": NaN, "b": -Infinity, "c": [Infinity]}}'
    obj = jsontext.loads(body)
    assert isinstance(obj["group_properties"]["a"], NonFiniteFloat)
    assert math.isnan(obj["group_properties"]["a"])
    row = group_row(obj, "company")
    assert row["group_properties"] == '{"a":NaN,"b":-Infinity,"c":[Infinity]}'
