"""Cheap private copies of plain data for the L1 hit path.

L1 must hand every caller its own copy of a cached value, so that one request mutating
what it got cannot change what the next request gets. Unpickling the stored bytes makes
such a copy, but it rebuilds every string and number too, and costs most of an L1 hit.

Most cached values are *plain data*: dicts and lists whose leaves are immutable (``str``,
``int``, ``float``, ``bool``, ``None``, ``bytes``, ``Decimal``, dates, UUIDs and tuples
of those): API payloads, rendered fragments, ids. For those, :func:`freeze` records once
which containers are mutable (a *copy plan*) and :meth:`Plain.copy` copies just those,
sharing the immutable leaves, which is a deep copy in every observable way and several
times faster than ``pickle.loads``. Anything else (model instances, sets, subclasses of
dict or list, shared or cyclic references, very large or deep trees) is not plain, and L1
keeps the pickled bytes for it as before.

This module knows nothing about Redis or Django's cache API.
"""

from __future__ import annotations

import datetime
import decimal
import uuid
from typing import Any, TypeAlias

from django.utils.safestring import SafeString

__all__ = ["Plain", "freeze"]

_IMMUTABLE: frozenset[type] = frozenset({
    str, SafeString, int, float, bool, type(None), bytes, complex, decimal.Decimal,
    datetime.datetime, datetime.date, datetime.time, datetime.timedelta, uuid.UUID,
})
_MAX_NODES = 10_000
_MAX_DEPTH = 16

# A copy plan: None for an immutable value, else the (key or index, plan) pairs of the
# container's mutable children (an empty tuple: a flat container, one .copy() does).
Plan: TypeAlias = "tuple[tuple[Any, Plan], ...] | None"


class _NotPlain(Exception):
    pass


class Plain:
    """A snapshot of a plain value and the plan to copy it."""

    __slots__ = ("nbytes", "plan", "value")

    def __init__(self, value: Any, plan: Plan, nbytes: int) -> None:
        self.value = value
        self.plan = plan
        self.nbytes = nbytes
        """The size of the value's serialized form (what L1 accounts for it)."""

    def copy(self) -> Any:
        """A private copy: mutable containers copied, immutable leaves shared."""
        plan = self.plan
        if plan is None:
            return self.value
        return _copy(self.value, plan)


def _copy(obj: Any, plan: tuple[tuple[Any, Plan], ...]) -> Any:
    new = obj.copy()
    for key, sub in plan:
        new[key] = _copy(obj[key], sub)  # type: ignore[arg-type]  # sub is never None here
    return new


def freeze(value: Any, *, nbytes: int) -> Plain | None:
    """A :class:`Plain` snapshot of ``value`` (copied now), or None if it is not plain data.

    ``nbytes`` is the size of its serialized form, which L1 accounts for the entry.
    """
    try:
        plan = _plan(value, set(), 0, [0])
    except _NotPlain:
        return None
    # Snapshot now: the caller still holds ``value`` and may change it after cache.set().
    return Plain(value if plan is None else _copy(value, plan), plan, nbytes)


def _plan(value: Any, seen: set[int], depth: int, nodes: list[int]) -> Plan:
    kind = type(value)
    if kind in _IMMUTABLE:
        return None
    nodes[0] += 1
    if nodes[0] > _MAX_NODES or depth > _MAX_DEPTH:
        raise _NotPlain
    if kind is tuple or kind is frozenset:
        for item in value:
            if _plan(item, seen, depth + 1, nodes) is not None:
                raise _NotPlain  # a tuple holding a list: not immutable
        return None
    if kind is dict:
        items = value.items()
        for key, _ in items:
            if type(key) not in _IMMUTABLE:
                raise _NotPlain
    elif kind is list:
        items = enumerate(value)
    else:
        raise _NotPlain
    # Shared or cyclic containers would come back as separate copies (pickle keeps
    # them shared): leave those to pickle.
    if id(value) in seen:
        raise _NotPlain
    seen.add(id(value))
    return tuple((key, sub) for key, item in items
                 if (sub := _plan(item, seen, depth + 1, nodes)) is not None)
