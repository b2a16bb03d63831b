"""Where replica lag is defined: one measure, against the primary, for every consumer.

The router's probe (:mod:`djscale.db.probe`), ``/health/ready`` (:mod:`djscale.http.health`),
the ``djscale_replica_lag_seconds`` / ``_bytes`` gauges, ``djscale cluster status`` and the
cluster dashboard all measure a replica with this module, so they cannot disagree.

The measure
-----------
- **bytes** = the primary's ``pg_current_wal_lsn()`` minus the replica's
  ``pg_last_wal_replay_lsn()`` (never negative). It is taken against the *primary*, not
  against what the replica has received: a replica whose WAL receiver is stopped or
  disconnected receives nothing, so "received minus replayed" stays 0 while it falls
  behind.
- **seconds** = 0 when the replica has replayed everything the primary had (bytes == 0).
  Otherwise the smallest of the upper bounds known for the age of the oldest write it
  has not replayed:

  * ``now() - pg_last_xact_replay_timestamp()`` on the replica (the commit time of the
    last transaction it replayed: everything it misses was committed after that);
  * with a :class:`PrimaryHistory` (positions of the primary sampled over time, kept by
    long-running consumers): ``now - t`` where ``t`` is the last time the primary was seen
    at a position the replica has replayed. This keeps an idle spell followed by one
    fresh commit from looking like hours of lag.

  Both grow while replication is broken and writes continue, so a stalled replica shows
  a lag that grows. None when the primary did not answer (lag cannot be measured).

Read the primary *before* the replica (as every consumer here does): a replica that is
caught up then has replayed at least the position just read, and shows 0.

:func:`lag` is the pure arithmetic; :func:`read_primary` / :func:`read_replica` run the SQL
on any DB-API cursor (Django's or psycopg's); :func:`measure` combines them and records
the gauges. This module must not decide what a lag means for routing or readiness
(:mod:`djscale.db.pool` and :mod:`djscale.http.health` do), and must not import
``djscale.cluster``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "PRIMARY_SQL",
    "REPLICA_SQL",
    "PrimaryHistory",
    "ReplicaLag",
    "ReplicaPosition",
    "format_lsn",
    "history_of",
    "lag",
    "measure",
    "parse_lsn",
    "read_primary",
    "read_replica",
]

PRIMARY_SQL = "SELECT pg_current_wal_lsn()::text"
"""Asked of the primary: its current WAL position."""

REPLICA_SQL = (
    "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, "
    "EXTRACT(EPOCH FROM (now() - pg_last_xact_replay_timestamp()))::float8"
)
"""Asked of the replica: in recovery?, replayed position, seconds since its last replayed
commit (NULL before the first one)."""

_HISTORY = 120
"""How many primary positions a :class:`PrimaryHistory` keeps (one per probe round)."""


class _Cursor(Protocol):
    def execute(self, query: Any, params: Any = ..., /) -> Any: ...

    def fetchone(self) -> Any: ...


def parse_lsn(text: str) -> int:
    """``'16/B374D848'`` -> an integer position (ValueError when malformed)."""
    hi, sep, lo = text.partition("/")
    if not sep:
        raise ValueError(f"not a PostgreSQL LSN: {text!r}")
    return (int(hi, 16) << 32) | int(lo, 16)


def format_lsn(lsn: int) -> str:
    """An integer position -> PostgreSQL's ``'16/B374D848'`` form."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


@dataclass(frozen=True)
class ReplicaPosition:
    """What a replica says about itself (one answer to :data:`REPLICA_SQL`)."""

    in_recovery: bool
    replay_lsn: int | None
    since_last_replay: float | None
    """Seconds since the commit time of the last replayed transaction (None: none yet)."""


@dataclass(frozen=True)
class ReplicaLag:
    """How far one replica is behind its primary (None: cannot be measured)."""

    lag_bytes: int | None
    lag_seconds: float | None


