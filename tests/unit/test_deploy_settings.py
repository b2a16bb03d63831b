"""Settings for deployments: PgBouncer in front of primaries, addresses from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from djscale.cluster.state import ClusterState
from djscale.errors import ConfigurationError
from djscale.settings import address_variable, from_topology
from djscale.topology import parse


def _state(tmp_path: Path, services: dict[str, int]) -> Path:
    state = ClusterState(tmp_path)
    state.services = {name: {"host": "127.0.0.1", "port": port}
                      for name, port in services.items()}
    state.write()
    return tmp_path


def test_pgbouncer_takes_the_primaries_and_leaves_replicas_direct(tmp_path: Path) -> None:
    topo = parse({"postgres": {"replicas": 1}, "shards": [{"name": "shard1"}],
                  "pgbouncer": {"enabled": True}})
    state = _state(tmp_path, {"pg-default": 5001, "pg-default-replica1": 5002,
                              "pg-shard1": 5003, "pgbouncer-default": 6001,
                              "pgbouncer-shard1": 6003, "redis": 7001})
    dbs = from_topology(topo, state_dir=state)["DATABASES"]
    assert (dbs["default"]["PORT"], dbs["shard1"]["PORT"]) == ("6001", "6003")
    assert dbs["default_replica1"]["PORT"] == "5002"
    for alias in ("default", "shard1"):
        assert dbs[alias]["DISABLE_SERVER_SIDE_CURSORS"] is True
        assert dbs[alias]["OPTIONS"]["prepare_threshold"] is None
    assert "DISABLE_SERVER_SIDE_CURSORS" not in dbs["default_replica1"]


def test_session_pooling_keeps_server_side_cursors(tmp_path: Path) -> None:
    topo = parse({"pgbouncer": {"enabled": True, "pool_mode": "session", "port": 6432},
                  "redis": {"port": 6379}})
    s = from_topology(topo, state_dir=tmp_path)
    assert s["DATABASES"]["default"]["PORT"] == "6432"
    assert "DISABLE_SERVER_SIDE_CURSORS" not in s["DATABASES"]["default"]
    assert s["DJSCALE_DERIVED"]["PGBOUNCER"] == "session"


def test_addresses_from_the_environment_win(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(address_variable("pgbouncer-default"), "shop-pg-default-pooler:5432")
    monkeypatch.setenv(address_variable("redis"), "shop-redis:6379")
    s = from_topology(parse({"pgbouncer": {"enabled": True}}), state_dir=tmp_path)
    assert (s["DATABASES"]["default"]["HOST"], s["DATABASES"]["default"]["PORT"]) == (
        "shop-pg-default-pooler", "5432")
    assert s["CACHES"]["default"]["LOCATION"] == "redis://shop-redis:6379/0"


def test_a_malformed_address_variable_is_a_configuration_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DJSCALE_ADDR_REDIS", "no-port")
    with pytest.raises(ConfigurationError, match="DJSCALE_ADDR_REDIS = 'no-port' is invalid"):
        from_topology(parse({"postgres": {"port": 5432}}), state_dir=tmp_path)
