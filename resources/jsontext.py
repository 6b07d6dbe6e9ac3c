"""JSON read exactly, and written at orjson's speed but spelled exactly as the stdlib's json.

`json.dumps(value, ensure_ascii=False, separators=(",", ":"))` is what PostHog's API (DRF)
writes and what the warehouse's JSON columns hold. orjson writes the same text several times
faster (a million groups' properties: 3 s, not 6), except where it refuses (integers beyond 64
bits, non-string keys, lone surrogates, nesting deeper than 255), where it writes NaN and
Infinity as null, and for a few floats:
`1e-7` where json writes `1e-07` (1e-9 <= |x| < 1e-5) and `0.00001` where json writes `1e-05`
(1e-5 <= |x| < 1e-4); measured over two million random doubles.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

# where one of those floats can be: `e-` then one digit, or `0.0000` (json never writes that)
_DIGITS = frozenset(b"0123456789")
_MANTISSA = frozenset(b"0123456789.")
_BEFORE_NUMBER = frozenset(b":,[")
_MINUS = ord("-")
_ZERO = ord("0")


class NonFiniteFloat(float):
    """NaN or +-Infinity as a body held them (Python's json reads them; a non-strict server
    writes them). A float subclass, so it compares and computes like the float; orjson refuses
    it, so `dumps` writes it as json does instead of as orjson's null."""


def _non_finite(literal: str) -> NonFiniteFloat:
    return NonFiniteFloat(literal)


def loads(content: bytes) -> Any:
    """json's exact reading (big integers stay integers), NaN/Infinity as `NonFiniteFloat`."""
    return json.loads(content, parse_constant=_non_finite)


_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=True).encode
_JSON_STRICT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def dumps(value: Any, *, allow_nan: bool = True) -> str:
    """`json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=...)`, written by
    orjson wherever it writes exactly that, by json elsewhere.

    NaN and Infinity must come as `NonFiniteFloat` (what `loads` makes): a plain float NaN
    would be written by orjson, as null.
    """
    try:
        text = orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        text = None
    if text is None or ((b"e-" in text or b"0.0000" in text) and _spelled_differently(text)):
        return (_JSON if allow_nan else _JSON_STRICT)(value)
    return text.decode()


def is_canonical(content: bytes) -> bool:
    """Whether `content` is JSON exactly as `dumps(loads(content))` writes it: compact, UTF-8,
    json's escapes and number spellings, no duplicate keys, no NaN.

    PostHog's API (DRF) writes its bodies that way. When a body is canonical, so is every value
    inside it (json writes a container as its members' text joined by "," and ":"), so a slice
    of it that holds one value is already the warehouse's JSON text for that value. The check
    is orjson's reading written back by orjson, equal byte for byte: orjson refuses what json
    reads differently (NaN, lone surrogates) or reads it as a different value (an integer beyond
    64 bits becomes a float, which is written back as other text); then the few floats orjson
    spells its own way.
    """
    try:
        text = orjson.dumps(orjson.loads(content))
    except (orjson.JSONDecodeError, TypeError):  # orjson.JSONEncodeError is a TypeError
        return False
    if text != content:
        return False
    return not ((b"e-" in content or b"0.0000" in content) and _spelled_differently(content))


def _spelled_differently(text: bytes) -> bool:
    """True if a number token (not text inside a string) is one orjson spells its own way."""
    # bytes.find, not re: a page of groups is 64 KB and re walks it 5x slower
    end = len(text)
    start = text.find(b"e-")
    while start >= 0:
        i = start
        if start + 3 <= end and text[start + 2] in _DIGITS and text[start + 2] != _ZERO and (
                start + 3 == end or text[start + 3] not in _DIGITS):
            while i > 0 and text[i - 1] in _MANTISSA:  # the mantissa: digits and a point
                i -= 1
            if i < start and _starts_number(text, i):
                return True
        start = text.find(b"e-", start + 2)
    start = text.find(b"0.0000")
    while start >= 0:
        if _starts_number(text, start):
            return True
        start = text.find(b"0.0000", start + 6)
    return False


def _starts_number(text: bytes, i: int) -> bool:
    """Whether a number token starts at `i` (or at a minus sign just before it)."""
    if i > 0 and text[i - 1] == _MINUS:
        i -= 1
    return i == 0 or text[i - 1] in _BEFORE_NUMBER
