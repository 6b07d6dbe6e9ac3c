"""JSON read exactly and written exactly, at orjson's speed.

Exact means the same JSON value, not the same bytes: every number keeps its value (an integer
beyond 64 bits stays that integer, a float is written in a shortest form that reads back as the
same double), strings are unchanged, and object keys keep their order. orjson writes that
several times faster than json (a million groups' properties: 3 s, not 6); where orjson refuses
(integers beyond 64 bits, non-string keys, lone surrogates, nesting deeper than 255, NaN and
Infinity as read from a body) json writes it instead.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


class NonFiniteFloat(float):
    """NaN or +-Infinity as a body held them (Python's json reads them; a non-strict server
    writes them). A float subclass, so it compares and computes like the float; orjson refuses
    it, so `dumps` writes it as json does instead of as orjson's null."""


def _non_finite(literal: str) -> NonFiniteFloat:
    return NonFiniteFloat(literal)


def loads(content: bytes | str) -> Any:
    """json's exact reading (big integers stay integers), NaN/Infinity as `NonFiniteFloat`."""
    return json.loads(content, parse_constant=_non_finite)


_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=True).encode
_JSON_STRICT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def dumps(value: Any, *, allow_nan: bool = True) -> str:
    """Compact JSON text of `value`, exact: orjson's where orjson writes it, json's elsewhere.

    NaN and Infinity must come as `NonFiniteFloat` (what `loads` makes): a plain float NaN
    would be written by orjson, as null.
    """
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return (_JSON if allow_nan else _JSON_STRICT)(value)
