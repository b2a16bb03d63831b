"""Atomic counters shared by every server (Redis ``INCRBY``).

The playbook's ``n = cache.get(k, 0); cache.set(k, n + 1)`` loses increments as soon as
two requests run at once (both read 41, both write 42). :class:`AtomicCounter` increments
in Redis in one command, so every increment counts, whichever server it comes from::

    views = AtomicCounter("product:7:views", timeout=86400)   # key expires a day after creation
    views.incr()          # -> 1, 2, 3 ... (None if Redis is unreachable)
    views.value()         # -> current value (0 when absent)

Counters bypass L1 on purpose (a counter is only useful if it is the shared one). When
Redis is unreachable ``incr`` returns None and counts the dropped write in
``djscale_cache_writes_dropped`` rather than failing the request.
"""

from __future__ import annotations

from typing import Any

from django.core.cache import caches

from djscale.cache.backend import TieredCache
from djscale.cache.l2 import UNAVAILABLE
from djscale.errors import ConfigurationError

__all__ = ["AtomicCounter"]


class AtomicCounter:
    """A named integer in Redis, incremented atomically from any process."""

    def __init__(self, name: str, *, cache: str = "default", timeout: int | None = None,
                 version: int | None = None) -> None:
        self.name = name
        self.cache_alias = cache
        self.timeout = timeout
        self.version = version

    def _backend(self) -> tuple[TieredCache, str]:
        backend: Any = caches[self.cache_alias]
        if not isinstance(backend, TieredCache):
            raise ConfigurationError(
                f"AtomicCounter needs a djscale.cache.TieredCache; CACHES[{self.cache_alias!r}] "
                f"is a {type(backend).__name__}")
        return backend, backend.make_and_validate_key(self.name, version=self.version)

    def incr(self, delta: int = 1) -> int | None:
        """Add ``delta`` (creating the counter at 0); the new value, None if Redis is down.

        ``timeout`` (seconds) is applied when the counter is created, not on each increment.
        """
        backend, key = self._backend()
        value = backend.l2.incr_create(key, delta, self.timeout)
        if backend.l1 is not None:
            backend.l1.discard(key)
        return None if value is UNAVAILABLE else int(value)

    def decr(self, delta: int = 1) -> int | None:
        """Subtract ``delta``; see :meth:`incr`."""
        return self.incr(-delta)

    def value(self) -> int:
        """The current value (0 when the counter does not exist or Redis is down)."""
        backend, key = self._backend()
        got = backend.l2.get(key)
        if got is UNAVAILABLE or got[0] is None:
            return 0
        return int(got[0])

    def reset(self) -> None:
        """Delete the counter."""
        backend, key = self._backend()
        backend.l2.delete([key])
