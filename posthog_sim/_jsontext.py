"""JSON as PostHog's API writes it, at orjson's speed: a copy of the writing half of the
pipeline's `resources/jsontext.py`, so the simulator imports nothing from the code it tests.

The text is `json.dumps(value, ensure_ascii=False, separators=(",", ":"))`; orjson writes the
same several times faster except where it refuses (integers beyond 64 bits, non-string keys,
lone surrogates, deep nesting) and for a few floats (`1e-7` where json writes `1e-07`,
`0.00001` where json writes `1e-05`), where json writes it instead.
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


_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=True).encode
_JSON_STRICT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def dumps(value: Any, *, allow_nan: bool = True) -> str:
    """`json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=...)`, written by
    orjson wherever it writes exactly that, by json elsewhere.

    The simulator never writes NaN (`allow_nan=False` everywhere it calls this).
    """
    try:
        text = orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        text = None
    if text is None or ((b"e-" in text or b"0.0000" in text) and _spelled_differently(text)):
        return (_JSON if allow_nan else _JSON_STRICT)(value)
    return text.decode()


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
