"""Querysets and managers of sharded models: route by shard key or id, or fail clearly.

``Order.objects.filter(user_id=7)`` and ``Order.objects.get(pk=order_id)`` find their
database by themselves (the shard key's logical shard, or the one encoded in the id);
``for_key(7)`` and ``get_by_shard_key(7, ...)`` say it explicitly; ``create`` and
``bulk_create`` route every object by its own key. A query that gives no way to find
its shard raises :class:`~djscale.errors.ShardKeyMissing` when it runs (from the
router), naming the model and the key. ``all_shards()`` is the explicit cross-shard
query (:mod:`djscale.sharding.scatter`).
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from django.db import models

if TYPE_CHECKING:
    from djscale.sharding.models import ShardedModel
    from djscale.sharding.scatter import ScatterGather

__all__ = ["ShardedManager", "ShardedQuerySet"]

M = TypeVar("M", bound=models.Model)
QS = TypeVar("QS", bound=models.QuerySet[Any])

_PK_NAMES = ("pk", "pk__exact", "id", "id__exact")


SHARD_HINT = "djscale_shard"
"""Router hint naming the shard primary a queryset was routed to (reads may use replicas)."""


def _db(obj: object) -> str | None:
    """The shard a queryset is bound to: ``using()`` or a routing hint (None: neither)."""
    db: str | None = getattr(obj, "_db", None)
    if db is None:
        db = getattr(obj, "_hints", {}).get(SHARD_HINT)
    return db


def on_shard(qs: QS, alias: str, *, clone: bool = True) -> QS:
    """``qs`` routed to shard ``alias``: writes go to its primary, reads through the
    router (a usable replica of that shard, or the primary).

    ``clone=False`` marks ``qs`` itself (only for a queryset nobody else holds yet).
    """
    routed: Any = qs._chain() if clone else qs  # type: ignore[attr-defined]
    routed._hints = {**routed._hints, SHARD_HINT: alias}  # the dict is shared by clones
    result: QS = routed
    return result


@functools.cache
def _key_names(model: type[models.Model], key: str) -> tuple[tuple[str, ...], str | None]:
    """Filter names that carry the shard key, and the FK's name when the key is an FK."""
    names = [key, f"{key}__exact"]
    fk_name = None
    for f in model._meta.concrete_fields:
        if f.attname == key and f.is_relation and f.name != key:
            fk_name = f.name
            names += [f.name, f"{f.name}__exact"]
    return tuple(names), fk_name


