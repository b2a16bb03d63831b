"""``TieredCache``: a Django cache backend with an in-process L1 over a Redis L2.

Configure it as ``CACHES["default"]`` (``djscale.settings.from_topology`` does)::

    CACHES = {"default": {
        "BACKEND": "djscale.cache.TieredCache",
        "LOCATION": "redis://127.0.0.1:6379/0",       # several URLs + CLUSTER: Redis Cluster
        "KEY_PREFIX": "shop",
        "OPTIONS": {"L1_TIMEOUT": 5, "L1_MAX_ENTRIES": 10_000, "L1_MAX_BYTES": 64 << 20},
    }}

Reads try L1, then Redis (filling L1 for at most ``L1_TIMEOUT`` and never past the
key's Redis expiry); writes go to Redis and L1 and publish the keys on the invalidation
channel so other processes evict them (:mod:`djscale.cache.bus`). ``get_or_set`` with a
callable is stampede-protected (single-flight per process, a short Redis lock across
processes, XFetch early refresh). When Redis is unreachable, reads fall back to L1 (or
miss, so callers compute through), writes are dropped with a warning and a metric, and a
circuit breaker keeps a dead Redis from adding latency (:mod:`djscale.cache.l2`).

Subclasses :class:`~django.core.cache.backends.base.BaseCache` and overrides what tiering
changes; Django's per-thread cache instances share one L1, one Redis client and one
listener per process through a module-level registry (reset after ``fork()``).
"""

from __future__ import annotations

import os
import pickle
import re
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable
from time import monotonic
from typing import Any
from urllib.parse import urlsplit

from asgiref.sync import sync_to_async
from django.core.cache.backends.base import (
    DEFAULT_TIMEOUT,
    BaseCache,
    CacheKeyWarning,
    memcache_key_warnings,
)

from djscale import metrics
from djscale.cache.bus import InvalidationBus
from djscale.cache.l1 import LocalStore
from djscale.cache.l2 import UNAVAILABLE, Eviction, RedisL2, as_payload, dumps, loads
from djscale.cache.plain import Plain, freeze
from djscale.cache.stampede import SingleFlight, Stamped, should_recompute_early
from djscale.errors import CacheUnavailable, ConfigurationError

__all__ = ["TieredCache", "reset_shared_state"]

DEFAULTS: dict[str, Any] = {
    "CLUSTER": None,            # None: a cluster when LOCATION lists several nodes
    "L1_MAX_ENTRIES": 10_000,   # 0 disables L1 (Redis only, e.g. for sessions)
    "L1_MAX_BYTES": 64 << 20,
    "L1_TIMEOUT": 5.0,
    "CONNECT_TIMEOUT": 0.25,
    "SOCKET_TIMEOUT": 0.5,
    "MAX_CONNECTIONS": 64,
    "FAILURE_THRESHOLD": 2,
    "RESET_TIMEOUT": 0.5,
    "MAX_RESET_TIMEOUT": 5.0,
    "CHANNEL": None,            # default: djscale:cache:invalidate:<db> (pub/sub ignores db)
    "L1_SYNC_TIMEOUT": 0.5,     # seconds wait_for_l1() waits for the other processes
    "LOCK_TIMEOUT": 5.0,        # seconds another process waits for a recompute
    "XFETCH_BETA": 1.0,         # 0 disables early recompute
    "CONNECTION_KWARGS": {},
}

_MISSING = object()
_registry_lock = threading.Lock()
_l2s: dict[tuple[Any, ...], RedisL2] = {}
_buses: dict[tuple[Any, ...], InvalidationBus] = {}
_stores: dict[tuple[Any, ...], LocalStore] = {}
_flights: dict[tuple[Any, ...], SingleFlight] = {}
_valid_keys: dict[tuple[Any, ...], set[str]] = {}
_MAX_VALID_KEYS = 100_000


def reset_shared_state() -> None:
    """Forget every shared L1, client and listener (tests)."""
    with _registry_lock:
        for bus in _buses.values():
            bus._stop.set()
        _l2s.clear()
        _buses.clear()
        _stores.clear()
        _flights.clear()
        _valid_keys.clear()


