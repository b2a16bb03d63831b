"""Where replica lag is measured: the SQL probes of primaries and replicas.

A :class:`Prober` keeps one small autocommit psycopg connection per server (outside
Django's connection handling, so it never touches a request's connections or
transactions) and, per refresh of a :class:`~djscale.db.pool.ReplicaPool`:

1. asks the primary for ``pg_current_wal_lsn()``;
2. asks each replica where it is, and turns that into a lag in bytes and seconds with
   :func:`djscale.db.lag.measure` (the one definition of replica lag, which also writes
   the ``djscale_replica_lag_*`` gauges), bounded by the pool's history of primary
   positions so an idle primary does not look like lag; the time that query took is the
   replica's latency (a replica slower than ``replica_max_latency_ms`` in two rounds in a
   row is skipped by the pool: a slow link, an overloaded server).

Every server is measured in its own short-lived daemon thread and waited for at most
``ANSWER_SECONDS``: ``statement_timeout`` is enforced by the server, so a *frozen* server
(a paused VM, a stopped process, a partition that drops packets) would otherwise block a
query, and the probe thread with it, until TCP gives up hours later, leaving the router
with stale health. A server that does not answer in time is reported down; while its
probe is still stuck no second one is started, and it is reported down every round until
that probe returns. A server whose query fails is reported down; its connection is
dropped and opened again on the next refresh. Replicas are measured concurrently, so one
hung replica does not delay its siblings' reports. Probes connect to the ``postgres``
maintenance database when they can (as Django's own ``_nodb_cursor`` does), so they
never block ``DROP DATABASE`` of a test database; otherwise to the alias's ``NAME``.

Only the probe thread of :mod:`djscale.db.pool` uses a Prober.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, as_completed
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

import psycopg
from django.db import connections

from djscale.db import deadline, lag
from djscale.db.lag import format_lsn, parse_lsn
from djscale.db.pool import ReplicaHealth, ReplicaPool

__all__ = ["Prober", "format_lsn", "parse_lsn"]

log = logging.getLogger("djscale.db.probe")

PROBE_TIMEOUT_SECONDS = 2
ANSWER_SECONDS = PROBE_TIMEOUT_SECONDS + 1.0
"""How long a refresh waits for one server's answer before reporting it down."""

_T = TypeVar("_T")

# Options of DATABASES[...]["OPTIONS"] that are Django's, not libpq's.
_DJANGO_ONLY = ("pool", "isolation_level", "assume_role", "server_side_binding",
                "prepare_threshold", "cursor_factory", "context")


def connection_kwargs(alias: str) -> dict[str, Any]:
    """psycopg.connect() arguments for ``alias`` (without dbname), short timeouts."""
    s = connections.settings[alias]
    options = {k: v for k, v in (s.get("OPTIONS") or {}).items() if k not in _DJANGO_ONLY}
    timeout = int(options.pop("connect_timeout", PROBE_TIMEOUT_SECONDS) or
                  PROBE_TIMEOUT_SECONDS)
    kwargs: dict[str, Any] = {
        **options,
        "connect_timeout": max(1, min(timeout, PROBE_TIMEOUT_SECONDS)),
        "autocommit": True,
        "application_name": "djscale-replica-probe",
        "options": f"-c statement_timeout={PROBE_TIMEOUT_SECONDS * 1000}",
    }
    for key, name in (("HOST", "host"), ("PORT", "port"), ("USER", "user"),
                      ("PASSWORD", "password")):
        if s.get(key):
            kwargs[name] = s[key]
    kwargs["dbname"] = s.get("NAME") or "postgres"
    return kwargs


