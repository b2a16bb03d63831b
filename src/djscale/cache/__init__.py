"""Tiered caching: in-process L1 over Redis L2, invalidated across processes.

- :class:`TieredCache` — the Django cache backend (``CACHES["default"]``).
- :func:`cached` — memoize a function or method in a cache, with canonical hashed keys,
  ``f.invalidate(*args)``, ``f.refresh(*args)`` and per-call bypass.
- :func:`warmer` / :func:`warm` — register and run cache warmers
  (``manage.py warm_cache``).
- :class:`AtomicCounter` — counters shared by every server (Redis ``INCRBY``).

See docs/cache.md for which layer to use, the consistency guarantees and what happens
when Redis is down.
"""

from __future__ import annotations

from djscale.cache.backend import TieredCache
from djscale.cache.counters import AtomicCounter
from djscale.cache.decorators import bypass_cache, cached
from djscale.cache.keys import canonical, function_key
from djscale.cache.warmers import Warmer, registered_warmers, warm, warmer

__all__ = [
    "AtomicCounter",
    "TieredCache",
    "Warmer",
    "bypass_cache",
    "cached",
    "canonical",
    "function_key",
    "registered_warmers",
    "warm",
    "warmer",
]