def _after_fork_in_child() -> None:
    # Cache instances created before fork() (gunicorn --preload) keep pointing at the
    # shared objects, so renew them in place: locks another thread held at fork time,
    # the listener thread (threads do not survive fork) and L1 (it may already be stale,
    # and this process is not subscribed yet). redis-py pools reconnect by themselves
    # after a fork (they check the pid).
    for store in _stores.values():
        store.after_fork()
    for flight in _flights.values():
        flight.after_fork()
    for l2 in _l2s.values():
        l2.breaker.after_fork()
        l2.forget_sequences()
    for bus in _buses.values():
        bus.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _options(params: dict[str, Any]) -> dict[str, Any]:
    given = {str(k).upper(): v for k, v in (params.get("OPTIONS") or {}).items()}
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ConfigurationError(
            f"unknown TieredCache option(s) {', '.join(unknown)}; allowed: "
            f"{', '.join(sorted(DEFAULTS))}")
    return {**DEFAULTS, **given}


def _default_channel(servers: list[str], cluster: bool) -> str:
    # Pub/sub is server-wide while keys live in one database: caches on different
    # databases of one Redis must not evict (or flush) each other's L1.
    db = "0"
    if not cluster:
        path = urlsplit(servers[0]).path.strip("/")
        db = path if path.isdigit() else "0"
    return f"djscale:cache:invalidate:{db}"


