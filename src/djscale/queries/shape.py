"""The shape of a SQL statement: the statement with its values taken out.

Two executions of ``SELECT ... WHERE "book"."id" = %s`` with different ids, or of
``... IN (%s, %s)`` and ``... IN (%s, %s, %s)``, have the same shape. The N+1 detector
groups queries by shape. This module also reads the first table and the first filtered
column of a SELECT, which :mod:`djscale.queries.relations` maps back to a model field.

Hand-written (a few regular expressions) rather than a SQL parser: Django generates a
small, regular subset of SQL, the shape is only used for grouping, and this runs on
every query of an inspected request, where a full parser would cost too much.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

__all__ = ["Filter", "first_filter", "is_select", "shape"]

_STRING = re.compile(r"'(?:[^']|'')*'")
_NUMBER = re.compile(r"(?<![\w\"$.])-?\d+(?:\.\d+)?(?![\w\"])")
_PLACEHOLDER = re.compile(r"%s|%\([^)]*\)s|\$\d+")
_IN_LIST = re.compile(r"IN \(\?(?:, \?)*\)")
_VALUES = re.compile(r"VALUES \([^()]*\)(?:, \([^()]*\))+")
_SPACE = re.compile(r"\s+")

_FROM = re.compile(r'\bFROM "([^"]+)"')
_WHERE = re.compile(r'\bWHERE \(*"([^"]+)"\."([^"]+)" (?:=|IN\b)')


@functools.lru_cache(maxsize=4096)  # Django repeats the same SQL text with new params
def shape(sql: str) -> str:
    """Return ``sql`` with literals and placeholders replaced by ``?`` and lists collapsed."""
    s = _SPACE.sub(" ", sql.strip())
    s = _STRING.sub("?", s)
    s = _PLACEHOLDER.sub("?", s)
    s = _NUMBER.sub("?", s)
    s = _IN_LIST.sub("IN (...)", s)
    return _VALUES.sub("VALUES (...)", s)


def is_select(sql: str) -> bool:
    """Return True for a read (``SELECT`` or ``WITH ... SELECT``)."""
    head = sql.lstrip()[:6].upper()
    return head == "SELECT" or head.startswith("WITH ")


@dataclass(frozen=True)
class Filter:
    """The table a SELECT reads first and the column of its first WHERE condition."""

    table: str
    where_table: str
    where_column: str


def first_filter(sql: str) -> Filter | None:
    """Return the first FROM table and first ``"table"."column" =|IN`` condition, if any."""
    frm = _FROM.search(sql)
    where = _WHERE.search(sql)
    if frm is None or where is None:
        return None
    return Filter(table=frm.group(1), where_table=where.group(1), where_column=where.group(2))
