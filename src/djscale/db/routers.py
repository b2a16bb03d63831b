"""Database routers.

:class:`PrimaryReplicaRouter` routes the models no earlier router claimed within a
replication group of ``DJSCALE["REPLICATION_GROUPS"]`` (:mod:`djscale.conf`): writes to the primary,
reads to :func:`djscale.db.replicas.read_alias` (a healthy replica honouring
read-your-writes, else the primary). It only answers "which alias?"; replica health and
the request's consistency state live in :mod:`djscale.db.pool` and
:mod:`djscale.db.consistency`.

An instance hint (related-object access, ``instance.save()``) keeps the query in the
group the instance came from, so an object read from ``shard1_replica1`` is saved to
``shard1``.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Model

from djscale import metrics
from djscale.db import config
from djscale.db.config import GroupConfig
from djscale.db.replicas import read_alias_for

__all__ = ["PrimaryReplicaRouter"]


class PrimaryReplicaRouter:
    """Writes to the primary, reads to a usable replica of the same replication group."""

    group = "default"
    """The group of models without an instance hint."""

    def _group(self, hints: dict[str, Any]) -> GroupConfig | None:
        instance = hints.get("instance")
        if instance is not None:
            found = config.group_of(getattr(getattr(instance, "_state", None), "db", None))
            if found is not None:
                return found
        return config.groups().get(self.group)

    def db_for_read(self, model: type[Model], **hints: Any) -> str | None:
        """A usable replica of the group (read-your-writes honoured), else its primary."""
        group = self._group(hints)
        return read_alias_for(group) if group is not None else None

    def db_for_write(self, model: type[Model], **hints: Any) -> str | None:
        """The group's primary."""
        group = self._group(hints)
        if group is None:
            return None
        metrics.record_router_decision(group=group.name, operation="write", target="primary")
        return group.primary

    def allow_relation(self, obj1: Model, obj2: Model, **hints: Any) -> bool | None:
        """Objects of the same replication group may be related."""
        g1 = config.group_of(obj1._state.db)
        if g1 is not None and g1 is config.group_of(obj2._state.db):
            return True
        return None

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None,
                      **hints: Any) -> bool | None:
        """Never on replicas (they receive the schema by replication); else no opinion."""
        group = config.group_of(db)
        if group is not None and db in group.replicas:
            return False
        return None
