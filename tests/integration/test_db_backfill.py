"""Batched backfills on real PostgreSQL: batches, resumption, every shard, the command."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from django.core.management import call_command
from django.db import connections, transaction
from django.db.models import F, Q, Value
from django.db.models.functions import Upper

from djscale.db.backfill import PROGRESS_TABLE, BackfillError, backfill, backfill_shards
from djscale.sharding import shardmap
from tests.shardapp.models import ShardedUser, UnshardedOrder

pytestmark = [pytest.mark.integration,
              pytest.mark.django_db(transaction=True, databases="__all__")]

SHARDS = ("shard1", "shard2", "shard3")


@pytest.fixture(autouse=True)
def clean() -> Iterator[None]:
    """The seeded shard map; no backfill position left for the next test."""
    shardmap.invalidate()
    yield
    shardmap.invalidate()
    for alias in ("default", *SHARDS):
        with connections[alias].cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {PROGRESS_TABLE}")


def test_batches_stop_and_the_next_run_resumes_after_the_last_committed_one() -> None:
    UnshardedOrder.objects.bulk_create(
        UnshardedOrder(id=i, user_id=i, amount=i) for i in range(1, 26))
    values = {"note": Value("filled")}

    first = backfill(UnshardedOrder, values, batch_size=10, max_batches=2)
    assert (first.rows, first.batches, first.done, first.resumed_after) == (20, 2, False, None)
    assert UnshardedOrder.objects.filter(note="filled").count() == 20

    second = backfill(UnshardedOrder, values, batch_size=10)
    assert (second.rows, second.batches, second.done, second.resumed_after) == (5, 1, True, 20)
    assert not UnshardedOrder.objects.exclude(note="filled").exists()

    again = backfill(UnshardedOrder, values, batch_size=10)
    assert (again.rows, again.batches, again.done) == (0, 0, True)


def test_where_limits_the_rows_and_expressions_read_each_row() -> None:
    UnshardedOrder.objects.bulk_create(
        UnshardedOrder(id=i, user_id=i, amount=i, note="" if i % 2 else "keep")
        for i in range(1, 11))
    result = backfill(UnshardedOrder, {"amount": F("amount") * 10}, where=Q(note=""),
                      batch_size=3)
    assert result.rows == 5 and result.done
    assert sorted(UnshardedOrder.objects.values_list("amount", flat=True)) == [
        2, 4, 6, 8, 10, 10, 30, 50, 70, 90]


def test_backfill_shards_runs_on_every_shard() -> None:
    for i in range(1, 61):
        ShardedUser.objects.create(user_id=i, email=f"u{i}@example.com")
    results = backfill_shards(ShardedUser, {"name": Upper("email")}, batch_size=7)
    assert [r.alias for r in results] == list(SHARDS)
    assert all(r.done and r.rows > 0 for r in results)
    assert sum(r.rows for r in results) == 60
    for alias in SHARDS:
        assert not ShardedUser.objects.using(alias).exclude(name=Upper("email")).exists()


def test_a_backfill_inside_a_transaction_is_refused_before_it_writes() -> None:
    UnshardedOrder.objects.create(id=1, user_id=1, amount=1)
    with pytest.raises(BackfillError, match="give the migration atomic = False"), \
            transaction.atomic():
        backfill(UnshardedOrder, {"note": Value("x")})
    assert UnshardedOrder.objects.get(id=1).note == ""


def test_the_command_takes_sql_expressions_and_covers_every_shard() -> None:
    for i in range(1, 31):
        ShardedUser.objects.create(user_id=i, email=f"u{i}@example.com")
    out = io.StringIO()
    call_command("backfill", "shardapp.ShardedUser", "--set", "name=upper(email)",
                 "--batch-size", "4", "--max-batches", "1", stdout=out)
    assert out.getvalue().count("stopped (run it again to continue)") == len(SHARDS)
    out = io.StringIO()
    call_command("backfill", "shardapp.ShardedUser", "--set", "name=upper(email)",
                 stdout=out)
    lines = out.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == list(SHARDS), lines
    assert all("resumed after pk" in line and line.endswith("done") for line in lines), lines
    assert ShardedUser.objects.all_shards().count() == 30
    for alias in SHARDS:
        assert not ShardedUser.objects.using(alias).exclude(name=Upper("email")).exists()
