"""The shard map: which physical database holds each logical shard.

The authoritative map is the table ``djscale_shard_map`` on the main database (one row
per logical shard: alias, state, version). Every process keeps a copy and re-checks it
at most every ``MAP_TTL_SECONDS`` with one tiny query (row count and highest version),
reloading only when it changed; so a flip made by ``move_shard`` is seen by every app
process within the TTL. A write that still reaches the old database in that window is
refused there by the move's fence trigger and retried (:mod:`djscale.sharding.models`).

The first process that finds the table empty seeds it: logical shard ``i`` on
``aliases[i % len(aliases)]``. After that, adding a database changes nothing until
logical shards are moved onto it: no row is ever rehashed.

States: ``active`` (normal), ``moving`` (a copy is being made elsewhere), ``draining``
(flipped; the old copy is about to be deleted). Scatter-gather restricts each database
to the logical shards it owns whenever any shard is not ``active``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from django.db import DatabaseError, connections, transaction

from djscale.errors import ConfigurationError
from djscale.sharding.config import ShardingConfig, get_config

__all__ = ["MapSnapshot", "current", "flip", "invalidate", "seed", "set_state"]

TABLE = "djscale_shard_map"


@dataclass(frozen=True)
class MapSnapshot:
    """One consistent view of the map."""

    aliases: tuple[str, ...]  # index: logical shard
    states: tuple[str, ...]
    signature: tuple[int, int]

    def alias_for(self, logical: int) -> str:
        """The database alias holding ``logical``."""
        return self.aliases[logical]

    def owned_by(self, alias: str) -> list[int]:
        """The logical shards mapped to ``alias``."""
        return [i for i, a in enumerate(self.aliases) if a == alias]

    @property
    def settled(self) -> bool:
        """True when no logical shard is moving or draining."""
        return all(s == "active" for s in self.states)


_lock = threading.Lock()
_snapshot: MapSnapshot | None = None
_checked_at = 0.0


def invalidate() -> None:
    """Forget the cached map: the next lookup re-reads it."""
    global _snapshot
    with _lock:
        _snapshot = None


def current() -> MapSnapshot:
    """The map, re-checked against the table at most every ``MAP_TTL_SECONDS``."""
    global _snapshot, _checked_at
    cfg = get_config()
    snap = _snapshot
    now = time.monotonic()
    if snap is not None and now - _checked_at < cfg.map_ttl_seconds:
        return snap
    with _lock:
        if _snapshot is not None and time.monotonic() - _checked_at < cfg.map_ttl_seconds:
            return _snapshot
        sig = _signature(cfg)
        if _snapshot is None or sig != _snapshot.signature:
            if sig[0] != cfg.logical_shards:
                seed(cfg)
            _snapshot = _load(cfg)
        _checked_at = time.monotonic()
        return _snapshot


def _signature(cfg: ShardingConfig) -> tuple[int, int]:
    try:
        with connections[cfg.map_alias].cursor() as cur:
            cur.execute(f"SELECT count(*), coalesce(max(version), 0) FROM {TABLE}")
            count, version = cur.fetchone()
    except DatabaseError as exc:
        raise ConfigurationError(
            f"cannot read the shard map table {TABLE} on {cfg.map_alias!r} ({exc}); "
            f"run `manage.py migrate --database {cfg.map_alias}`"
        ) from None
    return int(count), int(version)


def _load(cfg: ShardingConfig) -> MapSnapshot:
    with connections[cfg.map_alias].cursor() as cur:
        cur.execute(f"SELECT logical, alias, state, version FROM {TABLE} ORDER BY logical")
        rows = cur.fetchall()
    if len(rows) != cfg.logical_shards or any(r[0] != i for i, r in enumerate(rows)):
        raise ConfigurationError(
            f"the shard map in {TABLE} has {len(rows)} rows but the topology has "
            f"{cfg.logical_shards} logical shards: logical_shards cannot change once data "
            "exists; restore sharding.logical_shards in the topology"
        )
    unknown = sorted({r[1] for r in rows} - set(cfg.aliases))
    if unknown:
        raise ConfigurationError(
            f"the shard map places logical shards on {unknown[0]!r}, which is not a shard "
            "of the topology; add it back to [[shards]] or move those shards off it first"
        )
    version = max(r[3] for r in rows) if rows else 0
    return MapSnapshot(aliases=tuple(r[1] for r in rows), states=tuple(r[2] for r in rows),
                       signature=(len(rows), int(version)))


def seed(cfg: ShardingConfig | None = None) -> int:
    """Insert the rows missing from the map (``i`` on ``aliases[i % n]``); return how many."""
    cfg = cfg or get_config()
    if not cfg.aliases:
        raise ConfigurationError("the topology has no [[shards]]: there is nothing to map")
    n = len(cfg.aliases)
    rows = [(i, cfg.aliases[i % n]) for i in range(cfg.logical_shards)]
    with connections[cfg.map_alias].cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {TABLE}")
        before = int(cur.fetchone()[0])
        if before > cfg.logical_shards:
            return 0  # _load reports the mismatch
        cur.executemany(
            f"INSERT INTO {TABLE} (logical, alias, state, version) VALUES (%s, %s, 'active', 1) "
            "ON CONFLICT (logical) DO NOTHING",
            rows,
        )
        cur.execute(f"SELECT count(*) FROM {TABLE}")
        return int(cur.fetchone()[0]) - before


def set_state(logical: int, state: str, *, alias: str | None = None,
              expect_alias: str | None = None) -> None:
    """Set one logical shard's state (and alias) with a new map version, atomically.

    With ``expect_alias`` the update only happens if the shard is still mapped there
    (raise ConfigurationError otherwise): two concurrent moves cannot both flip it.
    """
    cfg = get_config()
    with transaction.atomic(using=cfg.map_alias), connections[cfg.map_alias].cursor() as cur:
        # Serialise map changes so every change gets its own, higher version.
        cur.execute(f"LOCK TABLE {TABLE} IN SHARE ROW EXCLUSIVE MODE")
        cur.execute(
            f"UPDATE {TABLE} SET state = %s, alias = coalesce(%s, alias), "
            f"version = (SELECT max(version) + 1 FROM {TABLE}) "
            "WHERE logical = %s AND (%s::text IS NULL OR alias = %s::text)",
            [state, alias, logical, expect_alias, expect_alias],
        )
        if cur.rowcount != 1:
            raise ConfigurationError(
                f"logical shard {logical} is not mapped to {expect_alias!r} any more"
            )
    invalidate()


def flip(logical: int, *, source: str, target: str) -> None:
    """Point ``logical`` at ``target`` (state ``draining``) if it is still on ``source``."""
    set_state(logical, "draining", alias=target, expect_alias=source)