class TieredCache(BaseCache):
    """Django cache backend: bounded in-process L1 over Redis (or Redis Cluster) L2."""

    def __init__(self, server: str | list[str] | tuple[str, ...], params: dict[str, Any]) -> None:
        super().__init__(params)
        servers = [s for s in re.split("[;,]", server)] if isinstance(server, str) \
            else list(server)
        servers = [s.strip() for s in servers if s.strip()]
        opts = _options(params)
        cluster = bool(opts["CLUSTER"]) if opts["CLUSTER"] is not None else len(servers) > 1
        self._opts = opts
        l2_key = (tuple(servers), cluster, opts["CONNECT_TIMEOUT"], opts["SOCKET_TIMEOUT"])
        l1_key = (*l2_key, self.key_prefix, opts["L1_MAX_ENTRIES"], opts["L1_MAX_BYTES"],
                  opts["L1_TIMEOUT"])
        with _registry_lock:
            l2 = _l2s.get(l2_key)
            if l2 is None:
                l2 = _l2s[l2_key] = RedisL2(
                    servers, cluster=cluster, connect_timeout=float(opts["CONNECT_TIMEOUT"]),
                    socket_timeout=float(opts["SOCKET_TIMEOUT"]),
                    max_connections=int(opts["MAX_CONNECTIONS"]),
                    failure_threshold=int(opts["FAILURE_THRESHOLD"]),
                    reset_timeout=float(opts["RESET_TIMEOUT"]),
                    max_reset_timeout=float(opts["MAX_RESET_TIMEOUT"]),
                    connection_kwargs=dict(opts["CONNECTION_KWARGS"]))
            store = _stores.get(l1_key)
            if store is None:
                store = _stores[l1_key] = LocalStore(
                    max_entries=int(opts["L1_MAX_ENTRIES"]), max_bytes=int(opts["L1_MAX_BYTES"]),
                    timeout=float(opts["L1_TIMEOUT"]))
            bus: InvalidationBus | None = None
            if store.enabled:
                channel = str(opts["CHANNEL"] or _default_channel(servers, cluster))
                bus_key = (*l2_key, channel)
                bus = _buses.get(bus_key)
                if bus is None:
                    bus = _buses[bus_key] = InvalidationBus(l2, channel)
                    # Keys repaired after an outage are evicted from every process's L1.
                    l2.repair_message = bus.keys_message
                    l2.repair_flush_message = bus.flush_message
                    # Redis answering again before the listener has resubscribed: what L1
                    # holds from the outage may be stale (see bus.py).
                    l2.on_reachable.append(bus.redis_back)
            flight = _flights.setdefault(l1_key, SingleFlight())
            valid = _valid_keys.setdefault(l1_key, set())
        self._l2 = l2
        self._l1 = store
        self._bus = bus
        self._flight = flight
        self._valid = valid
        self._data = store._data  # the L1 map, read lock-free on the hit path
        self._l1_on = store.enabled
        self._lock_timeout = float(opts["LOCK_TIMEOUT"])
        self._beta = float(opts["XFETCH_BETA"])
        if bus is not None:
            bus.register(store)

    # ------------------------------------------------------------------ helpers

    def make_and_validate_key(self, key: Any, version: int | None = None) -> str:
        """The full key; memcached-compatibility warnings are checked once per valid key.

        Django checks every character of every key on every call; remembering the keys
        that passed (bounded) makes an L1 hit cheaper than the check itself. Keys that
        warn are checked (and warn) every time, as in Django.
        """
        full = self.make_key(key, version=version)
        if full in self._valid:
            return full
        if type(self).validate_key is not BaseCache.validate_key:
            self.validate_key(full)
            return full
        clean = True
        for message in memcache_key_warnings(full):
            warnings.warn(message, CacheKeyWarning, stacklevel=3)
            clean = False
        if clean:
            if len(self._valid) >= _MAX_VALID_KEYS:
                self._valid.clear()
            self._valid.add(full)
        return full

    @property
    def l1(self) -> LocalStore:
        """The process-wide L1 store of this cache."""
        return self._l1

    @property
    def l2(self) -> RedisL2:
        """The Redis client of this cache (shared by every thread)."""
        return self._l2

    @property
    def bus(self) -> InvalidationBus | None:
        """The invalidation listener (None when L1 is disabled)."""
        return self._bus

    def wait_for_l1(self, timeout: float | None = None) -> bool:
        """Wait until every other process evicted what this thread last wrote or deleted.

        Writes reach the other processes' L1 asynchronously (a few milliseconds through
        the invalidation bus); after this returns True, no process serves the old value
        from its L1 any more. At most ``timeout`` seconds (default: the
        ``L1_SYNC_TIMEOUT`` option); False when a live process did not acknowledge in time
        or Redis could not be asked (see :meth:`djscale.cache.bus.InvalidationBus.wait_applied`).
        True at once without L1 or when this thread has not written. Call it in the
        thread that wrote (``adelete`` and friends may write from another one).
        """
        if self._bus is None:
            return True
        limit = float(self._opts["L1_SYNC_TIMEOUT"]) if timeout is None else timeout
        return self._bus.wait_applied(timeout=limit)

    def get_backend_timeout(self, timeout: float | object | None = DEFAULT_TIMEOUT) -> int | None:
        """Seconds for Redis: None never expires, 0 (or less) means "do not keep"."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        if timeout is None:
            return None
        return max(0, int(timeout))  # type: ignore[call-overload, no-any-return]

    def _l1_usable(self) -> bool:
        # Without a live subscription we would miss other processes' writes; with Redis
        # down nobody can write, so L1 is the fallback.
        return self._bus is not None and (self._bus.connected.is_set()
                                          or not self._l2.available)

    def _msg(self, keys: list[str]) -> Eviction | None:
        return self._bus.keys_message(keys) if self._bus is not None else None

    def _lookup(self, key: str) -> tuple[Any, float | None, float]:
        """``(value or _MISSING, seconds to L2 expiry, compute delta)`` from L1 then L2."""
        if self._l1_on:
            entry = self._l1.get(key)
            if entry is not None:
                value = _l1_value(entry.payload)
                remaining = None if entry.l2_expires is None else \
                    entry.l2_expires - time.monotonic()
                return value, remaining, entry.delta
        gen = self._l1.generation(key)
        got = self._l2.get(key)
        if got is UNAVAILABLE or got[0] is None:
            self._l1.l2_misses += 1  # statistics only, like the L1 counters
            return _MISSING, None, 0.0
        self._l1.l2_hits += 1
        raw: bytes = got[0]
        ttl: float | None = got[1]
        payload = as_payload(raw)
        value = loads(payload)
        delta = 0.0
        if type(value) is Stamped:
            delta = value.delta
            value = value.value
        if self._l1_on and self._l1_usable():
            self._l1.fill(key, _for_l1(payload, value), ttl=ttl, generation=gen, delta=delta)
        return value, ttl, delta

    def _store(self, key: str, raw: bytes | int, timeout: int | None,
               delta: float = 0.0, value: Any = _MISSING) -> bool:
        ok = self._l2.set(key, raw, timeout, publish=self._msg([key]))
        if self._l1_on:
            if timeout == 0:
                self._l1.discard(key)
            elif self._l1_usable():
                self._l1.put(key, _for_l1(raw, value), ttl=timeout, delta=delta)
            else:
                self._l1.discard(key)
        return ok

    # ------------------------------------------------------------------ Django cache API

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        """Return the value of ``key`` (L1, then Redis), or ``default``."""
        key = self.make_and_validate_key(key, version=version)
        # The L1 hit path, inlined: OrderedDict operations are atomic under the GIL, so
        # readers need no lock (writers hold the store's lock among themselves).
        entry = self._data.get(key)
        if entry is not None and entry.expires > monotonic():
            try:  # noqa: SIM105 - contextlib.suppress costs more than this whole branch
                self._data.move_to_end(key)
            except KeyError:  # evicted by another thread just now; the entry is still valid
                pass
            self._l1.hits += 1  # statistics only: a lost increment under races is fine
            payload = entry.payload
            kind = type(payload)
            if kind is Plain:
                return payload.copy()  # type: ignore[attr-defined]
            if kind is int:
                return payload
            value = pickle.loads(payload)  # type: ignore[arg-type]
            return value.value if type(value) is Stamped else value
        value, _, _ = self._lookup(key)
        return default if value is _MISSING else value

    def set(self, key: Any, value: Any, timeout: float | object | None = DEFAULT_TIMEOUT,
            version: int | None = None) -> None:
        """Store ``value`` in Redis and L1 and evict it from other processes' L1."""
        key = self.make_and_validate_key(key, version=version)
        self._store(key, dumps(value), self.get_backend_timeout(timeout), value=value)

    def add(self, key: Any, value: Any, timeout: float | object | None = DEFAULT_TIMEOUT,
            version: int | None = None) -> bool:
        """Store ``value`` only if ``key`` is absent; return True if it was stored."""
        key = self.make_and_validate_key(key, version=version)
        raw = dumps(value)
        timeout = self.get_backend_timeout(timeout)
        stored = self._l2.add(key, raw, timeout, publish=self._msg([key]))
        if stored is UNAVAILABLE:
            # Redis down: behave like a process-local cache.
            if self._l1_on and self._l1.get(key) is None and timeout != 0:
                self._l1.put(key, _for_l1(raw, value), ttl=timeout)
                return True
            return timeout == 0
        if stored and self._l1_on and timeout != 0:
            self._l1.put(key, _for_l1(raw, value), ttl=timeout)
        return bool(stored)

    def touch(self, key: Any, timeout: float | object | None = DEFAULT_TIMEOUT,
              version: int | None = None) -> bool:
        """Give ``key`` a new timeout; return True if it exists."""
        key = self.make_and_validate_key(key, version=version)
        found = self._l2.touch(key, self.get_backend_timeout(timeout), publish=self._msg([key]))
        if self._l1_on:
            self._l1.discard(key)
        return found

    def delete(self, key: Any, version: int | None = None) -> bool:
        """Delete ``key`` everywhere; return True if Redis had it."""
        key = self.make_and_validate_key(key, version=version)
        if self._l1_on:
            self._l1.discard(key)
        deleted = self._l2.delete([key], publish=self._msg([key]))
        if self._l1_on:
            # Again: another thread of this process may have filled L1 from Redis between
            # the first discard and the DEL (our own eviction message is not applied here).
            self._l1.discard(key)
        return bool(deleted) if deleted is not UNAVAILABLE else False

    def has_key(self, key: Any, version: int | None = None) -> bool:
        """Return True if ``key`` has a value (L1 or Redis)."""
        key = self.make_and_validate_key(key, version=version)
        if self._l1_on and self._l1.get(key) is not None:
            return True
        found = self._l2.has_key(key)
        return bool(found) if found is not UNAVAILABLE else False

    def get_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        """Values of the keys that exist, L1 first, the rest in one Redis round trip."""
        key_map = {self.make_and_validate_key(k, version=version): k for k in keys}
        result: dict[Any, Any] = {}
        wanted: list[str] = []
        for full, orig in key_map.items():
            entry = self._l1.get(full) if self._l1_on else None
            if entry is None:
                wanted.append(full)
                continue
            result[orig] = _l1_value(entry.payload)
        if not wanted:
            return result
        gens = {k: self._l1.generation(k) for k in wanted} if self._l1_on else {}
        got = self._l2.get_many(wanted)
        if got is UNAVAILABLE:
            return result
        fill = self._l1_on and self._l1_usable()
        for full, (raw, ttl) in got.items():
            payload = as_payload(raw)
            value = loads(payload)
            delta = 0.0
            if type(value) is Stamped:
                delta, value = value.delta, value.value
            result[key_map[full]] = value
            if fill:
                self._l1.fill(full, _for_l1(payload, value), ttl=ttl, generation=gens[full],
                              delta=delta)
        return result

    def set_many(self, data: dict[Any, Any], timeout: float | object | None = DEFAULT_TIMEOUT,
                 version: int | None = None) -> list[Any]:
        """Store several values in one round trip; return the keys that were not stored."""
        if not data:
            return []
        values = {self.make_and_validate_key(k, version=version): v for k, v in data.items()}
        safe = {full: dumps(v) for full, v in values.items()}
        timeout = self.get_backend_timeout(timeout)
        ok = self._l2.set_many(safe, timeout, publish=self._msg(list(safe)))
        if self._l1_on:
            for full, raw in safe.items():
                if timeout == 0 or not self._l1_usable():
                    self._l1.discard(full)
                else:
                    self._l1.put(full, _for_l1(raw, values[full]), ttl=timeout)
        return [] if ok else list(data)

    def delete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        """Delete several keys everywhere."""
        safe = [self.make_and_validate_key(k, version=version) for k in keys]
        if not safe:
            return
        if self._l1_on:
            self._l1.discard_many(safe)
        self._l2.delete(safe, publish=self._msg(safe))
        if self._l1_on:
            self._l1.discard_many(safe)  # as in delete()

    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        """Atomically add ``delta`` in Redis (``INCRBY``); ValueError if ``key`` is missing.

        Raise :class:`~djscale.errors.CacheUnavailable` when Redis cannot be reached: an
        increment cannot be done safely in one process alone.
        """
        key = self.make_and_validate_key(key, version=version)
        if self._l1_on:
            self._l1.discard(key)
        value = self._l2.incr(key, delta, publish=self._msg([key]))
        if value is UNAVAILABLE:
            raise CacheUnavailable(f"cannot increment {key!r}: Redis ({self._l2.location}) "
                                   "is unreachable")
        if value is None:
            raise ValueError(f"Key '{key}' not found.")
        return int(value)

    def clear(self) -> None:
        """Empty Redis (FLUSHDB) and every process's L1."""
        if self._l1_on:
            self._l1.flush()
        msg = self._bus.flush_message() if self._bus is not None else None
        self._l2.clear(publish=msg)

    def get_or_set(self, key: Any, default: Any, timeout: float | object | None = DEFAULT_TIMEOUT,
                   version: int | None = None) -> Any:
        """Return the value of ``key``; if missing, store ``default`` (or its result).

        With a callable ``default`` the computation is stampede-protected: one caller per
        process computes (the others wait for it), a Redis lock lets one process compute
        while others wait for its result (up to ``LOCK_TIMEOUT``), and XFetch refreshes a
        hot key early with a probability that rises as its expiry nears.
        """
        full = self.make_and_validate_key(key, version=version)
        value, remaining, delta = self._lookup(full)
        if not callable(default):
            if value is not _MISSING:
                return value
            self.add(key, default, timeout=timeout, version=version)
            return self.get(key, default, version=version)
        if value is not _MISSING:
            if not should_recompute_early(remaining=remaining, delta=delta, beta=self._beta):
                return value
            if self._flight.in_flight(full):
                return value  # someone in this process is already refreshing it
            metrics.record_cache_computation(reason="early")
        result, _ = self._flight.do(
            full, lambda: self._compute(full, default, self.get_backend_timeout(timeout),
                                        stale=value))
        return result

    def _compute(self, key: str, fn: Callable[[], Any], timeout: int | None,
                 stale: Any) -> Any:
        if stale is _MISSING:
            # Another thread may have filled it while this one queued for the flight.
            found, _, _ = self._lookup(key)
            if found is not _MISSING:
                return found
        lock_key = f"{key}:djscale-lock"
        token = uuid.uuid4().hex
        locked = self._l2.lock(lock_key, token, int(self._lock_timeout * 1000))
        if locked is False:
            if stale is not _MISSING:
                return stale  # another process refreshes early; keep serving
            metrics.record_stampede_wait()
            deadline = time.monotonic() + self._lock_timeout
            pause = 0.005
            while time.monotonic() < deadline:
                time.sleep(pause)
                pause = min(pause * 2, 0.05)
                got = self._l2.get(key)
                if got is UNAVAILABLE:
                    break
                if got[0] is not None:
                    value = loads(as_payload(got[0]))
                    return value.value if type(value) is Stamped else value
        try:
            metrics.record_cache_computation(reason="miss" if stale is _MISSING else "early")
            started = time.monotonic()
            value = fn()
            took = time.monotonic() - started
            raw = dumps(value) if type(value) is int else dumps(Stamped(value, took))
            self._store(key, raw, timeout, took, value=value)
            return value
        finally:
            if locked is True:
                self._l2.unlock(lock_key, token)

    # ------------------------------------------------------------------ async

    async def aget(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        """Async :meth:`get`: L1 hits are answered inline, misses go to a thread."""
        if self._l1_on:
            full = self.make_and_validate_key(key, version=version)
            entry = self._l1.get(full)
            if entry is not None:
                return _l1_value(entry.payload)
        return await sync_to_async(self.get, thread_sensitive=False)(key, default, version)

    async def aget_or_set(self, key: Any, default: Any,
                          timeout: float | object | None = DEFAULT_TIMEOUT,
                          version: int | None = None) -> Any:
        """Async :meth:`get_or_set` (same stampede protection)."""
        return await sync_to_async(self.get_or_set, thread_sensitive=False)(
            key, default, timeout, version)

    # ------------------------------------------------------------------ introspection

    def ping(self) -> bool:
        """True if Redis (L2) answers PING now (health checks: L1 can hide an outage)."""
        return bool(self._l2.run(lambda c: c.ping(), False))

    def stats(self) -> dict[str, Any]:
        """L1 counters and state, for debugging and health pages."""
        return {
            "l1_entries": len(self._l1),
            "l1_bytes": self._l1.size_bytes,
            "l1_hits": self._l1.hits,
            "l1_misses": self._l1.misses,
            "l1_evictions": self._l1.evictions,
            "l2_breaker": self._l2.breaker.state,
            "subscribed": bool(self._bus and self._bus.connected.is_set()),
            "invalidations_received": self._bus.received if self._bus else 0,
            "l1_flushes": dict(self._bus.flushes) if self._bus else {},
            "l1_flushed_entries": self._bus.flushed_entries if self._bus else 0,
        }


def _for_l1(raw: bytes | int, value: Any) -> object:
    """What L1 keeps for a value and its serialized form: a cheap-to-copy snapshot of
    plain data, else the serialized bytes (or the ``int``)."""
    if type(raw) is int or value is _MISSING:
        return raw
    plain = freeze(value, nbytes=len(raw))  # type: ignore[arg-type]
    return raw if plain is None else plain


def _l1_value(payload: object) -> Any:
    """A private copy of the value an L1 entry holds."""
    if isinstance(payload, Plain):
        return payload.copy()
    value = loads(payload)  # type: ignore[arg-type]
    return value.value if type(value) is Stamped else value
