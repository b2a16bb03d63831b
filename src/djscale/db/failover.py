"""Failover of reads: a read that died with its replica is run once more elsewhere.

Owns the answer to "did this exception come from a replica connection that broke?"
(:func:`failed_replicas`), the recovery (mark the replica down in the pool, close and drop
its connection so it is never reused), and a decorator :func:`failover_reads` for code
outside HTTP requests (Celery tasks, commands). The HTTP side is
:class:`~djscale.db.middleware.ReplicaMiddleware`.

Why a retry of the whole unit of work rather than of the single query: a Django cursor
is bound to its connection and a half-iterated queryset cannot be resumed on another
server, while a read-only view or task can simply run again. The retry happens only
when it is safe: the work is a read (safe HTTP method or an explicit opt-in), no
transaction is open on any connection, and it has not been retried already.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from django.db import DatabaseError, InterfaceError, OperationalError, connections

from djscale import metrics
from djscale.db import config
from djscale.db.pool import get_pool

__all__ = ["drop_promoted", "failed_replicas", "failover_reads", "in_transaction", "multi_host",
           "recover"]

log = logging.getLogger("djscale.db.failover")

P = ParamSpec("P")
R = TypeVar("R")

FAILOVERS = metrics.READ_FAILOVERS
"""``djscale_db_read_failover_total`` (defined in :mod:`djscale.metrics`)."""


def _broken(conn: object) -> bool:
    raw = getattr(conn, "connection", None)
    if raw is None:
        return True  # connect() itself failed
    return bool(getattr(raw, "closed", False) or getattr(raw, "broken", False))


def failed_replicas(exc: BaseException) -> list[str]:
    """Replica aliases whose connection failed (errored and is now unusable) in this thread.

    Empty unless ``exc`` is a connection-level error (OperationalError/InterfaceError).
    """
    if not isinstance(exc, OperationalError | InterfaceError):
        return []
    failed = []
    # A deadline (djscale.db.deadline) names its alias: the connection may not have
    # errored at all (the server was already known to be silent).
    alias = getattr(exc, "alias", None)
    group = config.group_of(alias) if isinstance(alias, str) else None
    if group is not None and alias in group.replicas:
        failed.append(alias)
    for conn in connections.all(initialized_only=True):
        group = config.group_of(conn.alias)
        if (group is not None and conn.alias in group.replicas and conn.errors_occurred
                and _broken(conn) and conn.alias not in failed):
            failed.append(conn.alias)
    return failed


def multi_host(alias: str) -> bool:
    """True if ``alias`` lists several servers (libpq multi-host ``HOST``)."""
    return "," in str(connections.settings[alias].get("HOST") or "")


def in_transaction() -> bool:
    """True if any connection of this thread is inside ``transaction.atomic``."""
    return any(c.in_atomic_block for c in connections.all(initialized_only=True))


def recover(aliases: list[str], reason: str) -> None:
    """Take failed replicas out of rotation and drop their connections.

    A replica alias that lists several servers (a group run by Patroni: libpq picks a
    standby among them at connect time) stays in rotation: its dead connection went to a
    server that failed or changed role, and the retry's new connection reaches another.
    """
    for alias in aliases:
        group = config.group_of(alias)
        pool = get_pool(group.name) if group is not None else None
        if pool is not None and not multi_host(alias):
            pool.mark_down(alias, reason)
        with contextlib.suppress(DatabaseError):
            connections[alias].close()
        connections[alias].connection = None
        connections[alias].errors_occurred = False
        metrics.record_read_failover(alias=alias)


def drop_promoted(**kwargs: object) -> list[str]:
    """Close this thread's replica connections whose server is no longer a standby.

    A replica alias of a group run by a failover manager lists every node and libpq picks
    a standby at connect time (``prefer-standby``). A persistent connection
    (``CONN_MAX_AGE``) stays on its node when that node is promoted: reads would go on
    landing on the new leader, and when that leader is killed in the next failover every
    replica alias whose connection sat there fails at once, the retry of a read included.
    PostgreSQL reports ``in_hot_standby`` to the client (``ParameterStatus``) after the
    first statement that follows a promotion, so the check costs no round trip; the next
    use of the alias reconnects to a standby. Connected to ``request_finished`` and
    Celery's ``task_postrun`` (:mod:`djscale.db.signals`). Pooled connections
    (``OPTIONS["pool"]``) are back in their pool by then and are not checked.
    """
    dropped = []
    for conn in connections.all(initialized_only=True):
        group = config.group_of(conn.alias)
        raw = conn.connection
        if (group is None or conn.alias not in group.replicas or raw is None
                or conn.in_atomic_block or not multi_host(conn.alias)):
            continue
        try:
            standby = raw.info.parameter_status("in_hot_standby")
        except Exception:  # noqa: BLE001 - a closed or foreign connection: leave it to Django
            continue
        if standby == "off":
            log.info("replica alias %s: its server was promoted; reconnecting to a standby",
                     conn.alias)
            with contextlib.suppress(DatabaseError):
                conn.close()
            dropped.append(conn.alias)
    return dropped


def retryable(exc: BaseException) -> list[str]:
    """The replicas to recover from before retrying after ``exc`` (empty: do not retry)."""
    if in_transaction():
        return []
    return failed_replicas(exc)


def failover_reads(func: Callable[P, R]) -> Callable[P, R]:
    """Decorator: run ``func`` once more when a replica connection breaks under it.

    Only for read-only work: the first run may have done anything up to the failure.
    """

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except (OperationalError, InterfaceError) as exc:
            failed = retryable(exc)
            if not failed:
                raise
            log.warning("replica %s failed during %s (%s); retrying once",
                        ", ".join(failed), getattr(func, "__qualname__", func), exc)
            recover(failed, f"{type(exc).__name__}: {str(exc).strip()[:200]}")
        return func(*args, **kwargs)

    return wrapper
