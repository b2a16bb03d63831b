"""What needs PostgreSQL, said by system checks before anything fails with a traceback.

The cache, health, edge, metrics and checks work on any database Django supports. Two
parts do not:

- ``djscale.E300``: **replicas**. Read-your-writes compares WAL positions
  (``pg_current_wal_insert_lsn()`` on the primary, ``pg_last_wal_replay_lsn()`` on a
  replica) and lag is measured the same way, so every member of a replication group that
  has replicas must be PostgreSQL.
- ``djscale.E301``: **sharding** (``djscale.sharding`` installed). Ids are made by a
  PL/pgSQL function on every shard and the shard map lives on the main database, so the
  map's database and every shard must be PostgreSQL. ``migrate`` runs the checks first:
  on SQLite it stops with this error instead of a syntax error from the migration.

This module only inspects settings; it opens no connection.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from django.apps import AppConfig, apps
from django.conf import settings
from django.core.checks import CheckMessage, Error, register

from djscale import conf

__all__ = ["NEEDS_POSTGRES", "POSTGRES_ENGINES", "check_postgres_parts", "is_postgres"]

NEEDS_POSTGRES = ("replicas and sharding need PostgreSQL; cache, health, edge, metrics "
                  "and checks work on any database")

POSTGRES_ENGINES = ("django.db.backends.postgresql", "django.db.backends.postgresql_psycopg2",
                    "django.contrib.gis.db.backends.postgis")


def is_postgres(alias: str) -> bool:
    """Whether ``DATABASES[alias]`` is PostgreSQL (True for an unknown alias: not ours)."""
    entry = settings.DATABASES.get(alias)
    if not isinstance(entry, dict):
        return True
    engine = str(entry.get("ENGINE", ""))
    # A custom backend built on Django's PostgreSQL one (a wrapper with extra hooks).
    return engine in POSTGRES_ENGINES or "postgres" in engine or "postgis" in engine


def _engine(alias: str) -> str:
    return str(settings.DATABASES[alias].get("ENGINE", "?")).rsplit(".", 1)[-1]


def _others(aliases: Iterable[str]) -> list[str]:
    return sorted({a for a in aliases if not is_postgres(a)})


@register("djscale")
def check_postgres_parts(app_configs: Sequence[AppConfig] | None = None,
                         **kwargs: Any) -> list[CheckMessage]:
    """E300: replication groups on PostgreSQL; E301: djscale.sharding on PostgreSQL."""
    cfg = conf.get(validate=False)
    found: list[CheckMessage] = []
    for group in cfg.replication.groups.values():
        if not group.replicas:
            continue
        others = _others((group.primary, *group.replicas))
        if others:
            found.append(Error(
                f"Replicas need PostgreSQL: replication group {group.name!r} has "
                + ", ".join(f"{a!r} ({_engine(a)})" for a in others)
                + f"; {NEEDS_POSTGRES}.",
                hint="Point the group's databases at PostgreSQL (djscale.toml [postgres]), "
                     "or remove its replicas.",
                obj=group.name, id="djscale.E300"))
    if apps.is_installed("djscale.sharding"):
        others = _others((cfg.sharding.map_alias, *cfg.sharding.aliases))
        if others:
            found.append(Error(
                "Sharding needs PostgreSQL (ids are made by a PL/pgSQL function, the shard "
                "map is a table of the main database): "
                + ", ".join(f"{a!r} is {_engine(a)}" for a in others)
                + f"; {NEEDS_POSTGRES}.",
                hint="Use PostgreSQL for the main database and every [[shards]] entry, or "
                     "remove 'djscale.sharding' from INSTALLED_APPS.",
                obj="djscale.sharding", id="djscale.E301"))
    return found
