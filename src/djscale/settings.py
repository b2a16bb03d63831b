"""Django settings derived from the topology.

:func:`from_topology` turns a :class:`~djscale.topology.Topology` (and, for ``auto``
ports, the state file of the running local cluster) into ``DATABASES``, ``CACHES``,
``DATABASE_ROUTERS``, the session engine, the Celery broker URL and the ``DJSCALE``
settings read by the routers and the replica pool. Use it at the bottom of a settings
module::

    from djscale.settings import from_topology
    globals().update(from_topology())   # $DJSCALE_TOPOLOGY or ./djscale.toml

This module must not open connections or start anything: it only computes settings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from djscale.errors import ConfigurationError
from djscale.localstate import LocalState, default_state_dir
from djscale.topology import AUTO, DatabaseGroup, PgBouncerSpec, Port, Topology, load

__all__ = ["address_variable", "database_settings", "from_topology", "redis_urls",
           "resolve_topology"]


def resolve_topology(topology: Topology | str | Path | None) -> Topology:
    """A Topology, a path to a file, or None for ``$DJSCALE_TOPOLOGY`` / ``./djscale.toml``."""
    if isinstance(topology, Topology):
        return topology
    path = topology or os.environ.get("DJSCALE_TOPOLOGY") or "djscale.toml"
    return load(path)


class _Addresses:
    def __init__(self, state: LocalState | None) -> None:
        self.state = state

    def get(self, service: str, host: str, port: Port) -> tuple[str, int]:
        override = os.environ.get(address_variable(service))
        if override:
            # Deployments (Kubernetes) name each service's address in the environment.
            found_host, _, found_port = override.rpartition(":")
            if not found_host or not found_port.isdigit():
                raise ConfigurationError(
                    f"{address_variable(service)} = {override!r} is invalid: expected host:port")
            return found_host, int(found_port)
        if port != AUTO:
            return host, int(port)
        found = self.state.address(service) if self.state is not None else None
        if found is None:
            where = self.state.path if self.state is not None else "the state folder"
            raise ConfigurationError(
                f"{service} has port \"auto\" and no running local cluster records it in "
                f"{where}; start it with `djscale cluster up` or give the topology a fixed port"
            )
        return found


def address_variable(service: str) -> str:
    """The environment variable that overrides a service's address (``host:port``).

    ``pgbouncer-default`` -> ``DJSCALE_ADDR_PGBOUNCER_DEFAULT``. It wins over the topology
    and the local cluster's state; generated Kubernetes manifests set one per service.
    """
    return "DJSCALE_ADDR_" + service.upper().replace("-", "_")


def database_settings(group: DatabaseGroup, host: str, port: int, *,
                      replica_of: str | None = None,
                      pgbouncer: PgBouncerSpec | None = None) -> dict[str, Any]:
    """One ``DATABASES`` entry for a member of a replication group.

    With ``pgbouncer`` (the entry points at a PgBouncer) in transaction mode, a client's
    consecutive transactions may run on different server connections: cursors declared
    WITH HOLD (Django's server-side cursors outside a transaction) and prepared
    statements would be lost between them, so both are turned off.
    """
    options: dict[str, Any] = {"connect_timeout": 2}
    if group.pool:
        options["pool"] = {"min_size": 1, "max_size": 8, "timeout": 5}
    entry: dict[str, Any] = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": group.database,
        "USER": group.user,
        "PASSWORD": os.environ.get("DJSCALE_DB_PASSWORD", ""),
        "HOST": host,
        "PORT": str(port),
        "CONN_MAX_AGE": 0 if group.pool else group.conn_max_age,
        # With a pool, Django (5.1+) turns this into psycopg_pool's check at checkout:
        # without it every connection idle in the pool across a database restart would
        # fail the request that takes it next.
        "CONN_HEALTH_CHECKS": True,
        "OPTIONS": options,
        "TEST": {"NAME": f"test_{group.database}"},
    }
    if replica_of is not None:
        # Django's test runner must not create a test database on a replica: it reads the
        # primary's test database through streaming replication.
        entry["TEST"] = {"MIRROR": replica_of}
    if pgbouncer is not None and pgbouncer.pool_mode == "transaction":
        entry["DISABLE_SERVER_SIDE_CURSORS"] = True
        options["prepare_threshold"] = None
    return entry


def from_topology(topology: Topology | str | Path | None = None, *,
                  state_dir: str | Path | None = None) -> dict[str, Any]:
    """Return Django settings for the topology's databases, caches, routers and broker.

    ``auto`` ports are resolved from the local cluster's state in ``state_dir`` (default
    ``$DJSCALE_STATE_DIR`` or ``./.djscale``); fixed ports are used as they are.
    Raise :class:`~djscale.errors.ConfigurationError` when an address cannot be resolved.
    """
    topo = resolve_topology(topology)
    sdir = Path(state_dir) if state_dir is not None else default_state_dir()
    state = LocalState.read(sdir) if (sdir / "cluster.json").exists() else None
    addr = _Addresses(state)

    databases: dict[str, dict[str, Any]] = {}
    groups: dict[str, dict[str, Any]] = {}
    for group in topo.database_groups:
        if topo.pgbouncer.enabled:
            bport: Port = topo.pgbouncer.port if group is topo.postgres else AUTO
            host, port = addr.get(f"pgbouncer-{group.name}", group.host, bport)
            databases[group.name] = database_settings(group, host, port,
                                                      pgbouncer=topo.pgbouncer)
        else:
            host, port = addr.get(f"pg-{group.name}", group.host, group.port)
            databases[group.name] = database_settings(group, host, port)
        for i, alias in enumerate(group.replica_aliases):
            configured = group.replica_ports[i] if i < len(group.replica_ports) else AUTO
            rhost, rport = addr.get(f"pg-{alias.replace('_', '-')}", group.replica_host(i),
                                    configured)
            databases[alias] = database_settings(group, rhost, rport, replica_of=group.name)
        groups[group.name] = {
            "PRIMARY": group.name,
            "REPLICAS": list(group.replica_aliases),
            "MAX_LAG_SECONDS": group.max_lag_seconds,
            "MAX_LAG_BYTES": group.max_lag_bytes,
            "POLICY": group.replica_policy,
        }

    redis_urls, broker_url = _redis_urls(topo, addr)
    cache_location: str | list[str] = redis_urls if len(redis_urls) > 1 else redis_urls[0]
    cluster = topo.redis.mode == "cluster"
    caches = {
        # In-process L1 over Redis L2, invalidated across processes (docs/cache.md).
        "default": {
            "BACKEND": "djscale.cache.TieredCache",
            "LOCATION": cache_location,
            "KEY_PREFIX": topo.project.name,
            "OPTIONS": {"CLUSTER": cluster},
        },
        # Sessions: Redis only (no L1, every app server sees the same session at once),
        # backed by the database (djscale.sessions, Django's cached_db plus failover-safe
        # cache writes and primary reads on a miss) so a Redis restart, outage or
        # failover logs nobody out and a lagging replica never serves an old session.
        "sessions": {
            "BACKEND": "djscale.cache.TieredCache",
            "LOCATION": cache_location,
            "KEY_PREFIX": f"{topo.project.name}:sess",
            "OPTIONS": {"CLUSTER": cluster, "L1_MAX_ENTRIES": 0},
        },
    }

    return {
        "DATABASES": databases,
        "DATABASE_ROUTERS": (["djscale.sharding.router.ShardRouter"] if topo.shards else [])
        + ["djscale.db.routers.PrimaryReplicaRouter"],
        "CACHES": caches,
        "SESSION_ENGINE": "djscale.sessions",
        "SESSION_CACHE_ALIAS": "sessions",
        "CELERY_BROKER_URL": topo.celery.broker or broker_url,
        # djscale.events confirms each delivery by its task result, stored in the broker's
        # Redis (so every service on one event broker sees the same results); other tasks
        # keep ignoring their results, as they did without a backend. Override after this.
        "CELERY_RESULT_BACKEND": ((topo.celery.broker or broker_url)
                                  if (topo.celery.broker or broker_url).startswith(
                                      ("redis://", "rediss://")) else None),
        "CELERY_TASK_IGNORE_RESULT": True,
        "DJSCALE": {
            "TOPOLOGY": topo.source,
            "CELERY_APP": topo.celery.app,
            "REPLICATION_GROUPS": groups,
            "SHARDS": [s.name for s in topo.shards],
            "SHARDING": {
                "ALIASES": [s.name for s in topo.shards],
                "LOGICAL_SHARDS": topo.sharding.logical_shards,
                "EPOCH_MS": topo.sharding.epoch_ms,
                "MODE": topo.sharding.mode,
                "MAP_ALIAS": topo.postgres.name,
                "MAP_TTL_SECONDS": 1.0,
            },
            "REDIS_MODE": topo.redis.mode,
            "REDIS_URLS": redis_urls,
            "TRUSTED_PROXIES": [topo.lb.host],
            "APP_SERVERS": topo.app.servers,
            "PGBOUNCER": topo.pgbouncer.pool_mode if topo.pgbouncer.enabled else None,
            "SERVICES": {
                svc.name: {
                    "URLS": list(svc.urls),
                    "TIMEOUT": svc.timeout,
                    "CONNECT_TIMEOUT": svc.connect_timeout,
                    "RETRIES": svc.retries,
                    "BREAKER": {
                        "FAILURE_RATE": svc.breaker_failure_rate,
                        "MINIMUM_CALLS": svc.breaker_minimum_calls,
                        "WINDOW": svc.breaker_window,
                        "RESET": svc.breaker_reset,
                    },
                }
                for svc in topo.services
            },
        },
    }


def redis_urls(topology: Topology | str | Path | None = None, *,
               state_dir: str | Path | None = None) -> list[str]:
    """The topology's Redis URLs (as in ``DJSCALE["REDIS_URLS"]``), resolving ``auto`` ports.

    For processes that need Redis but no database (the API gateway).
    """
    topo = resolve_topology(topology)
    sdir = Path(state_dir) if state_dir is not None else default_state_dir()
    state = LocalState.read(sdir) if (sdir / "cluster.json").exists() else None
    return _redis_urls(topo, _Addresses(state))[0]


def _redis_urls(topo: Topology, addr: _Addresses) -> tuple[list[str], str]:
    spec = topo.redis
    if spec.mode == "single":
        host, port = addr.get("redis", spec.host, spec.port)
        return [f"redis://{host}:{port}/0"], f"redis://{host}:{port}/1"
    urls = []
    for i in range(1, spec.nodes + 1):
        port_i: Port = spec.port if (i == 1 and spec.port != AUTO) else AUTO
        host, port = addr.get(f"redis-{i}", spec.host, port_i)
        urls.append(f"redis://{host}:{port}")
    broker = ""
    if topo.celery.workers:
        host, port = addr.get("redis-broker", spec.host, AUTO)
        broker = f"redis://{host}:{port}/0"
    return urls, broker
