"""Online move of one logical shard while writers keep writing to it."""

from __future__ import annotations

import hashlib
import io
import random
import threading
from collections.abc import Iterator

import pytest
from django.core.management import call_command
from django.db import DatabaseError, connections
from django.test.utils import CaptureQueriesContext

from djscale.sharding import shard_for, shard_of, shardmap
from djscale.sharding.models import MOVED_SQLSTATE
from tests.shardapp.models import Order, ShardedUser

pytestmark = [pytest.mark.integration,
              pytest.mark.django_db(transaction=True, databases="__all__")]

SHARDS = ("shard1", "shard2", "shard3")


@pytest.fixture(autouse=True)
def fresh_map() -> Iterator[None]:
    """Start from the seeded map; afterwards drop the move fences (the flush resets the map)."""
    shardmap.invalidate()
    yield
    for alias in SHARDS:
        with connections[alias].cursor() as cur:
            cur.execute("DELETE FROM djscale_shard_moves")
            cur.execute("DELETE FROM djscale_shard_changelog")
    shardmap.invalidate()


def _rows(alias: str, logical: int) -> list[tuple[int, int, int, str]]:
    with connections[alias].cursor() as cur:
        cur.execute("SELECT id, user_id, amount, note FROM shardapp_order "
                    "WHERE ((id >> 10) & 8191) = %s ORDER BY id", [logical])
        return [tuple(r) for r in cur.fetchall()]  # type: ignore[misc]


def _digest(rows: list[tuple[int, int, int, str]]) -> str:
    return hashlib.sha256(repr(sorted(rows)).encode()).hexdigest()


class Writer(threading.Thread):
    """Creates, updates and deletes orders of the moving shard's users; logs what stuck."""

    def __init__(self, name: str, users: list[int], stop: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self.users = users
        self.stop = stop
        self.rng = random.Random(name)
        self.live: dict[int, tuple[int, int, int, str]] = {}
        self.errors: list[str] = []
        self.ops = 0

    def _retry(self, op: object) -> None:
        for _ in range(5):
            try:
                op()  # type: ignore[operator]
                return
            except DatabaseError as exc:
                if getattr(exc.__cause__, "sqlstate", None) != MOVED_SQLSTATE:
                    raise
                shardmap.invalidate()
        raise AssertionError("write kept hitting the old database")

    def run(self) -> None:
        try:
            while self.ops < 3000 and not self.stop.is_set():
                self.ops += 1
                roll = self.rng.random()
                if roll < 0.7 or len(self.live) < 5:
                    user = self.rng.choice(self.users)
                    order = Order.objects.create(user_id=user, amount=self.ops,
                                                 note=self.name)
                    self.live[order.id] = (order.id, user, self.ops, self.name)
                elif roll < 0.9:
                    oid = self.rng.choice(list(self.live))
                    _, user, _, note = self.live[oid]

                    def update(oid: int = oid) -> None:
                        Order.objects.filter(pk=oid).update(amount=-self.ops)
                    self._retry(update)
                    self.live[oid] = (oid, user, -self.ops, note)
                else:
                    oid = self.rng.choice(list(self.live))

                    def delete(oid: int = oid) -> None:
                        Order.objects.filter(pk=oid).delete()
                    self._retry(delete)
                    del self.live[oid]
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(repr(exc))
        finally:
            connections.close_all()


def test_moving_a_logical_shard_under_write_load_loses_and_duplicates_nothing() -> None:
    logical = shard_for(1)
    keys = [k for k in range(1, 60000) if shard_for(k) == logical][:12]
    others = list(range(100, 400))
    ShardedUser.objects.bulk_create(
        [ShardedUser(user_id=k, email=f"{k}@example.com") for k in keys + others])
    seeded = Order.objects.bulk_create(
        [Order(user_id=k, amount=i, note="seed") for k in keys for i in range(40)]
        + [Order(user_id=k, amount=1, note="other") for k in others])
    source = shardmap.current().alias_for(logical)
    target = next(a for a in SHARDS if a != source)
    untouched = {a: sorted(r for r in _all_rows(a) if shard_of(r[0]) != logical)
                 for a in SHARDS}

    stop = threading.Event()
    writers = [Writer(f"w{i}", keys, stop) for i in range(2)]
    mine = [(o.id, o.user_id, o.amount, o.note) for o in seeded if shard_of(o.id) == logical]
    for i, row in enumerate(mine):  # each writer also updates/deletes its share of old rows
        writers[i % 2].live[row[0]] = row
    for w in writers:
        w.start()
    out = io.StringIO()
    try:
        call_command("move_shard", logical, target, "--grace", "1.5", stdout=out)
    finally:
        stop.set()
        for w in writers:
            w.join(timeout=60)
    assert not any(w.errors for w in writers), [w.errors for w in writers]
    assert sum(w.ops for w in writers) > 100
    report = out.getvalue()
    assert f"moved logical shard {logical} from {source} to {target}" in report, report

    expected: dict[int, tuple[int, int, int, str]] = {}
    for w in writers:
        expected.update(w.live)

    moved = _rows(target, logical)
    assert _rows(source, logical) == []  # drained from the old database
    assert len(moved) == len({r[0] for r in moved})  # no duplicate ids
    assert _digest(moved) == _digest(list(expected.values()))  # nothing lost or changed
    for alias in SHARDS:  # other logical shards were not touched
        assert sorted(r for r in _all_rows(alias) if shard_of(r[0]) != logical) == untouched[
            alias]

    # Reads and writes of that shard now go to the new database.
    assert shardmap.current().alias_for(logical) == target
    with CaptureQueriesContext(connections[target]) as queries:
        assert Order.objects.filter(user_id=keys[0]).count() == sum(
            1 for r in moved if r[1] == keys[0])
    assert len(queries) == 1
    fresh = Order.objects.create(user_id=keys[1], amount=7)
    assert fresh._state.db == target and shard_of(fresh.id) == logical


def _all_rows(alias: str) -> list[tuple[int, int, int, str]]:
    with connections[alias].cursor() as cur:
        cur.execute("SELECT id, user_id, amount, note FROM shardapp_order")
        return [tuple(r) for r in cur.fetchall()]  # type: ignore[misc]
