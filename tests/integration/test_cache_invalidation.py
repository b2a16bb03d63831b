"""Cross-process L1 invalidation through Redis pub/sub, with real separate processes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings

from djscale.cluster.supervisor import wait_until
from tests.integration.cache_support.procs import Worker
from tests.integration.cache_support.redis_cluster import boot_redis_cluster

pytestmark = pytest.mark.integration

REDIS_URL = settings.CACHES["default"]["LOCATION"].rsplit("/", 1)[0] + "/4"


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
        finally:
            b.close()
    finally:
        a.close()
