"""Which alias serves a read or a write of a replication group (the public API).

:func:`read_alias` is the one decision every router (this package's
:class:`~djscale.db.routers.PrimaryReplicaRouter`, the shard router) delegates to:

1. inside ``use_primary()`` -> the primary; inside ``use_replica()`` -> any usable replica;
2. inside ``transaction.atomic`` on the group's primary -> the primary;
3. after a write in this request/task (sticky scope) -> the primary;
4. else a replica that is up, within ``max_lag`` and has replayed this user's LSN token
   (read-your-writes), chosen by the group's policy;
5. when no replica qualifies: the primary (logged and counted in
   ``djscale_db_replica_fallback_total``), or :class:`~djscale.errors.NoReplicaAvailable`
   when the group's ``FALLBACK`` is ``"raise"``.

:func:`record_write` marks a group as written; a connection wrapper installed on every
primary (:mod:`djscale.db.signals`) calls it for each statement that is not a read, so
raw SQL and ``.using("default")`` writes count too.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

from django.db import connections

from djscale import metrics
from djscale.db import config, consistency
from djscale.db.config import GroupConfig
from djscale.db.pool import get_pool
from djscale.errors import NoReplicaAvailable

__all__ = ["read_alias", "read_alias_for", "record_write", "write_alias"]

log = logging.getLogger("djscale.db.replicas")

_LOG_EVERY_SECONDS = 10.0
_last_logged: dict[str, float] = {}


def read_alias(group: str) -> str:
    """A usable replica of ``group`` honouring read-your-writes, else its primary.

    Raise :class:`~djscale.errors.ConfigurationError` for an unknown group, and
    :class:`~djscale.errors.NoReplicaAvailable` when no replica is usable and the group's
    ``FALLBACK`` is ``"raise"``.
    """
    return read_alias_for(config.group(group))


def write_alias(group: str) -> str:
    """The primary of ``group``."""
    return config.group(group).primary


def record_write(alias: str) -> None:
    """Note that the current request/task wrote to ``alias`` (a primary of a group).

    Its later reads of that group go to the primary (inside a request or task) or to
    replicas that have replayed the write (elsewhere). Unknown aliases are ignored.
    """
    group = config.group_of(alias)
    if group is not None and group.replicas:
        state = consistency.current()
        if group.name not in state.dirty:
            state.dirty.add(group.name)


def read_alias_for(group: GroupConfig) -> str:
    """:func:`read_alias` for an already looked-up group (the router's fast path)."""
    alias, target = _choose(group)
    metrics.record_router_decision(group=group.name, operation="read", target=target)
    return alias


def _choose(group: GroupConfig) -> tuple[str, Literal["primary", "replica", "fallback"]]:
    """The alias of a read of ``group``, and whether that is the primary by choice, a
    replica, or the primary for want of a usable replica (a fallback)."""
    if not group.replicas:
        return group.primary, "primary"
    forced = consistency.forced()
    min_lsn: int | None = None
    if forced == "primary":
        return group.primary, "primary"
    if forced is None:
        if connections[group.primary].in_atomic_block:
            return group.primary, "primary"
        state = consistency.peek()
        if state is not None:
            if group.name in state.dirty:
                if state.sticky:
                    return group.primary, "primary"
                if consistency.capture(group, state) is None:
                    return group.primary, "primary"
            min_lsn = state.tokens.get(group.name)
    pool = get_pool(group.name)
    if pool is None:  # settings changed under us
        return group.primary, "primary"
    alias = pool.choose(min_lsn)
    if alias is not None:
        return alias, "replica"
    if min_lsn is not None and pool.usable(None):
        # After a failover a token may be ahead of every server for good: lower it to the
        # new primary's position (consistency.reconcile), then a replica may serve again.
        state = consistency.peek()
        lowered = consistency.reconcile(group, state) if state is not None else None
        alias = pool.choose(lowered) if lowered is not None else None
        if alias is not None:
            return alias, "replica"
        metrics.record_replica_fallback(group=group.name, reason="read_your_writes")
        return group.primary, "fallback"
    metrics.record_replica_fallback(group=group.name, reason="no_replica")
    if group.fallback == "raise":
        raise NoReplicaAvailable(
            f"no replica of group {group.name!r} is up and within max_lag "
            f"({_describe(group)}); reads are not allowed on the primary because its "
            "FALLBACK is 'raise'. Fix the replicas, raise MAX_LAG_*, or set FALLBACK to "
            "'primary'."
        )
    now = time.monotonic()
    if now - _last_logged.get(group.name, -_LOG_EVERY_SECONDS) >= _LOG_EVERY_SECONDS:
        _last_logged[group.name] = now
        log.warning("no usable replica in group %s (%s): reading from the primary %s",
                    group.name, _describe(group), group.primary)
    return group.primary, "fallback"


def _describe(group: GroupConfig) -> str:
    pool = get_pool(group.name)
    if pool is None:
        return "no pool"
    parts = []
    for alias in group.replicas:
        h = pool.health().get(alias)
        if h is None:
            parts.append(f"{alias}: not probed yet")
        elif not h.up:
            parts.append(f"{alias}: down ({h.error})")
        else:
            parts.append(f"{alias}: lag {h.lag_seconds}s / {h.lag_bytes} B")
    return "; ".join(parts)
