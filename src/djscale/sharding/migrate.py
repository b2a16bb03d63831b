"""Migrate every shard database and report what happened on each.

This module owns the per-shard loop behind ``manage.py migrate_shards``: for each shard
alias it computes the migration plan, applies it with ``migrate`` when it is not empty
(djscale's, so each shard gets the lock-hazard guard, ``lock_timeout`` and retries of
:mod:`djscale.db.migrate`), and reports ``applied N`` / ``up to date`` / ``failed:
<reason>`` per shard. A failing shard does not stop the others, and what it applied before
failing is reported: each shard's ``django_migrations`` records its progress, so running
the command again continues every shard where it stopped. The main database is migrated
by ``migrate``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from django.core.management import CommandError, call_command
from django.db import DatabaseError, connections
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.recorder import MigrationRecorder

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
            done = (f" after applying {len(self.applied)} ({', '.join(self.applied)})"
                    if self.applied else "")
            return f"{self.alias}: FAILED{done}: {self.error}"
        if not self.applied:
            return f"{self.alias}: up to date (no migrations to apply)"
        return f"{self.alias}: applied {len(self.applied)} migrations ({', '.join(self.applied)})"


def _applied(alias: str, names: tuple[str, ...]) -> tuple[str, ...]:
    """Which of ``names`` the shard records as applied (after a failure part-way)."""
    try:
        recorded = MigrationRecorder(connections[alias]).applied_migrations()
    except DatabaseError:
        return ()
    return tuple(n for n in names if tuple(n.split(".", 1)) in recorded)


def migrate_shards(*, aliases: tuple[str, ...] | None = None, allow_unsafe: bool = False,
                   lock_timeout: int | None = None,
                   attempts: int | None = None,
                   stderr: io.TextIOBase | None = None) -> list[ShardMigration]:
    """Apply pending migrations on each shard (all by default); one result per shard.

    ``allow_unsafe``, ``lock_timeout`` (ms) and ``attempts`` are ``migrate``'s options;
    ``stderr`` receives its notes (retries after lock timeouts).
    """
    results = []
    for alias in aliases or get_config().aliases:
        names: tuple[str, ...] = ()
        try:
            connection = connections[alias]
            executor = MigrationExecutor(connection)
            plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
            names = tuple(f"{m.app_label}.{m.name}" for m, backwards in plan if not backwards)
            if plan:
                call_command("migrate", database=alias, interactive=False, verbosity=0,
                             stdout=io.StringIO(), stderr=stderr or io.StringIO(),
                             allow_unsafe=allow_unsafe, lock_timeout=lock_timeout,
                             attempts=attempts)
            results.append(ShardMigration(alias, names))
        except (DatabaseError, DjscaleError, CommandError) as exc:
            error = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            error = error.removeprefix(f"{alias}: ")
            results.append(ShardMigration(alias, _applied(alias, names), error=error))
    return results
