"""Database-backed sessions cached in Redis, with cache writes that survive a failover.

Use it as ``SESSION_ENGINE = "djscale.sessions"`` (with ``SESSION_CACHE_ALIAS`` naming a
:class:`~djscale.cache.TieredCache` alias without L1, as ``from_topology()`` configures
``"sessions"``). It is Django's ``cached_db`` engine with one change: the cache copy is
written so that it cannot go *stale* across a Redis master failover.

Why ``cached_db`` alone is not enough: the database holds the durable copy, and reads go
to the cache first. Redis replication is asynchronous, so a session saved just before
its master dies may reach the database but not the replica that is then promoted: the
promoted replica still holds the *previous* version, and every later read returns it (a
cart item or a logout silently undone). Plain ``cache`` sessions lose the whole session
in the same case. Here every cache write (save, and delete on logout or key rotation) is
sent to the key's master followed by ``WAIT <replicas> <ms>`` on the same connection
(:meth:`djscale.cache.l2.RedisL2.write_acked`), and retried with bounded back-off while a
failover is in progress, so the copy a promoted replica serves is the newest one.

Settings (``DJSCALE["SESSIONS"]``, all optional; the top-level ``DJSCALE_SESSIONS`` is the
deprecated name):

``REPLICA_ACKS``  replicas that must hold a write before it counts (default: 1 when the
                  sessions cache is a Redis Cluster, else 0: no WAIT)
``ACK_TIMEOUT``   seconds WAIT may block (default 0.1)
``RETRY_FOR``     seconds to keep retrying a write during a failover (default 5.0; set it
                  above ``cluster-node-timeout`` plus the election time)

When the write cannot be acknowledged (WAIT timed out: the master's replica is down or
far behind) the session is still saved in the database and the write counts as
``unacked`` in ``djscale_session_cache_writes_total``. When Redis cannot be written at
all within ``RETRY_FOR``, the cache copy is deleted if possible (reads then go to the
database), this process reads that session from the database until a later write
succeeds, and the write counts as ``failed``. On a cache miss the session is read from the
database's *primary* (a lagging replica could hold an older version). Encoding and
expiry are Django's.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.sessions.backends.cached_db import SessionStore as CachedDBStore
from django.contrib.sessions.backends.db import SessionStore as DBStore
from django.core.cache import caches
from django.core.exceptions import SuspiciousOperation
from django.db import router
from django.utils import timezone

from djscale import conf, metrics
from djscale.cache.backend import TieredCache
from djscale.cache.l2 import UNAVAILABLE, dumps

__all__ = ["SessionStore", "durability"]

log = logging.getLogger("djscale.sessions")

CACHE_WRITES = metrics.SESSION_CACHE_WRITES
"""``djscale_session_cache_writes_total`` (defined in :mod:`djscale.metrics`)."""
metrics.declare_session_cache()

# Session cache keys whose last write failed: this process reads them from the database
# until a write succeeds (bounded, oldest forgotten first).
_suspect: OrderedDict[str, None] = OrderedDict()
_suspect_lock = threading.Lock()
_MAX_SUSPECT = 10_000


def durability(cache: TieredCache) -> tuple[int, float, float]:
    """``(replica acks, ack timeout s, retry budget s)`` for session writes to ``cache``."""
    opts = conf.get().sessions
    acks = opts.replica_acks
    if acks is None:
        acks = 1 if cache.l2.cluster else 0
    return acks, opts.ack_timeout, opts.retry_for


def _mark(key: str, suspect: bool) -> None:
    with _suspect_lock:
        if suspect:
            _suspect[key] = None
            _suspect.move_to_end(key)
            while len(_suspect) > _MAX_SUSPECT:
                _suspect.popitem(last=False)
        else:
            _suspect.pop(key, None)


class SessionStore(CachedDBStore):
    """Django's ``cached_db`` sessions whose cache writes wait for a replica's ack."""

    def load(self) -> dict[str, Any]:
        """The session data: cache first, the database when the cache copy is suspect."""
        if self._session_key and _suspect and self.cache_key in _suspect:
            return DBStore.load(self)
        return super().load()

    def save(self, must_create: bool = False) -> None:
        """Save to the database, then write the cache copy (acknowledged by replicas)."""
        DBStore.save(self, must_create)
        data: dict[str, Any] = self._get_session(  # type: ignore[attr-defined]
            no_load=must_create)
        self._write_cache(self.cache_key, data, self.get_expiry_age())

    def delete(self, session_key: str | None = None) -> None:
        """Delete from the database and the cache (acknowledged: a logout must stick)."""
        DBStore.delete(self, session_key)
        if session_key is None:
            if self.session_key is None:
                return
            session_key = self.session_key
        self._write_cache(self.cache_key_prefix + session_key, None, 0)

    def _get_session_from_db(self) -> Any:
        # The primary, not a replica: the session was probably written by the previous
        # request (SessionMiddleware saves after ReplicaMiddleware has recorded its
        # read-your-writes position), and a cache miss must not serve an older version.
        # Only cache misses come here, so the primary sees little of this traffic.
        try:
            return self.model.objects.using(router.db_for_write(self.model)).get(
                session_key=self.session_key, expire_date__gt=timezone.now())
        except (self.model.DoesNotExist, SuspiciousOperation) as exc:
            if isinstance(exc, SuspiciousOperation):
                logging.getLogger(f"django.security.{type(exc).__name__}").warning(str(exc))
            self._session_key = None
            return None

    async def aload(self) -> dict[str, Any]:
        """Async :meth:`load`."""
        if self._session_key and _suspect and self.cache_key in _suspect:
            return await sync_to_async(DBStore.load)(self)
        return await super().aload()

    async def _aget_session_from_db(self) -> Any:
        return await sync_to_async(self._get_session_from_db)()

    async def asave(self, must_create: bool = False) -> None:
        """Async :meth:`save`."""
        await sync_to_async(self.save)(must_create)

    async def adelete(self, session_key: str | None = None) -> None:
        """Async :meth:`delete`."""
        await sync_to_async(self.delete)(session_key)

    def _write_cache(self, key: str, value: dict[str, Any] | None, timeout: int) -> None:
        cache = caches[settings.SESSION_CACHE_ALIAS]
        if not isinstance(cache, TieredCache):  # another backend: Django's behaviour
            try:
                if value is None:
                    cache.delete(key)
                else:
                    cache.set(key, value, timeout)
            except Exception:
                log.exception("Error saving to cache (%s)", cache)
            return
        replicas, ack_timeout, retry_for = durability(cache)
        full = cache.make_and_validate_key(key)
        raw = None if value is None else dumps(value)
        acks = cache.l2.write_acked(full, raw, cache.get_backend_timeout(timeout),
                                    replicas=replicas, ack_timeout=ack_timeout,
                                    retry_for=retry_for)
        if cache.l1.enabled:  # not recommended for sessions, but keep L1s coherent
            cache.l1.discard(full)
            if cache.bus is not None:
                cache.l2.publish(cache.bus.keys_message([full]))
        if acks is UNAVAILABLE:
            metrics.record_session_cache_write(result="failed")
            _mark(key, True)
            # Best effort: without a cache copy, other processes read the database.
            cache.l2.run(lambda c: c.delete(full), None, write=True, keys=(full,))
            log.error("session cache write failed; session %s is served from the database",
                      "deleted" if value is None else "saved")
            return
        _mark(key, False)
        if acks < replicas:
            metrics.record_session_cache_write(result="unacked")
            log.warning("session cache write acknowledged by %d of %d replicas within %.2f s",
                        acks, replicas, ack_timeout)
        else:
            metrics.record_session_cache_write(result="acked")
