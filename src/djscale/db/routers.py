"""Database routers.

:class:`PrimaryReplicaRouter` sends writes to the primary of a replication group and
reads to one of its replicas, as described by ``settings.DJSCALE["REPLICATION_GROUPS"]``
(produced by :func:`djscale.settings.from_topology`). It only answers "which alias?";
it holds no state of its own.
"""

from __future__ import annotations

import random
from typing import Any

from django.conf import settings
from django.db.models import Model

__all__ = ["PrimaryReplicaRouter"]


def _groups() -> dict[str, dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = getattr(settings, "DJSCALE", {}).get(
        "REPLICATION_GROUPS", {})
    return groups


class PrimaryReplicaRouter:
    """Writes to the primary, reads to a replica of the main replication group."""

    group = "default"

    def db_for_read(self, model: type[Model], **hints: Any) -> str | None:
        """A replica of the group, or the primary when it has none."""
        group = _groups().get(self.group)
        if not group:
            return None
        replicas: list[str] = group["REPLICAS"]
        return random.choice(replicas) if replicas else str(group["PRIMARY"])

    def db_for_write(self, model: type[Model], **hints: Any) -> str | None:
        """The group's primary."""
        group = _groups().get(self.group)
        return str(group["PRIMARY"]) if group else None

    def allow_relation(self, obj1: Model, obj2: Model, **hints: Any) -> bool | None:
        """Objects of the same replication group may be related."""
        members = set()
        for group in _groups().values():
            members = {group["PRIMARY"], *group["REPLICAS"]}
            if obj1._state.db in members and obj2._state.db in members:
                return True
        return None

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None,
                      **hints: Any) -> bool | None:
        """Migrate primaries only; replicas receive the schema by replication."""
        for group in _groups().values():
            if db in group["REPLICAS"]:
                return False
        return None
