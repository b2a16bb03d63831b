"""Cross-process L1 invalidation over Redis pub/sub.

One :class:`InvalidationBus` per Redis location per process: every write through a
:class:`~djscale.cache.TieredCache` publishes the written keys on a channel, and a
daemon listener thread in every other process evicts them from its L1 stores within
milliseconds. Messages carry the publishing process's id so a process does not evict
the value it has just written itself.

A process that is not subscribed cannot know what others wrote, so the listener
flushes every registered L1 store when it loses its subscription *and* again when it
has resubscribed (values cached in between may be stale), and :attr:`connected` tells
the cache not to fill L1 from Redis meanwhile. The listener reconnects by itself with a
short back-off. If the cache's own calls reach Redis again before the listener has
resubscribed (its back-off, a pub/sub node still cut off), the cache flushes too
(:meth:`InvalidationBus.redis_back`): what this process cached during the outage may
have been overwritten by a write it was not told about. :attr:`flushes` counts the
flushes by reason and :attr:`flushed_entries` the entries they dropped (chaos reports).

Evictions are numbered: Redis publishes each with the channel's next sequence number in
one atomic step (:data:`djscale.cache.l2.Eviction`), so every listener receives them in
increasing order. Each listener records in a Redis hash the number it has applied, with a
heartbeat every second (:meth:`InvalidationBus.wait_applied`): a process that deleted keys
can wait, bounded, until every other live process has evicted them too, and only then
answer (what :func:`djscale.cache.tags.invalidate_tags` does, for the edge's "fresh once
the write has answered"). A listener that stopped heartbeating for
:data:`LIVE_SECONDS` (a process killed, cut off from Redis: its L1 is flushed when it
resubscribes) is not waited for.

Wire format: ``<origin hex>|K<sequence>|key\\0key...`` (evict keys), ``<origin hex>|k|...``
(the same, unnumbered: earlier versions) or ``<origin hex>|f|`` (flush).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import time
import uuid
import weakref
from typing import Any

from redis.exceptions import ResponseError

from djscale import metrics
from djscale.cache.l1 import LocalStore
from djscale.cache.l2 import FAILURES, UNAVAILABLE, Eviction, RedisL2

__all__ = ["InvalidationBus"]

log = logging.getLogger("djscale.cache")

_PING_EVERY = 2.0
_RECONNECT: tuple[type[BaseException], ...] = (*FAILURES, TimeoutError)
_MAX_BACKOFF = 1.0
_HEARTBEAT = 1.0
LIVE_SECONDS = 3
"""A listener whose last heartbeat is older than this is not waited for."""
_FORGET_SECONDS = 300
_ACK_EVERY = 0.002  # while evictions keep coming, acknowledge at least this often
_ACK_FAILURES: tuple[type[Exception], ...] = (*FAILURES, ResponseError)
_ACK_GIVE_UP = 2.0  # no acknowledgement went through for this long: resubscribe (flushes L1)


class InvalidationBus:
    """Publishes this process's writes and applies other processes' writes to L1."""

    def __init__(self, l2: RedisL2, channel: str) -> None:
        self.l2 = l2
        self.channel = channel
        self.origin = uuid.uuid4().hex.encode()
        self.connected = threading.Event()
        self._stores: weakref.WeakSet[LocalStore] = weakref.WeakSet()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.received = 0
        self.flushes: dict[str, int] = {}
        """Whole-L1 flushes of this process by reason (also the metric)."""
        self.flushed_entries = 0
        """Entries those flushes dropped."""
        self.applied = 0
        """The sequence number of the last eviction this process's listener applied."""
        self._warned_lag = 0.0
        self._leaving = False
        self._last_acked = 0.0
        atexit.register(self._leave)

    # ------------------------------------------------------------------ publishing side

    def register(self, store: LocalStore) -> None:
        """Have the listener evict from ``store`` too; starts the listener on first use."""
        self._stores.add(store)
        self.start()

    def keys_message(self, keys: list[str]) -> Eviction:
        """The eviction asking other processes to evict ``keys``."""
        metrics.record_invalidation(direction="sent")
        return Eviction(self.channel, self.origin, "\0".join(keys).encode())

    def flush_message(self) -> tuple[str, bytes]:
        """``(channel, message)`` asking other processes to flush their L1."""
        metrics.record_invalidation(direction="sent")
        return self.channel, self.origin + b"|f|"

    # ------------------------------------------------------------------ listener

    def start(self) -> None:
        """Start the listener thread (idempotent)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name=f"djscale-cache-bus:{self.channel}")
            self._thread.start()

    def after_fork(self) -> None:
        """In a forked child: a new identity and a new listener thread."""
        self.origin = uuid.uuid4().hex.encode()
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = None
        self.flushes = {}
        self.flushed_entries = 0
        self._leaving = False
        self._last_acked = 0.0
        if len(self._stores):
            self.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the listener (tests, process shutdown)."""
        was_connected = self.connected.is_set()
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        self.connected.clear()
        if was_connected:
            self._forget()

    def _leave(self) -> None:
        """At exit: stop, and no acknowledgement after this one puts our field back."""
        self._leaving = True
        self._stop.set()
        if self.connected.is_set():
            self._forget()

    def _forget(self) -> None:
        # Only while the listener is subscribed: a Redis that is gone (its cluster
        # stopped, a network cut) would only cost a connect timeout at exit and a
        # client's error log, for a field that ages out by itself (LIVE_SECONDS).
        if self._thread is not None:
            with contextlib.suppress(Exception):  # at interpreter exit: best effort
                self.l2.forget_listener(self.channel, self.origin)

    def wait_applied(self, sequence: int | None = None, timeout: float = 0.5) -> bool:
        """Wait until every other live process applied eviction ``sequence``.

        ``sequence`` defaults to the last eviction this thread published. True once they
        all have (at once when none is pending); False when ``timeout`` passed first or
        Redis cannot be asked (logged at most every 10 s, counted in
        ``djscale_cache_l1_sync_total``). Other processes acknowledge within a few
        milliseconds; a process whose listener is starved (CPU) or cut off is what this
        waits for.
        """
        if sequence is None:
            sequence = self.l2.last_sequence(self.channel)
            if sequence is None:
                return True
        if sequence == 0:  # it failed, or went out without a number: nothing to wait for
            metrics.record_l1_sync(result="unavailable", seconds=0.0)
            return False
        started = time.monotonic()
        deadline = started + timeout
        pause = 0.0005
        while True:
            lagging = self.l2.lagging(self.channel, sequence, self.origin,
                                      live=LIVE_SECONDS, forget=_FORGET_SECONDS)
            if lagging is UNAVAILABLE:
                metrics.record_l1_sync(result="unavailable", seconds=0.0)
                return False
            now = time.monotonic()
            if not lagging:
                metrics.record_l1_sync(result="ok", seconds=now - started)
                return True
            if now >= deadline:
                metrics.record_l1_sync(result="timeout", seconds=now - started)
                if now - self._warned_lag > 10:
                    self._warned_lag = now
                    log.warning("%d process(es) did not acknowledge cache eviction %d on %s "
                                "within %.3f s (their L1 may serve the old value until they "
                                "do): %s", len(lagging), sequence, self.channel, timeout,
                                ", ".join(o.decode(errors="replace") for o in lagging))
                return False
            time.sleep(min(pause, deadline - now))
            pause = min(pause * 2, 0.005)

    def wait_connected(self, timeout: float = 5.0) -> bool:
        """Block until subscribed; return False on timeout."""
        return self.connected.wait(timeout)

    def redis_back(self) -> None:
        """The cache reached Redis again after failures: flush L1 unless subscribed.

        While the listener is subscribed, every write another process made reached this
        L1 as an invalidation (or will, as the repair of a dropped one), so nothing needs
        to go. While it is not, L1 holds only what this process cached during the outage
        (fills from Redis are refused without a subscription), and a write elsewhere may
        have replaced any of it: drop it all now rather than when the listener is back.
        """
        if not self.connected.is_set():
            self._flush_all("redis_back")

    def _flush_all(self, reason: str) -> None:
        dropped = 0
        for store in list(self._stores):
            dropped += store.flush()
        self.flushes[reason] = self.flushes.get(reason, 0) + 1
        self.flushed_entries += dropped
        metrics.record_l1_flush(reason=reason)

    def _export_stats(self) -> None:
        """Add the lookups counted since the last export to the per-level cache metric.

        Done here, about once a second, rather than on every ``get``: a Prometheus
        increment would cost the L1 hit path more than the lookup itself.
        """
        from djscale.metrics import record_cache

        for store in list(self._stores):
            l1_hit, l1_miss, l2_hit, l2_miss = store.export_stats()
            for level, hit, count in (("l1", True, l1_hit), ("l1", False, l1_miss),
                                      ("l2", True, l2_hit), ("l2", False, l2_miss)):
                if count:
                    record_cache(level=level, hit=hit, count=count)  # type: ignore[arg-type]

    def _run(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            conn: Any = None
            pubsub: Any = None
            try:
                conn = self.l2.pubsub_connection()
                pubsub = conn.pubsub()
                pubsub.subscribe(self.channel)
                deadline = time.monotonic() + 2.0
                while True:  # wait for the subscription to be confirmed
                    msg = pubsub.get_message(timeout=0.5)
                    if msg is not None and msg["type"] == "subscribe":
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError("no subscribe confirmation")
                # Every eviction numbered up to here was published before we read the
                # number, and so was the deletion in Redis it announces: the flush below
                # drops whatever L1 held from before; what fills L1 after it is newer.
                caught_up = self.l2.current_sequence(self.channel)
                # Writes this process could not send during the outage: delete those keys
                # in Redis (and evict them everywhere) before L1 fills from Redis again.
                self.l2.repair()
                # Anything cached while we were not listening may be stale.
                self._flush_all("resubscribed")
                self.applied = caught_up
                self._acknowledge()
                self.connected.set()
                backoff = 0.05
                last_heard = last_ping = last_export = last_ack = time.monotonic()
                unacked = False
                while not self._stop.is_set():
                    msg = pubsub.get_message(timeout=0.0 if unacked else 0.5)
                    now = time.monotonic()
                    if now - last_export >= 1.0:
                        self._export_stats()
                        last_export = now
                    if msg is not None:
                        last_heard = now
                        if msg["type"] == "message" and self._apply(msg["data"]):
                            unacked = True
                    if (unacked and (msg is None or now - last_ack >= _ACK_EVERY)) \
                            or now - last_ack >= _HEARTBEAT:
                        # Once the evictions received so far are applied (or every 2 ms
                        # while they keep coming), and as a heartbeat.
                        self._acknowledge()
                        last_ack, unacked = now, False
                    if now - self._last_acked > _ACK_GIVE_UP:
                        # Writers stop waiting for a listener whose heartbeat is older
                        # than LIVE_SECONDS: stop serving L1 before they do.
                        raise TimeoutError("acknowledgements failing")
                    if msg is None and now - last_ping > _PING_EVERY:
                        # A silently dead connection (no FIN, e.g. a partition) never
                        # errors on read: ask for a pong and give up if none comes.
                        if now - last_heard > 2 * _PING_EVERY + 1:
                            raise TimeoutError("no answer to PING")
                        pubsub.ping()
                        last_ping = now
            except _RECONNECT as exc:
                if self.connected.is_set():
                    self.connected.clear()
                    self._flush_all("subscription_lost")
                    # L1 is empty: nothing for writers to wait for (if Redis hears us).
                    self._forget()
                    if not self._stop.is_set():  # not a Redis stopped after us (tests)
                        log.warning("cache invalidation subscription to %s lost (%s); L1 "
                                    "flushed, resubscribing", self.l2.location,
                                    type(exc).__name__)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
            except Exception:
                log.exception("cache invalidation listener failed; L1 flushed, restarting")
                self.connected.clear()
                self._flush_all("listener_error")
                self._forget()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
            finally:
                for closable in (pubsub, conn):
                    if closable is not None:
                        with contextlib.suppress(Exception):  # closing a dead socket
                            closable.close()
        self.connected.clear()
        self._forget()  # stopped (reset_shared_state() does not wait for us)

    def _acknowledge(self) -> None:
        if self._leaving:
            return
        try:
            self.l2.acknowledge(self.channel, self.origin, self.applied)
        except _ACK_FAILURES as exc:
            # Writers waiting for us give up at their timeout. If this goes on, writers
            # stop waiting for us after LIVE_SECONDS: the loop gives up before that.
            log.debug("could not acknowledge cache evictions on %s: %s", self.channel, exc)
        else:
            self._last_acked = time.monotonic()

    def _apply(self, data: bytes) -> bool:
        """Apply one message; True when it carried a sequence number."""
        origin, _, rest = data.partition(b"|")
        op, _, body = rest.partition(b"|")
        numbered = op[:1] == b"K"
        if numbered:
            # In order, so the last one is the highest (after a lost counter: lower, and
            # every later one is above it again).
            self.applied = int(op[1:])
        if origin == self.origin:
            # Our own write, evicted from our L1 before it was sent; nobody waits for us
            # to apply it (the writer skips itself): the next acknowledgement carries it.
            return False
        self.received += 1
        metrics.record_invalidation(direction="received")
        if op == b"f":
            self._flush_all("remote_clear")
            return True  # a clear() (FLUSHDB) took our acknowledgement with it: at once
        keys = body.decode().split("\0") if body else []
        for store in list(self._stores):
            store.discard_many(keys)
        return numbered
