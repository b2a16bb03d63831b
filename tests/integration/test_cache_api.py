"""TieredCache behaviour beyond Django's suite: copies, async, L1 vs L2, bad options."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import redis
from django.conf import settings
from django.core.cache import cache

from djscale.cache import TieredCache
from djscale.errors import ConfigurationError
from tests.integration.helpers import tiered

pytestmark = pytest.mark.integration

URL = settings.CACHES["default"]["LOCATION"]


def _key() -> str:
    return f"api-{uuid.uuid4().hex}"


def test_callers_get_copies_and_cannot_mutate_the_cached_value() -> None:
    key = _key()
    cache.set(key, {"tags": ["a"]}, 60)
    got = cache.get(key)
    got["tags"].append("mutated")
    assert cache.get(key) == {"tags": ["a"]}


def test_copies_hold_on_every_path_into_l1_and_for_values_that_are_not_plain_data() -> None:
    original: dict[str, Any] = {"tags": ["a"], "attrs": {"n": [1]}}
    key, other = _key(), _key()
    cache.set(key, original, 60)
    original["tags"].append("changed after set")  # the caller still holds its object
    assert cache.get(key) == {"tags": ["a"], "attrs": {"n": [1]}}
    tiered().l1.discard(cache.make_key(key))
    first = cache.get(key)  # filled from Redis
    first["attrs"]["n"].append(2)
    assert cache.get(key) == {"tags": ["a"], "attrs": {"n": [1]}}
    many = cache.get_many([key])
    many[key]["tags"].clear()
    assert cache.get_many([key])[key]["tags"] == ["a"]
    cache.set(other, {1, 2}, 60)  # a set: not plain data, kept pickled
    got = cache.get(other)
    got.add(3)
    assert cache.get(other) == {1, 2}


def test_second_read_is_an_l1_hit_and_l2_holds_the_value() -> None:
    key = _key()
    cache.set(key, "v", 60)
    tiered().l1.discard(cache.make_key(key))
    hits = tiered().l1.hits
    assert cache.get(key) == "v"  # from Redis, fills L1
    assert cache.get(key) == "v"  # from L1
    assert tiered().l1.hits == hits + 1
    raw = redis.Redis.from_url(URL)
    assert raw.exists(cache.make_key(key)) == 1
    assert 0 < raw.ttl(cache.make_key(key)) <= 60


def test_integers_stay_plain_redis_integers() -> None:
    key = _key()
    cache.set(key, 41, 60)
    raw = redis.Redis.from_url(URL)
    assert raw.get(cache.make_key(key)) == b"41"
    assert raw.incr(cache.make_key(key)) == 42
    tiered().l1.discard(cache.make_key(key))
    assert cache.get(key) == 42


def test_async_methods() -> None:
    async def scenario() -> list[object]:
        key = _key()
        await cache.aset(key, {"a": 1}, 60)
        first = await cache.aget(key)
        await cache.aset(f"{key}n", 1, 60)
        n = await cache.aincr(f"{key}n", 4)
        computed = await cache.aget_or_set(f"{key}g", lambda: "made", 60)
        deleted = await cache.adelete(key)
        gone = await cache.aget(key, "default")
        many = await cache.aget_many([f"{key}n", f"{key}g"])
        return [first, n, computed, deleted, gone, many]

    first, n, computed, deleted, gone, many = asyncio.run(scenario())
    assert first == {"a": 1} and n == 5 and computed == "made" and deleted is True
    assert gone == "default"
    assert sorted(many.values(), key=str) == [5, "made"]  # type: ignore[attr-defined]


def test_unknown_options_are_refused_with_the_allowed_list() -> None:
    with pytest.raises(ConfigurationError, match="L1_TIMEOUT"):
        TieredCache(URL, {"OPTIONS": {"L1_TTL": 5}})


def test_empty_location_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="LOCATION"):
        TieredCache("", {"OPTIONS": {}})


def test_cached_methods_key_on_the_instance() -> None:
    from djscale.cache import cached

    calls: list[int] = []

    class Catalog:
        def __init__(self, shop: int) -> None:
            self.shop = shop

        def __cache_key__(self) -> int:
            return self.shop

        @cached(timeout=60, name=f"catalog-{uuid.uuid4().hex}")
        def price(self, sku: str) -> int:
            calls.append(self.shop)
            return self.shop * 100

    one, two = Catalog(1), Catalog(2)
    assert one.price("a") == 100 and Catalog(1).price("a") == 100
    assert two.price("a") == 200
    assert calls == [1, 2]
    assert one.price.invalidate("a") is True
    assert one.price("a") == 100
    assert calls == [1, 2, 1]


def test_cached_refuses_arguments_without_a_stable_key() -> None:
    from djscale.cache import cached
    from djscale.errors import CacheKeyError

    @cached(timeout=60, name=f"opaque-{uuid.uuid4().hex}")
    def f(obj: object) -> int:
        return 1

    with pytest.raises(CacheKeyError, match="__cache_key__"):
        f(object())
