"""One invalidation, every layer: a tagged model's save or delete purges what shows it.

::

    from djscale.edge import register
    register(Product, tags=lambda p: [f"shop.category:{p.category_id}"],
             paths=lambda p: [f"/api/products/{p.pk}"])

After each save or delete of a ``Product`` **that commits** (``transaction.on_commit``;
a rolled-back write purges nothing), the instance's tags (``shop.product``,
``shop.product:<pk>``, plus the ``tags`` callable's) are invalidated by steps 2-4 below
in the committing request itself (``EDGE["INLINE"]``, the default: one attempt, before
the request answers, so an update is visible at the edge as soon as the write's response
is; measured in docs/edge.md), or else (outside a request, or ``INLINE`` off) handed to
one background thread per process, which also takes over a failed inline attempt:

1. gathers for ``EDGE["BATCH_MS"]`` whatever else arrives (one purge for a burst of writes);
2. waits, at most ``EDGE["WAIT_FOR_REPLICAS"]`` seconds, until the replicas of the
   written database have replayed the primary's WAL position: otherwise the refetch the
   purge triggers could read the old row from a lagging replica and cache it again;
3. evicts the ``@cached(tags=...)`` entries with those tags from every cache of
   ``EDGE["CACHES"]`` (Redis, and every process's L1 through the invalidation bus);
4. purges the tags (and ``paths``) at the edge through the configured
   :mod:`~djscale.edge.purge` backend;

retrying steps 3-4 ``EDGE["RETRIES"]`` times with exponential back-off. A batch given up is
logged (error, with its tags) and counted (``djscale_edge_purge_failures_total``); its pages
stay stale at the edge at most their TTL (``s-maxage``/``max-age``), which is why public
pages should keep that TTL short when they are not purged.

5. ``EDGE["REPURGE_MS"]`` after the commit, and again once every L1 copy read before the
   write has expired (the caches' ``L1_TIMEOUT`` + 0.5 s), steps 2-4 once more for the
   same tags. A request that read the old data (an L1 not yet told, Redis not yet
   evicted, a replica that lagged past the wait) *before* the first purge can finish
   *after* it and store the old page again, in Redis and at the edge, for its whole TTL:
   measured, 1 update in 40 stayed stale 30 s at the edge without the first repurge, and
   1 in ~250 under wrk with it alone (more than 10 s). The passes remove what such
   requests stored; Varnish coalesces requests for one object, so once the page is fresh
   at the edge no older fetch of it is pending.

:func:`invalidate` asks for the same by hand (tags or objects), :func:`flush` waits until
everything asked so far is done (tests, management commands before they exit).
"""

from __future__ import annotations

import atexit
import heapq
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.core.cache import caches
from django.db import connections, transaction
from django.db.models import Model
from django.db.models.signals import post_delete, post_save

from djscale import conf, metrics
from djscale.cache.tags import invalidate_tags
from djscale.db import lag
from djscale.edge.purge import Purger, purger
from djscale.edge.tags import TagItem, tags_of
from djscale.errors import PurgeError
from djscale.http.cache_control import request_started

__all__ = ["Invalidator", "flush", "invalidate", "invalidator", "register"]

log = logging.getLogger("djscale.edge")

_BACKOFF = 0.05
INLINE_BUDGET = 1.0
"""Seconds an inline invalidation may take before the process stops doing them inline."""
INLINE_PAUSE = 10.0
"""Seconds the invalidations go to the background after a failed or slow inline one
(an edge that hangs, a replica that lags), so writes do not each pay for it."""


@dataclass(frozen=True)
class _Item:
    tags: list[str]
    paths: list[str]
    alias: str | None
    at: float
    purged: bool = False
    """Already evicted and purged in the committing thread: only its repurge is left."""


@dataclass
class _Batch:
    tags: dict[str, None] = field(default_factory=dict)
    paths: dict[str, None] = field(default_factory=dict)
    aliases: set[str] = field(default_factory=set)
    committed_at: float = 0.0

    def add(self, tags: Iterable[str], paths: Iterable[str], alias: str | None,
            at: float) -> None:
        self.tags.update(dict.fromkeys(tags))
        self.paths.update(dict.fromkeys(paths))
        if alias:
            self.aliases.add(alias)
        self.committed_at = min(self.committed_at, at) if self.committed_at else at


