"""Online move of one logical shard while writers keep writing to it."""

from __future__ import annotations

import hashlib
import io
import random
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connections
from django.test.utils import CaptureQueriesContext

from djscale.cluster.supervisor import wait_until
from djscale.errors import ShardMoveError
from djscale.sharding import shard_for, shard_of, shardmap
from djscale.sharding.models import MOVED_RETRIES, MOVED_SQLSTATE
from djscale.sharding.move import ADVISORY_KEY, ShardMove, TableCheck, _connect
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
        return [tuple(r) for r in cur.fetchall()]


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


class FrozenWrite(threading.Thread):
    """A write into the freeze window: started by ``ShardMove(on_frozen=...)``.

    ``start()`` returns once the write waits in the fence trigger on the source (its
    advisory lock request is in ``pg_locks``, not granted), so it is in the window
    whatever the machine's speed; the move then refuses it and ``save()`` retries it on
    the target.
    """

    def __init__(self, user: int, source: str, logical: int) -> None:
        super().__init__(name="frozen-write", daemon=True)
        self.user, self.source, self.logical = user, source, logical
        self.row: tuple[int, int, int, str] | None = None
        self.errors: list[str] = []

    def run(self) -> None:
        try:
            order = Order.objects.create(user_id=self.user, amount=-1, note="frozen")
            self.row = (order.id, self.user, -1, "frozen")
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(repr(exc))
        finally:
            connections.close_all()

    def _waiting(self) -> bool:
        with connections[self.source].cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                        "AND NOT granted AND classid = %s AND objid = %s",
                        [ADVISORY_KEY, self.logical])
            row = cur.fetchone()
        return bool(row and row[0])

    def start(self) -> None:
        super().start()
        assert wait_until(lambda: self._waiting() or not self.is_alive(), timeout=30)
        assert self.is_alive(), f"the write did not wait for the frozen shard: {self.errors}"


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
    ops_at: dict[str, int] = {}
    retried = MOVED_RETRIES.labels("shardapp.Order")._value.get()

    def log(message: str) -> None:  # writes done by the time each step ends
        out.write(message + "\n")
        ops_at[message.split()[0]] = sum(w.ops for w in writers)

    in_window = FrozenWrite(keys[0], source, logical)
    try:
        ShardMove(logical, target, grace_seconds=1.5, log=log, on_frozen=in_window.start).run()
    finally:
        stop.set()
        for thread in [*writers, in_window]:
            thread.join(timeout=60)
    assert not any(w.errors for w in writers), [w.errors for w in writers]
    assert in_window.row is not None, in_window.errors
    assert sum(w.ops for w in writers) > 100
    report = out.getvalue()
    assert f"flipped logical shard {logical} to {target}" in report, report
    # The load really ran through every step: copy/catch-up, and after the flip.
    assert 0 < ops_at["copied"] < ops_at["caught"] < ops_at["verified"], ops_at
    assert ops_at["verified"] < ops_at["deleted"] <= sum(w.ops for w in writers), ops_at
    # The write that waited out the freeze was refused by the old database and retried.
    assert in_window.row[0] is not None and shard_of(in_window.row[0]) == logical
    assert MOVED_RETRIES.labels("shardapp.Order")._value.get() > retried

    expected: dict[int, tuple[int, int, int, str]] = {in_window.row[0]: in_window.row}
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
        return [tuple(r) for r in cur.fetchall()]


def _seed_shard() -> tuple[int, list[int], str, str]:
    logical = shard_for(2)
    keys = [k for k in range(1, 60000) if shard_for(k) == logical][:4]
    ShardedUser.objects.bulk_create([ShardedUser(user_id=k, email=f"{k}@x") for k in keys])
    Order.objects.bulk_create([Order(user_id=k, amount=i) for k in keys for i in range(10)])
    source = shardmap.current().alias_for(logical)
    return logical, keys, source, next(a for a in SHARDS if a != source)


class _BadChecksum(ShardMove):
    def _verify(self, src: Any, dst: Any) -> list[TableCheck]:
        return [TableCheck("shardapp_order", 1, 2, "a", "b")]


def test_failed_verification_leaves_the_shard_where_it_was() -> None:
    logical, keys, source, target = _seed_shard()
    with pytest.raises(ShardMoveError, match="verification failed for shardapp_order"):
        _BadChecksum(logical, target, grace_seconds=0).run()
    shardmap.invalidate()
    assert shardmap.current().alias_for(logical) == source
    assert shardmap.current().settled
    assert _rows(target, logical) == []  # the partial copy is gone
    assert len(_rows(source, logical)) == 40
    order = Order.objects.create(user_id=keys[0], amount=99)  # writes were never fenced
    assert order._state.db == source
    assert Order.objects.all_shards().count() == 41


def test_recover_cleans_up_after_a_move_killed_mid_copy() -> None:
    logical, keys, source, target = _seed_shard()
    mover = ShardMove(logical, target)
    with _connect(source) as src, _connect(target) as dst:  # the move "dies" after copying
        mover._prepare(src, dst, source)
        mover._start_log(src)
        assert mover._copy(src, dst) == 44
    shardmap.invalidate()
    assert shardmap.current().states[logical] == "moving"
    assert len(_rows(target, logical)) == 40  # the copy sits on the target...
    assert Order.objects.all_shards().count() == 40  # ...but is not counted twice
    with pytest.raises(CommandError, match=f"logical shard {logical} is moving"):
        call_command("move_shard", logical, target, stdout=io.StringIO())

    out = io.StringIO()
    call_command("move_shard", logical, "--recover", stdout=out)
    assert f"deleted 44 stray rows of logical shard {logical} from {target}" in out.getvalue()
    shardmap.invalidate()
    assert shardmap.current().alias_for(logical) == source and shardmap.current().settled
    assert _rows(target, logical) == []
    assert Order.objects.create(user_id=keys[1], amount=5)._state.db == source
    with connections[source].cursor() as cur:
        cur.execute("SELECT count(*) FROM djscale_shard_changelog")
        assert cur.fetchone()[0] == 0

    # A new attempt after the recovery goes through (here with the command itself).
    out = io.StringIO()
    call_command("move_shard", logical, target, "--grace", "0", stdout=out)
    assert (f"moved logical shard {logical} from {source} to {target}: 45 copied, 0 caught up, "
            "45 deleted from the source") in out.getvalue()
    assert "shardapp_order: 41 rows, checksum" in out.getvalue()
    assert len(_rows(target, logical)) == 41 and _rows(source, logical) == []


def test_move_refuses_bad_targets_clearly() -> None:
    logical = shard_for(3)
    source = shardmap.current().alias_for(logical)
    with pytest.raises(CommandError, match=f"logical shard {logical} is already on {source}"):
        call_command("move_shard", logical, source, stdout=io.StringIO())
    with pytest.raises(CommandError, match="'shard9' is not a shard database"):
        call_command("move_shard", logical, "shard9", stdout=io.StringIO())
    with pytest.raises(CommandError, match="logical shard 5000 does not exist"):
        call_command("move_shard", 5000, "shard1", stdout=io.StringIO())
