"""Migrate every shard database and report what happened on each.

This module owns the per-shard loop behind ``manage.py migrate_shards``: for each shard
alias it computes the migration plan, applies it with Django's ``migrate`` when it is not
empty, and reports ``applied N`` / ``up to date`` / ``failed: <reason>`` per shard. A
failing shard does not stop the others. The main database is migrated by ``migrate``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from django.core.management import call_command
from django.db import DatabaseError, connections
from django.db.migrations.executor import MigrationExecutor

from djscale.errors import DjscaleError
from djscale.sharding.config import get_config

__all__ = ["ShardMigration", "migrate_shards"]


@dataclass(frozen=True)
class ShardMigration:
    """The outcome on one shard: migrations applied (names), or the error."""

    alias: str
    applied: tuple[str, ...] = ()
    error: str = ""

    @property
    def ok(self) -> bool:
        """True unless migrating this shard failed."""
        return not self.error

    def describe(self) -> str:
        """One line for the command's report."""
        if self.error:
            return f"{self.alias}: FAILED: {self.error}"
        if not self.applied:
            return f"{self.alias}: up to date (no migrations to apply)"
        return f"{self.alias}: applied {len(self.applied)} migrations ({', '.join(self.applied)})"


def migrate_shards(*, aliases: tuple[str, ...] | None = None) -> list[ShardMigration]:
    """Apply pending migrations on each shard (all by default); one result per shard."""
    results = []
    for alias in aliases or get_config().aliases:
        try:
            connection = connections[alias]
            executor = MigrationExecutor(connection)
            plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
            names = tuple(f"{m.app_label}.{m.name}" for m, backwards in plan if not backwards)
            if plan:
                call_command("migrate", database=alias, interactive=False, verbosity=0,
                             stdout=io.StringIO())
            results.append(ShardMigration(alias, names))
        except (DatabaseError, DjscaleError) as exc:
            results.append(ShardMigration(alias, error=str(exc).strip().splitlines()[0]))
    return results
