"""Redis for the local cluster: one node, or a Redis Cluster with replicas.

Owns the redis-server command lines, readiness probes and ``redis-cli --cluster create``.
Cache-only nodes persist nothing; a node that is also the Celery broker keeps an
append-only file so that queued messages survive a restart.
"""

from __future__ import annotations

import signal
from pathlib import Path

import redis

from djscale.cluster.supervisor import ManagedProcess, run

__all__ = ["cluster_ok", "create_cluster", "ping", "redis_process"]


def redis_process(name: str, *, host: str, port: int, data_dir: Path, log: Path,
                  cluster: bool, role: str = "", durable: bool = False) -> ManagedProcess:
    """Describe a redis-server process (not yet started).

    ``durable`` (for a node that is a Celery broker) turns on the append-only file, so
    messages the broker accepted survive a restart: without it, a broker restart would
    silently drop every queued event.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    cmd = ["redis-server", "--port", str(port), "--bind", host, "--save", "",
           "--appendonly", "yes" if durable else "no", "--appendfsync", "everysec",
           "--daemonize", "no", "--protected-mode", "no",
           "--dir", str(data_dir), "--maxclients", "4000"]
    if cluster:
        cmd += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "2000"]
    return ManagedProcess(name=name, kind="redis", role=role, host=host, port=port, cmd=cmd,
                          log=str(log), stop_signal=signal.SIGTERM, data_dir=str(data_dir))


def ping(host: str, port: int) -> bool:
    """Return True if Redis answers PING."""
    client = redis.Redis(host=host, port=port, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        return bool(client.ping())
    finally:
        client.close()


def cluster_ok(host: str, port: int) -> bool:
    """Return True if the node at ``host:port`` reports ``cluster_state:ok``."""
    client = redis.Redis(host=host, port=port, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        info = client.execute_command("CLUSTER INFO")
    finally:
        client.close()
    # redis-py parses CLUSTER INFO into a dict; older versions return the raw text.
    if isinstance(info, dict):
        return str(info.get("cluster_state", "")) == "ok"
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "cluster_state:ok" in text


def create_cluster(nodes: list[ManagedProcess], replicas_per_master: int, log: Path) -> None:
    """Join started cluster-mode nodes into one Redis Cluster (skip if already formed)."""
    first = nodes[0]
    if cluster_ok(first.host, first.port):
        return
    run(["redis-cli", "--cluster", "create", *[f"{n.host}:{n.port}" for n in nodes],
         "--cluster-replicas", str(replicas_per_master), "--cluster-yes"],
        service="redis-cluster", log=log, timeout=60)
