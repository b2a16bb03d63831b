"""The Redis second level (L2): one client per cache location, shared by all threads.

:class:`RedisL2` talks to a single Redis node or a Redis Cluster (``cluster=True``) and
owns the wire format (``int`` as a plain Redis integer so ``INCRBY`` works, anything
else pickled), short connect/socket timeouts, no client-side retries, and the failure
policy: every call goes through :meth:`RedisL2.run`, which consults the location's
:class:`~djscale.breaker.CircuitBreaker` and turns connection errors into the
caller's fallback value. Redis *answers* (e.g. "value is not an integer") are not
failures and propagate.

:meth:`RedisL2.write_acked` is the exception to "fail fast": a write (sessions) that
must survive a master failover is sent to the key's master together with ``WAIT``, and
retried with bounded back-off while a failover is in progress.

A write that falls back (Redis unreachable: a crash, a partition) is *dropped*, so Redis
may keep the value it replaced or should have deleted. :class:`RedisL2` remembers the keys
of dropped writes (at most :data:`MAX_DROPPED` per process) and, on its first call that
reaches Redis again, deletes them there (and publishes their eviction) before anything
else is read: a cache may lose a value to an outage, it must not serve an old one after
it. A ``clear()`` that was dropped is replayed as a whole. The repair is per process: a
process that dies during the outage takes its list with it.

Like Django's ``RedisCacheClient`` it splits the client from the cache API; unlike it,
it supports Redis Cluster, reads the key's remaining TTL with the value (so L1 never
outlives L2), and fails fast.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    MovedError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from djscale import metrics
from djscale.breaker import CircuitBreaker
from djscale.errors import ConfigurationError

__all__ = ["UNAVAILABLE", "Eviction", "RedisL2", "dumps", "loads"]

log = logging.getLogger("djscale.cache")

T = TypeVar("T")

MAX_DROPPED = 100_000
"""Keys of dropped writes one process remembers for repair; beyond, it logs the loss."""

FAILURES: tuple[type[Exception], ...] = (
    RedisConnectionError, RedisTimeoutError, ClusterError, RedisClusterException, OSError,
)
# What a Redis Cluster answers while a failover is in progress (or a slot moves).
TRANSIENT: tuple[type[Exception], ...] = (
    *FAILURES, ClusterDownError, TryAgainError, MovedError,
)


class _Unavailable:
    def __repr__(self) -> str:
        return "UNAVAILABLE"

    def __bool__(self) -> bool:
        return False


UNAVAILABLE: Any = _Unavailable()
"""Fallback returned by :meth:`RedisL2.run` when Redis could not be reached."""

_PICKLE = b"\x80"

NO_ACK_BACKOFF = 5.0
"""Seconds :meth:`RedisL2.write_acked` skips WAIT on a master whose replicas did not ack."""

_INCR = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return redis.call('INCRBY', KEYS[1], ARGV[1])
"""
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Publishes an eviction with the channel's next sequence number, in one atomic step, so
# numbers reach every subscriber in increasing order. The number is the previous one + 1
# or the server's time in microseconds, whichever is higher: numbers keep going up when
# the counter is lost (FLUSHDB, a Redis restarted empty) or goes back (restored from an
# older RDB/AOF, a lagging replica promoted), as long as evictions average fewer than a
# million a second and the server's clock does not go back. Lua's numbers are doubles,
# exact below 2^53 (µs since 1970: until the year 2255); they travel as strings ('%.0f':
# a plain `..` prints 14 digits).
_EVICT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = tonumber(redis.call('GET', KEYS[1]) or '0') + 1
if now > n then n = now end
local s = string.format('%.0f', n)
redis.call('SET', KEYS[1], s)
redis.call('PUBLISH', ARGV[1], ARGV[2] .. '|K' .. s .. '|' .. ARGV[3])
return s
"""
# A listener's acknowledgement: ``<applied sequence> <server time, s>`` in its field.
_ACK = """
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. t[1])
return t[1]
"""
# The listeners (fields) that heartbeat within ARGV[3] s and have not applied sequence
# ARGV[1], other than ARGV[2] (the caller); fields silent for ARGV[4] s are removed.
# Sequences compare as decimal strings: by length, then characters.
_LAGGING = """
local now = tonumber(redis.call('TIME')[1])
local want = ARGV[1]
local lag = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local v = all[i + 1]
  local sp = string.find(v, ' ', 1, true)
  local applied, at = '', 0
  if sp then applied, at = string.sub(v, 1, sp - 1), tonumber(string.sub(v, sp + 1)) or 0 end
  if now - at > tonumber(ARGV[4]) then
    redis.call('HDEL', KEYS[1], all[i])
  elseif all[i] ~= ARGV[2] and now - at <= tonumber(ARGV[3])
      and (#applied < #want or (#applied == #want and applied < want)) then
    lag[#lag + 1] = all[i]
  end
end
return lag
"""


class Eviction(NamedTuple):
    """Keys to evict from every other process's L1, published with a sequence number.

    On the wire: ``<origin>|K<sequence>|<body>`` on ``channel`` (see
    :mod:`djscale.cache.bus`); the sequence key is :func:`sequence_key` of the channel.
    """

    channel: str
    origin: bytes
    body: bytes


Publish = Eviction | tuple[str, bytes]
"""What a write publishes: an eviction (sequenced) or a plain ``(channel, message)``."""


def sequence_key(channel: str) -> str:
    """The Redis key numbering ``channel``'s evictions (a hash tag: one cluster slot)."""
    return "{" + channel + "}:seq"


def acks_key(channel: str) -> str:
    """The Redis hash of ``channel``'s listeners: ``origin -> "<applied> <heartbeat>"``."""
    return "{" + channel + "}:acks"


def dumps(value: Any) -> bytes | int:
    """Serialize for Redis: exact ``int`` as is (INCR-able), anything else pickled."""
    if type(value) is int:
        return value
    return pickle.dumps(value, pickle.HIGHEST_PROTOCOL)


def loads(raw: bytes | int) -> Any:
    """Inverse of :func:`dumps` (also accepts the bytes Redis returns for an integer)."""
    if type(raw) is int:
        return raw
    assert isinstance(raw, bytes)
    if raw[:1] == _PICKLE:
        return pickle.loads(raw)
    return int(raw)


def as_payload(raw: bytes) -> bytes | int:
    """What L1 keeps for bytes read from Redis (integers decoded once)."""
    return raw if raw[:1] == _PICKLE else int(raw)


class RedisL2:
    """Redis access for one cache location with fail-fast timeouts and a breaker."""

    def __init__(self, servers: list[str], *, cluster: bool = False,
                 connect_timeout: float = 0.25, socket_timeout: float = 0.5,
                 max_connections: int = 64, failure_threshold: int = 2,
                 reset_timeout: float = 0.5, max_reset_timeout: float = 5.0,
                 connection_kwargs: dict[str, Any] | None = None) -> None:
        if not servers:
            raise ConfigurationError("TieredCache LOCATION is empty: give it a redis:// URL "
                                     "(or several for a Redis Cluster)")
        self.servers = servers
        self.cluster = cluster
        self.location = ",".join(servers)
        # Consecutive failures, not a rate: a Redis that refuses connections fails every
        # call, and one refused call per back-off period is all an outage should cost.
        self.breaker = CircuitBreaker(f"redis {self.location}", failure_rate=None,
                                      consecutive_failures=max(1, failure_threshold),
                                      reset_timeout=reset_timeout,
                                      max_reset_timeout=max(reset_timeout, max_reset_timeout))
        kwargs: dict[str, Any] = {
            "socket_connect_timeout": connect_timeout,
            "socket_timeout": socket_timeout,
            "retry": Retry(NoBackoff(), 0),
            **(connection_kwargs or {}),
        }
        self._kwargs = kwargs
        self.client: Any
        if cluster:
            from redis.cluster import ClusterNode, RedisCluster

            nodes = []
            for url in servers:
                parts = urlsplit(url if "//" in url else f"redis://{url}")
                nodes.append(ClusterNode(parts.hostname or "127.0.0.1", parts.port or 6379))
            # A cluster client takes nodes, not URLs: rediss:// URLs ask for TLS here.
            tls: dict[str, Any] = ({"ssl": True} if any(u.startswith("rediss://") for u in servers)
                                   else {})
            self.client = RedisCluster(startup_nodes=nodes, max_connections=max_connections,
                                       **tls, **kwargs)
        else:
            self.client = redis.Redis.from_url(servers[0], max_connections=max_connections,
                                               **kwargs)
        metrics.declare_cache_location(location=self.location)
        self._incr = self.client.register_script(_INCR)
        self._unlock = self.client.register_script(_UNLOCK)
        self._evict = self.client.register_script(_EVICT)
        self._ack = self.client.register_script(_ACK)
        self._lagging = self.client.register_script(_LAGGING)
        self._sequences = threading.local()
        self._warned = threading.Event()
        # node -> (when its current outage began, its latest failure), for write_acked
        self._outages: dict[str, tuple[float, float]] = {}
        self._no_ack_until: dict[str, float] = {}
        self._dropped: set[str] = set()
        self._dropped_clear = False
        self._dropped_lock = threading.Lock()
        self.repair_message: Callable[[list[str]], Publish | None] | None = None
        """Builds the eviction message published for repaired keys (set by the cache)."""
        self.repair_flush_message: Callable[[], Publish] | None = None
        """Builds the flush message published after a replayed ``clear()`` (set by the cache)."""
        self.on_reachable: list[Callable[[], None]] = []
        """Called on the first call that reaches Redis after failed ones (the caches
        flush L1 there when their listener is not subscribed yet)."""

    # ------------------------------------------------------------------ failure policy

    def run(self, op: Callable[[Any], T], fallback: T, *, write: bool = False,
            keys: Iterable[str] | None = None) -> T:
        """Call ``op(client)``; on an unreachable Redis return ``fallback`` instead.

        Writes that fall back are counted as dropped and logged (once per outage), and
        their ``keys`` (None: every key, a clear) are repaired once Redis is back.
        """
        if not self.breaker.allow():
            metrics.record_l2_skipped(location=self.location)
            if write:
                metrics.record_write_dropped(location=self.location)
                self._note_dropped(keys)
            return fallback
        try:
            if self._dropped or self._dropped_clear:
                self.repair()
            result = op(self.client)
        except FAILURES as exc:
            metrics.record_l2_error(location=self.location)
            if write:
                metrics.record_write_dropped(location=self.location)
                self._note_dropped(keys)
            if self.breaker.on_failure() or not self._warned.is_set():
                self._warned.set()
                log.warning("Redis cache %s unreachable (%s: %s); serving from L1 / "
                            "computing through and dropping cache writes until it returns",
                            self.location, type(exc).__name__, exc)
            return fallback
        if self._warned.is_set():
            self._warned.clear()
            log.warning("Redis cache %s reachable again", self.location)
            for callback in self.on_reachable:
                callback()
        self.breaker.on_success()
        return result

    def _note_dropped(self, keys: Iterable[str] | None) -> None:
        with self._dropped_lock:
            if keys is None:
                self._dropped_clear = True
                self._dropped.clear()
                return
            if self._dropped_clear:
                return  # the clear covers them
            for key in keys:
                if len(self._dropped) >= MAX_DROPPED:
                    log.error("more than %d cache writes to %s were dropped during this "
                              "outage; the others may serve their old value until it expires",
                              MAX_DROPPED, self.location)
                    return
                self._dropped.add(key)

    def repair(self) -> int:
        """Delete in Redis the keys of writes dropped during an outage; how many (or -1: clear).

        Raises a Redis failure (the caller's :meth:`run` treats it as one) and keeps the
        keys for the next attempt.
        """
        with self._dropped_lock:
            keys, cleared = list(self._dropped), self._dropped_clear
            self._dropped.clear()
            self._dropped_clear = False
        if not keys and not cleared:
            return 0
        try:
            if cleared:
                if self.cluster:
                    self.client.flushdb(target_nodes=self.client.PRIMARIES)
                else:
                    self.client.flushdb()
            else:
                pipe = self.client.pipeline(transaction=False)
                for key in keys:  # one DEL per key: keys of a cluster live in different slots
                    pipe.delete(key)
                pipe.execute()
            if cleared:
                message = self.repair_flush_message() if self.repair_flush_message else None
            else:
                message = self.repair_message(keys) if self.repair_message and keys else None
            if message is not None:
                self._send(self.client, message)
        except BaseException:
            with self._dropped_lock:
                if cleared:
                    self._dropped_clear = True
                else:
                    self._dropped.update(keys)
            raise
        log.warning("Redis cache %s reachable again: %s written during the outage", self.location,
                    "cleared, as a clear() was" if cleared else f"deleted {len(keys)} keys "
                    "whose writes were dropped")
        return -1 if cleared else len(keys)

    @property
    def available(self) -> bool:
        """False while the breaker is open (Redis known to be unreachable)."""
        return self.breaker.state != "open"

    # ------------------------------------------------------------------ operations

    def get(self, key: str) -> tuple[bytes | None, float | None] | Any:
        """``(raw, ttl_seconds)``, ``(None, None)`` on a miss, UNAVAILABLE when down."""
        def op(c: Any) -> tuple[bytes | None, float | None]:
            pipe = c.pipeline(transaction=False)
            pipe.get(key)
            pipe.pttl(key)
            raw, pttl = pipe.execute()
            return raw, _ttl(pttl)
        return self.run(op, UNAVAILABLE)

    def get_many(self, keys: list[str]) -> dict[str, tuple[bytes, float | None]] | Any:
        """Found keys -> ``(raw, ttl_seconds)``; UNAVAILABLE when down."""
        def op(c: Any) -> dict[str, tuple[bytes, float | None]]:
            pipe = c.pipeline(transaction=False)
            for key in keys:
                pipe.get(key)
                pipe.pttl(key)
            got = pipe.execute()
            return {k: (got[2 * i], _ttl(got[2 * i + 1])) for i, k in enumerate(keys)
                    if got[2 * i] is not None}
        return self.run(op, UNAVAILABLE)

    def set(self, key: str, raw: bytes | int, timeout: int | None,
            publish: Publish | None = None) -> bool:
        """SET with expiry (0: delete); return False if Redis was unreachable."""
        def op(c: Any) -> bool:
            pipe = c.pipeline(transaction=False)
            if timeout == 0:
                pipe.delete(key)
            else:
                pipe.set(key, raw, ex=timeout)
            self._publish(c, pipe, publish)
            return True
        return self.run(op, False, write=True, keys=(key,))

    def add(self, key: str, raw: bytes | int, timeout: int | None,
            publish: Publish | None = None) -> bool | Any:
        """SET NX; True if stored, False if present, UNAVAILABLE when down."""
        def op(c: Any) -> bool:
            if timeout == 0:
                stored = bool(c.set(key, raw, nx=True))
                if stored:
                    c.delete(key)
                return stored
            stored = bool(c.set(key, raw, ex=timeout, nx=True))
            if stored and publish is not None:
                self._send(c, publish)
            return stored
        return self.run(op, UNAVAILABLE, write=True, keys=(key,))

    def set_many(self, data: dict[str, bytes | int], timeout: int | None,
                 publish: Publish | None = None) -> bool:
        """SET several keys in one round trip; False if Redis was unreachable."""
        def op(c: Any) -> bool:
            pipe = c.pipeline(transaction=False)
            for key, raw in data.items():
                if timeout == 0:
                    pipe.delete(key)
                else:
                    pipe.set(key, raw, ex=timeout)
            self._publish(c, pipe, publish)
            return True
        return self.run(op, False, write=True, keys=data)

    def delete(self, keys: Iterable[str], publish: Publish | None = None) -> int | Any:
        """DEL; how many keys existed, UNAVAILABLE when down."""
        keys = list(keys)

        def op(c: Any) -> int:
            pipe = c.pipeline(transaction=False)
            for key in keys:  # one DEL per key: keys of a cluster live in different slots
                pipe.delete(key)
            results = self._publish(c, pipe, publish)
            return sum(int(r) for r in results[:len(keys)])
        return self.run(op, UNAVAILABLE, write=True, keys=keys)

    def touch(self, key: str, timeout: int | None,
              publish: Publish | None = None) -> bool:
        """EXPIRE / PERSIST / DEL (timeout 0); True if the key existed."""
        def op(c: Any) -> bool:
            pipe = c.pipeline(transaction=False)
            if timeout is None:
                pipe.persist(key)
                pipe.exists(key)
            elif timeout == 0:
                pipe.delete(key)
            else:
                pipe.expire(key, timeout)
            results = self._publish(c, pipe, publish)
            return bool(results[1]) if timeout is None else bool(results[0])
        return self.run(op, False, write=True, keys=(key,))

    def has_key(self, key: str) -> bool | Any:
        """EXISTS; UNAVAILABLE when down."""
        return self.run(lambda c: bool(c.exists(key)), UNAVAILABLE)

    def incr(self, key: str, delta: int,
             publish: Publish | None = None) -> int | Any | None:
        """Atomic INCRBY of an existing key: new value, None if missing, UNAVAILABLE."""
        def op(c: Any) -> int | None:
            try:
                value = self._incr(keys=[key], args=[delta], client=c)
            except ResponseError as exc:
                raise TypeError(f"cannot increment the value of {key!r}: "
                                "it is not an integer") from exc
            if value is not None and publish is not None:
                self._send(c, publish)
            return None if value is None else int(value)
        return self.run(op, UNAVAILABLE, write=True, keys=(key,))

    def incr_create(self, key: str, delta: int, timeout: int | None) -> int | Any:
        """INCRBY creating the key at 0 (atomic counters); UNAVAILABLE when down."""
        def op(c: Any) -> int:
            pipe = c.pipeline(transaction=False)
            pipe.incrby(key, delta)
            if timeout is not None:
                pipe.expire(key, timeout, nx=True)
            return int(pipe.execute()[0])
        return self.run(op, UNAVAILABLE, write=True, keys=(key,))

    def clear(self, publish: Publish | None = None) -> bool:
        """FLUSHDB (every primary of a cluster); False if Redis was unreachable."""
        def op(c: Any) -> bool:
            if self.cluster:
                c.flushdb(target_nodes=c.PRIMARIES)
            else:
                c.flushdb()
            if publish is not None:
                self._send(c, publish)
            return True
        return self.run(op, False, write=True)

    def lock(self, key: str, token: str, ttl_ms: int) -> bool | Any:
        """SET NX PX: True if this caller now holds the lock; UNAVAILABLE when down."""
        return self.run(lambda c: bool(c.set(key, token, nx=True, px=ttl_ms)), UNAVAILABLE)

    def unlock(self, key: str, token: str) -> None:
        """Release the lock if this caller still holds it."""
        self.run(lambda c: self._unlock(keys=[key], args=[token], client=c), None)

    def publish(self, publish: Publish) -> None:
        """Publish an eviction or a message (cluster-wide in a Redis Cluster)."""
        self.run(lambda c: self._send(c, publish), None)

    def write_acked(self, key: str, raw: bytes | int | None, timeout: int | None, *,
                    replicas: int, ack_timeout: float, retry_for: float) -> int | Any:
        """SET ``key`` (DEL when ``raw`` is None or ``timeout`` is 0), then ``WAIT``.

        The write and ``WAIT replicas <ack_timeout ms>`` go to the key's master on one
        connection, so the answer says how many replicas hold *this* write: a replica
        promoted after the master dies has it. Connection errors, ``CLUSTERDOWN``,
        ``TRYAGAIN`` and ``MOVED``/``ASK`` (a failover or slot move in progress) are
        retried with back-off (50 ms doubling to 0.5 s), refreshing the slot map between
        tries, for at most ``retry_for`` seconds *per outage of the key's master*: once
        writes to that node have failed for longer than that, each call tries once and
        gives up, so a long outage does not make every caller wait (writes to other
        masters are unaffected). The circuit breaker is not consulted (this path exists
        to outlast a failover). WAIT blocks at most ``ack_timeout`` (capped below the
        socket timeout); a master whose replicas did not ack in time (none is attached,
        e.g. right after a promotion) is written without WAIT for ``NO_ACK_BACKOFF``
        seconds, so writes do not all pay the timeout. Return the number of replicas that
        acknowledged (fewer than ``replicas`` when they did not ack, 0 when ``replicas``
        is 0), or UNAVAILABLE when the write could not be made.
        """
        delete = raw is None or timeout == 0
        # WAIT must answer before the socket times out, or a slow ack looks like a dead node.
        ack_ms = max(1, int(min(ack_timeout, 0.8 * float(self._kwargs["socket_timeout"]))
                            * 1000))
        deadline: float | None = None
        pause = 0.05
        ask: tuple[str, int] | None = None
        node = "?"  # the key's master, once known
        while True:
            try:
                node = "?"
                conn = self._node_client(key, ask)
                node = self._node_name(conn)
                wait = replicas > 0 and self._no_ack_until.get(node, 0.0) <= time.monotonic()
                pipe = conn.pipeline(transaction=False)
                if ask is not None:
                    pipe.execute_command("ASKING")
                if delete:
                    pipe.delete(key)
                else:
                    pipe.set(key, raw, ex=timeout)
                if wait:
                    pipe.execute_command("WAIT", replicas, ack_ms)
                results = pipe.execute()
            except TRANSIENT as exc:  # first: MovedError is a subclass of AskError
                ask = None
                now = time.monotonic()
                if deadline is None:
                    deadline = self._outage_began(node, now, retry_for) + retry_for
                else:
                    self._outage_began(node, now, retry_for)
                metrics.record_l2_error(location=self.location)
                if now + pause > deadline:
                    metrics.record_write_dropped(location=self.location)
                    log.warning("Redis %s: acknowledged write of %r failed for %.1f s "
                                "(%s: %s); giving up", self.location, key, retry_for,
                                type(exc).__name__, exc)
                    return UNAVAILABLE
                if not isinstance(exc, MovedError):
                    time.sleep(pause)
                    pause = min(pause * 2, 0.5)
                if self.cluster:
                    with contextlib.suppress(*FAILURES):
                        self.client.nodes_manager.initialize()
                continue
            except AskError as exc:  # the slot is migrating: this key is on the target
                if deadline is None:
                    deadline = time.monotonic() + retry_for
                if time.monotonic() > deadline:
                    metrics.record_write_dropped(location=self.location)
                    return UNAVAILABLE
                if ask is not None:  # a second ASK in a row: let the slot map settle
                    ask = None
                    time.sleep(pause)
                else:
                    ask = (exc.host, exc.port)
                continue
            self._outages.pop(node, None)
            if self._dropped:
                with self._dropped_lock:  # this write supersedes a dropped one: keep it
                    self._dropped.discard(key)
            acks = int(results[-1]) if wait else 0
            if replicas > 0 and acks < replicas:
                # A master without (enough) live replicas, e.g. just promoted: do not make
                # every write wait for acks that cannot come; ask again a little later.
                self._no_ack_until[node] = time.monotonic() + NO_ACK_BACKOFF
            elif wait:
                self._no_ack_until.pop(node, None)
            return acks

    def _outage_began(self, node: str, now: float, retry_for: float) -> float:
        """Record a failure of ``node``; when did its current outage begin?

        Failures less than ``retry_for`` apart belong to one outage; a success ends it.
        """
        began, last = self._outages.get(node, (now, now))
        if now - last > retry_for:
            began = now  # the node's earlier outage ended without a write to tell
        self._outages[node] = (began, now)
        return began

    @staticmethod
    def _node_name(conn: Any) -> str:
        kw = conn.connection_pool.connection_kwargs
        return f"{kw.get('host')}:{kw.get('port')}"

    def _node_client(self, key: str, ask: tuple[str, int] | None) -> Any:
        """The client of the node that holds ``key`` (the master of its slot)."""
        if not self.cluster:
            return self.client
        if ask is not None:
            node = self.client.get_node(host=ask[0], port=ask[1])
            if node is not None:
                return self.client.get_redis_connection(node)
        return self.client.get_redis_connection(self.client.get_node_from_key(key))

    def close(self) -> None:
        """Close every pooled connection."""
        with contextlib.suppress(*FAILURES):
            self.client.close()

    def _publish(self, client: Any, pipe: Any, publish: Publish | None) -> list[Any]:
        if isinstance(publish, Eviction):
            self._sent(publish.channel, 0)  # unknown until the eviction is published
        if publish is not None and not self.cluster:
            if isinstance(publish, Eviction):
                # EVAL, not the registered script: a pipeline holding a script asks
                # SCRIPT EXISTS first, a second round trip on every write.
                pipe.eval(_EVICT, 1, sequence_key(publish.channel), publish.channel,
                          publish.origin, publish.body)
            else:
                pipe.publish(*publish)
        results: list[Any] = pipe.execute(raise_on_error=False)
        errors = [r for r in results if isinstance(r, Exception)]
        if isinstance(publish, Eviction) and not self.cluster:
            if isinstance(results[-1], ResponseError):
                # Refused (Redis out of memory under noeviction): the writes before it
                # may have gone through; evict without a number.
                errors.remove(results[-1])
                self._unnumbered(client, publish, results[-1])
            elif not isinstance(results[-1], Exception):
                self._sent(publish.channel, results[-1])
        if errors:
            raise errors[0]
        if publish is not None and self.cluster:
            self._send(client, publish)
        return results

    def _send(self, client: Any, publish: Publish) -> None:
        """Publish now on ``client`` (an eviction with its sequence number)."""
        if not isinstance(publish, Eviction):
            client.publish(*publish)
            return
        self._sent(publish.channel, 0)
        # Out of memory, or (Redis Cluster) the master holding the channel's counter is
        # down while the keys' masters answered: evict without a number.
        refused: tuple[type[Exception], ...] = ((ResponseError, *FAILURES) if self.cluster
                                                else (ResponseError,))
        try:
            number = self._evict(keys=[sequence_key(publish.channel)],
                                 args=[publish.channel, publish.origin, publish.body],
                                 client=client)
        except refused as exc:
            self._unnumbered(client, publish, exc)
        else:
            self._sent(publish.channel, number)

    def _unnumbered(self, client: Any, publish: Eviction, why: Exception) -> None:
        log.warning("cache eviction on %s published without a sequence number (%s): a "
                    "wait_for_l1() after it returns False", publish.channel, why)
        client.publish(publish.channel, publish.origin + b"|k|" + publish.body)

    def _sent(self, channel: str, sequence: Any) -> None:
        seen: dict[str, int] = self._sequences.__dict__.setdefault("last", {})
        seen[channel] = int(sequence)

    def forget_sequences(self) -> None:
        """Forget what every thread published (a forked child: its own writes only)."""
        self._sequences = threading.local()

    def last_sequence(self, channel: str) -> int | None:
        """The sequence number of the last eviction this *thread* published on ``channel``:
        None when it published none, 0 when the last one's number is unknown (it failed
        or went out unnumbered)."""
        seen: dict[str, int] = self._sequences.__dict__.get("last", {})
        return seen.get(channel)

    def current_sequence(self, channel: str) -> int:
        """The last sequence number handed out on ``channel`` (0: none yet). Raises on a
        Redis failure."""
        raw = self.client.get(sequence_key(channel))
        return int(raw) if raw is not None else 0

    def acknowledge(self, channel: str, origin: bytes, applied: int) -> None:
        """Record that listener ``origin`` applied every eviction up to ``applied`` (and is
        alive). Raises on a Redis failure."""
        self._ack(keys=[acks_key(channel)], args=[origin, str(applied)], client=self.client)

    def forget_listener(self, channel: str, origin: bytes) -> None:
        """Remove listener ``origin`` (it stops); failures are ignored."""
        with contextlib.suppress(*FAILURES):
            self.client.hdel(acks_key(channel), origin)

    def lagging(self, channel: str, sequence: int, origin: bytes, *, live: float,
                forget: float) -> list[bytes] | Any:
        """The live listeners (heartbeat within ``live`` s) other than ``origin`` that have
        not applied ``sequence``; UNAVAILABLE when Redis is down."""
        def op(c: Any) -> list[bytes]:
            found: list[bytes] = self._lagging(
                keys=[acks_key(channel)],
                args=[str(sequence), origin, int(live), int(forget)], client=c)
            return found
        return self.run(op, UNAVAILABLE)

    def pubsub_connection(self) -> Any:
        """A plain client to subscribe with (in a cluster: the first reachable node)."""
        errors = []
        for url in self.servers:
            conn = redis.Redis.from_url(url if "//" in url else f"redis://{url}",
                                        **self._kwargs)
            if not self.cluster:
                return conn
            try:
                conn.ping()
                return conn
            except FAILURES as exc:
                errors.append(exc)
                conn.close()
        raise RedisConnectionError(f"no cluster node reachable: {errors}")


def _ttl(pttl: int | None) -> float | None:
    if pttl is None or pttl < 0:
        return None
    return pttl / 1000.0
