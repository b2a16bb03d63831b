"""Explicit cross-shard queries: run one queryset on every shard in parallel and merge.

For admin and reporting, never for a request's hot path::

    Order.objects.filter(amount__gte=100).all_shards().fetch(order_by=["-amount", "id"],
                                                              limit=20)
    Order.objects.filter(status="open").all_shards().count()

Each shard runs in its own worker thread on its own connection (closed when the worker
finishes). ``fetch`` asks every shard for at most ``offset + limit`` rows in the same
order and merges them, which gives the same rows as the query would on one database
holding all of them. While a logical shard is moving, each database is restricted to
the logical shards the map gives it, so rows in transit are not counted twice.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from django.db import connections, models
from django.db.models import F

from djscale.sharding import shardmap
from djscale.sharding.config import get_config
from djscale.sharding.managers import on_shard

__all__ = ["ScatterGather"]

M = TypeVar("M", bound=models.Model)
T = TypeVar("T")


@functools.total_ordering
class _Key:
    """One ORDER BY value, compared the way PostgreSQL does (NULLs last when ascending)."""

    __slots__ = ("desc", "value")

    def __init__(self, value: Any, desc: bool) -> None:
        self.value = value
        self.desc = desc

    def _cmp(self) -> tuple[bool, Any]:
        return (self.value is None, self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Key) and self._cmp() == other._cmp()

    def __lt__(self, other: _Key) -> bool:
        a, b = self._cmp(), other._cmp()
        if a[0] != b[0]:
            return (not a[0]) if not self.desc else a[0]
        if a[0]:
            return False
        return bool(a[1] > b[1]) if self.desc else bool(a[1] < b[1])

    def __hash__(self) -> int:
        return hash(self._cmp())


class ScatterGather(Generic[M]):
    """A queryset to run on every shard; see the module docstring."""

    def __init__(self, queryset: models.QuerySet[M], *, aliases: Sequence[str] | None = None,
                 ) -> None:
        self.queryset = queryset
        self.aliases = tuple(aliases) if aliases is not None else get_config().aliases

    def _on(self, alias: str) -> models.QuerySet[M]:
        qs: models.QuerySet[Any] = on_shard(self.queryset, alias)
        snap = shardmap.current()
        if not snap.settled:
            qs = qs.alias(_djscale_ls=F("pk").bitrightshift(10).bitand(8191)).filter(
                _djscale_ls__in=snap.owned_by(alias))
        return qs

    def map(self, fn: Callable[[models.QuerySet[M]], T]) -> dict[str, T]:
        """``fn(queryset_on_shard)`` for every shard, in parallel; results by alias."""
        # Built here: the map is read on this thread's connection, not the workers'.
        querysets = {alias: self._on(alias) for alias in self.aliases}

        def work(alias: str) -> T:
            try:
                return fn(querysets[alias])
            finally:
                connections[alias].close()

        with ThreadPoolExecutor(max_workers=max(1, len(self.aliases)),
                                thread_name_prefix="djscale-scatter") as pool:
            results = list(pool.map(work, self.aliases))
        return dict(zip(self.aliases, results, strict=True))

    def count(self) -> int:
        """The number of matching rows over all shards."""
        return sum(self.map(lambda qs: qs.count()).values())

    def fetch(self, *, order_by: Sequence[str] = (), limit: int | None = None,
              offset: int = 0) -> list[Any]:
        """Matching rows (instances, or dicts after ``values()``), merged in order.

        ``order_by`` names plain fields (``"-amount"`` for descending); rows are merged as
        PostgreSQL would sort them on one database. Without ``order_by`` the rows come
        shard by shard. ``limit`` and ``offset`` apply to the merged result.
        """
        if offset < 0 or (limit is not None and limit < 0):
            raise ValueError("limit and offset must not be negative")
        fields = [(f[1:], True) if f.startswith("-") else (f, False) for f in order_by]
        stop = None if limit is None else offset + limit

        def run(qs: models.QuerySet[M]) -> list[Any]:
            if order_by:
                qs = qs.order_by(*order_by)
            return list(qs if stop is None else qs[:stop])

        parts = self.map(run)
        if fields:
            names = getattr(self.queryset, "_fields", None) or ()

            def key(row: Any) -> tuple[_Key, ...]:
                return tuple(_Key(_value(row, name, names), desc) for name, desc in fields)

            merged = list(heapq.merge(*parts.values(), key=key))
        else:
            merged = [row for part in parts.values() for row in part]
        return merged[offset:stop]


def _value(row: Any, name: str, names: Sequence[str]) -> Any:
    if isinstance(row, dict):
        return row[name]
    if isinstance(row, tuple) and names:
        return row[list(names).index(name)]
    if name == "pk":
        return row.pk
    return getattr(row, name)
