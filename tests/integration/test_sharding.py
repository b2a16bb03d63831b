"""Sharding on 3 real PostgreSQL databases: placement, ids, routing, scatter-gather, lookups."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
from django.db import connections

from djscale.errors import ShardKeyMissing
from djscale.sharding import shard_for, shard_of, shardmap
from djscale.sharding.lookups import GlobalLookup
from tests.shardapp.models import Order, ShardedUser, UnshardedOrder, UserDirectory

pytestmark = [pytest.mark.integration,
              pytest.mark.django_db(transaction=True, databases="__all__")]

SHARDS = ("shard1", "shard2", "shard3")


@pytest.fixture(autouse=True)
def fresh_map() -> Iterator[None]:
    """Every test starts from the seeded map (flushes between tests empty the table)."""
    shardmap.invalidate()
    yield
    shardmap.invalidate()


def _count(alias: str, table: str) -> int:
    with connections[alias].cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
        return int(cur.fetchone()[0])


def test_ten_thousand_users_spread_evenly_and_orders_follow_their_user() -> None:
    users = ShardedUser.objects.bulk_create(
        [ShardedUser(user_id=i, email=f"u{i}@example.com") for i in range(1, 10001)])
    orders = Order.objects.bulk_create(
        [Order(user_id=u.user_id, amount=u.user_id % 97) for u in users if u.user_id % 5 == 0]
        + [Order(user_id=u.user_id, amount=1) for u in users if u.user_id % 10 == 0])

    per_db = {alias: _count(alias, "shardapp_shardeduser") for alias in SHARDS}
    assert sum(per_db.values()) == 10000
    even = 10000 / 3
    assert all(abs(n - even) / even < 0.05 for n in per_db.values()), per_db

    assert all(u.id is not None and shard_of(u.id) == shard_for(u.user_id) for u in users)
    assert len({u.id for u in users} | {o.id for o in orders}) == len(users) + len(orders)
    for order in orders:
        assert shard_of(order.id) == shard_for(order.user_id)
    by_alias = Counter(shardmap.current().alias_for(shard_of(o.id)) for o in orders)
    assert {a: _count(a, "shardapp_order") for a in SHARDS} == dict(by_alias)

    user = ShardedUser.objects.get_by_shard_key(50)
    assert user._state.db == shardmap.current().alias_for(shard_for(50))
    mine = list(user.orders.order_by("id"))
    assert len(mine) == 2
    assert {o._state.db for o in mine} == {user._state.db}
    assert Order.objects.get_by_id(mine[0].id).user_id == 50


def test_ids_are_generated_in_postgres_unique_and_roughly_time_ordered() -> None:
    user = ShardedUser.objects.create(user_id=7, email="seven@example.com")
    first = Order.objects.create(user_id=7, amount=1)
    second = Order.objects.create(user_id=7, amount=2)
    assert first.id is not None and second.id is not None
    assert second.id > first.id
    assert shard_of(first.id) == shard_of(user.id) == shard_for(7)
    assert user._state.db is not None
    with connections[user._state.db].cursor() as cur:
        cur.execute("SELECT id FROM shardapp_order ORDER BY id")
        assert [r[0] for r in cur.fetchall()] == [first.id, second.id]


def test_query_without_shard_key_raises_naming_model_and_key() -> None:
    with pytest.raises(ShardKeyMissing) as info:
        list(Order.objects.filter(amount__gt=3))
    message = str(info.value)
    assert "shardapp.Order" in message
    assert "'user_id'" in message
    with pytest.raises(ShardKeyMissing):
        Order.objects.count()
    with pytest.raises(ShardKeyMissing):
        Order.objects.create(amount=3)  # no user_id


def test_filters_on_shard_key_or_id_route_by_themselves() -> None:
    ShardedUser.objects.create(user_id=11, email="a@example.com")
    order = Order.objects.create(user_id=11, amount=5)
    assert Order.objects.filter(user_id=11).count() == 1
    assert Order.objects.get(pk=order.id).amount == 5
    assert Order.objects.for_key(11).filter(amount=5).exists()
    assert Order.objects.filter(user_id=11).db == shardmap.current().alias_for(shard_for(11))


def test_get_or_create_and_related_assignment_route_by_the_shard_key() -> None:
    user, created = ShardedUser.objects.get_or_create(user_id=21, defaults={"email": "x@y"})
    assert created and user._state.db == shardmap.current().alias_for(shard_for(21))
    again, created = ShardedUser.objects.get_or_create(user_id=21, defaults={"email": "z@y"})
    assert not created and again.pk == user.pk
    order = Order(user=user, amount=4)
    order.save()
    assert order._state.db == user._state.db and shard_of(order.id) == shard_for(21)
    updated, created = Order.objects.update_or_create(
        user_id=21, note="", defaults={"amount": 8})
    assert not created and updated.pk == order.pk and updated.amount == 8


def test_scatter_gather_matches_the_same_query_on_one_database() -> None:
    users = ShardedUser.objects.bulk_create(
        [ShardedUser(user_id=i, email=f"s{i}@example.com") for i in range(1, 301)])
    orders = Order.objects.bulk_create(
        [Order(user_id=u.user_id, amount=(u.user_id * 37) % 101, note=f"n{u.user_id % 7}")
         for u in users for _ in range(3)])
    UnshardedOrder.objects.bulk_create(
        [UnshardedOrder(id=o.id, user_id=o.user_id, amount=o.amount, note=o.note)
         for o in orders])
    assert len({_alias(o.id) for o in orders}) == 3

    sharded = Order.objects.filter(amount__gte=40).all_shards()
    single = UnshardedOrder.objects.filter(amount__gte=40)
    assert sharded.count() == single.count()

    got = [(o.id, o.user_id, o.amount) for o in
           sharded.fetch(order_by=["-amount", "id"], limit=25, offset=5)]
    want = list(single.order_by("-amount", "id").values_list("id", "user_id", "amount")[5:30])
    assert got == want

    # django-stubs types values() as a plain QuerySet; it is still the sharded queryset.
    rows = Order.objects.filter(note="n3").values("id", "note", "amount").all_shards().fetch(  # type: ignore[attr-defined]
        order_by=["note", "-id"])
    assert rows == list(UnshardedOrder.objects.filter(note="n3").order_by("note", "-id")
                        .values("id", "note", "amount"))


def _alias(order_id: int) -> str:
    return shardmap.current().alias_for(shard_of(order_id))


def test_global_lookup_finds_users_by_email_and_stays_consistent() -> None:
    users = GlobalLookup(UserDirectory, ShardedUser, source="pk", target="user_id")
    ann = users.create({"email": "ann@example.com"}, email="ann@example.com", name="Ann")
    assert ann.user_id == UserDirectory.objects.get(email="ann@example.com").pk
    found = users.get(email="ann@example.com")
    assert found is not None and found.pk == ann.pk

    # The second create fails on the main database (duplicate email): no sharded row.
    with pytest.raises(Exception):  # noqa: B017 - IntegrityError from the main database
        users.create({"email": "ann@example.com"}, email="ann@example.com", name="Other")
    assert sum(_count(a, "shardapp_shardeduser") for a in SHARDS) == 1

    users.delete(ann)
    assert users.get(email="ann@example.com") is None
    assert not UserDirectory.objects.exists()
    assert sum(_count(a, "shardapp_shardeduser") for a in SHARDS) == 0


def test_sharded_tables_only_on_shards_and_global_tables_off_shards() -> None:
    def tables(alias: str) -> set[str]:
        with connections[alias].cursor() as cur:
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            return {r[0] for r in cur.fetchall()}

    main = tables("default")
    assert "shardapp_userdirectory" in main and "djscale_shard_map" in main
    assert "shardapp_order" not in main and "shardapp_shardeduser" not in main
    for alias in SHARDS:
        found = tables(alias)
        assert {"shardapp_order", "shardapp_shardeduser"} <= found
        assert not found & {"shardapp_userdirectory", "djscale_shard_map", "auth_user",
                            "testapp_note"}
