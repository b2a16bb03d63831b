"""Where replica lag is measured: the SQL probes of primaries and replicas.

A :class:`Prober` keeps one small autocommit psycopg connection per server (outside
Django's connection handling, so it never touches a request's connections or
transactions) and, per refresh of a :class:`~djscale.db.pool.ReplicaPool`:

1. asks the primary for ``pg_current_wal_lsn()``;
2. asks each replica for ``pg_is_in_recovery()``, ``pg_last_wal_replay_lsn()``,
   the bytes it is behind (``pg_wal_lsn_diff(<primary lsn>, pg_last_wal_replay_lsn())``)
   and the seconds (``now() - pg_last_xact_replay_timestamp()``, capped by the pool's
   history of primary positions so an idle primary does not look like lag).

A server that does not answer within the timeout is reported down; its connection is
dropped and opened again on the next refresh. Probes connect to the ``postgres``
maintenance database when they can (as Django's own ``_nodb_cursor`` does), so they
never block ``DROP DATABASE`` of a test database; otherwise to the alias's ``NAME``.

Only the probe thread of :mod:`djscale.db.pool` uses a Prober.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import psycopg
from django.db import connections

from djscale.db.pool import ReplicaHealth, ReplicaPool

__all__ = ["Prober", "format_lsn", "parse_lsn"]

log = logging.getLogger("djscale.db.probe")

PROBE_TIMEOUT_SECONDS = 2

_REPLICA_SQL = (
    "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, "
    "EXTRACT(EPOCH FROM (now() - pg_last_xact_replay_timestamp()))::float8, "
    "pg_wal_lsn_diff(%s::pg_lsn, pg_last_wal_replay_lsn())::bigint"
)
# Options of DATABASES[...]["OPTIONS"] that are Django's, not libpq's.
_DJANGO_ONLY = ("pool", "isolation_level", "assume_role", "server_side_binding",
                "prepare_threshold", "cursor_factory", "context")


def parse_lsn(text: str) -> int:
    """``'16/B374D848'`` -> an integer position (ValueError when malformed)."""
    hi, sep, lo = text.partition("/")
    if not sep:
        raise ValueError(f"not a PostgreSQL LSN: {text!r}")
    return (int(hi, 16) << 32) | int(lo, 16)


def format_lsn(lsn: int) -> str:
    """An integer position -> PostgreSQL's ``'16/B374D848'`` form."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


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
            row = self._connect(alias).execute("SELECT pg_current_wal_lsn()::text").fetchone()
        except psycopg.Error as exc:
            log.warning("probe of primary %s failed: %s", alias, exc)
            self._drop(alias)
            return None
        return parse_lsn(row[0]) if row else None

    def replica(self, alias: str, pool: ReplicaPool) -> ReplicaHealth:
        """Measure one replica against the pool's last known primary position."""
        now = pool._clock()
        primary = pool.primary_lsn
        try:
            row = self._connect(alias).execute(
                _REPLICA_SQL, (None if primary is None else format_lsn(primary),)).fetchone()
        except psycopg.Error as exc:
            self._drop(alias)
            return ReplicaHealth(alias, up=False, checked_at=now,
                                 error=f"{type(exc).__name__}: {str(exc).strip()[:200]}")
        if row is None or not row[0]:
            return ReplicaHealth(alias, up=False, checked_at=now,
                                 error="not in recovery: promoted or not a replica")
        replay = parse_lsn(row[1]) if row[1] else None
        lag_bytes = None if row[3] is None else max(0, int(row[3]))
        lag_seconds: float | None = None if row[2] is None else max(0.0, float(row[2]))
        if primary is None:
            # The primary does not answer: lag cannot be measured, and the replicas are
            # then the only servers that can answer reads at all.
            lag_seconds = None
        elif lag_bytes == 0:
            lag_seconds = 0.0
        elif replay is not None:
            bound = pool.bound_lag_seconds(replay, now=now)
            if bound is not None:
                lag_seconds = bound if lag_seconds is None else min(lag_seconds, bound)
        return ReplicaHealth(alias, up=True, replay_lsn=replay, lag_bytes=lag_bytes,
                             lag_seconds=lag_seconds, checked_at=now)

    def refresh(self, pool: ReplicaPool) -> None:
        """Measure the group's primary, then every replica, and store the results."""
        pool.record_primary(self.primary_lsn(pool.group.primary))
        for alias in pool.group.replicas:
            pool.update(self.replica(alias, pool))

    def close(self) -> None:
        """Close every probe connection."""
        for alias in list(self._conns):
            self._drop(alias)
