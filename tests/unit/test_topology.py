"""Validation of djscale.toml: good files load, bad ones name the key, value and choices."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from djscale.errors import TopologyError
from djscale.topology import AUTO, load, parse

ROOT = Path(__file__).resolve().parents[2]


def test_demo_topology_loads_with_defaults() -> None:
    topo = load(ROOT / "examples/demo/djscale.toml")
    assert topo.postgres.name == "default"
    assert topo.postgres.replica_aliases == ("default_replica1", "default_replica2")
    assert topo.app.servers == 2
    assert topo.lb.kind == "nginx"
    assert topo.postgres.port == AUTO


def test_empty_topology_is_a_single_primary_with_two_app_servers() -> None:
    topo = parse({})
    assert topo.postgres.replicas == 0
    assert topo.shards == ()
    assert topo.redis.mode == "single"
    assert topo.app.servers == 2


def test_shards_inherit_database_and_user_from_postgres() -> None:
    topo = parse({"postgres": {"database": "shop", "user": "svc"},
                  "shards": [{"name": "s1", "replicas": 1}, {}]})
    assert [s.name for s in topo.shards] == ["s1", "shard2"]
    assert topo.shards[0].database == "shop"
    assert topo.shards[0].user == "svc"
    assert topo.shards[0].replica_aliases == ("s1_replica1",)
    assert [g.name for g in topo.database_groups] == ["default", "s1", "shard2"]


def test_redis_cluster_counts_nodes() -> None:
    topo = parse({"redis": {"mode": "cluster", "masters": 3, "replicas_per_master": 1}})
    assert topo.redis.nodes == 6


def test_pool_turns_off_persistent_connections() -> None:
    topo = parse({"postgres": {"pool": True, "conn_max_age": 60}})
    assert topo.postgres.conn_max_age == 0


@pytest.mark.parametrize(("data", "message"), [
    ({"lb": {"method": "fastest"}},
     "lb.method = 'fastest' is invalid: expected one of 'round_robin', 'least_conn', 'ip_hash'"),
    ({"lb": {"kind": "traefik"}}, "lb.kind = 'traefik' is invalid: expected one of 'nginx'"),
    ({"postgres": {"replicas": -1}}, "postgres.replicas = -1 is invalid: expected an integer"),
    ({"postgres": {"replicas": "two"}}, "postgres.replicas = 'two' is invalid"),
    ({"postgres": {"port": 70000}}, 'postgres.port = 70000 is invalid: expected "auto"'),
    ({"postgres": {"database": "my-db"}}, "postgres.database = 'my-db' is invalid"),
    ({"postgres": {"replica": 2}}, "unknown key 'postgres.replica'; allowed keys"),
    ({"app": {"servers": 0}}, "app.servers = 0 is invalid: expected an integer between 1"),
    ({"app": {"servers": 2, "weights": [1, 2, 3]}}, "app.weights has 3 entries"),
    ({"app": {"weights": [1, 0]}}, "app.weights = [1, 0] is invalid"),
    ({"redis": {"mode": "sentinel"}}, "redis.mode = 'sentinel' is invalid"),
    ({"redis": {"mode": "cluster", "masters": 2}}, "redis.masters = 2 is invalid"),
    ({"shards": [{"name": "default"}]}, "shards[0].name = 'default' is invalid"),
    ({"shards": [{"name": "a"}, {"name": "a"}]}, "shard names must be unique"),
    ({"shards": {"name": "a"}}, "shards = {'name': 'a'} is invalid: expected an array"),
    ({"celery": {"workers": 1}}, "celery.workers = 1 needs celery.app"),
    ({"project": {"wsgi": "nocallable"}}, "project.wsgi = 'nocallable' is invalid"),
    ({"postgres": "big"}, "postgres = 'big' is invalid: expected a table"),
    ({"databases": {}}, "unknown key 'databases'"),
])
def test_invalid_values_name_key_value_and_what_is_allowed(data: dict, message: str) -> None:
    with pytest.raises(TopologyError) as info:
        parse(data, source="t.toml")
    text = str(info.value)
    assert text.startswith("t.toml: ")
    assert message in text
    assert "\n" not in text


def test_malformed_toml_is_reported_with_the_file_name(tmp_path: Path) -> None:
    path = tmp_path / "djscale.toml"
    path.write_text("[postgres\nreplicas = 2\n")
    with pytest.raises(TopologyError, match=r"djscale.toml: not valid TOML"):
        load(path)


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="topology file not found"):
        load(tmp_path / "nope.toml")


@pytest.mark.parametrize("text", ["[postgres\n", '[lb]\nmethod = "fastest"\n'])
def test_cli_reports_a_bad_file_on_one_line_with_exit_status_2(tmp_path: Path,
                                                                text: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    for argv in (["cluster", "up", "--topology", str(path)], ["topology", "check", str(path)]):
        proc = subprocess.run([sys.executable, "-m", "djscale.cli", *argv],
                              capture_output=True, text=True, check=False,
                              env={"PATH": "/usr/bin:/bin", "DJSCALE_STATE_DIR": str(tmp_path)})
        assert proc.returncode == 2, proc.stderr
        assert proc.stdout == ""
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith("djscale: error: ")
        assert "Traceback" not in proc.stderr
