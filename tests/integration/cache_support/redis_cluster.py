"""Boot a small Redis Cluster (3 masters, no replicas) for cache tests."""

from __future__ import annotations

from typing import Any

from djscale.cluster import LocalCluster


def boot_redis_cluster(factory: Any, name: str) -> tuple[LocalCluster, list[str]]:
    """A 3-master Redis Cluster from ``factory``; returns it and its node URLs."""
    cluster = factory({"project": {"name": name.replace("-", "_")},
                       "redis": {"mode": "cluster", "masters": 3, "replicas_per_master": 0}},
                      parts=("redis",), name=name)
    urls = [f"redis://{h}:{p}" for h, p in (cluster.address(f"redis-{i}") for i in range(1, 4))]
    return cluster, urls
