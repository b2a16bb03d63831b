"""Django settings derived from a topology."""

from __future__ import annotations

from pathlib import Path

import pytest

from djscale.cluster.state import ClusterState
from djscale.errors import ConfigurationError
from djscale.settings import from_topology
from djscale.topology import parse


def test_fixed_ports_need_no_running_cluster(tmp_path: Path) -> None:
    topo = parse({"postgres": {"port": 5432, "replicas": 1, "replica_ports": [5433]},
                  "redis": {"port": 6379}})
    s = from_topology(topo, state_dir=tmp_path)
    assert s["DATABASES"]["default"]["PORT"] == "5432"
    assert s["DATABASES"]["default_replica1"]["PORT"] == "5433"
    assert s["DATABASES"]["default_replica1"]["TEST"] == {"MIRROR": "default"}
    assert s["CACHES"]["default"]["LOCATION"] == "redis://127.0.0.1:6379/0"
    assert s["CELERY_BROKER_URL"] == "redis://127.0.0.1:6379/1"
    assert s["DATABASE_ROUTERS"] == ["djscale.db.routers.PrimaryReplicaRouter"]
    group = s["DJSCALE_DERIVED"]["REPLICATION_GROUPS"]["default"]
    assert group["REPLICAS"] == ["default_replica1"]


def test_auto_ports_come_from_the_cluster_state(tmp_path: Path) -> None:
    state = ClusterState(tmp_path)
    state.services = {
        "pg-default": {"host": "127.0.0.1", "port": 40001},
        "pg-shard1": {"host": "127.0.0.1", "port": 40002},
        "redis": {"host": "127.0.0.1", "port": 40003},
    }
    state.write()
    s = from_topology(parse({"shards": [{"name": "shard1"}]}), state_dir=tmp_path)
    assert s["DATABASES"]["default"]["PORT"] == "40001"
    assert s["DATABASES"]["shard1"]["PORT"] == "40002"
    assert s["DJSCALE_DERIVED"]["SHARDING"]["ALIASES"] == ["shard1"]


def test_auto_port_without_a_cluster_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="djscale cluster up"):
        from_topology(parse({}), state_dir=tmp_path)


def test_pool_option_replaces_persistent_connections(tmp_path: Path) -> None:
    topo = parse({"postgres": {"port": 5432, "pool": True}, "redis": {"port": 6379}})
    db = from_topology(topo, state_dir=tmp_path)["DATABASES"]["default"]
    assert db["CONN_MAX_AGE"] == 0
    assert "pool" in db["OPTIONS"]
