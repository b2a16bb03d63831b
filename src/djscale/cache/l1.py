"""The in-process first level (L1) of :class:`~djscale.cache.TieredCache`.

:class:`LocalStore` is a thread-safe LRU map bounded by entry count and by bytes, whose
entries carry their own short expiry. It stores what the backend gives it: the serialized
bytes that go to Redis (each read deserializes them), plain ``int`` values, or a
:class:`~djscale.cache.plain.Plain` snapshot of plain data that the backend copies cheaply
on each read. Either way callers get a fresh copy and never mutate what others see.

It also keeps *fill generations*: a reader remembers the generation of a key's bucket
before fetching from L2 and may only fill L1 if no invalidation touched that bucket in the
meantime (:meth:`LocalStore.fill`). Without that, a value read from Redis just before
another process overwrote it could be put into L1 *after* the invalidation arrived and
be served stale until the L1 timeout.

This module knows nothing about Redis, pub/sub or Django: it must stay a plain container.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import NamedTuple

__all__ = ["Entry", "LocalStore"]

_BUCKETS = 1024
_OVERHEAD = 120  # rough per-entry bookkeeping bytes (key object, tuple, dict slot)


class Entry(NamedTuple):
    """One L1 entry: the stored payload and its deadlines (``time.monotonic()``)."""

    payload: object
    """Serialized bytes, an ``int``, or a :class:`~djscale.cache.plain.Plain` snapshot."""
    expires: float
    """When L1 must stop serving it (L1 timeout, capped by the L2 expiry)."""
    l2_expires: float | None
    """When the value expires in L2 (None: never); XFetch uses it."""
    delta: float
    """Seconds the value took to compute (0 when unknown); XFetch uses it."""
    size: int


class LocalStore:
    """A bounded, thread-safe LRU of serialized values with per-entry expiry."""

    def __init__(self, *, max_entries: int, max_bytes: int, timeout: float) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.enabled = max_entries > 0 and max_bytes > 0 and timeout > 0
        self._data: OrderedDict[str, Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._gens = [0] * _BUCKETS
        self._epoch = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        # L2 outcomes of lookups that missed here (kept with the L1 statistics so that the
        # invalidation listener can export both without touching the hot path).
        self.l2_hits = 0
        self.l2_misses = 0
        self._exported = (0, 0, 0, 0)

    def export_stats(self) -> tuple[int, int, int, int]:
        """Counts since the previous call: (l1 hits, l1 misses, l2 hits, l2 misses)."""
        now = (self.hits, self.misses, self.l2_hits, self.l2_misses)
        before, self._exported = self._exported, now
        return (now[0] - before[0], now[1] - before[1], now[2] - before[2],
                now[3] - before[3])

    def __len__(self) -> int:
        return len(self._data)

    @property
    def size_bytes(self) -> int:
        """Approximate bytes held (payloads, keys and bookkeeping)."""
        return self._bytes

    # ------------------------------------------------------------------ reads

    def get(self, key: str) -> Entry | None:
        """The live entry for ``key`` (moved to most recently used), or None."""
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                self.misses += 1
                return None
            if entry.expires <= time.monotonic():
                self._drop(key)
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return entry

    def generation(self, key: str) -> int:
        """A token to pass to :meth:`fill` after reading ``key`` from L2."""
        return (self._epoch << 32) | self._gens[hash(key) % _BUCKETS]

    # ------------------------------------------------------------------ writes

    def put(self, key: str, payload: object, *, ttl: float | None,
            delta: float = 0.0) -> None:
        """Store ``payload`` written by this process; ``ttl`` is the L2 timeout (None: never).

        A payload that is not ``bytes`` is accounted by its ``nbytes`` attribute if it has one.
        """
        if not self.enabled:
            return
        now = time.monotonic()
        l2_expires = None if ttl is None else now + ttl
        expires = now + self.timeout if ttl is None else now + min(self.timeout, ttl)
        size = _size(payload) + len(key) + _OVERHEAD
        if size > self.max_bytes:
            self.discard(key)
            return
        with self._lock:
            self._bump(key)
            self._store(key, Entry(payload, expires, l2_expires, delta, size))

    def fill(self, key: str, payload: object, *, ttl: float | None, generation: int,
             delta: float = 0.0) -> bool:
        """Store a value read from L2 unless ``key`` was invalidated since ``generation``.

        Return True if it was stored.
        """
        if not self.enabled:
            return False
        now = time.monotonic()
        l2_expires = None if ttl is None else now + ttl
        expires = now + self.timeout if ttl is None else now + min(self.timeout, ttl)
        size = _size(payload) + len(key) + _OVERHEAD
        if size > self.max_bytes:
            return False
        with self._lock:
            if self.generation(key) != generation:
                return False
            self._store(key, Entry(payload, expires, l2_expires, delta, size))
        return True

    def discard(self, key: str) -> None:
        """Evict ``key`` (and make in-flight fills of it fail)."""
        with self._lock:
            self._bump(key)
            if key in self._data:
                self._drop(key)

    def discard_many(self, keys: list[str]) -> None:
        """Evict several keys at once."""
        with self._lock:
            for key in keys:
                self._bump(key)
                if key in self._data:
                    self._drop(key)

    def flush(self) -> int:
        """Evict everything and make every in-flight fill fail; how many entries it held."""
        with self._lock:
            self._epoch += 1
            held = len(self._data)
            self._data.clear()
            self._bytes = 0
        return held

    def after_fork(self) -> None:
        """In a forked child: new lock (another thread may have held it) and empty."""
        self._lock = threading.Lock()
        self.flush()

    # ------------------------------------------------------------------ internals

    def _bump(self, key: str) -> None:
        i = hash(key) % _BUCKETS
        self._gens[i] = (self._gens[i] + 1) & 0xFFFFFFFF

    def _drop(self, key: str) -> None:
        entry = self._data.pop(key)
        self._bytes -= entry.size

    def _store(self, key: str, entry: Entry) -> None:
        old = self._data.pop(key, None)
        if old is not None:
            self._bytes -= old.size
        self._data[key] = entry
        self._bytes += entry.size
        while len(self._data) > self.max_entries or self._bytes > self.max_bytes:
            _, evicted = self._data.popitem(last=False)
            self._bytes -= evicted.size
            self.evictions += 1


def _size(payload: object) -> int:
    if isinstance(payload, bytes):
        return len(payload)
    return int(getattr(payload, "nbytes", 8))
