"""System checks of the replica layer (``manage.py check``).

- ``djscale.W401``: replicas are configured but ``ReplicaMiddleware`` is not installed, so
  read-your-writes does not reach the next request and GETs are not retried when a replica
  dies.
- ``djscale.W402``: a middleware listed after ``ReplicaMiddleware`` handles exceptions; its
  ``process_exception`` runs first and may answer a replica's connection error (with a 503,
  say) before the failover can retry the read.
- ``djscale.W403``: a GraphQL app is installed while ``PRIMARY_FOR_UNSAFE_METHODS`` is on:
  GraphQL queries arrive as POST, so every one of them reads from the primary.

This module only inspects settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Warning, register
from django.utils.module_loading import import_string

from djscale import conf

__all__ = ["check_replica_middleware"]

MIDDLEWARE_PATH = "djscale.db.middleware.ReplicaMiddleware"
GRAPHQL_APPS = ("graphene_django", "strawberry_django", "strawberry.django", "ariadne_django")
"""Apps that serve GraphQL, whose queries arrive as POST requests."""


def _installed_apps() -> list[str]:
    return [app if isinstance(app, str) else type(app).__module__
            for app in getattr(settings, "INSTALLED_APPS", []) or []]


@register("djscale")
def check_replica_middleware(app_configs: Sequence[AppConfig] | None = None,
                             **kwargs: Any) -> list[CheckMessage]:
    """W401/W402: ReplicaMiddleware is installed, and last among exception handlers."""
    groups = conf.get(validate=False).replication.groups
    if not any(g.replicas for g in groups.values()):
        return []
    middleware = list(getattr(settings, "MIDDLEWARE", []) or [])
    if MIDDLEWARE_PATH not in middleware:
        return [Warning(
            "Replicas are configured but ReplicaMiddleware is not installed: a user's next "
            "request may read a replica that has not replayed their write, and a GET whose "
            "replica dies fails instead of being retried.",
            hint=f"Add {MIDDLEWARE_PATH!r} at the end of MIDDLEWARE.", id="djscale.W401")]
    found: list[CheckMessage] = []
    graphql = [app for app in _installed_apps()
               if any(app == g or app.startswith(g + ".") for g in GRAPHQL_APPS)]
    if graphql and conf.get(validate=False).replication.primary_for_unsafe_methods:
        found.append(Warning(
            f"{', '.join(graphql)} serves GraphQL, whose queries arrive as POST, and "
            "ReplicaMiddleware sends every read of a POST to the primary "
            "(PRIMARY_FOR_UNSAFE_METHODS): the replicas take none of those reads.",
            hint="Wrap read-only resolvers or the GraphQL view's queries in "
                 "djscale.db.use_replica(), or set DJSCALE['PRIMARY_FOR_UNSAFE_METHODS'] = "
                 "False and read on the primary where a write needs it (docs/replicas.md); "
                 "silence djscale.W403 once handled.",
            id="djscale.W403"))
    for path in middleware[middleware.index(MIDDLEWARE_PATH) + 1:]:
        try:
            cls = import_string(path)
        except ImportError:
            continue  # Django reports unimportable middleware itself
        if hasattr(cls, "process_exception"):
            found.append(Warning(
                f"{path} comes after ReplicaMiddleware and handles exceptions: it sees a "
                "dead replica's connection error first and may answer it before the read "
                "is retried on another server.",
                hint=f"Move {MIDDLEWARE_PATH!r} after it (last in MIDDLEWARE).",
                id="djscale.W402"))
    return found
