"""Per-client rate limit in Redis: an exact sliding window, one atomic Lua script.

Each client has a sorted set of the times (Redis server clock, milliseconds) of its
accepted requests in the last ``window`` seconds. The script drops expired entries,
counts the rest and admits the request only below ``limit``, all in one atomic step, so
several gateway processes share one limit without races; a refused request is not
recorded, so a client that keeps retrying is not locked out for ever. Redis' own clock
is used so that gateways with skewed clocks agree.

When Redis cannot be reached the limiter **fails open** (admits, logs a warning): a rate
limiter must not turn a cache outage into a full outage. Pass ``fail_open=False`` to
refuse instead.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

__all__ = ["Decision", "RateLimiter"]

log = logging.getLogger(__name__)

SLIDING_WINDOW = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return {1, limit - count - 1, 0}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local retry = window
if oldest[2] then retry = tonumber(oldest[2]) + window - now end
return {0, 0, retry}
"""


@dataclass(frozen=True)
class Decision:
    """The limiter's answer: admitted or not, requests left, seconds until one is."""

    allowed: bool
    remaining: int
    retry_after: float


class RateLimiter:
    """``limit`` requests per client per ``window`` seconds, shared through Redis."""

    def __init__(self, client: aioredis.Redis[Any], *, limit: int, window: float = 1.0,
                 prefix: str = "djscale:ratelimit:", fail_open: bool = True) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("RateLimiter needs limit >= 1 and window > 0")
        self.redis = client
        self.limit = limit
        self.window_ms = max(1, int(window * 1000))
        self.prefix = prefix
        self.fail_open = fail_open
        self._script: Any = client.register_script(SLIDING_WINDOW)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RateLimiter:
        """A limiter on the Redis at ``url`` with short socket timeouts."""
        client = aioredis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        return cls(client, **kwargs)

    async def hit(self, client_id: str) -> Decision:
        """Count one request of ``client_id``; say whether it is admitted."""
        try:
            allowed, remaining, retry_ms = await self._script(
                keys=[self.prefix + client_id],
                args=[self.limit, self.window_ms, uuid.uuid4().hex])
        except (RedisError, OSError) as exc:
            log.warning("rate limiter cannot reach Redis (%s); %s", exc,
                        "admitting" if self.fail_open else "refusing")
            return Decision(self.fail_open, 0, 0.0 if self.fail_open else 1.0)
        return Decision(bool(allowed), int(remaining), int(retry_ms) / 1000)

    async def aclose(self) -> None:
        """Close the Redis connections."""
        await self.redis.aclose()  # type: ignore[attr-defined]  # stubs predate aclose
