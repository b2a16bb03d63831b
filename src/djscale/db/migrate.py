"""Apply migrations on a live PostgreSQL database: refuse lock hazards, bound lock waits.

This module owns what djscale's ``migrate`` (and so ``migrate_shards``, shard by shard)
adds to Django's:

- :func:`pending_findings` runs :mod:`djscale.db.migration_safety` over the migrations not
  yet applied on a database, with the "running code" being the state of the applied ones
  plus the loaded models; :func:`check_pending_migrations` reports them as system checks
  (with ``migrate`` and ``check --database``). A database with no applied migration (a
  new one) has no traffic to lock out and is not analysed.
- :func:`lock_timeout` sets PostgreSQL's ``lock_timeout`` on the migrating session: a DDL
  statement that cannot get its lock in time fails instead of waiting, because while it
  waits every query of that table queues behind it.
- :func:`with_retries` runs an attempt again after such a failure, with exponential
  back-off and jitter (GitLab's migration helpers do the same). A failed atomic migration
  rolled back; a failed ``CREATE INDEX CONCURRENTLY`` leaves an invalid index, which
  :func:`drop_invalid_indexes` removes before the next attempt so it can run again.

The applied migrations recorded in ``django_migrations`` of each database are the progress:
a run that fails part-way continues where it stopped when started again.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from django.core.checks import CheckMessage, Tags, register
from django.core.checks import Warning as CheckWarning
from django.db import DatabaseError, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.migration import Migration
from django.db.migrations.operations import SeparateDatabaseAndState

from djscale import conf
from djscale.db.migration_safety import Finding, RunningCode, allowed, analyse

__all__ = ["LOCK_ERRORS", "LockRetriesExhausted", "RetryPolicy", "check_pending_migrations",
           "drop_invalid_indexes", "findings_of_migrations", "findings_of_plan",
           "is_lock_error", "lock_timeout", "pending_findings", "with_retries"]

#: SQLSTATEs an attempt is retried on: lock_not_available (lock_timeout), deadlock_detected.
LOCK_ERRORS = frozenset({"55P03", "40P01"})

T = TypeVar("T")
Plan = Sequence[tuple[Migration, bool]]


class LockRetriesExhausted(DatabaseError):
    """Every attempt failed to get a lock within ``lock_timeout``."""


def is_lock_error(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) is a lock timeout or a deadlock."""
    seen: BaseException | None = exc
    while seen is not None:
        if getattr(seen, "sqlstate", None) in LOCK_ERRORS:
            return True
        seen = seen.__cause__
    return False


def _is_postgres(connection: BaseDatabaseWrapper) -> bool:
    return connection.vendor == "postgresql"


def findings_of_plan(connection: BaseDatabaseWrapper, executor: MigrationExecutor,
                     plan: Plan, *, include_allowed: bool = False) -> list[Finding]:
    """The hazards of the forward migrations of ``plan`` on ``connection``'s database."""
    forwards = [m for m, backwards in plan if not backwards]
    loader = executor.loader
    applied = [key for key in loader.applied_migrations if key in loader.graph.nodes]
    if not forwards or not applied:
        return []
    state = loader.project_state(nodes=applied, at_end=True)
    running = RunningCode.of_project(state)
    created: set[str] = set()  # tables made earlier in this plan: empty, nobody uses them
    found: list[Finding] = []
    for migration in forwards:
        found.extend(f for f in analyse(migration, state, connection=connection,
                                        running=running, alias=connection.alias,
                                        new_tables=created)
                     if include_allowed or not allowed(migration, f.id))
        state = migration.mutate_state(state, preserve=False)
    return found


def findings_of_migrations(connection: BaseDatabaseWrapper, loader: MigrationLoader,
                           keys: Sequence[tuple[str, str]]) -> list[Finding]:
    """The hazards of each migration ``keys`` names, applied right after its parents.

    No database is read: the running code is the state of its parents plus the loaded
    models (what a pull request's migrations would meet). Opt-outs are applied.
    """
    found: list[Finding] = []
    for key in keys:
        migration = loader.get_migration(*key)
        parents = [p.key for p in loader.graph.node_map[key].parents]
        state = loader.project_state(nodes=parents, at_end=True)
        running = RunningCode.of_project(state)
        found.extend(f for f in analyse(migration, state, connection=connection,
                                        running=running)
                     if not allowed(migration, f.id))
    return found


