"""Per-client rate limit in Redis: an exact sliding window, one atomic Lua script.

Each client has a sorted set of the times (Redis server clock, milliseconds) of its
accepted requests in the last ``window`` seconds. The script drops expired entries,
counts the rest and admits the request only below ``limit``, all in one atomic step, so
several gateway processes share one limit without races; a refused request is not
recorded, so a client that keeps retrying is not locked out for ever. Redis' own clock
is used so that gateways with skewed clocks agree.

**Redis Cluster**: give :meth:`RateLimiter.from_url` several node URLs (comma-separated)
or ``cluster=True``; a plain client that is answered ``MOVED`` (one node URL of a
cluster) switches to a cluster client by itself. The key is
``<prefix>{<client id>}``: the script touches one key, and the hash tag keeps any key
derived from the same client in the same slot. While a master fails over, calls that
fail with a connection error, ``CLUSTERDOWN`` or ``TRYAGAIN`` are retried with back-off
(50 ms doubling to 0.5 s) for at most ``retry_for`` seconds per outage, so a failover
shorter than that neither resets nor bypasses the limit. Replication is asynchronous:
a master that crashes can take the admissions of its last few milliseconds with it, so
a client may get up to that many extra requests once (docs/cache.md).

When Redis stays unreachable beyond ``retry_for`` the limiter **fails open** (admits,
logs a warning): a rate limiter must not turn a cache outage into a full outage. Pass
``fail_open=False`` to refuse instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Self
from urllib.parse import parse_qsl, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterDownError,
    ClusterError,
    MovedError,
    RedisClusterException,
    RedisError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["Decision", "RateLimiter"]

log = logging.getLogger(__name__)

# What Redis (Cluster) answers while a master fails over: worth retrying for a while.
TRANSIENT: tuple[type[Exception], ...] = (
    RedisConnectionError, RedisTimeoutError, ClusterDownError, TryAgainError,
    SlotNotCoveredError, ClusterError, RedisClusterException, OSError,
)

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
    """``limit`` requests per client per ``window`` seconds, shared through Redis.

    One Redis round trip per request; :class:`~djscale.services.leased_ratelimit.LeasedRateLimiter`
    (what the gateway uses) takes tokens in batches instead.
    """

    SCRIPT = SLIDING_WINDOW
    """The Lua script :meth:`hit` runs (subclasses run their own through :meth:`_run`)."""

    def __init__(self, client: Any, *, limit: int, window: float = 1.0,
                 prefix: str = "djscale:ratelimit:", fail_open: bool = True,
                 retry_for: float = 3.0) -> None:
        if limit < 1 or window <= 0 or retry_for < 0:
            raise ValueError("RateLimiter needs limit >= 1, window > 0 and retry_for >= 0")
        self.redis = client
        self.limit = limit
        self.window_ms = max(1, int(window * 1000))
        self.prefix = prefix
        self.fail_open = fail_open
        self.retry_for = retry_for
        self._down_since: float | None = None
        self._old_clients: list[Any] = []
        self._script: Any = client.register_script(self.SCRIPT)

    @classmethod
    def from_url(cls, url: str, *, cluster: bool | None = None, **kwargs: Any) -> Self:
        """A limiter on the Redis at ``url`` with short socket timeouts.

        ``url`` may list several Redis Cluster nodes, comma-separated; ``cluster``
        (default: True when it does) asks for a cluster client.
        """
        urls = [u.strip() for u in url.split(",") if u.strip()]
        if not urls:
            raise ValueError("RateLimiter.from_url needs a redis:// URL")
        if cluster or (cluster is None and len(urls) > 1):
            return cls(_cluster_client(urls), **kwargs)
        client = aioredis.Redis.from_url(urls[0], socket_timeout=0.5, socket_connect_timeout=0.5)
        return cls(client, **kwargs)

    def key(self, client_id: str) -> str:
        """The Redis key of ``client_id``'s window (hash-tagged for Redis Cluster)."""
        return f"{self.prefix}{{{client_id}}}"

    async def hit(self, client_id: str) -> Decision:
        """Count one request of ``client_id``; say whether it is admitted."""
        answer = await self._run(keys=[self.key(client_id)],
                                 args=[self.limit, self.window_ms, uuid.uuid4().hex])
        if isinstance(answer, Decision):
            return answer
        allowed, remaining, retry_ms = answer
        return Decision(bool(allowed), int(remaining), int(retry_ms) / 1000)

    async def _run(self, *, keys: list[str], args: list[Any]) -> Any:
        """The script's answer, or the fail-open/closed Decision once Redis is out of
        reach for longer than ``retry_for`` (or answers with an error)."""
        pause = 0.05
        while True:
            try:
                answer = await self._script(keys=keys, args=args)
                break
            except MovedError as exc:
                if not isinstance(self.redis, RedisCluster):
                    self._use_cluster(exc)
                    continue
                failure: Exception = exc  # the cluster client is still catching up
            except RedisError as exc:
                if not isinstance(exc, TRANSIENT):
                    return self._unreachable(exc)  # an answer, not an outage: no retry
                failure = exc
            except Exception as exc:  # noqa: BLE001
                # redis-py's cluster client can fail with e.g. AttributeError when a
                # failover closes a connection another request is using (seen in
                # tests/integration/test_redis_cluster_failover.py); a rate limiter must
                # answer anyway, so this counts as an outage too.
                failure = exc
            if self._give_up(failure):
                return self._unreachable(failure)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)
        self._down_since = None
        return answer

    def _give_up(self, exc: Exception) -> bool:
        """Note a failed call; True once this outage has outlasted ``retry_for``."""
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
        log.debug("rate limiter: %s: %s; retrying", type(exc).__name__, exc)
        return now >= self._down_since + self.retry_for

    def _unreachable(self, exc: Exception) -> Decision:
        log.warning("rate limiter cannot reach Redis (%s: %s); %s", type(exc).__name__, exc,
                    "admitting" if self.fail_open else "refusing")
        return Decision(self.fail_open, 0, 0.0 if self.fail_open else 1.0)

    def _use_cluster(self, exc: MovedError) -> None:
        kwargs = self.redis.connection_pool.connection_kwargs
        log.warning("rate limiter: %s:%s is a Redis Cluster node (MOVED); switching to a "
                    "cluster client", kwargs.get("host"), kwargs.get("port"))
        old = self.redis
        self.redis = _cluster_client([f"redis://{kwargs.get('host')}:{kwargs.get('port')}",
                                      f"redis://{exc.host}:{exc.port}"])
        self._script = self.redis.register_script(self.SCRIPT)
        self._old_clients.append(old)

    async def aclose(self) -> None:
        """Close the Redis connections."""
        for client in [*self._old_clients, self.redis]:
            await client.aclose()
        self._old_clients.clear()


def _cluster_client(urls: list[str]) -> Any:
    nodes = []
    for url in urls:
        parts = urlsplit(url if "//" in url else f"redis://{url}")
        nodes.append(ClusterNode(parts.hostname or "127.0.0.1", parts.port or 6379))
    # No retries inside redis-py: RateLimiter.hit owns the retry budget.
    return RedisCluster(startup_nodes=nodes, socket_timeout=0.5, socket_connect_timeout=0.5,
                        retry=Retry(NoBackoff(), 0),  # type: ignore[arg-type]  # old stubs
                        **_url_credentials(urls[0]))


def _url_credentials(url: str) -> dict[str, Any]:
    """User, password and TLS of a node URL (a cluster client takes nodes, not URLs)."""
    parts = urlsplit(url if "//" in url else f"redis://{url}")
    found: dict[str, Any] = {}
    if parts.username:
        found["username"] = unquote(parts.username)
    if parts.password is not None:
        found["password"] = unquote(parts.password)
    if parts.scheme == "rediss":
        found["ssl"] = True
        found.update((k, v) for k, v in parse_qsl(parts.query) if k.startswith("ssl_"))
    return found
