"""The replica pool: what this process knows about each replica, and which one to pick.

Owns, per replication group, the last measured :class:`ReplicaHealth` of every replica
(up or down, replayed WAL position, lag in bytes and seconds) and the selection policy
(``random``, ``weighted``, ``least_lag``) over the replicas that are usable: up, within
``max_lag``, and (for read-your-writes) replayed past a given LSN.

Health is refreshed by one daemon thread per process (:mod:`djscale.db.probe` measures),
every ``DJSCALE["REPLICA_REFRESH_SECONDS"]`` (1 s by default): never a query per
read. A read on the hot path only looks at an immutable snapshot. A failed read marks a
replica down at once (:meth:`ReplicaPool.mark_down`); the next successful probe brings
it back. After ``fork()`` (gunicorn workers) the registry notices the new pid and starts
afresh, without touching the parent's connections.

This module must not decide between replica and primary for a request: that is
:mod:`djscale.db.replicas`.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from django.core.signals import setting_changed

from djscale import metrics
from djscale.conf import WATCHED_SETTINGS
from djscale.db import config
from djscale.db.config import GroupConfig
from djscale.db.lag import PrimaryHistory, lag

__all__ = ["ReplicaHealth", "ReplicaPool", "get_pool", "pools", "reset_pools"]

log = logging.getLogger("djscale.db.pool")

@dataclass(frozen=True)
class ReplicaHealth:
    """One measurement of one replica."""

    alias: str
    up: bool
    replay_lsn: int | None = None
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    checked_at: float = 0.0
    error: str = ""
    latency: float | None = None
    """Seconds the probe's status query took (the server's answer time, network included)."""
    slow: bool = False
    """Two probes in a row took longer than the group's ``replica_max_latency_ms``."""

    def within(self, group: GroupConfig) -> bool:
        """True if up, not slow and not further behind than the group's ``max_lag``."""
        if not self.up or self.slow:
            return False
        if self.lag_bytes is not None and self.lag_bytes > group.max_lag_bytes:
            return False
        return self.lag_seconds is None or self.lag_seconds <= group.max_lag_seconds


class ReplicaPool:
    """Health of the replicas of one group and the choice among them (thread-safe)."""

    def __init__(self, group: GroupConfig, *, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.group = group
        self._rng = rng or random.Random()
        self._clock = clock
        self._lock = threading.Lock()
        self._health: dict[str, ReplicaHealth] = {}
        # Precomputed on every update so that a read only reads these two tuples.
        self._usable: tuple[ReplicaHealth, ...] = ()
        self.history = PrimaryHistory()
        metrics.declare_replica_group(group=group.name, replicas=group.replicas)
        self.primary_lsn: int | None = None
        self.refreshed_at: float | None = None

    # ------------------------------------------------------------------ measurements

    def record_primary(self, lsn: int | None, *, at: float | None = None) -> None:
        """Remember the primary's current WAL position (None: the primary did not answer)."""
        self.primary_lsn = lsn
        if lsn is not None:
            self.history.record(lsn, self._clock() if at is None else at)

    def bound_lag_seconds(self, replay_lsn: int, *, now: float | None = None) -> float | None:
        """Upper bound of a replica's lag in time from the primary's recorded positions.

        See :mod:`djscale.db.lag`; None when the history is too short to say.
        """
        now = self._clock() if now is None else now
        passed = self.history.passed_at(replay_lsn)
        if passed is None:
            return None
        return lag(primary_lsn=self.primary_lsn, replay_lsn=replay_lsn, passed_at=passed,
                   now=now).lag_seconds if self.primary_lsn is not None else max(0.0, now - passed)

    def update(self, health: ReplicaHealth) -> None:
        """Store a new measurement of one replica."""
        with self._lock:
            previous = self._health.get(health.alias)
            health = self._judge_latency(previous, health)
            if previous is not None and previous.up != health.up:
                log.warning("replica %s of group %s is now %s%s", health.alias,
                            self.group.name, "up" if health.up else "down",
                            f" ({health.error})" if health.error else "")
            if previous is not None and previous.slow != health.slow:
                log.warning("replica %s of group %s is %s (probe answered in %.0f ms; "
                            "limit %d ms)", health.alias, self.group.name,
                            "slow: no reads until it answers in time" if health.slow
                            else "answering in time again", (health.latency or 0) * 1000,
                            self.group.replica_max_latency_ms)
            self._health = {**self._health, health.alias: health}
            self._recompute()

    def _judge_latency(self, previous: ReplicaHealth | None,
                       health: ReplicaHealth) -> ReplicaHealth:
        """Mark ``health`` slow when it and the previous probe both took too long.

        Two rounds in a row, so that one probe delayed by a busy machine (a GC pause, a
        loaded CPU) does not take a replica out; a replica behind a slow link is out
        within two probe rounds and back after one round in time.
        """
        limit = self.group.replica_max_latency_ms / 1000
        if not limit or health.latency is None:
            return health
        over = health.latency > limit
        before = (previous is not None and previous.latency is not None
                  and previous.latency > limit)
        return replace(health, slow=over and before) if over and before else health

    def mark_down(self, alias: str, reason: str) -> None:
        """Take a replica out of rotation until a probe finds it healthy again."""
        with self._lock:
            current = self._health.get(alias)
            if current is None or not current.up:
                return
            log.warning("replica %s of group %s marked down: %s", alias, self.group.name,
                        reason)
            self._health = {**self._health, alias: replace(current, up=False, error=reason)}
            self._recompute()

    def _recompute(self) -> None:
        self._usable = tuple(h for a in self.group.replicas
                             if (h := self._health.get(a)) is not None and h.within(self.group))
        self.refreshed_at = self._clock()

    # ------------------------------------------------------------------ choice

    def health(self) -> dict[str, ReplicaHealth]:
        """The last measurement of every replica (a copy)."""
        return dict(self._health)

    def usable(self, min_lsn: int | None = None) -> list[str]:
        """Aliases that may serve a read needing WAL position ``min_lsn`` (None: any)."""
        return [h.alias for h in self._candidates(min_lsn)]

    def _candidates(self, min_lsn: int | None) -> tuple[ReplicaHealth, ...]:
        usable = self._usable
        if min_lsn is None or not usable:
            return usable
        return tuple(h for h in usable if h.replay_lsn is not None and h.replay_lsn >= min_lsn)

    def choose(self, min_lsn: int | None = None) -> str | None:
        """A usable replica under the group's policy, or None when none is usable."""
        candidates = self._candidates(min_lsn)
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0].alias
        policy = self.group.policy
        if policy == "least_lag":
            least = min(h.lag_bytes or 0 for h in candidates)
            candidates = tuple(h for h in candidates if (h.lag_bytes or 0) == least)
            return self._rng.choice(candidates).alias
        if policy == "weighted":
            weights = [self.group.weight(h.alias) for h in candidates]
            if sum(weights) > 0:
                return self._rng.choices(candidates, weights=weights)[0].alias
        return self._rng.choice(candidates).alias


