"""Cross-process L1 invalidation through Redis pub/sub, with real separate processes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.conf import settings

from djscale.cache.l2 import acks_key, sequence_key
from djscale.cluster.supervisor import wait_until
from tests.integration.cache_support.procs import Worker
from tests.integration.cache_support.redis_cluster import boot_redis_cluster

pytestmark = pytest.mark.integration

REDIS_URL = settings.CACHES["default"]["LOCATION"].rsplit("/", 1)[0] + "/4"
SEQUENCE = sequence_key("djscale:cache:invalidate:4")  # the workers' channel (database 4)
ACKS = acks_key("djscale:cache:invalidate:4")


def _until_l1_hit(worker: Worker, key: str, value: object) -> None:
    # A read from Redis fills L1 only if no invalidation of the key arrived meanwhile; on
    # a busy machine B's own PUBLISH for the set may arrive during A's first read, which
    # (rightly) refuses that fill. Read until a read is answered by L1.
    deadline = time.monotonic() + 5
    before = worker.call("get", key=key)
    while True:
        after = worker.call("get", key=key)
        assert before["value"] == after["value"] == value
        if after["l1_hits"] > before["l1_hits"]:
            return
        assert time.monotonic() < deadline, "the value never reached L1"
        before = after


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Worker, Worker]]:
    a = Worker(REDIS_URL, l1_timeout=60)
    try:
        b = Worker(REDIS_URL, l1_timeout=60)
    except BaseException:
        a.close()
        raise
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def test_other_processes_delete_evicts_l1_within_100ms(pair: tuple[Worker, Worker]) -> None:
    a, b = pair
    assert a.pid != b.pid
    b.call("set", key="product:1", value="v1")
    _until_l1_hit(a, "product:1", "v1")  # A now holds it in L1
    hits_before = a.call("get", key="product:1")["l1_hits"]

    a.send("watch", key="product:1", timeout=3.0)  # A polls its own cache every 0.5 ms
    assert a.receive() == {"watching": True}
    deleted_at = b.call("delete", key="product:1")["t"]
    watched = a.receive()

    assert watched["t"] is not None, "A kept serving the deleted key for 3 s"
    elapsed = watched["t"] - deleted_at  # CLOCK_MONOTONIC is system-wide on Linux
    print(f"A missed {elapsed * 1000:.2f} ms after B's delete ({watched['polls']} polls)")
    assert elapsed < 0.100
    # The polls before the delete were answered by A's L1, not by Redis.
    assert watched["l1_hits"] - hits_before >= watched["polls"] - 1 > 10


def test_without_the_invalidation_message_l1_would_serve_stale(
        pair: tuple[Worker, Worker]) -> None:
    # Control: delete the key in Redis behind the cache's back (no PUBLISH). A still
    # answers from its L1, which shows the previous test measured the invalidation and
    # not an L1 that was never used.
    a, b = pair
    b.call("set", key="product:2", value="v2")
    _until_l1_hit(a, "product:2", "v2")
    assert b.call("raw_delete", key="product:2")["deleted"] == 1
    # A barrier instead of a pause: once A saw an invalidation published after the raw
    # delete, a message about product:2 (had there been one) would have reached it too.
    b.call("set", key="barrier:2", value="x")
    _until_l1_hit(a, "barrier:2", "x")
    b.call("delete", key="barrier:2")
    assert wait_until(lambda: a.call("get", key="barrier:2")["value"] is None, 5)
    assert a.call("get", key="product:2")["value"] == "v2"


def test_set_in_one_process_is_seen_by_the_other_at_once(pair: tuple[Worker, Worker]) -> None:
    a, b = pair
    a.call("set", key="price", value=10)
    assert b.call("get", key="price")["value"] == 10
    a.call("set", key="price", value=12)
    deadline = time.monotonic() + 0.1
    while b.call("get", key="price")["value"] != 12:
        assert time.monotonic() < deadline, "B still serves the old price after 100 ms"
        time.sleep(0.002)


def test_invalidation_across_processes_on_a_redis_cluster(djscale_cluster_factory: Any) -> None:
    _, urls = boot_redis_cluster(djscale_cluster_factory, "cache-inval-cluster")
    a = Worker(",".join(urls))
    try:
        b = Worker(",".join(urls))
        try:
            for key in ("k1", "k2", "k3", "k4"):  # keys in different slots / masters
                b.call("set", key=key, value=key.upper())
                _until_l1_hit(a, key, key.upper())
            deleted_at = time.monotonic()
            b.call("delete", key="k3")
            deadline = deleted_at + 0.1
            while a.call("get", key="k3")["value"] is not None:
                assert time.monotonic() < deadline, "A still serves k3 100 ms after B's delete"
            assert a.call("get", key="k4")["value"] == "K4"
            # Numbered evictions and their acknowledgements work across the cluster's
            # slots too: B's wait ends only once A, held for 0.3 s, has evicted k2.
            assert a.call("hold", seconds=0.3) == {"holding": True}
            synced = b.call("delete_synced", key="k2", timeout=3)
            assert synced["synced"] and synced["waited"] > 0.1, synced
            assert a.call("get", key="k2")["value"] is None
        finally:
            b.close()
    finally:
        a.close()


# ---------------------------------------------------------------- wait_for_l1: a writer
# answers once every other process has evicted (issue 16: a worker whose listener was
# behind served the old product card to a reader who asked after the write's answer).


def test_without_waiting_a_lagging_process_serves_the_old_value_after_the_delete(
        pair: tuple[Worker, Worker]) -> None:
    # The failure wait_for_l1 exists for: A's listener cannot apply evictions for 0.5 s
    # (here its store's lock is held; in production a starved thread), B's delete has
    # returned, and A still answers from L1.
    a, b = pair
    b.call("set", key="lag:1", value="old")
    _until_l1_hit(a, "lag:1", "old")
    assert a.call("hold", seconds=0.5) == {"holding": True}
    b.call("delete", key="lag:1")
    assert a.call("get", key="lag:1")["value"] == "old"
    assert wait_until(lambda: a.call("get", key="lag:1")["value"] is None, 5)


def test_wait_for_l1_returns_once_a_lagging_process_evicted(pair: tuple[Worker, Worker]) -> None:
    a, b = pair
    b.call("set", key="lag:2", value="old")
    _until_l1_hit(a, "lag:2", "old")
    assert a.call("hold", seconds=0.4) == {"holding": True}
    synced = b.call("delete_synced", key="lag:2", timeout=3)
    print(f"B waited {synced['waited'] * 1000:.1f} ms for A")
    assert synced["synced"], synced
    assert 0.2 < synced["waited"] < 2.0, synced  # A acknowledged when it could, not at 3 s
    assert a.call("get", key="lag:2")["value"] is None  # no stale read after the answer
    # Without a lagging process the wait is a few round trips.
    b.call("set", key="lag:2", value="new")
    _until_l1_hit(a, "lag:2", "new")
    quick = b.call("delete_synced", key="lag:2", timeout=3)
    assert quick["synced"] and quick["waited"] < 0.2, quick
    assert a.call("get", key="lag:2")["value"] is None


def test_wait_for_l1_is_bounded_and_says_so(pair: tuple[Worker, Worker]) -> None:
    a, b = pair
    b.call("set", key="lag:3", value="old")
    _until_l1_hit(a, "lag:3", "old")
    assert a.call("hold", seconds=1.0) == {"holding": True}
    synced = b.call("delete_synced", key="lag:3", timeout=0.15)
    assert synced["synced"] is False and 0.15 <= synced["waited"] < 0.9, synced
    assert wait_until(lambda: a.call("get", key="lag:3")["value"] is None, 5)


def test_wait_for_l1_after_clear_restarts_the_numbering(pair: tuple[Worker, Worker]) -> None:
    # clear() is FLUSHDB: the eviction counter and the acknowledgements are gone. The
    # counter starts again above every number handed out before, so a wait still waits.
    a, b = pair
    acks = redis.Redis.from_url(REDIS_URL)
    b.call("clear")
    assert wait_until(lambda: a.call("stats")["l1_flushes"].get("remote_clear"), 5)
    # A acknowledges the flush at once (the FLUSHDB took its field), not at its heartbeat.
    origin = a.call("origin")["origin"]
    assert wait_until(lambda: acks.hexists(ACKS, origin), 0.5)
    b.call("set", key="lag:4", value="old")
    _until_l1_hit(a, "lag:4", "old")
    assert a.call("hold", seconds=0.4) == {"holding": True}
    synced = b.call("delete_synced", key="lag:4", timeout=3)
    assert synced["synced"] and synced["waited"] > 0.2, synced
    assert a.call("get", key="lag:4")["value"] is None


def test_wait_for_l1_when_the_counter_went_back(pair: tuple[Worker, Worker]) -> None:
    # Redis restored from an older snapshot, or a lagging replica promoted: the counter is
    # below numbers already handed out, and A has applied one of those. The next number is
    # at least the server's time in microseconds, so it is above them and B still waits.
    a, b = pair
    redis.Redis.from_url(REDIS_URL).set(SEQUENCE, "5")
    b.call("set", key="lag:5", value="old")
    _until_l1_hit(a, "lag:5", "old")
    assert a.call("hold", seconds=0.4) == {"holding": True}
    synced = b.call("delete_synced", key="lag:5", timeout=3)
    assert synced["synced"] and synced["waited"] > 0.2, synced
    assert a.call("get", key="lag:5")["value"] is None
    assert int(redis.Redis.from_url(REDIS_URL).get(SEQUENCE) or 0) > time.time() * 1e6 - 60e6


def test_wait_for_l1_does_not_wait_for_a_process_that_quit_or_died() -> None:
    a = Worker(REDIS_URL, l1_timeout=60)
    try:
        b = Worker(REDIS_URL, l1_timeout=60)
        try:
            b.call("set", key="gone:1", value="x")
            # A quits (its listener forgets itself): nobody to wait for.
            a.close()
            quick = b.call("delete_synced", key="gone:1", timeout=3)
            assert quick["synced"] and quick["waited"] < 0.2, quick
            # C is killed (no goodbye): waited for until its heartbeat is 3 s old, then not.
            c = Worker(REDIS_URL, l1_timeout=60)
            b.call("set", key="gone:2", value="x")
            _until_l1_hit(c, "gone:2", "x")
            c.proc.kill()
            c.proc.wait(5)
            killed = time.monotonic()
            results = []
            while time.monotonic() - killed < 8:
                result = b.call("delete_synced", key="gone:2", timeout=0.3)
                results.append(result)
                if result["synced"]:
                    break
            waited_for = time.monotonic() - killed
            print(f"a killed process was waited for during {waited_for:.1f} s "
                  f"({len(results)} writes)")
            assert results[-1]["synced"], results  # (C's heartbeat aged out during it)
            assert waited_for < 6, results
            after = b.call("delete_synced", key="gone:2", timeout=3)
            assert after["synced"] and after["waited"] < 0.2, after
        finally:
            b.close()
    finally:
        a.close()
