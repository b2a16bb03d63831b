"""Boot a small Redis Cluster (3 masters, optionally a replica each) for cache tests."""

from __future__ import annotations

from typing import Any

from djscale.cluster import LocalCluster


def boot_redis_cluster(factory: Any, name: str,
                       replicas: int = 0) -> tuple[LocalCluster, list[str]]:
    """A 3-master Redis Cluster from ``factory`` (``replicas`` per master).

    Returns the cluster and the URLs of all its nodes (``redis-1`` ... ``redis-N``).
    """
    cluster = factory({"project": {"name": name.replace("-", "_")},
                       "redis": {"mode": "cluster", "masters": 3,
                                 "replicas_per_master": replicas}},
                      parts=("redis",), name=name)
    nodes = 3 * (1 + replicas)
    urls = [f"redis://{h}:{p}"
            for h, p in (cluster.address(f"redis-{i}") for i in range(1, nodes + 1))]
    return cluster, urls
