"""One invalidation, every layer: a tagged model's save or delete purges what shows it.

::

    from djscale.edge import register
    register(Product, tags=lambda p: [f"shop.category:{p.category_id}"],
             paths=lambda p: [f"/api/products/{p.pk}"])

After each save or delete of a ``Product`` **that commits** (``transaction.on_commit``;
a rolled-back write purges nothing), the instance's tags (``shop.product``,
``shop.product:<pk>``, plus the ``tags`` callable's) are handed to one background thread
per process, which:

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

:func:`invalidate` asks for the same by hand (tags or objects), :func:`flush` waits until
everything asked so far is done (tests, management commands before they exit).
"""

from __future__ import annotations

import atexit
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

__all__ = ["Invalidator", "flush", "invalidate", "invalidator", "register"]

log = logging.getLogger("djscale.edge")

_BACKOFF = 0.05


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
        self._queue: queue.Queue[tuple[list[str], list[str], str | None, float]] = queue.Queue()
        self._pending = 0
        self._done = threading.Condition()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, tags: Sequence[str], paths: Sequence[str] = (), *,
               using: str | None = None) -> None:
        """Queue an invalidation (now: call it from ``on_commit``)."""
        if not tags and not paths:
            return
        with self._done:
            self._pending += 1
        self._queue.put((list(tags), list(paths), using, time.monotonic()))
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

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            batch, count = _Batch(), 1
            batch.add(first[0], first[1], first[2], first[3])
            deadline = time.monotonic() + self.settings.batch_ms / 1000
            while True:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                batch.add(item[0], item[1], item[2], item[3])
                count += 1
            try:
                self._process(batch)
            except Exception:
                log.exception("edge invalidation of %s failed", " ".join(batch.tags))
            finally:
                with self._done:
                    self._pending -= count
                    self._done.notify_all()

    def _process(self, batch: _Batch) -> None:
        tags, paths = list(batch.tags), list(batch.paths)
        self._wait_for_replicas(batch.aliases)
        attempts = self.settings.retries + 1
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
                return
            if attempt + 1 < attempts:
                metrics.record_edge_purge(result="retry")
                log.warning("edge purge of %d tag(s) failed (attempt %d of %d), retrying: %s",
                            len(tags), attempt + 1, attempts, failure)
                time.sleep(_BACKOFF * 2 ** attempt)
        metrics.record_edge_purge(result="failed")
        log.error("edge purge gave up after %d attempts; these pages stay stale until their "
                  "TTL: tags=%s paths=%s (%s)", attempts, " ".join(tags), " ".join(paths),
                  failure)

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


def _flushed_position(alias: str) -> int | None:
    """A WAL position at or past every commit so far on ``alias``, flushed now.

    With ``synchronous_commit = off`` a commit returns before its WAL is flushed and a
    replica receives it only after the WAL writer's next round (up to 3 x 200 ms). A
    transaction that has an id and commits with ``synchronous_commit = on`` flushes
    everything before it, so the replicas get the write at once; its position read before
    the commit is the target they must replay.
    """
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        cursor.execute("SET LOCAL synchronous_commit = on")
        cursor.execute("SELECT pg_current_xact_id(), pg_current_wal_insert_lsn()::text")
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
        invalidator().submit(tags, paths, using=using)
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
