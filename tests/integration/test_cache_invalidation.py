"""Cross-process L1 invalidation through Redis pub/sub, with real separate processes."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from django.conf import settings

from tests.integration.cache_support.procs import Worker

pytestmark = pytest.mark.integration

REDIS_URL = settings.CACHES["default"]["LOCATION"].rsplit("/", 1)[0] + "/4"


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
    assert a.call("get", key="product:1")["value"] == "v1"  # A now holds it in L1
    hits_before = a.call("get", key="product:1")["l1_hits"]

    a.send("watch", key="product:1", timeout=3.0)  # A polls its own cache every 0.5 ms
    time.sleep(0.2)
    deleted_at = b.call("delete", key="product:1")["t"]
    watched = a.receive()

    assert watched["t"] is not None, "A kept serving the deleted key for 3 s"
    elapsed = watched["t"] - deleted_at  # CLOCK_MONOTONIC is system-wide on Linux
    print(f"A missed {elapsed * 1000:.2f} ms after B's delete ({watched['polls']} polls)")
    assert elapsed < 0.100
    # The polls before the delete were answered by A's L1, not by Redis.
    assert watched["l1_hits"] - hits_before >= watched["polls"] - 1 > 100


def test_without_the_invalidation_message_l1_would_serve_stale(
        pair: tuple[Worker, Worker]) -> None:
    # Control: delete the key in Redis behind the cache's back (no PUBLISH). A still
    # answers from its L1, which shows the previous test measured the invalidation and
    # not an L1 that was never used.
    a, b = pair
    b.call("set", key="product:2", value="v2")
    assert a.call("get", key="product:2")["value"] == "v2"
    assert b.call("raw_delete", key="product:2")["deleted"] == 1
    time.sleep(0.2)
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