class Prober:
    """Measures servers over its own connections; one instance per probe thread."""

    def __init__(self) -> None:
        self._conns: dict[str, psycopg.Connection[Any]] = {}
        self._pending: dict[str, Future[Any]] = {}

    def _connect(self, alias: str) -> psycopg.Connection[Any]:
        conn = self._conns.get(alias)
        if conn is not None and not conn.closed:
            return conn
        kwargs = connection_kwargs(alias)
        own_db = kwargs.pop("dbname")
        try:
            conn = psycopg.connect(dbname="postgres", **kwargs)
        except psycopg.OperationalError:
            conn = psycopg.connect(dbname=own_db, **kwargs)
        self._conns[alias] = conn
        return conn

    def _drop(self, alias: str) -> None:
        conn = self._conns.pop(alias, None)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def primary_lsn(self, alias: str) -> int | None:
        """The primary's current WAL position, or None when it does not answer."""
        try:
            return lag.read_primary(self._connect(alias).cursor())
        except psycopg.Error as exc:
            log.warning("probe of primary %s failed: %s", alias, exc)
            self._drop(alias)
            return None

    def replica(self, alias: str, pool: ReplicaPool) -> ReplicaHealth:
        """Measure one replica against the pool's last known primary position."""
        now = pool._clock()
        try:
            conn = self._connect(alias)
            asked = time.monotonic()  # the answer time of a query, not of connecting
            position = lag.read_replica(conn.cursor())
            latency = time.monotonic() - asked
        except psycopg.Error as exc:
            self._drop(alias)
            return ReplicaHealth(alias, up=False, checked_at=now,
                                 error=f"{type(exc).__name__}: {str(exc).strip()[:200]}")
        if not position.in_recovery:
            # Under a failover manager a replica alias lists every node and libpq picks a
            # standby at connect time (settings: prefer-standby); the node this connection
            # reached was promoted since. Reconnect next round to reach a standby again.
            self._drop(alias)
            return ReplicaHealth(alias, up=False, checked_at=now,
                                 error="not in recovery: promoted or not a replica")
        # The primary not answering leaves the lag unknown (None): the replicas are then
        # the only servers that can answer reads at all.
        measured = lag.measure(alias, pool.primary_lsn, position, history=pool.history,
                               now=now)
        deadline.answered(alias)
        return ReplicaHealth(alias, up=True, replay_lsn=position.replay_lsn,
                             lag_bytes=measured.lag_bytes, lag_seconds=measured.lag_seconds,
                             checked_at=now, latency=latency)

    def refresh(self, pool: ReplicaPool) -> None:
        """Measure the group's primary, then every replica, and store the results."""
        primary = pool.group.primary
        try:
            lsn = self._start(primary, self.primary_lsn, primary).result(
                timeout=ANSWER_SECONDS)
        except FutureTimeout:
            log.warning("probe of primary %s: no answer within %.0f s", primary,
                        ANSWER_SECONDS)
            lsn = None
        pool.record_primary(lsn)
        if lsn is not None:
            deadline.answered(primary)  # before replicas may look behind and send reads here
        self._measure(pool, pool.group.replicas)
        # A replica that answered too slowly is asked again at once: two slow answers in a
        # row take it out (ReplicaPool), so a slow link costs one round, not two intervals.
        limit = pool.group.replica_max_latency_ms / 1000
        health = pool.health()
        again = [a for a, h in health.items() if limit and h.up and not h.slow
                 and h.latency is not None and h.latency > limit]
        if again:
            self._measure(pool, again)

    def _measure(self, pool: ReplicaPool, aliases: tuple[str, ...] | list[str]) -> None:
        """Probe ``aliases`` concurrently and store what each answered (or that it did not)."""
        started = pool._clock()
        waiting = {self._start(alias, self.replica, alias, pool): alias for alias in aliases}
        try:
            for done in as_completed(waiting, timeout=ANSWER_SECONDS):
                pool.update(done.result())
                del waiting[done]
        except FutureTimeout:
            for alias in waiting.values():
                pool.update(ReplicaHealth(
                    alias, up=False, checked_at=started,
                    error=f"no answer within {ANSWER_SECONDS:.0f} s (server hung or "
                          "unreachable)"))

    def _start(self, alias: str, fn: Callable[..., _T], *args: Any) -> Future[_T]:
        """Run one probe of ``alias`` in a daemon thread, unless one is still stuck."""
        future = self._pending.get(alias)
        if future is not None and not future.done():
            return future  # at most one probe per server: no pile-up behind a hung one
        future = Future()
        self._pending[alias] = future

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args))
            except Exception as exc:  # noqa: BLE001 - handed to the caller by future.result()
                future.set_exception(exc)

        threading.Thread(target=run, name=f"djscale-probe-{alias}", daemon=True).start()
        return future

    def close(self) -> None:
        """Close every probe connection (a connection held by a stuck probe is left to it)."""
        for alias in list(self._conns):
            stuck = self._pending.get(alias)
            if stuck is None or stuck.done():
                self._drop(alias)