def pending_findings(alias: str) -> list[Finding]:
    """The hazards of the migrations not applied yet on database ``alias`` (not opted out)."""
    connection = connections[alias]
    if not _is_postgres(connection):
        return []
    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    return findings_of_plan(connection, executor, plan)


#: Set by djscale's ``migrate`` while its guard reports the hazards itself (no duplicates).
guard_reports: ContextVar[bool] = ContextVar("djscale_guard_reports", default=False)


@register(Tags.database, "djscale")
def check_pending_migrations(app_configs: Any = None, databases: Any = None,
                             **kwargs: Any) -> list[CheckMessage]:
    """One warning per lock hazard in the unapplied migrations of ``databases``."""
    messages: list[CheckMessage] = []
    if guard_reports.get():
        return messages
    for alias in databases or ():
        if alias not in connections:
            continue
        try:
            found = pending_findings(alias)
        except Exception:  # noqa: BLE001 - DatabaseError, a pool timeout: E200 says which
            continue
        messages.extend(CheckWarning(f"{f.migration}: {f.operation}: {f.message} "
                                     f"(database {alias!r})", hint=f.hint, obj=alias,
                                     id=f.id) for f in found)
    return messages


@contextmanager
def lock_timeout(connection: BaseDatabaseWrapper, milliseconds: int) -> Iterator[None]:
    """Set ``lock_timeout`` on the session for the block, then back to its default."""
    if not _is_postgres(connection):
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('lock_timeout', %s, false)", [f"{milliseconds}ms"])
    try:
        yield
    finally:
        if connection.connection is not None and not connection.needs_rollback:
            # Never hide the migration's own error behind a failed RESET.
            with contextlib.suppress(DatabaseError), connection.cursor() as cursor:
                cursor.execute("RESET lock_timeout")


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts, and the back-off between them."""

    attempts: int
    backoff: float
    backoff_max: float

    @classmethod
    def from_settings(cls, attempts: int | None = None) -> RetryPolicy:
        """The policy of ``DJSCALE["MIGRATIONS"]``, ``attempts`` overriding its own."""
        cfg = conf.get().migrations
        return cls(attempts or cfg.attempts, cfg.retry_backoff, cfg.retry_backoff_max)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based), jittered."""
        base = min(self.backoff * (2 ** (attempt - 1)), self.backoff_max)
        return float(base * random.uniform(0.5, 1.0))


def with_retries(attempt: Callable[[], T], policy: RetryPolicy, *,
                 on_retry: Callable[[int, float, BaseException], None] | None = None) -> T:
    """Run ``attempt``; after a lock timeout or deadlock wait and run it again.

    Other errors propagate at once. After the last attempt :class:`LockRetriesExhausted`
    says how many were made, chained to the last error.
    """
    for number in range(1, policy.attempts + 1):
        try:
            return attempt()
        except Exception as exc:
            if not is_lock_error(exc):
                raise
            if number == policy.attempts:
                reason = " ".join(str(exc).split()) or type(exc).__name__
                raise LockRetriesExhausted(
                    f"gave up after {number} attempt(s), each failing to get a lock in time: "
                    f"{reason}") from exc
            pause = policy.delay(number)
            if on_retry is not None:
                on_retry(number, pause, exc)
            time.sleep(pause)
    raise AssertionError("unreachable")  # pragma: no cover


def _concurrent_index_names(migration: Migration) -> Iterator[str]:
    def walk(operations: Sequence[Any]) -> Iterator[str]:
        for op in operations:
            if type(op).__name__ == "AddIndexConcurrently":
                yield str(op.index.name)
            elif isinstance(op, SeparateDatabaseAndState):
                yield from walk(op.database_operations)
    yield from walk(migration.operations)


def drop_invalid_indexes(connection: BaseDatabaseWrapper, plan: Plan) -> list[str]:
    """Drop the invalid indexes an interrupted ``AddIndexConcurrently`` of ``plan`` left.

    Returns their names. Only indexes the plan is about to build are touched.
    """
    names = sorted({n for m, backwards in plan if not backwards
                    for n in _concurrent_index_names(m)})
    if not names or not _is_postgres(connection):
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE NOT i.indisvalid AND c.relname = ANY(%s) "
            "AND pg_catalog.pg_table_is_visible(c.oid)", [names])
        invalid = [row[0] for row in cursor.fetchall()]
        for name in invalid:
            cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {connection.ops.quote_name(name)}")
    return invalid