class Invalidator:
    """The per-process background worker of the module docstring."""

    def __init__(self, edge: Purger | None = None, *, settings: conf.EdgeSettings | None = None
                 ) -> None:
        self.settings = settings if settings is not None else conf.get().edge
        self.edge = edge if edge is not None else purger(self.settings)
        self._queue: queue.Queue[_Item] = queue.Queue()
        self._pending = 0
        self._done = threading.Condition()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        # (due, sequence, batch, pass): a heap, the next due first.
        self._repurges: list[tuple[float, int, _Batch, int]] = []
        self._sequence = itertools.count()
        self._inline_paused_until = 0.0

    def submit(self, tags: Sequence[str], paths: Sequence[str] = (), *,
               using: str | None = None) -> None:
        """Queue an invalidation (now: call it from ``on_commit``)."""
        if not tags and not paths:
            return
        self._put(_Item(list(tags), list(paths), using, time.monotonic()))

    def run(self, tags: Sequence[str], paths: Sequence[str] = (), *,
            using: str | None = None) -> None:
        """Invalidate now, in this thread (one attempt); on failure, as :meth:`submit`.

        What ``EDGE["INLINE"]`` does from ``on_commit``: the request that wrote answers
        once the edge and the caches forgot the old data, so whoever reads after that
        answer, anywhere, gets the new one. A failed attempt is retried in the
        background (and counted) as a submitted one is. After a failed attempt, or one
        slower than :data:`INLINE_BUDGET`, the next :data:`INLINE_PAUSE` seconds of
        invalidations are submitted instead: an edge that hangs or a lagging replica
        costs one write that wait, not every write.
        """
        if not tags and not paths:
            return
        item = _Item(list(tags), list(paths), using, time.monotonic())
        if item.at < self._inline_paused_until:
            self._put(item)
            return
        batch = _Batch()
        batch.add(item.tags, item.paths, item.alias, item.at)
        try:
            done = self._process(batch, attempts=1, quiet=True)
        except Exception:  # noqa: BLE001 - the background thread retries and reports
            done = False
        took = time.monotonic() - item.at
        if not done or took > INLINE_BUDGET:
            self._inline_paused_until = time.monotonic() + INLINE_PAUSE
            log.warning("edge invalidation in the request %s (%.2f s): the next %.0f s of "
                        "invalidations run in the background", "failed" if not done
                        else "was slow", took, INLINE_PAUSE)
        if done and not self.settings.repurge_ms:
            return
        self._put(_Item(item.tags, item.paths, using, item.at, purged=done))

    def _put(self, item: _Item) -> None:
        with self._done:
            self._pending += 1
        self._queue.put(item)
        self._start()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every submitted invalidation is done (or given up); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._done:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._done.wait(left)
        return True

    def _start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                # Started on first use: after gunicorn's fork, in the worker that writes.
                self._thread = threading.Thread(target=self._run, name="djscale-edge-purge",
                                                daemon=True)
                self._thread.start()

    def _next(self) -> _Item | None:
        """The next submission, or None when a repurge is due first."""
        while True:
            if not self._repurges:
                return self._queue.get()
            left = self._repurges[0][0] - time.monotonic()
            if left <= 0:
                return None
            try:
                return self._queue.get(timeout=left)
            except queue.Empty:
                continue

    def repurge_delays(self) -> list[float]:
        """Seconds after a purge when it is done again: ``EDGE["REPURGE_MS"]``, then once
        every L1 copy read before the write has expired (the caches' ``L1_TIMEOUT`` + 0.5 s).
        """
        if not self.settings.repurge_ms:
            return []
        first = self.settings.repurge_ms / 1000
        l1 = max((float(getattr(caches[alias], "_opts", {}).get("L1_TIMEOUT") or 0)
                  for alias in self.settings.caches), default=0.0)
        return [first] if l1 + 0.5 <= first else [first, l1 + 0.5]

    def _repurge(self) -> None:
        _, _, batch, stage = heapq.heappop(self._repurges)
        tags, paths = list(batch.tags), list(batch.paths)
        try:
            # A replica that lagged past the first pass's wait may have served the old
            # row since: wait for it again (bounded) before evicting what it gave.
            self._wait_for_replicas(batch.aliases)
            for alias in self.settings.caches if tags else ():
                invalidate_tags(caches[alias], tags)
            if self.edge is not None:
                self.edge.purge(tags, paths)
        except Exception as exc:  # noqa: BLE001 - the first purge succeeded; TTL bounds it
            log.warning("edge repurge of %s failed: %s", " ".join(tags), exc)
        finally:
            self._schedule_repurge(batch, stage + 1)
            with self._done:
                self._pending -= 1
                self._done.notify_all()

    def _schedule_repurge(self, batch: _Batch, stage: int = 0) -> None:
        delays = self.repurge_delays()
        if stage >= len(delays):
            return
        with self._done:
            self._pending += 1  # flush() waits for the repurges too
        heapq.heappush(self._repurges, (batch.committed_at + delays[stage],
                                        next(self._sequence), batch, stage))

    def _run(self) -> None:
        while True:
            first = self._next()
            if first is None:
                self._repurge()
                continue
            batch, count = _Batch(), 0
            items = [first]
            deadline = time.monotonic() + self.settings.batch_ms / 1000
            while True:
                if items[-1].purged:
                    # Purged in its own thread: only the repurge is left.
                    done = _Batch()
                    done.add(items[-1].tags, items[-1].paths, items[-1].alias, items[-1].at)
                    self._schedule_repurge(done)
                else:
                    batch.add(items[-1].tags, items[-1].paths, items[-1].alias, items[-1].at)
                count += 1
                try:
                    items.append(self._queue.get(
                        timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            try:
                if (batch.tags or batch.paths) and self._process(batch):
                    self._schedule_repurge(batch)
            except Exception:
                log.exception("edge invalidation of %s failed", " ".join(batch.tags))
            finally:
                with self._done:
                    self._pending -= count
                    self._done.notify_all()

    def _process(self, batch: _Batch, *, attempts: int = 0, quiet: bool = False) -> bool:
        """Evict and purge ``batch`` (with retries); False when given up.

        ``quiet``: a failure is neither logged nor counted (the caller hands it on).
        """
        tags, paths = list(batch.tags), list(batch.paths)
        self._wait_for_replicas(batch.aliases)
        attempts = attempts or self.settings.retries + 1
        failure: Exception | None = None
        for attempt in range(attempts):
            try:
                evicted = sum(invalidate_tags(caches[alias], tags)
                              for alias in self.settings.caches) if tags else 0
                if self.edge is not None:
                    self.edge.purge(tags, paths)
            except PurgeError as exc:
                failure = exc
            except Exception as exc:  # noqa: BLE001 - a cache's own errors (Redis down)
                failure = exc
            else:
                metrics.record_edge_purge(result="ok",
                                          seconds=time.monotonic() - batch.committed_at,
                                          evicted=evicted)
                return True
            if quiet:
                metrics.record_edge_purge(result="retry")
                log.warning("edge purge of %d tag(s) in the committing thread failed, "
                            "retrying in the background: %s", len(tags), failure)
                return False
            if attempt + 1 < attempts:
                metrics.record_edge_purge(result="retry")
                log.warning("edge purge of %d tag(s) failed (attempt %d of %d), retrying: %s",
                            len(tags), attempt + 1, attempts, failure)
                time.sleep(_BACKOFF * 2 ** attempt)
        metrics.record_edge_purge(result="failed")
        log.error("edge purge gave up after %d attempts; these pages stay stale until their "
                  "TTL: tags=%s paths=%s (%s)", attempts, " ".join(tags), " ".join(paths),
                  failure)
        return False

    def _wait_for_replicas(self, aliases: set[str]) -> None:
        limit = conf.get().edge.wait_for_replicas
        if not limit:
            return
        replication = conf.get().replication
        deadline = time.monotonic() + limit
        for alias in aliases:
            group = replication.group_of(alias)
            if group is None or not group.replicas:
                continue
            try:
                target = _flushed_position(group.primary)
                if target is None:
                    continue
                for replica in group.replicas:
                    while time.monotonic() < deadline:
                        with connections[replica].cursor() as cursor:
                            position = lag.read_replica(cursor)
                        if position.replay_lsn is None or position.replay_lsn >= target:
                            break
                        time.sleep(0.002)
                    else:
                        log.warning("replica %s did not replay the write within %.1f s; "
                                    "purging anyway", replica, limit)
            except Exception as exc:  # noqa: BLE001 - a replica down must not stop the purge
                log.warning("could not compare the replicas of %s with its primary before a "
                            "purge: %s", alias, exc)


_EMIT_SQL = ("SELECT pg_logical_emit_message(true, 'djscale.edge', ''), "
             "pg_current_wal_insert_lsn()::text")
_MARK_SQL = "SELECT pg_current_xact_id(), pg_current_wal_insert_lsn()::text"
_can_emit: dict[str, bool] = {}


def _flushed_position(alias: str) -> int | None:
    """A WAL position at or past every commit so far on ``alias``, flushed now.

    With ``synchronous_commit = off`` a commit returns before its WAL is flushed and a
    replica receives it only after the WAL writer's next round (up to 3 x 200 ms). A
    transaction that **writes WAL** and commits with ``synchronous_commit = on`` flushes
    everything before it, so the replicas get the write at once; its position read before
    the commit is the target they must replay. The WAL it writes is one logical message
    (``pg_logical_emit_message``, a few bytes, ignored by physical replicas). A transaction
    that only takes an id writes no WAL before its commit record, and PostgreSQL then
    commits it asynchronously whatever ``synchronous_commit`` says: measured, every other
    purge waited ~200 ms for the WAL writer. A role that may not call
    ``pg_logical_emit_message`` (not a superuser, no grant) falls back to that, and the
    wait is bounded by ``EDGE["WAIT_FOR_REPLICAS"]``.
    """
    emit = _can_emit.get(alias)
    if emit is None:
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT has_function_privilege("
                           "'pg_logical_emit_message(boolean,text,text)', 'execute')")
            row = cursor.fetchone()
        emit = _can_emit[alias] = bool(row and row[0])
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        cursor.execute("SET LOCAL synchronous_commit = on")
        cursor.execute(_EMIT_SQL if emit else _MARK_SQL)
        row = cursor.fetchone()
    return lag.parse_lsn(row[1]) if row and row[1] else None


_invalidator: Invalidator | None = None
_invalidator_lock = threading.Lock()


def invalidator() -> Invalidator:
    """This process's invalidator (built from ``DJSCALE["EDGE"]`` on first use)."""
    global _invalidator
    with _invalidator_lock:
        if _invalidator is None:
            _invalidator = Invalidator()
            # A management command or script that wrote must not exit with purges queued.
            atexit.register(_invalidator.flush, 10.0)
        return _invalidator


def invalidate(*items: TagItem, paths: Sequence[str] = (), using: str | None = None) -> None:
    """Purge ``items``' tags and ``paths`` from every layer once the transaction commits."""
    tags = tags_of(items)

    def later() -> None:
        worker = invalidator()
        if worker.settings.inline and request_started() is not None:
            # In a request: done before it answers. Scripts and commands (a loop of
            # saves) keep the background thread's batching.
            worker.run(tags, paths, using=using)
        else:
            worker.submit(tags, paths, using=using)
    transaction.on_commit(later, using=using)


def flush(timeout: float = 10.0) -> bool:
    """Wait until this process's invalidations are done; False when ``timeout`` passed."""
    return invalidator().flush(timeout) if _invalidator is not None else True


TagsOf = Callable[[Any], Iterable[TagItem]]
PathsOf = Callable[[Any], Iterable[str]]

_registered: dict[type[Model], tuple[TagsOf | None, PathsOf | None]] = {}


def _changed(sender: type[Model], instance: Model, using: str, **kwargs: Any) -> None:
    entry = _registered.get(sender)
    if entry is None:
        return
    extra_tags, extra_paths = entry
    items: list[TagItem] = [instance, *(extra_tags(instance) if extra_tags else ())]
    invalidate(*items, paths=list(extra_paths(instance)) if extra_paths else (), using=using)


def register(model: type[Model], *, tags: TagsOf | None = None,
             paths: PathsOf | None = None) -> None:
    """Invalidate ``model``'s tags (and ``tags(obj)``, ``paths(obj)``) when one is saved or
    deleted. Call it from your ``AppConfig.ready()``."""
    _registered[model] = (tags, paths)
    post_save.connect(_changed, sender=model, dispatch_uid=f"djscale-edge-{model._meta.label}")
    post_delete.connect(_changed, sender=model,
                        dispatch_uid=f"djscale-edge-{model._meta.label}-delete")
