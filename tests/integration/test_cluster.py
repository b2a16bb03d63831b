"""The local cluster boots real services, streams to replicas, and leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from djscale.cluster import LocalCluster
from djscale.cluster.supervisor import group_members, pid_alive, wait_until
from djscale.testing import ClusterFactory
from djscale.topology import load
from tests.integration.helpers import request

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples/demo/djscale.toml"

pytestmark = pytest.mark.integration


def test_demo_cluster_up_status_down_leaves_no_process(
        djscale_cluster_factory: ClusterFactory) -> None:
    topo = load(DEMO)
    cluster = djscale_cluster_factory(topo, parts=("postgres", "redis", "migrate", "app", "lb"),
                                      name="demo")
    rows = {r.name: r for r in cluster.status()}
    assert set(rows) == {"pg-default", "pg-default-replica1", "pg-default-replica2", "redis",
                         "app-1", "app-2", "lb"}
    assert all(r.healthy for r in rows.values()), rows
    assert rows["pg-default-replica1"].detail.startswith("lag ")

    answers = [request(cluster, "GET", "/whoami").json() for _ in range(8)]
    assert {a["app_server"] for a in answers} == {"app-1", "app-2"}
    replica_ports = {cluster.address(n)[1] for n in ("pg-default-replica1", "pg-default-replica2")}
    assert {a["read_db_port"] for a in answers} <= replica_ports

    # `up` again is idempotent: same processes, same ports.
    pids = {p.name: p.pid for p in cluster.processes()}
    cluster.up(only=("postgres", "redis", "app", "lb"))
    assert {p.name: p.pid for p in cluster.processes()} == pids

    procs = cluster.processes()
    cluster.down()
    for proc in procs:
        assert not pid_alive(proc.pid), proc.name
        assert group_members(proc.pid) == [], proc.name


def test_a_row_written_on_the_primary_appears_on_the_replicas(
        djscale_cluster: LocalCluster) -> None:
    topo = djscale_cluster.topology
    user, db = topo.postgres.user, topo.postgres.database
    host, port = djscale_cluster.address("pg-default")
    with psycopg.connect(host=host, port=port, user=user, dbname=db, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS streamed (v text)")
        conn.execute("INSERT INTO streamed VALUES ('hello from the primary')")
    for name in ("pg-default-replica1", "pg-default-replica2"):
        rhost, rport = djscale_cluster.address(name)

        def seen(rhost: str = rhost, rport: int = rport) -> bool:
            with psycopg.connect(host=rhost, port=rport, user=user, dbname=db) as conn:
                row = conn.execute("SELECT count(*) FROM streamed "
                                   "WHERE v = 'hello from the primary'").fetchone()
                return bool(row and row[0] == 1)

        assert wait_until(seen, timeout=10), f"row never reached {name}"
        with psycopg.connect(host=rhost, port=rport, user=user, dbname=db) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)


def test_a_service_that_fails_to_start_is_named_with_its_log(
        djscale_cluster_factory: ClusterFactory) -> None:
    from djscale.errors import ServiceStartError

    with pytest.raises(ServiceStartError) as info:
        djscale_cluster_factory({"project": {"wsgi": "nosuchmodule.wsgi:application",
                                             "settings": "nosuchmodule.settings"}},
                                parts=("redis", "app"), name="broken")
    assert info.value.service == "app-1"
    assert "nosuchmodule" in info.value.log_tail


def test_a_redis_cluster_of_three_masters_with_replicas_forms(
        djscale_cluster_factory: ClusterFactory) -> None:
    import redis

    cluster = djscale_cluster_factory({"redis": {"mode": "cluster", "masters": 3,
                                                 "replicas_per_master": 1}},
                                      parts=("redis",), name="rediscluster")
    nodes = [p for p in cluster.processes() if p.kind == "redis"]
    assert len(nodes) == 6
    client: redis.RedisCluster[bytes] = redis.RedisCluster(host=nodes[0].host,
                                                           port=nodes[0].port)
    try:
        for i in range(20):
            client.set(f"k{i}", i)
        assert [int(client.get(f"k{i}") or -1) for i in range(20)] == list(range(20))
        masters = [n for n in client.get_nodes() if n.server_type == "primary"]
        assert len(masters) == 3
    finally:
        client.close()
