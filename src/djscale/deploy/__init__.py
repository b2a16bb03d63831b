"""Deployment of a topology beyond one machine.

- :mod:`djscale.deploy.kubernetes`: the topology as Kubernetes manifests
  (``djscale deploy kubernetes --topology FILE --out DIR``).
- :mod:`djscale.deploy.connections`: PostgreSQL connections per database as app servers
  grow, with and without PgBouncer.
"""

from __future__ import annotations

from djscale.deploy.connections import ConnectionBudget, connection_budget
from djscale.deploy.kubernetes import (
    Manifest,
    kubernetes_manifests,
    load_manifests,
    write_kubernetes,
)

__all__ = [
    "ConnectionBudget",
    "Manifest",
    "connection_budget",
    "kubernetes_manifests",
    "load_manifests",
    "write_kubernetes",
]
