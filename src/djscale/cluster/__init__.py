"""The local cluster: real PostgreSQL, Redis, gunicorn, nginx/HAProxy and Celery processes.

See :class:`djscale.cluster.local.LocalCluster`.
"""

from djscale.cluster.local import PARTS, LocalCluster, ServiceStatus

__all__ = ["PARTS", "LocalCluster", "ServiceStatus"]
