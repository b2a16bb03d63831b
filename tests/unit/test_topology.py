"""Validation of djscale.toml: good files load, bad ones name the key, value and choices."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

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
def test_invalid_values_name_key_value_and_what_is_allowed(
        data: dict[str, Any], message: str) -> None:
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
    for argv in (["cluster", "up", "--topology", str(path)], ["topology", "check", str(path)],
                 ["topology", "check", "-t", str(path)]):
        proc = subprocess.run([sys.executable, "-m", "djscale.cli", *argv],
                              capture_output=True, text=True, check=False,
                              env={"PATH": "/usr/bin:/bin", "DJSCALE_STATE_DIR": str(tmp_path)})
        assert proc.returncode == 2, proc.stderr
        assert proc.stdout == ""
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith("djscale: error: ")
        assert "Traceback" not in proc.stderr


# --------------------------------------------------------------- services and gateway

_SERVICES = {"users": {"urls": ["http://127.0.0.1:8101"], "timeout": 2.0, "retries": 1},
             "orders": {"urls": ["http://127.0.0.1:8102/api"]}}


def test_services_and_gateway_routes_load_with_defaults() -> None:
    topo = parse({"services": _SERVICES, "gateway": {
        "rate_limit": 10,
        "routes": [{"prefix": "/api/users/", "service": "users", "timeout": 0.5,
                    "write_timeout": 4},
                   {"prefix": "/api/orders/", "service": "orders", "strip_prefix": True}],
        "compositions": [{"path": "/api/profile/{user_id}", "optional": ["orders"],
                          "parts": {"user": "users:/users/{user_id}",
                                    "orders": "orders:/orders/?user={user_id}"}}]}})
    assert topo.service("users").timeout == 2.0
    assert topo.service("orders").retries == 2
    assert topo.service("orders").urls == ("http://127.0.0.1:8102/api",)
    route = topo.gateway.routes[0]
    assert (route.prefix, route.service, route.timeout, route.retries,
            route.write_timeout) == ("/api/users/", "users", 0.5, None, 4.0)
    assert topo.gateway.routes[1].strip_prefix is True
    assert topo.gateway.routes[1].write_timeout is None
    comp = topo.gateway.compositions[0]
    assert comp.parts == (("user", "users", "/users/{user_id}"),
                          ("orders", "orders", "/orders/?user={user_id}"))
    assert comp.optional == ("orders",)
    assert topo.gateway.rate_limit == 10


def test_unknown_service_lookup_names_the_configured_ones() -> None:
    with pytest.raises(TopologyError, match=r"no service 'carts' in \[services\] "
                                            r"\(configured: users, orders\)"):
        parse({"services": _SERVICES}).service("carts")


@pytest.mark.parametrize(("data", "message"), [
    ({"services": {"users": {}}}, "services.users.urls is missing"),
    ({"services": {"users": {"urls": ["ftp://x"]}}},
     "services.users.urls[0] = 'ftp://x' is invalid: expected http(s)://host[:port]"),
    ({"services": {"users": {"urls": ["http://h/?q=1"]}}}, "services.users.urls[0]"),
    ({"services": {"users": {"urls": ["http://h"], "timeout": 0}}},
     "services.users.timeout = 0.0 is invalid: expected a number > 0"),
    ({"services": {"users": {"urls": ["http://h"], "breaker_failure_rate": 2}}},
     "services.users.breaker_failure_rate = 2.0 is invalid: expected a number in (0, 1]"),
    ({"services": {"Users": {"urls": ["http://h"]}}}, "[services.Users] is invalid"),
    ({"gateway": {"routes": [{"prefix": "/a", "service": "nope"}]}},
     "gateway.routes[0].service = 'nope' is invalid: expected a service of [services]"),
    ({"services": _SERVICES, "gateway": {"routes": [{"prefix": "a", "service": "users"}]}},
     "gateway.routes[0].prefix = 'a' is invalid: expected a path starting with /"),
    ({"services": _SERVICES, "gateway": {"routes": [{"prefix": "/a", "service": "users"},
                                                    {"prefix": "/a", "service": "orders"}]}},
     "gateway.routes[1].prefix = '/a' is invalid: prefixes must be unique"),
    ({"services": _SERVICES, "gateway": {"routes": [{"prefix": "/a", "service": "users",
                                                     "colour": "red"}]}},
     "unknown key 'gateway.routes[0].colour'"),
    ({"services": _SERVICES, "gateway": {"routes": [{"prefix": "/a", "service": "users",
                                                     "write_timeout": 0}]}},
     "gateway.routes[0].write_timeout = 0.0 is invalid: expected a number > 0"),
    ({"services": _SERVICES, "gateway": {"compositions": [
        {"path": "/p/{a}", "parts": {"x": "users:/y/{b}"}}]}},
     "gateway.compositions[0].parts.x = 'users:/y/{b}' is invalid: placeholder {b}"),
    ({"services": _SERVICES, "gateway": {"compositions": [
        {"path": "/p/{a}", "parts": {"x": "carts:/y/{a}"}}]}},
     "gateway.compositions[0].parts.x (service) = 'carts' is invalid"),
    ({"services": _SERVICES, "gateway": {"compositions": [
        {"path": "/p/{a}", "parts": {"x": "users:/y/{a}"}, "optional": ["z"]}]}},
     "gateway.compositions[0].optional = ['z'] is invalid: expected keys of"),
    ({"gateway": {"routes": "x"}}, "gateway.routes = 'x' is invalid: expected an array"),
])
def test_invalid_services_and_gateway_name_key_and_value(
        data: dict[str, Any], message: str) -> None:
    with pytest.raises(TopologyError) as info:
        parse(data)
    assert message in str(info.value)


# --------------------------------------------------------------- pgbouncer and kubernetes


def test_pgbouncer_is_off_by_default_and_pools_transactions_when_on() -> None:
    assert parse({}).pgbouncer.enabled is False
    spec = parse({"pgbouncer": {"enabled": True, "default_pool_size": 10, "port": 6432}}).pgbouncer
    assert (spec.enabled, spec.pool_mode, spec.default_pool_size, spec.port) == (
        True, "transaction", 10, 6432)


def test_kubernetes_defaults_derive_from_the_project_and_app_servers() -> None:
    k = parse({"project": {"name": "my_shop"}, "app": {"servers": 3}}).kubernetes
    assert (k.namespace, k.image, k.db_secret, k.app_secret) == (
        "my-shop", "my-shop:latest", "my-shop-db", "my-shop-app")
    assert (k.min_replicas, k.max_replicas) == (3, 12)


@pytest.mark.parametrize(("data", "message"), [
    ({"pgbouncer": {"pool_mode": "statement"}},
     "pgbouncer.pool_mode = 'statement' is invalid: expected one of 'transaction', 'session'"),
    ({"pgbouncer": {"default_pool_size": 0}}, "pgbouncer.default_pool_size = 0 is invalid"),
    ({"pgbouncer": {"pool": 3}}, "unknown key 'pgbouncer.pool'"),
    ({"kubernetes": {"namespace": "My_NS"}},
     "kubernetes.namespace = 'My_NS' is invalid: expected a Kubernetes name"),
    ({"kubernetes": {"cpu_limit": "lots"}}, "kubernetes.cpu_limit = 'lots' is invalid"),
    ({"kubernetes": {"memory_request": "1GB"}}, "kubernetes.memory_request = '1GB' is invalid"),
    ({"kubernetes": {"min_replicas": 4, "max_replicas": 2}},
     "kubernetes.max_replicas = 2 is invalid: expected at least kubernetes.min_replicas (4)"),
    ({"kubernetes": {"ingress_host": "Shop Example"}}, "kubernetes.ingress_host"),
    ({"kubernetes": {"image": "bad image"}}, "kubernetes.image = 'bad image' is invalid"),
])
def test_invalid_pgbouncer_and_kubernetes_values_name_the_key(
        data: dict[str, Any], message: str) -> None:
    with pytest.raises(TopologyError) as info:
        parse(data)
    assert message in str(info.value)


def test_sharding_defaults_to_1024_hash_shards_and_2025_epoch() -> None:
    spec = parse({}).sharding
    assert (spec.logical_shards, spec.mode, spec.epoch_ms) == (1024, "hash", 1735689600000)


def test_sharding_epoch_accepts_toml_dates_and_iso_strings() -> None:
    import datetime as dt

    assert parse({"sharding": {"epoch": "2024-05-01"}}).sharding.epoch_ms == 1714521600000
    assert parse({"sharding": {"epoch": dt.date(2024, 5, 1)}}).sharding.epoch_ms == 1714521600000
    assert parse({"sharding": {"epoch": "2024-05-01T00:00:01+00:00"}}).sharding.epoch_ms == (
        1714521601000)


@pytest.mark.parametrize(("table", "message"), [
    ({"logical_shards": 0}, "sharding.logical_shards = 0 is invalid"),
    ({"logical_shards": 8193}, "between 1 and 8192"),
    ({"mode": "range"}, "one of 'hash', 'modulo'"),
    ({"epoch": "2999-01-01"}, "a past UTC date"),
    ({"epoch": "yesterday"}, "sharding.epoch = 'yesterday' is invalid"),
    ({"shards": 3}, "unknown key 'sharding.shards'"),
])
def test_bad_sharding_values_name_the_key(table: dict[str, object], message: str) -> None:
    with pytest.raises(TopologyError, match=re.escape(message)):
        parse({"sharding": table})


MULTIHOST = {
    "hosts": {
        "db": {"address": "10.77.0.2", "netns": "djs-db"},
        "db2": {"address": "10.77.0.3"},
        "cache": {"address": "10.77.0.4"},
        "app1": {"address": "10.77.0.5"},
        "app2": {"address": "10.77.0.6"},
        "edge": {"address": "10.77.0.7"},
    },
    "postgres": {"host": "db", "replicas": 1, "replica_hosts": ["db2"]},
    "shards": [{"name": "shard1"}, {"name": "shard2", "host": "db2"}],
    "redis": {"host": "cache"},
    "app": {"servers": 2, "hosts": ["app1", "app2"]},
    "lb": {"host": "edge"},
    "celery": {"workers": 1, "app": "p.celery:app", "hosts": ["app2"]},
}


def test_hosts_are_resolved_to_addresses_and_placed_per_server() -> None:
    topo = parse(MULTIHOST)
    assert topo.postgres.host == "10.77.0.2"
    assert topo.postgres.replica_host(0) == "10.77.0.3"
    assert [s.host for s in topo.shards] == ["10.77.0.2", "10.77.0.3"]  # shard1 inherits
    assert topo.redis.host == "10.77.0.4"
    assert [topo.app.host_of(i) for i in range(2)] == ["10.77.0.5", "10.77.0.6"]
    assert topo.lb.host == "10.77.0.7"
    assert topo.celery.host_of(0) == "10.77.0.6"
    assert topo.netns_of("10.77.0.2") == "djs-db"
    assert topo.netns_of("10.77.0.3") == ""
    host = topo.host_at("10.77.0.5")
    assert host is not None and host.name == "app1"


def test_without_hosts_every_service_stays_on_loopback() -> None:
    topo = parse({"postgres": {"replicas": 2}, "app": {"servers": 3}})
    assert topo.hosts == ()
    assert topo.postgres.replica_host(1) == "127.0.0.1"
    assert {topo.app.host_of(i) for i in range(3)} == {"127.0.0.1"}
    assert topo.celery.host_of(0) == "127.0.0.1"
    assert topo.netns_of("127.0.0.1") == ""


def test_hosts_may_still_be_plain_addresses_next_to_names() -> None:
    topo = parse({"hosts": {"db": {"address": "10.0.0.2"}},
                  "postgres": {"host": "db"}, "redis": {"host": "10.0.0.9"}})
    assert (topo.postgres.host, topo.redis.host) == ("10.0.0.2", "10.0.0.9")


@pytest.mark.parametrize(("change", "message"), [
    ({"redis": {"host": "cach"}},
     "redis.host = 'cach' is not a host of [hosts] (known: app1, app2, cache, db, db2, edge)"),
    ({"app": {"servers": 2, "hosts": ["app1"]}},
     "app.hosts has 1 entries but there are 2 app servers"),
    ({"postgres": {"replicas": 2, "replica_hosts": ["db2"]}},
     "postgres.replica_hosts has 1 entries but there are 2 replicas"),
    ({"celery": {"workers": 1, "app": "p.celery:app", "hosts": ["nowhere"]}},
     "celery.hosts[0] = 'nowhere' is not a host of [hosts]"),
    ({"hosts": {"db": {"address": "10.77.0.300"}}},
     "hosts.db.address = '10.77.0.300' is invalid: expected an IP address"),
    ({"hosts": {"db": {"address": "10.77.0.2"}, "db2": {"address": "10.77.0.2"}}},
     "hosts.db2.address = '10.77.0.2' is invalid: hosts.db has the same address"),
    ({"hosts": {"db": {"netns": "x"}}}, "hosts.db.address is missing"),
    ({"hosts": {"db": {"address": "10.77.0.2", "ip": "x"}}}, "unknown key 'hosts.db.ip'"),
    ({"hosts": {"DB": {"address": "10.77.0.2"}}}, "[hosts.DB] is invalid"),
    ({"hosts": {"db": {"address": "10.77.0.2", "netns": "bad name"}}},
     "hosts.db.netns = 'bad name' is invalid"),
    ({"hosts": {"a": {"address": "10.77.0.2", "netns": "n"},
                "b": {"address": "10.77.0.3", "netns": "n"}}},
     "hosts.b.netns = 'n' is invalid: hosts.a has the same namespace"),
])
def test_invalid_hosts_are_reported_on_one_line(change: dict[str, Any], message: str) -> None:
    with pytest.raises(TopologyError) as info:
        parse({**MULTIHOST, **change})
    text = str(info.value)
    assert message in text and "\n" not in text
