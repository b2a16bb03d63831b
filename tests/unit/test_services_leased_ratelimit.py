"""LeasedRateLimiter's own logic: batch sizes, shared lease calls, remembered refusals.

The Lua script is replaced by a stand-in that grants from a plain counter (no Redis);
the script itself runs against Redis in tests/integration/test_gateway_ratelimit_accuracy.py.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from djscale.services import leased_ratelimit
from djscale.services.leased_ratelimit import LeasedRateLimiter


class Grants:
    """Stands in for the lease script: grants ``want`` while ``left`` lasts."""

    def __init__(self, left: int, *, bucket_ms: int = 1000, retry_ms: int = 700,
                 delay: float = 0.0) -> None:
        self.left = left
        self.bucket_ms = bucket_ms
        self.retry_ms = retry_ms
        self.delay = delay
        self.wants: list[int] = []
        self.error: Exception | None = None

    async def __call__(self, *, keys: list[str], args: list[Any]) -> list[int]:
        if self.error is not None:
            raise self.error
        want = int(args[3])
        self.wants.append(want)
        if self.delay:
            await asyncio.sleep(self.delay)
        granted = min(want, self.left)
        self.left -= granted
        return [granted, self.left, self.retry_ms if granted < want else 0, self.bucket_ms]


def _limiter(grants: Grants, **kwargs: Any) -> LeasedRateLimiter:
    limiter = LeasedRateLimiter.from_url("redis://127.0.0.1:1/0", limit=10_000, **kwargs)
    limiter._script = grants
    return limiter


def test_a_new_client_leases_one_token_then_twice_its_count_each_time_it_runs_out() -> None:
    grants = Grants(10_000)
    limiter = _limiter(grants, max_batch=16)

    async def main() -> None:
        for _ in range(40):
            assert (await limiter.hit("c")).allowed

    asyncio.run(main())
    assert grants.wants[:5] == [1, 2, 6, 16, 16]  # 2x what it admitted so far, capped
    assert sum(grants.wants) >= 40 and len(grants.wants) <= 6


def test_concurrent_requests_of_a_client_share_one_lease_call() -> None:
    grants = Grants(10_000, delay=0.05)
    limiter = _limiter(grants, max_batch=1)

    async def main() -> list[bool]:
        decisions = await asyncio.gather(*(limiter.hit("c") for _ in range(5)))
        return [d.allowed for d in decisions]

    assert asyncio.run(main()) == [True] * 5
    assert len(grants.wants) == 5  # one at a time: never several calls in flight


def test_a_refusal_is_remembered_until_a_token_frees_up() -> None:
    grants = Grants(2, retry_ms=5000)
    limiter = _limiter(grants, max_batch=1)

    async def main() -> list[bool]:
        return [(await limiter.hit("c")).allowed for _ in range(6)]

    assert asyncio.run(main()) == [True, True, False, False, False, False]
    assert len(grants.wants) == 3  # the refused requests after the first cost no call
    refused = asyncio.run(limiter.hit("c"))
    assert not refused.allowed and 4 < refused.retry_after <= 5


def test_tokens_do_not_outlive_their_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    # The limiter's clock, moved by hand: with real time a 1 ms bucket could also end
    # between a lease and its first use on a busy machine (a fourth call, seen in a
    # fresh-machine run).
    now = [1000.0]
    monkeypatch.setattr(leased_ratelimit, "time", SimpleNamespace(monotonic=lambda: now[0]))
    grants = Grants(10_000, bucket_ms=100)
    limiter = _limiter(grants, max_batch=8)

    async def hits(count: int) -> None:
        for _ in range(count):
            assert (await limiter.hit("c")).allowed

    asyncio.run(hits(3))  # leases 1, then 2 (ran out within the bucket): 1 token left
    assert grants.wants == [1, 2]
    now[0] += 0.1  # the bucket of that token is over
    asyncio.run(hits(1))  # the left token is not spent: a new lease, sized on 3
    assert grants.wants == [1, 2, 3]
    asyncio.run(hits(2))  # within the new bucket: no call
    assert grants.wants == [1, 2, 3]


def test_redis_out_of_reach_fails_open_as_the_exact_limiter_does() -> None:
    grants = Grants(0)
    grants.error = RedisConnectionError("refused")
    limiter = _limiter(grants, retry_for=0)
    assert asyncio.run(limiter.hit("c")).allowed
