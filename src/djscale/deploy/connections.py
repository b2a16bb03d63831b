"""How many PostgreSQL connections a topology needs as app servers grow.

Owns the arithmetic documented in ``docs/pgbouncer.md``: every gunicorn thread (and every
Celery process) holds at most one connection per database alias it uses, so a primary
sees ``servers x workers x threads`` client connections from the app servers alone.
Without a pooler each one is a PostgreSQL backend; with PgBouncer in transaction mode
PostgreSQL sees only ``pooler instances x default_pool_size`` of them. Replicas are read
directly (a read-your-writes check and the read it guards must use the same connection),
so they always see the client count.

Pure functions of the topology: nothing here connects to anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from djscale.topology import Topology

__all__ = ["RESERVED_CONNECTIONS", "ConnectionBudget", "connection_budget"]

RESERVED_CONNECTIONS = 10
"""Head-room on every server: superuser (3 by default), replication, monitoring, admin."""


@dataclass(frozen=True)
class ConnectionBudget:
    """Connections to one replication group when ``app_servers`` app servers run."""

    app_servers: int
    app_clients: int
    worker_clients: int
    other_clients: int
    pooled: bool
    primary_backends: int
    replica_backends: int

    @property
    def clients(self) -> int:
        """Client connections aimed at the primary (through PgBouncer when pooled)."""
        return self.app_clients + self.worker_clients + self.other_clients

    @property
    def max_connections(self) -> int:
        """The smallest safe ``max_connections`` for every server of the group."""
        return max(self.primary_backends, self.replica_backends) + RESERVED_CONNECTIONS


def connection_budget(topology: Topology, *, app_servers: int | None = None,
                      pooler_instances: int = 1, replicas: int | None = None,
                      ) -> ConnectionBudget:
    """Connections per database of ``topology`` with ``app_servers`` servers (default:
    ``app.servers``) and ``pooler_instances`` PgBouncer processes in front of a primary.

    ``replicas`` (default: the main group's) only decides whether replica backends count.
    """
    servers = topology.app.servers if app_servers is None else app_servers
    app = topology.app
    celery = topology.celery
    app_clients = servers * app.workers * app.threads
    worker_clients = celery.workers * celery.concurrency
    other = 1  # a migration or management command running at the same time
    clients = app_clients + worker_clients + other
    pooled = topology.pgbouncer.enabled
    if pooled:
        primary = min(clients, pooler_instances * topology.pgbouncer.default_pool_size)
    else:
        primary = clients
    has_replicas = (topology.postgres.replicas if replicas is None else replicas) > 0
    return ConnectionBudget(
        app_servers=servers, app_clients=app_clients, worker_clients=worker_clients,
        other_clients=other, pooled=pooled, primary_backends=primary,
        replica_backends=clients if has_replicas else 0,
    )
