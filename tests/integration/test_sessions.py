"""djscale.sessions on the shared test cluster (one Redis, a primary + 2 replicas)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
import redis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.sessions.models import Session
from django.core.cache import caches
from django.db import connections
from django.test import override_settings

from djscale.cluster import LocalCluster
from djscale.cluster.supervisor import wait_until
from djscale.db import consistency
from djscale.db.pool import get_pool
from djscale.sessions import CACHE_WRITES, SessionStore
from djscale.testing import ClusterFactory
from tests.integration.helpers import replay_paused

pytestmark = [pytest.mark.integration,
              pytest.mark.django_db(transaction=True, databases="__all__"),
              pytest.mark.usefixtures("sessions_engine")]

T = TypeVar("T")


@pytest.fixture
def sessions_engine() -> Iterator[None]:
    with override_settings(SESSION_ENGINE="djscale.sessions"):
        yield


def run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` that closes the DB connections sync_to_async's thread opened."""
    async def main() -> T:
        try:
            return await coro
        finally:
            await sync_to_async(connections.close_all)()
    return asyncio.run(main())


def _usable() -> bool:
    pool = get_pool("default")
    return pool is not None and len(pool.usable()) == 2


def test_a_cache_miss_reads_the_session_from_the_primary_while_replicas_lag(
        djscale_cluster: LocalCluster) -> None:
    assert wait_until(_usable, timeout=15), "replicas not usable"
    with replay_paused(djscale_cluster):
        with consistency.scope():  # the request that logs in
            store = SessionStore()
            store["cart"] = ["sku-1"]
            store.save(must_create=True)
        key = store.session_key
        assert key is not None
        caches["sessions"].delete(f"{store.cache_key_prefix}{key}")  # e.g. lost with Redis
        with consistency.scope():  # the next request, on another app server
            # What a routed read sees: the replica has not replayed the login yet.
            assert not Session.objects.filter(session_key=key).exists()
            assert SessionStore(key).load() == {"cart": ["sku-1"]}
            assert run(SessionStore(key).aload()) == {"cart": ["sku-1"]}


def test_a_session_round_trips_and_a_logout_removes_it_everywhere() -> None:
    store = SessionStore()
    store["user"] = "ada"
    store.save(must_create=True)
    key = store.session_key
    assert key is not None
    cache_key = f"{store.cache_key_prefix}{key}"
    assert caches["sessions"].get(cache_key) == {"user": "ada"}
    assert SessionStore(key)["user"] == "ada"

    SessionStore(key).delete()
    assert caches["sessions"].get(cache_key) is None
    assert not Session.objects.using("default").filter(session_key=key).exists()
    assert SessionStore(key).load() == {}


def test_async_save_and_delete() -> None:
    async def main() -> dict[str, Any]:
        store = SessionStore()
        await store.aset("n", 3)
        await store.asave()
        key = store.session_key
        assert key is not None
        loaded = await SessionStore(key).aload()
        await SessionStore(key).adelete()
        assert await SessionStore(key).aload() == {}
        return loaded

    assert run(main()) == {"n": 3}


def test_a_write_redis_does_not_take_is_kept_in_the_database_and_read_from_there(
        djscale_cluster_factory: ClusterFactory) -> None:
    cluster = djscale_cluster_factory({"project": {"name": "sesspause"}, "redis": {}},
                                      parts=("redis",), name="sessions-paused-redis")
    try:
        host, port = cluster.address("redis")
        alias = {"BACKEND": "djscale.cache.TieredCache", "LOCATION": f"redis://{host}:{port}/0",
                 "OPTIONS": {"L1_MAX_ENTRIES": 0}}
        with override_settings(CACHES={**settings.CACHES, "paused": alias},
                               SESSION_CACHE_ALIAS="paused",
                               DJSCALE_SESSIONS={"RETRY_FOR": 0.3}):
            store = SessionStore()
            store["v"] = 1
            store.save(must_create=True)
            key = store.session_key
            assert key is not None
            cache_key = f"{store.cache_key_prefix}{key}"
            failed = CACHE_WRITES.labels("failed")._value.get()
            with redis.Redis(host=host, port=port) as raw:
                raw.execute_command("CLIENT", "PAUSE", 3000, "WRITE")  # reads still work
                try:
                    changed = SessionStore(key)
                    changed["v"] = 2
                    changed.save()  # the cache write times out: no error for the user
                    assert CACHE_WRITES.labels("failed")._value.get() == failed + 1
                    # The older copy is still in Redis, but the cache does not serve it: its
                    # key's dropped delete must be repaired first, and Redis takes no write.
                    assert caches["paused"].get(cache_key) is None
                    assert SessionStore(key).load() == {"v": 2}  # read from the database
                finally:
                    raw.execute_command("CLIENT", "UNPAUSE")
            again = SessionStore(key)
            again["v"] = 3
            again.save()  # a write that succeeds: the cache copy is trusted again
            # (once the cache's breaker, opened by the failures above, lets reads through)
            assert wait_until(lambda: caches["paused"].get(cache_key) == {"v": 3}, 5)
            assert SessionStore(key).load() == {"v": 3}
            caches["paused"].l2.close()  # type: ignore[attr-defined]
    finally:
        cluster.down()
