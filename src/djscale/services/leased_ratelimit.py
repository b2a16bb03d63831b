"""The gateway's rate limit without a Redis round trip per request: tokens leased in batches.

:class:`~djscale.services.ratelimit.RateLimiter` asks Redis about every request (an exact
sliding log); profiled in the gateway (py-spy, ``benchmarks/bench_services.py``) that
round trip was ~17% of the gateway's CPU per proxied request. :class:`LeasedRateLimiter`
keeps the same promise to the upstreams (**never more than ``limit`` admitted requests
per client in any ``window``-long interval, across every gateway process**) while asking
Redis once per batch of requests.

How: Redis counts a client's admissions in ``buckets`` time buckets per window
(``width = ceil(window / buckets)``), in one hash per client. A gateway process that has
no token for a client asks Redis for a **lease** of ``n`` tokens; one atomic Lua script
sums the buckets of the last ``buckets + 1`` widths (the current bucket included), grants
``min(n, limit - sum)`` tokens and adds them to the current bucket. The process spends the
tokens locally, and only until the current bucket ends (a token never outlives the bucket
it was counted in). Because the buckets summed at each grant span at least one whole
window, the admitted requests in any window-long interval never exceed ``limit``, however
many processes share the client (proof in docs/services.md, "Rate limit").

The batch ``n`` adapts per client and process: 1 for a client seen for the first time
(so a handful of requests are counted exactly, as before), then the number this process
admitted for the client in its previous bucket, or twice what it admitted so far in this
bucket when the lease runs out early, capped at ``max_batch`` (default
``limit // (4 * (buckets + 1))``, at least 1).
Requests of a client that arrive while its lease is being fetched wait for that one call.
A refusal is remembered until Redis says a token frees up (``Retry-After``), so a client
that hammers a closed limit costs no Redis call per request either.

**Accuracy bound** (documented in docs/services.md and measured by
tests/integration/test_gateway_ratelimit_accuracy.py with 4 gateway processes):

- over: none. At most ``limit`` admissions in any interval of ``window`` seconds.
- under: a client that keeps asking gets at least ``limit`` per ``window * (buckets + 1) /
  buckets`` seconds (the conservative extra bucket), less the tokens still unspent in
  processes it stopped reaching when their bucket ended (at most ``max_batch`` per process
  per bucket).

Redis outages behave as with :class:`~djscale.services.ratelimit.RateLimiter` (retries for
``retry_for`` seconds, then fail open or closed), as does Redis Cluster: each client's
hash is one key, hash-tagged by client.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Any

from djscale.services.ratelimit import Decision, RateLimiter

__all__ = ["BUCKETS", "LeasedRateLimiter"]

BUCKETS = 20
"""Time buckets per window, by default: the conservative extra bucket costs 1/20 = 5%."""

LEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local width = tonumber(ARGV[2])
local k = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local cur = math.floor(now / width)
local flat = redis.call('HGETALL', KEYS[1])
local used = 0
local oldest = nil
for i = 1, #flat, 2 do
  local b = tonumber(flat[i])
  if b < cur - k then
    redis.call('HDEL', KEYS[1], flat[i])
  else
    used = used + tonumber(flat[i + 1])
    if oldest == nil or b < oldest then oldest = b end
  end
end
local grant = math.max(0, math.min(want, limit - used))
if grant > 0 then
  redis.call('HINCRBY', KEYS[1], cur, grant)
  redis.call('PEXPIRE', KEYS[1], (k + 2) * width)
end
local retry = 0
if grant < want then
  if oldest == nil then oldest = cur end
  retry = (oldest + k + 1) * width - now
end
return {grant, limit - used - grant, retry, (cur + 1) * width - now}
"""


@dataclass
class _Lease:
    """One client's tokens in this process."""

    tokens: int = 0
    expires: float = 0.0        # time.monotonic() when the tokens' bucket ends
    refused_until: float = 0.0  # no token anywhere before this time
    used: int = 0               # admitted in the current lease's bucket
    used_before: int = 0        # admitted in the previous bucket
    pending: asyncio.Future[None] | None = None


class LeasedRateLimiter(RateLimiter):
    """``limit`` requests per client per ``window`` seconds, shared through Redis, with
    tokens leased in batches (see the module docstring for the bound)."""

    SCRIPT = LEASE

    def __init__(self, client: Any, *, limit: int, window: float = 1.0, buckets: int = BUCKETS,
                 max_batch: int | None = None, **kwargs: Any) -> None:
        super().__init__(client, limit=limit, window=window, **kwargs)
        if buckets < 1 or (max_batch is not None and max_batch < 1):
            raise ValueError("LeasedRateLimiter needs buckets >= 1 and max_batch >= 1")
        self.buckets = buckets
        self.width_ms = math.ceil(self.window_ms / buckets)
        self.max_batch = max_batch or self.batch_cap(limit, buckets)
        self._leases: dict[str, _Lease] = {}
        self._next_prune = 0.0

    @staticmethod
    def batch_cap(limit: int, buckets: int = BUCKETS) -> int:
        """The default ``max_batch``: a quarter of one bucket's share of ``limit``."""
        return max(1, limit // (4 * (buckets + 1)))

    async def hit(self, client_id: str) -> Decision:
        """Count one request of ``client_id``; say whether it is admitted."""
        now = time.monotonic()
        lease = self._leases.get(client_id)
        if lease is None:
            if now >= self._next_prune:
                self._prune(now)
            lease = self._leases[client_id] = _Lease()
        while True:
            if lease.tokens > 0 and now < lease.expires:
                lease.tokens -= 1
                lease.used += 1
                return Decision(True, lease.tokens, 0.0)
            if now < lease.refused_until:
                return Decision(False, 0, lease.refused_until - now)
            if lease.pending is not None:
                # Another request of this client is fetching a lease: share its answer.
                await asyncio.shield(lease.pending)
            else:
                failed = await self._renew(client_id, lease, now)
                if failed is not None:
                    return failed
            now = time.monotonic()

    async def _renew(self, client_id: str, lease: _Lease, now: float) -> Decision | None:
        """Fetch a new lease for ``client_id``; a Decision only when Redis failed."""
        if now >= lease.expires:  # a new bucket: size the batch on the last one's traffic
            lease.used_before, lease.used = lease.used, 0
            want = max(1, lease.used_before)
        else:                     # ran out within the bucket: ask for more than last time
            want = max(1, 2 * lease.used)
        want = min(want, self.max_batch)
        future = lease.pending = asyncio.get_running_loop().create_future()
        try:
            answer = await self._run(keys=[self.key(client_id)],
                                     args=[self.limit, self.width_ms, self.buckets, want])
        finally:
            lease.pending = None
            future.set_result(None)
        if isinstance(answer, Decision):
            return answer
        granted, _left, retry_ms, bucket_left_ms = (int(x) for x in answer)
        # Measured from before the call: Redis' clock read later, so the bucket ends no
        # earlier than this.
        lease.tokens, lease.expires = granted, now + bucket_left_ms / 1000
        if granted == 0:
            lease.refused_until = now + max(retry_ms, 1) / 1000
        return None

    def _prune(self, now: float) -> None:
        """Forget clients whose lease has ended (bounded memory for many clients)."""
        self._next_prune = now + max(1.0, self.window_ms / 1000)
        for client_id in [c for c, lease in self._leases.items()
                          if lease.pending is None and now >= lease.expires
                          and now >= lease.refused_until]:
            del self._leases[client_id]
