"""Batched data backfills: fill a column of a big table without locking it.

``UPDATE orders SET total_v2 = total`` over millions of rows in one transaction holds
every row's lock until the end (each write of the app to one of them waits), bloats the
table at once and, if it fails near the end, starts again from nothing. :func:`backfill`
updates the rows in primary-key order, ``batch_size`` at a time, each batch in its own
short transaction with ``lock_timeout``, sleeping ``pause`` seconds between batches
(throttling). Its position is committed with each batch in a ``djscale_backfill`` table
of the same database, so a backfill that stopped (an error, a deploy, Ctrl-C) continues
after the last committed batch when it is run again; a finished one is a no-op.

Rows are visited up to the highest primary key present when the backfill started: rows
inserted later are written by code that already fills the column (or by a
``db_default``). On sharded models, :func:`backfill_shards` runs it on every shard.

Use it from a migration (the migration must be ``atomic = False``: batches commit)::

    class Migration(migrations.Migration):
        atomic = False
        operations = [backfill.operation("orders.Order", {"total_v2": F("total")},
                                         where=Q(total_v2__isnull=True))]

or from the command line: ``manage.py backfill orders.Order --set total_v2=total``.
The progress table is created on first use, the way Django creates ``django_migrations``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from django.db import connections, migrations, models, router, transaction
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.state import StateApps

from djscale import conf
from djscale.db.migrate import RetryPolicy, with_retries
from djscale.errors import DjscaleError

__all__ = ["PROGRESS_TABLE", "BackfillError", "BackfillResult", "backfill",
           "backfill_shards", "operation"]

#: The table (one per database) holding each backfill's position.
PROGRESS_TABLE = "djscale_backfill"

_CREATE = (f"CREATE TABLE IF NOT EXISTS {PROGRESS_TABLE} ("
           "name varchar(200) PRIMARY KEY, last_pk bigint, high_pk bigint, "
           "row_count bigint NOT NULL DEFAULT 0, batches bigint NOT NULL DEFAULT 0, "
           "done boolean NOT NULL DEFAULT false, updated timestamptz NOT NULL DEFAULT now())")


class BackfillError(DjscaleError):
    """A backfill cannot run as asked (inside a transaction, a non-integer key...)."""


@dataclass(frozen=True)
class BackfillResult:
    """What one run did on one database."""

    name: str
    alias: str
    rows: int
    batches: int
    done: bool
    resumed_after: int | None

    def describe(self) -> str:
        """One line for a report."""
        state = "done" if self.done else "stopped (run it again to continue)"
        resumed = f", resumed after pk {self.resumed_after}" if self.resumed_after else ""
        return (f"{self.alias}: {self.name}: {self.rows} rows in {self.batches} batches"
                f"{resumed}, {state}")


def _default_name(model: type[models.Model], values: Mapping[str, Any]) -> str:
    return f"{model._meta.label_lower}:{','.join(sorted(values))}"


def backfill(model: type[models.Model], values: Mapping[str, Any], *,
             where: Any = None, using: str | None = None,
             name: str | None = None, batch_size: int | None = None,
             pause: float | None = None, lock_timeout_ms: int | None = None,
             max_batches: int | None = None,
             progress: Callable[[BackfillResult], None] | None = None) -> BackfillResult:
    """Update ``values`` (``QuerySet.update`` arguments) on every row, batch by batch.

    ``where`` (a ``Q`` or a boolean expression) limits the rows within each batch;
    ``using`` is the database (default: the router's for writes of ``model``); ``name``
    keys the saved position (default: the model and the columns). ``batch_size``,
    ``pause`` and ``lock_timeout_ms`` default to ``DJSCALE["MIGRATIONS"]``;
    ``max_batches`` stops early (the rest on the next run); ``progress`` is called after
    each batch.
    """
    cfg = conf.get().migrations
    alias = using or router.db_for_write(model) or "default"
    size = batch_size or cfg.backfill_batch_size
    sleep = cfg.backfill_pause if pause is None else pause
    lock_ms = cfg.lock_timeout_ms if lock_timeout_ms is None else lock_timeout_ms
    key = name or _default_name(model, values)
    connection = connections[alias]
    pk = model._meta.pk
    if pk is None or pk.get_internal_type() not in ("AutoField", "BigAutoField",
                                                    "IntegerField", "BigIntegerField",
                                                    "SmallAutoField", "SmallIntegerField"):
        raise BackfillError(f"{model._meta.label}: backfill walks an integer primary key")
    if connection.in_atomic_block:
        raise BackfillError(f"backfill {key!r} commits each batch and cannot run inside a "
                            "transaction: give the migration atomic = False")
    rows: models.QuerySet[Any] = models.QuerySet(model=model, using=alias)
    with connection.cursor() as cursor:
        cursor.execute(_CREATE)
        high = rows.aggregate(high=models.Max("pk"))["high"]
        cursor.execute(f"INSERT INTO {PROGRESS_TABLE} (name, last_pk, high_pk) "
                       "VALUES (%s, NULL, %s) ON CONFLICT (name) DO NOTHING", [key, high])
        cursor.execute(f"SELECT last_pk, high_pk, done FROM {PROGRESS_TABLE} WHERE name = %s",
                       [key])
        resumed, high, done = cursor.fetchone()
    policy = RetryPolicy.from_settings()
    updated = batches = 0

    def result(finished: bool) -> BackfillResult:
        return BackfillResult(key, alias, updated, batches, finished, resumed)

    while not done and high is not None and (max_batches is None or batches < max_batches):
        def one_batch() -> tuple[int, int, bool]:
            with transaction.atomic(using=alias), connection.cursor() as cursor:
                cursor.execute("SELECT set_config('lock_timeout', %s, true)", [f"{lock_ms}ms"])
                cursor.execute(f"SELECT last_pk FROM {PROGRESS_TABLE} WHERE name = %s "
                               "FOR UPDATE", [key])
                (start,) = cursor.fetchone()  # another runner may have moved it
                window = rows.filter(pk__lte=high)
                if start is not None:
                    window = window.filter(pk__gt=start)
                upper = window.order_by("pk").values_list("pk", flat=True)[size - 1:size]
                end = next(iter(upper), high)
                batch = window.filter(pk__lte=end)
                if where is not None:
                    batch = batch.filter(where)
                count = batch.update(**values)
                finished = end >= high
                cursor.execute(f"UPDATE {PROGRESS_TABLE} SET last_pk = %s, "
                               "row_count = row_count + %s, batches = batches + 1, "
                               "done = %s, updated = now() "
                               "WHERE name = %s", [end, count, finished, key])
                return end, count, finished

        _, count, done = with_retries(one_batch, policy)
        updated += count
        batches += 1
        if progress is not None:
            progress(result(done))
        if not done and sleep:
            time.sleep(sleep)
    if high is None:
        done = True
        with connection.cursor() as cursor:
            cursor.execute(f"UPDATE {PROGRESS_TABLE} SET done = true WHERE name = %s", [key])
    return result(bool(done))


def backfill_shards(model: type[models.Model], values: Mapping[str, Any],
                    **options: Any) -> list[BackfillResult]:
    """:func:`backfill` on every shard database in turn (a sharded model); one result each."""
    return [backfill(model, values, using=alias, **options)
            for alias in conf.get().sharding.aliases]


def operation(model_label: str, values: Mapping[str, Any], *,
              where: Any = None, **options: Any) -> migrations.RunPython:
    """A ``RunPython`` that backfills ``model_label`` on the database being migrated.

    Runs on each database the routers migrate that model on (every shard of a sharded
    model, via ``migrate_shards``); reversing it does nothing. ``options`` are
    :func:`backfill`'s.
    """
    app_label, model_name = model_label.split(".")
    options.setdefault("name", f"{model_label.lower()}:{','.join(sorted(values))}")

    def forwards(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
        model = apps.get_model(app_label, model_name)
        backfill(model, values, where=where, using=schema_editor.connection.alias, **options)

    return migrations.RunPython(forwards, migrations.RunPython.noop,
                                hints={"model_name": model_name.lower()}, elidable=False)
