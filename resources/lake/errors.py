"""The lake's errors and the checks on every name that reaches a path or SQL."""

from __future__ import annotations

import re

import dagster as dg

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")


class LakeError(dg.Failure):
    """The lake or the warehouse cannot do what was asked.

    A ``dg.Failure``, so a run shows the message itself (e.g. an unwritable LAKE_ROOT) as the
    step failure's headline instead of a traceback.
    """

    def __init__(self, message: str = "") -> None:
        super().__init__(description=message)

    def __reduce__(self):
        return (type(self), (self.description,))


class LakeBusyError(LakeError):
    """Another process holds a lock the lake needs."""


def identifier(name: str, what: str) -> str:
    """``name`` if it is a safe lower-case SQL identifier (and path segment), else LakeError."""
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise LakeError(f"invalid {what} {name!r}: must match [a-z_][a-z0-9_]*")
    return name


def quote(name: str) -> str:
    """A validated identifier, quoted (covers keywords such as ``user``)."""
    return '"' + identifier(name, "identifier") + '"'


def literal(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"
