"""RateLimiter's own logic: client choice, keys, the per-outage retry budget (no Redis)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from djscale.services.ratelimit import RateLimiter


class FakeScript:
    """Stands in for the registered Lua script: fails ``failures`` times, then answers."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.calls = 0

    async def __call__(self, **kwargs: Any) -> list[int]:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return [1, 4, 0]


def _limiter(script: FakeScript, **kwargs: Any) -> RateLimiter:
    limiter = RateLimiter.from_url("redis://127.0.0.1:1/0", limit=5, **kwargs)
    limiter._script = script
    return limiter


def test_several_node_urls_make_a_cluster_client_and_one_url_a_plain_client() -> None:
    cluster = RateLimiter.from_url("redis://127.0.0.1:7001, redis://127.0.0.1:7002", limit=1)
    single = RateLimiter.from_url("redis://127.0.0.1:7001/0", limit=1)
    assert isinstance(cluster.redis, RedisCluster)
    assert isinstance(single.redis, aioredis.Redis)
    assert isinstance(RateLimiter.from_url("redis://127.0.0.1:7001", limit=1, cluster=True)
                      .redis, RedisCluster)


def test_keys_are_hash_tagged_by_client() -> None:
    limiter = RateLimiter.from_url("redis://127.0.0.1:7001", limit=1, prefix="shop:rl:")
    assert limiter.key("10.0.0.7") == "shop:rl:{10.0.0.7}"


@pytest.mark.parametrize("kwargs", [{"limit": 0}, {"limit": 1, "window": 0},
                                    {"limit": 1, "retry_for": -1}])
def test_bad_settings_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="RateLimiter needs"):
        RateLimiter.from_url("redis://127.0.0.1:7001", **kwargs)


def test_an_empty_url_is_refused() -> None:
    with pytest.raises(ValueError, match="redis:// URL"):
        RateLimiter.from_url(" , ", limit=1)


def test_an_outage_is_retried_once_per_outage_then_fails_open() -> None:
    script = FakeScript(RedisConnectionError("refused"))
    limiter = _limiter(script, retry_for=0.2)

    async def main() -> None:
        decision = await limiter.hit("c")
        assert decision.allowed and script.calls > 1  # retried within the budget
        script.calls = 0
        assert (await limiter.hit("c")).allowed  # fail open
        assert script.calls == 1  # the outage has used its budget: no more waiting
        script.error = None
        assert (await limiter.hit("c")).remaining == 4  # back: the budget is renewed
        script.error = RedisConnectionError("refused")
        script.calls = 0
        await limiter.hit("c")
        assert script.calls > 1

    asyncio.run(main())


def test_fail_closed_refuses_when_redis_stays_down() -> None:
    limiter = _limiter(FakeScript(RedisConnectionError("refused")), retry_for=0,
                       fail_open=False)
    decision = asyncio.run(limiter.hit("c"))
    assert not decision.allowed and decision.retry_after == 1.0


def test_an_error_answer_is_not_retried() -> None:
    script = FakeScript(ResponseError("WRONGTYPE Operation against a key"))
    decision = asyncio.run(_limiter(script, retry_for=5).hit("c"))
    assert decision.allowed and script.calls == 1


def test_an_unexpected_client_failure_counts_as_an_outage() -> None:
    script = FakeScript(AttributeError("'NoneType' object has no attribute 'writelines'"))
    decision = asyncio.run(_limiter(script, retry_for=0.1).hit("c"))
    assert decision.allowed and script.calls > 1