# ---------------------------------------------------------------------- registry


class _Registry:
    """The pools of this process and the thread that keeps them fresh."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.pools: dict[str, ReplicaPool] = {}
        self.refresher: _Refresher | None = None


class _Refresher(threading.Thread):
    def __init__(self, targets: Iterable[ReplicaPool], interval: float) -> None:
        super().__init__(name="djscale-replica-probe", daemon=True)
        self.targets = list(targets)
        self.interval = interval
        self.stopping = threading.Event()
        self.first_round = threading.Event()

    def run(self) -> None:
        from djscale.db.probe import Prober

        prober = Prober()
        try:
            while not self.stopping.is_set():
                for pool in self.targets:
                    try:
                        prober.refresh(pool)
                    except Exception:  # the probe thread must never die
                        log.exception("probing replicas of group %s failed", pool.group.name)
                self.first_round.set()
                self.stopping.wait(self.interval)
        finally:
            prober.close()


_registry = _Registry()


def _build() -> _Registry:
    global _registry
    with _registry.lock:
        reg = _registry
        if reg.pid != os.getpid():
            # A forked child: the parent's thread and connections are not ours.
            reg = _registry = _Registry()
        if not reg.pools:
            reg.pools = {name: ReplicaPool(g) for name, g in config.groups().items()}
            probed = [p for p in reg.pools.values() if p.group.replicas]
            if probed:
                reg.refresher = _Refresher(probed, config.refresh_seconds())
                reg.refresher.start()
        refresher = reg.refresher
    if refresher is not None:
        # The first reads of a process wait (bounded) for a first measurement rather than
        # guessing; later reads never wait.
        refresher.first_round.wait(timeout=5.0)
    return reg


def pools() -> dict[str, ReplicaPool]:
    """Every group's pool in this process (started on first use)."""
    reg = _registry
    if reg.pid != os.getpid() or not reg.pools:
        reg = _build()
    return reg.pools


def get_pool(group: str) -> ReplicaPool | None:
    """The pool of replication group ``group``, or None when there is no such group."""
    reg = _registry
    if reg.pid == os.getpid():
        found = reg.pools.get(group)
        if found is not None:
            return found
    return pools().get(group)


def reset_pools() -> None:
    """Stop the probe thread and forget every pool (they are rebuilt on next use)."""
    global _registry
    with _registry.lock:
        old = _registry
        _registry = _Registry()
    if old.refresher is not None and old.pid == os.getpid():
        old.refresher.stopping.set()


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in WATCHED_SETTINGS:
        reset_pools()


setting_changed.connect(_on_setting_changed, dispatch_uid="djscale.db.pool")