class PrimaryHistory:
    """Positions of one primary over time, to bound a replica's lag in seconds.

    A replica that has replayed what the primary had written at time ``t`` is at most
    ``now - t`` behind. Thread-safe; times come from the caller's clock (monotonic).
    """

    def __init__(self, size: int = _HISTORY) -> None:
        self._samples: deque[tuple[float, int]] = deque(maxlen=size)
        self._lock = threading.Lock()

    def record(self, lsn: int, at: float) -> None:
        """Remember that the primary was at ``lsn`` at time ``at``."""
        with self._lock:
            self._samples.append((at, lsn))

    def passed_at(self, replay_lsn: int) -> float | None:
        """The last time the primary was seen at or before ``replay_lsn`` (None: unknown)."""
        with self._lock:
            samples = list(self._samples)
        for t, lsn in reversed(samples):
            if lsn <= replay_lsn:
                return t
        return None

    def clear(self) -> None:
        """Forget every sample."""
        with self._lock:
            self._samples.clear()


def lag(*, primary_lsn: int | None, replay_lsn: int | None,
        since_last_replay: float | None = None, passed_at: float | None = None,
        now: float | None = None) -> ReplicaLag:
    """The lag of a replica at ``replay_lsn`` behind a primary at ``primary_lsn`` (pure).

    ``since_last_replay``: the replica's seconds since its last replayed commit;
    ``passed_at`` / ``now``: the last time the primary was seen at or before
    ``replay_lsn`` and the current time, on the same clock (see the module docstring).
    """
    if primary_lsn is None or replay_lsn is None:
        return ReplicaLag(None, None)
    lag_bytes = max(0, primary_lsn - replay_lsn)
    if lag_bytes == 0:
        return ReplicaLag(0, 0.0)
    bounds = [max(0.0, since_last_replay)] if since_last_replay is not None else []
    if passed_at is not None and now is not None:
        bounds.append(max(0.0, now - passed_at))
    return ReplicaLag(lag_bytes, min(bounds) if bounds else None)


def read_primary(cursor: _Cursor, *, history: PrimaryHistory | None = None) -> int | None:
    """Run :data:`PRIMARY_SQL` on a cursor of the primary; its WAL position.

    With ``history`` the position is also recorded there (at ``time.monotonic()`` taken
    before the query, so the bound it gives stays an upper bound).
    """
    asked_at = time.monotonic()
    cursor.execute(PRIMARY_SQL)
    row = cursor.fetchone()
    lsn = parse_lsn(row[0]) if row and row[0] else None
    if history is not None and lsn is not None:
        history.record(lsn, asked_at)
    return lsn


def read_replica(cursor: _Cursor) -> ReplicaPosition:
    """Run :data:`REPLICA_SQL` on a cursor of the replica; what it says about itself."""
    cursor.execute(REPLICA_SQL)
    row = cursor.fetchone()
    if row is None:
        return ReplicaPosition(False, None, None)
    return ReplicaPosition(
        in_recovery=bool(row[0]),
        replay_lsn=parse_lsn(row[1]) if row[1] else None,
        since_last_replay=None if row[2] is None else float(row[2]),
    )


def measure(alias: str, primary_lsn: int | None, position: ReplicaPosition, *,
            history: PrimaryHistory | None = None, now: float | None = None,
            record: bool = True) -> ReplicaLag:
    """The lag of replica ``alias``, recorded as ``djscale_replica_lag_*`` when known.

    ``primary_lsn`` must have been read before ``position``. With ``history`` the seconds
    are also bounded by the primary's past positions (``now`` on its clock, by default
    ``time.monotonic()``). ``record=False`` skips the gauges (tools outside the app).
    """
    passed = None
    if history is not None and position.replay_lsn is not None:
        passed = history.passed_at(position.replay_lsn)
        if now is None:
            now = time.monotonic()
    result = lag(primary_lsn=primary_lsn, replay_lsn=position.replay_lsn,
                 since_last_replay=position.since_last_replay, passed_at=passed, now=now)
    if record:
        from djscale import metrics

        metrics.record_replica_lag(alias=alias, seconds=result.lag_seconds,
                                   lag_bytes=result.lag_bytes)
    return result


_histories: dict[str, PrimaryHistory] = {}
_histories_lock = threading.Lock()


def history_of(primary: str) -> PrimaryHistory:
    """The process-wide history of primary ``primary`` (e.g. a Django alias)."""
    with _histories_lock:
        found = _histories.get(primary)
        if found is None:
            found = _histories[primary] = PrimaryHistory()
        return found
