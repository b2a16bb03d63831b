"""Prometheus counters of the tiered cache (exported by the default registry).

Only events that matter for operations are counted here (L2 failures, dropped writes,
L1 flushes, invalidations, stampede computations). Per-hit counters are kept as plain
integers on the L1 store (:meth:`djscale.cache.TieredCache.stats`) because a Prometheus
``inc()`` on every L1 hit would cost a noticeable share of the hit itself.
"""

from __future__ import annotations

from prometheus_client import Counter

__all__ = [
    "COMPUTATIONS",
    "INVALIDATIONS_RECEIVED",
    "L1_FLUSHES",
    "L2_ERRORS",
    "L2_SKIPPED",
    "LOCK_WAITS",
    "WRITES_DROPPED",
]

L2_ERRORS = Counter(
    "djscale_cache_l2_errors", "Redis (L2) calls that failed (connection or timeout)",
    ["location"],
)
L2_SKIPPED = Counter(
    "djscale_cache_l2_skipped", "Redis (L2) calls skipped because its circuit was open",
    ["location"],
)
WRITES_DROPPED = Counter(
    "djscale_cache_writes_dropped", "Cache writes dropped because Redis (L2) was unreachable",
    ["location"],
)
L1_FLUSHES = Counter(
    "djscale_cache_l1_flushes", "Whole-L1 flushes (lost subscription, clear())",
    ["reason"],
)
INVALIDATIONS_RECEIVED = Counter(
    "djscale_cache_invalidations_received",
    "Invalidation messages received from other processes",
)
COMPUTATIONS = Counter(
    "djscale_cache_computations",
    "Values computed by get_or_set()/@cached (stampede-protected)", ["reason"],
)
LOCK_WAITS = Counter(
    "djscale_cache_lock_waits",
    "Times a process waited for another process holding the recompute lock",
)