class ShardedQuerySet(models.QuerySet[M]):
    """A QuerySet that picks its shard from the shard key or id in its filters."""

    def _sharded(self) -> type[ShardedModel]:
        return self.model  # type: ignore[return-value]

    def _alias_from_filters(self, kwargs: dict[str, Any]) -> str | None:
        model = self._sharded()
        names, fk_name = _key_names(self.model, model.shard_key)
        for name in names:
            if name in kwargs:
                value = kwargs[name]
                if isinstance(value, models.Model) and fk_name is not None:
                    field = self.model._meta.get_field(fk_name)
                    value = getattr(value, field.target_field.attname)  # type: ignore[union-attr]
                return model.alias_for_key(value)
        for name in _PK_NAMES:
            if name in kwargs and isinstance(kwargs[name], int):
                return model.alias_for_id(kwargs[name])
        candidates: set[str] = set()
        keys = kwargs.get(f"{model.shard_key}__in")
        if isinstance(keys, list | tuple | set) and keys:
            candidates = {model.alias_for_key(v) for v in keys}
        for name in ("pk__in", "id__in"):
            ids = kwargs.get(name)
            if isinstance(ids, list | tuple | set) and ids:
                candidates = {model.alias_for_id(v) for v in ids}
        if len(candidates) == 1:
            return candidates.pop()
        return None

    def filter(self, *args: Any, **kwargs: Any) -> ShardedQuerySet[M]:
        """``QuerySet.filter``, also choosing the database from the shard key or id."""
        qs = super().filter(*args, **kwargs)
        if _db(qs) is None and kwargs:
            alias = self._alias_from_filters(kwargs)
            if alias is not None:
                qs = on_shard(qs, alias, clone=False)  # qs is our own fresh clone
        return qs

    def for_key(self, key: object) -> ShardedQuerySet[M]:
        """This queryset on the database holding shard-key value ``key``."""
        return on_shard(self, self._sharded().alias_for_key(key))

    def get_by_shard_key(self, key: object, **filters: Any) -> M:
        """The one row with shard key ``key`` (and ``filters``), read from its shard."""
        return self.for_key(key).get(**{self._sharded().shard_key: key, **filters})

    def get_by_id(self, id_: int) -> M:
        """The row with this id, read from the shard encoded in the id."""
        return on_shard(self, self._sharded().alias_for_id(id_)).get(pk=id_)

    def create(self, **kwargs: Any) -> M:
        """Create a row on its shard (chosen from the shard key among ``kwargs``)."""
        if _db(self) is not None:
            return super().create(**kwargs)
        obj = self.model(**kwargs)
        self._for_write = True
        obj.save(force_insert=True)
        return obj

    def _routed(self, kwargs: dict[str, Any]) -> ShardedQuerySet[M]:
        if _db(self) is None:
            alias = self._alias_from_filters(kwargs)
            if alias is not None:
                return on_shard(self, alias)
        return self

    def get_or_create(self, defaults: Any = None, **kwargs: Any) -> tuple[M, bool]:
        """``QuerySet.get_or_create`` on the shard of the shard key among ``kwargs``."""
        qs = self._routed(kwargs)
        return super(ShardedQuerySet, qs).get_or_create(defaults=defaults, **kwargs)

    def update_or_create(self, defaults: Any = None, create_defaults: Any = None,
                         **kwargs: Any) -> tuple[M, bool]:
        """``QuerySet.update_or_create`` on the shard of the shard key among ``kwargs``."""
        qs = self._routed(kwargs)
        return super(ShardedQuerySet, qs).update_or_create(
            defaults=defaults, create_defaults=create_defaults, **kwargs)

    def bulk_create(self, objs: Iterable[M], *args: Any, **kwargs: Any) -> list[M]:
        """Insert rows in one statement per shard, each on its own shard."""
        objs = list(objs)
        if _db(self) is not None:
            return super().bulk_create(objs, *args, **kwargs)
        groups: dict[str, list[M]] = defaultdict(list)
        for obj in objs:
            groups[obj.shard_alias()].append(obj)  # type: ignore[attr-defined]
        for alias, group in groups.items():
            super(ShardedQuerySet, self.using(alias)).bulk_create(group, *args, **kwargs)
        return objs

    def all_shards(self) -> ScatterGather[M]:
        """This query on every shard in parallel (reporting/admin; see ScatterGather)."""
        from djscale.sharding.scatter import ScatterGather

        return ScatterGather(self)


class ShardedManager(models.Manager[M]):
    """The default manager of sharded models (see :class:`ShardedQuerySet`)."""

    _queryset_class = ShardedQuerySet

    def get_queryset(self) -> ShardedQuerySet[M]:
        """A :class:`ShardedQuerySet` (with this manager's database and hints)."""
        return ShardedQuerySet(model=self.model, using=_db(self), hints=getattr(self, "_hints", {}))

    def for_key(self, key: object) -> ShardedQuerySet[M]:
        """Rows on the database holding shard-key value ``key``."""
        return self.get_queryset().for_key(key)

    def get_by_shard_key(self, key: object, **filters: Any) -> M:
        """The one row with shard key ``key`` (and ``filters``)."""
        return self.get_queryset().get_by_shard_key(key, **filters)

    def get_by_id(self, id_: int) -> M:
        """The row with this id, from the shard its id encodes."""
        return self.get_queryset().get_by_id(id_)

    def all_shards(self) -> ScatterGather[M]:
        """Every shard in parallel (see :class:`~djscale.sharding.scatter.ScatterGather`)."""
        return self.get_queryset().all_shards()

    def filter(self, *args: Any, **kwargs: Any) -> ShardedQuerySet[M]:
        """``QuerySet.filter`` choosing the shard from the shard key or id."""
        return self.get_queryset().filter(*args, **kwargs)

    def get(self, *args: Any, **kwargs: Any) -> M:
        """``QuerySet.get`` choosing the shard from the shard key or id."""
        return self.get_queryset().get(*args, **kwargs)

    def create(self, **kwargs: Any) -> M:
        """Create a row on its shard."""
        return self.get_queryset().create(**kwargs)

    def bulk_create(self, objs: Iterable[M], *args: Any, **kwargs: Any) -> list[M]:
        """Insert rows, one statement per shard."""
        return self.get_queryset().bulk_create(objs, *args, **kwargs)
