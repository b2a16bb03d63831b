"""With Redis stopped, cached views still answer; when it returns, L2 is used again."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.test import Client, override_settings
from prometheus_client import REGISTRY

from djscale.cache import AtomicCounter
from djscale.cluster import LocalCluster
from djscale.cluster.supervisor import wait_until
from djscale.errors import CacheUnavailable
from tests.integration.cache_support import views
from tests.integration.helpers import tiered

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dedicated(djscale_cluster_factory: Any) -> Iterator[tuple[LocalCluster, str]]:
    """A Redis of its own (stopping it must not break the shared one)."""
    cluster = djscale_cluster_factory({"project": {"name": "cachedown"}, "redis": {}},
                                      parts=("redis",), name="cache-redis-down")
    host, port = cluster.address("redis")
    url = f"redis://{host}:{port}/0"
    tiered = {"BACKEND": "djscale.cache.TieredCache", "LOCATION": url, "KEY_PREFIX": "down",
              "OPTIONS": {"RESET_TIMEOUT": 0.2, "MAX_RESET_TIMEOUT": 1.0}}
    with override_settings(CACHES={"default": tiered},
                           ROOT_URLCONF="tests.integration.cache_support.urls",
                           MIDDLEWARE=["django.middleware.common.CommonMiddleware"]):
        yield cluster, url


def _dropped(location: str) -> float:
    return REGISTRY.get_sample_value("djscale_cache_writes_dropped_total",
                                     {"location": location}) or 0.0


def test_cached_views_answer_while_redis_is_down_and_l2_is_used_again_after(
        dedicated: tuple[LocalCluster, str]) -> None:
    cluster, url = dedicated
    raw = redis.Redis.from_url(url)
    cache = tiered()
    assert cache.bus is not None and cache.bus.wait_connected(5)
    client = Client()

    assert client.get("/cache/square/3/").json() == {"n": 3, "square": 9}
    key = views.square.key(3)
    assert raw.exists(cache.make_key(key)) == 1  # stored in L2

    cluster.stop_service("redis")
    try:
        dropped = _dropped(cache.l2.location)
        before = views.COMPUTED["count"]
        for n in (4, 4, 4, 5):
            response = client.get(f"/cache/square/{n}/")
            assert response.status_code == 200
            assert response.json()["square"] == n * n
        for _ in range(3):
            assert client.get("/cache/page/").status_code == 200
        # 4 and 5 computed once each (then served by L1), the page once.
        assert views.COMPUTED["count"] - before == 3
        assert cache.l2.breaker.state in ("open", "half-open")
        assert _dropped(cache.l2.location) > dropped  # writes were dropped, and counted
        assert cache.delete("anything") is False  # no exception
        cache.set("anything", 1)
        with pytest.raises(CacheUnavailable):
            cache.incr("anything")
        assert AtomicCounter("visits").incr() is None
        assert cache.ping() is False
    finally:
        cluster.start_service("redis")

    # The breaker closes and the listener resubscribes by themselves.
    assert wait_until(lambda: client.get("/cache/square/6/").status_code == 200
                      and raw.exists(cache.make_key(views.square.key(6))) == 1, 10)
    bus = cache.bus
    assert bus is not None
    assert wait_until(lambda: bus.connected.is_set(), 10)
    assert cache.l2.breaker.state == "closed"
    assert cache.ping() is True
    assert client.get("/cache/square/7/").status_code == 200
    assert raw.exists(cache.make_key(views.square.key(7))) == 1
    assert AtomicCounter("visits").incr() == 1
    assert AtomicCounter("visits").incr(5) == 6


def test_a_dead_redis_costs_no_connect_timeout_per_call(
        dedicated: tuple[LocalCluster, str]) -> None:
    cluster, _ = dedicated
    cache = tiered()
    cluster.stop_service("redis")
    try:
        cache.get("warm-up-failure-1")
        cache.get("warm-up-failure-2")
        assert cache.l2.breaker.state == "open"
        skipped_before = REGISTRY.get_sample_value(
            "djscale_cache_l2_skipped_total", {"location": cache.l2.location}) or 0.0
        for i in range(20):
            assert cache.get(f"missing-{i}", "default") == "default"
        skipped = REGISTRY.get_sample_value(
            "djscale_cache_l2_skipped_total", {"location": cache.l2.location}) or 0.0
        assert skipped - skipped_before >= 15  # refused by the breaker, not tried
    finally:
        cluster.start_service("redis")
    assert wait_until(lambda: cache.get("x", "d") == "d" and cache.l2.breaker.state == "closed",
                      10)


def test_a_write_dropped_while_redis_was_silent_never_serves_the_old_value_after(
        dedicated: tuple[LocalCluster, str]) -> None:
    from djscale.chaos.freeze import Freezer

    cluster, url = dedicated
    raw = redis.Redis.from_url(url)
    cache = tiered()
    assert cache.bus is not None and cache.bus.wait_connected(5)
    cache.set("colour", "red", timeout=None)
    cache.set("size", "big", timeout=None)
    # A silent Redis (its process stopped: the data stays) is a partition's twin here:
    # the delete and the set below time out and are dropped...
    with Freezer(cluster.process("redis").pid):
        cache.delete("colour")
        cache.set("size", "small", timeout=None)
    # ...and Redis may still hold "red" and "big" (or have run the late commands). The
    # first call that reaches Redis again deletes both there before it reads anything
    # (so does the listener when it resubscribes), and evicts them from every L1.
    seen: set[object] = set()

    def repaired() -> bool:
        seen.update((cache.get("colour"), cache.get("size")))
        return raw.exists(cache.make_key("colour"), cache.make_key("size")) == 0

    assert wait_until(repaired, 10)
    assert "red" not in seen and "big" not in seen, seen
    assert cache.get("colour") is None
    # This process's own L1 may still hold its own last write; never the old "big".
    assert cache.get("size") in ("small", None)


def test_l1_of_the_outage_goes_when_redis_answers_before_the_listener_is_back(
        dedicated: tuple[LocalCluster, str]) -> None:
    from djscale.cache import TieredCache

    cluster, url = dedicated
    raw = redis.Redis.from_url(url)
    # A cache of its own (own client, L1 and listener), with an L1 that would keep an
    # entry for a minute: only a flush can take it out within this test.
    cache = TieredCache(url, {"KEY_PREFIX": "back", "OPTIONS": {
        "L1_TIMEOUT": 60, "SOCKET_TIMEOUT": 0.4, "RESET_TIMEOUT": 0.2,
        "MAX_RESET_TIMEOUT": 1.0, "CHANNEL": "djscale:test:redis-back"}})
    bus = cache.bus
    assert bus is not None and bus.wait_connected(5)
    # The listener stays away, as it does in its back-off after a partition or while the
    # node it subscribes on is still cut off: its flush on resubscribing comes later.
    bus.stop()
    try:
        cluster.stop_service("redis")
        try:
            cache.get("warm-up-failure-1")
            cache.get("warm-up-failure-2")
            assert cache.l2.breaker.state == "open"
            cache.set("price", 10, timeout=None)  # dropped; this process keeps it in L1
            assert cache.get("price") == 10
        finally:
            cluster.start_service("redis")
        assert wait_until(cache.ping, 10)  # the first call that reaches Redis again
        assert bus.flushes.get("redis_back") == 1
        assert bus.flushed_entries >= 1
        # Another process writes the key now; its invalidation cannot reach this one.
        raw.set(cache.make_key("price"), 12)
        assert cache.get("price") == 12  # not the 10 from the outage
        assert cache.l1.get(cache.make_key("price")) is None  # no fills until subscribed
        bus.start()
        assert bus.wait_connected(5)
        assert bus.flushes.get("resubscribed", 0) >= 2  # at start and now
        assert cache.get("price") == 12
        assert wait_until(lambda: cache.get("price") == 12
                          and cache.l1.get(cache.make_key("price")) is not None, 5)
    finally:
        bus.stop()
