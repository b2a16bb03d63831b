"""The shard router: which shard database serves a sharded model, and where tables live.

:class:`ShardRouter` is placed before the replica router in ``DATABASE_ROUTERS``. It
claims only sharded models (subclasses of :class:`~djscale.sharding.models.ShardedModel`)
and answers from the instance hint Django gives it (a saved or related object); a
query without one raises :class:`~djscale.errors.ShardKeyMissing`, naming the model and
its key. Every answer counts one query for that physical shard
(``djscale_shard_queries_total``; scatter-gather queries are routed here too). Reads may
go to a replica of that shard through the replica router's
:func:`djscale.db.replicas.read_alias` (health, lag and read-your-writes stay there).

``allow_migrate`` keeps sharded tables on shards only, global tables off shards, and
runs operations hinted ``djscale_shards=True`` (the id function) on shards only.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.db.models import Model

from djscale import metrics
from djscale.errors import ShardKeyMissing
from djscale.sharding.config import get_config
from djscale.sharding.managers import SHARD_HINT

__all__ = ["ShardRouter", "is_sharded"]


def is_sharded(model: type[Model] | None) -> bool:
    """True for a sharded model class (a ShardedModel subclass with a shard key)."""
    from djscale.sharding.models import ShardedModel

    return model is not None and issubclass(model, ShardedModel) and bool(model.shard_key)


def _missing(model: type[Model]) -> ShardKeyMissing:
    key = getattr(model, "shard_key", "?")
    label = model._meta.label
    name = model._meta.object_name
    return ShardKeyMissing(
        f"{label} is sharded by {key!r} but this query gives no {key!r} or id: filter on "
        f"{key}=... or pk=..., use {name}.objects.for_key(...), or "
        f"{name}.objects.all_shards() for a cross-shard query"
    )


class ShardRouter:
    """Routes sharded models to their shard; keeps tables on the right databases."""

    def _alias(self, model: type[Model], hints: dict[str, Any]) -> str:
        pinned = hints.get(SHARD_HINT)
        if pinned is not None:
            return str(pinned)
        instance = hints.get("instance")
        if instance is not None:
            from djscale.sharding.models import ShardedModel

            if isinstance(instance, ShardedModel):
                return instance.shard_alias()
            db = instance._state.db
            if db is not None and get_config().is_shard(db):
                return str(db)
        raise _missing(model)

    def db_for_read(self, model: type[Model], **hints: Any) -> str | None:
        """The shard of the instance in ``hints`` (or one of its usable replicas)."""
        if not is_sharded(model):
            return None
        alias = self._alias(model, hints)
        metrics.record_shard_query(shard=alias)
        if get_config().replicas.get(alias):
            from djscale.db.replicas import read_alias

            return read_alias(alias)
        return alias

    def db_for_write(self, model: type[Model], **hints: Any) -> str | None:
        """The shard primary of the instance in ``hints``."""
        if not is_sharded(model):
            return None
        alias = self._alias(model, hints)
        metrics.record_shard_query(shard=alias)
        return alias

    def allow_relation(self, obj1: Model, obj2: Model, **hints: Any) -> bool | None:
        """Sharded rows relate only to rows on the same shard."""
        if not (is_sharded(type(obj1)) or is_sharded(type(obj2))):
            return None
        return bool(obj1._state.db == obj2._state.db)

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None,
                      **hints: Any) -> bool | None:
        """Sharded tables on shards only; global tables never on shards."""
        cfg = get_config()
        on_shard = cfg.is_shard(db)
        if hints.get("djscale_shards"):
            return on_shard
        if model_name is None:
            # RunPython/RunSQL without a model: global unless hinted djscale_shards=True.
            return False if on_shard else None
        try:
            model = apps.get_model(app_label, model_name)
        except LookupError:
            return None
        if is_sharded(model):
            return on_shard
        if on_shard:
            return False
        return None
